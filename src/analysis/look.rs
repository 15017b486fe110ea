//! One look at the metrics: render the queries, run them against Prometheus (all at
//! once, each with its own timeout), split the answers by cohort and judge them.
//!
//! This is the only part of the analysis that does I/O; the controller, standalone mode
//! and `sluice analyze` all call it, then hand the result to the engine.

use std::time::Duration;

use futures::future::join_all;
use jiff::SignedDuration;

pub use super::judge::LookAt;
use super::judge::{self, Observed};
use crate::crd::validate::{ValidSpec, queries};
use crate::crd::{
    AnalysisStatus, DEFAULT_COHORT_LABEL, FeatureRolloutSpec, MetricSpec, PrometheusSpec,
    parse_duration,
};
use crate::prometheus::{
    self, BasicAuth, ClientConfig, CohortSpec, PerCohort, PrometheusClient, QueryResult, Template,
    TlsConfig, Variables,
};

/// Where the rollout lives, for the `{{ namespace }}` and `{{ rollout }}` variables.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRef<'a> {
    /// The namespace (empty in standalone mode).
    pub namespace: &'a str,
    /// The rollout's name.
    pub name: &'a str,
}

/// The client settings a spec's `analysis.prometheus` asks for.
pub fn client_config(spec: &PrometheusSpec) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::new(spec.address.clone());
    if let Some(timeout) = &spec.timeout {
        let timeout = parse_duration(timeout)?;
        config.timeout =
            Duration::try_from(timeout).map_err(|e| format!("timeout {timeout}: {e}"))?;
    }
    config.headers = spec.headers.clone();
    config.bearer_token_file = spec.bearer_token_file.as_ref().map(Into::into);
    config.basic_auth = spec.basic_auth.as_ref().map(|b| BasicAuth {
        username: b.username.clone(),
        password_file: b.password_file.clone().into(),
    });
    if let Some(tls) = &spec.tls {
        config.tls = TlsConfig {
            ca_file: tls.ca_file.as_ref().map(Into::into),
            insecure_skip_verify: tls.insecure_skip_verify,
        };
    }
    Ok(config)
}

/// Makes one look for the stage `at.stage` of a valid spec. Query failures become
/// `Error` verdicts for their metric; they never fail the look as a whole.
pub async fn look(
    client: &PrometheusClient,
    spec: &FeatureRolloutSpec,
    valid: &ValidSpec,
    rollout: RolloutRef<'_>,
    at: LookAt,
    previous: Option<&AnalysisStatus>,
) -> AnalysisStatus {
    let elapsed = at
        .now
        .duration_since(at.stage_started_at)
        .max(SignedDuration::from_secs(1));
    let analysis = spec.analysis.clone().unwrap_or_default();
    let window = Duration::try_from(elapsed).unwrap_or(Duration::from_secs(1));
    let mut variables = Variables::new(&valid.flag.key, window, rollout.namespace, rollout.name);
    variables.user = analysis.variables.clone().into_iter().collect();
    let cohorts = CohortSpec {
        label: analysis
            .cohort_label
            .clone()
            .unwrap_or_else(|| DEFAULT_COHORT_LABEL.to_owned()),
        baseline: valid.flag.baseline.clone(),
        candidate: valid.flag.candidate.clone(),
    };

    let run = |query: &str| {
        let rendered = Template::parse(query)
            .and_then(|t| t.render(&variables))
            .map_err(|e| (query.to_owned(), e));
        async move {
            match rendered {
                Ok(q) => {
                    let result = client
                        .query(&q, Some(at.now))
                        .await
                        .map(|r| r.result)
                        .map_err(|e| e.to_string());
                    (q, result)
                }
                Err((source, e)) => (source, Err(e.to_string())),
            }
        }
    };
    let metric_looks = analysis.metrics.iter().map(|metric| {
        let run = &run;
        let cohorts = &cohorts;
        async move {
            let answers = join_all(queries(metric).into_iter().map(|(_, q)| run(q))).await;
            let queries: Vec<String> = answers.iter().map(|(q, _)| q.clone()).collect();
            (metric, observe(metric, &answers, cohorts), queries)
        }
    });
    let users = async {
        match &analysis.users {
            Some(query) => Some(run(query).await),
            None => None,
        }
    };
    let (observed, users) = futures::join!(join_all(metric_looks), users);

    let observed = observed
        .into_iter()
        .map(|(_, observed, queries)| (observed, queries))
        .collect();
    let users = users.map(|(query, answer)| {
        let split =
            answer.and_then(|r| prometheus::split_values(&r, &cohorts).map_err(|e| e.to_string()));
        (query, split)
    });
    judge::judge_look(spec, valid, at, observed, users, previous)
}

/// Turns a metric's answers into cohort values, or the first error.
fn observe(
    metric: &MetricSpec,
    answers: &[(String, Result<QueryResult, String>)],
    cohorts: &CohortSpec,
) -> Observed {
    let results: Result<Vec<&QueryResult>, String> = answers
        .iter()
        .map(|(q, r)| r.as_ref().map_err(|e| format!("query {q:?} failed: {e}")))
        .collect();
    let results = match results {
        Ok(results) => results,
        Err(message) => return Observed::Failed(message),
    };
    let split = |r: &QueryResult| prometheus::split_values(r, cohorts).map_err(|e| e.to_string());
    let observed = if metric.ratio.is_some() {
        split(results[0]).and_then(|bad| {
            Ok(Observed::Ratio {
                bad,
                total: split(results[1])?,
            })
        })
    } else if metric.histogram.is_some() {
        prometheus::split_buckets(results[0], cohorts)
            .map(Observed::Histogram)
            .map_err(|e| e.to_string())
    } else {
        // A guard is split by cohort when its series carry the cohort label, else global.
        match split(results[0]) {
            Ok(cohorts) if !cohorts.is_empty() => Ok(Observed::Guard {
                cohorts,
                global: None,
            }),
            _ => prometheus::global_value(results[0])
                .map(|global| Observed::Guard {
                    cohorts: PerCohort::default(),
                    global,
                })
                .map_err(|e| e.to_string()),
        }
    };
    observed.unwrap_or_else(Observed::Failed)
}
