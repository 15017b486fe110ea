//! The FeatureRollout manifests whose validity the tests know: the example and invalid
//! edits of it, each with the field its problem is reported at and how the API server
//! refuses it. `tests/crd.rs` checks them against `sluice validate`'s rules offline,
//! `tests/cluster.rs` against a real kube-apiserver (the oracle).

use serde_json::{Value, json};
use sluice::manifest;

const EXAMPLE: &str = include_str!("../../examples/new-checkout.yaml");

pub fn example() -> Value {
    manifest::documents(EXAMPLE)
        .expect("the example parses")
        .remove(0)
}

/// The example with the value at `pointer` replaced (or removed, for `None`).
pub fn edited(edits: &[(&str, Option<Value>)]) -> Value {
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

/// How the API server refuses a case: by a CEL rule (checked here with the CRD's own
/// rules), or by the OpenAPI schema's types and bounds (not evaluated offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// A CEL rule (`x-kubernetes-validations`) of the CRD.
    Cel,
    /// The OpenAPI schema: a type, format, pattern or bound.
    Schema,
    /// Not refused by the API server; the controller reports an invalid spec instead.
    RustOnly,
}

/// One invalid edit of the example.
pub struct InvalidCase {
    /// What is wrong, in words.
    pub name: &'static str,
    /// The manifest.
    pub doc: Value,
    /// The field the problem is reported at (`sluice validate` and the API server).
    pub field: &'static str,
    /// How the API server refuses it.
    pub server: Server,
}

/// Every invalid edit of the example that the tests know.
pub fn invalid_cases() -> Vec<InvalidCase> {
    let stage = |v: Value| Some(v);
    let cases: Vec<(&'static str, Value, &'static str, Server)> = vec![
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
            Server::RustOnly,
        ),
        (
            "unknown candidate variant",
            edited(&[("/spec/flag/candidate", Some(json!("yes")))]),
            "spec.flag.candidate",
            Server::RustOnly,
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
            Server::Schema,
        ),
        (
            "audience with no operator",
            edited(&[("/spec/stages/0/audience", stage(json!({})))]),
            "spec.stages[0].audience",
            Server::Schema,
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
    cases
        .into_iter()
        .map(|(name, doc, field, server)| InvalidCase {
            name,
            doc,
            field,
            server,
        })
        .collect()
}
