//! Verdicts from a real Prometheus loaded with traffic whose answer is known: a healthy
//! candidate passes, twice the baseline's error rate fails, slow requests and a breached
//! guard fail, a skewed split of users is a sample ratio mismatch, too little traffic is
//! inconclusive, and a broken Prometheus or query is an `Error`, never a `Pass`.
//!
//! Data: counters every 15 s for 20 minutes from 2023-01-01T00:00:00Z; each look is made
//! at the end with the stage started 10 minutes earlier (40 steps in the window). Each
//! scenario is its own flag key in the same server.

mod support;

use jiff::{SignedDuration, Timestamp};
use sluice::analysis::look::{LookAt, RolloutRef, look};
use sluice::crd::{AnalysisStatus, FeatureRolloutSpec, PrometheusSpec, Verdict, validate};
use sluice::prometheus::{PrometheusClient, client_config};
use support::fake::{Behaviour, FakeServer};
use support::openmetrics::OpenMetrics;
use support::server::PrometheusServer;

const START: i64 = 1_672_531_200;
const STEP: i64 = 15;
const POINTS: usize = 81;

/// Per-step increments of `http_requests_total`: (flag, variant, code, increment).
const TRAFFIC: &[(&str, &str, &str, f64)] = &[
    // Healthy: 1 % errors in both cohorts, 50 % exposure.
    ("healthy", "off", "200", 99.0),
    ("healthy", "off", "500", 1.0),
    ("healthy", "on", "200", 99.0),
    ("healthy", "on", "500", 1.0),
    // Twice the baseline's error rate, 1 % against 2 %, on 40,000 requests each.
    ("doubled", "off", "200", 990.0),
    ("doubled", "off", "500", 10.0),
    ("doubled", "on", "200", 980.0),
    ("doubled", "on", "500", 20.0),
    // Healthy requests, but a skewed split of users (see USERS).
    ("skewed", "off", "200", 99.0),
    ("skewed", "off", "500", 1.0),
    ("skewed", "on", "200", 99.0),
    ("skewed", "on", "500", 1.0),
    // Too little traffic: one candidate request a minute.
    ("trickle", "off", "200", 50.0),
    ("trickle", "on", "200", 0.25),
];

/// Per-step increments of distinct users first seen: (flag, variant, increment).
const USERS: &[(&str, &str, f64)] = &[
    ("healthy", "off", 10.0),
    ("healthy", "on", 10.0),
    ("skewed", "off", 10.0),
    ("skewed", "on", 6.0),
];

/// Per-step increments of the Python instrumentation's per-user sums for the "doubled"
/// flag: (variant, Σn, Σx, Σn², Σx², Σn·x). The baseline's users send one request each;
/// in the candidate, one heavy user sends half the requests (20,000 in the window) with
/// 600 of its 800 errors, the others one request each: over the 40 steps of a look's
/// window, Σn² = 20,000² + 20,000, Σx² = 600² + 200, Σn·x = 20,000·600 + 200.
const PER_USER: &[(&str, [f64; 5])] = &[
    ("off", [1000.0, 10.0, 1000.0, 10.0, 10.0]),
    ("on", [1000.0, 20.0, 10_000_500.0, 9_005.0, 300_005.0]),
];

fn data() -> OpenMetrics {
    let mut data = OpenMetrics::default();
    for (variant, sums) in PER_USER {
        let labels = [
            ("job", "shop"),
            ("feature_flag_key", "doubled"),
            ("feature_flag_result_variant", *variant),
            ("feature_flag_result_reason", "TARGETING_MATCH"),
        ];
        for (name, increment) in [
            "sluice_user_requests",
            "sluice_user_errors",
            "sluice_user_requests_squared",
            "sluice_user_errors_squared",
            "sluice_user_requests_errors",
        ]
        .into_iter()
        .zip(sums)
        {
            data.counter(name, &labels, START, STEP, POINTS, *increment);
        }
    }
    for (flag, variant, code, increment) in TRAFFIC {
        let labels = [
            ("job", "shop"),
            ("feature_flag_key", *flag),
            ("feature_flag_result_variant", *variant),
            ("code", *code),
        ];
        data.counter("http_requests", &labels, START, STEP, POINTS, *increment);
    }
    for (flag, variant, increment) in USERS {
        let labels = [
            ("job", "shop"),
            ("feature_flag_key", *flag),
            ("feature_flag_result_variant", *variant),
        ];
        data.counter(
            "feature_flag_users",
            &labels,
            START,
            STEP,
            POINTS,
            *increment,
        );
    }
    // Latency: the "slow" flag's candidate is slower above 0.5 s.
    for (variant, buckets) in [
        ("off", [("0.1", 60.0), ("0.5", 95.0), ("+Inf", 100.0)]),
        ("on", [("0.1", 40.0), ("0.5", 80.0), ("+Inf", 100.0)]),
    ] {
        let labels = [
            ("job", "shop"),
            ("feature_flag_key", "slow"),
            ("feature_flag_result_variant", variant),
        ];
        data.histogram(
            "http_request_duration_seconds",
            &labels,
            &buckets,
            START,
            STEP,
            POINTS,
        );
    }
    data.gauge(
        "container_memory_working_set_bytes",
        &[("pod", "shop-1")],
        2.0e9,
        START + STEP * (POINTS as i64 - 1),
    );
    data
}

fn spec(flag: &str, metrics: &str, users: bool) -> FeatureRolloutSpec {
    let users = if users {
        r#"users: 'sum by (feature_flag_result_variant) (increase(feature_flag_users_total{feature_flag_key="{{ flag }}"}[{{ window }}]))'"#
    } else {
        ""
    };
    let yaml = format!(
        r#"
flag: {{ key: {flag}, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
target: {{ file: {{ path: flags.json }} }}
stages:
  - {{ weight: 50, duration: 10m }}
  - {{ weight: 100 }}
analysis:
  {users}
  metrics:
{metrics}
"#
    );
    serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

const ERROR_RATE: &str = r#"    - name: error-rate
      ratio:
        errors: 'sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key="{{ flag }}",code=~"5.."}[{{ window }}]))'
        requests: 'sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key="{{ flag }}"}[{{ window }}]))'
      maxIncrease: { relative: "10%" }"#;

const SLOW: &str = r#"    - name: slow-requests
      histogram:
        buckets: 'sum by (le, feature_flag_result_variant) (increase(http_request_duration_seconds_bucket{feature_flag_key="{{ flag }}"}[{{ window }}]))'
        threshold: 0.5
      maxIncrease: { relative: "20%" }"#;

const MEMORY: &str = r#"    - name: memory
      guard: { query: 'max(container_memory_working_set_bytes{pod=~"shop-.*"})', max: 1.5e9 }"#;

fn end() -> Timestamp {
    Timestamp::from_second(START + STEP * (POINTS as i64 - 1)).unwrap()
}

async fn analyse(address: &str, spec: &FeatureRolloutSpec) -> AnalysisStatus {
    let valid = validate(spec).expect("test spec is valid");
    let config = client_config(&PrometheusSpec {
        address: address.into(),
        timeout: Some("2s".into()),
        ..Default::default()
    })
    .unwrap();
    let client = PrometheusClient::new(config).unwrap();
    // The stage's looks as the controller makes them, one a minute, each with the
    // previous one as `status.lastAnalysis` (the spread between looks is what the
    // comparison's variance is checked against).
    let rollout = RolloutRef {
        namespace: "shop",
        name: "test",
    };
    let started = end() - SignedDuration::from_mins(10);
    let mut previous: Option<AnalysisStatus> = None;
    for minute in 1..=10 {
        let at = LookAt {
            stage: 0,
            stage_started_at: started,
            now: started + SignedDuration::from_mins(minute),
        };
        let status = look(&client, &valid, rollout.clone(), at, previous.as_ref()).await;
        previous = Some(status);
    }
    previous.expect("ten looks")
}

#[tokio::test]
async fn verdicts_follow_the_data() {
    let server = PrometheusServer::start(&data()).await;
    let url = server.base_url();

    let healthy = analyse(&url, &spec("healthy", ERROR_RATE, true)).await;
    assert_eq!(healthy.verdict, Verdict::Pass, "{healthy:#?}");
    let m = &healthy.metrics[0];
    assert_eq!(m.baseline.as_ref().unwrap().n, 4_000.0);
    assert_eq!(m.candidate.as_ref().unwrap().value, 0.01);
    assert!(m.statistic.unwrap() < m.boundary.unwrap(), "{m:#?}");
    assert_eq!(m.evidence.as_ref().unwrap().strata[0].candidate.looks, 10);
    assert!(
        m.queries[0].contains(r#"feature_flag_key="healthy""#) && m.queries[0].contains("[10m]"),
        "{:?}",
        m.queries
    );
    assert!(!healthy.sample_ratio.as_ref().unwrap().mismatch);
    assert_eq!(healthy.candidate_samples, Some(4_000));
    let requests = healthy.request_share.as_ref().unwrap();
    assert_eq!(
        (requests.expected_share, requests.observed_share),
        (0.5, 0.5)
    );

    // 2 % against 1 %, 4,000 requests a look in each cohort, ten perfectly regular looks:
    // harm at the estimated dispersion (κ = 0), but at 40 errors a look a dispersion of a
    // few hundredths would double the variance, and ten looks cannot rule that out (about
    // one degree of freedom): the look holds the stage and says why, it never passes.
    // More looks decide (the stage's end waits for them).
    let doubled = analyse(&url, &spec("doubled", ERROR_RATE, false)).await;
    assert_eq!(doubled.verdict, Verdict::Inconclusive, "{doubled:#?}");
    let m = &doubled.metrics[0];
    assert_eq!(
        m.boundary_state,
        Some(sluice::crd::BoundaryState::DispersionUncertain),
        "{m:#?}"
    );
    assert!(m.statistic.unwrap() > 5.0, "{m:#?}");
    assert!(
        doubled
            .message
            .as_deref()
            .unwrap()
            .contains("only because the dispersion between looks is uncertain"),
        "{:?}",
        doubled.message
    );

    let skewed = analyse(&url, &spec("skewed", ERROR_RATE, true)).await;
    assert_eq!(skewed.verdict, Verdict::Inconclusive, "{skewed:#?}");
    let srm = skewed.sample_ratio.as_ref().unwrap();
    assert!(srm.mismatch && srm.p_value < 0.001, "{srm:?}");
    assert!(
        skewed
            .message
            .as_deref()
            .unwrap()
            .contains("sample ratio mismatch")
    );

    let trickle = analyse(&url, &spec("trickle", ERROR_RATE, false)).await;
    assert_eq!(trickle.verdict, Verdict::Inconclusive, "{trickle:#?}");
    assert!(
        trickle
            .message
            .as_deref()
            .unwrap()
            .contains("candidate events so far"),
        "{:?}",
        trickle.message
    );

    let silent = analyse(&url, &spec("never-served", ERROR_RATE, false)).await;
    assert_eq!(silent.verdict, Verdict::Inconclusive);
    assert!(
        silent
            .message
            .as_deref()
            .unwrap()
            .contains("during the whole stage"),
        "{:?}",
        silent.message
    );
    assert_eq!(
        silent.metrics[0].cause,
        Some(sluice::crd::MetricCause::NoDataAllStage),
        "the typed cause the notifier decides on"
    );

    // As `doubled` above: clear harm at the estimated dispersion, ten regular looks at 4,000
    // requests cannot bound the dispersion well enough: held, never passed.
    let slow = analyse(&url, &spec("slow", SLOW, false)).await;
    assert_eq!(slow.verdict, Verdict::Inconclusive, "{slow:#?}");
    assert_eq!(
        slow.metrics[0].boundary_state,
        Some(sluice::crd::BoundaryState::DispersionUncertain),
        "{slow:#?}"
    );
    assert!(
        slow.metrics[0]
            .shift
            .as_deref()
            .unwrap()
            .contains("Mann-Whitney"),
        "{:?}",
        slow.metrics[0].shift
    );

    let memory = analyse(&url, &spec("healthy", MEMORY, false)).await;
    assert_eq!(memory.verdict, Verdict::Fail, "{memory:#?}");
    assert!(
        memory
            .message
            .as_deref()
            .unwrap()
            .contains("above the guard's max")
    );
}

/// The error-rate metric with `perUser` queries on the Python instrumentation's series.
fn error_rate_per_user() -> String {
    let query = |series: &str| {
        format!(
            "'sum by (feature_flag_result_variant) (increase({series}{{feature_flag_key=\"{{{{ flag }}}}\",feature_flag_result_reason=\"TARGETING_MATCH\"}}[{{{{ window }}}}]))'"
        )
    };
    ERROR_RATE.replace(
        "      maxIncrease:",
        &format!(
            "        perUser:\n          requests: {}\n          bad: {}\n          requestsSquared: {}\n          badSquared: {}\n          requestsTimesBad: {}\n      maxIncrease:",
            query("sluice_user_requests_total"),
            query("sluice_user_errors_total"),
            query("sluice_user_requests_squared_total"),
            query("sluice_user_errors_squared_total"),
            query("sluice_user_requests_errors_total"),
        ),
    )
}

/// Twice the baseline's error rate, but half of the candidate's requests and most of its
/// errors come from one heavy user: with the per-user sums read from Prometheus, the
/// user-level variance sees that one user, and the evidence is far weaker than the
/// request-level one (which holds on it as harm it cannot yet confirm).
#[tokio::test]
async fn per_user_sums_from_prometheus_give_the_user_level_variance() {
    let server = PrometheusServer::start(&data()).await;
    let url = server.base_url();
    let requests = analyse(&url, &spec("doubled", ERROR_RATE, false)).await;
    let users = analyse(&url, &spec("doubled", &error_rate_per_user(), false)).await;
    let (r, u) = (&requests.metrics[0], &users.metrics[0]);
    assert_eq!(u.queries.len(), 7, "{:?}", u.queries);
    assert!(
        u.queries[4].contains("sluice_user_requests_squared_total")
            && u.queries[4].contains(r#"feature_flag_key="doubled""#)
            && u.queries[4].contains("[10m]"),
        "{:?}",
        u.queries
    );
    assert!(r.user_variance.is_none(), "{r:#?}");
    let v = u.user_variance.expect("the user-level variance in status");
    assert!(v.candidate_over_binomial > 50.0, "{v:?}");
    assert!((v.baseline_over_binomial - 1.0).abs() < 1e-6, "{v:?}");
    assert!(v.candidate_effective_users < 5.0, "{v:?}");
    assert_eq!(users.verdict, Verdict::Pass, "{users:#?}");
    assert!(
        u.statistic.unwrap() < r.statistic.unwrap() / 3.0,
        "user-level z = {:?}, request-level z = {:?}",
        u.statistic,
        r.statistic
    );
    let stratum = &u.evidence.as_ref().unwrap().strata[0];
    let sums = stratum.users.expect("per-user sums kept in the evidence");
    assert_eq!(sums.candidate.nn, 400_020_000.0);
}

#[tokio::test]
async fn a_broken_prometheus_or_query_is_an_error_never_a_pass() {
    let mut server = PrometheusServer::start(&data()).await;
    let url = server.base_url();
    let broken = ERROR_RATE.replace("sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key=\"{{ flag }}\",code", "sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key=\"{{ flag }}\",,code");
    let syntax = analyse(&url, &spec("healthy", &broken, false)).await;
    assert_eq!(syntax.verdict, Verdict::Error, "{syntax:#?}");
    assert!(
        syntax.message.as_deref().unwrap().contains("bad_data"),
        "{:?}",
        syntax.message
    );

    server.stop();
    let down = analyse(&url, &spec("healthy", ERROR_RATE, true)).await;
    assert_eq!(down.verdict, Verdict::Error, "{down:#?}");
    assert!(
        down.message.as_deref().unwrap().contains("unreachable"),
        "{:?}",
        down.message
    );
}

#[tokio::test]
async fn a_slow_failing_or_garbled_prometheus_is_an_error_never_a_pass() {
    let cases = [
        (Behaviour::Hang, "did not answer within 2s"),
        (
            Behaviour::Respond(vec![(
                500,
                r#"{"status":"error","errorType":"internal","error":"disk full"}"#.into(),
            )]),
            "500",
        ),
        (
            Behaviour::Respond(vec![(200, "{not json".into())]),
            "malformed",
        ),
    ];
    for (behaviour, cause) in cases {
        let server = FakeServer::start(behaviour).await;
        let started = std::time::Instant::now();
        let result = analyse(&server.url, &spec("healthy", ERROR_RATE, true)).await;
        println!(
            "{:?} after {:?}: {:?}",
            result.verdict,
            started.elapsed(),
            result.message
        );
        assert_eq!(result.verdict, Verdict::Error, "{result:#?}");
        let message = result.message.as_deref().unwrap();
        assert!(message.contains(cause), "{cause:?} not in {message}");
        assert!(
            result.sample_ratio.is_none(),
            "a failed users query is no sample ratio"
        );
    }
}

#[tokio::test]
async fn sluice_analyze_prints_the_verdict_table() {
    let server = PrometheusServer::start(&data()).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = |flag: &str| {
        let spec = serde_json::to_value(spec(flag, ERROR_RATE, true)).unwrap();
        let doc = serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "FeatureRollout",
            "metadata": { "name": flag, "namespace": "shop" },
            "spec": spec,
        });
        let path = dir.path().join(format!("{flag}.yaml"));
        std::fs::write(&path, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
        path
    };
    let run = |path: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("analyze")
            .arg(path)
            .args([
                "--prometheus",
                &server.base_url(),
                "--at",
                &end().to_string(),
                "--elapsed",
                "10m",
            ])
            .output()
            .unwrap()
    };

    let healthy = run(manifest("healthy"));
    let out = String::from_utf8_lossy(&healthy.stdout);
    println!("{out}");
    assert!(
        healthy.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    assert!(
        out.contains("error-rate") && out.contains("Pass") && out.contains("verdict: Pass"),
        "{out}"
    );
    assert!(out.contains(r#"query: sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key="healthy""#), "{out}");
    assert!(out.contains("users: baseline 400 candidate 400"), "{out}");

    // Inconclusive (see verdicts_follow_the_data): not a failure of the command.
    let doubled = run(manifest("doubled"));
    let out = String::from_utf8_lossy(&doubled.stdout);
    assert_eq!(doubled.status.code(), Some(0), "{out}");
    assert!(out.contains("verdict: Inconclusive"), "{out}");

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["analyze", "no-such-file.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-file.yaml: cannot read"));
}
