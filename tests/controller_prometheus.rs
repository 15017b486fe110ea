//! Whole rollouts through the controller's own reconcile (mock Kubernetes API, real
//! engine, real analysis) with every look answered by a real Prometheus loaded with
//! known traffic; time is the injected clock.
//!
//! Data: `http_requests_total` every 15 s for an hour from 2023-01-01T00:00:00Z, both
//! cohorts at 1,000 requests per step. `healthy`: 1 % errors in both cohorts.
//! `doubled`: the candidate fails twice as often (2 % against 1 %).

mod support;

use jiff::SignedDuration;
use serde_json::Value;
use sluice::crd::{Phase, Verdict};
use support::kube_api::{Call, Harness, config_map_path, rollout_path};
use support::server::PrometheusServer;
use support::shop_traffic::{self, at};

/// Reconciles rollout `flag` of flag `flag` (1, 5 and 25 % for ten minutes each, then
/// 100 %) with [`drive`] for up to 50 minutes; the Prometheus it looked at, the harness and
/// the steps.
async fn run(flag: &str) -> (PrometheusServer, Harness, Vec<Step>) {
    let data = shop_traffic::requests(&[("healthy", 10.0, 10.0), ("doubled", 10.0, 20.0)]);
    let (prometheus, h) = shop_traffic::start(&data, flag, |prometheus| {
        shop_traffic::spec(
            flag,
            prometheus,
            "  - { weight: 1, duration: 10m }
  - { weight: 5, duration: 10m }
  - { weight: 25, duration: 10m }
  - { weight: 100 }",
        )
    })
    .await;
    let steps = drive(&h, flag, 50).await;
    (prometheus, h, steps)
}

/// One step of a run: the minute, the decision-bearing status after it, and the calls.
struct Step {
    minute: i64,
    calls: Vec<Call>,
}

/// Reconciles `name` every minute (and once more for the watch event of its own status
/// write) until the rollout is finished or `limit` minutes pass.
async fn drive(h: &Harness, name: &str, limit: i64) -> Vec<Step> {
    let mut steps = Vec::new();
    for minute in 0..=limit {
        h.set_now(at(minute));
        for _ in 0..2 {
            h.reconcile(name)
                .await
                .unwrap_or_else(|e| panic!("minute {minute}: {e}"));
        }
        steps.push(Step {
            minute,
            calls: h.api.take_calls(),
        });
        if h.status(name).is_some_and(|s| s.phase.is_finished()) {
            break;
        }
    }
    steps
}

fn exposure(h: &Harness, key: &str) -> String {
    let flag = h.config_map_flag("shop-flags", key).expect("the flag");
    match flag.get("targeting") {
        Some(t) => t["fractional"][0][1].to_string(),
        None => format!("default={}", flag["defaultVariant"]),
    }
}

fn is_status(call: &Call, name: &str) -> bool {
    call.method == "PATCH" && call.path == format!("{}/status", rollout_path(name))
}

fn is_flag_write(call: &Call) -> bool {
    call.path.contains("/configmaps") && call.is_write() && call.status < 300
}

#[tokio::test]
async fn a_healthy_rollout_goes_through_every_stage_to_promotion() {
    let (prometheus, h, steps) = run("healthy").await;

    let status = h.status("healthy").unwrap();
    assert_eq!(status.phase, Phase::Promoted, "{status:#?}");
    assert_eq!(exposure(&h, "healthy"), "default=\"on\"");
    // Every stage entered once, in order, each after its 10 minutes and a passing look.
    let entered: Vec<(Option<u32>, String)> = status
        .history
        .iter()
        .map(|e| (e.stage, e.weight.to_string()))
        .collect();
    assert_eq!(
        entered,
        vec![
            (Some(0), "1%".to_owned()),
            (Some(1), "5%".to_owned()),
            (Some(2), "25%".to_owned()),
            (Some(3), "100%".to_owned()),
        ],
        "{:#?}",
        status.history
    );
    for pair in status.history.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= SignedDuration::from_mins(10),
            "{pair:?}"
        );
    }
    // The flag was written once per stage (four writes: one create, three replaces).
    let writes: Vec<i64> = steps
        .iter()
        .flat_map(|s| {
            s.calls
                .iter()
                .filter(|c| is_flag_write(c))
                .map(|_| s.minute)
        })
        .collect();
    assert_eq!(writes.len(), 4, "flag writes at minutes {writes:?}");
    // Looks were made against Prometheus and recorded; the last before promotion passed.
    let minutes = steps.last().unwrap().minute;
    println!("promoted at minute {minutes}, flag writes at minutes {writes:?}");
    let last = status.last_analysis.as_ref().expect("a look");
    assert_eq!(last.verdict, Verdict::Pass, "{last:#?}");
    let metric = &last.metrics[0];
    assert!(metric.queries[0].contains(r#"feature_flag_key="healthy""#));
    assert!(metric.baseline.as_ref().unwrap().n > 0.0);
    println!(
        "last look: baseline {:?} candidate {:?} bound {:?}",
        metric.baseline, metric.candidate, metric.bound
    );
    drop(prometheus);
}

#[tokio::test]
async fn a_harmful_candidate_is_rolled_back_baseline_first() {
    let (prometheus, h, steps) = run("doubled").await;

    let status = h.status("doubled").unwrap();
    assert_eq!(status.phase, Phase::RolledBack, "{status:#?}");
    let flag = h.config_map_flag("shop-flags", "doubled").unwrap();
    assert_eq!(flag["defaultVariant"], "off");
    assert!(flag.get("targeting").is_none(), "baseline only: {flag}");
    let last = status.last_analysis.as_ref().unwrap();
    assert_eq!(last.verdict, Verdict::Fail, "{last:#?}");

    // In the reconcile that rolled back: the baseline-only document, then the status.
    let step = steps.last().unwrap();
    let flag_at = step
        .calls
        .iter()
        .position(is_flag_write)
        .expect("the rollback's flag write");
    let status_at = step
        .calls
        .iter()
        .position(|c| is_status(c, "doubled") && c.body["status"]["phase"] == "RolledBack")
        .expect("the rollback's status write");
    assert!(flag_at < status_at, "flag before status");
    let written: Value = serde_json::from_str(
        step.calls[flag_at].body["data"]["flags.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(written["flags"]["doubled"].get("targeting").is_none());
    let events: Vec<&str> = step
        .calls
        .iter()
        .filter(|c| c.path.ends_with("/events"))
        .filter_map(|c| c.body["reason"].as_str())
        .collect();
    assert!(events.contains(&"RolledBack"), "{events:?}");
    println!(
        "rolled back at minute {} in stage {:?}: {}",
        step.minute,
        status.stage,
        last.message.as_deref().unwrap_or_default()
    );
    assert!(step.minute < 30, "caught before the last stage");
    assert!(h.api.get(&config_map_path("shop-flags")).is_some());
    drop(prometheus);
}
