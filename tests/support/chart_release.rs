//! The chart's RBAC (`charts/sluice` rendered through Helm's library) installed on the
//! shared kube-apiserver for one test: a release of its own, named by a random id, with a
//! namespace for its ServiceAccount and Lease and one for the rollouts it runs; and the
//! checks the cluster tests make of such a release.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice::crd::FeatureRollout;

use super::apiserver::{ApiServer, ControllerProcess, apply_all, apply_rollout, status_of};
use super::helm;

/// The label a test's rollouts carry and its cluster-wide controllers select.
pub const RUN_LABEL: &str = "sluice.test/run";

/// The kinds of the rendered chart that grant the controller its rights.
pub const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// One release of the chart on the shared server.
pub struct ChartRelease {
    /// The shared server.
    pub server: &'static ApiServer,
    /// The admin's client.
    pub admin: Client,
    /// The run's id (label value, name suffix).
    pub id: String,
    /// The release namespace (ServiceAccount, Lease).
    pub namespace: String,
    /// Where the rollouts live.
    pub workload: String,
    /// The chart's full name: ServiceAccount, roles, Lease.
    pub fullname: String,
    /// The values the chart was rendered with (`{}` until [`ChartRelease::apply_rbac`]).
    pub values: Value,
    /// Every document the chart rendered (none until [`ChartRelease::apply_rbac`]).
    pub documents: Vec<Value>,
}

impl ChartRelease {
    /// A new release on the shared server: the FeatureRollout CRD installed, its two
    /// namespaces created, nothing of the chart applied yet.
    pub async fn new() -> ChartRelease {
        let server = ApiServer::shared();
        let admin = server.admin_with_crd().await;
        let id = format!("{:08x}", rand::random::<u32>());
        let namespace = server.namespace("sluice-system").await;
        let workload = server.namespace("shop").await;
        let fullname = format!("sluice-{id}");
        ChartRelease {
            server,
            admin,
            id,
            namespace,
            workload,
            fullname,
            values: json!({}),
            documents: Vec::new(),
        }
    }

    /// Renders the chart with the release's `fullnameOverride` and `values` (merged at the
    /// top level), lets `edit` change the RBAC documents and applies them. The release
    /// keeps the values and the documents as rendered.
    pub async fn apply_rbac(&mut self, values: Value, edit: impl FnOnce(&mut Vec<Value>)) {
        self.values = json!({ "fullnameOverride": self.fullname });
        for (key, value) in values.as_object().into_iter().flatten() {
            self.values[key] = value.clone();
        }
        self.documents = helm::render(&self.values, &self.namespace);
        let mut rbac: Vec<Value> = self
            .documents
            .iter()
            .filter(|d| RBAC_KINDS.contains(&d["kind"].as_str().unwrap_or("")))
            .cloned()
            .collect();
        edit(&mut rbac);
        apply_all(&self.admin, &rbac).await;
    }

    /// The selector of this run's rollouts.
    pub fn selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.id)
    }

    /// The ServiceAccount's user name.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.fullname)
    }

    /// The rollouts of the workload namespace.
    pub fn rollouts(&self) -> Api<FeatureRollout> {
        Api::namespaced(self.admin.clone(), &self.workload)
    }

    /// The ConfigMaps of the workload namespace.
    pub fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.admin.clone(), &self.workload)
    }

    /// Applies a rollout manifest into the workload namespace, labelled for this run.
    pub async fn apply_manifest(&self, name: &str, mut manifest: Value) {
        manifest["metadata"]["labels"] = json!({ RUN_LABEL: self.id });
        apply_rollout(&self.rollouts(), name, manifest).await;
    }

    /// Checks that rollout `name` entered its stages of 10, 50 and 100 % each once, in
    /// order (`controller`'s log shown otherwise).
    pub async fn assert_every_stage_once(&self, name: &str, controller: &ControllerProcess) {
        let history = status_of(&self.rollouts(), name).await.unwrap().history;
        let weights: Vec<String> = history.iter().map(|h| h.weight.to_string()).collect();
        assert_eq!(
            weights,
            ["10%", "50%", "100%"],
            "{name}: every stage once, in order\n{}",
            controller.log()
        );
    }

    /// Checks that the server refused no request of the ServiceAccount (`controller`'s log
    /// shown otherwise).
    pub fn assert_nothing_forbidden(&self, controller: &ControllerProcess) {
        let forbidden = self.server.forbidden_for(&self.user());
        assert!(
            forbidden.is_empty(),
            "the chart's RBAC refused {} request(s): {forbidden:#?}\n{}",
            forbidden.len(),
            controller.log()
        );
    }
}
