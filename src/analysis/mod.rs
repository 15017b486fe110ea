//! Analysis: from cohort metrics to a verdict per metric and for the stage.
//!
//! The statistics are pure functions over plain data: [`ratio`] (the sequential test for
//! shares), [`histogram`] (slow shares and the Mann-Whitney shift), [`srm`] (sample ratio
//! mismatch). [`judge`] turns query answers into verdicts; [`look`] runs the queries.

pub mod histogram;
pub mod judge;
pub mod look;
pub mod ratio;
pub mod srm;
