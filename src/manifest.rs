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
/// dropped. A syntax error is one problem naming the line; so is a key written twice in
/// one mapping (YAML forbids it, and taking the last one would silently drop the first),
/// named by its field path.
pub fn documents(text: &str) -> Result<Vec<Value>, Problem> {
    // First pass: YAML's own mapping type refuses duplicate keys (JSON's keeps the last).
    // Its message starts with the mapping's path when it is not the document's root:
    // `spec.flag: duplicate entry with key "key" at line 5 column 5`.
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        if let Err(e) = serde_yaml_ng::Value::deserialize(document) {
            let message = e.to_string();
            let Some(at) = message.find("duplicate entry") else {
                return Err(Problem {
                    field: "(document)".into(),
                    message: format!("is not valid YAML: {message}"),
                });
            };
            let field = message[..at].trim_end_matches([':', ' ']);
            return Err(Problem {
                field: if field.is_empty() {
                    "(document)".into()
                } else {
                    field.to_owned()
                },
                message: format!(
                    "{}: a key may appear only once in a mapping (remove one)",
                    &message[at..]
                ),
            });
        }
    }
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
    match rollout.metadata.name.as_deref().unwrap_or_default() {
        "" => problems.push(problem("metadata.name", "is missing".into())),
        name if !is_dns1123_subdomain(name) => problems.push(problem(
            "metadata.name",
            format!(
                "{name:?} is not a valid name: at most {MAX_NAME_CHARS} characters of lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit (the rule the API server applies)"
            ),
        )),
        _ => {}
    }
    if let Some(namespace) = rollout.metadata.namespace.as_deref()
        && !is_dns1123_label(namespace)
    {
        problems.push(problem(
            "metadata.namespace",
            format!(
                "{namespace:?} is not a valid namespace: at most {MAX_LABEL_CHARS} characters of lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        ));
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

/// The longest object name the API server accepts (a DNS-1123 subdomain).
pub const MAX_NAME_CHARS: usize = 253;
/// The longest DNS-1123 label (a namespace).
pub const MAX_LABEL_CHARS: usize = 63;

/// Whether `name` is a DNS-1123 subdomain, the rule the API server applies to the names
/// of custom resources: at most 253 characters, dot-separated labels of lowercase
/// letters, digits and '-', each starting and ending with a letter or digit. Such a name
/// is also a safe file name (no '/', never `.` or `..`).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= MAX_NAME_CHARS && name.split('.').all(label_chars)
}

/// Whether `name` is a DNS-1123 label (a namespace): at most 63 characters of lowercase
/// letters, digits and '-', starting and ending with a letter or digit.
pub fn is_dns1123_label(name: &str) -> bool {
    name.len() <= MAX_LABEL_CHARS && label_chars(name)
}

fn label_chars(label: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !label.is_empty()
        && label.chars().all(|c| edge(c) || c == '-')
        && label.starts_with(edge)
        && label.ends_with(edge)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_servers_subdomain_rule() {
        for good in ["a", "new-checkout.v2", "0", &"a".repeat(253)] {
            assert!(is_dns1123_subdomain(good), "{good:?}");
        }
        for bad in [
            "",
            "../../evil",
            "Search_V2",
            "A",
            "-a",
            "a-",
            "a/b",
            ".a",
            "a..b",
            "a.-b",
            &"a".repeat(254),
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
        assert!(is_dns1123_label("shop"));
        assert!(!is_dns1123_label("shop.prod"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
    }

    #[test]
    fn a_key_written_twice_is_refused_with_its_path() {
        let text = "kind: FeatureRollout\nspec:\n  flag:\n    key: a\n    key: b\n";
        let problem = documents(text).unwrap_err();
        assert_eq!(problem.field, "spec.flag", "{problem}");
        assert!(
            problem.message.contains("duplicate entry with key \"key\""),
            "{problem}"
        );
        let twice_at_top = "kind: A\nkind: B\n";
        assert_eq!(documents(twice_at_top).unwrap_err().field, "(document)");
        assert!(
            documents("a: [")
                .unwrap_err()
                .message
                .starts_with("is not valid YAML")
        );
    }
}
