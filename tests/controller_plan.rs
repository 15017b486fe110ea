//! The plan at rollout start, through the controller's own reconcile (mock Kubernetes
//! API, real engine and analysis, every look answered by a real Prometheus with known
//! traffic; time is the injected clock): after the first looks of a stage the plan is
//! computed in the background from the traffic they observed, written with a later status
//! write (`status.plan`, condition `PlanCanDetect`) with one Warning event for a stage
//! that cannot detect its tolerance, and computed again when the stages change. A plan
//! computation that blocks or panics never holds up a look or a rollback.
//!
//! Data: `http_requests_total` every 15 s for an hour from 2023-01-01T00:00:00Z, both
//! cohorts at 1,000 requests per step, 1 % errors: about 133 requests/s.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice::controller::State;
use sluice::crd::{FeatureRolloutStatus, Phase};
use sluice::reconcile::{Context, PlanRunner, PlanSettings};
use sluice::simulate::plan::{self, PlanError};
use support::kube_api::{Call, Harness, rollout_path};
use support::openmetrics::OpenMetrics;
use support::server::PrometheusServer;
use support::shop_traffic::{self, at};

/// How long a test waits for a background computation before it fails (a guard against
/// hanging, not a measure: nothing asserts how long anything took).
const PATIENCE: Duration = Duration::from_secs(120);

fn data() -> OpenMetrics {
    shop_traffic::requests(&[("checkout", 10.0, 10.0)])
}

fn spec(prometheus: &str, first_minutes: u32) -> String {
    shop_traffic::spec(
        "checkout",
        prometheus,
        &format!(
            "  - {{ name: one-percent, weight: 1, duration: {first_minutes}m }}
  - {{ name: quarter, weight: 25, duration: 10m }}
  - {{ weight: 100 }}"
        ),
    )
}

/// The harness holding rollout `checkout` with a first stage of ten minutes, and the
/// Prometheus it looks at.
async fn start() -> (PrometheusServer, Harness) {
    shop_traffic::start(&data(), "checkout", |prometheus| spec(prometheus, 10)).await
}

/// A controller state kept across reconciles (the background plans live in it).
fn state(h: &Harness, context: Context) -> Arc<State> {
    let mut state = State::new(h.client.clone(), h.clock(), Some("test".into()));
    state.context = context;
    Arc::new(state)
}

fn settings() -> PlanSettings {
    PlanSettings {
        runs: 40,
        ..PlanSettings::default()
    }
}

/// Reconciles at `minute` (twice: once more for the watch event of its own status write).
async fn reconcile(h: &Harness, state: &Arc<State>, minute: i64) {
    h.set_now(at(minute));
    for _ in 0..2 {
        h.reconcile_with("checkout", state.clone())
            .await
            .unwrap_or_else(|e| panic!("minute {minute}: {e}"));
    }
}

/// Reconciles at `minute` until the status satisfies `done`, polling while a background
/// computation finishes.
async fn reconcile_until(
    h: &Harness,
    state: &Arc<State>,
    minute: i64,
    what: &str,
    done: impl Fn(&FeatureRolloutStatus) -> bool,
) -> FeatureRolloutStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        reconcile(h, state, minute).await;
        if let Some(status) = h.status("checkout").filter(|s| done(s)) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} after {PATIENCE:?}: {:#?}",
            h.status("checkout")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn warnings(calls: &[Call], reason: &str) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/events"))
        .filter(|c| c.body["reason"] == reason)
        .map(|c| {
            assert_eq!(c.body["type"], "Warning", "{:?}", c.body);
            c.body["note"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

fn status_writes(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.path == format!("{}/status", rollout_path("checkout")))
        .count()
}

#[tokio::test]
async fn the_plan_is_written_with_one_warning_and_computed_again_when_the_stages_change() {
    let (prometheus, h) = start().await;
    let state = state(&h, Context::new(None).with_plans(settings()));

    // The first looks: no plan before the third interval of the stage.
    for minute in 0..3 {
        reconcile(&h, &state, minute).await;
        let status = h.status("checkout").unwrap();
        assert!(status.plan.is_none(), "minute {minute}: {:?}", status.plan);
    }
    // The third look observes the traffic and starts the computation; a later reconcile
    // writes its summary.
    let status = reconcile_until(&h, &state, 3, "plan", |s| s.plan.is_some()).await;
    let plan = status.plan.clone().unwrap();
    println!("{}", plan::summary::lines(&plan).join("\n"));
    assert_eq!(plan.runs, 40);
    assert_eq!(plan.computed_at, at(3));
    assert_eq!((plan.observed_stage, plan.observed_seconds), (0, 180.0));
    let traffic = &plan.traffic[0];
    assert_eq!(traffic.metric, "error-rate");
    // 2,000 requests per 15 s, 1 % of them errors, as Prometheus holds them.
    assert!(
        (traffic.requests_per_second - 2000.0 / 15.0).abs() < 5.0,
        "{traffic:?}"
    );
    assert!((traffic.baseline_rate - 0.01).abs() < 0.001, "{traffic:?}");
    assert!((traffic.target_multiplier - 1.2).abs() < 1e-9);
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one-percent", "quarter"]);
    let one = &plan.stages[0].metrics[0];
    assert_eq!(one.detects_tolerance, Some(false), "{one:?}");
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "PlanCanDetect")
        .expect("the condition");
    assert_eq!(condition.status, "False");
    assert_eq!(condition.reason, "ToleranceUndetectable");
    assert!(
        condition
            .message
            .contains("stage one-percent on error-rate"),
        "{condition:?}"
    );
    let calls = h.api.take_calls();
    let events = warnings(&calls, "PlanCannotDetect");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("cannot detect"), "{}", events[0]);

    // Later looks neither publish it again nor rewrite the plan; each look is still one
    // status write.
    for minute in 4..7 {
        reconcile(&h, &state, minute).await;
        let calls = h.api.take_calls();
        assert!(
            warnings(&calls, "PlanCannotDetect").is_empty(),
            "minute {minute}"
        );
        assert_eq!(status_writes(&calls), 1, "minute {minute}");
        let now = h.status("checkout").unwrap();
        assert_eq!(now.plan.as_ref(), Some(&plan), "minute {minute}");
        assert_eq!(now.last_analysis.unwrap().at, at(minute));
    }
    // A restarted controller (a fresh state) keeps the plan it finds in status.
    let fresh = state_after_restart(&h);
    reconcile(&h, &fresh, 7).await;
    assert_eq!(h.status("checkout").unwrap().plan, Some(plan.clone()));
    assert!(warnings(&h.api.take_calls(), "PlanCannotDetect").is_empty());

    // Longer stages: a new plan, on the traffic of the current stage's latest look.
    h.api.modify(&rollout_path("checkout"), |object| {
        let longer: serde_json::Value =
            serde_yaml_ng::from_str(&spec(&prometheus.base_url(), 30)).unwrap();
        object["spec"] = longer;
        object["metadata"]["generation"] = 2.into();
    });
    let status = reconcile_until(&h, &fresh, 8, "a new plan", |s| {
        s.plan.as_ref().is_some_and(|p| p.digest != plan.digest)
    })
    .await;
    let again = status.plan.unwrap();
    assert_eq!(again.stages[0].minutes, 30.0);
    assert_eq!(again.computed_at, at(8));
    let events = warnings(&h.api.take_calls(), "PlanCannotDetect");
    assert_eq!(events.len(), 1, "one event for the new plan: {events:?}");
    drop(prometheus);
}

fn state_after_restart(h: &Harness) -> Arc<State> {
    state(h, Context::new(None).with_plans(settings()))
}

#[tokio::test]
async fn a_blocked_plan_computation_delays_no_look_and_no_rollback() {
    let (prometheus, h) = start().await;
    // A computation that blocks until the test releases it.
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let returned = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let runner: PlanRunner = {
        let returned = returned.clone();
        let calls = calls.clone();
        Arc::new(move |input, deadline| {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = entered_tx.send(());
            let _ = released.lock().unwrap().recv();
            let report = plan::run_until(input, deadline);
            returned.store(true, Ordering::SeqCst);
            report
        })
    };
    let state = state(
        &h,
        Context::new(None)
            .with_plans(settings())
            .with_plan_runner(runner),
    );
    for minute in 0..4 {
        reconcile(&h, &state, minute).await;
    }
    tokio::time::timeout(PATIENCE, entered.recv())
        .await
        .expect("the computation starts after the third look")
        .unwrap();

    // While it is blocked, every look is made and recorded on time.
    for minute in 4..8 {
        reconcile(&h, &state, minute).await;
        let status = h.status("checkout").unwrap();
        assert_eq!(status.last_analysis.unwrap().at, at(minute));
        assert!(status.plan.is_none());
        assert!(!returned.load(Ordering::SeqCst));
    }
    // An abort rolls back at once.
    h.api.modify(&rollout_path("checkout"), |object| {
        object["spec"]["control"] = serde_json::json!({ "abort": true });
    });
    reconcile(&h, &state, 8).await;
    let status = h.status("checkout").unwrap();
    assert_eq!(status.phase, Phase::RolledBack, "{status:#?}");
    let flag = h.config_map_flag("shop-flags", "checkout").unwrap();
    assert_eq!(flag["defaultVariant"], "off");
    assert!(flag.get("targeting").is_none(), "baseline only: {flag}");
    assert!(
        !returned.load(Ordering::SeqCst),
        "the rollback did not wait for the computation"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one computation at a time");

    // Released, its summary is still written (the rollout is rolled back: no new one).
    release.send(()).unwrap();
    let status = reconcile_until(&h, &state, 9, "plan", |s| s.plan.is_some()).await;
    assert_eq!(status.phase, Phase::RolledBack);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    drop(prometheus);
}

#[tokio::test]
async fn a_panicking_plan_computation_leaves_the_rollout_running() {
    let (prometheus, h) = start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let runner: PlanRunner = {
        let calls = calls.clone();
        Arc::new(move |_, _| -> Result<plan::Report, PlanError> {
            calls.fetch_add(1, Ordering::SeqCst);
            panic!("a bug in the simulation")
        })
    };
    let state = state(&h, Context::new(None).with_plan_runner(runner));
    for minute in 0..3 {
        reconcile(&h, &state, minute).await;
    }
    let status = reconcile_until(&h, &state, 3, "plan", |s| s.plan.is_some()).await;
    let plan = status.plan.unwrap();
    assert_eq!(
        plan.error.as_deref(),
        Some("the simulation failed: a bug in the simulation")
    );
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "PlanCanDetect")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("Unknown", "PlanNotComputed")
    );
    // Looks go on, and the failure is not retried at every look.
    for minute in 4..7 {
        reconcile(&h, &state, minute).await;
        let status = h.status("checkout").unwrap();
        assert_eq!(status.phase, Phase::Progressing);
        assert_eq!(status.last_analysis.unwrap().at, at(minute));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    drop(prometheus);
}
