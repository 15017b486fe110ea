//! The Helm chart (`charts/sluice`): its CRD is the generated one, its RBAC grants exactly
//! the verbs the code uses (`sluice::rbac::PERMISSIONS`) in both the cluster-wide and the
//! namespaced mode, its Deployment is hardened and passes the controller the arguments of
//! the contract, and every manifest it renders parses as its Kubernetes type.
//!
//! The chart is rendered by Helm's own library (`scripts/helm.py render`, the PyPI package
//! `helm-python-sdk` in `.venv`; `make test` installs it). The interpreter is
//! `$SLUICE_PYTHON` or `<repo>/.venv/bin/python`. `helm lint` runs in `make test`.
//!
//! `templates/_rbac-rules.tpl` is generated from `PERMISSIONS`; after changing the table,
//! regenerate it with `SLUICE_BLESS=1 cargo test --test chart`.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sluice::crd::crd_yaml;
use sluice::manifest;
use sluice::rbac::{PERMISSIONS, Permission, SYNC_PERMISSIONS};

mod support;

use support::helm::{self, repo};

const RELEASE_NAMESPACE: &str = "sluice-system";

/// `helm template` with these values: every rendered document, as JSON.
fn render(values: Value) -> Vec<Value> {
    helm::render(&values, RELEASE_NAMESPACE)
}

/// The rendered YAML stream, or Helm's error.
fn try_render(values: Value) -> Result<String, String> {
    helm::try_render(&values, RELEASE_NAMESPACE)
}

fn render_text(values: Value) -> String {
    try_render(values).unwrap_or_else(|e| panic!("{e}"))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Parses a document as its Kubernetes type and checks nothing was dropped on the way:
/// serialising the typed object gives back the document (a misspelt field would vanish).
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {} does not parse: {e}",
            doc["kind"], doc["metadata"]["name"]
        )
    });
    let back = serde_json::to_value(&object).unwrap();
    pretty_assertions::assert_eq!(
        &back,
        doc,
        "{} {} has fields its type does not know",
        doc["kind"],
        doc["metadata"]["name"]
    );
    object
}

/// One granted (group, resource, verb).
type Grant = (String, String, String);

fn grants_of(permissions: impl IntoIterator<Item = &'static Permission>) -> BTreeSet<Grant> {
    permissions
        .into_iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(|v| (p.group.to_owned(), p.resource.to_owned(), (*v).to_owned()))
        })
        .collect()
}

fn grants_of_rules(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "rules name resources, not objects or URLs: {rule:?}"
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards: {rule:?}"
                    );
                    let fresh = grants.insert((group.clone(), resource.clone(), verb.clone()));
                    assert!(fresh, "{group}/{resource} {verb} is granted twice");
                }
            }
        }
    }
    grants
}

/// The rules template generated from `PERMISSIONS`: one rule per entry, each after a
/// comment saying why; the Lease rules apart.
fn rules_template() -> String {
    fn rules(out: &mut String, permissions: impl Iterator<Item = &'static Permission>) {
        for p in permissions {
            let verbs: Vec<String> = p.verbs.iter().map(|v| format!("{v:?}")).collect();
            out.push_str(&format!(
                "# {}\n- apiGroups: [{:?}]\n  resources: [{:?}]\n  verbs: [{}]\n",
                p.why,
                p.group,
                p.resource,
                verbs.join(", ")
            ));
        }
    }
    let mut out = String::from(
        "{{- /*\nGenerated from src/rbac.rs PERMISSIONS by tests/chart.rs. Do not edit: after a change\n\
         to the table run `SLUICE_BLESS=1 cargo test --test chart`.\n*/ -}}\n\n\
         {{- /* The rules the controller needs where it watches rollouts. */ -}}\n\
         {{- define \"sluice.rules.watched\" -}}\n",
    );
    rules(
        &mut out,
        PERMISSIONS.iter().filter(|p| !p.own_namespace_only),
    );
    out.push_str(
        "{{- end }}\n\n\
         {{- /* The rules the controller needs in its own namespace (leader election). */ -}}\n\
         {{- define \"sluice.rules.leaderElection\" -}}\n",
    );
    rules(
        &mut out,
        PERMISSIONS.iter().filter(|p| p.own_namespace_only),
    );
    out.push_str(
        "{{- end }}\n\n\
         {{- /* The rules the sync server adds where rollouts are watched (sync.enabled). */ -}}\n\
         {{- define \"sluice.rules.sync\" -}}\n",
    );
    rules(&mut out, SYNC_PERMISSIONS.iter());
    out.push_str("{{- end }}\n");
    out
}

#[test]
fn rbac_rules_template_is_generated_from_permissions() {
    let path = repo().join("charts/sluice/templates/_rbac-rules.tpl");
    let expected = rules_template();
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("write the rules template");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "{} is out of date with src/rbac.rs PERMISSIONS: run `SLUICE_BLESS=1 cargo test --test chart`",
        path.display()
    );
}

#[test]
fn chart_crd_equals_the_generated_one() {
    let chart_crd = std::fs::read_to_string(repo().join("charts/sluice/crds/featurerollout.yaml"))
        .expect("charts/sluice/crds/featurerollout.yaml exists");
    assert!(
        chart_crd == crd_yaml(),
        "charts/sluice/crds/featurerollout.yaml differs from the generated CRD: run `make crd`"
    );
}

/// Every Role and ClusterRole is bound to the controller's ServiceAccount, and only to it.
fn check_bindings(docs: &[Value]) {
    for binding in of_kind(docs, "RoleBinding")
        .into_iter()
        .chain(of_kind(docs, "ClusterRoleBinding"))
    {
        let subjects = binding["subjects"].as_array().expect("subjects");
        assert_eq!(
            subjects,
            &vec![
                json!({"kind": "ServiceAccount", "name": "sluice", "namespace": RELEASE_NAMESPACE})
            ],
            "{} binds the controller's ServiceAccount only",
            binding["metadata"]["name"]
        );
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
        let role_name = &binding["roleRef"]["name"];
        let bound = docs.iter().any(|d| {
            d["kind"] == role_kind
                && &d["metadata"]["name"] == role_name
                && d["metadata"]["namespace"] == binding["metadata"]["namespace"]
        });
        assert!(bound, "{binding} refers to a role the chart renders");
    }
}

/// Each rule in the rendered text follows a comment that says why, word for word.
fn check_comments(text: &str) {
    for p in PERMISSIONS {
        assert!(
            text.contains(&format!("# {}\n", p.why)),
            "the rule for {} carries its comment",
            p.resource
        );
    }
}

#[test]
fn cluster_mode_grants_exactly_the_permissions_the_code_uses() {
    let text = render_text(json!({}));
    let docs = manifest::documents(&text).unwrap();
    check_comments(&text);
    check_bindings(&docs);

    let cluster_roles = of_kind(&docs, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole");
    let cluster_role: ClusterRole = typed(cluster_roles[0]);
    let cluster_grants = grants_of_rules(cluster_role.rules.as_deref().unwrap());
    assert_eq!(
        cluster_grants,
        grants_of(PERMISSIONS.iter().filter(|p| !p.own_namespace_only)),
        "the ClusterRole grants the watched-namespace permissions, nothing more"
    );

    let roles = of_kind(&docs, "Role");
    assert_eq!(roles.len(), 1, "one Role: the Lease's");
    let lease_role: Role = typed(roles[0]);
    assert_eq!(
        lease_role.metadata.namespace.as_deref(),
        Some(RELEASE_NAMESPACE)
    );
    let lease_grants = grants_of_rules(lease_role.rules.as_deref().unwrap());
    assert_eq!(
        lease_grants,
        grants_of(PERMISSIONS.iter().filter(|p| p.own_namespace_only))
    );

    let all: BTreeSet<Grant> = cluster_grants.union(&lease_grants).cloned().collect();
    assert_eq!(
        all,
        grants_of(PERMISSIONS),
        "every verb granted is used by the code, and every verb the code uses is granted"
    );
    for doc in of_kind(&docs, "ClusterRoleBinding") {
        let _: ClusterRoleBinding = typed(doc);
    }
    for doc in of_kind(&docs, "RoleBinding") {
        let _: RoleBinding = typed(doc);
    }
}

#[test]
fn namespaced_mode_needs_no_cluster_wide_rights() {
    let text = render_text(json!({"watchNamespaces": ["shop", "search", "shop"]}));
    let docs = manifest::documents(&text).unwrap();
    check_comments(&text);
    check_bindings(&docs);
    assert!(
        of_kind(&docs, "ClusterRole").is_empty() && of_kind(&docs, "ClusterRoleBinding").is_empty(),
        "no cluster-wide rights in namespaced mode"
    );

    let watched = grants_of(PERMISSIONS.iter().filter(|p| !p.own_namespace_only));
    let lease = grants_of(PERMISSIONS.iter().filter(|p| p.own_namespace_only));
    let mut namespaces = Vec::new();
    let mut all = BTreeSet::new();
    for doc in of_kind(&docs, "Role") {
        let role: Role = typed(doc);
        let namespace = role.metadata.namespace.clone().unwrap();
        let grants = grants_of_rules(role.rules.as_deref().unwrap());
        if role.metadata.name.as_deref() == Some("sluice-leader-election") {
            assert_eq!(
                namespace, RELEASE_NAMESPACE,
                "the Lease is in the release namespace"
            );
            assert_eq!(grants, lease);
        } else {
            assert_eq!(grants, watched, "the Role in {namespace}");
            namespaces.push(namespace);
        }
        all.extend(grants);
    }
    namespaces.sort();
    assert_eq!(
        namespaces,
        ["search", "shop"],
        "one Role per watched namespace"
    );
    assert_eq!(all, grants_of(PERMISSIONS));

    let deployment: Deployment = typed(of_kind(&docs, "Deployment")[0]);
    let args = deployment.spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--namespace=shop".to_owned())
            && args.contains(&"--namespace=search".to_owned())
    );
}

#[test]
fn without_leader_election_there_is_no_lease_role_and_one_replica() {
    let docs = render(json!({"leaderElection": {"enabled": false}, "replicas": 1}));
    assert!(
        of_kind(&docs, "Role").is_empty(),
        "no Lease Role without leader election"
    );
    let error = try_render(json!({"leaderElection": {"enabled": false}})).unwrap_err();
    assert!(
        error.contains("replicas > 1 needs leaderElection.enabled"),
        "two replicas without leader election are refused: {error}"
    );
}

fn controller(docs: &[Value]) -> k8s_openapi::api::core::v1::Container {
    let deployments = of_kind(docs, "Deployment");
    assert_eq!(deployments.len(), 1);
    let deployment: Deployment = typed(deployments[0]);
    let spec = deployment.spec.template.spec.unwrap();
    assert_eq!(spec.containers.len(), 1);
    spec.containers[0].clone()
}

#[test]
fn deployment_is_hardened_with_probes_resources_and_the_downward_api() {
    let docs = render(json!({}));
    let deployment: Deployment = typed(of_kind(&docs, "Deployment")[0]);
    let spec = deployment.spec.clone();
    assert_eq!(spec.replicas, Some(2), "two replicas by default");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("sluice"));

    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );

    let container = controller(&docs);
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.run_as_non_root, Some(true), "non-root");
    assert_eq!(
        security.read_only_root_filesystem,
        Some(true),
        "read-only root"
    );
    assert_eq!(
        security.allow_privilege_escalation,
        Some(false),
        "no escalation"
    );
    assert_eq!(security.privileged, Some(false));
    let capabilities = security.capabilities.unwrap();
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]), "drop ALL");
    assert_eq!(capabilities.add, None, "add none");
    assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");

    let port = container.ports.as_ref().unwrap();
    assert_eq!(
        (port[0].name.as_deref(), port[0].container_port),
        (Some("admin"), 8080)
    );
    for (probe, path) in [
        (container.liveness_probe.as_ref(), "/livez"),
        (container.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe.unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("admin".into())
        );
    }

    let requests = container
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    let env = container.env.as_ref().unwrap();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        let from = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        assert_eq!(
            from.map(|f| f.field_path.as_str()),
            Some(field),
            "{name} from the downward API"
        );
    }

    // The writable directories are emptyDirs; nothing else is mounted by default.
    let mounts = container.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_path, "/tmp");
}

/// The chart installs this version's image by default: `appVersion` is the crate's
/// version and the default image is the name `make image` gives its archive
/// (`sluice:<version>`; `tests/cluster_image.rs` checks the archive's side).
#[test]
fn the_default_image_is_the_one_make_image_builds() {
    let text = std::fs::read_to_string(repo().join("charts/sluice/Chart.yaml")).unwrap();
    let chart: Value = serde_yaml_ng::from_str(&text).expect("Chart.yaml parses");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml's appVersion is Cargo.toml's version"
    );
    let container = controller(&render(json!({})));
    assert_eq!(
        container.image.as_deref(),
        Some(format!("sluice:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
}

#[test]
fn arguments_follow_the_contract() {
    let default = controller(&render(json!({})));
    assert_eq!(
        default.args.unwrap(),
        [
            "controller",
            "--admin-address=0.0.0.0:8080",
            "--log-format=json",
            "--leader-election=true",
            "--lease-name=sluice",
            "--lease-namespace=sluice-system",
        ]
    );

    let docs = render(json!({
        "watchNamespaces": ["shop"],
        "selector": "sluice.dev/controller=blue",
        "prometheus": {
            "address": "http://prometheus-operated.monitoring:9090",
            "auth": {"existingSecret": "prometheus-auth", "keys": ["token"]},
        },
        "logFormat": "plain",
        "logLevel": "info,sluice=debug",
        "adminPort": 9000,
        "leaderElection": {"leaseName": "sluice-blue"},
        "notifications": {"webhooks": ["https://hooks.example.com/a"]},
    }));
    let container = controller(&docs);
    assert_eq!(
        container.args.clone().unwrap(),
        [
            "controller",
            "--admin-address=0.0.0.0:9000",
            "--log-format=plain",
            "--leader-election=true",
            "--lease-name=sluice-blue",
            "--lease-namespace=sluice-system",
            "--namespace=shop",
            "--selector=sluice.dev/controller=blue",
            "--default-prometheus=http://prometheus-operated.monitoring:9090",
            "--notify-webhook=https://hooks.example.com/a",
        ]
    );
    let env = container.env.unwrap();
    let rust_log = env.iter().find(|e| e.name == "RUST_LOG").unwrap();
    assert_eq!(rust_log.value.as_deref(), Some("info,sluice=debug"));

    // The auth Secret is mounted read-only where rollouts' bearerTokenFile can name it.
    let mount = container
        .volume_mounts
        .unwrap()
        .into_iter()
        .find(|m| m.name == "prometheus-auth")
        .expect("the auth Secret is mounted");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/sluice/prometheus", Some(true))
    );
    let deployment: Deployment = typed(of_kind(&docs, "Deployment")[0]);
    let volumes = deployment.spec.template.spec.unwrap().volumes.unwrap();
    let secret = volumes
        .iter()
        .find(|v| v.name == "prometheus-auth")
        .and_then(|v| v.secret.as_ref())
        .unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("prometheus-auth"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "token");
}

#[test]
fn every_rendered_manifest_parses_as_its_kind() {
    let docs = render(json!({
        "serviceMonitor": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": true},
        "networkPolicy": {
            "enabled": true,
            "egressTo": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"port": 9090, "protocol": "TCP"}],
            }],
        },
    }));
    let mut kinds = BTreeSet::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().expect("every document has a kind");
        kinds.insert(kind.to_owned());
        match kind {
            "Deployment" => drop(typed::<Deployment>(doc)),
            "Service" => {
                let service: Service = typed(doc);
                let port = &service.spec.unwrap().ports.unwrap()[0];
                assert_eq!(port.name.as_deref(), Some("metrics"));
            }
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            "Role" => drop(typed::<Role>(doc)),
            "RoleBinding" => drop(typed::<RoleBinding>(doc)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(doc)),
            "NetworkPolicy" => {
                let policy: NetworkPolicy = typed(doc);
                let egress = policy.spec.unwrap().egress.unwrap();
                assert_eq!(egress.len(), 3, "DNS, the API server and Prometheus");
            }
            "ServiceMonitor" => {
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                let endpoint = &doc["spec"]["endpoints"][0];
                assert_eq!(endpoint["port"], "metrics");
                assert_eq!(endpoint["path"], "/metrics");
                assert_eq!(
                    doc["metadata"]["labels"]["release"],
                    "kube-prometheus-stack"
                );
            }
            "PrometheusRule" => {
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                let example = std::fs::read_to_string(repo().join("examples/prometheusrule.yaml"))
                    .expect("examples/prometheusrule.yaml");
                let example = manifest::documents(&example).unwrap().remove(0);
                assert_eq!(
                    doc["spec"], example["spec"],
                    "the chart's alerts are those of examples/prometheusrule.yaml"
                );
            }
            other => panic!("the chart renders an unexpected {other}"),
        }
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/instance"], "sluice",
            "{kind} carries the chart's labels"
        );
    }
    let expected: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds, expected);

    // The optional parts are off by default.
    let default_kinds: BTreeSet<String> = render(json!({}))
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for optional in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy"] {
        assert!(
            !default_kinds.contains(optional),
            "{optional} is off by default"
        );
    }
}

#[test]
fn operating_guide_lists_every_permission() {
    let guide =
        std::fs::read_to_string(repo().join("docs/operating.md")).expect("docs/operating.md");
    let section = guide
        .split("## The RBAC the chart grants")
        .nth(1)
        .and_then(|s| s.split("Where they are granted").next())
        .expect("the guide has an RBAC section with a table");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(
        rows.len(),
        PERMISSIONS.len(),
        "one row per permission: {rows:#?}"
    );
    for p in PERMISSIONS {
        let group = if p.group.is_empty() {
            "`\"\"` (core)".to_owned()
        } else {
            format!("`{}`", p.group)
        };
        let row = format!(
            "| {group} | `{}` | {} | {} |",
            p.resource,
            p.verbs.join(", "),
            p.why
        );
        assert!(
            rows.contains(&row.as_str()),
            "docs/operating.md's RBAC table has the row\n{row}"
        );
    }
}

#[test]
fn values_schema_refuses_misspelt_and_invalid_values() {
    for (values, expected) in [
        (
            json!({"watchNamespace": ["shop"]}),
            "additional properties 'watchNamespace' not allowed",
        ),
        (json!({"logFormat": "xml"}), "/logFormat"),
        (
            json!({"watchNamespaces": ["Shop_Team"]}),
            "/watchNamespaces/0",
        ),
        (
            json!({"prometheus": {"address": "prometheus:9090"}}),
            "/prometheus/address",
        ),
        (
            json!({"leaderElection": {"enable": false}}),
            "'enable' not allowed",
        ),
    ] {
        let error = try_render(values.clone()).expect_err(&format!("{values} is refused"));
        assert!(error.contains(expected), "{values}: {error}");
    }
}

#[test]
fn sync_adds_its_port_service_network_policy_rule_and_watch_rights_only_when_enabled() {
    let plain = render(json!({ "networkPolicy": { "enabled": true } }));
    let args = controller(&plain).args.unwrap_or_default();
    assert!(
        !args.iter().any(|a| a.starts_with("--sync")),
        "off by default"
    );
    assert_eq!(
        of_kind(&plain, "Service").len(),
        1,
        "only the metrics Service"
    );

    let docs = render(json!({
        "sync": { "enabled": true, "tlsSecret": "sync-tls", "from": [{ "podSelector": {} }] },
        "networkPolicy": { "enabled": true },
    }));
    let container = controller(&docs);
    let args = container.args.unwrap_or_default();
    for arg in [
        "--sync-address=0.0.0.0:8015",
        "--sync-tls-cert=/etc/sluice/sync-tls/tls.crt",
        "--sync-tls-key=/etc/sluice/sync-tls/tls.key",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} in {args:?}");
    }
    let ports = container.ports.unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("sync") && p.container_port == 8015),
        "{ports:?}"
    );
    let services: Vec<Service> = of_kind(&docs, "Service").into_iter().map(typed).collect();
    let sync = services
        .iter()
        .find(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-sync"))
        })
        .expect("a sync Service");
    let port = &sync.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 8015);
    let policies = of_kind(&docs, "NetworkPolicy");
    let rules = policies[0]["spec"]["ingress"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["ports"][0]["port"] == "sync" && r["from"].is_array()),
        "{rules:?}"
    );
    let cluster_role: ClusterRole = typed(of_kind(&docs, "ClusterRole")[0]);
    let granted = grants_of_rules(cluster_role.rules.as_deref().unwrap());
    let mut wanted = grants_of(PERMISSIONS.iter().filter(|p| !p.own_namespace_only));
    wanted.extend(grants_of(SYNC_PERMISSIONS));
    assert_eq!(
        granted, wanted,
        "the sync server's watch rights, nothing more"
    );
}
