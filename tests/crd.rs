//! The resource's schema and its validation: the committed CRD matches the Rust types,
//! every field is documented, and invalid specs are refused, by the Rust checks with a
//! message naming the field and by the CRD's CEL rules as the API server would.

use kube::CustomResourceExt;
use serde_json::{Value, json};
use sluice::crd::{FeatureRollout, crd_yaml};
use sluice::manifest;

const EXAMPLE: &str = include_str!("../examples/new-checkout.yaml");

fn example() -> Value {
    manifest::documents(EXAMPLE)
        .expect("the example parses")
        .remove(0)
}

/// The example with the value at `pointer` replaced (or removed, for `None`).
fn edited(edits: &[(&str, Option<Value>)]) -> Value {
    let mut doc = example();
    for (pointer, value) in edits {
        let (parent, last) = pointer.rsplit_once('/').expect("a pointer with a parent");
        let parent = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{parent} exists"));
        match (parent, value) {
            (Value::Object(map), Some(v)) => {
                map.insert(last.to_owned(), v.clone());
            }
            (Value::Object(map), None) => {
                map.remove(last);
            }
            (Value::Array(items), Some(v)) => items[last.parse::<usize>().unwrap()] = v.clone(),
            (Value::Array(items), None) => {
                items.remove(last.parse::<usize>().unwrap());
            }
            _ => panic!("{pointer} is not in an object or array"),
        }
    }
    doc
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/featurerollout.yaml"
    ))
    .expect("crds/featurerollout.yaml exists");
    assert!(
        committed == crd_yaml(),
        "crds/featurerollout.yaml is out of date: run `cargo run -- crd > crds/featurerollout.yaml`"
    );
}

#[test]
fn every_schema_field_is_documented() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let crd = serde_json::to_value(FeatureRollout::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    walk("", &schema["properties"]["spec"], &mut missing);
    walk("", &schema["properties"]["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain text): {missing:?}"
    );
}

#[test]
fn crd_has_status_subresource_short_name_and_printer_columns() {
    let crd = FeatureRollout::crd();
    assert_eq!(crd.spec.group, "sluice.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["fr".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for wanted in ["Phase", "Stage", "Weight", "Age"] {
        assert!(
            columns.contains(&wanted),
            "missing printer column {wanted}: {columns:?}"
        );
    }
}

#[test]
fn examples_are_valid_for_rust_and_cel() {
    for file in ["new-checkout.yaml", "local-file.yaml"] {
        let text =
            std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        for doc in manifest::documents(&text).unwrap() {
            if let Err(problems) = manifest::check(&doc) {
                panic!("{file}: {problems:?}");
            }
            assert_eq!(manifest::cel_problems(&doc, None), vec![], "{file}");
        }
    }
}

/// How the API server refuses a case: by a CEL rule (checked here with the CRD's own
/// rules), or by the OpenAPI schema's types and bounds (not evaluated offline).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Server {
    Cel,
    Schema,
    /// Not refused by the API server; the controller reports an invalid spec instead.
    RustOnly,
}

#[test]
fn invalid_specs_are_refused_with_the_field_named() {
    let stage = |v: Value| Some(v);
    let cases: Vec<(&str, Value, &str, Server)> = vec![
        (
            "no stages",
            edited(&[("/spec/stages", Some(json!([])))]),
            "spec.stages",
            Server::Schema,
        ),
        (
            "decreasing weights",
            edited(&[("/spec/stages/2/weight", Some(json!("0.5%")))]),
            "spec.stages[2].weight",
            Server::Cel,
        ),
        (
            "notification webhook that is not http",
            edited(&[(
                "/spec/notifications",
                Some(json!([{ "url": "ftp://hooks.example.com/x" }])),
            )]),
            "spec.notifications[0].url",
            Server::Schema,
        ),
        (
            "notification event named twice",
            edited(&[(
                "/spec/notifications",
                Some(
                    json!([{ "url": "https://hooks.example.com/x", "on": ["Promoted", "Promoted"] }]),
                ),
            )]),
            "spec.notifications[0].on",
            Server::Cel,
        ),
        (
            "weight above 100%",
            edited(&[("/spec/stages/1/weight", Some(json!(150)))]),
            "spec.stages[1].weight",
            Server::Cel,
        ),
        (
            "weight above 100% as text",
            edited(&[("/spec/stages/1/weight", Some(json!("100.5%")))]),
            "spec.stages[1].weight",
            Server::Cel,
        ),
        (
            "zero weight",
            edited(&[("/spec/stages/1/weight", Some(json!(0)))]),
            "spec.stages[1].weight",
            Server::Cel,
        ),
        (
            "fractional weight as a float",
            edited(&[("/spec/stages/1/weight", Some(json!(0.5)))]),
            "spec.stages[1].weight",
            Server::Schema,
        ),
        (
            "candidate equals baseline",
            edited(&[("/spec/flag/candidate", Some(json!("off")))]),
            "spec.flag.candidate",
            Server::Cel,
        ),
        (
            "unknown baseline variant",
            edited(&[("/spec/flag/baseline", Some(json!("of")))]),
            "spec.flag.baseline",
            Server::Cel,
        ),
        (
            "unknown candidate variant",
            edited(&[("/spec/flag/candidate", Some(json!("yes")))]),
            "spec.flag.candidate",
            Server::Cel,
        ),
        (
            "zero duration",
            edited(&[("/spec/stages/1/duration", Some(json!("0s")))]),
            "spec.stages[1].duration",
            Server::Cel,
        ),
        (
            "negative duration",
            edited(&[("/spec/stages/1/duration", Some(json!("-5m")))]),
            "spec.stages[1].duration",
            Server::Cel,
        ),
        (
            "duration in words",
            edited(&[("/spec/stages/1/duration", Some(json!("ten minutes")))]),
            "spec.stages[1].duration",
            Server::Schema,
        ),
        (
            "missing duration below 100%",
            edited(&[("/spec/stages/1/duration", None)]),
            "spec.stages[1].duration",
            Server::Cel,
        ),
        (
            "audience with two operators",
            edited(&[(
                "/spec/stages/0/audience",
                stage(json!({"ends_with": [{"var": "email"}, "@x"], "var": "email"})),
            )]),
            "spec.stages[0].audience",
            Server::Cel,
        ),
        (
            "audience with an unknown operator",
            edited(&[(
                "/spec/stages/0/audience",
                stage(json!({"endsWith": [{"var": "email"}, "@x"]})),
            )]),
            "spec.stages[0].audience",
            Server::RustOnly,
        ),
        (
            "audience that is not a rule",
            edited(&[("/spec/stages/0/audience", stage(json!("@example.com")))]),
            "spec.stages[0].audience",
            Server::Schema,
        ),
        (
            "audience after a general stage",
            edited(&[
                (
                    "/spec/stages/1/audience",
                    stage(json!({"in": [{"var": "country"}, ["NL"]]})),
                ),
                ("/spec/stages/0/audience", None),
                ("/spec/stages/0/weight", Some(json!(1))),
            ]),
            "spec.stages[1].audience",
            Server::Cel,
        ),
        (
            "two targets",
            edited(&[("/spec/target/file", Some(json!({"path": "./flags.json"})))]),
            "spec.target",
            Server::Cel,
        ),
        (
            "no target",
            edited(&[("/spec/target", Some(json!({})))]),
            "spec.target",
            Server::Cel,
        ),
        (
            "last stage below 100%",
            edited(&[("/spec/stages/4", None)]),
            "spec.stages[3].weight",
            Server::Cel,
        ),
        (
            "duplicate stage names",
            edited(&[("/spec/stages/2/name", Some(json!("one-percent")))]),
            "spec.stages[2].name",
            Server::Cel,
        ),
        (
            "metric of two kinds",
            edited(&[(
                "/spec/analysis/metrics/0/guard",
                Some(json!({"query": "up", "max": 1})),
            )]),
            "spec.analysis.metrics[0]",
            Server::Cel,
        ),
        (
            "tolerance both relative and absolute",
            edited(&[(
                "/spec/analysis/metrics/0/maxIncrease",
                Some(json!({"relative": "10%", "absolute": "1%"})),
            )]),
            "spec.analysis.metrics[0].maxIncrease",
            Server::Cel,
        ),
        (
            "duplicate metric names",
            edited(&[("/spec/analysis/metrics/1/name", Some(json!("error-rate")))]),
            "spec.analysis.metrics[1].name",
            Server::Cel,
        ),
        (
            "confidence above range",
            edited(&[("/spec/analysis/confidence", Some(json!(1.5)))]),
            "spec.analysis.confidence",
            Server::Schema,
        ),
        (
            "guard min above max",
            edited(&[("/spec/analysis/metrics/2/guard/min", Some(json!(2e9)))]),
            "spec.analysis.metrics[2].guard.min",
            Server::Cel,
        ),
        (
            "minimum samples without metrics",
            edited(&[("/spec/analysis/metrics", Some(json!([])))]),
            "spec.stages[2].minSamples",
            Server::Cel,
        ),
        (
            "unknown template variable",
            edited(&[(
                "/spec/analysis/metrics/0/ratio/errors",
                Some(json!("sum(x{job=\"{{ jobb }}\"}[{{ window }}])")),
            )]),
            "spec.analysis.metrics[0].ratio.errors",
            Server::RustOnly,
        ),
        (
            "malformed template",
            edited(&[(
                "/spec/analysis/metrics/1/histogram/buckets",
                Some(json!("sum(x[{{ window ]))")),
            )]),
            "spec.analysis.metrics[1].histogram.buckets",
            Server::RustOnly,
        ),
        (
            "redefined built-in variable",
            edited(&[("/spec/analysis/variables", Some(json!({"flag": "x"})))]),
            "spec.analysis.variables.flag",
            Server::RustOnly,
        ),
        (
            "guard without thresholds",
            edited(&[("/spec/analysis/metrics/2/guard/max", None)]),
            "spec.analysis.metrics[2].guard",
            Server::Cel,
        ),
    ];

    for (name, doc, field, server) in cases {
        let problems = manifest::check(&doc)
            .err()
            .unwrap_or_else(|| panic!("{name}: was accepted"));
        assert!(
            problems
                .iter()
                .any(|p| p.field == field && !p.message.is_empty()),
            "{name}: no problem names {field}: {problems:?}"
        );
        if server == Server::Cel {
            let cel = manifest::cel_problems(&doc, None);
            assert!(!cel.is_empty(), "{name}: the CRD's CEL rules accept it");
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let doc = edited(&[
        ("/spec/flag/candidate", Some(json!("off"))),
        ("/spec/stages/2/weight", Some(json!("0.5%"))),
        ("/spec/stages/1/duration", Some(json!("0s"))),
    ]);
    let problems = manifest::check(&doc).unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for field in [
        "spec.flag.candidate",
        "spec.stages[2].weight",
        "spec.stages[1].duration",
    ] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
}

#[test]
fn target_and_flag_key_are_immutable_but_stages_are_not() {
    let old = example();
    let moved = edited(&[("/spec/target/configMap/name", Some(json!("other-flags")))]);
    assert!(
        !manifest::cel_problems(&moved, Some(&old)).is_empty(),
        "a moved target was accepted"
    );
    let renamed = edited(&[("/spec/flag/key", Some(json!("other-flag")))]);
    assert!(
        !manifest::cel_problems(&renamed, Some(&old)).is_empty(),
        "a renamed flag was accepted"
    );
    let restaged = edited(&[("/spec/stages/2/weight", Some(json!(10)))]);
    assert_eq!(manifest::cel_problems(&restaged, Some(&old)), vec![]);
}

#[test]
fn wrong_kind_and_bad_yaml_are_named() {
    let problems = manifest::check(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).unwrap_err();
    assert_eq!(problems[0].field, "kind");
    let problem = manifest::documents("spec: [unclosed").unwrap_err();
    assert!(problem.message.contains("not valid YAML"), "{problem}");
}
