//! Statistics over cohort metrics: pure functions from plain numbers to plain results.
//!
//! [`histogram`] reads latency histograms (slow share, Mann-Whitney over bins).

pub mod histogram;
