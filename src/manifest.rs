//! Reading `FeatureRollout` manifests from YAML, as `sluice validate` and standalone mode
//! do: every problem is reported with its field path, and the CRD's own CEL rules are run
//! offline, so a manifest that passes here is one the API server accepts.

use std::sync::LazyLock;

use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

use crate::crd::{FeatureRollout, Problem, validate};

/// The `apiVersion` Sluice reads.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";
/// The `kind` Sluice reads.
pub const KIND: &str = "FeatureRollout";

/// The CRD's OpenAPI schema as JSON, for running its CEL rules offline.
static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let crd = FeatureRollout::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("the CRD schema serializes")
});

/// Splits a YAML stream into its documents, as JSON values; empty documents are
/// dropped. A syntax error is one problem naming the line.
pub fn documents(text: &str) -> Result<Vec<Value>, Problem> {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| Problem {
            field: "(document)".into(),
            message: format!("is not valid YAML: {e}"),
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Checks one manifest: its kind, its shape (types, required fields), every rule of the
/// spec, and the CRD's CEL rules. Returns the typed rollout, or every problem found.
pub fn check(raw: &Value) -> Result<FeatureRollout, Vec<Problem>> {
    let problem = |field: &str, message: String| Problem {
        field: field.into(),
        message,
    };
    let api_version = raw
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = raw.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != KIND || api_version != API_VERSION {
        return Err(vec![problem(
            "kind",
            format!("{api_version}/{kind} is not a {API_VERSION} {KIND}"),
        )]);
    }
    let rollout: FeatureRollout = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        vec![problem(
            if path == "." { "(document)" } else { &path },
            e.inner().to_string(),
        )]
    })?;
    let mut problems = Vec::new();
    if rollout
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        problems.push(problem("metadata.name", "is missing".into()));
    }
    if let Err(found) = validate(&rollout.spec) {
        problems.extend(found);
    }
    if problems.is_empty()
        && let Err(errors) = kube::core::cel::Validator::new().validate(&SCHEMA, raw, None)
    {
        problems.extend(errors.iter().map(|e| Problem {
            field: if e.field_path.is_empty() {
                "spec".into()
            } else {
                e.field_path.clone()
            },
            message: format!("{} (CRD rule `{}`)", e.message, e.rule),
        }));
    }
    if problems.is_empty() {
        Ok(rollout)
    } else {
        Err(problems)
    }
}

/// Runs the CRD's CEL rules on a manifest (creation rules, or transition rules too when
/// `old` is given), as the API server would.
pub fn cel_problems(raw: &Value, old: Option<&Value>) -> Vec<Problem> {
    match kube::core::cel::Validator::new().validate(&SCHEMA, raw, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| Problem {
                field: e.field_path.clone(),
                message: e.message.clone(),
            })
            .collect(),
    }
}
