//! The API server is the oracle of the FeatureRollout schema: the committed CRD
//! (`crds/featurerollout.yaml`) installs and is Established; every manifest `sluice
//! validate` refuses is refused by a real kube-apiserver naming the same field, or the list
//! or object that holds the rule (unless the
//! case is marked Rust-only); every one it accepts, the server accepts; the target and
//! the flag key are immutable on the server too. The cases are `tests/support/crd_cases.rs`.
//!
//! Rust-only rules (the server accepts them; the controller reports an invalid spec): an
//! audience with an unknown JSONLogic operator, an unknown template variable, a malformed
//! template, a redefined built-in template variable, and a `flag.baseline` or
//! `flag.candidate` that names no variant (`flag.variants` holds untyped JSON values, and
//! the server gives CEL no map whose values have no schema, so no rule can read its keys).
//! An audience's single operator key is a schema bound (`minProperties`/`maxProperties`
//! 1), not CEL, for the same reason.

mod support;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice::crd::FeatureRollout;
use sluice::manifest;
use support::apiserver::{ApiServer, committed_crd, install_crd};
use support::crd_cases::{Server, example, invalid_cases};

/// The field manager of the test's own writes.
const MANAGER: &str = "sluice-test";

/// A namespace of the shared server with the committed CRD installed as it is.
struct Cluster {
    client: Client,
    namespace: String,
}

impl Cluster {
    async fn new() -> Cluster {
        let server = ApiServer::shared();
        let client = server.admin().await;
        install_crd(&client, &committed_crd()).await;
        let namespace = server.namespace("sluice-crd").await;
        Cluster { client, namespace }
    }

    fn rollouts(&self) -> Api<FeatureRollout> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply(&self, mut manifest: Value) {
        manifest["metadata"]["namespace"] = Value::from(self.namespace.clone());
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

    /// A dry-run create of `manifest` in the namespace: the server's verdict, with its
    /// message when it refuses.
    async fn server_verdict(&self, manifest: &Value) -> Result<(), String> {
        let mut manifest = manifest.clone();
        manifest["metadata"]["namespace"] = Value::from(self.namespace.clone());
        let rollout: FeatureRollout = match serde_json::from_value(manifest.clone()) {
            Ok(rollout) => rollout,
            // A manifest the Rust types cannot even hold (a weight that is an object, say)
            // goes to the server as raw JSON.
            Err(_) => return self.raw_dry_run(&manifest).await,
        };
        self.rollouts()
            .create(
                &PostParams {
                    dry_run: true,
                    field_manager: Some(MANAGER.into()),
                },
                &rollout,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn raw_dry_run(&self, manifest: &Value) -> Result<(), String> {
        let request = http::Request::post(format!(
            "/apis/sluice.dev/v1alpha1/namespaces/{}/featurerollouts?dryRun=All",
            self.namespace
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(manifest).unwrap())
        .unwrap();
        match self.client.request_text(request).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether the server's refusal names `field`, or the list or object above it that holds
/// the rule (a CEL rule on a list, such as "stage names must be unique", can only be
/// reported at the list: `spec.stages` for `spec.stages[2].name`), but not `spec` itself.
fn names(message: &str, field: &str) -> bool {
    if message.contains(field) {
        return true;
    }
    let mut ancestor = field;
    while let Some(end) = ancestor.rfind(['.', '[']) {
        ancestor = &ancestor[..end];
        if ancestor == "spec" {
            return false;
        }
        if message.contains(&format!("{ancestor}: ")) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn the_committed_crd_installs_and_is_established() {
    let server = ApiServer::shared();
    install_crd(&server.admin().await, &committed_crd()).await;
}

#[tokio::test]
async fn the_server_refuses_what_sluice_validate_refuses_naming_the_field() {
    let cluster = Cluster::new().await;
    let mut rust_only = Vec::new();
    let mut disagreements = Vec::new();
    for case in invalid_cases() {
        let problems = manifest::check(&case.doc).expect_err(case.name);
        assert!(
            problems.iter().any(|p| p.field == case.field),
            "{}: sluice validate names {:?}",
            case.name,
            problems
        );
        let verdict = cluster.server_verdict(&case.doc).await;
        match (case.server, verdict) {
            (Server::Cel | Server::Schema, Err(message)) if names(&message, case.field) => {}
            (Server::Cel | Server::Schema, Err(message)) => disagreements.push(format!(
                "{}: the refusal does not name {}: {message}",
                case.name, case.field
            )),
            (Server::Cel | Server::Schema, Ok(())) => disagreements.push(format!(
                "{}: accepted, but sluice validate refuses it at {}",
                case.name, case.field
            )),
            (Server::RustOnly, Ok(())) => rust_only.push(case.name),
            (Server::RustOnly, Err(message)) => disagreements.push(format!(
                "{}: marked Rust-only, but the API server refuses it: {message}",
                case.name
            )),
        }
    }
    println!("Rust-only rules (the API server accepts): {rust_only:?}");
    assert!(
        disagreements.is_empty(),
        "the API server and sluice validate disagree on {} case(s):\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

#[tokio::test]
async fn the_server_accepts_what_sluice_validate_accepts() {
    let cluster = Cluster::new().await;
    for file in ["new-checkout.yaml", "local-file.yaml"] {
        let text =
            std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        for doc in manifest::documents(&text).unwrap() {
            if doc["kind"] != "FeatureRollout" {
                continue;
            }
            manifest::check(&doc).unwrap_or_else(|p| panic!("{file}: {p:?}"));
            assert_eq!(
                cluster.server_verdict(&doc).await,
                Ok(()),
                "{file}: sluice validate accepts it, the API server refuses it"
            );
        }
    }
}

#[tokio::test]
async fn the_server_keeps_target_and_flag_key_immutable_but_not_stages() {
    let cluster = Cluster::new().await;
    let mut original = example();
    original["metadata"]["name"] = Value::from("immutable");
    original["metadata"]["namespace"] = Value::from(cluster.namespace.clone());
    cluster.apply(original.clone()).await;

    let refused = |pointer: &'static str, value: Value, field: &'static str| {
        let mut doc = original.clone();
        *doc.pointer_mut(pointer).unwrap() = value;
        let rollouts = cluster.rollouts();
        async move {
            let error = rollouts
                .patch(
                    "immutable",
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(doc),
                )
                .await
                .expect_err(&format!("a change of {field} was accepted"));
            assert!(
                error.to_string().contains(field),
                "the refusal names {field}: {error}"
            );
        }
    };
    refused(
        "/spec/target/configMap/name",
        json!("other-flags"),
        "spec.target",
    )
    .await;
    refused("/spec/flag/key", json!("other-flag"), "spec.flag").await;

    let mut restaged = original.clone();
    restaged["spec"]["stages"][2]["weight"] = json!(10);
    cluster.apply(restaged).await;
}
