//! The controller and the CRD against a real kube-apiserver over etcd
//! (`tests/support/apiserver.rs`; `make test` builds the servers once with
//! `scripts/install-kube.sh`). One server for this test binary; each test works in a
//! namespace of its own and runs the controller in the test process (admin credentials,
//! leader election off, watching only that namespace). Stages are seconds long.
//!
//! The schema itself is checked against the server in `tests/cluster_crd.rs`.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice::controller::{self, State};
use sluice::crd::{FeatureRollout, Phase};
use sluice::telemetry::{Health, Metrics};
use support::apiserver::{
    ApiServer, config_map_rollout, install_feature_rollout_crd, served_flag, status_of, wait_until,
};

/// The field manager of the test's own writes (a user's `kubectl apply --server-side`).
const MANAGER: &str = "sluice-test";

/// A namespace of the shared server with the CRD installed and, once
/// [`Cluster::start_controller`] is called, the controller running on it in this process.
struct Cluster {
    client: Client,
    namespace: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controller: Option<tokio::task::JoinHandle<()>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// The shared server, the CRD installed, a fresh namespace; no controller yet.
    async fn new(prefix: &str) -> Cluster {
        let server = ApiServer::shared();
        let client = server.admin().await;
        install_feature_rollout_crd(&client).await;
        let namespace = server.namespace(prefix).await;
        println!("namespace {namespace}");
        Cluster {
            client,
            namespace,
            stop: None,
            controller: None,
            health: Arc::new(Health::default()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// [`Cluster::new`] with the controller running on the namespace and listed.
    async fn start(prefix: &str) -> Cluster {
        let mut cluster = Cluster::new(prefix).await;
        cluster.start_controller().await;
        cluster
    }

    async fn start_controller(&mut self) {
        let mut state = State::new(
            self.client.clone(),
            controller::system_clock(),
            Some("cluster-test".into()),
        );
        state.metrics = self.metrics.clone();
        let state = Arc::new(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.controller = Some(tokio::spawn(controller::run_controllers(
            state,
            vec![self.namespace.clone()],
            None,
            self.health.clone(),
            async {
                let _ = stopped.await;
            },
        )));
        self.stop = Some(stop);
        let ready = self.health.clone();
        wait_until("the first list", move || {
            let ready = ready.clone();
            async move { ready.ready() }
        })
        .await;
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
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(manifest),
            )
            .await
            .expect("the rollout applies");
    }

    async fn phase(&self, name: &str) -> Option<Phase> {
        status_of(&self.rollouts(), name).await.map(|s| s.phase)
    }

    async fn served(&self, config_map: &str, key: &str) -> Option<Value> {
        served_flag(&self.config_maps(), config_map, key).await
    }

    /// `sluice_rollouts{phase}` as the controller's metrics say it, for every phase.
    fn phase_gauge(&self) -> Vec<(Phase, i64)> {
        let text = self.metrics.encode();
        Phase::ALL
            .iter()
            .map(|phase| {
                let series = format!("sluice_rollouts{{phase=\"{}\"}} ", phase.as_str());
                let value = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&series))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(-1);
                (*phase, value)
            })
            .collect()
    }

    /// Waits until `sluice_rollouts{phase}` is `expected` for the phases named and 0 for
    /// every other one.
    async fn wait_for_phase_gauge(&self, expected: &[(Phase, i64)]) {
        let want: Vec<(Phase, i64)> = Phase::ALL
            .iter()
            .map(|p| {
                let n = expected.iter().find(|(e, _)| e == p).map_or(0, |(_, n)| *n);
                (*p, n)
            })
            .collect();
        wait_until(&format!("sluice_rollouts {want:?}"), || async {
            let seen = self.phase_gauge();
            if seen != want {
                println!("sluice_rollouts {seen:?}");
            }
            seen == want
        })
        .await;
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(controller) = self.controller.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), controller).await;
        }
        assert!(self.health.ready());
    }
}

fn rollout(name: &str, flag: &str) -> Value {
    config_map_rollout(name, flag, "shop-flags", &[10, 50, 100], "10s")
}

#[tokio::test]
async fn a_rollout_with_a_config_map_target_advances_to_promotion() {
    let cluster = Cluster::start("sluice-promote").await;
    cluster.apply(rollout("checkout", "new-checkout")).await;

    wait_until("the first stage", || async {
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

    wait_until("promotion", || async {
        cluster.phase("checkout").await == Some(Phase::Promoted)
    })
    .await;
    let flag = cluster.served("shop-flags", "new-checkout").await.unwrap();
    assert_eq!(flag["defaultVariant"], "on");
    let history = status_of(&cluster.rollouts(), "checkout")
        .await
        .unwrap()
        .history;
    let weights: Vec<String> = history.iter().map(|h| h.weight.to_string()).collect();
    assert_eq!(weights, vec!["10%", "50%", "100%"]);
    cluster.stop().await;
}

#[tokio::test]
async fn deleting_a_rollout_mid_way_restores_the_baseline() {
    let cluster = Cluster::start("sluice-delete").await;
    let mut manifest = rollout("banner", "new-banner");
    manifest["spec"]["stages"][0]["duration"] = Value::from("1h");
    cluster.apply(manifest).await;
    wait_until("the first stage", || async {
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
    wait_until("the rollout to go", || async {
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
async fn a_foreign_config_map_is_left_alone_with_a_condition() {
    let cluster = Cluster::start("sluice-foreign").await;
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
    wait_until("the condition", || async {
        status_of(&cluster.rollouts(), "checkout")
            .await
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

/// More rollouts than one page of the controller's list (kube-runtime asks for 500 at a
/// time): every one is reconciled.
#[tokio::test]
async fn more_than_one_page_of_rollouts_are_all_reconciled() {
    const ROLLOUTS: usize = 510;
    let mut cluster = Cluster::new("sluice-paging").await;
    let rollouts = cluster.rollouts();
    let names: Vec<String> = (0..ROLLOUTS).map(|i| format!("flag-{i:03}")).collect();
    for chunk in names.chunks(30) {
        futures::future::join_all(chunk.iter().map(|name| {
            let rollouts = rollouts.clone();
            // Each on a ConfigMap of its own, at a first stage of an hour: one write each.
            let manifest = config_map_rollout(name, name, name, &[10, 100], "1h");
            async move {
                rollouts
                    .patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(manifest))
                    .await
                    .expect("the rollout applies")
            }
        }))
        .await;
    }
    let listed = rollouts
        .list(&ListParams::default().limit(200))
        .await
        .unwrap();
    assert!(
        listed.metadata.continue_.is_some(),
        "the server pages a list"
    );

    cluster.start_controller().await;
    wait_until("every rollout Progressing", || {
        let rollouts = rollouts.clone();
        async move {
            let all = rollouts.list(&ListParams::default()).await.unwrap();
            all.items.len() == ROLLOUTS
                && all.items.iter().all(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.phase == Phase::Progressing)
                })
        }
    })
    .await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
        .arg("--kubeconfig")
        .arg(ApiServer::shared().admin_kubeconfig())
        .args(["-n", &cluster.namespace, "get"])
        .output()
        .await
        .expect("kubectl-sluice runs");
    assert!(output.status.success(), "{output:?}");
    let listed = String::from_utf8_lossy(&output.stdout);
    for name in &names {
        assert!(
            listed.lines().any(|l| l.starts_with(&format!("{name} "))),
            "kubectl sluice get lists {name}"
        );
    }
    cluster.stop().await;
}

/// The rollout of the kubectl test: a canary, then two stages that wait for approval.
fn approval_rollout(name: &str) -> Value {
    let mut manifest = config_map_rollout(name, name, "shop-flags", &[10, 50, 80, 100], "2s");
    let stages = &mut manifest["spec"]["stages"];
    for (index, stage) in ["canary", "half", "most", "everyone"].iter().enumerate() {
        stages[index]["name"] = json!(stage);
    }
    stages[1]["approval"] = json!("required");
    stages[2]["approval"] = json!("required");
    manifest
}

#[tokio::test]
async fn kubectl_sluice_looks_and_steers_on_the_real_server() {
    let cluster = Cluster::start("sluice-kubectl").await;
    let kubeconfig = ApiServer::shared().admin_kubeconfig().to_owned();
    let namespace = cluster.namespace.clone();
    let kubectl = |args: &'static [&'static str]| {
        let kubeconfig = kubeconfig.clone();
        let namespace = namespace.clone();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["-n", &namespace])
                .args(args)
                .output()
                .await
                .expect("kubectl-sluice runs");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "kubectl sluice {args:?}: {}\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
        }
    };
    let reaches = |phase: Phase| {
        let cluster = &cluster;
        async move {
            wait_until(&format!("phase {phase:?}"), || async {
                cluster.phase("checkout").await == Some(phase)
            })
            .await;
        }
    };

    cluster.apply(approval_rollout("checkout")).await;
    reaches(Phase::Progressing).await;
    kubectl(&["pause", "checkout"]).await;
    reaches(Phase::Paused).await;
    kubectl(&["resume", "checkout"]).await;
    reaches(Phase::WaitingForApproval).await;
    let listed = kubectl(&["get"]).await;
    assert!(
        listed.contains("checkout") && listed.contains("WaitingForApproval"),
        "{listed}"
    );
    let status = kubectl(&["status", "checkout"]).await;
    assert!(status.contains("half"), "{status}");

    kubectl(&["abort", "checkout"]).await;
    reaches(Phase::RolledBack).await;
    kubectl(&["retry", "checkout"]).await;
    wait_until("the retry", || async {
        status_of(&cluster.rollouts(), "checkout")
            .await
            .is_some_and(|s| s.retries == 1 && s.phase == Phase::WaitingForApproval)
    })
    .await;
    kubectl(&["approve", "checkout"]).await;
    wait_until("the next approval", || async {
        status_of(&cluster.rollouts(), "checkout")
            .await
            .is_some_and(|s| s.phase == Phase::WaitingForApproval && s.stage == Some(1))
    })
    .await;
    kubectl(&["promote", "checkout"]).await;
    reaches(Phase::Promoted).await;

    let history = kubectl(&["history", "checkout"]).await;
    for phase in ["Paused", "RolledBack", "WaitingForApproval", "Promoted"] {
        assert!(
            history.contains(phase),
            "{phase} in the history:\n{history}"
        );
    }
    let rollout = cluster.rollouts().get("checkout").await.unwrap();
    let managers: Vec<String> = rollout
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&sluice::kubectl::FIELD_MANAGER.to_owned()),
        "kubectl sluice writes as its own field manager: {managers:?}"
    );
    cluster.stop().await;
}

/// A GitOps tool applying the spec with server-side apply (its own field manager, no
/// force) and the controller's writes (status, finalizer) never conflict: re-applying the
/// same spec changes nothing, a changed spec is taken up, and the controller owns no spec
/// field.
#[tokio::test]
async fn a_gitops_apply_of_the_spec_does_not_fight_the_controller() {
    const GITOPS: &str = "argocd-controller";
    let cluster = Cluster::start("sluice-gitops").await;
    let apply = |manifest: Value| {
        let rollouts = cluster.rollouts();
        async move {
            rollouts
                .patch(
                    "checkout",
                    &PatchParams::apply(GITOPS),
                    &Patch::Apply(manifest),
                )
                .await
                .expect("the GitOps apply meets no conflict")
        }
    };
    let mut manifest =
        config_map_rollout("checkout", "checkout", "shop-flags", &[10, 50, 100], "1h");
    apply(manifest.clone()).await;
    wait_until("the first stage", || async {
        status_of(&cluster.rollouts(), "checkout")
            .await
            .is_some_and(|s| s.phase == Phase::Progressing)
    })
    .await;

    let before = cluster.rollouts().get("checkout").await.unwrap();
    let again = apply(manifest.clone()).await;
    assert_eq!(again.metadata.generation, before.metadata.generation);
    assert_eq!(again.metadata.finalizers, before.metadata.finalizers);
    assert_eq!(again.status.map(|s| s.phase), Some(Phase::Progressing));

    manifest["spec"]["stages"][0]["duration"] = json!("2s");
    manifest["spec"]["stages"][1]["duration"] = json!("2s");
    let changed = apply(manifest.clone()).await;
    wait_until("promotion on the changed spec", || async {
        cluster.phase("checkout").await == Some(Phase::Promoted)
    })
    .await;
    let rollout = cluster.rollouts().get("checkout").await.unwrap();
    assert_eq!(
        rollout.status.as_ref().unwrap().observed_generation,
        changed.metadata.generation
    );
    apply(manifest).await;
    for entry in rollout.metadata.managed_fields.unwrap_or_default() {
        let fields = entry.fields_v1.map(|f| f.0).unwrap_or_default();
        if entry.manager.as_deref() != Some(GITOPS) {
            assert!(
                fields.get("f:spec").is_none(),
                "{:?} owns spec fields: {fields}",
                entry.manager
            );
        }
    }
    cluster.stop().await;
}

/// Issue 14's second controller defect, on the real server: every transition of the
/// history is findable in the Events (events.k8s.io) of the rollout, with its reason and
/// note, the later stages' too. (A stand-in API showed successive `StageAdvanced` Events
/// folded into one series, whose note is only the first one's.)
#[tokio::test]
async fn every_transition_is_findable_in_the_events() {
    let cluster = Cluster::start("sluice-events").await;
    let manifest = config_map_rollout(
        "checkout",
        "checkout",
        "shop-flags",
        &[5, 10, 25, 50, 100],
        "1s",
    );
    cluster.apply(manifest).await;
    wait_until("promotion", || async {
        cluster.phase("checkout").await == Some(Phase::Promoted)
    })
    .await;
    let history = status_of(&cluster.rollouts(), "checkout")
        .await
        .unwrap()
        .history;
    assert_eq!(history.len(), 5, "{history:?}");
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let missing = || async {
        let listed = events.list(&ListParams::default()).await.unwrap().items;
        history
            .iter()
            .filter(|h| {
                !listed.iter().any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("checkout")
                        && e.reason.as_deref() == Some(h.reason.as_str())
                        && e.note.as_deref() == Some(h.message.as_str())
                })
            })
            .map(|h| format!("{} {}: {}", h.weight, h.reason, h.message))
            .collect::<Vec<_>>()
    };
    // Events are written after the status: wait for them, then name what is missing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut absent = missing().await;
    while !absent.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        absent = missing().await;
    }
    assert!(
        absent.is_empty(),
        "transitions found in no Event: {absent:#?}"
    );
    cluster.stop().await;
}

/// Issue 14's third controller defect: `sluice_rollouts{phase}` counts every rollout by
/// the phase its status holds, also one whose reconcile fails (a first stage whose flag
/// cannot be written holds in `Pending`; today's gauge counted only the outcome of a
/// successful reconcile, so it read `Pending 0`), through phase changes and deletions.
#[tokio::test]
async fn the_phase_gauge_counts_every_rollout_by_the_phase_of_its_status() {
    let cluster = Cluster::start("sluice-gauge").await;
    cluster.wait_for_phase_gauge(&[]).await;
    // A document that is not flagd's: the first stage cannot begin.
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
    wait_until("Pending with the document refused", || async {
        status_of(&cluster.rollouts(), "checkout")
            .await
            .is_some_and(|s| {
                s.phase == Phase::Pending
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == "FlagDocumentInvalid")
            })
    })
    .await;
    cluster.wait_for_phase_gauge(&[(Phase::Pending, 1)]).await;

    // A second rollout, on a document of its own, goes through its stages.
    cluster
        .apply(config_map_rollout(
            "banner",
            "banner",
            "banner-flags",
            &[10, 100],
            "1h",
        ))
        .await;
    cluster
        .wait_for_phase_gauge(&[(Phase::Pending, 1), (Phase::Progressing, 1)])
        .await;
    cluster
        .rollouts()
        .patch(
            "banner",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "control": { "paused": true } } })),
        )
        .await
        .unwrap();
    cluster
        .wait_for_phase_gauge(&[(Phase::Pending, 1), (Phase::Paused, 1)])
        .await;

    for (name, left) in [
        ("checkout", vec![(Phase::Paused, 1)]),
        ("banner", Vec::new()),
    ] {
        cluster
            .rollouts()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        cluster.wait_for_phase_gauge(&left).await;
    }
    cluster.stop().await;
}

/// Issue 14's fourth controller defect: a rollout whose Prometheus is unreachable
/// rewrote its status at every retried look (the message carried the error count; 500
/// such rollouts made 50 status writes a second). Counted in the real server's audit
/// log: once the rollout holds on the error (`onError.consecutive` 3), further looks
/// write no status at all, and the status says since when it holds.
#[tokio::test]
async fn an_unreachable_prometheus_does_not_rewrite_the_status_at_every_look() {
    let cluster = Cluster::start("sluice-unreachable").await;
    // A port nothing listens on: every look fails to connect at once.
    let closed = support::server::free_port();
    let mut manifest = rollout("checkout", "new-checkout");
    manifest["spec"]["stages"][0]["duration"] = json!("1h");
    manifest["spec"]["analysis"] = json!({
        "interval": "1s",
        "prometheus": { "address": format!("http://127.0.0.1:{closed}") },
        "metrics": [{
            "name": "errors",
            "ratio": {
                "errors": "sum by (feature_flag_result_variant) (increase(errors_total{job=\"shop\"}[{{ window }}]))",
                "requests": "sum by (feature_flag_result_variant) (increase(requests_total{job=\"shop\"}[{{ window }}]))",
            },
            "maxIncrease": { "relative": "10%" },
        }],
    });
    cluster.apply(manifest).await;
    let looks = || {
        let text = cluster.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("sluice_analysis_duration_seconds_count "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_until("the hold on analysis errors", || async {
        status_of(&cluster.rollouts(), "checkout")
            .await
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Held" && c.reason == "AnalysisFailing")
            })
    })
    .await;
    let status_writes = || {
        ApiServer::shared()
            .audit_events()
            .into_iter()
            .filter(|e| {
                e["verb"] == "patch"
                    && e["objectRef"]["resource"] == "featurerollouts"
                    && e["objectRef"]["subresource"] == "status"
                    && e["objectRef"]["namespace"] == cluster.namespace.as_str()
                    && e["objectRef"]["name"] == "checkout"
            })
            .count()
    };
    let held_at = looks();
    let written = status_writes();
    println!("{written} status writes after {held_at} looks, at the hold");
    // The first stage, then one write per error until the third.
    assert!(written <= 4, "{written} status writes until the hold");
    wait_until("ten more looks", || async { looks() >= held_at + 10 }).await;
    assert_eq!(
        status_writes(),
        written,
        "status writes during ten looks that repeat the error"
    );
    let status = status_of(&cluster.rollouts(), "checkout").await.unwrap();
    let since = status.last_analysis.as_ref().unwrap().at;
    let message = status.message.unwrap();
    assert!(
        message.contains(&format!("holding since {since}")) && message.contains("unreachable"),
        "{message}"
    );
    cluster.stop().await;
}
