//! `sluice plan`: its figures agree with `sluice simulate`'s on BENCHMARK.md's S1, it reads
//! the traffic from a real Prometheus with the rollout's own queries and warns about a
//! stage that cannot reach its `minSamples`, and bad input exits 2 naming the field.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use sluice::crd::FeatureRolloutSpec;
use sluice::simulate::report::Summary;
use sluice::simulate::sluice_rule::{SluiceRollout, benchmark_spec_yaml};
use sluice::simulate::{Case, Schedule, Traffic, simulate_case};
use support::openmetrics::OpenMetrics;
use support::server::PrometheusServer;

const SEED: u64 = 20_260_501;

fn benchmark_plan() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/benchmark-plan.yaml"
    ))
}

fn sluice_plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("plan")
        .args(args)
        .output()
        .expect("run sluice plan")
}

/// `sluice plan` of `manifest` with the traffic given by hand (50 requests/s, a baseline
/// rate of 1 %), then `more`.
fn by_hand<'a>(manifest: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![manifest, "--traffic", "50", "--baseline-rate", "0.01"];
    args.extend_from_slice(more);
    args
}

/// `sluice plan` of `manifest` reading the traffic from the Prometheus at `url` over the
/// ten minutes before `at`, in `runs` simulated rollouts per figure, then `more`.
fn plan_from_prometheus(manifest: &str, url: &str, at: &str, runs: &str, more: &[&str]) -> Output {
    let mut args = vec![
        manifest,
        "--prometheus",
        url,
        "--window",
        "10m",
        "--at",
        at,
        "--runs",
        runs,
    ];
    args.extend_from_slice(more);
    sluice_plan(&args)
}

/// Writes `to`: the file `from` with `old` replaced by `new`.
fn write_edited(from: &Path, to: &Path, old: &str, new: &str) {
    let text = std::fs::read_to_string(from).unwrap();
    std::fs::write(to, text.replace(old, new)).unwrap();
}

fn json(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}\n{text}\n{}", String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn the_example_benchmark_plan_is_the_benchmarks_spec() {
    let rollout = sluice::cli::load_rollout(benchmark_plan(), None).expect("a valid example");
    let spec: FeatureRolloutSpec =
        serde_yaml_ng::from_str(&benchmark_spec_yaml(&Schedule::benchmark(), 0.95, "0%")).unwrap();
    assert_eq!(rollout.spec, spec);
}

/// Two shares agree when they differ by at most three combined standard errors.
fn shares_agree(a: (f64, f64), b: (f64, f64)) -> bool {
    (a.0 - b.0).abs() <= 3.0 * (a.1 * a.1 + b.1 * b.1).sqrt() + 1e-9
}

fn share(v: &Value) -> (f64, f64) {
    (
        v["share"].as_f64().unwrap(),
        v["standardError"].as_f64().unwrap(),
    )
}

#[test]
fn plan_agrees_with_simulate_on_s1() {
    const RUNS: usize = 300;
    let out = sluice_plan(&[
        benchmark_plan().to_str().unwrap(),
        "--traffic",
        "50",
        "--baseline-rate",
        "0.01",
        "--runs",
        &RUNS.to_string(),
        "--threads",
        "2",
        "--output",
        "json",
    ]);
    let report = json(&out);
    let first = &report["stages"][0]["metrics"][0];
    let schedule = Schedule::benchmark();
    let sluice = SluiceRollout::benchmark(&schedule);
    for (key, m) in [("doubled", 2.0), ("fivefold", 5.0)] {
        let case = Case::benchmark("S1", Traffic::s1(), m, 0);
        let outcomes = simulate_case(&case, &[], Some(&sluice), RUNS, SEED, 2);
        let summary = Summary::new(&case, &outcomes[0]);
        let ours = &first[key];
        println!("plan {key}: {ours}");
        let (median, lo, hi) = summary.median_minutes().expect("rollbacks");
        println!(
            "simulate m={m}: rolled back {}, in the 1 % stage {}/{RUNS}, median {median} [{lo}–{hi}]",
            summary.rollback_share(),
            summary.ended_in_stage[0]
        );
        let simulate_caught = summary.rollback_share();
        assert!(
            shares_agree(
                share(&ours["caughtBeforePromotion"]),
                (simulate_caught.value, simulate_caught.standard_error)
            ),
            "m={m}: caught before promotion"
        );
        let in_stage = sluice::simulate::report::Share::new(summary.ended_in_stage[0], RUNS);
        assert!(
            shares_agree(
                share(&ours["caughtInStage"]),
                (in_stage.value, in_stage.standard_error)
            ),
            "m={m}: caught in the 1 % stage"
        );
        // The medians' 95 % intervals overlap.
        let interval = ours["medianInterval"].as_array().unwrap();
        let (our_lo, our_hi) = (interval[0].as_f64().unwrap(), interval[1].as_f64().unwrap());
        assert!(
            our_lo <= f64::from(hi) && f64::from(lo) <= our_hi,
            "m={m}: median intervals [{our_lo}, {our_hi}] and [{lo}, {hi}]"
        );
    }
    // The figures are seeded: the same command gives the same report.
    assert_eq!(report["runs"], RUNS);
    assert_eq!(report["seed"], SEED);
}

const START: i64 = 1_672_531_200;
const STEP: i64 = 15;
const POINTS: usize = 81;

#[tokio::test]
async fn plan_reads_the_traffic_from_prometheus_and_warns_about_min_samples() {
    // 3 requests/s while only the baseline is served, 1 % of them errors; 10 users first
    // seen every 15 s.
    let mut data = OpenMetrics::default();
    for (code, increment) in [("200", 44.55), ("500", 0.45)] {
        let labels = [
            ("job", "shop"),
            ("feature_flag_key", "planned"),
            ("feature_flag_result_variant", "off"),
            ("code", code),
        ];
        data.counter("http_requests", &labels, START, STEP, POINTS, increment);
    }
    data.counter(
        "feature_flag_users",
        &[
            ("feature_flag_key", "planned"),
            ("feature_flag_result_variant", "off"),
        ],
        START,
        STEP,
        POINTS,
        10.0,
    );
    let server = PrometheusServer::start(&data).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("planned.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: sluice.dev/v1alpha1
kind: FeatureRollout
metadata: { name: planned, namespace: shop }
spec:
  flag: { key: planned, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
  target: { file: { path: flags.json } }
  stages:
    - { name: one-percent, weight: 1, duration: 10m, minSamples: 300 }
    - { name: half, weight: 50, duration: 10m }
    - { weight: 100 }
  analysis:
    interval: 1m
    users: 'sum by (feature_flag_result_variant) (increase(feature_flag_users_total{feature_flag_key="{{ flag }}"}[{{ window }}]))'
    metrics:
      - name: error-rate
        ratio:
          errors: 'sum by (feature_flag_result_variant) (increase(http_requests_total{job="shop",code=~"5..",feature_flag_key="{{ flag }}"}[{{ window }}]))'
          requests: 'sum by (feature_flag_result_variant) (increase(http_requests_total{job="shop",feature_flag_key="{{ flag }}"}[{{ window }}]))'
        maxIncrease: { relative: "10%" }
"#,
    )
    .unwrap();
    let end = jiff::Timestamp::from_second(START + STEP * (POINTS as i64 - 1)).unwrap();
    let url = server.base_url();
    let manifest_arg = manifest.to_str().unwrap().to_owned();
    let end_arg = end.to_string();
    let out = tokio::task::spawn_blocking(move || {
        plan_from_prometheus(&manifest_arg, &url, &end_arg, "20", &["--output", "json"])
    })
    .await
    .unwrap();
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "warnings exit 1: {report:#}");
    let traffic = &report["traffic"][0];
    let rate = traffic["requestsPerSecond"].as_f64().unwrap();
    let baseline = traffic["baselineRate"].as_f64().unwrap();
    assert!((rate - 3.0).abs() < 0.01, "read {rate} requests/s");
    assert!(
        (baseline - 0.01).abs() < 1e-4,
        "read a baseline rate of {baseline}"
    );
    let source = report["trafficSource"].as_str().unwrap();
    assert!(
        source.contains("over the 10m before 2023-01-01T00:20:00Z"),
        "{source}"
    );
    // 400 distinct users over ten minutes, 1 % of them on the candidate.
    let users = report["stages"][0]["expectedCandidateUsers"]
        .as_f64()
        .unwrap();
    assert!((users - 4.0).abs() < 0.05, "{users}");
    let expected = report["stages"][0]["expectedCandidateRequests"]
        .as_f64()
        .unwrap();
    assert!((expected - 18.0).abs() < 0.1, "{expected}");
    let warnings = report["warnings"].as_array().unwrap();
    let min_samples = warnings
        .iter()
        .find(|w| w["kind"] == "minSamplesUnreachable")
        .unwrap_or_else(|| panic!("no minSamples warning: {warnings:#?}"));
    assert_eq!(min_samples["stage"], "one-percent");
    assert_eq!(min_samples["minSamples"], 300);
    // Healthy rollouts are all held in that stage.
    let held = report["stages"][0]["healthy"]["heldByMinSamples"]["share"]
        .as_f64()
        .unwrap();
    assert!(held > 0.9, "{held}");

    // The same in words.
    let text = plan_from_prometheus(
        manifest.to_str().unwrap(),
        &server.base_url(),
        &end.to_string(),
        "10",
        &[],
    );
    let words = String::from_utf8_lossy(&text.stdout);
    println!("{words}");
    assert_eq!(text.status.code(), Some(1));
    assert!(
        words.contains("error-rate: 3.00 requests/s, baseline rate 1.00 %"),
        "{words}"
    );
    assert!(
        words.contains("stage one-percent cannot reach its minSamples in its duration"),
        "{words}"
    );

    // A query that matches nothing is an error naming the metric's field.
    let empty = dir.path().join("empty.yaml");
    write_edited(&manifest, &empty, "key: planned", "key: unknown");
    let out = sluice_plan(&[
        empty.to_str().unwrap(),
        "--prometheus",
        &server.base_url(),
        "--at",
        &end.to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("spec.analysis.metrics[0]"), "{err}");
    assert!(err.contains("no events over the 1h before"), "{err}");
}

#[test]
fn bad_input_exits_2_naming_the_field() {
    let plan = benchmark_plan().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    write_edited(
        benchmark_plan(),
        &broken,
        r#"weight: "5%""#,
        r#"weight: "150%""#,
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            by_hand(broken.to_str().unwrap(), &[]),
            "spec.stages[1].weight",
        ),
        (
            vec![plan, "--traffic", "50", "--baseline-rate", "1.5"],
            "--baseline-rate",
        ),
        (
            vec![plan, "--traffic=-3", "--baseline-rate", "0.01"],
            "--traffic",
        ),
        (
            vec![plan, "--traffic", "fast", "--baseline-rate", "0.01"],
            "--traffic",
        ),
        (vec![plan, "--baseline-rate", "0.01"], "--traffic"),
        (
            vec![plan, "--traffic", "50", "--baseline-rate", "latency=0.01"],
            "no ratio or histogram metric named \"latency\"",
        ),
        (by_hand(plan, &["--runs", "2"]), "--runs"),
        (
            by_hand(plan, &["--runs", "1000000"]),
            "--runs: 1000000 runs of a plan of 40 looks (one every 60 s, with the holds its minSamples need at this traffic) would take too long; use at most --runs 25000",
        ),
        (by_hand(plan, &["--burstiness", "0"]), "--burstiness"),
        (
            by_hand("no-such-file.yaml", &[]),
            "no-such-file.yaml: cannot read",
        ),
        (
            vec![
                plan,
                "--prometheus",
                "http://127.0.0.1:9",
                "--window",
                "soon",
            ],
            "--window",
        ),
    ];
    for (args, field) in cases {
        let out = sluice_plan(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing printed on stdout");
    }
}
