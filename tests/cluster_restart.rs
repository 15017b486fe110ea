//! The API server restarted mid-rollout (etcd keeps the data): `sluice controller` (the
//! binary, admin credentials, one replica) notices the outage, reconnects when the server
//! is back, and finishes the rollout with no stage skipped or repeated. And a leader cut
//! off from its API server still stops on SIGTERM. Each test has a server of its own,
//! since it stops it.

mod support;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use sluice::crd::{FeatureRollout, Phase};
use support::apiserver::{
    ApiServer, ControllerProcess, apply_rollout, config_map_rollout, served_flag, status_of,
    wait_for_status, wait_until,
};

/// How long each stage but the last lasts.
const STAGE: SignedDuration = SignedDuration::from_secs(3);

#[tokio::test]
async fn a_restarted_api_server_neither_skips_nor_repeats_a_stage() {
    let mut server = ApiServer::start().await;
    let admin = server.admin_with_crd().await;
    let namespace = server.namespace("sluice-restart").await;
    let rollouts: Api<FeatureRollout> = Api::namespaced(admin.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &namespace);

    let controller = ControllerProcess::start(
        server.admin_kubeconfig(),
        "sluice-0",
        server.dir().join("controller.log"),
        &["--leader-election", "false", "--namespace", &namespace],
    );
    let manifest = config_map_rollout("checkout", "checkout", "shop-flags", &[10, 50, 100], "3s");
    apply_rollout(&rollouts, "checkout", manifest).await;
    wait_for_status(&rollouts, "checkout", "the first stage", |s| {
        s.phase == Phase::Progressing && s.stage == Some(0)
    })
    .await;
    let started = status_of(&rollouts, "checkout")
        .await
        .and_then(|s| s.stage_started_at)
        .expect("the stage's start");

    // Down for longer than the stage: its end passes while the server is away.
    server.stop_apiserver();
    let seen = controller.log().len();
    wait_until("the controller to notice the outage", || async {
        controller.log()[seen..].contains("error")
    })
    .await;
    wait_until("the first stage's end to pass", || async {
        Timestamp::now() > started + STAGE + SignedDuration::from_secs(1)
    })
    .await;
    server.restart_apiserver().await;

    wait_for_status(&rollouts, "checkout", "promotion after the restart", |s| {
        s.phase == Phase::Promoted
    })
    .await;
    let history = status_of(&rollouts, "checkout").await.unwrap().history;
    let stages: Vec<(Option<u32>, String)> = history
        .iter()
        .map(|h| (h.stage, h.weight.to_string()))
        .collect();
    assert_eq!(
        stages,
        vec![
            (Some(0), "10%".to_owned()),
            (Some(1), "50%".to_owned()),
            (Some(2), "100%".to_owned())
        ],
        "every stage once, in order\n{}",
        controller.log()
    );
    let flag = served_flag(&config_maps, "shop-flags", "checkout")
        .await
        .expect("the flag is served");
    assert_eq!(flag["defaultVariant"], "on");
}

/// Issue 14's first controller defect, on the real server: a leader whose API server goes
/// away loses its leadership ("leadership lost") and must still stop on SIGTERM, as the
/// kubelet asks at every rolling update.
#[tokio::test]
async fn a_leader_cut_off_from_its_api_server_still_stops_on_sigterm() {
    let mut server = ApiServer::start().await;
    server.admin_with_crd().await;
    let namespace = server.namespace("sluice-sigterm").await;
    let mut controller = ControllerProcess::start(
        server.admin_kubeconfig(),
        "sluice-0",
        server.dir().join("controller-sigterm.log"),
        &["--lease-namespace", &namespace, "--namespace", &namespace],
    );
    wait_until("leadership", || async {
        controller.log().contains("became the leader")
    })
    .await;
    server.stop_apiserver();
    wait_until("leadership lost", || async {
        controller.log().contains("leadership lost")
    })
    .await;

    controller
        .terminate("the controller, after losing leadership,")
        .await;
}
