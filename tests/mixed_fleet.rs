//! Mixed-language fleets: Sluice's documents at 1 / 5 / 25 / 50 % evaluated for 20,000
//! users by the Python evaluator (the OpenFeature SDK with the flagd provider, flagd-core
//! 2.0.0: `tests/python/flagd_eval.py`) and by the JavaScript one
//! (`@openfeature/flagd-core` 4.0.1 under node: `tests/js/flagd_eval.cjs`, installed by
//! `scripts/install-flagd-core-js.sh`). Each evaluator's own share of the candidate and
//! its stickiness (nobody loses the candidate at the next stage) are asserted; how often
//! the two agree on a user is printed, not asserted: they hash differently today (CBOR
//! of [flagKey, targetingKey] vs the concatenated string), and upstream releases will
//! change that.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value, json};
use sluice::flagd::{FlagDefinition, FlagState, WEIGHT_SCALE, merge_flag, render_flag};

const USERS: usize = 20_000;
const FLAG: &str = "new-checkout";
/// The exposures, in percent.
const EXPOSURES: [u32; 4] = [1, 5, 25, 50];

fn flag() -> FlagDefinition {
    let variants: Map<String, Value> = json!({ "on": true, "off": false })
        .as_object()
        .cloned()
        .unwrap();
    FlagDefinition {
        key: FLAG.into(),
        variants,
        baseline: "off".into(),
        candidate: "on".into(),
    }
}

/// Sluice's document at `percent` %, written to `dir`.
fn document(dir: &Path, percent: u32) -> PathBuf {
    let state = FlagState::Split {
        candidate_weight: WEIGHT_SCALE / 100 * percent,
        audience: None,
    };
    let text = merge_flag(None, FLAG, render_flag(&flag(), &state)).unwrap();
    let path = dir.join(format!("flags-{percent}.json"));
    std::fs::write(&path, text).unwrap();
    path
}

fn python() -> String {
    std::env::var("SLUICE_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

/// Whether each user got the candidate, per exposure, from the Python evaluator.
fn python_cohorts(documents: &[PathBuf]) -> Vec<Vec<bool>> {
    let jobs: Vec<Value> = documents
        .iter()
        .map(|d| json!({ "document": d, "flag": FLAG, "keys": USERS }))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/flagd_eval.py");
    let mut child = Command::new(python())
        .args([script, "--jobs", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the Python evaluator runs (SLUICE_PYTHON or .venv)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(jobs).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python evaluator succeeds");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            job["variants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v == "on")
                .collect()
        })
        .collect()
}

/// The node_modules directory holding @openfeature/flagd-core.
fn flagd_core_js() -> PathBuf {
    let dir = std::env::var_os("SLUICE_FLAGD_CORE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("SLUICE_NPM_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/sluice-npm")
                });
            cache.join("flagd-core-4.0.1/node_modules")
        });
    assert!(
        dir.join("@openfeature/flagd-core").is_dir(),
        "{} has no @openfeature/flagd-core: run scripts/install-flagd-core-js.sh (make test does)",
        dir.display()
    );
    dir
}

/// Whether each user got the candidate, per exposure, from the JavaScript evaluator.
fn javascript_cohorts(documents: &[PathBuf]) -> (String, Vec<Vec<bool>>) {
    let modules = flagd_core_js();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/flagd_eval.cjs");
    let mut version = String::new();
    let cohorts = documents
        .iter()
        .map(|document| {
            let out = Command::new("node")
                .arg(script)
                .arg(document)
                .args([FLAG, &USERS.to_string()])
                .env("SLUICE_FLAGD_CORE_JS", &modules)
                .output()
                .expect("node runs");
            assert!(
                out.status.success(),
                "the JavaScript evaluator succeeds: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
            version = answer["version"].as_str().unwrap_or_default().to_owned();
            answer["variants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v == "on")
                .collect()
        })
        .collect();
    (version, cohorts)
}

/// Five standard deviations of a share at `p` over `n` users (the hash is deterministic:
/// a wrong weight or swapped buckets land far outside).
fn tolerance(p: f64, n: usize) -> f64 {
    5.0 * (p * (1.0 - p) / n as f64).sqrt()
}

fn check_alone(name: &str, cohorts: &[Vec<bool>]) {
    for (i, percent) in EXPOSURES.iter().enumerate() {
        let p = f64::from(*percent) / 100.0;
        let share = cohorts[i].iter().filter(|c| **c).count() as f64 / USERS as f64;
        assert!(
            (share - p).abs() <= tolerance(p, USERS),
            "{name} at {percent} %: {share:.4} of the users get the candidate"
        );
        if i > 0 {
            let lost = (0..USERS)
                .filter(|&u| cohorts[i - 1][u] && !cohorts[i][u])
                .count();
            assert_eq!(
                lost, 0,
                "{name}: {lost} users lose the candidate at {percent} %"
            );
        }
    }
}

#[test]
fn python_and_javascript_each_keep_their_shares_and_cohorts_and_their_agreement_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let documents: Vec<PathBuf> = EXPOSURES.iter().map(|p| document(dir.path(), *p)).collect();
    let python = python_cohorts(&documents);
    let (version, javascript) = javascript_cohorts(&documents);
    check_alone("Python (flagd-core 2.0.0)", &python);
    check_alone(
        &format!("JavaScript (@openfeature/flagd-core {version})"),
        &javascript,
    );
    println!(
        "mixed fleet, {USERS} users: Python flagd-core 2.0.0 vs JavaScript @openfeature/flagd-core {version}"
    );
    for (i, percent) in EXPOSURES.iter().enumerate() {
        let disagree = (0..USERS)
            .filter(|&u| python[i][u] != javascript[i][u])
            .count();
        let both = (0..USERS)
            .filter(|&u| python[i][u] && javascript[i][u])
            .count();
        println!(
            "  {percent:>2} %: disagree on {disagree:>5} users ({:.1} %); candidate in both: {both}, Python only: {}, JavaScript only: {}",
            100.0 * disagree as f64 / USERS as f64,
            python[i].iter().filter(|c| **c).count() - both,
            javascript[i].iter().filter(|c| **c).count() - both,
        );
    }
}
