//! What the analysis observes, and the trait a metrics provider implements to observe it.
//!
//! A look asks a [`MetricsProvider`] for each metric of a [`ValidSpec`] over the look's
//! [`LookWindow`] and gets back a [`Measurement`]: the queries as sent (for status) and
//! either the per-cohort [`Observed`] values or a typed [`ProviderError`]. The analysis
//! never knows which system answered: Prometheus is one provider
//! (its client implements this trait in its own module); the simulator and tests provide
//! counts from memory. Adding a provider is one module implementing this trait, plus its registration
//! where the shells pick the provider for a spec.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

pub use super::histogram::Buckets;
use super::judge::LookAt;
pub use super::users::UserSums;
use crate::crd::validate::{ValidMetric, ValidSpec};

/// Where the rollout lives, for providers whose queries name it (Prometheus'
/// `{{ namespace }}` and `{{ rollout }}` variables).
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRef<'a> {
    /// The namespace (empty in standalone mode).
    pub namespace: &'a str,
    /// The rollout's name.
    pub name: &'a str,
}

/// The stretch of time one look observes: from the stage's start to the look.
#[derive(Clone, Debug, PartialEq)]
pub struct LookWindow<'a> {
    /// The rollout looked at.
    pub rollout: RolloutRef<'a>,
    /// When the stage began (the window's start).
    pub started_at: Timestamp,
    /// The evaluation time (the window's end).
    pub now: Timestamp,
    /// The window's length, at least one second.
    pub length: Duration,
}

impl<'a> LookWindow<'a> {
    /// The window of the look `at` on `rollout`.
    pub fn new(rollout: RolloutRef<'a>, at: LookAt) -> Self {
        let elapsed = at
            .now
            .duration_since(at.stage_started_at)
            .max(SignedDuration::from_secs(1));
        LookWindow {
            rollout,
            started_at: at.stage_started_at,
            now: at.now,
            length: Duration::try_from(elapsed).unwrap_or(Duration::from_secs(1)),
        }
    }
}

/// A value for each cohort; `None` means the cohort has no data yet (its series appears
/// only after its first event).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerCohort<T> {
    /// The baseline cohort's value, if it has data.
    pub baseline: Option<T>,
    /// The candidate cohort's value, if it has data.
    pub candidate: Option<T>,
}

impl<T> PerCohort<T> {
    /// Whether both cohorts have data.
    pub fn is_complete(&self) -> bool {
        self.baseline.is_some() && self.candidate.is_some()
    }

    /// Whether neither cohort has data (an empty result).
    pub fn is_empty(&self) -> bool {
        self.baseline.is_none() && self.candidate.is_none()
    }
}

/// What a provider observed for one metric, by the metric's kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Bad and total events per cohort (a ratio metric).
    Ratio {
        /// Bad events (errors) per cohort.
        bad: PerCohort<f64>,
        /// All events (requests) per cohort.
        total: PerCohort<f64>,
        /// Each cohort's per-user sums of events and bad events in the stage, when the
        /// metric has per-user queries (`None`: it has none, and the variance is the
        /// request-level one).
        users: Option<PerCohort<UserSums>>,
    },
    /// Histogram buckets per cohort (a histogram metric).
    Histogram {
        /// The buckets per cohort.
        buckets: PerCohort<Buckets>,
        /// Each cohort's per-user sums of requests and slow requests, when the metric has
        /// per-user queries.
        users: Option<PerCohort<UserSums>>,
    },
    /// A guard's value: the candidate cohort's, or one global value.
    Guard {
        /// The value per cohort, when the query is split by cohort.
        cohorts: PerCohort<f64>,
        /// The single value, when it is not.
        global: Option<f64>,
    },
}

impl Observed {
    /// The kind's name, for messages (`ratio`, `histogram`, `guard`).
    pub fn kind(&self) -> &'static str {
        match self {
            Observed::Ratio { .. } => "ratio",
            Observed::Histogram { .. } => "histogram",
            Observed::Guard { .. } => "guard",
        }
    }
}

/// Why a provider has no observation for a metric.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// A query got no usable answer: it could not be rendered or sent, it was refused,
    /// or it timed out.
    #[error("query {query:?} failed: {message}")]
    Query {
        /// The query as sent (or its source, when it could not be rendered).
        query: String,
        /// A bounded name for metrics labels.
        category: &'static str,
        /// What failed, without secrets.
        message: String,
    },
    /// The answer does not read as the metric's cohorts (a wrong shape, a missing cohort
    /// label, two series for one cohort, a NaN, broken histogram buckets).
    #[error("{message}")]
    Answer {
        /// A bounded name for metrics labels.
        category: &'static str,
        /// What is wrong with the answer.
        message: String,
    },
    /// No provider could be asked (none is configured, or its client cannot be made).
    #[error("{0}")]
    Unavailable(String),
}

impl ProviderError {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            ProviderError::Query { category, .. } | ProviderError::Answer { category, .. } => {
                category
            }
            ProviderError::Unavailable(_) => "unavailable",
        }
    }

    /// What failed, without naming the query.
    pub fn detail(&self) -> &str {
        match self {
            ProviderError::Query { message, .. }
            | ProviderError::Answer { message, .. }
            | ProviderError::Unavailable(message) => message,
        }
    }
}

/// One answer of a provider: the queries as sent, and what they observed or why not.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement<T> {
    /// The queries as sent, for status (empty when nothing was sent).
    pub queries: Vec<String>,
    /// The observation, or why there is none.
    pub result: Result<T, ProviderError>,
}

impl<T> Measurement<T> {
    /// An observation made without queries to show (the simulator, tests).
    pub fn observed(value: T) -> Self {
        Measurement {
            queries: Vec::new(),
            result: Ok(value),
        }
    }

    /// A failure with no queries sent.
    pub fn failed(error: ProviderError) -> Self {
        Measurement {
            queries: Vec::new(),
            result: Err(error),
        }
    }
}

/// Each metric's measurement at one look, by metric name.
pub type Measured = BTreeMap<String, Measurement<Observed>>;

/// A source of metrics: what a look asks for each metric and for the users of each
/// cohort. Implementations do the I/O (with their own timeouts and retries) and never
/// judge; every failure is a [`ProviderError`] in the measurement, never a panic.
pub trait MetricsProvider: Sync {
    /// Observes `metric` of `valid` over `window`: the answer's kind matches the
    /// metric's kind ([`crate::crd::validate::MetricKind`]).
    fn observe(
        &self,
        valid: &ValidSpec,
        metric: &ValidMetric,
        window: &LookWindow<'_>,
    ) -> impl Future<Output = Measurement<Observed>> + Send;

    /// Counts the distinct users of each cohort over `window` for the sample-ratio
    /// check, with the spec's users query (`valid.users`); `None` when the spec has none.
    fn users(
        &self,
        valid: &ValidSpec,
        window: &LookWindow<'_>,
    ) -> impl Future<Output = Option<Measurement<PerCohort<f64>>>> + Send;
}
