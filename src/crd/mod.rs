//! The `FeatureRollout` resource (`sluice.dev/v1alpha1`): what to roll out, in which
//! stages, watched by which metrics, and the status Sluice reports back.
//!
//! Doc comments on the fields become `kubectl explain` text. Bounds and single-field rules
//! live in the schema; rules that span fields are CEL (`x-kubernetes-validations`). The
//! same rules run in Rust ([`validate`]) for standalone mode, `sluice validate` and clear
//! messages.

mod units;
pub mod validate;
mod yaml;

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use units::{Weight, parse_duration, parse_percent};
pub use validate::{Problem, validate};

/// The Prometheus label that carries the variant a request was served, as OpenTelemetry's
/// `feature_flag.result.variant` attribute is named in Prometheus.
pub const DEFAULT_COHORT_LABEL: &str = "feature_flag_result_variant";
/// How often the metrics are analysed when `analysis.interval` is not set.
pub const DEFAULT_INTERVAL: &str = "1m";
/// The share of the false-rollback budget not spent, when `analysis.confidence` is not set.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// Rolls a feature flag out in stages of exposure and rolls it back when the metrics of
/// the users who get the new variant show harm compared with those who don't.
// Every printer column repeats `type_ = "string"`, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "FeatureRollout",
    namespaced,
    cel,
    status = "FeatureRolloutStatus",
    shortname = "fr",
    category = "sluice",
    doc = "Rolls a feature flag out in stages of exposure and rolls it back when the users who get the new variant fare worse than those who don't.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the rollout is"
    ),
    printcolumn(
        name = "Stage",
        type_ = "string",
        json_path = ".status.stageName",
        description = "The current stage"
    ),
    printcolumn(
        name = "Weight",
        type_ = "string",
        json_path = ".status.exposure",
        description = "Share of eligible users on the candidate"
    ),
    printcolumn(
        name = "Verdict",
        type_ = "string",
        json_path = ".status.lastAnalysis.verdict",
        description = "The last analysis' verdict"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// `fieldPath` makes the server name `spec.stages` rather than `spec`: a CEL rule cannot
// name the stage's index.
#[x_kube(validation = kube::core::Rule::new("!self.stages.exists(s, has(s.minSamples)) || (has(self.analysis) && has(self.analysis.metrics) && size(self.analysis.metrics) > 0)").message("stages[].minSamples needs analysis.metrics to count samples").field_path(".stages"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.analysis) || !has(self.analysis.onError) || !has(self.analysis.onError.action) || self.analysis.onError.action != 'rollback' || (has(self.analysis.metrics) && size(self.analysis.metrics) > 0)").message("analysis.onError.action rollback needs analysis.metrics"))]
pub struct FeatureRolloutSpec {
    /// The flag to roll out: its key, its variants, and which one is safe today.
    pub flag: FlagSpec,
    /// Where the flagd flag document lives. Exactly one of `configMap`, `featureFlag` or
    /// `file`. Immutable: to move a flag, delete the rollout and create a new one.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("target is immutable: delete the rollout and create a new one to move the flag"))]
    pub target: Target,
    /// The stages of exposure, in order. Weights never decrease (audience stages come
    /// first and are exempt), and the last stage is 100% for everybody, after which the
    /// candidate is promoted to the default.
    #[schemars(length(min = 1, max = 32))]
    // Audience stages count as 0 (they come first, by the rule below): the server bounds
    // the cost of `s.weight` only when `s` ranges over `self` itself, not over a
    // `filter` of it.
    #[x_kube(validation = kube::core::Rule::new("self.map(s, has(s.audience) ? 0.0 : double(string(s.weight).replace('%', ''))).isSorted()").message("stage weights must never decrease (audience stages excepted)"))]
    #[x_kube(validation = kube::core::Rule::new("!has(self[size(self) - 1].audience) && double(string(self[size(self) - 1].weight).replace('%', '')) == 100.0").message("the last stage must be 100% with no audience"))]
    #[x_kube(validation = kube::core::Rule::new("self.map(s, !has(s.audience)).isSorted()").message("audience stages must come before all other stages"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, has(s.duration) || (!has(s.audience) && double(string(s.weight).replace('%', '')) == 100.0))").message("every stage below 100% (and every audience stage) needs a duration"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, !has(s.name) || self.exists_one(t, has(t.name) && t.name == s.name))").message("stage names must be unique"))]
    pub stages: Vec<Stage>,
    /// How the candidate is judged at every look. Without it, stages advance on time
    /// alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Steering by people: pause, approve, abort and retry, settable with `kubectl patch`.
    #[serde(default)]
    pub control: Control,
    /// Webhooks told about this rollout's rollbacks, promotions, holds that need a person
    /// and metrics-provider trouble, in addition to the controller's global webhooks
    /// (`--notify-webhook`). At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub notifications: Vec<NotificationSpec>,
}

/// A webhook for one rollout's notifications.
#[derive(Serialize, Deserialize, Clone, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.on) || self.on.all(t, self.on.exists_one(u, u == t))").message("notifications[].on must not name an event twice"))]
pub struct NotificationSpec {
    /// Where to POST: an `http://` or `https://` URL. A URL may carry a token (Slack's
    /// incoming webhooks do): Sluice never writes it to logs, events or status, but
    /// whoever may read this rollout may read it; for secret URLs prefer the
    /// controller's global webhooks, configured from a Secret.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^/?#\s]+"))]
    pub url: String,
    /// The payload: `json` (default; Sluice's own fields) or `slack` (a Slack-compatible
    /// `{"text", "blocks"}` message, also understood by Mattermost and Rocket.Chat).
    #[serde(default)]
    pub format: NotificationFormat,
    /// Which notifications to send (default: all): `RolledBack`, `Promoted`,
    /// `NeedsAttention` (waiting for approval, no data, sample ratio mismatch, an invalid
    /// spec, a flag that cannot be written) and `ProviderTrouble` (the analysis keeps
    /// failing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub on: Vec<NotificationTrigger>,
}

impl std::fmt::Debug for NotificationSpec {
    // The URL may carry a token: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationSpec")
            .field("url", &"<redacted>")
            .field("format", &self.format)
            .field("on", &self.on)
            .finish()
    }
}

/// The payload format of a webhook.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum NotificationFormat {
    /// Sluice's own JSON document: rollout, namespace, flag, stage, weight, verdict,
    /// reason, message, time.
    #[default]
    Json,
    /// A Slack-compatible message: `{"text": ..., "blocks": [...]}`.
    Slack,
}

/// What a notification is about.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum NotificationTrigger {
    /// The rollout rolled back (harm, `control.abort`, errors with `onError: rollback`).
    RolledBack,
    /// The candidate became the default for everybody.
    Promoted,
    /// A hold only a person can end: waiting for approval, no data for a whole stage,
    /// a sample ratio mismatch, an invalid spec, a removed stage, a flag document that
    /// cannot be written.
    NeedsAttention,
    /// The metrics provider or its queries keep failing (`AnalysisFailing`).
    ProviderTrouble,
}

/// The flag being rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.baseline != self.candidate").message("flag.candidate must differ from flag.baseline"))]
// That `baseline` and `candidate` name variants is a Rust-only rule (`validate`): the
// variants' values are untyped (any JSON), and the API server gives CEL no map whose
// values have no schema, so `self.variants` does not exist there.
pub struct FlagSpec {
    /// The flag key, as the application evaluates it. Sluice owns this one key in the
    /// document and never changes any other. Immutable.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("flag.key is immutable: create a new rollout for another flag"))]
    pub key: String,
    /// The flag's variants: name to value (any JSON value: boolean, string, number,
    /// object).
    #[schemars(schema_with = "variants_schema")]
    pub variants: BTreeMap<String, Value>,
    /// The variant that is safe today, one of `variants`. It is the default until
    /// promotion, what every user gets after a rollback, and what an evaluation error
    /// falls back to.
    #[schemars(length(min = 1, max = 256))]
    pub baseline: String,
    /// The variant being rolled out, one of `variants`.
    #[schemars(length(min = 1, max = 256))]
    pub candidate: String,
}

/// Where the flag document lives. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.configMap), has(self.featureFlag), has(self.file)].filter(x, x).size() == 1").message("target must set exactly one of configMap, featureFlag or file"))]
pub struct Target {
    /// A ConfigMap in the rollout's namespace holding a flagd document under `key`;
    /// created if missing. flagd reads it as a mounted file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapTarget>,
    /// An OpenFeature Operator `FeatureFlag` (`core.openfeature.dev/v1beta1`) in the
    /// rollout's namespace; Sluice patches only its own key in `spec.flagSpec.flags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_flag: Option<FeatureFlagTarget>,
    /// A flagd JSON file on the local disk (standalone mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileTarget>,
}

/// The one target a [`Target`] names: the only place its one-of is decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlagTarget {
    /// A ConfigMap's data key (`spec.target.configMap`).
    ConfigMap {
        /// The ConfigMap's name.
        name: String,
        /// The data key holding the flagd document.
        key: String,
    },
    /// An OpenFeature Operator `FeatureFlag` (`spec.target.featureFlag`).
    FeatureFlag {
        /// The `FeatureFlag`'s name.
        name: String,
    },
    /// A flagd file on the local disk (`spec.target.file`).
    File {
        /// The path as written in the spec.
        path: String,
    },
}

impl FlagTarget {
    /// A bounded name for metrics labels (`configMap`, `featureFlag`, `file`).
    pub fn kind(&self) -> &'static str {
        match self {
            FlagTarget::ConfigMap { .. } => "configMap",
            FlagTarget::FeatureFlag { .. } => "featureFlag",
            FlagTarget::File { .. } => "file",
        }
    }
}

impl std::fmt::Display for FlagTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlagTarget::ConfigMap { name, key } => write!(f, "ConfigMap {name}, key {key}"),
            FlagTarget::FeatureFlag { name } => write!(f, "FeatureFlag {name}"),
            FlagTarget::File { path } => write!(f, "file {path}"),
        }
    }
}

/// Why a [`Target`] names no single target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetChoiceError {
    /// None of `configMap`, `featureFlag` or `file` is set.
    None,
    /// More than one is set.
    Several,
}

impl Target {
    /// The target this names, when it names exactly one.
    pub fn choice(&self) -> Result<FlagTarget, TargetChoiceError> {
        match (&self.config_map, &self.feature_flag, &self.file) {
            (Some(c), None, None) => Ok(FlagTarget::ConfigMap {
                name: c.name.clone(),
                key: c.key.clone(),
            }),
            (None, Some(f), None) => Ok(FlagTarget::FeatureFlag {
                name: f.name.clone(),
            }),
            (None, None, Some(f)) => Ok(FlagTarget::File {
                path: f.path.clone(),
            }),
            (None, None, None) => Err(TargetChoiceError::None),
            _ => Err(TargetChoiceError::Several),
        }
    }
}

/// A ConfigMap holding a flagd document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapTarget {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The data key holding the flagd JSON document.
    #[serde(default = "default_config_map_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_config_map_key() -> String {
    "flags.json".into()
}

/// An OpenFeature Operator `FeatureFlag` resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureFlagTarget {
    /// The `FeatureFlag`'s name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A flagd document on the local disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileTarget {
    /// Path of the flagd JSON file; relative paths are relative to the rollout file.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// One step of the plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// A name for people and for `control.approve`; `stage-N` (1-based) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Share of eligible users who get the candidate: a whole number of percent (`5`)
    /// or a string of percent with up to four decimals (`"0.5%"`, the `%` optional).
    pub weight: Weight,
    /// Restricts the stage to the users this JSONLogic rule (an object with exactly one
    /// operator key) matches on the evaluation context (e.g.
    /// `{"ends_with": [{"var": "email"}, "@example.com"]}`); everybody else gets the
    /// baseline. Audience stages come before the general ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "json_logic_schema")]
    pub audience: Option<Value>,
    /// The least time the stage lasts (`10m`, `1h30m`). Required below 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "units::duration_schema")]
    pub duration: Option<String>,
    /// The least number of candidate requests the stage must see before it may end.
    /// Needs `analysis.metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<u64>,
    /// `required` makes the rollout wait, before entering this stage, until
    /// `control.approve` names it.
    #[serde(default)]
    pub approval: Approval,
}

fn string_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": { "type": "string", "maxLength": 1024 }
    })
}

fn variants_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 2,
        "maxProperties": 64,
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

fn json_logic_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        // One JSONLogic rule: exactly one operator key. A bound, not a CEL rule: the
        // server gives CEL no size of an object whose fields have no schema.
        "minProperties": 1,
        "maxProperties": 1
    })
}

/// Whether a stage waits for a person.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Approval {
    /// The stage starts as soon as the previous one ends.
    #[default]
    Auto,
    /// The stage starts only once `control.approve` names it.
    Required,
}

/// How the candidate is judged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Time between looks at the metrics (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "units::duration_schema")]
    pub interval: Option<String>,
    /// The Prometheus-compatible server to query (Prometheus, Thanos, Mimir,
    /// VictoriaMetrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// One minus the chance of rolling back a healthy flag that the whole rollout may
    /// spend, however often it looks (default 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.5, max = 0.9999))]
    pub confidence: Option<f64>,
    /// The metric label that carries the variant served (default
    /// `feature_flag_result_variant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    )]
    pub cohort_label: Option<String>,
    /// Extra template variables for the queries, used as `{{ name }}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "string_map_schema")]
    pub variables: BTreeMap<String, String>,
    /// PromQL returning the number of distinct users (targeting keys) per cohort over
    /// `{{ window }}`, for the sample-ratio check: when the observed split disagrees with
    /// the stage's weight (chi-square, p < 0.001) the cohorts are not comparable and the
    /// stage holds. Request counts are no basis for this check (heavy users skew them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub users: Option<String>,
    /// The metrics that matter. Names are unique.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.all(m, self.exists_one(n, n.name == m.name))").message("metric names must be unique"))]
    pub metrics: Vec<MetricSpec>,
    /// What repeated analysis errors (Prometheus down, failing queries) do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

/// Where to query metrics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub address: String,
    /// Time limit of one request (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "units::duration_schema")]
    pub timeout: Option<String>,
    /// Extra HTTP headers, e.g. `X-Scope-OrgID` for Mimir or Cortex tenants.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "string_map_schema")]
    pub headers: BTreeMap<String, String>,
    /// A file holding a bearer token (e.g. a mounted Secret); read at every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub bearer_token_file: Option<String>,
    /// HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// TLS settings for `https` addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// HTTP basic authentication with the password in a file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The user name.
    #[schemars(length(min = 1, max = 256))]
    pub username: String,
    /// A file holding the password (e.g. a mounted Secret).
    #[schemars(length(min = 1, max = 4096))]
    pub password_file: String,
}

/// TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A PEM file of CA certificates to trust instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub ca_file: Option<String>,
    /// Skip certificate verification. Never do this outside a test.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One metric that matters. Exactly one of `ratio`, `histogram` or `guard`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.ratio), has(self.histogram), has(self.guard)].filter(x, x).size() == 1").message("a metric sets exactly one of ratio, histogram or guard"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.guard) || (!has(self.maxIncrease) && !has(self.max))").message("a guard metric takes its thresholds in guard.max / guard.min, not maxIncrease or max"))]
#[x_kube(validation = kube::core::Rule::new("has(self.guard) || has(self.maxIncrease) || has(self.max)").message("a ratio or histogram metric needs maxIncrease, max or both"))]
pub struct MetricSpec {
    /// A short name, unique in the rollout (used in status, events and metrics).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// A share of bad requests per cohort: `errors / requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioMetric>,
    /// A share of slow requests per cohort, `P(latency > threshold)`, from histogram
    /// buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram: Option<HistogramMetric>,
    /// An absolute threshold that needs no comparison (memory, saturation, SLO burn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardMetric>,
    /// The harm tolerated: how much worse than the baseline the candidate may be before
    /// the rollout is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<Tolerance>,
    /// An absolute ceiling on the candidate's share (e.g. `"2%"`), whatever the baseline
    /// does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "units::percent_schema")]
    pub max: Option<String>,
}

/// Errors over requests, per cohort.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatioMetric {
    /// PromQL returning the bad requests per cohort over `{{ window }}`, e.g.
    /// `sum by (feature_flag_result_variant) (increase(http_requests_total{code=~"5..",feature_flag_key="{{ flag }}"}[{{ window }}]))`.
    #[schemars(length(min = 1, max = 8192))]
    pub errors: String,
    /// PromQL returning all requests per cohort over `{{ window }}`.
    #[schemars(length(min = 1, max = 8192))]
    pub requests: String,
    /// Per-user sums of requests and errors, for a variance that counts users, not
    /// requests, as the unit of randomisation. Without them, user clustering is not
    /// accounted for: a few heavy users who fail more for reasons of their own can roll a
    /// healthy flag back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<PerUserQueries>,
}

/// PromQL per cohort over `{{ window }}` for the sums over users of their counts since the
/// flag's configuration last changed: each user `i` with `n_i` requests and `x_i` bad ones
/// (errors for a ratio metric, slow requests for a histogram metric). An instrumentation
/// exports them as plain counters (the Python module does: `sluice_user_*_total`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerUserQueries {
    /// `Σ n_i`: the requests counted per user.
    #[schemars(length(min = 1, max = 8192))]
    pub requests: String,
    /// `Σ x_i`: the bad requests counted per user.
    #[schemars(length(min = 1, max = 8192))]
    pub bad: String,
    /// `Σ n_i²`.
    #[schemars(length(min = 1, max = 8192))]
    pub requests_squared: String,
    /// `Σ x_i²`.
    #[schemars(length(min = 1, max = 8192))]
    pub bad_squared: String,
    /// `Σ n_i·x_i`.
    #[schemars(length(min = 1, max = 8192))]
    pub requests_times_bad: String,
}

/// Histogram buckets, per cohort.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistogramMetric {
    /// PromQL returning the cumulative bucket counts by `le` and cohort over
    /// `{{ window }}`.
    #[schemars(length(min = 1, max = 8192))]
    pub buckets: String,
    /// The latency (in the histogram's unit, usually seconds) above which a request
    /// counts as slow. Must be one of the bucket bounds.
    #[schemars(range(min = 0.0))]
    pub threshold: f64,
    /// Per-user sums of requests and slow requests (above `threshold`), for a variance
    /// that counts users, not requests. Without them, user clustering is not accounted
    /// for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<PerUserQueries>,
}

/// An absolute threshold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.max) || has(self.min)").message("a guard needs max, min or both"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.max) || !has(self.min) || self.min <= self.max").message("guard.min must not be above guard.max"))]
pub struct GuardMetric {
    /// PromQL returning one value, or one per cohort (then the candidate's is checked).
    #[schemars(length(min = 1, max = 8192))]
    pub query: String,
    /// The rollout fails when the value goes above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The rollout fails when the value goes below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
}

/// Tolerated harm. Exactly one of `relative` or `absolute`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.relative) != has(self.absolute)").message("maxIncrease sets exactly one of relative or absolute"))]
pub struct Tolerance {
    /// The candidate may be this much worse in proportion (`"10%"`: 1% errors may become
    /// 1.1%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "units::percent_schema")]
    pub relative: Option<String>,
    /// The candidate may be this many percentage points worse (`"0.5%"`: 1% may become
    /// 1.5%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "units::percent_schema")]
    pub absolute: Option<String>,
}

/// What repeated analysis errors do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnError {
    /// How many errored looks in a row trigger the action (default 3).
    #[serde(default = "default_consecutive")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive: u32,
    /// `hold` keeps the current exposure and says so; `rollback` rolls back.
    #[serde(default)]
    pub action: ErrorAction,
}

impl Default for OnError {
    fn default() -> Self {
        OnError {
            consecutive: default_consecutive(),
            action: ErrorAction::Hold,
        }
    }
}

fn default_consecutive() -> u32 {
    3
}

/// The action on repeated analysis errors.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ErrorAction {
    /// Keep the current exposure, do not advance, and say why.
    #[default]
    Hold,
    /// Roll back to the baseline.
    Rollback,
}

/// Steering by people. Every field is declarative: it says what should hold now, so
/// applying the same manifest twice changes nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    /// Hold at the current stage: no stage ends while paused. Analysis goes on and harm
    /// still rolls back. Set back to false to resume.
    #[serde(default)]
    pub paused: bool,
    /// The name of a stage with `approval: required` that may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub approve: Option<String>,
    /// Roll back now and stay rolled back while true.
    #[serde(default)]
    pub abort: bool,
    /// Raise this number (with `abort` false) to start a rolled-back rollout again from
    /// its first stage.
    #[serde(default)]
    #[schemars(range(min = 0, max = 4_294_967_295u32))]
    pub retry: u32,
}

/// Where a rollout is.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum Phase {
    /// Not started yet.
    #[default]
    Pending,
    /// Going through its stages.
    Progressing,
    /// A stage with `approval: required` waits for `control.approve`.
    WaitingForApproval,
    /// Held by `control.paused`.
    Paused,
    /// The candidate is the default for everybody. Final.
    Promoted,
    /// Everybody is back on the baseline. Final until `control.retry` is raised.
    RolledBack,
    /// The spec cannot be carried out (see the `Ready` condition); the flag is left as it is.
    Failed,
}

impl Phase {
    /// Every phase, in the order a rollout meets them.
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::WaitingForApproval,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Failed,
    ];

    /// The phase's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::WaitingForApproval => "WaitingForApproval",
            Phase::Paused => "Paused",
            Phase::Promoted => "Promoted",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }

    /// Promoted and rolled-back rollouts no longer change the flag by themselves.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

/// Whether a comparison's look had a boundary, and if not, why.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum BoundaryState {
    /// The look had a boundary: it could roll back.
    Set,
    /// No planned look was reached since the last one that decided (each planned look
    /// decides once): the look cannot roll back on the rollout's statistic.
    NotPlannedLook,
    /// The comparison's first look: no spread between looks to estimate the dispersion
    /// from yet.
    FirstLook,
    /// The dispersion's estimate has too few degrees of freedom for a boundary (below
    /// one), but the statistic is below the boundary binomial counts would have, which
    /// any dispersion only raises: no evidence of harm.
    CannotBeReached,
    /// The look had a boundary and the statistic is below it, but at or above the boundary
    /// the estimated dispersion alone would set: only the estimate's uncertainty keeps it
    /// from rolling back. Not evidence of no harm: the look is inconclusive.
    DispersionUncertain,
    /// Not a planned look, and the statistic is at or above the threshold of the last
    /// planned look (which then could not pass): only a planned look can roll back, so
    /// this one is inconclusive and the next planned look decides.
    AwaitingPlannedLook,
    /// The dispersion's estimate has too few degrees of freedom for a boundary (below
    /// one) and the statistic is high enough that the dispersion decides: the look is
    /// inconclusive.
    TooFewDegreesOfFreedom,
    /// The comparison judges users and the candidate has too few of them for its
    /// statistic to reach the look's binomial boundary even if every candidate request had
    /// been bad (with the null imposed, for a harm that hits the candidate's users alike a
    /// user-level statistic is bounded by about the square root of the candidate's
    /// effective users), and the same look judged request by request reaches that boundary
    /// (which who the few candidate users are may explain): the look cannot judge, is
    /// inconclusive and the stage holds, never rolls back. More candidate users decide: a
    /// later look, a higher exposure.
    OutOfReach,
    /// The comparison judges users and the candidate has too few of them to reach the
    /// look's binomial boundary whatever every candidate request had been (as for
    /// `OutOfReach`), and the same look judged request by request is below that boundary:
    /// no harm even with the users' clustering left out, which only understates the
    /// variance. The look passes; judged by requests it could only have held, never rolled
    /// back.
    JudgedByRequests,
}

/// The outcome of one look at the metrics.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Verdict {
    /// No evidence of harm: the stage may end.
    Pass,
    /// Evidence of harm: roll back.
    Fail,
    /// Not enough data yet: hold.
    Inconclusive,
    /// The metrics provider or a query failed: hold, or roll back after `onError`.
    Error,
}

/// What Sluice reports. Status is the controller's only memory: a restarted controller
/// continues from here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureRolloutStatus {
    /// Where the rollout is.
    #[serde(default)]
    pub phase: Phase,
    /// Index (0-based) of the current stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// Name of the current stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_name: Option<String>,
    /// The share of eligible users the flag document serves the candidate now (`"5%"`);
    /// a share of the stage's audience only when `audience` is true.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_served_weight"
    )]
    #[schemars(schema_with = "served_weight_schema")]
    pub weight: Option<Weight>,
    /// Whether `weight` is a share of the current stage's audience only (users outside
    /// the audience get the baseline).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audience: bool,
    /// `weight` and `audience` for people and `kubectl get` (`"5%"`, `"5% of
    /// audience"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<String>,
    /// The stage that waits for `control.approve`, while the phase is
    /// `WaitingForApproval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<AwaitedStage>,
    /// When the current stage began; unset until the first stage begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_started_at: Option<Timestamp>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The value of `control.retry` last acted upon.
    #[serde(default)]
    pub retries: u32,
    /// Errored looks in a row; no longer counted once the rollout holds on an error
    /// that keeps repeating (`onError.consecutive` reached, same error).
    #[serde(default)]
    pub consecutive_errors: u32,
    /// A digest of the flag and target being rolled out; a change starts a new rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A digest of the current stage's exposure (weight and audience); an edit restarts
    /// the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_fingerprint: Option<String>,
    /// What the rollout waits for or why it stopped, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready` (the spec can be carried out), `Progressing` (stages are moving) and
    /// `Held` (something other than time keeps the stage from ending).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The last look at the metrics, in full. Once the rollout holds on analysis errors
    /// (`onError.consecutive` in a row), a look that repeats the same error is not
    /// recorded (nothing in status changes, so nothing is written): this is then the look
    /// that began the hold, its `at` says since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisStatus>,
    /// Changes of phase and exposure, newest last (bounded).
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// What is odd about the plan's looks (accepted, but they will not work as planned),
    /// as `sluice validate` prints it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What each stage can detect at the traffic the first looks observed: `sluice plan`
    /// computed by Sluice itself (simulated rollouts of this spec through the engine and
    /// the analysis) once a stage without an audience has run three analysis intervals,
    /// and again when the stages or the metrics change. Absent until then, and for a
    /// rollout without ratio or histogram metrics. The `PlanCanDetect` condition says
    /// whether every stage catches every metric's tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSummary>,
}

impl FeatureRolloutStatus {
    /// Sets condition `type_`, replacing the one of that type; its `lastTransitionTime`
    /// is kept when the status (`True`/`False`) stays the same, else it is `now`.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        now: Timestamp,
    ) {
        let status = if status { "True" } else { "False" };
        self.set_condition_status(type_, status, reason, message, now);
    }

    /// [`FeatureRolloutStatus::set_condition`] with the status as text: `True`, `False`
    /// or `Unknown` (for a condition nothing could establish yet).
    pub fn set_condition_status(
        &mut self,
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
        now: Timestamp,
    ) {
        let transition = match self.conditions.iter().find(|c| c.type_ == type_) {
            Some(old) if old.status == status => old.last_transition_time,
            _ => now,
        };
        let condition = Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: transition,
            observed_generation: self.observed_generation,
        };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(old) => *old = condition,
            None => self.conditions.push(condition),
        }
    }
}

/// What each stage of a rollout can detect, computed by Sluice from the traffic its first
/// looks observed (the figures of `sluice plan`, in short).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    /// A digest of what the figures depend on (the stages and the analysis: metrics,
    /// tolerances, interval, confidence); when the spec's differs, the plan is computed
    /// again.
    pub digest: String,
    /// When the computation began.
    pub computed_at: Timestamp,
    /// Simulated rollouts per figure (shares are good to about `0.5/sqrt(runs)`).
    pub runs: u32,
    /// The stage (index) whose looks the traffic was taken from.
    pub observed_stage: u32,
    /// Seconds of that stage the traffic was measured over.
    pub observed_seconds: f64,
    /// The traffic the figures assume, per ratio or histogram metric.
    #[serde(default)]
    pub traffic: Vec<PlanTraffic>,
    /// Per stage of the spec except the final promotion: what it detects.
    #[serde(default)]
    pub stages: Vec<PlanStage>,
    /// What the plan warns about, one sentence each (a stage that cannot detect a
    /// tolerance, cannot reach its `minSamples` or sees too little data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why the plan could not be computed (it ran out of time, or failed); the stages
    /// are then empty. It is not tried again until the stages or metrics change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The traffic one metric's figures assume, as the looks observed it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanTraffic {
    /// The metric's name.
    pub metric: String,
    /// Events (requests) per second, both cohorts together.
    pub requests_per_second: f64,
    /// The baseline cohort's share of bad events (errors, slow requests).
    pub baseline_rate: f64,
    /// The increase a stage should catch, as a multiple of the baseline rate: twice the
    /// tolerated increase (`maxIncrease`, `max`), or a doubling when none is tolerated.
    pub target_multiplier: f64,
}

/// What one stage detects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStage {
    /// Its index (0-based) in `spec.stages`.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its exposure (`"1%"`, `"100% of audience"`).
    pub exposure: String,
    /// Its least duration, in minutes.
    pub minutes: f64,
    /// Why it was not simulated (a stage with an audience: its share of the traffic is
    /// unknown); its metrics are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_simulated: Option<String>,
    /// Per ratio or histogram metric.
    #[serde(default)]
    pub metrics: Vec<PlanStageMetric>,
}

/// What one stage detects on one metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStageMetric {
    /// The metric's name.
    pub name: String,
    /// The smallest increase, as a multiple of the baseline rate, rolled back before the
    /// stage ends in at least 80 % of simulated runs. Absent: not detectable, not even at
    /// `searchedUpTo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectable: Option<f64>,
    /// The largest multiple searched.
    pub searched_up_to: f64,
    /// Median minutes from the stage's start to the rollback when the candidate's rate is
    /// twice the baseline's from the stage's start (among the runs rolled back before
    /// promotion). Absent: never rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes_to_catch_doubled: Option<f64>,
    /// The share of runs a doubling is rolled back in while this stage runs.
    pub doubled_caught_in_stage: f64,
    /// Whether the stage catches the metric's target increase (`targetMultiplier`).
    /// Absent when no simulated run reached the stage (earlier stages held them all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detects_tolerance: Option<bool>,
}

/// The stage a rollout waits to have approved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwaitedStage {
    /// Its index (0-based) in `spec.stages`.
    pub index: u32,
    /// Its name: the value `control.approve` must take.
    pub name: String,
}

/// How an exposure reads for people: `"5%"`, or `"5% of audience"` when only the
/// stage's audience is eligible.
pub fn exposure_text(weight: Weight, audience: bool) -> String {
    if audience {
        format!("{weight} of audience")
    } else {
        weight.to_string()
    }
}

/// The schema of a served weight in status: the percentage text `Weight` writes, 0% included.
fn served_weight_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 32,
    })
}

/// A served weight, also in the display form older versions wrote (`"5% of audience"`),
/// so a status written by them still reads.
fn served_weight<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Weight, D::Error> {
    let text = String::deserialize(deserializer)?;
    let number = text.strip_suffix(" of audience").unwrap_or(&text);
    Weight::parse(number).map_err(serde::de::Error::custom)
}

fn optional_served_weight<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Weight>, D::Error> {
    #[derive(Deserialize)]
    struct Served(#[serde(deserialize_with = "served_weight")] Weight);
    Ok(Option::<Served>::deserialize(deserializer)?.map(|s| s.0))
}

/// A condition in the Kubernetes style.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Held`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A PascalCase reason.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Timestamp,
    /// The generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One look at the metrics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the look was made.
    pub at: Timestamp,
    /// The stage (index) it was made in.
    pub stage: u32,
    /// The verdict for the stage.
    pub verdict: Verdict,
    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Candidate requests seen in the stage so far (for `minSamples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_samples: Option<u64>,
    /// Per-metric results.
    #[serde(default)]
    pub metrics: Vec<MetricAnalysis>,
    /// The split of distinct users against the stage's weight, when `analysis.users` is
    /// set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<SampleRatio>,
    /// The candidate's share of requests against the stage's weight. Reported only, never
    /// held on: a few heavy users make it differ even when assignment is perfect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_share: Option<RequestShare>,
}

/// The split of requests between the cohorts (reported, never held on).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestShare {
    /// The candidate share the stage's weight calls for.
    pub expected_share: f64,
    /// The candidate's share of requests observed.
    pub observed_share: f64,
    /// `observed / expected − 1` (−0.3: 30% fewer requests than the weight).
    pub relative_deviation: f64,
}

/// The sample-ratio check: distinct users per cohort against the configured weight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SampleRatio {
    /// Distinct users seen on the baseline in the window.
    pub baseline_users: f64,
    /// Distinct users seen on the candidate in the window.
    pub candidate_users: f64,
    /// The candidate share the stage's weight calls for.
    pub expected_share: f64,
    /// The candidate share observed.
    pub observed_share: f64,
    /// The chi-square test's p-value.
    pub p_value: f64,
    /// Whether the split is a mismatch (p < 0.001): the stage holds.
    pub mismatch: bool,
}

/// The result for one metric at one look.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricAnalysis {
    /// The metric's name.
    pub name: String,
    /// The queries as sent, templates resolved.
    #[serde(default)]
    pub queries: Vec<String>,
    /// The baseline cohort's numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<CohortNumbers>,
    /// The candidate cohort's numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CohortNumbers>,
    /// The estimated harm in the current stage (the candidate's share minus the tolerated
    /// baseline share; for the `max` test, the candidate's share minus `max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<f64>,
    /// For a guard, the threshold crossed; for the `max` test, the lower confidence bound
    /// of the candidate's share minus `max` (the comparison reports `statistic` and
    /// `boundary` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
    /// The test used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// The candidate sample size the `max` test's boundary is tuned for, fixed at the
    /// stage's first look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_target_samples: Option<f64>,
    /// For histogram metrics: how the candidate's distribution moved (Mann-Whitney).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<String>,
    /// The comparison's statistic at this look: a one-sided z-score of the candidate's harm
    /// beyond the tolerance, over every stage so far (stages combined as strata), with the
    /// estimated dispersion and exact small-count tails (positive is worse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    /// The value `statistic` had to reach at this look to roll back (the group-sequential
    /// boundary, widened for the uncertainty of the estimated dispersion). Absent when this
    /// look cannot roll back on it (no planned look reached since the last one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<f64>,
    /// The recent-window statistic: the same z-score over the last few looks only, so a
    /// regression that starts late is not diluted by old healthy data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_statistic: Option<f64>,
    /// The value `recentStatistic` had to reach at this look to roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_boundary: Option<f64>,
    /// The share of this comparison's false-rollback budget spent by the looks so far
    /// (0 to 1): what the plan allotted up to this look, plus any overtime looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_spent: Option<f64>,
    /// The share of the plan's information reached (0 at the start, 1 at the end of the
    /// last analysed stage's duration; above 1 when stages overran their duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub information_fraction: Option<f64>,
    /// The estimated dispersion `κ` of the candidate cohort: the variance of a cohort's
    /// bad events per look is `μ(1 − p) + κμ²`; 0 means binomial. Estimated per cohort
    /// from the successive differences between looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispersion: Option<f64>,
    /// The estimated dispersion `κ` of the baseline cohort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_dispersion: Option<f64>,
    /// Whether this look had a boundary for the rollout's statistic, and if not, why:
    /// `Set`, `DispersionUncertain` (below the boundary but above the one the estimated
    /// dispersion alone would set: inconclusive), `NotPlannedLook` (no planned look
    /// reached since the last one decided),
    /// `AwaitingPlannedLook` (no planned look reached, and the statistic is at or above the
    /// last planned look's threshold: inconclusive until the next planned look decides),
    /// `FirstLook` (the first planned look spends nothing: no spread between looks to
    /// estimate the dispersion from), `CannotBeReached` (too few degrees of freedom for a
    /// boundary, but the statistic is below any boundary one could set) or
    /// `TooFewDegreesOfFreedom` (too few degrees of freedom and a statistic the
    /// dispersion decides: the look is inconclusive), `OutOfReach` (judged by users, the
    /// candidate has too few of them for a harm that hits them alike to reach the binomial
    /// boundary, and request by request the look reaches it: inconclusive, the stage
    /// holds) or `JudgedByRequests` (too few candidate users as for `OutOfReach`, and
    /// request by request the look shows no harm: it passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary_state: Option<BoundaryState>,
    /// The degrees of freedom of the dispersion's estimate (Satterthwaite); the boundary
    /// is widened as for a Student t with these degrees of freedom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrees_of_freedom: Option<f64>,
    /// The user-level variance of the current stage, from the metric's per-user queries
    /// (absent without them: then user clustering is not accounted for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_variance: Option<UserVariance>,
    /// The evidence kept across looks, stages and restarts (sums per stage and cohort, the
    /// last looks' increments). Sluice's memory: do not edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// The metric's verdict.
    pub verdict: Verdict,
    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why, as a code, when something acts on it (a notification that needs a person);
    /// `reason` says it in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<MetricCause>,
}

/// Why a metric's look ended as it did, for decisions (never the message text).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum MetricCause {
    /// A cohort had no data during the whole stage: the query is probably wrong (the
    /// flag key or the cohort label), and the stage holds until somebody looks.
    NoDataAllStage,
}

/// The evidence of one comparison kept across looks: per stage, the sums of the looks'
/// increments; the last looks' increments for the recent window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// One stratum per stage (or restarted stage) so far, oldest first; the last one is the
    /// current stage's when its look is recorded.
    #[serde(default)]
    pub strata: Vec<Stratum>,
    /// The increments of the last looks, oldest first (bounded).
    #[serde(default)]
    pub recent: Vec<Increment>,
    /// The planned look the last decision used (each planned look decides at most once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_look: Option<u32>,
    /// The statistic's level at and above which that planned look did not pass (its
    /// boundary, or the binomial's when it could not set one): a later look between
    /// planned ones at or above it cannot pass either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// The counts of one stage, as sums over its looks' increments.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stratum {
    /// The stage's index.
    pub stage: u32,
    /// When the stage began (a stage restarted by an exposure edit is a new stratum).
    pub started_at: Timestamp,
    /// The stage's exposure, as a fraction.
    pub weight: f64,
    /// The planned information rate of the stage per second (`w(1 − w)`).
    pub rate: f64,
    /// Seconds from the stage's start to its last look.
    pub seconds: f64,
    /// The baseline cohort's sums.
    pub baseline: IncrementSums,
    /// The candidate cohort's sums.
    pub candidate: IncrementSums,
    /// The stage's per-user sums of each cohort at its last look, when the metric has
    /// per-user queries (the user-level variance is computed from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<StratumUsers>,
}

/// Both cohorts' per-user sums in one stage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StratumUsers {
    /// The baseline cohort's.
    pub baseline: UserSums,
    /// The candidate cohort's.
    pub candidate: UserSums,
}

/// Sums over the users of one cohort since the stage began, each user `i` with `n_i`
/// events (requests) and `x_i` bad events (errors, slow requests).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSums {
    /// `Σn`: events.
    pub n: f64,
    /// `Σx`: bad events.
    pub x: f64,
    /// `Σn²`.
    pub nn: f64,
    /// `Σx²`.
    pub xx: f64,
    /// `Σn·x`.
    pub nx: f64,
}

/// The user-level variance of the current stage (users, not requests, are the unit of
/// randomisation): the cluster-robust variance of each cohort's ratio of per-user sums.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserVariance {
    /// The variance of the baseline's share of bad events, at the comparison's null rate.
    pub baseline: f64,
    /// The variance of the candidate's share of bad events, at the comparison's null rate.
    pub candidate: f64,
    /// The baseline's variance over the binomial's (1: users add nothing).
    pub baseline_over_binomial: f64,
    /// The candidate's variance over the binomial's.
    pub candidate_over_binomial: f64,
    /// The baseline's effective number of users, `(Σn)²/Σn²`.
    pub baseline_effective_users: f64,
    /// The candidate's effective number of users.
    pub candidate_effective_users: f64,
    /// The small-sample (leverage) correction applied to what users add, `1/(1 − Σn²/N²)`
    /// over both cohorts.
    pub correction: f64,
}

/// Sums over the increments `(n_j, x_j)` (events, bad events) of one cohort in one stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncrementSums {
    /// Increments summed.
    pub looks: u32,
    /// `Σ n`: events (the stage's cumulative count at its last look).
    pub n: f64,
    /// `Σ x`: bad events.
    pub x: f64,
    /// `Σ x²`.
    pub xx: f64,
    /// `Σ x·n`.
    pub xn: f64,
    /// `Σ n²`.
    pub nn: f64,
    /// `Σ n³`.
    pub nnn: f64,
    /// `Σ n⁴`.
    pub nnnn: f64,
    /// Events of the last increment with events (0: none yet): the next one is paired
    /// with it.
    #[serde(default)]
    pub last_n: f64,
    /// Bad events of that increment.
    #[serde(default)]
    pub last_x: f64,
    /// Sums over the pairs of successive increments with events, for the dispersion's
    /// estimate from successive differences (`d = x_j/n_j − x_{j−1}/n_{j−1}`, weight
    /// `h = (n_j n_{j−1}/(n_j + n_{j−1}))²`, `a = 1/n_j + 1/n_{j−1}`).
    #[serde(default)]
    pub pairs: PairSums,
}

/// Sums over pairs of successive increments (see [`IncrementSums::pairs`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PairSums {
    /// Pairs summed.
    pub count: u32,
    /// `Σ h`.
    pub h: f64,
    /// `Σ h·d²`.
    pub hdd: f64,
    /// `Σ h·a`.
    pub ha: f64,
    /// `Σ h²`.
    pub hh: f64,
    /// `Σ h²·a`.
    pub hha: f64,
    /// `Σ h²·a²`.
    pub hhaa: f64,
    /// `h·d²` of the pair with the largest one (a level shift shows as one such pair).
    #[serde(default)]
    pub largest_hdd: f64,
}

/// The counts one look added, per cohort.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Increment {
    /// Baseline events.
    pub baseline_n: f64,
    /// Baseline bad events.
    pub baseline_x: f64,
    /// Candidate events.
    pub candidate_n: f64,
    /// Candidate bad events.
    pub candidate_x: f64,
}

/// One cohort's numbers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CohortNumbers {
    /// Samples (requests) in the window.
    pub n: f64,
    /// The estimate (a share for ratio and histogram metrics, the value for guards).
    pub value: f64,
}

/// One change of phase or exposure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When.
    pub at: Timestamp,
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
    /// The stage (index) after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// The exposure after (share of eligible users on the candidate).
    #[serde(deserialize_with = "served_weight")]
    #[schemars(schema_with = "served_weight_schema")]
    pub weight: Weight,
    /// Whether `weight` is a share of the stage's audience only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audience: bool,
    /// A PascalCase reason, as on the Event.
    pub reason: String,
    /// Why, in a sentence.
    pub message: String,
}

/// The CRD as YAML, as `sluice crd` prints it and `crds/featurerollout.yaml` holds it.
/// Words YAML 1.1 takes for booleans (the key `on`) are quoted, so that kubectl and Helm
/// read the same CRD.
pub fn crd_yaml() -> String {
    let crd = FeatureRollout::crd();
    let yaml = yaml::quote_yaml_1_1_words(
        &serde_yaml_ng::to_string(&crd).expect("the CRD serializes to YAML"),
    );
    let read: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("the quoted CRD is YAML");
    assert_eq!(
        read,
        serde_json::to_value(&crd).expect("the CRD serializes to JSON"),
        "quoting YAML 1.1 words changed the CRD"
    );
    format!("# Generated by `sluice crd` from src/crd. Do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_written_by_an_older_version_still_reads() {
        // Older versions wrote the display text into `weight`, in status and history.
        let old = serde_json::json!({
            "phase": "Progressing",
            "stage": 0,
            "weight": "5% of audience",
            "history": [{
                "at": "2026-11-24T12:00:00Z", "from": "Pending", "to": "Progressing",
                "stage": 0, "weight": "5% of audience", "reason": "Started", "message": "m"
            }],
        });
        let status: FeatureRolloutStatus = serde_json::from_value(old).unwrap();
        assert_eq!(status.weight, Weight::from_units(50_000));
        assert_eq!(
            status.history[0].weight,
            Weight::from_units(50_000).unwrap()
        );
        // Written again, it is typed: the share, and the audience flag apart.
        let mut status = status;
        status.audience = true;
        status.exposure = Some(exposure_text(status.weight.unwrap(), true));
        let text = serde_json::to_value(&status).unwrap();
        assert_eq!(text["weight"], "5%");
        assert_eq!(text["audience"], true);
        assert_eq!(text["exposure"], "5% of audience");
        let bad = serde_json::json!({ "weight": "lots" });
        let error = serde_json::from_value::<FeatureRolloutStatus>(bad).unwrap_err();
        assert!(error.to_string().contains("\"lots\""), "{error}");
    }
}
