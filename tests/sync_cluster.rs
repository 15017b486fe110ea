//! The sync server in the cluster, against a real kube-apiserver: two `sluice controller`
//! replicas with leader election, both with `--sync-address`; the one that does not lead
//! serves the rollout's ConfigMap from its own watch and pushes the leader's rollback.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use sluice::crd::{FeatureRollout, Phase};
use sluice::sync::proto::flag_sync_service_client::FlagSyncServiceClient;
use sluice::sync::proto::{FetchAllFlagsRequest, SyncFlagsRequest};
use support::apiserver::{
    ApiServer, ControllerProcess, WAIT_LIMIT, apply_rollout, config_map_rollout, wait_for_status,
    wait_until,
};

#[tokio::test]
async fn a_replica_that_does_not_lead_serves_the_document_and_pushes_the_rollback() {
    let server = ApiServer::shared();
    let admin = server.admin_with_crd().await;
    let namespace = server.namespace("sluice-sync").await;
    let rollouts: Api<FeatureRollout> = Api::namespaced(admin.clone(), &namespace);
    let replicas: Vec<ControllerProcess> = ["sync-a", "sync-b"]
        .iter()
        .map(|name| {
            ControllerProcess::start(
                server.admin_kubeconfig(),
                name,
                server.dir().join(format!("{namespace}-{name}.log")),
                &[
                    "--namespace",
                    &namespace,
                    "--lease-namespace",
                    &namespace,
                    "--sync-address",
                    "127.0.0.1:0",
                ],
            )
        })
        .collect();
    let manifest = config_map_rollout("checkout", "checkout", "shop-flags", &[50, 100], "1h");
    apply_rollout(&rollouts, "checkout", manifest).await;
    wait_for_status(&rollouts, "checkout", "the first stage", |s| {
        s.phase == Phase::Progressing
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &namespace);
    let leader = leases
        .get("sluice-controller")
        .await
        .expect("the Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder");
    let follower = &replicas[if leader == "sync-a" { 1 } else { 0 }];
    wait_until("the follower's sync server", || {
        let found = follower.sync_port().is_some();
        async move { found }
    })
    .await;
    let port = follower.sync_port();
    let mut client = FlagSyncServiceClient::connect(format!("http://127.0.0.1:{}", port.unwrap()))
        .await
        .expect("the follower accepts connections");

    // The follower learns the rollouts from a watch of its own, which may not have
    // delivered this one yet when its server is up: wait until an unknown selector's error
    // lists the rollout's ConfigMap among what it serves.
    let served = format!("{namespace}/shop-flags/flags.json");
    let elsewhere = format!("{namespace}/elsewhere");
    wait_until("the follower to serve the rollout's ConfigMap", || {
        let mut client = client.clone();
        let selector = elsewhere.clone();
        let served = served.clone();
        async move {
            #[allow(deprecated)]
            let answer = client
                .fetch_all_flags(FetchAllFlagsRequest {
                    provider_id: String::new(),
                    selector,
                })
                .await;
            answer.is_err_and(|e| e.message().contains(&served))
        }
    })
    .await;
    #[allow(deprecated)]
    let unknown = client
        .fetch_all_flags(FetchAllFlagsRequest {
            provider_id: String::new(),
            selector: elsewhere,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.message().contains(&served), "{}", unknown.message());

    #[allow(deprecated)]
    let mut stream = client
        .sync_flags(SyncFlagsRequest {
            provider_id: "test".into(),
            selector: format!("{namespace}/shop-flags"),
        })
        .await
        .expect("the follower serves the rollout's ConfigMap")
        .into_inner();
    let mut next = async || -> Value {
        let message = tokio::time::timeout(WAIT_LIMIT, stream.message())
            .await
            .expect("a message in time")
            .expect("the stream stays up")
            .expect("the stream stays open");
        serde_json::from_str(&message.flag_configuration).expect("JSON")
    };
    let mut document = next().await;
    while document["flags"]["checkout"]["targeting"].is_null() {
        document = next().await;
    }

    rollouts
        .patch(
            "checkout",
            &PatchParams::apply("sluice-test-abort"),
            &Patch::Apply(json!({
                "apiVersion": "sluice.dev/v1alpha1",
                "kind": "FeatureRollout",
                "spec": { "control": { "abort": true } },
            })),
        )
        .await
        .expect("the abort applies");
    while document["flags"]["checkout"]["targeting"].is_object() {
        document = next().await;
    }
    assert_eq!(
        document["flags"]["checkout"]["defaultVariant"],
        json!("off")
    );
    drop(replicas);
}
