//! Sluice rolls a feature flag out in stages and rolls it back on harm.
//!
//! The crate is organised by concern: [`crd`] holds the `FeatureRollout` resource and its
//! validation, [`engine`] the pure rollout decisions, [`flagd`] the flag documents,
//! [`prometheus`] the metrics queries and [`analysis`] the statistics that judge them.

pub mod analysis;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod flagd;
pub mod kubectl;
pub mod manifest;
pub mod notify;
pub mod prometheus;
pub mod rbac;
pub mod reconcile;
pub mod simulate;
pub mod standalone;
pub mod telemetry;
