//! Sluice rolls a feature flag out in stages and rolls it back on harm.
//!
//! The crate is organised by concern: [`crd`] holds the `FeatureRollout` resource and its
//! validation, [`engine`] the pure rollout decisions, [`flagd`] the flag documents
//! (and [`flag_store`] the one compare-and-swap write into wherever they live),
//! [`prometheus`] the metrics queries and [`analysis`] the statistics that judge them.
//! [`reconcile`] is one observe-decide-act step, shared by the two shells: the Kubernetes
//! [`controller`] (with [`telemetry`] and the [`rbac`] it needs) and [`standalone`] mode.
//! [`notify`] sends webhooks, [`kubectl`] is the `kubectl sluice` plugin, [`simulate`] the
//! decision-quality benchmark and [`cli`] the `sluice` command line.

pub mod analysis;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod flag_store;
pub mod flagd;
pub mod kubectl;
pub mod manifest;
pub mod notify;
pub mod plan;
pub mod prometheus;
pub mod rbac;
pub mod reconcile;
pub mod runtime;
pub mod simulate;
pub mod standalone;
pub mod sync;
pub mod telemetry;
