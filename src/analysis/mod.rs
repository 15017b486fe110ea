//! Analysis: from cohort metrics to a verdict per metric and for the stage.
//!
//! Everything here is pure statistics over plain data; the queries that produce the data
//! live in [`crate::prometheus`].

pub mod ratio;
