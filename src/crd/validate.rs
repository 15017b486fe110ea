//! The schema's rules, in Rust: every problem at once, each with its field path.
//!
//! The API server enforces the same rules through the CRD schema (bounds, patterns and
//! CEL). Here they serve standalone mode, `sluice validate` and the engine, which only
//! ever plans from a [`ValidSpec`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::SignedDuration;
use serde_json::Value;

use super::units::{parse_duration, parse_percent};
use super::{
    Approval, DEFAULT_COHORT_LABEL, DEFAULT_CONFIDENCE, DEFAULT_INTERVAL, ErrorAction,
    FeatureRolloutSpec, FlagTarget, MetricSpec, OnError, PrometheusSpec, TargetChoiceError, Weight,
};
use crate::analysis::ratio::Tolerance;
use crate::flagd::FlagDefinition;
use crate::prometheus::template::{BUILTIN_VARIABLES, Template, check_variable_name};

/// Most stages a rollout may have.
pub const MAX_STAGES: usize = 32;
/// Most metrics a rollout may have.
pub const MAX_METRICS: usize = 16;

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a path from the resource root (`spec.stages[2].weight`).
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A spec that passed validation, with its values parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// The flag, as the flagd renderer needs it.
    pub flag: FlagDefinition,
    /// Where the flag document lives: the one target the spec names.
    pub target: FlagTarget,
    /// The stages, in order.
    pub stages: Vec<ValidStage>,
    /// Time between looks at the metrics.
    pub interval: SignedDuration,
    /// One minus the false-rollback budget.
    pub confidence: f64,
    /// The metrics, parsed, in the order of `spec.analysis.metrics` (without any, stages
    /// advance on time alone).
    pub metrics: Vec<ValidMetric>,
    /// The distinct-users query of the sample-ratio check, parsed, if any.
    pub users: Option<Template>,
    /// The metric label that tells the cohorts apart.
    pub cohort_label: String,
    /// The user-defined template variables (`spec.analysis.variables`).
    pub variables: BTreeMap<String, String>,
    /// The metrics provider's settings (`spec.analysis.prometheus`), if the spec has its
    /// own.
    pub prometheus: Option<PrometheusSpec>,
    /// What repeated analysis errors do.
    pub on_error: OnError,
    /// Plans whose looks will not work as planned: accepted, but `sluice validate` prints
    /// these and status carries them (`status.warnings`).
    pub warnings: Vec<Problem>,
}

impl ValidSpec {
    /// Whether any metric is configured (without, stages advance on time alone).
    pub fn has_metrics(&self) -> bool {
        !self.metrics.is_empty()
    }
}

/// One metric, parsed: what it measures and what harm it tolerates.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidMetric {
    /// The metric's name, unique in the rollout.
    pub name: String,
    /// What it measures, with its parsed queries and thresholds.
    pub kind: MetricKind,
}

/// What a metric measures: exactly one kind, each with what it needs.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricKind {
    /// Bad events over all events, per cohort.
    Ratio {
        /// The bad events' query (`ratio.errors`).
        errors: Template,
        /// All events' query (`ratio.requests`).
        requests: Template,
        /// The harm tolerated.
        limits: ShareLimits,
        /// The per-user sums' queries (`ratio.perUser`), if any.
        per_user: Option<PerUser>,
    },
    /// The share of observations above a threshold, per cohort, from histogram buckets.
    Histogram {
        /// The buckets' query (`histogram.buckets`).
        buckets: Template,
        /// The bound above which an observation is slow (one of the bucket bounds).
        threshold: f64,
        /// The harm tolerated.
        limits: ShareLimits,
        /// The per-user sums' queries (`histogram.perUser`), if any.
        per_user: Option<PerUser>,
    },
    /// An absolute threshold on one value (the candidate's, or a global one).
    Guard {
        /// The value's query (`guard.query`).
        query: Template,
        /// Fails below this.
        min: Option<f64>,
        /// Fails above this.
        max: Option<f64>,
    },
}

impl MetricKind {
    /// The kind's name, for messages (`ratio`, `histogram`, `guard`).
    pub fn name(&self) -> &'static str {
        match self {
            MetricKind::Ratio { .. } => "ratio",
            MetricKind::Histogram { .. } => "histogram",
            MetricKind::Guard { .. } => "guard",
        }
    }

    /// The harm a ratio or histogram metric tolerates; `None` for a guard.
    pub fn limits(&self) -> Option<&ShareLimits> {
        match self {
            MetricKind::Ratio { limits, .. } | MetricKind::Histogram { limits, .. } => Some(limits),
            MetricKind::Guard { .. } => None,
        }
    }

    /// The query templates, with their field names under the metric.
    pub fn queries(&self) -> Vec<(&'static str, &Template)> {
        let mut out = match self {
            MetricKind::Ratio {
                errors, requests, ..
            } => vec![("ratio.errors", errors), ("ratio.requests", requests)],
            MetricKind::Histogram { buckets, .. } => vec![("histogram.buckets", buckets)],
            MetricKind::Guard { query, .. } => vec![("guard.query", query)],
        };
        if let Some(per_user) = self.per_user() {
            let fields = match self {
                MetricKind::Ratio { .. } => RATIO_PER_USER,
                _ => HISTOGRAM_PER_USER,
            };
            out.extend(fields.into_iter().zip(per_user.queries().map(|(_, t)| t)));
        }
        out
    }

    /// The per-user sums' queries of a ratio or histogram metric, if it has them.
    pub fn per_user(&self) -> Option<&PerUser> {
        match self {
            MetricKind::Ratio { per_user, .. } | MetricKind::Histogram { per_user, .. } => {
                per_user.as_ref()
            }
            MetricKind::Guard { .. } => None,
        }
    }
}

/// The fields of `perUser`, in [`PerUser::queries`]' order.
const PER_USER_FIELDS: [&str; 5] = [
    "requests",
    "bad",
    "requestsSquared",
    "badSquared",
    "requestsTimesBad",
];
const RATIO_PER_USER: [&str; 5] = [
    "ratio.perUser.requests",
    "ratio.perUser.bad",
    "ratio.perUser.requestsSquared",
    "ratio.perUser.badSquared",
    "ratio.perUser.requestsTimesBad",
];
const HISTOGRAM_PER_USER: [&str; 5] = [
    "histogram.perUser.requests",
    "histogram.perUser.bad",
    "histogram.perUser.requestsSquared",
    "histogram.perUser.badSquared",
    "histogram.perUser.requestsTimesBad",
];

/// The parsed queries of the per-user sums of a cohort (`perUser`): `Σn`, `Σx`, `Σn²`,
/// `Σx²` and `Σn·x` over the users.
#[derive(Clone, Debug, PartialEq)]
pub struct PerUser {
    /// `Σn` (`perUser.requests`).
    pub requests: Template,
    /// `Σx` (`perUser.bad`).
    pub bad: Template,
    /// `Σn²` (`perUser.requestsSquared`).
    pub requests_squared: Template,
    /// `Σx²` (`perUser.badSquared`).
    pub bad_squared: Template,
    /// `Σn·x` (`perUser.requestsTimesBad`).
    pub requests_times_bad: Template,
}

impl PerUser {
    /// The five templates with their field names under `perUser`, in the order of
    /// `Σn`, `Σx`, `Σn²`, `Σx²`, `Σn·x`.
    pub fn queries(&self) -> [(&'static str, &Template); 5] {
        [
            (PER_USER_FIELDS[0], &self.requests),
            (PER_USER_FIELDS[1], &self.bad),
            (PER_USER_FIELDS[2], &self.requests_squared),
            (PER_USER_FIELDS[3], &self.bad_squared),
            (PER_USER_FIELDS[4], &self.requests_times_bad),
        ]
    }
}

/// The harm a share metric (ratio or histogram) tolerates: at least one is set.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ShareLimits {
    /// How much worse than the baseline the candidate may be (`maxIncrease`).
    pub max_increase: Option<Tolerance>,
    /// The candidate's share may not be above this fraction (`max`).
    pub max: Option<f64>,
}

impl ShareLimits {
    /// How many tests these limits run at each look (one per limit set).
    pub fn tests(&self) -> usize {
        usize::from(self.max_increase.is_some()) + usize::from(self.max.is_some())
    }
}

/// One stage, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidStage {
    /// The stage's name (`stage-N` when unset).
    pub name: String,
    /// Exposure.
    pub weight: Weight,
    /// JSONLogic audience, if any.
    pub audience: Option<Value>,
    /// Least duration (zero for a final stage without one).
    pub duration: SignedDuration,
    /// Least candidate samples.
    pub min_samples: Option<u64>,
    /// Whether the stage waits for approval before it starts.
    pub approval: Approval,
}

/// Operators flagd's JSONLogic evaluators understand (JSONLogic's own plus flagd's).
const JSON_LOGIC_OPERATORS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    ">",
    ">=",
    "<",
    "<=",
    "max",
    "min",
    "+",
    "-",
    "*",
    "/",
    "%",
    "map",
    "reduce",
    "filter",
    "all",
    "none",
    "some",
    "merge",
    "in",
    "cat",
    "substr",
    "log",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
    "$ref",
];

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks a spec and parses it, or lists every problem found.
pub fn validate(spec: &FeatureRolloutSpec) -> Result<ValidSpec, Vec<Problem>> {
    let mut p = Problems(Vec::new());

    check_flag(spec, &mut p);
    let target = check_target(spec, &mut p);
    let has_metrics = spec
        .analysis
        .as_ref()
        .is_some_and(|a| !a.metrics.is_empty());
    let stages = check_stages(spec, has_metrics, &mut p);
    let analysis = check_analysis(spec, &mut p);
    check_notifications(spec, &mut p);
    // `control.approve` naming no stage is not an error: it approves nothing, and the
    // waiting message names the stage that waits.

    // No target means a problem was listed.
    let target = match target {
        Some(target) if p.0.is_empty() => target,
        _ => return Err(p.0),
    };
    let flag = FlagDefinition {
        key: spec.flag.key.clone(),
        variants: spec
            .flag
            .variants
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        baseline: spec.flag.baseline.clone(),
        candidate: spec.flag.candidate.clone(),
    };
    let mut valid = ValidSpec {
        flag,
        target,
        stages,
        interval: analysis.interval,
        confidence: analysis.confidence,
        metrics: analysis.metrics,
        users: analysis.users,
        cohort_label: analysis.cohort_label,
        variables: analysis.variables,
        prometheus: analysis.prometheus,
        on_error: analysis.on_error,
        warnings: Vec::new(),
    };
    if valid.has_metrics() {
        valid.warnings = plan_warnings(&valid);
    }
    Ok(valid)
}

/// The least share of the plan's information a first stage should hold: the spending
/// puts about 59 % of the comparison's budget in the first stage whatever its size
/// ([`crate::analysis::compare::FIRST_STAGE_RATE`]), and below this share the first stage
/// sees so few events that most of that budget is spent where nothing can be detected.
pub const FIRST_STAGE_MIN_SHARE: f64 = 0.001;

/// What is odd about a valid plan's looks: an interval longer than an analysed stage (the
/// stage gets only the look at its end), and a first stage holding so little of the
/// plan's information that the spending degenerates.
fn plan_warnings(valid: &ValidSpec) -> Vec<Problem> {
    let mut warnings = Vec::new();
    for (i, stage) in valid.stages.iter().enumerate() {
        if !stage.duration.is_zero() && valid.interval > stage.duration {
            warnings.push(Problem {
                field: "spec.analysis.interval".into(),
                message: format!(
                    "{:#} is longer than stage {:?} ({:#}, spec.stages[{i}].duration): the stage gets one look, at its end, and its harm is judged only then",
                    valid.interval,
                    stage.name,
                    stage.duration
                ),
            });
        }
    }
    for (i, metric) in valid.metrics.iter().enumerate() {
        let compared = metric
            .kind
            .limits()
            .is_some_and(|l| l.max_increase.is_some());
        if compared && metric.kind.per_user().is_none() {
            warnings.push(Problem {
                field: format!("spec.analysis.metrics[{i}].{}.perUser", metric.kind.name()),
                message: format!(
                    "is not set: metric {:?} judges requests as if they were independent, so user clustering is not accounted for (a few heavy users who fail more for reasons of their own can roll a healthy flag back); set perUser to the per-user sums your instrumentation exports",
                    metric.name
                ),
            });
        }
    }
    let plan = crate::analysis::compare::Plan::new(valid);
    let first_share = crate::analysis::compare::FIRST_STAGE_RATE / plan.gamma;
    if plan.total > 0.0 && first_share < FIRST_STAGE_MIN_SHARE {
        warnings.push(Problem {
            field: "spec.stages[0].weight".into(),
            message: format!(
                "the first stage holds {:.1e} of the plan's information (exposure × (1 − exposure) × duration), under {FIRST_STAGE_MIN_SHARE}: the comparison spends about 59% of its budget during the first stage, where too few events can be seen, and little is left for the later stages; give the first stage more exposure or a longer duration",
                first_share
            ),
        });
    }
    warnings
}

fn check_flag(spec: &FeatureRolloutSpec, p: &mut Problems) {
    let flag = &spec.flag;
    if flag.key.trim().is_empty() {
        p.add(
            "spec.flag.key",
            "is empty: name the flag key the application evaluates",
        );
    } else if flag.key.len() > 256 {
        p.add("spec.flag.key", "is longer than 256 characters");
    }
    if flag.variants.len() < 2 {
        p.add(
            "spec.flag.variants",
            "needs at least two variants (the baseline and the candidate)",
        );
    }
    for name in flag.variants.keys() {
        if name.is_empty() {
            p.add("spec.flag.variants", "has a variant with an empty name");
        }
    }
    if flag.baseline == flag.candidate {
        p.add(
            "spec.flag.candidate",
            format!(
                "equals the baseline {:?}: the candidate must be a different variant",
                flag.baseline
            ),
        );
    }
    for (field, name) in [
        ("spec.flag.baseline", &flag.baseline),
        ("spec.flag.candidate", &flag.candidate),
    ] {
        if !flag.variants.contains_key(name) {
            let known: Vec<&str> = flag.variants.keys().map(String::as_str).collect();
            p.add(
                field,
                format!("{name:?} is not one of the variants {known:?}"),
            );
        }
    }
}

fn check_target(spec: &FeatureRolloutSpec, p: &mut Problems) -> Option<FlagTarget> {
    let t = &spec.target;
    let chosen = t.choice();
    match chosen {
        Err(TargetChoiceError::None) => p.add(
            "spec.target",
            "sets none of configMap, featureFlag or file: set exactly one",
        ),
        Err(TargetChoiceError::Several) => p.add(
            "spec.target",
            "sets more than one of configMap, featureFlag or file: set exactly one",
        ),
        Ok(_) => {}
    }
    if let Some(cm) = &t.config_map {
        if cm.name.is_empty() {
            p.add("spec.target.configMap.name", "is empty");
        }
        if cm.key.is_empty() {
            p.add("spec.target.configMap.key", "is empty");
        }
    }
    if let Some(ff) = &t.feature_flag
        && ff.name.is_empty()
    {
        p.add("spec.target.featureFlag.name", "is empty");
    }
    if let Some(file) = &t.file
        && file.path.is_empty()
    {
        p.add("spec.target.file.path", "is empty");
    }
    chosen.ok()
}

fn check_stages(spec: &FeatureRolloutSpec, has_metrics: bool, p: &mut Problems) -> Vec<ValidStage> {
    if spec.stages.is_empty() {
        p.add(
            "spec.stages",
            "is empty: a rollout needs at least one stage, the last at 100%",
        );
        return Vec::new();
    }
    if spec.stages.len() > MAX_STAGES {
        p.add(
            "spec.stages",
            format!(
                "has {} stages; at most {MAX_STAGES} are allowed",
                spec.stages.len()
            ),
        );
    }
    let mut names = BTreeSet::new();
    let mut stages = Vec::with_capacity(spec.stages.len());
    let mut previous: Option<(usize, Weight)> = None;
    let mut seen_general = false;
    let last = spec.stages.len() - 1;
    for (i, stage) in spec.stages.iter().enumerate() {
        let at = |field: &str| format!("spec.stages[{i}].{field}");
        let name = stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", i + 1));
        if stage.name.is_some() && !is_dns_label(&name) {
            p.add(
                at("name"),
                format!(
                    "{name:?} must be lowercase letters, digits and '-', at most 63 characters"
                ),
            );
        }
        if !names.insert(name.clone()) {
            p.add(
                at("name"),
                format!("{name:?} is used by an earlier stage: stage names must be unique"),
            );
        }
        if stage.weight == Weight::ZERO {
            p.add(at("weight"), "is 0%: every stage must expose someone");
        }
        if let Some(audience) = &stage.audience {
            if seen_general {
                p.add(
                    at("audience"),
                    "audience stages must come before all stages without an audience",
                );
            }
            if let Err(message) = check_json_logic(audience) {
                p.add(
                    at("audience"),
                    format!("is not a JSONLogic rule: {message}"),
                );
            }
        } else {
            seen_general = true;
            if let Some((j, before)) = previous
                && stage.weight < before
            {
                p.add(
                    at("weight"),
                    format!(
                        "{} is below stage {j}'s {before}: weights must never decrease",
                        stage.weight
                    ),
                );
            }
            previous = Some((i, stage.weight));
        }
        let full = stage.audience.is_none() && stage.weight == Weight::FULL;
        let duration = match &stage.duration {
            Some(text) => match parse_duration(text) {
                Ok(d) if d.is_positive() => d,
                Ok(_) => {
                    p.add(at("duration"), format!("{text:?} is not above zero"));
                    SignedDuration::ZERO
                }
                Err(message) => {
                    p.add(at("duration"), message);
                    SignedDuration::ZERO
                }
            },
            None if full => SignedDuration::ZERO,
            None => {
                p.add(
                    at("duration"),
                    "is missing: every stage below 100% (and every audience stage) needs one",
                );
                SignedDuration::ZERO
            }
        };
        if stage.min_samples == Some(0) {
            p.add(at("minSamples"), "is 0: leave it out or set at least 1");
        }
        if stage.min_samples.is_some() && !has_metrics {
            p.add(at("minSamples"), "needs analysis.metrics to count samples");
        }
        if i == last && !full {
            p.add(
                at("weight"),
                "the last stage must be 100% with no audience: it ends in promotion",
            );
        }
        stages.push(ValidStage {
            name,
            weight: stage.weight,
            audience: stage.audience.clone(),
            duration,
            min_samples: stage.min_samples,
            approval: stage.approval,
        });
    }
    stages
}

/// A JSONLogic rule is an object with one key, a known operator, all the way down.
fn check_json_logic(rule: &Value) -> Result<(), String> {
    match rule {
        Value::Object(map) => {
            if map.len() != 1 {
                return Err(format!("an object must have exactly one key, the operator; found {}", map.len()));
            }
            let (op, args) = map.iter().next().expect("one entry");
            if !JSON_LOGIC_OPERATORS.contains(&op.as_str()) {
                return Err(format!("unknown operator {op:?}"));
            }
            if op != "var" {
                check_json_logic_args(args)?;
            }
            Ok(())
        }
        _ => Err("the rule must be an object like {\"ends_with\": [{\"var\": \"email\"}, \"@example.com\"]}".into()),
    }
}

fn check_json_logic_args(args: &Value) -> Result<(), String> {
    match args {
        Value::Object(_) => check_json_logic(args),
        Value::Array(items) => items.iter().try_for_each(check_json_logic_args),
        _ => Ok(()),
    }
}

/// Most webhooks one rollout may name.
pub const MAX_NOTIFICATIONS: usize = 8;

fn check_notifications(spec: &FeatureRolloutSpec, p: &mut Problems) {
    if spec.notifications.len() > MAX_NOTIFICATIONS {
        p.add(
            "spec.notifications",
            format!(
                "has {} webhooks: at most {MAX_NOTIFICATIONS} are allowed",
                spec.notifications.len()
            ),
        );
    }
    for (i, n) in spec.notifications.iter().enumerate() {
        // The URL may carry a token: the messages never repeat it.
        if let Err(message) = check_webhook_url(&n.url) {
            p.add(format!("spec.notifications[{i}].url"), message);
        }
        let mut seen = BTreeSet::new();
        for trigger in &n.on {
            if !seen.insert(format!("{trigger:?}")) {
                p.add(
                    format!("spec.notifications[{i}].on"),
                    format!("names {trigger:?} twice"),
                );
            }
        }
    }
}

/// Checks a webhook URL without repeating it (it may carry a token): `http` or `https`,
/// with a host, at most 2048 characters.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("is longer than 2048 characters".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "has the scheme {:?}: use http or https",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}

/// `spec.analysis`, parsed (defaults where it is unset).
struct ValidAnalysis {
    interval: SignedDuration,
    confidence: f64,
    metrics: Vec<ValidMetric>,
    users: Option<Template>,
    cohort_label: String,
    variables: BTreeMap<String, String>,
    prometheus: Option<PrometheusSpec>,
    on_error: OnError,
}

fn check_analysis(spec: &FeatureRolloutSpec, p: &mut Problems) -> ValidAnalysis {
    let default_interval = parse_duration(DEFAULT_INTERVAL).expect("the default interval parses");
    let Some(analysis) = &spec.analysis else {
        return ValidAnalysis {
            interval: default_interval,
            confidence: DEFAULT_CONFIDENCE,
            metrics: Vec::new(),
            users: None,
            cohort_label: DEFAULT_COHORT_LABEL.to_owned(),
            variables: BTreeMap::new(),
            prometheus: None,
            on_error: OnError::default(),
        };
    };
    let interval = match analysis.interval.as_deref().map(parse_duration) {
        None => default_interval,
        Some(Ok(d)) if d >= SignedDuration::from_secs(1) => d,
        Some(Ok(d)) if d.is_positive() => {
            p.add(
                "spec.analysis.interval",
                format!(
                    "{d:#} is below 1s: the plan counts its looks in whole seconds (and Prometheus' scrape interval is rarely under 10s), so looks would come more often than planned"
                ),
            );
            default_interval
        }
        Some(Ok(_)) => {
            p.add("spec.analysis.interval", "is not above zero");
            default_interval
        }
        Some(Err(message)) => {
            p.add("spec.analysis.interval", message);
            default_interval
        }
    };
    let confidence = analysis.confidence.unwrap_or(DEFAULT_CONFIDENCE);
    if !(0.5..=0.9999).contains(&confidence) {
        p.add(
            "spec.analysis.confidence",
            format!("{confidence} is outside [0.5, 0.9999]"),
        );
    }
    if let Some(label) = &analysis.cohort_label
        && !is_prometheus_label(label)
    {
        p.add(
            "spec.analysis.cohortLabel",
            format!("{label:?} is not a Prometheus label name"),
        );
    }
    if let Some(prom) = &analysis.prometheus {
        if !(prom.address.starts_with("http://") || prom.address.starts_with("https://")) {
            p.add(
                "spec.analysis.prometheus.address",
                format!("{:?} must start with http:// or https://", prom.address),
            );
        }
        if let Some(timeout) = &prom.timeout {
            match parse_duration(timeout) {
                Ok(d) if d.is_positive() => {}
                Ok(_) => p.add("spec.analysis.prometheus.timeout", "is not above zero"),
                Err(message) => p.add("spec.analysis.prometheus.timeout", message),
            }
        }
    }
    if analysis.metrics.len() > MAX_METRICS {
        p.add(
            "spec.analysis.metrics",
            format!(
                "has {} metrics; at most {MAX_METRICS} are allowed",
                analysis.metrics.len()
            ),
        );
    }
    check_string_map("spec.analysis.variables", &analysis.variables, p);
    if let Some(prom) = &analysis.prometheus {
        check_string_map("spec.analysis.prometheus.headers", &prom.headers, p);
    }
    for name in analysis.variables.keys() {
        if let Err(e) = check_variable_name(name) {
            p.add(format!("spec.analysis.variables.{name}"), e.to_string());
        } else if BUILTIN_VARIABLES.contains(&name.as_str()) {
            p.add(
                format!("spec.analysis.variables.{name}"),
                format!("{name:?} is a built-in variable and cannot be redefined"),
            );
        }
    }
    let user_variables: Vec<&str> = analysis.variables.keys().map(String::as_str).collect();
    if let Some(users) = &analysis.users {
        check_template("spec.analysis.users".into(), users, &user_variables, p);
    }
    let mut names = BTreeSet::new();
    let mut metrics = Vec::with_capacity(analysis.metrics.len());
    for (i, metric) in analysis.metrics.iter().enumerate() {
        for (field, query) in queries(metric) {
            check_template(
                format!("spec.analysis.metrics[{i}].{field}"),
                query,
                &user_variables,
                p,
            );
        }
        if !names.insert(metric.name.as_str()) {
            p.add(
                format!("spec.analysis.metrics[{i}].name"),
                format!("{:?} is used by an earlier metric", metric.name),
            );
        }
        let problems_before = p.0.len();
        check_metric(i, metric, p);
        match parse_metric(metric) {
            Some(parsed) => metrics.push(parsed),
            // Every reason a metric does not parse is a problem already listed; this
            // keeps the promise that a valid spec holds every metric.
            None if p.0.len() == problems_before => p.add(
                format!("spec.analysis.metrics[{i}]"),
                "cannot be parsed: set exactly one of ratio, histogram or guard, with its queries and thresholds",
            ),
            None => {}
        }
    }
    let users = analysis
        .users
        .as_deref()
        .and_then(|users| Template::parse(users).ok());
    let on_error = analysis.on_error.clone().unwrap_or_default();
    if on_error.consecutive == 0 {
        p.add("spec.analysis.onError.consecutive", "is 0: set at least 1");
    }
    if on_error.action == ErrorAction::Rollback && analysis.metrics.is_empty() {
        p.add(
            "spec.analysis.onError.action",
            "rollback needs analysis.metrics",
        );
    }
    ValidAnalysis {
        interval,
        confidence,
        metrics,
        users,
        cohort_label: analysis
            .cohort_label
            .clone()
            .unwrap_or_else(|| DEFAULT_COHORT_LABEL.to_owned()),
        variables: analysis.variables.clone(),
        prometheus: analysis.prometheus.clone(),
        on_error,
    }
}

/// A metric's typed form, when everything in it parses (its problems are listed by
/// [`check_metric`] and [`check_template`]).
fn parse_metric(metric: &MetricSpec) -> Option<ValidMetric> {
    let template = |query: &str| Template::parse(query).ok();
    let limits = || -> Option<ShareLimits> {
        let max_increase = match &metric.max_increase {
            None => None,
            Some(t) => Some(match (&t.relative, &t.absolute) {
                (Some(r), None) => Tolerance::Relative(parse_percent(r).ok()?),
                (None, Some(a)) => Tolerance::Absolute(parse_percent(a).ok()?),
                _ => return None,
            }),
        };
        let max = match &metric.max {
            None => None,
            Some(text) => Some(parse_percent(text).ok()?),
        };
        let limits = ShareLimits { max_increase, max };
        (limits.tests() > 0).then_some(limits)
    };
    let per_user = |queries: &Option<crate::crd::PerUserQueries>| -> Option<Option<PerUser>> {
        match queries {
            None => Some(None),
            Some(q) => Some(Some(PerUser {
                requests: template(&q.requests)?,
                bad: template(&q.bad)?,
                requests_squared: template(&q.requests_squared)?,
                bad_squared: template(&q.bad_squared)?,
                requests_times_bad: template(&q.requests_times_bad)?,
            })),
        }
    };
    let kind = match (&metric.ratio, &metric.histogram, &metric.guard) {
        (Some(ratio), None, None) => MetricKind::Ratio {
            errors: template(&ratio.errors)?,
            requests: template(&ratio.requests)?,
            limits: limits()?,
            per_user: per_user(&ratio.per_user)?,
        },
        (None, Some(histogram), None) => MetricKind::Histogram {
            buckets: template(&histogram.buckets)?,
            threshold: histogram.threshold,
            limits: limits()?,
            per_user: per_user(&histogram.per_user)?,
        },
        (None, None, Some(guard)) => MetricKind::Guard {
            query: template(&guard.query)?,
            min: guard.min,
            max: guard.max,
        },
        _ => return None,
    };
    Some(ValidMetric {
        name: metric.name.clone(),
        kind,
    })
}

/// Most entries, and longest value, of `variables` and `headers` (as the schema says).
fn check_string_map(
    field: &str,
    map: &std::collections::BTreeMap<String, String>,
    p: &mut Problems,
) {
    if map.len() > 32 {
        p.add(
            field,
            format!("has {} entries; at most 32 are allowed", map.len()),
        );
    }
    for (name, value) in map {
        if value.len() > 1024 {
            p.add(format!("{field}.{name}"), "is longer than 1024 characters");
        }
    }
}

/// The query templates of a metric as written, with their field names (the typed form is
/// [`MetricKind::queries`]).
fn queries<'a>(metric: &'a MetricSpec) -> Vec<(&'static str, &'a str)> {
    let mut out = Vec::new();
    let per_user = |out: &mut Vec<(&'static str, &'a str)>,
                    fields: [&'static str; 5],
                    q: &'a Option<crate::crd::PerUserQueries>| {
        if let Some(q) = q {
            for (field, query) in fields.into_iter().zip([
                &q.requests,
                &q.bad,
                &q.requests_squared,
                &q.bad_squared,
                &q.requests_times_bad,
            ]) {
                out.push((field, query.as_str()));
            }
        }
    };
    if let Some(ratio) = &metric.ratio {
        out.push(("ratio.errors", ratio.errors.as_str()));
        out.push(("ratio.requests", ratio.requests.as_str()));
        per_user(&mut out, RATIO_PER_USER, &ratio.per_user);
    }
    if let Some(histogram) = &metric.histogram {
        out.push(("histogram.buckets", histogram.buckets.as_str()));
        per_user(&mut out, HISTOGRAM_PER_USER, &histogram.per_user);
    }
    if let Some(guard) = &metric.guard {
        out.push(("guard.query", guard.query.as_str()));
    }
    out
}

/// A query template must parse and use only built-in or declared variables.
fn check_template(field: String, query: &str, user_variables: &[&str], p: &mut Problems) {
    let checked =
        Template::parse(query).and_then(|t| t.check_variables(user_variables.iter().copied()));
    if let Err(e) = checked {
        p.add(field, e.to_string());
    }
}

fn check_metric(i: usize, metric: &MetricSpec, p: &mut Problems) {
    let at = |field: &str| format!("spec.analysis.metrics[{i}].{field}");
    if !is_dns_label(&metric.name) {
        p.add(
            at("name"),
            format!(
                "{:?} must be lowercase letters, digits and '-', at most 63 characters",
                metric.name
            ),
        );
    }
    let kinds = [
        metric.ratio.is_some(),
        metric.histogram.is_some(),
        metric.guard.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => p.add(
            format!("spec.analysis.metrics[{i}]"),
            "sets none of ratio, histogram or guard: set exactly one",
        ),
        1 => {}
        _ => p.add(
            format!("spec.analysis.metrics[{i}]"),
            "sets more than one of ratio, histogram or guard: set exactly one",
        ),
    }
    if let Some(ratio) = &metric.ratio {
        for (field, query) in [
            ("ratio.errors", &ratio.errors),
            ("ratio.requests", &ratio.requests),
        ] {
            if query.trim().is_empty() {
                p.add(at(field), "is empty");
            }
        }
    }
    if let Some(histogram) = &metric.histogram {
        if histogram.buckets.trim().is_empty() {
            p.add(at("histogram.buckets"), "is empty");
        }
        if !(histogram.threshold.is_finite() && histogram.threshold >= 0.0) {
            p.add(
                at("histogram.threshold"),
                format!(
                    "{} is not a finite number at or above 0",
                    histogram.threshold
                ),
            );
        }
    }
    if let Some(guard) = &metric.guard {
        if guard.query.trim().is_empty() {
            p.add(at("guard.query"), "is empty");
        }
        if guard.max.is_none() && guard.min.is_none() {
            p.add(at("guard"), "needs max, min or both");
        }
        if let (Some(min), Some(max)) = (guard.min, guard.max)
            && min > max
        {
            p.add(at("guard.min"), format!("{min} is above guard.max {max}"));
        }
        if metric.max_increase.is_some() || metric.max.is_some() {
            p.add(
                at("guard"),
                "takes its thresholds in guard.max / guard.min, not maxIncrease or max",
            );
        }
    } else if metric.max_increase.is_none()
        && metric.max.is_none()
        && (metric.ratio.is_some() || metric.histogram.is_some())
    {
        p.add(
            at("maxIncrease"),
            "is missing: a ratio or histogram metric needs maxIncrease, max or both",
        );
    }
    if let Some(tolerance) = &metric.max_increase {
        match (&tolerance.relative, &tolerance.absolute) {
            (Some(_), Some(_)) | (None, None) => p.add(
                at("maxIncrease"),
                "sets exactly one of relative or absolute",
            ),
            (Some(text), None) => check_percent(at("maxIncrease.relative"), text, p),
            (None, Some(text)) => check_percent(at("maxIncrease.absolute"), text, p),
        }
    }
    if let Some(text) = &metric.max {
        check_percent(at("max"), text, p);
    }
}

fn check_percent(field: String, text: &str, p: &mut Problems) {
    if let Err(message) = parse_percent(text) {
        p.add(field, message);
    }
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_prometheus_label(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stages: &str, interval: &str) -> FeatureRolloutSpec {
        let yaml = format!(
            r#"
flag: {{ key: k, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
target: {{ file: {{ path: flags.json }} }}
stages:
{stages}
analysis:
  interval: {interval}
  metrics:
    - name: errors
      ratio: {{ errors: "e", requests: "r" }}
      maxIncrease: {{ relative: "0%" }}
"#
        );
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    #[test]
    fn a_compared_metric_without_per_user_queries_is_warned_about_once() {
        let usual = "  - { weight: 1, duration: 10m }\n  - { weight: 5, duration: 10m }\n  - { weight: 100 }";
        let warnings = validate(&spec(usual, "1m")).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, "spec.analysis.metrics[0].ratio.perUser");
        assert!(
            warnings[0]
                .message
                .contains("user clustering is not accounted for"),
            "{warnings:?}"
        );
        let with = spec(usual, "1m");
        let mut with = with;
        let q = |s: &str| {
            format!("sum by (feature_flag_result_variant) (increase({s}[{{{{ window }}}}]))")
        };
        with.analysis.as_mut().unwrap().metrics[0]
            .ratio
            .as_mut()
            .unwrap()
            .per_user = Some(crate::crd::PerUserQueries {
            requests: q("n"),
            bad: q("x"),
            requests_squared: q("nn"),
            bad_squared: q("xx"),
            requests_times_bad: q("nx"),
        });
        let valid = validate(&with).unwrap();
        assert_eq!(valid.warnings, vec![]);
        let fields: Vec<&str> = valid.metrics[0]
            .kind
            .queries()
            .iter()
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(
            fields,
            [
                "ratio.errors",
                "ratio.requests",
                "ratio.perUser.requests",
                "ratio.perUser.bad",
                "ratio.perUser.requestsSquared",
                "ratio.perUser.badSquared",
                "ratio.perUser.requestsTimesBad"
            ]
        );
        // An unknown variable in a per-user query is refused, naming the field.
        with.analysis.as_mut().unwrap().metrics[0]
            .ratio
            .as_mut()
            .unwrap()
            .per_user
            .as_mut()
            .unwrap()
            .bad_squared = "xx{a=\"{{ nope }}\"}".into();
        let problems = validate(&with).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.field == "spec.analysis.metrics[0].ratio.perUser.badSquared"),
            "{problems:?}"
        );
    }

    /// The warnings of `spec` other than the one about per-user queries.
    fn plan_only(spec: &FeatureRolloutSpec) -> Vec<Problem> {
        let mut warnings = validate(spec).unwrap().warnings;
        warnings.retain(|w| !w.field.ends_with(".perUser"));
        warnings
    }

    #[test]
    fn odd_plans_are_warned_about_or_refused() {
        let usual = "  - { weight: 1, duration: 10m }\n  - { weight: 5, duration: 10m }\n  - { weight: 100 }";
        assert_eq!(plan_only(&spec(usual, "1m")), vec![]);
        // Looks every 20 minutes on 15-minute stages: each stage gets one look.
        let long = "  - { weight: 1, duration: 15m }\n  - { weight: 5, duration: 15m }\n  - { weight: 100 }";
        let warnings = plan_only(&spec(long, "20m"));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(warnings[0].field, "spec.analysis.interval");
        assert!(warnings[0].message.contains("stage-1"), "{warnings:?}");
        // A first stage of 0.0001 %: most of the budget where nothing can be seen.
        let tiny = "  - { weight: \"0.0001%\", duration: 10m }\n  - { weight: 50, duration: 10m }\n  - { weight: 100 }";
        let warnings = plan_only(&spec(tiny, "1m"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, "spec.stages[0].weight");
        assert!(warnings[0].message.contains("59%"), "{warnings:?}");
        // A sub-second interval is refused, naming the field.
        let problems = validate(&spec(usual, "500ms")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.analysis.interval");
        assert!(problems[0].message.contains("below 1s"), "{problems:?}");
    }
}
