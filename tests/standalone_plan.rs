//! The plan at rollout start in standalone mode, as a user runs it: the real binary on
//! real files, its looks answered by a small Prometheus stand-in with fixed counts. After
//! the first looks the plan lands in the status file with the `PlanCanDetect` condition,
//! one Warning event in `events.log` for the stage that cannot detect its tolerance, and
//! `sluice ctl status` prints it.

mod support;

use std::io::Write as _;
use std::net::TcpListener;

use serde_json::Value;
use support::standalone::{Standalone, ctl, directories, read_request, status, wait_for};

/// Answers every instant query with fixed counts per cohort: 1,000 baseline and 10
/// candidate requests, of which 10 and 0 are errors (the query naming `errors_total`).
fn prometheus() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let (head, body) = read_request(&mut stream);
                let (baseline, candidate) = if format!("{head}{body}").contains("errors_total") {
                    (10, 0)
                } else {
                    (1000, 10)
                };
                let answer = serde_json::json!({
                    "status": "success",
                    "data": { "resultType": "vector", "result": [
                        { "metric": { "feature_flag_result_variant": "off" }, "value": [1, baseline.to_string()] },
                        { "metric": { "feature_flag_result_variant": "on" }, "value": [1, candidate.to_string()] },
                    ] },
                })
                .to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    url
}

fn rollout(prometheus: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: FeatureRollout
metadata: {{ name: planned }}
spec:
  flag: {{ key: planned, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
  target: {{ file: {{ path: flags.json }} }}
  stages:
    - {{ name: one-percent, weight: 1, duration: 60s }}
    - {{ name: half, weight: 50, duration: 60s }}
    - {{ weight: 100 }}
  analysis:
    interval: 1s
    prometheus: {{ address: "{prometheus}", timeout: 5s }}
    metrics:
      - name: error-rate
        ratio:
          errors: 'sum by (feature_flag_result_variant) (errors_total)'
          requests: 'sum by (feature_flag_result_variant) (requests_total)'
        maxIncrease: {{ relative: "10%" }}
"#
    )
}

#[test]
fn the_plan_is_written_to_the_status_file_with_one_warning_and_shown_by_ctl() {
    let (dir, rollouts, state) = directories();
    std::fs::write(rollouts.join("planned.yaml"), rollout(&prometheus())).unwrap();
    let log = dir.path().join("sluice.log");
    let _process = Standalone::start(&rollouts, &state, &["--plan-runs", "20"], &log);

    let written = wait_for("the plan in the status file", || {
        status(&state, "planned").filter(|s| s.plan.is_some())
    });
    let plan = written.plan.clone().unwrap();
    assert_eq!(plan.runs, 20);
    assert_eq!(plan.observed_stage, 0);
    assert!(plan.observed_seconds >= 3.0, "{plan:?}");
    let traffic = &plan.traffic[0];
    // 1,010 requests since the stage began, 10 of the baseline's 1,000 errors.
    assert!(
        (traffic.requests_per_second - 1010.0 / plan.observed_seconds).abs() < 1e-6,
        "{traffic:?}"
    );
    assert!(
        (traffic.baseline_rate - 10.5 / 1001.0).abs() < 1e-9,
        "{traffic:?}"
    );
    assert_eq!(
        plan.stages[0].metrics[0].detects_tolerance,
        Some(false),
        "{plan:#?}"
    );
    let condition = written
        .conditions
        .iter()
        .find(|c| c.type_ == "PlanCanDetect")
        .expect("the condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "ToleranceUndetectable")
    );

    // Looks go on (the stage holds on too little candidate data); the warning stays one.
    let seen = written.last_analysis.as_ref().unwrap().at;
    wait_for("three more looks", || {
        status(&state, "planned").filter(|s| {
            s.last_analysis
                .as_ref()
                .is_some_and(|a| a.at.duration_since(seen).as_secs() >= 3)
        })
    });
    let events = std::fs::read_to_string(state.join("events.log")).unwrap();
    let warnings: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["reason"] == "PlanCannotDetect")
        .collect();
    assert_eq!(warnings.len(), 1, "{events}");
    assert_eq!(warnings[0]["type"], "Warning");
    assert_eq!(status(&state, "planned").unwrap().plan, Some(plan));

    let (ok, text) = ctl(&state, &["status", "planned"]);
    assert!(ok, "{text}");
    println!("{text}");
    assert!(text.contains("plan:"), "{text}");
    assert!(
        text.contains("one-percent (1% for 60 s):\n    error-rate: detects"),
        "{text}"
    );
    assert!(text.contains("MISSES its tolerance"), "{text}");
}
