//! Sluice rolls a feature flag out in stages and rolls it back on harm.
//!
//! The crate is organised by concern: [`crd`] holds the `FeatureRollout` resource and its
//! validation, [`engine`] the pure rollout decisions, [`flagd`] the flag documents.

pub mod cli;
pub mod crd;
pub mod engine;
pub mod flagd;
pub mod manifest;
pub mod simulate;
