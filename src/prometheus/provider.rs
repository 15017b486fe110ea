//! Prometheus as a metrics provider: the client implements the analysis'
//! [`MetricsProvider`]. For each metric it renders the kind's query templates with the
//! look's variables, runs them at once (each with the client's timeout and retries) and
//! splits the answers by cohort; every failure becomes a [`ProviderError`] naming the
//! query.

use std::time::Duration;

use super::{
    BasicAuth, ClientConfig, CohortSpec, Error, PrometheusClient, QueryResult, Template, TlsConfig,
    Variables, global_value, split_buckets, split_values,
};
use crate::analysis::source::{
    LookWindow, Measurement, MetricsProvider, Observed, PerCohort, ProviderError, UserSums,
};
use crate::crd::validate::{MetricKind, PerUser, ValidMetric, ValidSpec};
use crate::crd::{PrometheusSpec, parse_duration};

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

/// The template variables of one look: the flag, the window, where the rollout lives and
/// the spec's own variables.
fn variables(valid: &ValidSpec, window: &LookWindow<'_>) -> Variables {
    let mut variables = Variables::new(
        &valid.flag.key,
        window.length,
        window.rollout.namespace,
        window.rollout.name,
    );
    variables.user = valid.variables.clone().into_iter().collect();
    variables
}

/// Which label values are the spec's cohorts.
fn cohorts(valid: &ValidSpec) -> CohortSpec {
    CohortSpec {
        label: valid.cohort_label.clone(),
        baseline: valid.flag.baseline.clone(),
        candidate: valid.flag.candidate.clone(),
    }
}

/// A split that failed: the answer does not read as the cohorts.
fn answer_error(e: Error) -> ProviderError {
    ProviderError::Answer {
        category: e.category(),
        message: e.to_string(),
    }
}

/// One query as sent (or its source, when it cannot be rendered) and its answer.
type Answer = (String, Result<QueryResult, ProviderError>);

impl PrometheusClient {
    /// Runs a metric's per-user queries at once (`None` without them): the queries as
    /// sent, and each cohort's sums. A cohort has sums once its `Σn` series exists; a sum
    /// without a series for it (no bad event yet) is 0.
    async fn per_user(
        &self,
        per_user: Option<&PerUser>,
        variables: &Variables,
        window: &LookWindow<'_>,
        cohorts: &CohortSpec,
    ) -> Option<(Vec<String>, Result<PerCohort<UserSums>, ProviderError>)> {
        let queries = per_user?.queries();
        let answers =
            futures::future::join_all(queries.iter().map(|(_, t)| self.run(t, variables, window)))
                .await;
        let sent = answers.iter().map(|(q, _)| q.clone()).collect();
        let mut values = Vec::with_capacity(answers.len());
        for (_, answer) in answers {
            let result = match answer {
                Ok(r) => split_values(&r, cohorts).map_err(answer_error),
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => values.push(v),
                Err(e) => return Some((sent, Err(e))),
            }
        }
        let cohort = |pick: fn(&PerCohort<f64>) -> Option<f64>| -> Option<UserSums> {
            let n = pick(&values[0])?;
            let or_zero = |i: usize| pick(&values[i]).unwrap_or(0.0);
            Some(UserSums {
                n,
                x: or_zero(1),
                nn: or_zero(2),
                xx: or_zero(3),
                nx: or_zero(4),
            })
        };
        let sums = PerCohort {
            baseline: cohort(|v| v.baseline),
            candidate: cohort(|v| v.candidate),
        };
        Some((sent, Ok(sums)))
    }

    /// Renders and runs one query at the window's end.
    async fn run(
        &self,
        template: &Template,
        variables: &Variables,
        window: &LookWindow<'_>,
    ) -> Answer {
        let query = match template.render(variables) {
            Ok(query) => query,
            Err(e) => {
                let source = template.source().to_owned();
                let error = ProviderError::Query {
                    query: source.clone(),
                    category: e.category(),
                    message: e.to_string(),
                };
                return (source, Err(error));
            }
        };
        let result = self
            .query(&query, Some(window.now))
            .await
            .map(|r| r.result)
            .map_err(|e| ProviderError::Query {
                query: query.clone(),
                category: e.category(),
                message: e.to_string(),
            });
        (query, result)
    }
}

impl MetricsProvider for PrometheusClient {
    async fn observe(
        &self,
        valid: &ValidSpec,
        metric: &ValidMetric,
        window: &LookWindow<'_>,
    ) -> Measurement<Observed> {
        let variables = variables(valid, window);
        let cohorts = cohorts(valid);
        let split = |r: &QueryResult| split_values(r, &cohorts).map_err(answer_error);
        match &metric.kind {
            MetricKind::Ratio {
                errors,
                requests,
                per_user,
                ..
            } => {
                let ((errors_sent, bad), (requests_sent, total), users) = futures::join!(
                    self.run(errors, &variables, window),
                    self.run(requests, &variables, window),
                    self.per_user(per_user.as_ref(), &variables, window, &cohorts)
                );
                let (users_sent, users) = users.unzip();
                // The first failure in the order of the spec's fields names the query.
                let result = bad
                    .and_then(|bad| Ok((bad, total?)))
                    .and_then(|(bad, total)| {
                        Ok(Observed::Ratio {
                            bad: split(&bad)?,
                            total: split(&total)?,
                            users: users.transpose()?,
                        })
                    });
                let mut queries = vec![errors_sent, requests_sent];
                queries.extend(users_sent.into_iter().flatten());
                Measurement { queries, result }
            }
            MetricKind::Histogram {
                buckets, per_user, ..
            } => {
                let ((sent, answer), users) = futures::join!(
                    self.run(buckets, &variables, window),
                    self.per_user(per_user.as_ref(), &variables, window, &cohorts)
                );
                let (users_sent, users) = users.unzip();
                let result = answer.and_then(|r| {
                    Ok(Observed::Histogram {
                        buckets: split_buckets(&r, &cohorts).map_err(answer_error)?,
                        users: users.transpose()?,
                    })
                });
                let mut queries = vec![sent];
                queries.extend(users_sent.into_iter().flatten());
                Measurement { queries, result }
            }
            MetricKind::Guard { query, .. } => {
                let (sent, answer) = self.run(query, &variables, window).await;
                // A guard is split by cohort when its series carry the cohort label, else
                // global.
                let result = answer.and_then(|r| match split_values(&r, &cohorts) {
                    Ok(cohorts) if !cohorts.is_empty() => Ok(Observed::Guard {
                        cohorts,
                        global: None,
                    }),
                    _ => global_value(&r)
                        .map(|global| Observed::Guard {
                            cohorts: PerCohort::default(),
                            global,
                        })
                        .map_err(answer_error),
                });
                Measurement {
                    queries: vec![sent],
                    result,
                }
            }
        }
    }

    async fn users(
        &self,
        valid: &ValidSpec,
        window: &LookWindow<'_>,
    ) -> Option<Measurement<PerCohort<f64>>> {
        let query = valid.users.as_ref()?;
        let (sent, answer) = self.run(query, &variables(valid, window), window).await;
        let cohorts = cohorts(valid);
        Some(Measurement {
            queries: vec![sent],
            result: answer.and_then(|r| split_values(&r, &cohorts).map_err(answer_error)),
        })
    }
}
