//! Every manifest in `examples/` parses as the type it claims: FeatureRollouts through
//! Sluice's own validation (Rust rules and the CRD's CEL rules, offline), Kubernetes
//! objects as their k8s-openapi types (nothing unknown dropped), OpenFeature Operator
//! objects and flagd documents by their shape and through Sluice's flag merging. The
//! rollouts' targets exist next to them, flag documents are never mounted with subPath,
//! the Grafana dashboard's queries run on a real Prometheus, the alerts pass promtool's
//! rule tests, and the Argo CD health check gives the right health for every phase.
//!
//! Top-level YAML files must hold only manifests; in subdirectories (e.g. the Python
//! service's sources) only documents with `apiVersion` and `kind` are manifests.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sluice::crd::{FeatureRollout, Phase};
use sluice::flagd::{FlagDefinition, FlagState, flag_in_document, merge_flag, render_flag};
use sluice::manifest;
use sluice::prometheus::{ClientConfig, PrometheusClient, QueryResult};
use support::openmetrics::OpenMetrics;
use support::server::PrometheusServer;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every file under `examples/`, sorted, as (path relative to examples/, path).
fn files() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("examples/ is readable") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&examples_dir(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(examples_dir())
                .unwrap()
                .display()
                .to_string();
            (rel, p)
        })
        .collect()
}

/// One manifest and where it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }
    fn what(&self) -> String {
        format!("{}: {} {}", self.file, self.kind(), self.name())
    }
}

/// Every manifest in every YAML file.
fn manifests() -> Vec<Doc> {
    let mut docs = Vec::new();
    for (rel, path) in files() {
        if !rel.ends_with(".yaml") && !rel.ends_with(".yml") {
            continue;
        }
        let top_level = !rel.contains('/');
        let text = std::fs::read_to_string(&path).unwrap();
        let values = manifest::documents(&text)
            .unwrap_or_else(|e| panic!("{rel}: {}: {}", e.field, e.message));
        assert!(!values.is_empty() || !top_level, "{rel} holds no manifest");
        for value in values {
            let claims = value.get("apiVersion").is_some() && value.get("kind").is_some();
            assert!(
                claims || !top_level,
                "{rel}: a document without apiVersion and kind"
            );
            if claims {
                docs.push(Doc {
                    file: rel.clone(),
                    value,
                });
            }
        }
    }
    docs
}

/// Parses a manifest as its k8s-openapi type and checks serialising it back gives the
/// same document: a misspelt or misplaced field would be dropped and show up here.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Doc) -> T {
    let object: T = serde_json::from_value(doc.value.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", doc.what()));
    let back = serde_json::to_value(&object).unwrap();
    pretty_assertions::assert_eq!(
        &back,
        &doc.value,
        "{} has fields its type does not know",
        doc.what()
    );
    object
}

/// Checks a flagd document: it parses as one, and every flag has a state, variants and a
/// default variant among them.
fn check_flagd_document(what: &str, text: &str) {
    flag_in_document(text, "-").unwrap_or_else(|e| panic!("{what}: not a flagd document: {e}"));
    let doc: Value = serde_json::from_str(text).unwrap();
    check_flags(what, &doc["flags"]);
}

/// Checks a `flags` map as flagd reads it.
fn check_flags(what: &str, flags: &Value) {
    let flags = flags
        .as_object()
        .unwrap_or_else(|| panic!("{what}: flags is an object"));
    for (key, flag) in flags {
        let state = flag["state"].as_str();
        assert!(
            matches!(state, Some("ENABLED" | "DISABLED")),
            "{what}: flags.{key}.state is ENABLED or DISABLED"
        );
        let variants = flag["variants"]
            .as_object()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{what}: flags.{key}.variants is a non-empty object"));
        let default = flag["defaultVariant"].as_str().unwrap_or_default();
        assert!(
            variants.contains_key(default),
            "{what}: flags.{key}.defaultVariant {default:?} is one of its variants"
        );
        if let Some(targeting) = flag.get("targeting") {
            assert!(targeting.is_object(), "{what}: flags.{key}.targeting");
        }
    }
}

/// Sluice's flag at a stage merges into `document` and leaves every other flag as it was.
fn check_merge(what: &str, document: &str, rollout: &FeatureRollout) {
    let flag = &rollout.spec.flag;
    let definition = FlagDefinition {
        key: flag.key.clone(),
        variants: flag.variants.clone().into_iter().collect(),
        baseline: flag.baseline.clone(),
        candidate: flag.candidate.clone(),
    };
    let state = FlagState::Split {
        candidate_weight: 10_000,
        audience: None,
    };
    let merged = merge_flag(Some(document), &flag.key, render_flag(&definition, &state))
        .unwrap_or_else(|e| panic!("{what}: Sluice cannot write its flag into it: {e}"));
    let before: Value = serde_json::from_str(document).unwrap();
    let after: Value = serde_json::from_str(&merged).unwrap();
    for (key, other) in before["flags"].as_object().unwrap() {
        if key != &flag.key {
            assert_eq!(
                &after["flags"][key], other,
                "{what}: flag {key} is untouched"
            );
        }
    }
    check_flagd_document(what, &merged);
}

#[test]
fn every_manifest_parses_as_the_type_it_claims() {
    let docs = manifests();
    let mut checked = BTreeSet::new();
    let mut rollouts = 0;
    for doc in &docs {
        let what = doc.what();
        match (doc.api_version(), doc.kind()) {
            ("sluice.dev/v1alpha1", "FeatureRollout") => {
                let rollout = manifest::check(&doc.value).unwrap_or_else(|problems| {
                    let list: Vec<String> = problems
                        .iter()
                        .map(|p| format!("{}: {}", p.field, p.message))
                        .collect();
                    panic!("{what} is invalid:\n  {}", list.join("\n  "))
                });
                check_target(doc, &rollout, &docs);
                rollouts += 1;
            }
            ("apps/v1", "Deployment") => {
                let deployment: Deployment = typed(doc);
                check_no_sub_path(&what, &deployment);
            }
            ("v1", "ConfigMap") => {
                let config_map: ConfigMap = typed(doc);
                for (key, text) in config_map.data.iter().flatten() {
                    if key.ends_with(".json") {
                        check_flagd_document(&format!("{what} data.{key}"), text);
                    }
                }
            }
            ("v1", "Service") => drop(typed::<Service>(doc)),
            ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(doc)),
            ("v1", "Namespace") => drop(typed::<Namespace>(doc)),
            ("v1", "Secret") => drop(typed::<Secret>(doc)),
            ("core.openfeature.dev/v1beta1", "FeatureFlag") => {
                let spec = doc.value["spec"]["flagSpec"].clone();
                check_flags(&what, &spec["flags"]);
                if let Some(evaluators) = spec.get("$evaluators") {
                    assert!(evaluators.is_object(), "{what}: $evaluators");
                }
            }
            ("core.openfeature.dev/v1beta1", "FeatureFlagSource") => {
                let sources = doc.value["spec"]["sources"]
                    .as_array()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| panic!("{what}: spec.sources is a non-empty list"));
                for source in sources {
                    assert!(source["source"].is_string() && source["provider"].is_string());
                }
            }
            ("monitoring.coreos.com/v1", "PrometheusRule") => {
                for group in doc.value["spec"]["groups"].as_array().unwrap() {
                    for rule in group["rules"].as_array().unwrap() {
                        assert!(
                            rule["alert"].is_string() && rule["expr"].is_string(),
                            "{what}"
                        );
                    }
                }
            }
            (api_version, kind) => panic!("{what}: no check for {api_version} {kind}"),
        }
        checked.insert(doc.kind().to_owned());
    }
    println!(
        "checked {} manifests ({rollouts} FeatureRollouts): {checked:?}",
        docs.len()
    );
    for kind in [
        "FeatureRollout",
        "Deployment",
        "ConfigMap",
        "Service",
        "FeatureFlag",
        "FeatureFlagSource",
        "PrometheusRule",
    ] {
        assert!(checked.contains(kind), "the examples include a {kind}");
    }
    // The existing examples stay valid, and one rollout has both an audience stage and
    // an approval stage.
    let named: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "FeatureRollout")
        .map(|d| d.file.as_str())
        .collect();
    for file in [
        "new-checkout.yaml",
        "local-file.yaml",
        "flagd-sidecar.yaml",
        "openfeature-operator.yaml",
        "approval-and-audience.yaml",
        "python-service.yaml",
    ] {
        assert!(named.contains(file), "{file} holds a FeatureRollout");
    }
    let gated = docs.iter().any(|d| {
        let stages = d.value["spec"]["stages"].as_array();
        stages.is_some_and(|s| s.iter().any(|s| s.get("audience").is_some()))
            && stages.is_some_and(|s| s.iter().any(|s| s["approval"] == "required"))
    });
    assert!(
        gated,
        "a rollout with an audience stage and an approval stage"
    );
}

/// A rollout's target, when it is in the same file, is one Sluice can write to: a
/// ConfigMap with a flagd document under the key, or a FeatureFlag with the same variants.
fn check_target(doc: &Doc, rollout: &FeatureRollout, docs: &[Doc]) {
    let what = doc.what();
    let beside = |kind: &str, name: &str| {
        docs.iter().find(|d| {
            d.file == doc.file
                && d.kind() == kind
                && d.name() == name
                && d.namespace() == doc.namespace()
        })
    };
    let target = &rollout.spec.target;
    if let Some(target) = &target.config_map {
        let Some(config_map) = beside("ConfigMap", &target.name) else {
            // new-checkout.yaml refers to a ConfigMap the service's own manifests hold.
            assert_eq!(
                doc.file, "new-checkout.yaml",
                "{what}: its ConfigMap is in the file"
            );
            return;
        };
        let text = config_map.value["data"][&target.key]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: ConfigMap {} has key {}", target.name, target.key));
        check_merge(
            &format!("{what} → ConfigMap {}", target.name),
            text,
            rollout,
        );
        // The flag document reaches a workload in the file as a mounted directory.
        let mounted = docs.iter().any(|d| {
            d.file == doc.file
                && d.kind() == "Deployment"
                && d.value["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .is_some_and(|v| {
                        v.iter()
                            .any(|v| v["configMap"]["name"] == target.name.as_str())
                    })
        });
        let workloads = docs
            .iter()
            .any(|d| d.file == doc.file && d.kind() == "Deployment");
        assert!(
            mounted || !workloads,
            "{what}: a Deployment in the file mounts ConfigMap {}",
            target.name
        );
    }
    if let Some(target) = &target.feature_flag {
        let feature_flag = beside("FeatureFlag", &target.name)
            .unwrap_or_else(|| panic!("{what}: FeatureFlag {} is in the file", target.name));
        let flags = &feature_flag.value["spec"]["flagSpec"]["flags"];
        let existing = &flags[&rollout.spec.flag.key];
        if !existing.is_null() {
            assert_eq!(
                existing["variants"],
                serde_json::to_value(&rollout.spec.flag.variants).unwrap(),
                "{what}: the FeatureFlag's variants are the rollout's"
            );
        }
        let document = json!({ "flags": flags }).to_string();
        check_merge(
            &format!("{what} → FeatureFlag {}", target.name),
            &document,
            rollout,
        );
    }
    if let Some(file) = &target.file {
        // Standalone mode's rollouts: the local-file example and the demo's (`make demo`);
        // and BENCHMARK.md's plan, the spec `sluice simulate` runs, for `sluice plan`.
        assert!(
            doc.file == "local-file.yaml"
                || doc.file == "benchmark-plan.yaml"
                || doc.file.starts_with("demo/"),
            "{what}: file targets are for standalone mode"
        );
        assert!(!file.path.is_empty());
    }
}

/// ConfigMaps and Secrets mounted with subPath never update: flag documents must be
/// mounted as directories.
fn check_no_sub_path(what: &str, deployment: &Deployment) {
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let projected: BTreeSet<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.config_map.is_some() || v.secret.is_some() || v.projected.is_some())
        .map(|v| v.name.as_str())
        .collect();
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for mount in container.volume_mounts.iter().flatten() {
            assert!(
                !(projected.contains(mount.name.as_str()) && mount.sub_path.is_some()),
                "{what}: container {} mounts {} with subPath, which never updates",
                container.name,
                mount.name
            );
        }
    }
}

#[test]
fn argocd_cm_carries_the_health_check_script() {
    let script =
        std::fs::read_to_string(examples_dir().join("argocd/featurerollout-health.lua")).unwrap();
    let text = std::fs::read_to_string(examples_dir().join("argocd/argocd-cm.yaml")).unwrap();
    let doc = manifest::documents(&text).unwrap().remove(0);
    let embedded = doc["data"]["resource.customizations.health.sluice.dev_FeatureRollout"]
        .as_str()
        .expect("the health check key (group_kind)");
    assert_eq!(
        embedded, script,
        "argocd-cm.yaml embeds featurerollout-health.lua as it is"
    );
}

/// Converts JSON to a Lua value as Argo CD hands `obj` to the script.
fn to_lua(lua: &mlua::Lua, value: &Value) -> mlua::Result<mlua::Value> {
    Ok(match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => mlua::Value::Integer(i),
            None => mlua::Value::Number(n.as_f64().unwrap()),
        },
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                table.set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table()?;
            for (k, v) in map {
                table.set(k.as_str(), to_lua(lua, v)?)?;
            }
            mlua::Value::Table(table)
        }
    })
}

/// Runs the health check on one object: (status, message).
fn health(object: &Value) -> (String, String) {
    let script =
        std::fs::read_to_string(examples_dir().join("argocd/featurerollout-health.lua")).unwrap();
    let lua = mlua::Lua::new();
    lua.globals()
        .set("obj", to_lua(&lua, object).unwrap())
        .unwrap();
    let hs: mlua::Table = lua
        .load(&script)
        .set_name("featurerollout-health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("the health check fails on {object}: {e}"));
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

fn rollout(status: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FeatureRollout",
        "metadata": { "name": "new-checkout", "namespace": "shop", "generation": 3 },
        "spec": {},
        "status": status,
    })
}

#[test]
fn argocd_health_check_maps_every_phase() {
    let expected = |phase: Phase| match phase {
        Phase::Promoted => "Healthy",
        Phase::Pending | Phase::Progressing | Phase::Paused | Phase::WaitingForApproval => {
            "Progressing"
        }
        Phase::RolledBack | Phase::Failed => "Degraded",
    };
    for phase in [
        Phase::Pending,
        Phase::Progressing,
        Phase::WaitingForApproval,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Failed,
    ] {
        let name = serde_json::to_value(phase).unwrap();
        let message = format!("message for {name}");
        let (status, text) = health(&rollout(json!({
            "phase": name,
            "stage": 2,
            "stageName": "five-percent",
            "weight": "5%",
            "observedGeneration": 3,
            "message": message,
            "conditions": [],
            "history": [],
        })));
        assert_eq!(status, expected(phase), "{name}");
        assert!(
            text.contains(&message) && text.contains("five-percent") && text.contains("5%"),
            "{name}: the message carries the status message, stage and weight: {text}"
        );
        assert!(text.starts_with(name.as_str().unwrap()), "{text}");
    }

    let (status, text) = health(&rollout(json!({
        "phase": "RolledBack",
        "weight": "0%",
        "observedGeneration": 3,
        "message": "error-rate failed: 4.1% against 1.0% (bound 0.6 points)",
    })));
    assert_eq!(status, "Degraded");
    assert_eq!(
        text,
        "RolledBack, weight 0%: error-rate failed: 4.1% against 1.0% (bound 0.6 points)"
    );

    // An audience stage: the exposure says whose share the weight is.
    let (_, text) = health(&rollout(json!({
        "phase": "Progressing",
        "stageName": "staff",
        "weight": "50%",
        "audience": true,
        "exposure": "50% of audience",
        "observedGeneration": 3,
    })));
    assert_eq!(text, "Progressing, stage staff, exposure 50% of audience");

    // Not reconciled yet, or not since the last edit.
    let mut fresh = rollout(Value::Null);
    fresh.as_object_mut().unwrap().remove("status");
    assert_eq!(health(&fresh).0, "Progressing");
    let (status, text) = health(&rollout(
        json!({ "phase": "Promoted", "observedGeneration": 2 }),
    ));
    assert_eq!(
        status, "Progressing",
        "a spec the controller has not seen yet"
    );
    assert!(text.contains("generation 3"), "{text}");
    // A phase from a newer Sluice.
    assert_eq!(
        health(&rollout(
            json!({ "phase": "Exploding", "observedGeneration": 3 })
        ))
        .0,
        "Unknown"
    );
}

/// Sluice's own metrics (docs/contracts) and the cohort metrics the dashboard reads.
const SLUICE_METRICS: [&str; 10] = [
    "sluice_reconciles_total",
    "sluice_reconcile_errors_total",
    "sluice_decisions_total",
    "sluice_rollouts",
    "sluice_rollout_weight",
    "sluice_analysis_duration_seconds",
    "sluice_prometheus_query_duration_seconds",
    "sluice_flag_writes_total",
    "sluice_leader",
    "sluice_notifications_total",
];
const COHORT_METRICS: [&str; 2] = ["http_requests_total", "http_request_duration_seconds"];

/// The metric names in a PromQL expression (identifiers starting with a known prefix).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            current.push(c);
        } else {
            if current.starts_with("sluice_") || current.starts_with("http_") {
                names.insert(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    names
}

/// Strips a histogram's series suffix.
fn family(name: &str) -> &str {
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|base| base.ends_with("_seconds"))
        .unwrap_or(name)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(examples_dir().join("grafana-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("grafana-dashboard.json is JSON")
}

/// Every query of the dashboard, with its panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
        }
    }
    queries
}

#[test]
fn dashboard_reads_only_known_metrics_and_covers_sluices_own() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "sluice-rollouts");
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut used = BTreeSet::new();
    for (title, expr) in dashboard_queries(&dashboard) {
        for name in metric_names(&expr) {
            let family = family(&name).to_owned();
            assert!(
                SLUICE_METRICS.contains(&family.as_str())
                    || COHORT_METRICS.contains(&family.as_str()),
                "panel {title:?} reads {name}, which is not one of the contract's metrics"
            );
            used.insert(family);
        }
        for word in expr.split('$').skip(1) {
            let name: String = word
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || variables.contains(name.as_str()),
                "panel {title:?} uses ${name}, which the dashboard does not define"
            );
        }
    }
    for metric in SLUICE_METRICS.iter().chain(&COHORT_METRICS) {
        assert!(used.contains(*metric), "the dashboard shows {metric}");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}

const START: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const STEP: i64 = 15;
const POINTS: usize = 241; // one hour
const END: i64 = START + STEP * (POINTS as i64 - 1);

/// An hour of Sluice's metrics and a flag's cohort metrics, as the controller and a
/// service would export them.
fn metrics_data() -> OpenMetrics {
    let mut data = OpenMetrics::default();
    let controller = [("namespace", "sluice-system"), ("pod", "sluice-0")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = controller.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    data.counter(
        "sluice_reconciles",
        &with(&[("result", "ok")]),
        START,
        STEP,
        POINTS,
        2.0,
    );
    data.counter(
        "sluice_reconciles",
        &with(&[("result", "error")]),
        START,
        STEP,
        POINTS,
        0.1,
    );
    data.counter(
        "sluice_reconcile_errors",
        &with(&[("category", "unreachable")]),
        START,
        STEP,
        POINTS,
        0.1,
    );
    for kind in ["hold", "advance", "rollback", "promote"] {
        data.counter(
            "sluice_decisions",
            &with(&[("kind", kind)]),
            START,
            STEP,
            POINTS,
            0.5,
        );
    }
    data.counter(
        "sluice_flag_writes",
        &with(&[("target", "configMap")]),
        START,
        STEP,
        POINTS,
        0.2,
    );
    data.counter(
        "sluice_notifications",
        &with(&[("result", "sent")]),
        START,
        STEP,
        POINTS,
        0.2,
    );
    for family in [
        "sluice_analysis_duration_seconds",
        "sluice_prometheus_query_duration_seconds",
    ] {
        data.histogram(
            family,
            &controller,
            &[("0.05", 3.0), ("0.25", 8.0), ("1", 9.0), ("+Inf", 10.0)],
            START,
            STEP,
            POINTS,
        );
    }
    for i in 0..POINTS {
        let at = START + STEP * i as i64;
        data.gauge("sluice_leader", &controller, 1.0, at);
        for phase in ["Progressing", "RolledBack"] {
            data.gauge("sluice_rollouts", &with(&[("phase", phase)]), 1.0, at);
        }
        data.gauge(
            "sluice_rollout_weight",
            &[
                ("namespace", "shop"),
                ("name", "new-checkout"),
                ("flag", "new-checkout"),
                ("pod", "sluice-0"),
            ],
            0.05,
            at,
        );
    }
    for (variant, code, increment) in [
        ("off", "200", 95.0),
        ("off", "500", 1.0),
        ("on", "200", 4.0),
        ("on", "500", 0.5),
    ] {
        data.counter(
            "http_requests",
            &[
                ("namespace", "shop"),
                ("feature_flag_key", "new-checkout"),
                ("feature_flag_result_variant", variant),
                ("code", code),
            ],
            START,
            STEP,
            POINTS,
            increment,
        );
    }
    for (variant, buckets) in [
        (
            "off",
            [("0.1", 50.0), ("0.5", 90.0), ("1.0", 95.0), ("+Inf", 96.0)],
        ),
        (
            "on",
            [("0.1", 2.0), ("0.5", 4.0), ("1.0", 4.4), ("+Inf", 4.5)],
        ),
    ] {
        data.histogram(
            "http_request_duration_seconds",
            &[
                ("namespace", "shop"),
                ("feature_flag_key", "new-checkout"),
                ("feature_flag_result_variant", variant),
            ],
            &buckets,
            START,
            STEP,
            POINTS,
        );
    }
    data
}

/// The dashboard's variables as Grafana would substitute them.
fn substitute(expr: &str, threshold: &str) -> String {
    expr.replace("$__rate_interval", "2m")
        .replace("$__range", "1h")
        .replace("${datasource}", "prometheus")
        .replace("${threshold}", threshold)
        .replace("$threshold", threshold)
        .replace("$namespace", "shop|other")
        .replace("$flag", "new-checkout")
}

#[tokio::test]
async fn dashboard_queries_run_on_a_real_prometheus() {
    let server = PrometheusServer::start(&metrics_data()).await;
    let mut config = ClientConfig::new(server.base_url());
    config.timeout = Duration::from_secs(10);
    let client = PrometheusClient::new(config).unwrap();
    let at = jiff::Timestamp::new(END, 0).ok();
    // 0.5 is written "0.5" by every client; 1 is "1.0" by Python's and "1" by Go's.
    for threshold in ["0.5", "1"] {
        for (title, expr) in dashboard_queries(&dashboard()) {
            let promql = substitute(&expr, threshold);
            let result = client
                .query(&promql, at)
                .await
                .unwrap_or_else(|e| panic!("panel {title:?}: {promql}: {e}"));
            match result.result {
                QueryResult::Vector(samples) => assert!(
                    !samples.is_empty(),
                    "panel {title:?} shows nothing for data that is there: {promql}"
                ),
                other => panic!("panel {title:?}: a {} result: {promql}", other.kind()),
            }
        }
    }
}

#[test]
fn alerts_pass_promtool_rule_tests() {
    let promtool = support::server::binary("promtool");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root.join("charts/sluice/files/alerts.yaml"))
        .output()
        .expect("promtool runs");
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = std::process::Command::new(&promtool)
        .args(["test", "rules"])
        .arg(root.join("tests/alerts/sluice-alerts.test.yaml"))
        .output()
        .expect("promtool runs");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    println!("{out}");
    assert!(test.status.success(), "promtool test rules:\n{out}");
}

/// `sluice validate` on a file that mixes kinds, as GitOps repositories do: the rollout is
/// checked, the other documents are skipped, and a broken rollout among them still fails.
#[test]
fn sluice_validate_checks_rollouts_and_skips_other_kinds() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flagd-sidecar.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("sluice validate runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(": valid"), "{stdout}");
    assert!(
        stdout.contains("skipped (Deployment is not a FeatureRollout)"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&file).unwrap();
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), format!("{text}\n---\napiVersion: sluice.dev/v1alpha1\nkind: FeatureRollout\nmetadata: {{ name: broken }}\nspec: {{}}\n")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(broken.path())
        .output()
        .expect("sluice validate runs");
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
