//! Statistics over cohort metrics: pure functions from plain numbers to plain results.
//!
//! [`histogram`] reads latency histograms (slow share, Mann-Whitney over bins);
//! [`srm`] checks that the cohorts split as configured (sample ratio mismatch).

pub mod histogram;
pub mod srm;
