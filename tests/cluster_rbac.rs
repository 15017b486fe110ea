//! Least privilege, proven both ways on a real kube-apiserver: `sluice controller` (the
//! binary) runs with a token of the chart's own ServiceAccount, bound by the chart's own
//! rendered ClusterRole or Roles (`charts/sluice` through Helm's library, as
//! `tests/chart.rs` renders it), and completes whole rollouts; the server's audit log must
//! show no request of that ServiceAccount refused with 403. Removing one rule from the
//! rendered role makes the controller fail (403s in the audit log, the rollout stuck, the
//! Ready condition and the log naming the refusal), so the check can fail.
//!
//! The FeatureFlag target is tested on a CRD written here to match the OpenFeature
//! Operator's `core.openfeature.dev/v1beta1` FeatureFlag (the schema of
//! `config/crd/bases/core.openfeature.dev_featureflags.yaml` in
//! github.com/open-feature/open-feature-operator): `spec.flagSpec.flags` maps a key to a
//! flag with a required `state` (ENABLED or DISABLED), `variants` and `defaultVariant`
//! and an optional `targeting`; `spec.flagSpec.$evaluators` is free-form.
//!
//! Two controller processes on one real Lease: one acts, the other takes over when the
//! leader is killed (the seconds it takes are printed).
//!
//! The tests share one server; each installs the chart's RBAC under a release name of its
//! own, and cluster-wide controllers see only their own rollouts (`--selector`).

mod support;

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};
use sluice::crd::Phase;
use support::apiserver::{
    ControllerProcess, config_map_rollout, install_crd, served_flag, status_of, wait_until,
};
use support::chart_release::ChartRelease;

/// One release of the chart's RBAC on the shared server (this file's own methods of it).
type Release = ChartRelease;

impl Release {
    /// Renders the chart (cluster-wide, or watching the workload namespace), lets `edit`
    /// change the RBAC documents, and applies them.
    async fn install(namespaced: bool, edit: impl FnOnce(&mut Vec<Value>)) -> Release {
        Self::install_with(namespaced, json!({}), edit).await
    }

    /// [`Release::install`] with more chart values (merged at the top level).
    async fn install_with(
        namespaced: bool,
        extra: Value,
        edit: impl FnOnce(&mut Vec<Value>),
    ) -> Release {
        let mut release = ChartRelease::new().await;
        let mut values = json!({});
        if namespaced {
            values["watchNamespaces"] = json!([release.workload]);
        }
        for (key, value) in extra.as_object().into_iter().flatten() {
            values[key] = value.clone();
        }
        release.apply_rbac(values, edit).await;
        release
    }

    /// Whether the chart was rendered to watch only the workload namespace
    /// (`watchNamespaces`), not every namespace.
    fn namespaced(&self) -> bool {
        self.values.get("watchNamespaces").is_some()
    }

    /// Starts a controller replica `pod` with a token of the chart's ServiceAccount and the
    /// arguments the chart's Deployment gives it.
    async fn controller(&self, pod: &str) -> ControllerProcess {
        self.controller_with(pod, &[]).await
    }

    /// [`Release::controller`] with more arguments.
    async fn controller_with(&self, pod: &str, extra: &[&str]) -> ControllerProcess {
        let kubeconfig = self
            .server
            .service_account_kubeconfig(&self.namespace, &self.fullname)
            .await;
        let selector = self.selector();
        let mut args = vec![
            "--lease-namespace",
            &self.namespace,
            "--lease-name",
            &self.fullname,
        ];
        if self.namespaced() {
            args.extend(["--namespace", &self.workload]);
        } else {
            args.extend(["--selector", &selector]);
        }
        args.extend(extra);
        let log = self
            .server
            .dir()
            .join(format!("controller-{}-{pod}.log", self.id));
        ControllerProcess::start(&kubeconfig, pod, log, &args)
    }

    /// Applies a ConfigMap-target rollout labelled for this run.
    async fn apply_rollout(&self, name: &str, weights: &[u32], duration: &str) {
        let manifest = config_map_rollout(name, name, "shop-flags", weights, duration);
        self.apply_manifest(name, manifest).await;
    }

    async fn phase(&self, name: &str) -> Option<Phase> {
        status_of(&self.rollouts(), name).await.map(|s| s.phase)
    }

    async fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.admin.clone(), &self.namespace);
        leases
            .get_opt(&self.fullname)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }

    /// Applies rollout `checkout` (stages of 10 and 50 % lasting `duration`, then 100 %) and
    /// waits for its first stage.
    async fn start_rollout(&self, duration: &str) {
        self.apply_rollout("checkout", &[10, 50, 100], duration)
            .await;
        wait_until("the first stage", || async {
            self.phase("checkout").await == Some(Phase::Progressing)
        })
        .await;
    }

    /// Starts replica `sluice-a`, waits until it holds the Lease, then starts `sluice-b`:
    /// the leader and the standby.
    async fn leader_and_standby(&self) -> (ControllerProcess, ControllerProcess) {
        let leader = self.controller("sluice-a").await;
        self.wait_for_holder("sluice-a to hold the Lease", "sluice-a")
            .await;
        let standby = self.controller("sluice-b").await;
        (leader, standby)
    }

    /// Waits until `pod` holds the chart's Lease, naming `what`.
    async fn wait_for_holder(&self, what: &str, pod: &str) {
        wait_until(what, || async {
            self.lease_holder().await.as_deref() == Some(pod)
        })
        .await;
    }

    /// Waits for promotion and checks the stages were each entered once, in order, and
    /// the flag is served on the candidate by the ConfigMap.
    async fn promoted(&self, name: &str, controller: &ControllerProcess) {
        self.promoted_in_order(name, controller).await;
        let flag = served_flag(&self.config_maps(), "shop-flags", name)
            .await
            .expect("the flag is served");
        assert_eq!(flag["defaultVariant"], "on");
    }

    /// Waits for promotion and checks the stages were each entered once, in order.
    async fn promoted_in_order(&self, name: &str, controller: &ControllerProcess) {
        wait_until(&format!("{name} promoted"), || async {
            self.phase(name).await == Some(Phase::Promoted)
        })
        .await;
        self.assert_every_stage_once(name, controller).await;
    }

    /// Runs a whole rollout with one controller and checks nothing was refused.
    async fn whole_rollout(&self) {
        let controller = self.controller("sluice-0").await;
        self.apply_rollout("checkout", &[10, 50, 100], "2s").await;
        self.promoted("checkout", &controller).await;
        self.assert_nothing_forbidden(&controller);
    }
}

#[tokio::test]
async fn the_cluster_wide_chart_rbac_is_enough_for_a_whole_rollout() {
    Release::install(false, |_| {}).await.whole_rollout().await;
}

#[tokio::test]
async fn the_watch_namespaces_chart_rbac_is_enough_for_a_whole_rollout() {
    Release::install(true, |docs| {
        assert!(
            !docs.iter().any(|d| d["kind"] == "ClusterRole"),
            "watchNamespaces renders no ClusterRole"
        );
    })
    .await
    .whole_rollout()
    .await;
}

/// With `sync.enabled` the chart's RBAC is enough for the sync server too: the replica
/// lists the rollouts and watches the ConfigMap an app follows, and nothing is refused.
#[tokio::test]
async fn with_sync_enabled_the_chart_rbac_is_enough_to_serve_a_document() {
    use sluice::sync::proto::FetchAllFlagsRequest;
    use sluice::sync::proto::flag_sync_service_client::FlagSyncServiceClient;
    let release = Release::install_with(false, json!({ "sync": { "enabled": true } }), |docs| {
        let watches_config_maps = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .any(|r| {
                r["resources"] == json!(["configmaps"])
                    && r["verbs"]
                        .as_array()
                        .is_some_and(|v| v.contains(&json!("watch")))
            });
        assert!(watches_config_maps, "the sync rules are rendered");
    })
    .await;
    let controller = release
        .controller_with("sluice-0", &["--sync-address", "127.0.0.1:0"])
        .await;
    release.start_rollout("1h").await;
    let port = controller
        .sync_port()
        .expect("the sync server's address in the log");
    let client = FlagSyncServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("the sync server accepts connections");
    wait_until("the document through the sync server", || {
        let mut client = client.clone();
        let selector = format!("{}/shop-flags/flags.json", release.workload);
        async move {
            #[allow(deprecated)]
            let request = FetchAllFlagsRequest {
                provider_id: String::new(),
                selector,
            };
            match client.fetch_all_flags(request).await {
                Ok(answer) => {
                    let document: Value =
                        serde_json::from_str(&answer.into_inner().flag_configuration).unwrap();
                    document["flags"]["checkout"]["targeting"].is_object()
                }
                Err(_) => false,
            }
        }
    })
    .await;
    drop(client);
    release.assert_nothing_forbidden(&controller);
}

/// The check above can fail: without the ConfigMap rule the controller is refused, the
/// rollout does not start, and the refusal is named by the Ready condition
/// (`FlagWriteFailed`) and the log.
#[tokio::test]
async fn without_the_config_map_rule_the_controller_is_refused_visibly() {
    let release = Release::install(false, |docs| {
        let role = docs
            .iter_mut()
            .find(|d| d["kind"] == "ClusterRole")
            .expect("a ClusterRole");
        let rules = role["rules"].as_array_mut().unwrap();
        let before = rules.len();
        rules.retain(|r| r["resources"] != json!(["configmaps"]));
        assert_eq!(rules.len(), before - 1, "the ConfigMap rule was removed");
    })
    .await;
    let controller = release.controller("sluice-0").await;
    release
        .apply_rollout("checkout", &[10, 50, 100], "2s")
        .await;
    wait_until("a refused ConfigMap request", || async {
        release
            .server
            .forbidden_for(&release.user())
            .iter()
            .any(|r| r.contains("configmaps"))
    })
    .await;
    wait_until("a condition naming the refusal", || async {
        status_of(&release.rollouts(), "checkout")
            .await
            .is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "False"
                        && c.reason == "FlagWriteFailed"
                        && c.message.contains("403 Forbidden")
                        && c.message.contains("configmaps")
                })
            })
    })
    .await;
    assert_ne!(release.phase("checkout").await, Some(Phase::Promoted));
    assert!(
        release
            .config_maps()
            .get_opt("shop-flags")
            .await
            .unwrap()
            .is_none(),
        "nothing was written"
    );
    assert!(
        controller.log().contains("403 Forbidden"),
        "the log names the refusal:\n{}",
        controller.log()
    );
}

/// Two replicas on the chart's Lease: the first leads and acts, the second waits; when
/// the leader is killed (SIGKILL, no release of the Lease) the second takes over once the
/// Lease expires and finishes the rollout, every stage once.
#[tokio::test]
async fn a_standby_replica_takes_over_a_real_lease_when_the_leader_is_killed() {
    let release = Release::install(false, |_| {}).await;
    let (mut leader, standby) = release.leader_and_standby().await;
    wait_until("sluice-b to stand by", || async {
        standby.log().contains("waiting to lead")
    })
    .await;

    release.start_rollout("4s").await;
    assert!(
        !standby.log().contains("reconciling FeatureRollouts"),
        "the standby acts while the leader leads:\n{}",
        standby.log()
    );
    assert_eq!(release.lease_holder().await.as_deref(), Some("sluice-a"));

    leader.kill();
    let killed = Instant::now();
    release
        .wait_for_holder("sluice-b to take the Lease", "sluice-b")
        .await;
    println!(
        "take-over: sluice-b holds the Lease {:.1} s after sluice-a was killed",
        killed.elapsed().as_secs_f64()
    );
    release.promoted("checkout", &standby).await;
    assert!(standby.log().contains("became the leader"));
    release.assert_nothing_forbidden(&standby);
}

/// Issue 14's first controller defect: a leader frozen past its Lease (SIGSTOP while the
/// standby takes the Lease over), then resumed, must see it lost leadership and still stop
/// on SIGTERM. (With a stand-in API it logged "leadership lost" and then ignored SIGTERM,
/// renewing the Lease without reconciling, 3 of 3 tries.)
#[tokio::test]
async fn a_leader_frozen_past_its_lease_then_resumed_stops_on_sigterm() {
    let release = Release::install(false, |_| {}).await;
    let (mut frozen, standby) = release.leader_and_standby().await;
    frozen.send("STOP");
    release
        .wait_for_holder("sluice-b to take the Lease", "sluice-b")
        .await;
    frozen.send("CONT");
    wait_until("sluice-a to see it lost leadership", || async {
        frozen.log().contains("leadership lost")
    })
    .await;

    frozen.terminate("sluice-a, after losing leadership,").await;
    assert_eq!(release.lease_holder().await.as_deref(), Some("sluice-b"));
    drop(standby);
}

/// A CRD matching the OpenFeature Operator's `core.openfeature.dev/v1beta1` FeatureFlag
/// (see the module's comment for where its schema comes from).
fn feature_flag_crd() -> Value {
    let free_form = json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true });
    let flag = json!({
        "type": "object",
        "required": ["defaultVariant", "state", "variants"],
        "properties": {
            "defaultVariant": { "type": "string" },
            "state": { "type": "string", "enum": ["ENABLED", "DISABLED"] },
            "targeting": free_form,
            "variants": free_form,
        },
    });
    let flag_spec = json!({
        "type": "object",
        "required": ["flags"],
        "properties": {
            "$evaluators": free_form,
            "flags": { "type": "object", "additionalProperties": flag },
        },
    });
    let schema = json!({
        "type": "object",
        "properties": {
            "apiVersion": { "type": "string" },
            "kind": { "type": "string" },
            "metadata": { "type": "object" },
            "spec": { "type": "object", "properties": { "flagSpec": flag_spec } },
            "status": { "type": "object" },
        },
    });
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "featureflags.core.openfeature.dev" },
        "spec": {
            "group": "core.openfeature.dev",
            "names": {
                "kind": "FeatureFlag",
                "listKind": "FeatureFlagList",
                "plural": "featureflags",
                "singular": "featureflag",
                "shortNames": ["ff"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1beta1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": schema },
            }],
        },
    })
}

#[tokio::test]
async fn the_chart_rbac_is_enough_for_a_whole_rollout_on_a_feature_flag() {
    let release = Release::install(false, |_| {}).await;
    install_crd(&release.admin, &feature_flag_crd()).await;
    let resource = sluice::controller::targets::feature_flag_resource();
    let flags: Api<DynamicObject> =
        Api::namespaced_with(release.admin.clone(), &release.workload, &resource);
    let other =
        json!({ "state": "ENABLED", "variants": { "a": 1, "b": 2 }, "defaultVariant": "a" });
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "core.openfeature.dev/v1beta1",
        "kind": "FeatureFlag",
        "metadata": { "name": "shop-flags" },
        "spec": { "flagSpec": { "flags": { "other": other } } },
    }))
    .unwrap();
    flags
        .create(&PostParams::default(), &object)
        .await
        .expect("the FeatureFlag is created");

    let controller = release.controller("sluice-0").await;
    let mut manifest = config_map_rollout("banner", "banner", "unused", &[10, 50, 100], "2s");
    manifest["spec"]["target"] = json!({ "featureFlag": { "name": "shop-flags" } });
    release.apply_manifest("banner", manifest).await;
    release.promoted_in_order("banner", &controller).await;
    let object = flags.get("shop-flags").await.unwrap();
    let served = &object.data["spec"]["flagSpec"]["flags"];
    assert_eq!(served["banner"]["defaultVariant"], "on", "{served}");
    assert_eq!(served["other"], other, "the other flag is untouched");
    release.assert_nothing_forbidden(&controller);
}
