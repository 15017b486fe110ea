//! `kubectl sluice` against kube's mock service (the tower-test pattern of kube-rs's
//! controller-rs example): each control sends exactly the expected JSON merge patch of
//! `spec.control` to the expected path, refusals and API errors give kubectl's messages and
//! exit code 1 without writing, and `status` renders a rollout in every phase (compared
//! with the reviewed snapshots in tests/snapshots/; `UPDATE_SNAPSHOTS=1` rewrites them).

use std::path::PathBuf;

use clap::Parser as _;
use http::{Request, Response};
use jiff::Timestamp;
use kube::client::Body;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use sluice::kubectl::{Args, Error, Printed, execute, watch};

/// The clock of every rendering.
const NOW: &str = "2026-11-24T12:30:00Z";

const SPEC: &str = r#"
flag: { key: new-checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { configMap: { name: shop-flags, key: flags.json } }
stages:
  - { name: internal, weight: 100, audience: { ends_with: [{ var: email }, "@example.com"] }, duration: 10m }
  - { name: canary, weight: 5, duration: 10m, minSamples: 2000 }
  - { name: wide, weight: 25, duration: 30m, approval: required }
  - { name: everyone, weight: 100 }
analysis:
  interval: 1m
  users: 'count by (feature_flag_result_variant) (flag_users{feature_flag_key="{{ flag }}"})'
  metrics:
    - name: error-rate
      ratio:
        errors: 'sum by (feature_flag_result_variant) (increase(http_requests_total{code=~"5..",feature_flag_key="{{ flag }}"}[{{ window }}]))'
        requests: 'sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key="{{ flag }}"}[{{ window }}]))'
      maxIncrease: { relative: "10%" }
      max: "2%"
    - name: slow-requests
      histogram:
        buckets: 'sum by (le, feature_flag_result_variant) (increase(http_request_duration_seconds_bucket{feature_flag_key="{{ flag }}"}[{{ window }}]))'
        threshold: 0.5
      maxIncrease: { relative: "20%" }
    - name: memory
      guard: { query: 'max(container_memory_working_set_bytes{pod=~"shop-.*"})', max: 1.5e9 }
"#;

/// History every started rollout shares: the audience stage, then the canary.
const STARTED: &str = r#"
- { at: "2026-11-24T12:00:00Z", from: Pending, to: Progressing, stage: 0, weight: "100%", audience: true, reason: Started, message: 'Stage "internal" began: 100% of the audience on the candidate.' }
- { at: "2026-11-24T12:10:00Z", from: Progressing, to: Progressing, stage: 1, weight: "5%", reason: StageAdvanced, message: 'Stage "canary" began: 5% of users on the candidate.' }
"#;

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("test YAML parses")
}

fn analysis(verdict: &str, message: &str, error_rate: (&str, &str), mismatch: bool) -> Value {
    let (verdict_of_errors, reason_of_errors) = error_rate;
    json!({
        "at": "2026-11-24T12:19:00Z",
        "stage": 1,
        "verdict": verdict,
        "message": message,
        "candidateSamples": 2412,
        "metrics": [
            {
                "name": "error-rate",
                "queries": ["sum by (feature_flag_result_variant) (...)"],
                "baseline": { "n": 45210.0, "value": 0.0101 },
                "candidate": { "n": 2412.0, "value": if verdict == "Fail" { 0.0315 } else { 0.0104 } },
                "effect": if verdict == "Fail" { 0.02039 } else { -0.00071 },
                "bound": if verdict == "Fail" { 0.00912 } else { -0.00513 },
                "test": "asymptotic confidence sequence, candidate against tolerated baseline",
                "verdict": verdict_of_errors,
                "reason": reason_of_errors
            },
            {
                "name": "slow-requests",
                "baseline": { "n": 45210.0, "value": 0.0412 },
                "candidate": { "n": 2412.0, "value": 0.0398 },
                "effect": -0.0096,
                "bound": -0.0171,
                "verdict": "Pass",
                "reason": "no evidence of harm beyond the tolerance"
            },
            {
                "name": "memory",
                "candidate": { "n": 1.0, "value": 812000000.0 },
                "verdict": "Pass",
                "reason": "812000000 is within the guard (max 1500000000)"
            }
        ],
        "sampleRatio": {
            "baselineUsers": 9400.0,
            "candidateUsers": if mismatch { 240.0 } else { 498.0 },
            "expectedShare": 0.05,
            "observedShare": if mismatch { 0.0249 } else { 0.0503 },
            "pValue": if mismatch { 2.1e-9 } else { 0.89 },
            "mismatch": mismatch
        },
        "requestShare": { "expectedShare": 0.05, "observedShare": 0.0506, "relativeDeviation": 0.012 }
    })
}

fn condition(type_: &str, status: &str, reason: &str, since: &str, message: &str) -> Value {
    json!({ "type": type_, "status": status, "reason": reason, "lastTransitionTime": since, "message": message, "observedGeneration": 3 })
}

/// A rollout named `name` in `phase` (`None`: no status yet), as the API returns it.
/// `status.plan` as the controller writes it: computed from the first looks of "canary".
fn plan() -> Value {
    json!({
        "digest": "00c0ffee00c0ffee",
        "computedAt": "2026-11-24T12:13:00Z",
        "runs": 100,
        "observedStage": 1,
        "observedSeconds": 180.0,
        "traffic": [
            { "metric": "error-rate", "requestsPerSecond": 150.0, "baselineRate": 0.0101, "targetMultiplier": 1.2 },
            { "metric": "slow-requests", "requestsPerSecond": 150.0, "baselineRate": 0.0412, "targetMultiplier": 1.4 },
        ],
        "stages": [
            { "index": 0, "name": "internal", "exposure": "100% of audience", "minutes": 10.0,
              "notSimulated": "the stage has an audience: its share of the traffic is unknown to sluice plan", "metrics": [] },
            { "index": 1, "name": "canary", "exposure": "5%", "minutes": 10.0, "metrics": [
                { "name": "error-rate", "detectable": 1.9, "searchedUpTo": 99.0, "minutesToCatchDoubled": 6.0, "doubledCaughtInStage": 0.86, "detectsTolerance": false },
                { "name": "slow-requests", "detectable": 1.35, "searchedUpTo": 24.27, "minutesToCatchDoubled": 2.0, "doubledCaughtInStage": 1.0, "detectsTolerance": true },
            ] },
            { "index": 2, "name": "wide", "exposure": "25%", "minutes": 30.0, "metrics": [
                { "name": "error-rate", "detectable": 1.19, "searchedUpTo": 99.0, "minutesToCatchDoubled": 2.0, "doubledCaughtInStage": 1.0, "detectsTolerance": true },
                { "name": "slow-requests", "searchedUpTo": 24.27, "doubledCaughtInStage": 0.0 },
            ] },
        ],
        "warnings": ["stage canary (5% for 10 min) cannot detect error-rate's tolerance: it rolls back before its end in 80 % of runs only from 1.90× the baseline's rate (1.92 %); stage wide catches it later"],
    })
}

fn rollout(name: &str, phase: Option<&str>) -> Value {
    let mut object = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FeatureRollout",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "6b7c0d8e-0000-4000-8000-000000000001",
            "generation": 3,
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-24T09:15:00Z",
            "managedFields": [{ "manager": "kubectl-client-side-apply", "operation": "Update" }]
        },
        "spec": yaml(SPEC),
    });
    let Some(phase) = phase else { return object };
    let running = "Stage \"canary\" (5% of users on the candidate): the analysis is inconclusive: error-rate: not enough data yet to tell.";
    let ready = condition(
        "Ready",
        "True",
        "Valid",
        "2026-11-24T12:00:00Z",
        "The spec is valid.",
    );
    let mut history: Vec<Value> = serde_json::from_value(yaml(STARTED)).unwrap();
    let mut status = json!({
        "phase": phase,
        "stage": 1,
        "stageName": "canary",
        "weight": "5%",
        "exposure": "5%",
        "stageStartedAt": "2026-11-24T12:10:00Z",
        "observedGeneration": 3,
        "retries": 0,
        "consecutiveErrors": 0,
        "fingerprint": "0123456789abcdef",
        "stageFingerprint": "fedcba9876543210",
    });
    let inconclusive = analysis(
        "Inconclusive",
        "error-rate: not enough data yet to tell",
        ("Inconclusive", "not enough data yet to tell"),
        false,
    );
    match phase {
        "Pending" => {
            status = json!({
                "phase": "Pending",
                "observedGeneration": 3,
                "message": "Starting.",
                "conditions": [ready],
            });
            history.clear();
        }
        "Progressing" => {
            // The stage's duration is over; the analysis holds it.
            status["message"] = json!(running);
            status["lastAnalysis"] = inconclusive;
            status["lastAnalysis"]["at"] = json!("2026-11-24T12:29:00Z");
            status["plan"] = plan();
            status["conditions"] = json!([
                ready,
                condition(
                    "Progressing",
                    "True",
                    "Progressing",
                    "2026-11-24T12:00:00Z",
                    running
                ),
                condition(
                    "Held",
                    "True",
                    "AnalysisInconclusive",
                    "2026-11-24T12:20:00Z",
                    running
                ),
                condition(
                    "PlanCanDetect",
                    "False",
                    "ToleranceUndetectable",
                    "2026-11-24T12:14:00Z",
                    "At the traffic the first looks observed, some stages cannot detect their tolerance: stage canary on error-rate (catches only from 1.90×, should catch 1.20×) (see status.plan)."
                ),
            ]);
        }
        "WaitingForApproval" => {
            let message = "Stage \"canary\" is done; stage \"wide\" waits for approval: set control.approve to \"wide\".";
            status["message"] = json!(message);
            status["awaitingApproval"] = json!({ "index": 2, "name": "wide" });
            status["lastAnalysis"] = analysis(
                "Pass",
                "no evidence of harm",
                (
                    "Pass",
                    "no evidence of harm beyond the tolerance (lower bound -0.5130 points)",
                ),
                false,
            );
            status["conditions"] = json!([
                ready,
                condition(
                    "Progressing",
                    "True",
                    "WaitingForApproval",
                    "2026-11-24T12:00:00Z",
                    message
                ),
                condition(
                    "Held",
                    "True",
                    "AwaitingApproval",
                    "2026-11-24T12:20:00Z",
                    message
                ),
            ]);
            history.push(json!({ "at": "2026-11-24T12:20:00Z", "from": "Progressing", "to": "WaitingForApproval", "stage": 1, "weight": "5%", "reason": "AwaitingApproval", "message": message }));
        }
        "Paused" => {
            let message = "Paused at stage \"canary\" (5% of users on the candidate): set control.paused to false to resume. Harm still rolls back.";
            object["spec"]["control"] = json!({ "paused": true });
            status["message"] = json!(message);
            status["lastAnalysis"] = analysis(
                "Inconclusive",
                "sample ratio mismatch: 2.490% of distinct users are on the candidate where 5.000% should be (p = 2.10e-9); the cohorts are not comparable: check the flag delivery and the instrumentation",
                ("Pass", "no evidence of harm beyond the tolerance"),
                true,
            );
            status["conditions"] = json!([
                ready,
                condition(
                    "Progressing",
                    "True",
                    "Paused",
                    "2026-11-24T12:00:00Z",
                    message
                ),
                condition("Held", "True", "Paused", "2026-11-24T12:15:00Z", message),
            ]);
            history.push(json!({ "at": "2026-11-24T12:15:00Z", "from": "Progressing", "to": "Paused", "stage": 1, "weight": "5%", "reason": "Paused", "message": "control.paused is set: holding at stage \"canary\"." }));
        }
        "Promoted" => {
            let message = "Promoted: the candidate is the default for everybody.";
            object["spec"]["control"] = json!({ "approve": "wide" });
            status["stage"] = json!(3);
            status["stageName"] = json!("everyone");
            status["weight"] = json!("100%");
            status["exposure"] = json!("100%");
            status["stageStartedAt"] = json!("2026-11-24T12:25:00Z");
            status["message"] = json!(message);
            status["conditions"] = json!([
                ready,
                condition(
                    "Progressing",
                    "False",
                    "Promoted",
                    "2026-11-24T12:25:00Z",
                    message
                ),
                condition("Held", "False", "Finished", "2026-11-24T12:25:00Z", message),
            ]);
            history.push(json!({ "at": "2026-11-24T12:20:00Z", "from": "Progressing", "to": "WaitingForApproval", "stage": 1, "weight": "5%", "reason": "AwaitingApproval", "message": "Stage \"canary\" is done; stage \"wide\" waits for approval: set control.approve to \"wide\"." }));
            history.push(json!({ "at": "2026-11-24T12:21:00Z", "from": "WaitingForApproval", "to": "Progressing", "stage": 2, "weight": "25%", "reason": "StageAdvanced", "message": "Stage \"wide\" began: 25% of users on the candidate." }));
            history.push(json!({ "at": "2026-11-24T12:25:00Z", "from": "Progressing", "to": "Promoted", "stage": 3, "weight": "100%", "reason": "Promoted", "message": message }));
        }
        "RolledBack" => {
            let message = "Rolled back: everybody gets the baseline. The analysis failed: error-rate: the candidate's error rate exceeds the baseline's by more than 10% (lower bound +0.9120 points)";
            status["weight"] = json!("0%");
            status["exposure"] = json!("0%");
            status["retries"] = json!(1);
            object["spec"]["control"] = json!({ "retry": 1 });
            status["message"] = json!(message);
            status["lastAnalysis"] = analysis(
                "Fail",
                "error-rate: the candidate's error rate exceeds the baseline's by more than 10% (lower bound +0.9120 points)",
                (
                    "Fail",
                    "the candidate's error rate exceeds the baseline's by more than 10% (lower bound +0.9120 points)",
                ),
                false,
            );
            status["conditions"] = json!([
                ready,
                condition(
                    "Progressing",
                    "False",
                    "RolledBack",
                    "2026-11-24T12:19:00Z",
                    message
                ),
                condition(
                    "Held",
                    "False",
                    "RolledBack",
                    "2026-11-24T12:19:00Z",
                    message
                ),
            ]);
            history.push(json!({ "at": "2026-11-24T12:19:00Z", "from": "Progressing", "to": "RolledBack", "stage": 1, "weight": "0%", "reason": "RolledBack", "message": message }));
        }
        "Failed" => {
            let message = "The spec is invalid; the flag is left as it is. Fix: spec.stages[2].weight: 0.5% is below stage 2's 5%: weights must never decrease";
            object["metadata"]["generation"] = json!(4);
            status["observedGeneration"] = json!(4);
            object["spec"]["stages"][2]["weight"] = json!("0.5%");
            status["message"] = json!(message);
            status["lastAnalysis"] = inconclusive;
            let invalid = |type_| {
                let mut c = condition(
                    type_,
                    if type_ == "Ready" { "False" } else { "True" },
                    "InvalidSpec",
                    "2026-11-24T12:16:00Z",
                    message,
                );
                c["observedGeneration"] = json!(4);
                c
            };
            status["conditions"] = json!([
                invalid("Ready"),
                condition(
                    "Progressing",
                    "True",
                    "Failed",
                    "2026-11-24T12:00:00Z",
                    message
                ),
                invalid("Held"),
            ]);
            history.push(json!({ "at": "2026-11-24T12:16:00Z", "from": "Progressing", "to": "Failed", "stage": 1, "weight": "5%", "reason": "InvalidSpec", "message": message }));
        }
        other => panic!("no fixture for phase {other}"),
    }
    if !history.is_empty() {
        status["history"] = json!(history);
    }
    object["status"] = status;
    object
}

fn not_found(name: &str) -> (u16, Value) {
    (
        404,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("featurerollouts.sluice.dev \"{name}\" not found"),
            "reason": "NotFound",
            "details": { "name": name, "group": "sluice.dev", "kind": "featurerollouts" },
            "code": 404
        }),
    )
}

/// A request as the mock API server saw it.
#[derive(Debug, PartialEq)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: Option<String>,
    body: Option<Value>,
}

/// Runs `kubectl sluice ARGS` against a mock API server that answers with `answers`, in
/// order; returns the result and every request made.
async fn kubectl(args: &[&str], answers: Vec<(u16, Value)>) -> (Result<Printed, Error>, Vec<Seen>) {
    let (client, server) = mock_api(answers);
    let result = execute(&parse(args), client, NOW.parse::<Timestamp>().unwrap()).await;
    let seen = server.await.expect("the mock server ends");
    (result, seen)
}

fn parse(args: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("kubectl-sluice").chain(args.iter().copied()))
        .expect("valid arguments")
}

/// A client whose API server answers `answers` in order (a string answer is sent as it
/// is: a watch's stream of events) and records the requests; any further request fails
/// the test. The server ends when the client is gone.
fn mock_api(answers: Vec<(u16, Value)>) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (status, answer) in answers {
            let Some((request, respond)) = handle.next_request().await else {
                break;
            };
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("a request body");
            seen.push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned()),
                body: (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("JSON")),
            });
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(match answer {
                        Value::String(raw) => raw.into_bytes(),
                        json => serde_json::to_vec(&json).unwrap(),
                    }))
                    .unwrap(),
            );
        }
        // Any request beyond the script fails the test.
        if let Some((request, _)) = handle.next_request().await {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
        seen
    });
    (kube::Client::new(service, "shop"), server)
}

const ROLLOUT_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/shop/featurerollouts/checkout";

fn get_of(path: &str) -> Seen {
    Seen {
        method: "GET".into(),
        path: path.into(),
        query: String::new(),
        content_type: None,
        body: None,
    }
}

/// Asserts a control read the rollout, then sent exactly `control` as a merge patch.
async fn assert_control(
    args: &[&str],
    phase: &str,
    edit: impl FnOnce(&mut Value),
    control: Value,
    said: &str,
) {
    let mut before = rollout("checkout", Some(phase));
    edit(&mut before);
    let (result, seen) = kubectl(args, vec![(200, before.clone()), (200, before)]).await;
    let printed = result.unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(
        printed.stdout,
        format!("featurerollout.sluice.dev/checkout {said}\n")
    );
    assert_eq!(
        seen,
        [
            get_of(ROLLOUT_PATH),
            Seen {
                method: "PATCH".into(),
                path: ROLLOUT_PATH.into(),
                query: "&fieldManager=kubectl-sluice".into(),
                content_type: Some("application/merge-patch+json".into()),
                body: Some(json!({ "spec": { "control": control } })),
            }
        ],
        "{args:?}"
    );
}

#[tokio::test]
async fn each_control_patches_exactly_its_spec_control_fields() {
    assert_control(
        &["pause", "checkout"],
        "Progressing",
        |_| {},
        json!({ "paused": true }),
        "paused",
    )
    .await;
    assert_control(
        &["resume", "checkout"],
        "Paused",
        |_| {},
        json!({ "paused": false }),
        "resumed",
    )
    .await;
    assert_control(
        &["approve", "checkout"],
        "WaitingForApproval",
        |_| {},
        json!({ "approve": "wide" }),
        "approved stage \"wide\"",
    )
    .await;
    assert_control(
        &["promote", "checkout"],
        "WaitingForApproval",
        |_| {},
        json!({ "approve": "wide" }),
        "approved stage \"wide\"",
    )
    .await;
    // Approving a later stage in advance, by name, in the namespace given.
    assert_control(
        &["approve", "-n", "shop", "checkout", "wide"],
        "Progressing",
        |_| {},
        json!({ "approve": "wide" }),
        "approved stage \"wide\"",
    )
    .await;
    assert_control(
        &["abort", "checkout"],
        "Progressing",
        |_| {},
        json!({ "abort": true }),
        "aborted (everybody gets the baseline at the next reconcile)",
    )
    .await;
    // Retry raises control.retry above status.retries and clears abort.
    assert_control(
        &["retry", "checkout"],
        "RolledBack",
        |r| r["spec"]["control"] = json!({ "abort": true, "retry": 1 }),
        json!({ "abort": false, "retry": 2 }),
        "retried (control.retry=2; it starts again from the first stage)",
    )
    .await;
    // The retry goes above status.retries even when the spec's counter is behind it.
    assert_control(
        &["retry", "checkout"],
        "RolledBack",
        |r| {
            r["spec"]["control"] = json!({});
            r["status"]["retries"] = json!(4);
        },
        json!({ "abort": false, "retry": 5 }),
        "retried (control.retry=5; it starts again from the first stage)",
    )
    .await;
    // Waiting for the first stage's approval (nothing started yet).
    assert_control(
        &["approve", "checkout"],
        "WaitingForApproval",
        |r| {
            r["spec"]["stages"][0]["approval"] = json!("required");
            r["status"]["stage"] = json!(0);
            r["status"]["stageName"] = json!("internal");
            r["status"]["weight"] = json!("0%");
            r["status"]["exposure"] = json!("0%");
            r["status"]["awaitingApproval"] = json!({ "index": 0, "name": "internal" });
            r["status"]
                .as_object_mut()
                .unwrap()
                .remove("stageStartedAt");
        },
        json!({ "approve": "internal" }),
        "approved stage \"internal\"",
    )
    .await;
}

/// Asserts a command read the rollout (answered with `answer`), wrote nothing and failed
/// with `message` and exit code 1.
async fn assert_refused(args: &[&str], answer: (u16, Value), message: &str) {
    let (result, seen) = kubectl(args, vec![answer]).await;
    let error = result.expect_err("refused");
    assert_eq!(error.to_string(), message, "{args:?}");
    assert_eq!(error.exit_code(), 1);
    assert_eq!(seen.len(), 1, "read only: {seen:?}");
    assert_eq!(seen[0].method, "GET");
}

#[tokio::test]
async fn errors_name_the_object_and_what_to_do() {
    assert_refused(
        &["status", "nope"],
        not_found("nope"),
        "Error from server (NotFound): featurerollouts.sluice.dev \"nope\" not found\nList the rollouts with: kubectl sluice get -n shop (or -A for every namespace).",
    )
    .await;
    assert_refused(
        &["abort", "nope", "-n", "payments"],
        not_found("nope"),
        "Error from server (NotFound): featurerollouts.sluice.dev \"nope\" not found\nList the rollouts with: kubectl sluice get -n payments (or -A for every namespace).",
    )
    .await;
    assert_refused(
        &["approve", "checkout"],
        (200, rollout("checkout", Some("Progressing"))),
        "error: featurerollouts.sluice.dev \"checkout\" is not waiting for approval: it is Progressing: Stage \"canary\" (5% of users on the candidate): the analysis is inconclusive: error-rate: not enough data yet to tell. To approve a later stage in advance, name it: kubectl sluice approve checkout STAGE -n shop (stages with approval: required ahead: wide).",
    )
    .await;
    assert_refused(
        &["promote", "checkout"],
        (200, rollout("checkout", Some("Promoted"))),
        "error: featurerollouts.sluice.dev \"checkout\" is not waiting for approval: it is Promoted: Promoted: the candidate is the default for everybody. promote approves the stage a rollout waits for; it never skips stages or analysis.",
    )
    .await;
    assert_refused(
        &["approve", "checkout", "canary"],
        (200, rollout("checkout", Some("Progressing"))),
        "error: stage \"canary\" of featurerollouts.sluice.dev \"checkout\" does not need approval (approval: auto); stages that do: wide",
    )
    .await;
    assert_refused(
        &["approve", "checkout", "huge"],
        (200, rollout("checkout", Some("Progressing"))),
        "error: featurerollouts.sluice.dev \"checkout\" has no stage \"huge\"; its stages are: internal, canary, wide, everyone",
    )
    .await;
    assert_refused(
        &["retry", "checkout"],
        (200, rollout("checkout", Some("Progressing"))),
        "error: featurerollouts.sluice.dev \"checkout\" is not rolled back: it is Progressing: Stage \"canary\" (5% of users on the candidate): the analysis is inconclusive: error-rate: not enough data yet to tell. retry starts a rolled-back rollout again from its first stage",
    )
    .await;
    assert_refused(
        &["pause", "checkout"],
        (200, rollout("checkout", Some("Paused"))),
        "error: featurerollouts.sluice.dev \"checkout\" is already paused",
    )
    .await;
    assert_refused(
        &["resume", "checkout"],
        (200, rollout("checkout", Some("Progressing"))),
        "error: featurerollouts.sluice.dev \"checkout\" is not paused (it is Progressing)",
    )
    .await;
    assert_refused(
        &["abort", "checkout"],
        (200, rollout("checkout", Some("Promoted"))),
        "error: featurerollouts.sluice.dev \"checkout\" is Promoted: abort does nothing after promotion; to go back, roll the old variant out as a new candidate",
    )
    .await;
    assert_refused(
        &["pause", "checkout"],
        (200, rollout("checkout", Some("RolledBack"))),
        "error: featurerollouts.sluice.dev \"checkout\" is RolledBack: pausing changes nothing. Nothing: it is rolled back; `kubectl sluice retry checkout -n shop` starts it again from the first stage.",
    )
    .await;

    // A server error on the write is reported as kubectl reports it.
    let before = rollout("checkout", Some("Progressing"));
    let forbidden = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "featurerollouts.sluice.dev \"checkout\" is forbidden: User \"dev\" cannot patch resource \"featurerollouts\" in API group \"sluice.dev\" in the namespace \"shop\"",
        "reason": "Forbidden", "code": 403
    });
    let (result, seen) = kubectl(
        &["pause", "checkout"],
        vec![(200, before), (403, forbidden)],
    )
    .await;
    let error = result.expect_err("forbidden");
    assert_eq!(
        error.to_string(),
        "Error from server (Forbidden): featurerollouts.sluice.dev \"checkout\" is forbidden: User \"dev\" cannot patch resource \"featurerollouts\" in API group \"sluice.dev\" in the namespace \"shop\"\nAsk for RBAC rights on featurerollouts.sluice.dev (get, list, watch, patch)."
    );
    assert_eq!((error.exit_code(), seen.len()), (1, 2));

    // Commands on one object refuse -A, as kubectl does; nothing is sent.
    let (result, seen) = kubectl(&["abort", "checkout", "-A"], vec![]).await;
    assert_eq!(
        result.expect_err("refused").to_string(),
        "error: a resource cannot be retrieved by name across all namespaces"
    );
    assert!(seen.is_empty());
}

#[tokio::test]
async fn an_approved_stage_is_not_written_again() {
    let mut waiting = rollout("checkout", Some("WaitingForApproval"));
    waiting["spec"]["control"] = json!({ "approve": "wide" });
    let (result, seen) = kubectl(&["approve", "checkout"], vec![(200, waiting)]).await;
    assert_eq!(
        result.unwrap().stdout,
        "featurerollout.sluice.dev/checkout unchanged: stage \"wide\" is already approved\n"
    );
    assert_eq!(seen, [get_of(ROLLOUT_PATH)]);
}

fn list(items: Vec<Value>) -> Value {
    json!({ "apiVersion": "sluice.dev/v1alpha1", "kind": "FeatureRolloutList", "metadata": { "resourceVersion": "5000" }, "items": items })
}

#[tokio::test]
async fn get_prints_kubectls_table() {
    let mut other = rollout("search-ranking", Some("Promoted"));
    other["metadata"]["namespace"] = json!("search");
    other["metadata"]["creationTimestamp"] = json!("2026-11-20T08:00:00Z");
    let items = vec![
        rollout("checkout", Some("Progressing")),
        rollout("new-cart", None),
        other,
    ];
    let (result, seen) = kubectl(&["get", "-A"], vec![(200, list(items.clone()))]).await;
    assert_eq!(
        result.unwrap().stdout,
        "\
NAMESPACE   NAME             PHASE         STAGE      WEIGHT   VERDICT        AGE
shop        checkout         Progressing   canary     5%       Inconclusive   3h15m
shop        new-cart                                                          3h15m
search      search-ranking   Promoted      everyone   100%                    4d4h
"
    );
    assert_eq!(seen[0].path, "/apis/sluice.dev/v1alpha1/featurerollouts");

    let (result, seen) = kubectl(&["get"], vec![(200, list(items[..2].to_vec()))]).await;
    assert_eq!(
        result.unwrap().stdout,
        "\
NAME       PHASE         STAGE    WEIGHT   VERDICT        AGE
checkout   Progressing   canary   5%       Inconclusive   3h15m
new-cart                                                  3h15m
"
    );
    assert_eq!(
        seen[0].path,
        "/apis/sluice.dev/v1alpha1/namespaces/shop/featurerollouts"
    );

    let (result, _) = kubectl(&["get", "-n", "empty"], vec![(200, list(vec![]))]).await;
    assert_eq!(
        result.unwrap(),
        Printed {
            stdout: String::new(),
            stderr: "No resources found in empty namespace.\n".into()
        }
    );

    // -o json prints the object (with the defaults of the types filled in), without
    // managedFields.
    let (result, seen) = kubectl(
        &["get", "checkout", "-o", "json"],
        vec![(200, rollout("checkout", Some("Progressing")))],
    )
    .await;
    let printed: Value = serde_json::from_str(&result.unwrap().stdout).unwrap();
    let typed: sluice::crd::FeatureRollout =
        serde_json::from_value(rollout("checkout", Some("Progressing"))).unwrap();
    let mut expected = serde_json::to_value(typed).unwrap();
    assert!(expected["metadata"]["managedFields"].is_array());
    expected["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    assert_eq!(printed, expected);
    assert_eq!(printed["status"]["lastAnalysis"]["verdict"], "Inconclusive");
    assert_eq!(seen, [get_of(ROLLOUT_PATH)]);

    let (result, _) = kubectl(
        &["get", "-o", "name"],
        vec![(200, list(items[..2].to_vec()))],
    )
    .await;
    assert_eq!(
        result.unwrap().stdout,
        "featurerollout.sluice.dev/checkout\nfeaturerollout.sluice.dev/new-cart\n"
    );
}

#[tokio::test]
async fn history_lists_every_change() {
    let (result, _) = kubectl(
        &["history", "checkout"],
        vec![(200, rollout("checkout", Some("Promoted")))],
    )
    .await;
    assert_eq!(
        result.unwrap().stdout,
        "\
TIME                   AGE   FROM                 TO                   STAGE      WEIGHT             REASON             MESSAGE
2026-11-24T12:00:00Z   30m   Pending              Progressing          internal   100% of audience   Started            Stage \"internal\" began: 100% of the audience on the candidate.
2026-11-24T12:10:00Z   20m   Progressing          Progressing          canary     5%                 StageAdvanced      Stage \"canary\" began: 5% of users on the candidate.
2026-11-24T12:20:00Z   10m   Progressing          WaitingForApproval   canary     5%                 AwaitingApproval   Stage \"canary\" is done; stage \"wide\" waits for approval: set control.approve to \"wide\".
2026-11-24T12:21:00Z   9m    WaitingForApproval   Progressing          wide       25%                StageAdvanced      Stage \"wide\" began: 25% of users on the candidate.
2026-11-24T12:25:00Z   5m    Progressing          Promoted             everyone   100%               Promoted           Promoted: the candidate is the default for everybody.
"
    );
    let (result, _) = kubectl(
        &["history", "checkout"],
        vec![(200, rollout("checkout", None))],
    )
    .await;
    assert_eq!(
        result.unwrap().stderr,
        "No history yet for featurerollout.sluice.dev/checkout.\n"
    );
}

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"))
}

/// Compares `actual` with the committed snapshot, or rewrites it under
/// `UPDATE_SNAPSHOTS=1` (then review the diff before committing).
fn assert_snapshot(name: &str, actual: &str) {
    let path = snapshot_path(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_SNAPSHOTS=1 to create it, then review it",
            path.display()
        )
    });
    assert_eq!(expected, actual, "snapshot {name} differs");
}

#[tokio::test]
async fn status_renders_a_rollout_in_every_phase() {
    let phases = [
        ("no-status", None),
        ("pending", Some("Pending")),
        ("progressing", Some("Progressing")),
        ("waiting-for-approval", Some("WaitingForApproval")),
        ("paused", Some("Paused")),
        ("promoted", Some("Promoted")),
        ("rolled-back", Some("RolledBack")),
        ("failed", Some("Failed")),
    ];
    for (name, phase) in phases {
        let object = rollout("checkout", phase);
        // Every fixture is what the API server could hold: it parses as a FeatureRollout.
        let _: sluice::crd::FeatureRollout =
            serde_json::from_value(object.clone()).expect("the fixture is a FeatureRollout");
        let (result, seen) = kubectl(&["status", "checkout"], vec![(200, object)]).await;
        assert_eq!(seen, [get_of(ROLLOUT_PATH)]);
        assert_snapshot(&format!("status-{name}"), &result.unwrap().stdout);
    }
}

#[tokio::test]
async fn status_watch_redraws_when_the_rollout_changes() {
    let before = rollout("checkout", Some("Progressing"));
    let mut after = rollout("checkout", Some("RolledBack"));
    after["metadata"]["resourceVersion"] = json!("5001");
    let mut listed = list(vec![before.clone()]);
    listed["metadata"]["resourceVersion"] = json!("5000");
    let events = format!("{}\n", json!({ "type": "MODIFIED", "object": after }));
    let (client, server) = mock_api(vec![
        (200, before.clone()),
        (200, listed),
        (200, Value::String(events)),
    ]);
    let mut views = Vec::new();
    watch(
        &parse(&["status", "checkout", "--watch"]),
        client,
        || NOW.parse::<Timestamp>().unwrap(),
        |view: &str| views.push(view.to_owned()),
        Some(2),
    )
    .await
    .expect("the watch draws two views");
    let seen = server.await.expect("the mock server ends");

    // The view as first listed, then redrawn after the change.
    let first: sluice::crd::FeatureRollout = serde_json::from_value(before).unwrap();
    let second: sluice::crd::FeatureRollout = serde_json::from_value(after).unwrap();
    let now = NOW.parse::<Timestamp>().unwrap();
    assert_eq!(
        views,
        [
            sluice::kubectl::render::status(&first, now),
            sluice::kubectl::render::status(&second, now)
        ]
    );
    assert!(views[1].contains("Phase:        RolledBack"));

    // One read of the object, then a list and a watch limited to it.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], get_of(ROLLOUT_PATH));
    let collection = "/apis/sluice.dev/v1alpha1/namespaces/shop/featurerollouts";
    for request in &seen[1..] {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", collection)
        );
        assert!(
            request
                .query
                .contains("fieldSelector=metadata.name%3Dcheckout"),
            "{}",
            request.query
        );
    }
    assert!(!seen[1].query.contains("watch="), "{}", seen[1].query);
    assert!(seen[2].query.contains("watch=true"), "{}", seen[2].query);
    assert!(
        seen[2].query.contains("resourceVersion=5000"),
        "{}",
        seen[2].query
    );
}
