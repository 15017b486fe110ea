//! flagd flag documents: render a rollout's flag state as a flagd flag and merge it
//! into an existing document without touching anything Sluice does not own.
//!
//! The document format is flagd's (`https://flagd.dev/schema/v0/flags.json`). Exposure is
//! a `fractional` rule with exactly two buckets, the candidate first, with integer weights
//! on the fixed total [`WEIGHT_SCALE`]: the evaluator maps each targeting key to a point
//! in `[0, total)` and serves the bucket it falls in, so raising the candidate's weight
//! only adds users to the candidate cohort.

use serde_json::{Map, Value};

/// The fixed total of the two fractional weights: 1,000,000 = 100 %, so one unit is
/// 0.0001 % and 0.1 % steps are exact.
pub const WEIGHT_SCALE: u32 = 1_000_000;

/// What Sluice needs to know about its flag to render it.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagDefinition {
    /// The flag key in the document's `flags` map.
    pub key: String,
    /// Variant name to value (any JSON value).
    pub variants: Map<String, Value>,
    /// The variant that is safe today; the default until promotion.
    pub baseline: String,
    /// The variant being rolled out.
    pub candidate: String,
}

/// The state of Sluice's flag that a rollout wants served.
#[derive(Clone, Debug, PartialEq)]
pub enum FlagState {
    /// Everybody gets the baseline (before the first stage, and after a rollback).
    Baseline,
    /// `candidate_weight` out of [`WEIGHT_SCALE`] of the eligible users get the candidate,
    /// the rest the baseline. With an audience (a JSONLogic condition on the evaluation
    /// context), only users matching it are eligible; the others get the default.
    Split {
        /// Candidate share, in units of `1 / WEIGHT_SCALE`.
        candidate_weight: u32,
        /// Optional JSONLogic rule restricting who is eligible.
        audience: Option<Value>,
    },
    /// The candidate is the default for everybody (the rollout was promoted).
    Promoted,
}
