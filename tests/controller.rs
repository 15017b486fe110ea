//! The controller's reconcile against kube's mock service (tower-test) with an in-memory
//! API server behind it: which calls are made, in which order, and what is left in the
//! ConfigMap, the FeatureFlag and the status.

mod support;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sluice::controller::leader::Leadership;
use sluice::controller::{self, Backoff, State};
use sluice::crd::Phase;
use support::kube_api::{
    Call, Harness, Hook, config_map, config_map_path, feature_flag_path, rollout, rollout_path,
};

const TIMED: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { configMap: { name: shop-flags } }
stages:
  - { weight: 1, duration: 10m }
  - { weight: 5, duration: 10m }
  - { weight: 100 }
"#;

const FEATURE_FLAG: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { featureFlag: { name: shop-flags } }
stages:
  - { weight: 1, duration: 10m }
  - { weight: 100 }
"#;

const OTHER_FLAG: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "banner": { "state": "ENABLED", "variants": { "a": "A", "b": "B" }, "defaultVariant": "a" }
  },
  "$evaluators": { "staff": { "ends_with": [{ "var": "email" }, "@example.com"] } }
}
"#;

fn at(minutes: i64) -> Timestamp {
    "2026-11-24T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write())
        .map(Call::line)
        .collect()
}

fn events(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/events"))
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

const EVENTS: &str = "POST /apis/events.k8s.io/v1/namespaces/shop/events";

fn status_patch() -> String {
    format!("PATCH {}/status", rollout_path("checkout"))
}

fn candidate_weight(flag: &Value) -> Value {
    flag["targeting"]["fractional"][0].clone()
}

#[tokio::test]
async fn the_first_reconcile_adds_the_finalizer_then_creates_the_document_and_the_status() {
    let h = Harness::new(at(0));
    let mut object = rollout("checkout", TIMED);
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    h.api.insert(&rollout_path("checkout"), object);

    // First the finalizer, alone (its patch wakes the controller again).
    let action = h.reconcile("checkout").await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = h.api.take_calls();
    assert_eq!(
        lines(&calls),
        vec![format!("PATCH {}", rollout_path("checkout"))]
    );
    assert!(
        calls[0]
            .content_type
            .starts_with("application/json-patch+json")
    );
    assert_eq!(
        h.api.get(&rollout_path("checkout")).unwrap()["metadata"]["finalizers"],
        json!([controller::FINALIZER])
    );

    // Then the document (created: it did not exist), then the status claiming it.
    let action = h.reconcile("checkout").await.unwrap();
    let calls = h.api.take_calls();
    assert_eq!(
        lines(&calls)[..4],
        [
            format!("GET {}", config_map_path("shop-flags")),
            "POST /api/v1/namespaces/shop/configmaps".to_owned(),
            status_patch(),
            EVENTS.to_owned(),
        ]
    );
    assert_eq!(calls[0].status, 404);
    assert_eq!(calls[1].status, 201);
    assert!(
        calls[2]
            .content_type
            .starts_with("application/apply-patch+yaml"),
        "status by server-side apply"
    );
    assert!(
        calls[2].query.contains("fieldManager=sluice"),
        "{}",
        calls[2].query
    );
    assert!(calls[2].query.contains("force=true"), "{}", calls[2].query);
    assert_eq!(events(&calls), vec!["Started".to_owned()]);
    let flag = h.config_map_flag("shop-flags", "checkout").unwrap();
    assert_eq!(candidate_weight(&flag), json!(["on", 10_000]));
    assert_eq!(flag["defaultVariant"], "off");
    let status = h.status("checkout").unwrap();
    assert_eq!(status.phase, Phase::Progressing);
    assert_eq!(status.exposure.as_deref(), Some("1%"));
    assert_eq!(status.observed_generation, Some(1));
    // The next look is one interval away (the flag is checked then), before the stage ends.
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn a_conflict_is_retried_and_merged_with_the_other_writers_change() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    h.api.insert(
        &config_map_path("shop-flags"),
        config_map("shop-flags", OTHER_FLAG),
    );
    // Between Sluice's read and its write, another team adds its flag.
    let cm = config_map_path("shop-flags");
    let mut raced = false;
    h.api.set_hook(move |call, objects| {
        if call.method == "PUT" && call.path == cm && !raced {
            raced = true;
            let object = objects.get_mut(&cm).unwrap();
            let text = object["data"]["flags.json"].as_str().unwrap();
            let mut document: Value = serde_json::from_str(text).unwrap();
            document["flags"]["other-team"] =
                json!({ "state": "ENABLED", "variants": { "x": 1 }, "defaultVariant": "x" });
            object["data"]["flags.json"] = Value::from(document.to_string());
            object["metadata"]["resourceVersion"] = Value::from("9999");
        }
        Hook::Pass
    });

    h.reconcile("checkout").await.unwrap();
    let calls = h.api.take_calls();
    let config_map_calls: Vec<(String, u16)> = calls
        .iter()
        .filter(|c| c.path.contains("/configmaps"))
        .map(|c| (c.method.clone(), c.status))
        .collect();
    assert_eq!(
        config_map_calls,
        vec![
            ("GET".into(), 200),
            ("PUT".into(), 409),
            ("GET".into(), 200),
            ("PUT".into(), 200)
        ]
    );
    // Everybody's flags survive, and the rest of the document too.
    assert!(h.config_map_flag("shop-flags", "other-team").is_some());
    assert_eq!(
        h.config_map_flag("shop-flags", "banner").unwrap()["defaultVariant"],
        "a"
    );
    assert_eq!(
        candidate_weight(&h.config_map_flag("shop-flags", "checkout").unwrap()),
        json!(["on", 10_000])
    );
    let stored = h.api.get(&config_map_path("shop-flags")).unwrap();
    let document: Value =
        serde_json::from_str(stored["data"]["flags.json"].as_str().unwrap()).unwrap();
    assert!(document["$evaluators"]["staff"].is_object());
    assert_eq!(
        h.status("checkout").unwrap().exposure.as_deref(),
        Some("1%")
    );
}

#[tokio::test]
async fn conflicts_past_the_retries_fail_without_claiming_the_stage_and_back_off() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    h.api.insert(
        &config_map_path("shop-flags"),
        config_map("shop-flags", OTHER_FLAG),
    );
    let cm = config_map_path("shop-flags");
    h.api.set_hook(move |call, objects| {
        if call.method == "PUT" && call.path == cm {
            objects.get_mut(&cm).unwrap()["metadata"]["resourceVersion"] =
                Value::from(format!("race-{}", rand::random::<u32>()));
        }
        Hook::Pass
    });
    let state = h.state();
    let error = h
        .reconcile_with("checkout", state.clone())
        .await
        .unwrap_err();
    assert_eq!(error.category(), "conflict");
    assert!(!error.waits_for_change());
    let puts = h.api.calls().iter().filter(|c| c.method == "PUT").count();
    assert_eq!(puts as u32, controller::targets::WRITE_ATTEMPTS);
    let status = h.status("checkout").unwrap();
    assert_eq!(status.stage, None, "no stage claimed without its flag");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "FlagWriteFailed");
    // Backoff, not a flat requeue, and not "wait for a change".
    let object = h.object("checkout").unwrap();
    let action = controller::error_policy(object, &error, state);
    assert_ne!(action, Action::await_change());
}

#[tokio::test]
async fn a_foreign_document_yields_a_condition_and_no_write() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    let foreign = "flags:\n  checkout: on   # YAML, not flagd's JSON\n";
    h.api.insert(
        &config_map_path("shop-flags"),
        config_map("shop-flags", foreign),
    );

    let state = h.state();
    let error = h
        .reconcile_with("checkout", state.clone())
        .await
        .unwrap_err();
    assert!(error.waits_for_change(), "{error}");
    let calls = h.api.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.is_write() && c.path.contains("/configmaps")),
        "no write to the ConfigMap: {:?}",
        lines(&calls)
    );
    assert_eq!(writes(&calls), vec![EVENTS.to_owned(), status_patch()]);
    assert_eq!(events(&calls), vec!["FlagDocumentInvalid".to_owned()]);
    assert_eq!(
        h.api.get(&config_map_path("shop-flags")).unwrap()["data"]["flags.json"],
        foreign
    );
    let status = h.status("checkout").unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "FlagDocumentInvalid")
    );
    assert!(
        ready.message.contains("not valid JSON"),
        "{}",
        ready.message
    );
    // Only a change can help: no requeue.
    let object = h.object("checkout").unwrap();
    assert_eq!(
        controller::error_policy(object, &error, state),
        Action::await_change()
    );

    // Again: the same condition, nothing written at all.
    h.reconcile("checkout").await.unwrap_err();
    assert_eq!(writes(&h.api.take_calls()), Vec::<String>::new());
}

#[tokio::test]
async fn a_status_that_already_matches_causes_no_write() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    h.reconcile("checkout").await.unwrap();
    h.api.take_calls();

    // The watch event of Sluice's own status write, and a minute later: reads only.
    h.reconcile("checkout").await.unwrap();
    h.set_now(at(1));
    let action = h.reconcile("checkout").await.unwrap();
    let calls = h.api.take_calls();
    assert!(!calls.is_empty());
    assert_eq!(writes(&calls), Vec::<String>::new(), "{:?}", lines(&calls));
    assert!(!calls.iter().any(|c| c.method == "PATCH"));
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn stages_advance_and_deletion_restores_the_baseline_then_removes_the_finalizer() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    h.api.insert(
        &config_map_path("shop-flags"),
        config_map("shop-flags", OTHER_FLAG),
    );
    h.reconcile("checkout").await.unwrap();
    h.set_now(at(10));
    h.reconcile("checkout").await.unwrap();
    assert_eq!(
        h.status("checkout").unwrap().exposure.as_deref(),
        Some("5%")
    );
    assert_eq!(
        candidate_weight(&h.config_map_flag("shop-flags", "checkout").unwrap()),
        json!(["on", 50_000])
    );
    h.api.take_calls();

    h.api.modify(&rollout_path("checkout"), |object| {
        object["metadata"]["deletionTimestamp"] = Value::from("2026-11-24T12:11:00Z");
    });
    h.set_now(at(11));
    let action = h.reconcile("checkout").await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = h.api.take_calls();
    assert_eq!(
        writes(&calls),
        vec![
            format!("PUT {}", config_map_path("shop-flags")),
            format!("PATCH {}", rollout_path("checkout")),
        ],
        "the baseline first, then the finalizer goes"
    );
    let flag = h.config_map_flag("shop-flags", "checkout").unwrap();
    assert_eq!(flag["defaultVariant"], "off");
    assert!(flag.get("targeting").is_none(), "baseline only: {flag}");
    assert!(h.config_map_flag("shop-flags", "banner").is_some());
    assert!(
        h.api.get(&rollout_path("checkout")).is_none(),
        "the finalizer is removed and the object goes"
    );
}

#[tokio::test]
async fn deleting_a_promoted_rollout_leaves_the_promoted_flag() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    for minute in [0, 10, 20] {
        h.set_now(at(minute));
        h.reconcile("checkout").await.unwrap();
    }
    assert_eq!(h.status("checkout").unwrap().phase, Phase::Promoted);
    h.api.take_calls();
    h.api.modify(&rollout_path("checkout"), |object| {
        object["metadata"]["deletionTimestamp"] = Value::from("2026-11-24T12:30:00Z");
    });
    h.reconcile("checkout").await.unwrap();
    assert_eq!(
        writes(&h.api.take_calls()),
        vec![format!("PATCH {}", rollout_path("checkout"))]
    );
    assert_eq!(
        h.config_map_flag("shop-flags", "checkout").unwrap()["defaultVariant"],
        "on"
    );
}

#[tokio::test]
async fn the_feature_flag_target_patches_only_sluices_key() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", FEATURE_FLAG));
    let banner =
        json!({ "state": "ENABLED", "variants": { "a": "A", "b": "B" }, "defaultVariant": "b" });
    h.api.insert(
        &feature_flag_path("shop-flags"),
        json!({
            "apiVersion": "core.openfeature.dev/v1beta1", "kind": "FeatureFlag",
            "metadata": { "name": "shop-flags", "namespace": "shop" },
            "spec": { "flagSpec": { "flags": { "banner": banner } } },
        }),
    );
    // Another writer changes the FeatureFlag between Sluice's read and its patch once.
    let path = feature_flag_path("shop-flags");
    let mut raced = false;
    h.api.set_hook(move |call, objects| {
        if call.method == "PATCH" && call.path == path && !raced {
            raced = true;
            let object = objects.get_mut(&path).unwrap();
            object["spec"]["flagSpec"]["flags"]["late"] = json!({ "state": "DISABLED" });
            object["metadata"]["resourceVersion"] = Value::from("4242");
        }
        Hook::Pass
    });

    h.reconcile("checkout").await.unwrap();
    let calls = h.api.take_calls();
    let patches: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.path == feature_flag_path("shop-flags"))
        .collect();
    assert_eq!(
        patches.len(),
        2,
        "a failed test of resourceVersion, then a retry"
    );
    assert_eq!(patches[0].status, 422);
    assert_eq!(patches[1].status, 200);
    for patch in &patches {
        assert!(
            patch
                .content_type
                .starts_with("application/json-patch+json")
        );
        let ops = patch.body.as_array().unwrap();
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["path"], "/metadata/resourceVersion");
        let paths: Vec<&str> = ops[1..]
            .iter()
            .map(|op| op["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            vec!["/spec/flagSpec/flags/checkout"],
            "only Sluice's key"
        );
    }
    assert_eq!(patches[1].body[0]["value"], "4242");
    let stored = h.api.get(&feature_flag_path("shop-flags")).unwrap();
    let flags = &stored["spec"]["flagSpec"]["flags"];
    assert_eq!(flags["banner"], banner);
    assert_eq!(flags["late"], json!({ "state": "DISABLED" }));
    assert_eq!(candidate_weight(&flags["checkout"]), json!(["on", 10_000]));
    assert!(
        calls.iter().position(
            |c| c.line() == format!("PATCH {path}", path = feature_flag_path("shop-flags"))
        ) < calls.iter().position(|c| c.line() == status_patch()),
        "flag before status"
    );

    // Nothing changed: no patch at all.
    h.reconcile("checkout").await.unwrap();
    assert_eq!(writes(&h.api.take_calls()), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_feature_flag_is_retried_with_backoff() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", FEATURE_FLAG));
    let state = h.state();
    let error = h
        .reconcile_with("checkout", state.clone())
        .await
        .unwrap_err();
    assert_eq!(error.category(), "not_found");
    assert!(!error.waits_for_change());
    let object = h.object("checkout").unwrap();
    assert_ne!(
        controller::error_policy(object, &error, state),
        Action::await_change()
    );
    let ready = h.status("checkout").unwrap().conditions;
    assert!(
        ready.iter().any(|c| c.reason == "FlagWriteFailed"),
        "{ready:?}"
    );
}

#[tokio::test]
async fn a_malformed_object_gets_a_warning_and_is_skipped() {
    let h = Harness::new(at(0));
    let mut object = rollout("broken", TIMED);
    object["spec"]["stages"] = Value::from("every hour");
    h.api.insert(&rollout_path("broken"), object);
    let action = h.reconcile("broken").await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = h.api.take_calls();
    assert_eq!(writes(&calls), vec![EVENTS.to_owned()]);
    assert_eq!(events(&calls), vec!["InvalidObject".to_owned()]);
    assert_eq!(calls[0].body["type"], "Warning");
    assert_eq!(calls[0].body["regarding"]["name"], "broken");

    // The others go on.
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    h.reconcile("checkout").await.unwrap();
    assert_eq!(h.status("checkout").unwrap().phase, Phase::Progressing);
}

#[tokio::test]
async fn an_invalid_spec_waits_for_a_change_and_writes_no_flag() {
    let h = Harness::new(at(0));
    let mut object = rollout("checkout", TIMED);
    object["spec"]["stages"] = json!([{ "weight": 50, "duration": "10m" }, { "weight": 5, "duration": "10m" }, { "weight": 100 }]);
    h.api.insert(&rollout_path("checkout"), object);
    let action = h.reconcile("checkout").await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = h.api.take_calls();
    assert!(!calls.iter().any(|c| c.path.contains("configmaps")));
    let status = h.status("checkout").unwrap();
    assert_eq!(status.phase, Phase::Failed);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    let mut state = State::new(h.client.clone(), h.clock(), None);
    state.leadership = Leadership::elected(h.clock());
    let error = h
        .reconcile_with("checkout", std::sync::Arc::new(state))
        .await
        .unwrap_err();
    assert_eq!(error.category(), "not_leader");
    assert_eq!(lines(&h.api.take_calls()), Vec::<String>::new());
    assert!(h.status("checkout").is_none());
}

#[test]
fn backoff_doubles_per_object_up_to_five_minutes_and_resets_on_success() {
    let backoff = Backoff::default();
    let delays: Vec<u64> = (0..9).map(|_| backoff.failed("shop/a").as_secs()).collect();
    assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(backoff.failed("shop/b").as_secs(), 5, "per object");
    backoff.succeeded("shop/a");
    assert_eq!(backoff.failed("shop/a").as_secs(), 5);
    for _ in 0..100 {
        let jittered = backoff.jittered(Duration::from_secs(100)).as_secs_f64();
        assert!((90.0..=110.0).contains(&jittered), "{jittered}");
    }
}

#[tokio::test]
async fn a_transient_api_failure_backs_off_exponentially() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    let cm = config_map_path("shop-flags");
    h.api.set_hook(move |call, _| {
        if call.path == cm {
            Hook::Fail(500)
        } else {
            Hook::Pass
        }
    });
    let state = h.state();
    let mut delays = Vec::new();
    for _ in 0..4 {
        let error = h
            .reconcile_with("checkout", state.clone())
            .await
            .unwrap_err();
        assert_eq!(error.category(), "api");
        let object = h.object("checkout").unwrap();
        let action = controller::error_policy(object, &error, state.clone());
        delays.push(format!("{action:?}"));
    }
    // Each delay is the base doubled, ±10 % jitter: parse the seconds from Debug.
    let seconds: Vec<f64> = delays
        .iter()
        .map(|d| {
            let inner = d.split("Some(").nth(1).unwrap().split(')').next().unwrap();
            humantime_secs(inner)
        })
        .collect();
    for (i, s) in seconds.iter().enumerate() {
        let base = 5.0 * 2f64.powi(i as i32);
        assert!(
            (base * 0.9..=base * 1.1).contains(s),
            "attempt {i}: {s} s ({delays:?})"
        );
    }
    h.api.clear_hook();
    h.reconcile_with("checkout", state.clone()).await.unwrap();
    assert_eq!(
        state.backoff.failed("shop/checkout").as_secs(),
        5,
        "reset by success"
    );
}

/// `12.5s`, `1.2ms` or `600ns` (Duration's Debug) in seconds.
fn humantime_secs(text: &str) -> f64 {
    for (suffix, scale) in [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)] {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().unwrap() * scale;
        }
    }
    panic!("not a duration: {text}");
}

#[tokio::test]
async fn the_controller_is_ready_after_the_first_list_reconciles_and_stops_gracefully() {
    use sluice::telemetry::Health;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let h = Harness::new(at(0));
    let mut object = rollout("checkout", TIMED);
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    h.api.insert(&rollout_path("checkout"), object);
    let mut broken = rollout("broken", TIMED);
    broken["spec"]["stages"] = Value::from("every hour");
    h.api.insert(&rollout_path("broken"), broken);

    // The list fails until the test lets it through.
    let listable = Arc::new(AtomicBool::new(false));
    let gate = listable.clone();
    h.api.set_hook(move |call, _| {
        let list = call.method == "GET"
            && call.path.ends_with("/featurerollouts")
            && !call.query.contains("watch");
        if list && !gate.load(Ordering::SeqCst) {
            Hook::Fail(503)
        } else {
            Hook::Pass
        }
    });
    let health = Arc::new(Health::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run_controllers(
        h.state(),
        vec!["shop".into()],
        None,
        health.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    wait_for("a failed list", || {
        h.api
            .calls()
            .iter()
            .any(|c| c.path.ends_with("/featurerollouts") && c.status == 503)
    })
    .await;
    assert!(!health.ready(), "not ready before the first list");

    listable.store(true, Ordering::SeqCst);
    wait_for("ready", || health.ready()).await;
    // Finalizer, then the watch event of that patch, then the flag and the status.
    wait_for("the rollout started", || {
        h.status("checkout")
            .is_some_and(|s| s.phase == Phase::Progressing)
    })
    .await;
    assert!(h.config_map_flag("shop-flags", "checkout").is_some());
    wait_for("a warning about the malformed rollout", || {
        events(&h.api.calls()).contains(&"InvalidObject".to_owned())
    })
    .await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), controller)
        .await
        .expect("the controller stops on the shutdown signal")
        .unwrap();
}

/// Polls `condition` every 20 ms for up to 30 s.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rollback never waits: an abort that arrives while a look hangs on a Prometheus that
/// never answers (each query allowed ten minutes, far past the deadline) abandons the
/// look, and the flag goes back to the baseline at once.
#[tokio::test]
async fn an_abort_interrupts_a_look_hanging_on_prometheus() {
    use sluice::telemetry::Health;
    use std::sync::Arc;

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let h = Harness::new(at(0));
    h.api.insert(
        &config_map_path("shop-flags"),
        config_map("shop-flags", OTHER_FLAG),
    );
    let spec = format!(
        "{TIMED}analysis:\n  interval: 1m\n  prometheus: {{ address: \"http://127.0.0.1:{port}\", timeout: 10m }}\n  metrics:\n    - name: errors\n      ratio: {{ errors: e, requests: r }}\n      maxIncrease: {{ relative: \"10%\" }}\n"
    );
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", &spec));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run_controllers(
        h.state(),
        vec!["shop".into()],
        None,
        Arc::new(Health::default()),
        async {
            let _ = stopped.await;
        },
    ));
    wait_for("the first stage", || {
        h.status("checkout")
            .is_some_and(|s| s.phase == Phase::Progressing)
    })
    .await;
    // The next reconcile looks at once (no look yet in this stage), and the look hangs.
    // The connection is kept open and never answered.
    silent.set_nonblocking(true).unwrap();
    let mut held = Vec::new();
    wait_for("the look to be in progress", || match silent.accept() {
        Ok((stream, _)) => {
            held.push(stream);
            true
        }
        Err(_) => false,
    })
    .await;
    h.api.modify(&rollout_path("checkout"), |object| {
        object["spec"]["control"] = json!({ "abort": true });
        object["metadata"]["generation"] = json!(2);
    });
    wait_for("the rollback", || {
        h.status("checkout")
            .is_some_and(|s| s.phase == Phase::RolledBack)
    })
    .await;
    let flag = h.config_map_flag("shop-flags", "checkout").unwrap();
    assert_eq!(flag["defaultVariant"], "off");
    assert!(flag.get("targeting").is_none_or(Value::is_null), "{flag}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), controller)
        .await
        .expect("the controller stops")
        .unwrap();
}
