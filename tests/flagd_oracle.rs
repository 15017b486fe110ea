//! The real-consumer oracle: the OpenFeature Python SDK with the flagd provider in file
//! mode (what our users run) evaluates the documents Sluice writes, for many targeting
//! keys, and we check what it serves.
//!
//! Every document is built with `sluice::flagd` (merged into a document that also holds
//! other flags, `$evaluators` and `metadata`, one stage after the other as the controller
//! would), written to a temporary directory, and evaluated by
//! `tests/python/flagd_eval.py` in ONE interpreter launch shared by all tests here.
//!
//! The interpreter is `$SLUICE_PYTHON` or `<repo>/.venv/bin/python`; `make test` creates
//! the latter (`python3 -m venv .venv && .venv/bin/pip install -r
//! tests/python/requirements.txt`). Without it these tests fail: they never skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice::flagd::{
    FlagDefinition, FlagState, WEIGHT_SCALE, flag_in_document, merge_flag, render_flag,
};

/// Sluice's flag in these tests.
const FLAG: &str = "new-checkout";
/// Targeting keys per stage document (`user-0` .. `user-19999`).
const STAGE_KEYS: usize = 20_000;
/// Keys for the 0.1 % stage: with 20,000 the 5-sigma band would include 0 candidates.
const TENTH_KEYS: usize = 50_000;
/// Keys where every user must get the same variant (one miss fails the test).
const UNIFORM_KEYS: usize = 5_000;

/// The rollout plan, in WEIGHT_SCALE units: 0.1 %, 1 %, 5 %, 25 %, 100 %.
const PLAN: [(&str, u32, usize); 5] = [
    ("split-0.1", 1_000, TENTH_KEYS),
    ("split-1", 10_000, STAGE_KEYS),
    ("split-5", 50_000, STAGE_KEYS),
    ("split-25", 250_000, STAGE_KEYS),
    ("split-100", 1_000_000, STAGE_KEYS),
];

/// The audience used by the audience stages (`ends_with` is a flagd custom operator).
fn audience() -> Value {
    json!({ "ends_with": [{ "var": "email" }, "@example.com"] })
}

/// Email templates cycled over the keys (key i gets `EMAILS[i % 4]`); only the first
/// matches the audience: `ends_with` is case-sensitive and anchored at the end.
const EMAILS: [&str; 4] = [
    "{key}@example.com",
    "{key}@example.org",
    "{key}@EXAMPLE.COM",
    "{key}@example.com.evil.org",
];

/// The document Sluice's flag is merged into: other teams' flags (one through
/// `$evaluators`), document metadata, and no entry for Sluice's flag yet.
const SHARED: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "metadata": { "owner": "shop" },
  "flags": {
    "dark-mode": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off",
      "targeting": { "if": [{ "$ref": "staff" }, "on", null] }
    },
    "banner": {
      "state": "ENABLED",
      "variants": { "short": "Hi", "long": "Hello there" },
      "defaultVariant": "short",
      "targeting": { "fractional": [["long", 1], ["short", 1]] }
    }
  },
  "$evaluators": {
    "staff": { "ends_with": [{ "var": "email" }, "@shop.example"] }
  }
}
"#;

fn boolean_flag() -> FlagDefinition {
    FlagDefinition {
        key: FLAG.to_owned(),
        variants: object(json!({ "on": true, "off": false })),
        baseline: "off".to_owned(),
        candidate: "on".to_owned(),
    }
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("a JSON object")
}

fn split(candidate_weight: u32, audience: Option<Value>) -> FlagState {
    FlagState::Split {
        candidate_weight,
        audience,
    }
}

/// What the Python oracle reports for one job.
#[derive(Debug, Deserialize)]
struct Outcome {
    evaluations: usize,
    /// variant -> reason -> count
    counts: HashMap<String, HashMap<String, usize>>,
    /// variant -> the value served for it
    values: Map<String, Value>,
    variants: Vec<Option<String>>,
    reasons: Vec<Option<String>>,
}

impl Outcome {
    fn served(&self, variant: &str) -> usize {
        self.counts.get(variant).map_or(0, |r| r.values().sum())
    }

    fn share(&self, variant: &str) -> f64 {
        self.served(variant) as f64 / self.evaluations as f64
    }

    /// Asserts that every evaluation served `variant` with `reason`.
    fn assert_uniform(&self, job: &str, variant: &str, reason: &str) {
        let expected = HashMap::from([(
            variant.to_owned(),
            HashMap::from([(reason.to_owned(), self.evaluations)]),
        )]);
        assert_eq!(self.counts, expected, "{job}");
    }
}

#[derive(Deserialize)]
struct Report {
    results: Vec<NamedOutcome>,
}

#[derive(Deserialize)]
struct NamedOutcome {
    name: String,
    #[serde(flatten)]
    outcome: Outcome,
}

/// Everything the oracle said, by job name, and the documents it read, by name.
struct Oracle {
    outcomes: HashMap<String, Outcome>,
    documents: HashMap<String, String>,
}

impl Oracle {
    fn get(&self, job: &str) -> &Outcome {
        self.outcomes
            .get(job)
            .unwrap_or_else(|| panic!("the oracle ran no job {job}"))
    }
}

/// Runs the oracle once for all tests in this file; every test fails with the same
/// message if it cannot run.
fn oracle() -> &'static Oracle {
    static ORACLE: OnceLock<Result<Oracle, String>> = OnceLock::new();
    match ORACLE.get_or_init(run_oracle) {
        Ok(oracle) => oracle,
        Err(message) => panic!("{message}"),
    }
}

fn python() -> Result<PathBuf, String> {
    let python = match std::env::var_os("SLUICE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    if python.exists() {
        Ok(python)
    } else {
        Err(format!(
            "no Python interpreter at {}: run `make test` (it creates .venv with \
             tests/python/requirements.txt), or create it yourself with \
             `python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt`, \
             or point SLUICE_PYTHON at an interpreter that has those packages",
            python.display()
        ))
    }
}

/// Builds every document, writes them out, and evaluates all jobs in one launch.
fn run_oracle() -> Result<Oracle, String> {
    let python = python()?;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut documents: Vec<(String, String)> = Vec::new();
    let mut jobs: Vec<Value> = Vec::new();
    let mut job = |name: &str, document: &str, spec: Value| {
        let mut spec = object(spec);
        spec.insert("name".into(), name.into());
        let path = dir.path().join(format!("{document}.json"));
        spec.insert("document".into(), path.to_string_lossy().into());
        jobs.push(Value::Object(spec));
    };

    // The plan, stage after stage as the engine decides it, each merged into the previous
    // document.
    let def = boolean_flag();
    let (stage_states, promoted_state, rollback_state) = engine_states();
    let mut text = SHARED.to_owned();
    for ((name, weight, keys), state) in PLAN.into_iter().zip(stage_states) {
        if state != split(weight, None) {
            return Err(format!("the engine planned {state:?} for stage {name}"));
        }
        text = merge(&text, FLAG, render_flag(&def, &state));
        documents.push((name.to_owned(), text.clone()));
        job(name, name, json!({ "flag": FLAG, "keys": keys }));
    }
    let after_plan = text.clone();
    // Promotion after the last stage; rollback from the 25 % stage.
    let promoted = merge(&after_plan, FLAG, render_flag(&def, &promoted_state));
    documents.push(("promoted".to_owned(), promoted));
    job(
        "promoted",
        "promoted",
        json!({ "flag": FLAG, "keys": UNIFORM_KEYS }),
    );
    let split_25 = documents[3].1.clone();
    let rollback = merge(&split_25, FLAG, render_flag(&def, &rollback_state));
    documents.push(("rollback".to_owned(), rollback));
    job(
        "rollback",
        "rollback",
        json!({ "flag": FLAG, "keys": UNIFORM_KEYS }),
    );

    // Audience stages: everybody in it, then half of it.
    let emails = json!({ "email": EMAILS });
    for (name, weight) in [("audience-100", WEIGHT_SCALE), ("audience-50", 500_000)] {
        let flag = render_flag(&def, &split(weight, Some(audience())));
        documents.push((name.to_owned(), merge(SHARED, FLAG, flag)));
        let spec = json!({ "flag": FLAG, "keys": STAGE_KEYS, "attributes": emails });
        job(name, name, spec);
    }

    // No targeting key, on a plain split and on an audience the user matches.
    job(
        "no-key-split",
        "split-100",
        json!({ "flag": FLAG, "keys": 3, "targeting_key": false }),
    );
    job(
        "no-key-audience",
        "audience-100",
        json!({ "flag": FLAG, "keys": 3, "targeting_key": false,
                "attributes": { "email": ["{key}@example.com"] } }),
    );

    // The other flags, before Sluice touched the document and after the whole plan.
    let staff = json!({ "email": ["{key}@shop.example", "{key}@else.org"] });
    documents.push(("shared".to_owned(), SHARED.to_owned()));
    for (name, document) in [
        ("dark-mode-before", "shared"),
        ("dark-mode-after", "split-100"),
    ] {
        job(
            name,
            document,
            json!({ "flag": "dark-mode", "keys": 2_000, "attributes": staff }),
        );
    }
    for (name, document) in [("banner-before", "shared"), ("banner-after", "split-100")] {
        let spec = json!({ "flag": "banner", "type": "string", "keys": 2_000 });
        job(name, document, spec);
    }

    // Non-boolean variants: objects and strings, 25 %.
    for (name, def, flag_type) in [
        ("object-variants", layout_flag(), "object"),
        ("string-variants", greeting_flag(), "string"),
    ] {
        let flag = render_flag(&def, &split(250_000, None));
        documents.push((name.to_owned(), merge(SHARED, &def.key, flag)));
        let spec = json!({ "flag": def.key, "type": flag_type, "keys": UNIFORM_KEYS });
        job(name, name, spec);
    }

    // A canary the oracle must notice: the same 25 % split with float weights, which
    // the evaluator refuses (fractional yields null, so everybody gets the default).
    let mut floats = render_flag(&def, &split(250_000, None));
    floats["targeting"] = json!({ "fractional": [["on", 250000.0], ["off", 750000.0]] });
    documents.push(("float-weights".to_owned(), merge(SHARED, FLAG, floats)));
    job(
        "float-weights",
        "float-weights",
        json!({ "flag": FLAG, "keys": 2_000 }),
    );

    for (name, text) in &documents {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let jobs_path = dir.path().join("jobs.json");
    std::fs::write(&jobs_path, Value::Array(jobs).to_string())
        .map_err(|e| format!("writing {}: {e}", jobs_path.display()))?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/flagd_eval.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg("--jobs")
        .arg(&jobs_path)
        .output()
        .map_err(|e| format!("running {} {}: {e}", python.display(), script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} exited with {}; is .venv up to date with tests/python/requirements.txt \
             (`make test`)?\nstderr:\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let report: Report = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("the oracle's output is not the expected JSON: {e}"))?;
    Ok(Oracle {
        outcomes: report
            .results
            .into_iter()
            .map(|r| (r.name, r.outcome))
            .collect(),
        documents: documents.into_iter().collect(),
    })
}

/// The flag states the engine plans for a 0.1 % → 1 % → 5 % → 25 % → 100 % rollout: one
/// per stage, then promotion; and the rollback state when aborted at the 25 % stage.
fn engine_states() -> (Vec<FlagState>, FlagState, FlagState) {
    use jiff::{SignedDuration, Timestamp};
    use sluice::engine::{Observations, plan};
    let spec: sluice::crd::FeatureRolloutSpec = serde_yaml_ng::from_str(&format!(
        r#"
flag: {{ key: {FLAG}, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
target: {{ file: {{ path: flags.json }} }}
stages:
  - {{ weight: "0.1%", duration: 10m }}
  - {{ weight: 1, duration: 10m }}
  - {{ weight: 5, duration: 10m }}
  - {{ weight: 25, duration: 10m }}
  - {{ weight: 100, duration: 10m }}
"#
    ))
    .expect("the oracle's spec parses");
    let mut now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
    let mut status = None;
    let mut states = Vec::new();
    let mut rollback = None;
    loop {
        let p = plan(&spec, status.as_ref(), &Observations::default(), now);
        let flag = p.flag.clone().expect("a valid spec plans a flag state");
        if p.status.phase == sluice::crd::Phase::Promoted {
            return (states, flag, rollback.expect("the 25 % stage was reached"));
        }
        if p.status.stage == Some(3) && rollback.is_none() {
            let mut aborted = spec.clone();
            aborted.control.abort = true;
            let abort = plan(&aborted, Some(&p.status), &Observations::default(), now);
            rollback = abort.flag;
        }
        states.push(flag);
        status = Some(p.status);
        now += SignedDuration::from_mins(10);
    }
}

fn merge(document: &str, key: &str, flag: Value) -> String {
    merge_flag(Some(document), key, flag).expect("merging into a valid document")
}

fn layout_flag() -> FlagDefinition {
    FlagDefinition {
        key: "checkout-layout".to_owned(),
        variants: object(json!({
            "classic": { "columns": 1, "theme": "light", "badges": [] },
            "grid": { "columns": 3, "theme": "dark", "badges": ["new", { "id": 7 }] }
        })),
        baseline: "classic".to_owned(),
        candidate: "grid".to_owned(),
    }
}

fn greeting_flag() -> FlagDefinition {
    FlagDefinition {
        key: "greeting".to_owned(),
        variants: object(json!({ "formal": "Good day", "casual": "Hey 👋" })),
        baseline: "formal".to_owned(),
        candidate: "casual".to_owned(),
    }
}

/// The sampling tolerance for an observed share of `n` users at true share `p`: five
/// standard errors, `5 * sqrt(p (1 - p) / n)`. For a fresh set of keys a correct
/// rendering leaves it with probability about 6e-7 (the keys here are fixed, so the
/// outcome is deterministic); a wrong weight (say doubled, or the buckets swapped)
/// lands far outside: at 0.1 % with 50,000 keys the band is 0.029 %..0.171 %.
fn tolerance(p: f64, n: usize) -> f64 {
    5.0 * (p * (1.0 - p) / n as f64).sqrt()
}

#[test]
fn each_stage_exposes_its_share_and_cohorts_only_grow() {
    let oracle = oracle();
    let mut previous: Option<(&str, &Outcome)> = None;
    println!("stage        keys   candidate  observed   expected   tolerance");
    for (name, weight, keys) in PLAN {
        let outcome = oracle.get(name);
        assert_eq!(outcome.evaluations, keys, "{name}");
        let p = f64::from(weight) / f64::from(WEIGHT_SCALE);
        let observed = outcome.share("on");
        let bound = tolerance(p, keys);
        println!(
            "{name:<10} {keys:>6} {:>11} {:>8.4}% {:>9.4}% {:>10.4}%",
            outcome.served("on"),
            observed * 100.0,
            p * 100.0,
            bound * 100.0
        );
        assert!(
            (observed - p).abs() <= bound,
            "{name}: candidate share {observed} is not within {bound} of {p}"
        );
        // Every evaluation was randomised, whichever bucket it fell in.
        assert_eq!(
            outcome.served("on") + outcome.served("off"),
            keys,
            "{name}: {:?}",
            outcome.counts
        );
        for variant in ["on", "off"] {
            if let Some(reasons) = outcome.counts.get(variant) {
                assert_eq!(reasons.keys().collect::<Vec<_>>(), ["TARGETING_MATCH"]);
            }
        }
        assert_eq!(outcome.values.get("on"), Some(&json!(true)), "{name}");

        // Sticky, monotone cohorts: whoever had the candidate keeps it.
        if let Some((before_name, before)) = previous {
            let common = before.variants.len().min(outcome.variants.len());
            let lost: Vec<usize> = (0..common)
                .filter(|&i| {
                    before.variants[i].as_deref() == Some("on")
                        && outcome.variants[i].as_deref() != Some("on")
                })
                .collect();
            assert!(
                lost.is_empty(),
                "{} users had the candidate at {before_name} but not at {name}, e.g. user-{}",
                lost.len(),
                lost[0]
            );
            let before_count = before.variants[..common]
                .iter()
                .filter(|v| v.as_deref() == Some("on"))
                .count();
            let now_count = outcome.variants[..common]
                .iter()
                .filter(|v| v.as_deref() == Some("on"))
                .count();
            assert!(now_count > before_count, "{before_name} -> {name}");
        }
        previous = Some((name, outcome));
    }
    // The last stage is 100 %: everybody has the candidate, still randomised.
    oracle
        .get("split-100")
        .assert_uniform("split-100", "on", "TARGETING_MATCH");
}

#[test]
fn stage_documents_are_what_sluice_rendered() {
    let oracle = oracle();
    for (name, weight, _) in PLAN {
        let text = &oracle.documents[name];
        let flag = flag_in_document(text, FLAG).unwrap().unwrap();
        assert_eq!(
            flag["targeting"]["fractional"],
            json!([["on", weight], ["off", WEIGHT_SCALE - weight]]),
            "{name}"
        );
        // Integers in the text the evaluator reads (`1000.0` would parse as a float).
        for bucket in flag["targeting"]["fractional"].as_array().unwrap() {
            assert!(bucket[1].is_u64(), "{name}: weight {}", bucket[1]);
        }
    }
}

#[test]
fn promotion_serves_the_candidate_to_everybody() {
    let outcome = oracle().get("promoted");
    assert_eq!(outcome.evaluations, UNIFORM_KEYS);
    // No targeting left: the candidate is the static default.
    outcome.assert_uniform("promoted", "on", "STATIC");
}

#[test]
fn rollback_serves_the_baseline_to_everybody() {
    let outcome = oracle().get("rollback");
    assert_eq!(outcome.evaluations, UNIFORM_KEYS);
    outcome.assert_uniform("rollback", "off", "STATIC");
}

#[test]
fn the_audience_gets_the_candidate_and_everybody_else_the_default() {
    let oracle = oracle();

    // 100 %: exactly the matching users get the candidate; nobody else is randomised.
    let outcome = oracle.get("audience-100");
    for i in 0..outcome.evaluations {
        let (variant, reason) = (
            outcome.variants[i].as_deref(),
            outcome.reasons[i].as_deref(),
        );
        if i % EMAILS.len() == 0 {
            assert_eq!(
                (variant, reason),
                (Some("on"), Some("TARGETING_MATCH")),
                "user-{i}"
            );
        } else {
            assert_eq!(
                (variant, reason),
                (Some("off"), Some("DEFAULT")),
                "user-{i}"
            );
        }
    }
    println!(
        "audience-100: {} of {} users in the audience, all got the candidate",
        outcome.served("on"),
        outcome.evaluations
    );

    // 50 %: half of the audience, nobody outside it.
    let outcome = oracle.get("audience-50");
    let (mut inside, mut candidates) = (0, 0);
    for i in 0..outcome.evaluations {
        let (variant, reason) = (
            outcome.variants[i].as_deref(),
            outcome.reasons[i].as_deref(),
        );
        if i % EMAILS.len() == 0 {
            inside += 1;
            assert_eq!(reason, Some("TARGETING_MATCH"), "user-{i}");
            candidates += usize::from(variant == Some("on"));
        } else {
            assert_eq!(
                (variant, reason),
                (Some("off"), Some("DEFAULT")),
                "user-{i}"
            );
        }
    }
    let observed = candidates as f64 / inside as f64;
    let bound = tolerance(0.5, inside);
    println!(
        "audience-50: {candidates} of {inside} audience users got the candidate ({observed:.4}, tolerance {bound:.4})"
    );
    assert!(
        (observed - 0.5).abs() <= bound,
        "{observed} vs 0.5 ± {bound}"
    );
}

#[test]
fn no_targeting_key_gets_the_baseline() {
    let oracle = oracle();
    for job in ["no-key-split", "no-key-audience"] {
        let outcome = oracle.get(job);
        assert_eq!(outcome.evaluations, 3);
        // The split is 100 % and the user matches the audience, yet without a key
        // fractional has nothing to hash and yields null: the default, the baseline.
        outcome.assert_uniform(job, "off", "DEFAULT");
    }
}

#[test]
fn non_boolean_variants_are_served_as_written() {
    let oracle = oracle();
    for (job, def) in [
        ("object-variants", layout_flag()),
        ("string-variants", greeting_flag()),
    ] {
        let outcome = oracle.get(job);
        assert_eq!(
            outcome.values, def.variants,
            "{job}: both variants, as written"
        );
        let observed = outcome.share(&def.candidate);
        let bound = tolerance(0.25, outcome.evaluations);
        println!("{job}: candidate share {observed:.4} (expected 0.25 ± {bound:.4})");
        assert!((observed - 0.25).abs() <= bound, "{job}: {observed}");
    }
}

#[test]
fn other_flags_evaluate_exactly_as_before() {
    let oracle = oracle();
    for flag in ["dark-mode", "banner"] {
        let before = oracle.get(&format!("{flag}-before"));
        let after = oracle.get(&format!("{flag}-after"));
        assert_eq!(after.variants, before.variants, "{flag}");
        assert_eq!(after.reasons, before.reasons, "{flag}");
        // And the comparison is not vacuous: each serves both of its variants.
        assert_eq!(before.counts.len(), 2, "{flag}: {:?}", before.counts);
    }
    // The documents themselves: everything but Sluice's flag is unchanged.
    let shared: Value = serde_json::from_str(SHARED).unwrap();
    let after: Value = serde_json::from_str(&oracle.documents["split-100"]).unwrap();
    for member in ["$schema", "metadata", "$evaluators"] {
        assert_eq!(after[member], shared[member], "{member}");
    }
    for flag in ["dark-mode", "banner"] {
        assert_eq!(after["flags"][flag], shared["flags"][flag], "{flag}");
    }
}

#[test]
fn the_oracle_notices_float_weights() {
    // Not something Sluice writes: proof that the oracle would catch it if it did.
    let outcome = oracle().get("float-weights");
    outcome.assert_uniform("float-weights", "off", "DEFAULT");
}
