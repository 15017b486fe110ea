//! Leader election over a Lease, against the in-memory API server: only the leader
//! writes, a leader that cannot renew stops writing before anybody may take over, losing
//! the Lease stops writes at once (even in the middle of a reconcile), and the new leader
//! continues from status.

mod support;

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sluice::controller::State;
use sluice::controller::leader::{Elector, Leadership, LeaseConfig, Step};
use sluice::crd::Phase;
use support::kube_api::{
    Harness, Hook, NAMESPACE, config_map_path, lease_path, rollout, rollout_path,
};

const TIMED: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { configMap: { name: shop-flags } }
stages:
  - { weight: 1, duration: 10m }
  - { weight: 5, duration: 10m }
  - { weight: 100 }
"#;

fn at(seconds: i64) -> Timestamp {
    "2026-11-24T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(seconds)
}

struct Replica {
    elector: Elector,
    state: Arc<State>,
    leadership: Leadership,
}

fn replica(h: &Harness, identity: &str) -> Replica {
    let leadership = Leadership::elected(h.clock());
    let config = LeaseConfig::new(
        "sluice-controller".into(),
        NAMESPACE.into(),
        identity.into(),
    );
    let elector = Elector::new(h.client.clone(), config, leadership.clone());
    let mut state = State::new(h.client.clone(), h.clock(), Some(identity.into()));
    state.leadership = leadership.clone();
    Replica {
        elector,
        state: Arc::new(state),
        leadership,
    }
}

fn writes(h: &Harness) -> Vec<String> {
    h.api
        .take_calls()
        .iter()
        .filter(|c| c.is_write() && !c.path.contains("/leases"))
        .map(|c| c.line())
        .collect()
}

#[tokio::test]
async fn only_the_leader_writes_and_a_new_leader_continues_from_status() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    let a = replica(&h, "sluice-a");
    let b = replica(&h, "sluice-b");

    assert!(!a.leadership.is_leader() && !b.leadership.is_leader());
    assert_eq!(a.elector.step().await.unwrap(), Step::Leading);
    assert_eq!(
        b.elector.step().await.unwrap(),
        Step::Following("sluice-a".into())
    );
    let lease = h.api.get(&lease_path("sluice-controller")).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "sluice-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    assert!(a.leadership.is_leader() && !b.leadership.is_leader());
    h.api.take_calls();

    // The follower writes nothing at all; the leader starts the rollout.
    let error = h
        .reconcile_with("checkout", b.state.clone())
        .await
        .unwrap_err();
    assert_eq!(error.category(), "not_leader");
    assert_eq!(h.api.take_calls().len(), 0, "not even a read");
    h.reconcile_with("checkout", a.state.clone()).await.unwrap();
    assert_eq!(
        h.status("checkout").unwrap().exposure.as_deref(),
        Some("1%")
    );
    h.api.take_calls();

    // The leader renews; the follower sees the record change and keeps following.
    h.set_now(at(5));
    assert_eq!(a.elector.step().await.unwrap(), Step::Leading);
    assert_eq!(
        b.elector.step().await.unwrap(),
        Step::Following("sluice-a".into())
    );

    // The leader is cut off (its loop stalls): after the renew deadline (10 s) it stops
    // writing by itself, before the Lease (15 s) can be taken over.
    h.set_now(at(16));
    assert!(!a.leadership.is_leader());
    h.reconcile_with("checkout", a.state.clone())
        .await
        .unwrap_err();
    assert_eq!(writes(&h), Vec::<String>::new());
    assert_eq!(
        b.elector.step().await.unwrap(),
        Step::Following("sluice-a".into()),
        "15 s since the follower last saw a renewal have not passed yet"
    );

    // 15 s after the last renewal the follower saw: it takes over.
    h.set_now(at(21));
    assert_eq!(b.elector.step().await.unwrap(), Step::Leading);
    let lease = h.api.get(&lease_path("sluice-controller")).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "sluice-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    // The old leader comes back, finds the Lease taken and stays a follower.
    assert_eq!(
        a.elector.step().await.unwrap(),
        Step::Following("sluice-b".into())
    );
    assert!(!a.leadership.is_leader());

    // The new leader continues from status: the first stage ends at minute 10, not
    // minute 10 after the takeover, and no stage is repeated.
    h.set_now(at(600));
    assert_eq!(b.elector.step().await.unwrap(), Step::Leading);
    h.reconcile_with("checkout", b.state.clone()).await.unwrap();
    let status = h.status("checkout").unwrap();
    assert_eq!(status.exposure.as_deref(), Some("5%"));
    assert_eq!(status.stage, Some(1));
    assert_eq!(status.history.len(), 2, "{:#?}", status.history);
    assert_eq!(status.phase, Phase::Progressing);
}

#[tokio::test]
async fn losing_the_lease_in_the_middle_of_a_reconcile_stops_the_next_write() {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", TIMED));
    let a = replica(&h, "sluice-a");
    assert_eq!(a.elector.step().await.unwrap(), Step::Leading);
    h.api.take_calls();

    // Leadership is lost right after the flag write is answered.
    let leadership = a.leadership.clone();
    let cm = "/api/v1/namespaces/shop/configmaps".to_owned();
    h.api.set_hook(move |call, _| {
        if call.method == "POST" && call.path == cm {
            leadership.revoke();
        }
        Hook::Pass
    });
    let lost = tokio::spawn({
        let leadership = a.leadership.clone();
        async move { leadership.lost().await }
    });
    let error = h
        .reconcile_with("checkout", a.state.clone())
        .await
        .unwrap_err();
    assert_eq!(error.category(), "not_leader");
    assert_eq!(
        writes(&h),
        vec!["POST /api/v1/namespaces/shop/configmaps".to_owned()],
        "the flag write in hand finished; no status, no event after it"
    );
    assert!(h.status("checkout").is_none());
    assert!(h.api.get(&config_map_path("shop-flags")).is_some());
    // What stops the controller's stream resolves.
    tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("lost() resolves after the Lease is lost")
        .unwrap();
}

#[tokio::test]
async fn a_released_lease_is_taken_over_at_once() {
    let h = Harness::new(at(0));
    let a = replica(&h, "sluice-a");
    let b = replica(&h, "sluice-b");
    assert_eq!(a.elector.step().await.unwrap(), Step::Leading);
    assert_eq!(
        b.elector.step().await.unwrap(),
        Step::Following("sluice-a".into())
    );
    a.leadership.revoke();
    a.elector.release().await.unwrap();
    assert!(
        h.api.get(&lease_path("sluice-controller")).unwrap()["spec"]["holderIdentity"].is_null()
    );
    assert_eq!(b.elector.step().await.unwrap(), Step::Leading);
}

#[tokio::test]
async fn a_replica_without_election_always_leads() {
    let h = Harness::new(at(0));
    let always = Leadership::always(h.clock());
    h.set_now(at(3600));
    assert!(always.is_leader());
    always.revoke();
    assert!(always.is_leader(), "nothing to lose without election");
}
