//! Analysis: from cohort metrics to a verdict per metric and for the stage.
//!
//! The statistics are pure functions over plain data: [`compare`] (the comparison of the
//! cohorts over the whole rollout, with [`sequential`]'s boundaries and tails), [`ratio`]
//! (share counts and the `max` test's confidence sequence), [`histogram`] (slow shares and
//! the Mann-Whitney shift), [`srm`] (sample ratio
//! mismatch), [`users`] (the user-level variance from per-user sums). [`source`] holds what is observed ([`source::Observed`], one
//! [`source::Buckets`], [`source::PerCohort`]) and the [`source::MetricsProvider`] trait
//! a metrics system implements (Prometheus is one, in [`crate::prometheus`]). [`judge`]
//! turns measurements into verdicts; [`look`] asks the provider and judges.

pub mod compare;
pub mod histogram;
pub mod judge;
pub mod look;
pub mod ratio;
pub mod sequential;
pub mod source;
pub mod srm;
pub mod users;
