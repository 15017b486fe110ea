//! `src/rbac.rs` is exactly true: every request the controller makes (recorded by the
//! in-memory API server while it runs through creation, conflicts, deletion, the
//! FeatureFlag target, repeated Events and leader election) is allowed by a rule of
//! `PERMISSIONS`, and every verb of `PERMISSIONS` is used by one of them.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sluice::controller::leader::{Elector, Leadership, LeaseConfig};
use sluice::rbac::PERMISSIONS;
use sluice::telemetry::Health;
use support::kube_api::{Call, Harness, NAMESPACE, feature_flag_path, rollout, rollout_path};

const CONFIG_MAP: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { configMap: { name: shop-flags } }
stages:
  - { weight: 1, duration: 10m }
  - { weight: 100 }
"#;

const FEATURE_FLAG: &str = r#"
flag: { key: banner, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { featureFlag: { name: shop-flags } }
stages:
  - { weight: 1, duration: 10m }
  - { weight: 100 }
"#;

fn at(minutes: i64) -> Timestamp {
    "2026-11-24T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
}

/// (API group, resource[/subresource], verb) of one request.
fn permission(call: &Call) -> (String, String, String) {
    let parts: Vec<&str> = call.path.trim_matches('/').split('/').collect();
    let (group, rest) = if parts[0] == "api" {
        (String::new(), &parts[2..])
    } else {
        (parts[1].to_owned(), &parts[3..])
    };
    let rest = if rest.first() == Some(&"namespaces") {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [plural] | [plural, _] => (*plural).to_owned(),
        [plural, _, sub] => format!("{plural}/{sub}"),
        other => panic!("unexpected path {other:?}"),
    };
    let named = rest.len() >= 2;
    let verb = match (call.method.as_str(), named) {
        ("GET", _) if call.query.contains("watch=") => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (other, _) => panic!("unexpected method {other}"),
    };
    (group, resource, verb.to_owned())
}

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

#[tokio::test]
async fn the_permission_table_is_exactly_what_the_code_uses() {
    let h = Harness::new(at(0));
    let mut object = rollout("checkout", CONFIG_MAP);
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    h.api.insert(&rollout_path("checkout"), object);
    h.api
        .insert(&rollout_path("banner"), rollout("banner", FEATURE_FLAG));
    h.api.insert(
        &feature_flag_path("shop-flags"),
        json!({
            "apiVersion": "core.openfeature.dev/v1beta1", "kind": "FeatureFlag",
            "metadata": { "name": "shop-flags", "namespace": NAMESPACE },
            "spec": { "flagSpec": { "flags": {} } },
        }),
    );

    // The running controller: list, watch, finalizer, ConfigMap creation, status, Events.
    let health = Arc::new(Health::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = h.state();
    let running = tokio::spawn(sluice::controller::run_controllers(
        state.clone(),
        vec![NAMESPACE.into()],
        None,
        health,
        async {
            let _ = stopped.await;
        },
    ));
    wait_for("both rollouts started", || {
        h.status("checkout").is_some() && h.status("banner").is_some()
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap();

    // The next stage: a replace of the existing ConfigMap.
    h.set_now(at(10));
    h.reconcile_with("checkout", state.clone()).await.unwrap();
    // The same Event twice from one recorder: the second is a patch of its series.
    let mut broken = rollout("broken", CONFIG_MAP);
    broken["spec"]["stages"] = Value::from("x");
    h.api.insert(&rollout_path("broken"), broken);
    h.reconcile_with("broken", state.clone()).await.unwrap();
    h.reconcile_with("broken", state.clone()).await.unwrap();
    // Deletion: baseline, then the finalizer goes.
    h.api.modify(&rollout_path("banner"), |o| {
        o["metadata"]["deletionTimestamp"] = Value::from("2026-11-24T12:10:00Z");
    });
    h.reconcile_with("banner", state.clone()).await.unwrap();
    // Leader election: create, renew (get, update).
    let leadership = Leadership::elected(h.clock());
    let elector = Elector::new(
        h.client.clone(),
        LeaseConfig::new("sluice-controller".into(), NAMESPACE.into(), "a".into()),
        leadership,
    );
    elector.step().await.unwrap();
    elector.step().await.unwrap();

    let used: BTreeSet<(String, String, String)> = h.api.calls().iter().map(permission).collect();
    let granted: BTreeSet<(String, String, String)> = PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(|v| (p.group.to_owned(), p.resource.to_owned(), (*v).to_owned()))
        })
        .collect();
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(
        ungranted.is_empty(),
        "used but not in PERMISSIONS: {ungranted:?}"
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "in PERMISSIONS but never used: {unused:?}"
    );
    println!("verbs used: {used:?}");
}
