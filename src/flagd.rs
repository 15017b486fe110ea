//! flagd flag documents: render a rollout's flag state as a flagd flag and merge it
//! into an existing document without touching anything Sluice does not own.
//!
//! The document format is flagd's (`https://flagd.dev/schema/v0/flags.json`). Exposure is
//! a `fractional` rule with exactly two buckets, the candidate first, with integer weights
//! on the fixed total [`WEIGHT_SCALE`]: the evaluator maps each targeting key to a point
//! in `[0, total)` and serves the bucket it falls in, so raising the candidate's weight
//! only adds users to the candidate cohort. (flagd's Python evaluator computes the point
//! as `(murmur3_32(cbor([flag key, targeting key])) * total) >> 32` and walks the
//! buckets in order; `tests/flagd_oracle.rs` checks the result with it.)

use serde_json::{Map, Value, json};

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

/// The `$schema` Sluice writes into documents it creates.
pub const FLAGD_SCHEMA: &str = "https://flagd.dev/schema/v0/flags.json";

impl FlagDefinition {
    /// Checks what [`render_flag`] relies on: a non-empty key, and a baseline and a
    /// candidate that are two different entries of `variants`.
    pub fn validate(&self) -> Result<(), FlagdError> {
        if self.key.is_empty() {
            return Err(FlagdError::EmptyKey);
        }
        for (role, variant) in [("baseline", &self.baseline), ("candidate", &self.candidate)] {
            if !self.variants.contains_key(variant) {
                return Err(FlagdError::UnknownVariant {
                    key: self.key.clone(),
                    role,
                    variant: variant.clone(),
                    known: self.variants.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
        if self.baseline == self.candidate {
            return Err(FlagdError::SameVariant {
                key: self.key.clone(),
                variant: self.baseline.clone(),
            });
        }
        Ok(())
    }
}

/// Why Sluice cannot read or update a flag document (or render a flag).
///
/// Every variant means "change nothing": Sluice never overwrites a document it cannot
/// understand. [`FlagdError::category`] gives a bounded label for metrics and Events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagdError {
    /// The document is not JSON.
    #[error("flag document is not valid JSON (line {line}, column {column}): {reason}")]
    InvalidJson {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser expected or found.
        reason: String,
    },
    /// The document is JSON, but not an object.
    #[error("flag document must be a JSON object, found {found}")]
    NotAnObject {
        /// The kind of JSON value found instead (`"an array"`, ...).
        found: &'static str,
    },
    /// The document's `flags` member is not an object.
    #[error("`flags` in the flag document must be a JSON object, found {found}")]
    FlagsNotAnObject {
        /// The kind of JSON value found instead.
        found: &'static str,
    },
    /// The document already holds something under Sluice's key that is not a flag object.
    #[error("flag `{key}` in the flag document must be a JSON object, found {found}")]
    FlagNotAnObject {
        /// The flag key.
        key: String,
        /// The kind of JSON value found instead.
        found: &'static str,
    },
    /// The flag given to [`merge_flag`] is not a JSON object.
    #[error("the flag to write under `{key}` must be a JSON object, found {found}")]
    InvalidFlag {
        /// The flag key.
        key: String,
        /// The kind of JSON value given instead.
        found: &'static str,
    },
    /// The definition's flag key is empty.
    #[error("the flag key must not be empty")]
    EmptyKey,
    /// The baseline or the candidate is not one of the definition's variants.
    #[error("{role} variant `{variant}` of flag `{key}` is not one of its variants ({known})")]
    UnknownVariant {
        /// The flag key.
        key: String,
        /// `"baseline"` or `"candidate"`.
        role: &'static str,
        /// The missing variant name.
        variant: String,
        /// The variant names that exist, comma-separated.
        known: String,
    },
    /// The baseline and the candidate are the same variant: there is nothing to roll out.
    #[error("flag `{key}`: baseline and candidate are the same variant `{variant}`")]
    SameVariant {
        /// The flag key.
        key: String,
        /// The variant named twice.
        variant: String,
    },
}

impl FlagdError {
    /// A bounded, PascalCase name for the kind of error, for metric labels and Event
    /// reasons (never the message, which holds document and flag names).
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidJson { .. } => "InvalidJson",
            Self::NotAnObject { .. } => "NotAnObject",
            Self::FlagsNotAnObject { .. } => "FlagsNotAnObject",
            Self::FlagNotAnObject { .. } => "FlagNotAnObject",
            Self::InvalidFlag { .. } => "InvalidFlag",
            Self::EmptyKey => "EmptyKey",
            Self::UnknownVariant { .. } => "UnknownVariant",
            Self::SameVariant { .. } => "SameVariant",
        }
    }
}

/// Renders Sluice's flag for `state` as a flagd flag object.
///
/// - [`FlagState::Baseline`]: `defaultVariant` is the baseline, no targeting (reason
///   `STATIC` for everybody).
/// - [`FlagState::Promoted`]: `defaultVariant` is the candidate, no targeting.
/// - [`FlagState::Split`]: `defaultVariant` stays the baseline and the targeting is
///   `{"fractional": [[candidate, w], [baseline, WEIGHT_SCALE - w]]}`: two buckets, the
///   candidate first, integer weights summing to [`WEIGHT_SCALE`], and no explicit
///   bucketing expression, so flagd buckets by flag key and `targetingKey` (an
///   evaluation without a targeting key gets the default, the baseline). A weight above
///   [`WEIGHT_SCALE`] is served as 100 %. With an audience the rule becomes
///   `{"if": [audience, {"fractional": ...}, null]}`: users outside it get the default
///   with reason `DEFAULT`, so only randomised evaluations report `TARGETING_MATCH`.
///
/// The definition is taken as given; check it first with [`FlagDefinition::validate`].
pub fn render_flag(def: &FlagDefinition, state: &FlagState) -> Value {
    let default_variant = match state {
        FlagState::Promoted => &def.candidate,
        FlagState::Baseline | FlagState::Split { .. } => &def.baseline,
    };
    let mut flag = Map::new();
    flag.insert("state".to_owned(), Value::from("ENABLED"));
    flag.insert("variants".to_owned(), Value::Object(def.variants.clone()));
    flag.insert(
        "defaultVariant".to_owned(),
        Value::from(default_variant.as_str()),
    );
    if let FlagState::Split {
        candidate_weight,
        audience,
    } = state
    {
        let weight = (*candidate_weight).min(WEIGHT_SCALE);
        let fractional = json!({
            "fractional": [
                [def.candidate, weight],
                [def.baseline, WEIGHT_SCALE - weight],
            ]
        });
        let targeting = match audience {
            None => fractional,
            Some(audience) => json!({ "if": [audience, fractional, null] }),
        };
        flag.insert("targeting".to_owned(), targeting);
    }
    Value::Object(flag)
}

/// Writes `flag` under `flags[key]` of a flagd document and returns the new text.
///
/// With no document, or one that is only whitespace, the result is a new document
/// holding `$schema` and this one flag. Otherwise the document must be a JSON object
/// whose `flags`, if present, is an object; only `flags[key]` changes. Every other flag,
/// `$evaluators`, `metadata`, `$schema` and the order of all keys are kept. If the
/// existing entry has a `metadata` member and `flag` has none, it is carried over.
///
/// The result is pretty-printed JSON with a trailing newline, except when the entry
/// already equals what would be written: then the document comes back exactly as given
/// (no reformatting of a file someone else owns). Either way, merging the same flag into
/// the result returns it byte for byte, so callers skip the write when the text is
/// unchanged.
///
/// A document that cannot be parsed, or whose shape is not a flagd document, is an
/// error and never overwritten.
pub fn merge_flag(document: Option<&str>, key: &str, flag: Value) -> Result<String, FlagdError> {
    let mut flag = match flag {
        Value::Object(flag) => flag,
        other => {
            return Err(FlagdError::InvalidFlag {
                key: key.to_owned(),
                found: json_kind(&other),
            });
        }
    };
    let Some(text) = document.filter(|text| !text.trim().is_empty()) else {
        let mut flags = Map::new();
        flags.insert(key.to_owned(), Value::Object(flag));
        let mut doc = Map::new();
        doc.insert("$schema".to_owned(), Value::from(FLAGD_SCHEMA));
        doc.insert("flags".to_owned(), Value::Object(flags));
        return Ok(to_text(doc));
    };

    let mut doc = parse_document(text)?;
    let flags = match doc
        .entry("flags")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(flags) => flags,
        other => {
            return Err(FlagdError::FlagsNotAnObject {
                found: json_kind(other),
            });
        }
    };
    match flags.get(key) {
        None => {}
        Some(Value::Object(existing)) => {
            if !flag.contains_key("metadata")
                && let Some(metadata) = existing.get("metadata")
            {
                flag.insert("metadata".to_owned(), metadata.clone());
            }
            if *existing == flag {
                return Ok(text.to_owned());
            }
        }
        Some(other) => {
            return Err(FlagdError::FlagNotAnObject {
                key: key.to_owned(),
                found: json_kind(other),
            });
        }
    }
    flags.insert(key.to_owned(), Value::Object(flag));
    Ok(to_text(doc))
}

/// Reads the flag stored under `flags[key]` of a flagd document.
///
/// `Ok(None)` when the document is only whitespace, has no `flags` or no such flag;
/// the same shape errors as [`merge_flag`] otherwise (including an entry that is not
/// an object).
pub fn flag_in_document(document: &str, key: &str) -> Result<Option<Value>, FlagdError> {
    if document.trim().is_empty() {
        return Ok(None);
    }
    let doc = parse_document(document)?;
    let Some(Value::Object(flags)) = doc.get("flags") else {
        return Ok(None);
    };
    match flags.get(key) {
        None => Ok(None),
        Some(flag @ Value::Object(_)) => Ok(Some(flag.clone())),
        Some(other) => Err(FlagdError::FlagNotAnObject {
            key: key.to_owned(),
            found: json_kind(other),
        }),
    }
}

/// What a document serves for Sluice's flag, read back from it.
#[derive(Clone, Debug, PartialEq)]
pub enum Served {
    /// The document (or its `flags`) has no entry under the key.
    Absent,
    /// The entry is what [`render_flag`] gives for this state (any `metadata` aside).
    State(FlagState),
    /// The entry is something Sluice did not render (edited by hand, other variants).
    Unrecognized,
}

impl Served {
    /// The exposure for audit lines: `"30%"`, `"5% of audience"`, `"0%"` (baseline),
    /// `"100%"` (promoted), `"absent"` or `"unrecognized"`.
    pub fn exposure(&self) -> String {
        match self {
            Served::Absent => "absent".into(),
            Served::Unrecognized => "unrecognized".into(),
            Served::State(state) => state.exposure(),
        }
    }
}

impl FlagState {
    /// The exposure this state serves, for people: `"30%"`, `"5% of audience"`, `"0%"`
    /// (baseline), `"100%"` (promoted).
    pub fn exposure(&self) -> String {
        use crate::crd::{Weight, exposure_text};
        match self {
            FlagState::Baseline => Weight::ZERO.to_string(),
            FlagState::Promoted => Weight::FULL.to_string(),
            FlagState::Split {
                candidate_weight,
                audience,
            } => exposure_text(
                Weight::from_units(*candidate_weight).unwrap_or(Weight::FULL),
                audience.is_some(),
            ),
        }
    }
}

/// Reads back what a document serves for the flag `def` describes: the [`FlagState`]
/// whose rendering the entry is (its `metadata` aside), [`Served::Absent`] or
/// [`Served::Unrecognized`]. Shape errors as [`merge_flag`].
pub fn served(document: Option<&str>, def: &FlagDefinition) -> Result<Served, FlagdError> {
    let Some(Value::Object(mut flag)) = flag_in_document(document.unwrap_or_default(), &def.key)?
    else {
        return Ok(Served::Absent);
    };
    flag.remove("metadata");
    let fractional = |rule: &Value| -> Option<u32> {
        let buckets = rule.get("fractional")?.as_array()?;
        let weight = buckets.first()?.get(1)?.as_u64()?;
        u32::try_from(weight).ok()
    };
    let state = match flag.get("targeting") {
        None => match flag.get("defaultVariant").and_then(Value::as_str) {
            Some(v) if v == def.baseline => Some(FlagState::Baseline),
            Some(v) if v == def.candidate => Some(FlagState::Promoted),
            _ => None,
        },
        Some(targeting) => match targeting.get("if").and_then(Value::as_array) {
            Some(parts) if parts.len() == 3 => {
                fractional(&parts[1]).map(|candidate_weight| FlagState::Split {
                    candidate_weight,
                    audience: Some(parts[0].clone()),
                })
            }
            Some(_) => None,
            None => fractional(targeting).map(|candidate_weight| FlagState::Split {
                candidate_weight,
                audience: None,
            }),
        },
    };
    Ok(match state {
        Some(state) if render_flag(def, &state) == Value::Object(flag) => Served::State(state),
        _ => Served::Unrecognized,
    })
}

/// Parses a document and checks the shape Sluice relies on: an object whose `flags`, if
/// present, is an object.
fn parse_document(text: &str) -> Result<Map<String, Value>, FlagdError> {
    let doc = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(doc)) => doc,
        Ok(other) => {
            return Err(FlagdError::NotAnObject {
                found: json_kind(&other),
            });
        }
        Err(err) => return Err(invalid_json(&err)),
    };
    match doc.get("flags") {
        None | Some(Value::Object(_)) => Ok(doc),
        Some(other) => Err(FlagdError::FlagsNotAnObject {
            found: json_kind(other),
        }),
    }
}

/// Turns a parser error into [`FlagdError::InvalidJson`], keeping the position apart
/// from the reason (serde_json appends " at line L column C" to its message).
fn invalid_json(err: &serde_json::Error) -> FlagdError {
    let (line, column) = (err.line(), err.column());
    let message = err.to_string();
    let suffix = format!(" at line {line} column {column}");
    let reason = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
    FlagdError::InvalidJson {
        line,
        column,
        reason,
    }
}

/// The pretty text Sluice writes: two-space indentation and a trailing newline.
fn to_text(doc: Map<String, Value>) -> String {
    format!("{:#}\n", Value::Object(doc))
}

/// The kind of a JSON value, for error messages (`"an array"`, `"null"`, ...).
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn definition() -> FlagDefinition {
        FlagDefinition {
            key: "new-checkout".to_owned(),
            variants: json!({ "on": true, "off": false })
                .as_object()
                .cloned()
                .unwrap(),
            baseline: "off".to_owned(),
            candidate: "on".to_owned(),
        }
    }

    fn split(candidate_weight: u32) -> FlagState {
        FlagState::Split {
            candidate_weight,
            audience: None,
        }
    }

    /// A document as a team might keep it: other flags (one using `$evaluators`),
    /// document metadata and Sluice's own flag with a hand-added `metadata`.
    const SHARED: &str = r#"{
    "$schema": "https://flagd.dev/schema/v0/flags.json",
    "metadata": { "owner": "shop", "version": "7" },
    "flags": {
        "dark-mode": {
            "state": "ENABLED",
            "variants": { "on": true, "off": false },
            "defaultVariant": "off",
            "targeting": { "if": [{ "$ref": "staff" }, "on", null] }
        },
        "new-checkout": {
            "state": "ENABLED",
            "variants": { "on": true, "off": false },
            "defaultVariant": "off",
            "metadata": { "team": "payments" }
        },
        "banner": {
            "state": "DISABLED",
            "variants": { "a": "Hello", "b": { "text": "Hi", "size": 2.5 } },
            "defaultVariant": "a"
        }
    },
    "$evaluators": {
        "staff": { "ends_with": [{ "var": "email" }, "@shop.example"] }
    }
}"#;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// Top-level keys and flag keys, in document order.
    fn key_order(doc: &Value) -> (Vec<String>, Vec<String>) {
        let top = doc.as_object().unwrap().keys().cloned().collect();
        let flags = doc["flags"].as_object().unwrap().keys().cloned().collect();
        (top, flags)
    }

    #[test]
    fn renders_baseline_without_targeting() {
        assert_eq!(
            render_flag(&definition(), &FlagState::Baseline),
            json!({
                "state": "ENABLED",
                "variants": { "on": true, "off": false },
                "defaultVariant": "off"
            })
        );
    }

    #[test]
    fn renders_promotion_as_candidate_default_without_targeting() {
        assert_eq!(
            render_flag(&definition(), &FlagState::Promoted),
            json!({
                "state": "ENABLED",
                "variants": { "on": true, "off": false },
                "defaultVariant": "on"
            })
        );
    }

    #[test]
    fn renders_split_as_two_integer_buckets_candidate_first() {
        let flag = render_flag(&definition(), &split(10_000));
        assert_eq!(
            flag,
            json!({
                "state": "ENABLED",
                "variants": { "on": true, "off": false },
                "defaultVariant": "off",
                "targeting": { "fractional": [["on", 10_000], ["off", 990_000]] }
            })
        );
        // Integers in the text too, never `10000.0`: the evaluator rejects floats.
        let text = flag.to_string();
        assert!(text.contains(r#"[["on",10000],["off",990000]]"#), "{text}");
        for bucket in flag["targeting"]["fractional"].as_array().unwrap() {
            assert!(bucket[1].is_u64(), "weight {} is not an integer", bucket[1]);
        }
    }

    #[test]
    fn renders_a_tenth_of_a_percent_exactly() {
        let flag = render_flag(&definition(), &split(1_000));
        assert_eq!(
            flag["targeting"],
            json!({ "fractional": [["on", 1_000], ["off", 999_000]] })
        );
    }

    #[test]
    fn weights_always_total_the_scale() {
        for (weight, candidate, baseline) in [
            (0, 0, WEIGHT_SCALE),
            (1, 1, WEIGHT_SCALE - 1),
            (WEIGHT_SCALE, WEIGHT_SCALE, 0),
            // Out of range is served as 100 %, never as an underflowed weight.
            (WEIGHT_SCALE + 1, WEIGHT_SCALE, 0),
            (u32::MAX, WEIGHT_SCALE, 0),
        ] {
            let flag = render_flag(&definition(), &split(weight));
            assert_eq!(
                flag["targeting"]["fractional"],
                json!([["on", candidate], ["off", baseline]]),
                "weight {weight}"
            );
        }
    }

    #[test]
    fn wraps_the_split_in_the_audience_with_a_null_else() {
        let audience = json!({ "ends_with": [{ "var": "email" }, "@example.com"] });
        let flag = render_flag(
            &definition(),
            &FlagState::Split {
                candidate_weight: WEIGHT_SCALE,
                audience: Some(audience.clone()),
            },
        );
        assert_eq!(
            flag,
            json!({
                "state": "ENABLED",
                "variants": { "on": true, "off": false },
                "defaultVariant": "off",
                "targeting": {
                    "if": [
                        audience,
                        { "fractional": [["on", 1_000_000], ["off", 0]] },
                        null
                    ]
                }
            })
        );
    }

    #[test]
    fn renders_any_json_variant_values() {
        let def = FlagDefinition {
            key: "layout".to_owned(),
            variants: json!({ "classic": { "columns": 1 }, "grid": { "columns": [2, 3] } })
                .as_object()
                .cloned()
                .unwrap(),
            baseline: "classic".to_owned(),
            candidate: "grid".to_owned(),
        };
        let flag = render_flag(&def, &split(250_000));
        assert_eq!(flag["variants"], json!(def.variants));
        assert_eq!(
            flag["targeting"],
            json!({ "fractional": [["grid", 250_000], ["classic", 750_000]] })
        );
    }

    #[test]
    fn validates_definitions() {
        assert_eq!(definition().validate(), Ok(()));

        let mut def = definition();
        def.key.clear();
        let err = def.validate().unwrap_err();
        assert_eq!(err.to_string(), "the flag key must not be empty");
        assert_eq!(err.category(), "EmptyKey");

        let mut def = definition();
        def.candidate = "blue".to_owned();
        let err = def.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "candidate variant `blue` of flag `new-checkout` is not one of its variants (on, off)"
        );
        assert_eq!(err.category(), "UnknownVariant");

        let mut def = definition();
        def.baseline = "red".to_owned();
        let err = def.validate().unwrap_err();
        assert!(
            err.to_string().starts_with("baseline variant `red`"),
            "{err}"
        );

        let mut def = definition();
        def.candidate = "off".to_owned();
        let err = def.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "flag `new-checkout`: baseline and candidate are the same variant `off`"
        );
        assert_eq!(err.category(), "SameVariant");
    }

    #[test]
    fn creates_a_document_when_there_is_none() {
        let flag = render_flag(&definition(), &FlagState::Baseline);
        let expected = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "new-checkout": {
      "state": "ENABLED",
      "variants": {
        "on": true,
        "off": false
      },
      "defaultVariant": "off"
    }
  }
}
"#;
        assert_eq!(
            merge_flag(None, "new-checkout", flag.clone()).unwrap(),
            expected
        );
        assert_eq!(
            merge_flag(Some(""), "new-checkout", flag.clone()).unwrap(),
            expected
        );
        assert_eq!(
            merge_flag(Some(" \n\t "), "new-checkout", flag).unwrap(),
            expected
        );
    }

    #[test]
    fn split_rollback_and_promotion_touch_only_sluices_flag() {
        let original = parse(SHARED);
        let mut text = SHARED.to_owned();
        for state in [
            split(10_000),
            split(50_000),
            FlagState::Baseline,
            split(10_000),
            FlagState::Promoted,
        ] {
            let flag = render_flag(&definition(), &state);
            text = merge_flag(Some(&text), "new-checkout", flag.clone()).unwrap();
            assert!(text.ends_with("}\n"), "{text}");
            let doc = parse(&text);

            assert_eq!(key_order(&doc), key_order(&original), "{state:?}");
            for member in ["$schema", "metadata", "$evaluators"] {
                assert_eq!(doc[member], original[member], "{member} after {state:?}");
            }
            for other in ["dark-mode", "banner"] {
                assert_eq!(doc["flags"][other], original["flags"][other], "{state:?}");
            }
            // Sluice's flag is the rendering, plus the metadata someone put on it.
            let mut expected = flag;
            expected["metadata"] = json!({ "team": "payments" });
            assert_eq!(doc["flags"]["new-checkout"], expected, "{state:?}");
            assert_eq!(
                flag_in_document(&text, "new-checkout").unwrap(),
                Some(expected)
            );
        }
    }

    #[test]
    fn adds_the_flag_after_the_others_and_flags_when_missing() {
        let flag = render_flag(&definition(), &split(1_000));
        let text = merge_flag(Some(SHARED), "brand-new", flag.clone()).unwrap();
        let doc = parse(&text);
        assert_eq!(
            key_order(&doc).1,
            ["dark-mode", "new-checkout", "banner", "brand-new"]
        );
        assert_eq!(doc["flags"]["brand-new"], flag);

        let text = merge_flag(
            Some(r#"{"metadata": {"a": 1}}"#),
            "new-checkout",
            flag.clone(),
        )
        .unwrap();
        let doc = parse(&text);
        assert_eq!(key_order(&doc).0, ["metadata", "flags"]);
        assert_eq!(doc["flags"]["new-checkout"], flag);
    }

    #[test]
    fn flag_metadata_given_by_the_caller_wins() {
        let mut flag = render_flag(&definition(), &FlagState::Baseline);
        flag["metadata"] = json!({ "team": "checkout" });
        let text = merge_flag(Some(SHARED), "new-checkout", flag.clone()).unwrap();
        assert_eq!(parse(&text)["flags"]["new-checkout"], flag);
    }

    #[test]
    fn merging_twice_gives_the_same_bytes() {
        for state in [
            FlagState::Baseline,
            split(1_000),
            FlagState::Split {
                candidate_weight: 250_000,
                audience: Some(json!({ "starts_with": [{ "var": "email" }, "qa-"] })),
            },
            FlagState::Promoted,
        ] {
            let flag = render_flag(&definition(), &state);
            for start in [None, Some(SHARED)] {
                let once = merge_flag(start, "new-checkout", flag.clone()).unwrap();
                let twice = merge_flag(Some(&once), "new-checkout", flag.clone()).unwrap();
                assert_eq!(twice, once, "{state:?}");
            }
        }
    }

    #[test]
    fn leaves_the_text_alone_when_the_flag_is_already_there() {
        // SHARED's entry is the baseline rendering plus metadata: nothing to do, so the
        // hand formatting (four-space indentation, no trailing newline) is kept.
        let flag = render_flag(&definition(), &FlagState::Baseline);
        assert_eq!(
            merge_flag(Some(SHARED), "new-checkout", flag).unwrap(),
            SHARED
        );
    }

    #[test]
    fn reports_syntax_errors_with_their_position() {
        let flag = render_flag(&definition(), &FlagState::Baseline);
        let err =
            merge_flag(Some("{\n  \"flags\": {,}\n}"), "new-checkout", flag.clone()).unwrap_err();
        assert_eq!(
            err,
            FlagdError::InvalidJson {
                line: 2,
                column: 13,
                reason: "key must be a string".to_owned(),
            }
        );
        assert_eq!(
            err.to_string(),
            "flag document is not valid JSON (line 2, column 13): key must be a string"
        );
        assert_eq!(err.category(), "InvalidJson");

        let err = merge_flag(Some("{\"flags\": {}"), "new-checkout", flag.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "flag document is not valid JSON (line 1, column 12): EOF while parsing an object"
        );

        // YAML is not accepted: Sluice writes JSON documents only.
        let err = merge_flag(Some("flags: {}"), "new-checkout", flag).unwrap_err();
        assert_eq!(
            err.to_string(),
            "flag document is not valid JSON (line 1, column 2): expected ident"
        );
    }

    #[test]
    fn refuses_documents_that_are_not_objects() {
        let flag = render_flag(&definition(), &FlagState::Baseline);
        for (text, found) in [
            ("[]", "an array"),
            ("\"flags\"", "a string"),
            ("null", "null"),
            ("42", "a number"),
            ("true", "a boolean"),
        ] {
            let err = merge_flag(Some(text), "new-checkout", flag.clone()).unwrap_err();
            assert_eq!(err, FlagdError::NotAnObject { found }, "{text}");
            assert_eq!(
                err.to_string(),
                format!("flag document must be a JSON object, found {found}")
            );
            assert_eq!(err.category(), "NotAnObject");
            assert_eq!(flag_in_document(text, "new-checkout"), Err(err));
        }
    }

    #[test]
    fn refuses_flags_that_are_not_an_object() {
        let flag = render_flag(&definition(), &FlagState::Baseline);
        let text = r#"{"flags": [{"new-checkout": {}}]}"#;
        let err = merge_flag(Some(text), "new-checkout", flag).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`flags` in the flag document must be a JSON object, found an array"
        );
        assert_eq!(err.category(), "FlagsNotAnObject");
        assert_eq!(flag_in_document(text, "new-checkout"), Err(err));
    }

    #[test]
    fn refuses_to_replace_an_entry_that_is_not_an_object() {
        let flag = render_flag(&definition(), &FlagState::Baseline);
        let text = r#"{"flags": {"new-checkout": "on"}}"#;
        let err = merge_flag(Some(text), "new-checkout", flag.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "flag `new-checkout` in the flag document must be a JSON object, found a string"
        );
        assert_eq!(err.category(), "FlagNotAnObject");
        assert_eq!(flag_in_document(text, "new-checkout"), Err(err));
        // Other keys are none of Sluice's business, whatever they hold.
        assert!(merge_flag(Some(text), "other", flag).is_ok());
    }

    #[test]
    fn refuses_a_flag_that_is_not_an_object() {
        let err = merge_flag(None, "new-checkout", json!(["on"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the flag to write under `new-checkout` must be a JSON object, found an array"
        );
        assert_eq!(err.category(), "InvalidFlag");
    }

    #[test]
    fn reads_back_what_a_document_serves() {
        let def = definition();
        for state in [
            FlagState::Baseline,
            split(300_000),
            FlagState::Split {
                candidate_weight: 50_000,
                audience: Some(json!({ "in": ["@example.com", { "var": "email" }] })),
            },
            FlagState::Promoted,
        ] {
            let text = merge_flag(Some(SHARED), &def.key, render_flag(&def, &state)).unwrap();
            assert_eq!(
                served(Some(&text), &def).unwrap(),
                Served::State(state.clone())
            );
        }
        assert_eq!(served(None, &def).unwrap(), Served::Absent);
        assert_eq!(served(Some("{}"), &def).unwrap(), Served::Absent);
        let mut edited = render_flag(&def, &split(300_000));
        edited["variants"]["on"] = json!("yes");
        let text = merge_flag(None, &def.key, edited).unwrap();
        assert_eq!(served(Some(&text), &def).unwrap(), Served::Unrecognized);
        assert_eq!(split(300_000).exposure(), "30%");
        assert_eq!(Served::Absent.exposure(), "absent");
        assert!(served(Some("[]"), &def).is_err());
    }

    #[test]
    fn reads_the_flag_back() {
        assert_eq!(
            flag_in_document(SHARED, "dark-mode").unwrap().unwrap()["defaultVariant"],
            "off"
        );
        assert_eq!(flag_in_document(SHARED, "missing").unwrap(), None);
        assert_eq!(flag_in_document("  ", "new-checkout").unwrap(), None);
        assert_eq!(flag_in_document("{}", "new-checkout").unwrap(), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed, TestRunner};

        /// Fixed so that a failure reproduces; printed by the test.
        const SEED: u64 = 0x5110_CEF1_A6D0;

        /// Any JSON value Sluice must carry through untouched. Numbers are integers
        /// and binary fractions, which serde_json (without `float_roundtrip`) parses
        /// exactly.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (-1_000_i32..1_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
                "\\PC{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::vec(("[a-z$]{1,6}", inner), 0..4)
                        .prop_map(|members| Value::Object(members.into_iter().collect())),
                ]
            })
        }

        /// A document and whether to pretty-print it: random top-level members around a
        /// `flags` object of random entries (or none at all), optionally holding
        /// Sluice's key, as an object with or without `metadata`, at any position.
        fn document() -> impl Strategy<Value = (Value, bool)> {
            (
                prop::collection::vec(("[a-z$]{1,8}", json_value()), 0..4),
                prop::collection::vec(("[a-z-]{1,8}", json_value()), 0..6),
                prop::option::of((any::<prop::sample::Index>(), prop::option::of(json_value()))),
                any::<(bool, bool, bool)>(),
            )
                .prop_map(|(top, flags, ours, (flags_first, omit_flags, pretty))| {
                    let mut flags: Vec<(String, Value)> =
                        flags.into_iter().filter(|(k, _)| k != KEY).collect();
                    let omit_flags = omit_flags && flags.is_empty() && ours.is_none();
                    if let Some((at, metadata)) = ours {
                        let mut entry = json!({ "state": "DISABLED" });
                        if let Some(metadata) = metadata {
                            entry["metadata"] = metadata;
                        }
                        flags.insert(at.index(flags.len() + 1), (KEY.to_owned(), entry));
                    }
                    let mut doc = Map::new();
                    if flags_first {
                        doc.insert("flags".to_owned(), Value::Null);
                    }
                    doc.extend(top.into_iter().filter(|(k, _)| k != "flags"));
                    if omit_flags {
                        doc.remove("flags");
                    } else {
                        doc.insert(
                            "flags".to_owned(),
                            Value::Object(flags.into_iter().collect()),
                        );
                    }
                    (Value::Object(doc), pretty)
                })
        }

        const KEY: &str = "new-checkout";

        fn state() -> impl Strategy<Value = FlagState> {
            prop_oneof![
                Just(FlagState::Baseline),
                Just(FlagState::Promoted),
                (0..=WEIGHT_SCALE).prop_map(split),
            ]
        }

        #[test]
        fn merge_never_changes_anything_but_its_own_flag() {
            eprintln!("proptest seed: {SEED:#x}");
            let config = Config {
                cases: 256,
                rng_seed: RngSeed::Fixed(SEED),
                failure_persistence: None,
                ..Config::default()
            };
            let mut runner = TestRunner::new(config);
            let result = runner.run(&(document(), state()), |((doc, pretty), state)| {
                let text = if pretty {
                    format!("{doc:#}")
                } else {
                    doc.to_string()
                };
                let flag = render_flag(&definition(), &state);
                let merged = merge_flag(Some(&text), KEY, flag.clone()).unwrap();
                let out = parse(&merged);
                let (before, after) = (doc.as_object().unwrap(), out.as_object().unwrap());

                // Same top-level members in the same order (`flags` appended if it was
                // missing), all but `flags` equal.
                let mut expected_top: Vec<String> = before.keys().cloned().collect();
                if !before.contains_key("flags") {
                    expected_top.push("flags".to_owned());
                }
                prop_assert_eq!(key_order(&out).0, expected_top);
                for (k, v) in before.iter().filter(|(k, _)| *k != "flags") {
                    prop_assert_eq!(&after[k], v);
                }
                // Same flags in the same order (ours appended if it was missing),
                // every other one equal.
                let no_flags = Map::new();
                let flags_before = doc["flags"].as_object().unwrap_or(&no_flags);
                let mut expected_order: Vec<String> = flags_before.keys().cloned().collect();
                if !expected_order.iter().any(|k| k == KEY) {
                    expected_order.push(KEY.to_owned());
                }
                prop_assert_eq!(key_order(&out).1, expected_order);
                for (k, v) in flags_before {
                    if k != KEY {
                        prop_assert_eq!(&out["flags"][k], v);
                    }
                }
                // Ours is the rendering, with the old metadata if there was one.
                let mut expected = flag.clone();
                if let Some(metadata) = doc["flags"].get(KEY).and_then(|f| f.get("metadata")) {
                    expected["metadata"] = metadata.clone();
                }
                prop_assert_eq!(&out["flags"][KEY], &expected);
                // And doing it again changes nothing.
                prop_assert_eq!(merge_flag(Some(&merged), KEY, flag).unwrap(), merged);
                Ok(())
            });
            if let Err(err) = result {
                panic!("{err} (seed {SEED:#x})");
            }
        }
    }
}
