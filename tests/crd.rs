//! The resource's schema and its validation: the committed CRD matches the Rust types,
//! every field is documented, and invalid specs are refused, by the Rust checks with a
//! message naming the field and by the CRD's CEL rules as the API server would.

use kube::CustomResourceExt;
use serde_json::{Value, json};
use sluice::crd::{FeatureRollout, crd_yaml};
use sluice::manifest;

mod support;

use support::crd_cases::{InvalidCase, Server, edited, example, invalid_cases};

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

/// kubectl and Helm read YAML as YAML 1.1 (`sigs.k8s.io/yaml`), where an unquoted `on` is
/// the boolean true: the committed CRD and the chart's copy must read the same there as
/// in YAML 1.2, or `notifications[].on` is installed as a property named `true` and the
/// CEL rule naming `self.on` does not compile. PyYAML (in the test venv) reads YAML 1.1.
#[test]
fn committed_crds_read_the_same_as_yaml_1_1() {
    let script = "import json, sys, yaml\n\
                  print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    for path in [
        "crds/featurerollout.yaml",
        "charts/sluice/crds/featurerollout.yaml",
    ] {
        let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        let output = std::process::Command::new(support::helm::python())
            .args(["-c", script, &path])
            .output()
            .expect("python runs");
        assert!(
            output.status.success(),
            "PyYAML reads {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let yaml_1_1: Value = serde_json::from_slice(&output.stdout).unwrap();
        let yaml_1_2: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        pretty_assertions::assert_eq!(yaml_1_1, yaml_1_2, "{path} reads differently as YAML 1.1");
    }
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

#[test]
fn invalid_specs_are_refused_with_the_field_named() {
    for InvalidCase {
        name,
        doc,
        field,
        server,
    } in invalid_cases()
    {
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
