//! Tests against a real cluster (kind or k3d), ignored by default:
//!
//! ```sh
//! kind create cluster --name sluice
//! cargo test --test cluster -- --ignored --test-threads 1
//! ```
//!
//! They use the current kubeconfig context, install the CRD (server-side apply, field
//! manager `sluice-test`), run the controller in the test process (leader election off,
//! watching only the test's namespace) and create and delete everything in a fresh
//! namespace `sluice-test-<random>`. Stages are seconds long, so a whole rollout takes
//! about a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt as _};
use serde_json::{Value, json};
use sluice::controller::{self, State};
use sluice::crd::{FeatureRollout, Phase};
use sluice::telemetry::Health;

struct Cluster {
    client: Client,
    namespace: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controller: Option<tokio::task::JoinHandle<()>>,
    health: Arc<Health>,
}

impl Cluster {
    /// Installs the CRD, creates a namespace and starts the controller on it.
    async fn start() -> Cluster {
        sluice::prometheus::ensure_crypto_provider();
        let client = Client::try_default()
            .await
            .expect("a kubeconfig for a test cluster (kind create cluster)");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(
            "featurerollouts.sluice.dev",
            &PatchParams::apply("sluice-test").force(),
            &Patch::Apply(FeatureRollout::crd()),
        )
        .await
        .expect("the CRD installs");
        wait_for("the CRD to be established", Duration::from_secs(60), || {
            let crds = crds.clone();
            async move {
                crds.get("featurerollouts.sluice.dev")
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            }
        })
        .await;

        let namespace = format!("sluice-test-{:08x}", rand::random::<u32>());
        println!("namespace {namespace}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": namespace } })).unwrap(),
            )
            .await
            .expect("the test namespace");

        let health = Arc::new(Health::default());
        let state = Arc::new(State::new(
            client.clone(),
            controller::system_clock(),
            Some("cluster-test".into()),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = tokio::spawn(controller::run_controllers(
            state,
            vec![namespace.clone()],
            None,
            health.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let ready = health.clone();
        wait_for("the first list", Duration::from_secs(60), move || {
            let ready = ready.clone();
            async move { ready.ready() }
        })
        .await;
        Cluster {
            client,
            namespace,
            stop: Some(stop),
            controller: Some(controller),
            health,
        }
    }

    fn rollouts(&self) -> Api<FeatureRollout> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply(&self, manifest: Value) {
        let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
        self.rollouts()
            .patch(
                &name,
                &PatchParams::apply("sluice-test").force(),
                &Patch::Apply(manifest),
            )
            .await
            .expect("the rollout applies");
    }

    async fn phase(&self, name: &str) -> Option<Phase> {
        self.rollouts()
            .get(name)
            .await
            .ok()
            .and_then(|r| r.status)
            .map(|s| s.phase)
    }

    async fn served(&self, config_map: &str, key: &str) -> Option<Value> {
        let cm = self.config_maps().get_opt(config_map).await.ok()??;
        let document = cm.data?.remove("flags.json")?;
        sluice::flagd::flag_in_document(&document, key).ok()?
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(controller) = self.controller.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), controller).await;
        }
        assert!(self.health.ready());
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn rollout(name: &str, flag: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FeatureRollout",
        "metadata": { "name": name },
        "spec": {
            "flag": {
                "key": flag,
                "variants": { "on": true, "off": false },
                "baseline": "off",
                "candidate": "on",
            },
            "target": { "configMap": { "name": "shop-flags" } },
            "stages": [
                { "weight": 10, "duration": "10s" },
                { "weight": 50, "duration": "10s" },
                { "weight": 100 },
            ],
        },
    })
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_rollout_with_a_config_map_target_advances_to_promotion() {
    let cluster = Cluster::start().await;
    cluster.apply(rollout("checkout", "new-checkout")).await;

    wait_for("the first stage", Duration::from_secs(60), || async {
        cluster
            .served("shop-flags", "new-checkout")
            .await
            .is_some_and(|f| f["targeting"]["fractional"][0] == json!(["on", 100_000]))
    })
    .await;
    let rollout = cluster.rollouts().get("checkout").await.unwrap();
    assert!(
        rollout
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&controller::FINALIZER.to_owned())
    );
    let status = rollout.status.expect("a status");
    assert_eq!(status.phase, Phase::Progressing);
    assert_eq!(status.observed_generation, rollout.metadata.generation);

    wait_for("promotion", Duration::from_secs(120), || async {
        cluster.phase("checkout").await == Some(Phase::Promoted)
    })
    .await;
    let flag = cluster.served("shop-flags", "new-checkout").await.unwrap();
    assert_eq!(flag["defaultVariant"], "on");
    let history = cluster
        .rollouts()
        .get("checkout")
        .await
        .unwrap()
        .status
        .unwrap()
        .history;
    let weights: Vec<String> = history.iter().map(|h| h.weight.to_string()).collect();
    assert_eq!(weights, vec!["10%", "50%", "100%"]);
    cluster.stop().await;
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn deleting_a_rollout_mid_way_restores_the_baseline() {
    let cluster = Cluster::start().await;
    let mut manifest = rollout("banner", "new-banner");
    manifest["spec"]["stages"][0]["duration"] = Value::from("1h");
    cluster.apply(manifest).await;
    wait_for("the first stage", Duration::from_secs(60), || async {
        cluster
            .served("shop-flags", "new-banner")
            .await
            .is_some_and(|f| f.get("targeting").is_some())
    })
    .await;

    cluster
        .rollouts()
        .delete("banner", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the rollout to go", Duration::from_secs(60), || async {
        cluster
            .rollouts()
            .get_opt("banner")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let flag = cluster.served("shop-flags", "new-banner").await.unwrap();
    assert_eq!(flag["defaultVariant"], "off");
    assert!(flag.get("targeting").is_none(), "baseline only: {flag}");
    cluster.stop().await;
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_foreign_config_map_is_left_alone_with_a_condition() {
    let cluster = Cluster::start().await;
    let foreign: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "shop-flags" },
        "data": { "flags.json": "not: json" },
    }))
    .unwrap();
    cluster
        .config_maps()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    cluster.apply(rollout("checkout", "new-checkout")).await;
    wait_for("the condition", Duration::from_secs(60), || async {
        cluster
            .rollouts()
            .get("checkout")
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "FlagDocumentInvalid")
            })
    })
    .await;
    let cm = cluster.config_maps().get("shop-flags").await.unwrap();
    assert_eq!(cm.data.unwrap()["flags.json"], "not: json");
    cluster.stop().await;
}
