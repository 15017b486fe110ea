//! The `sluice plan` command: reads a FeatureRollout and the traffic of its metrics (given
//! by hand, or read from Prometheus with the rollout's own queries over a window), runs
//! [`crate::simulate::plan`] and prints what each stage can detect.
//!
//! Exit codes: 0 when the plan raises no warning, 1 when it does, 2 for bad input (the
//! message names the option or the field).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use jiff::Timestamp;

use crate::analysis::histogram;
use crate::crd::validate::ValidSpec;
use crate::crd::{FeatureRollout, MetricSpec, PrometheusSpec, parse_duration, validate};
use crate::prometheus::provider::client_config;
use crate::prometheus::{PrometheusClient, QueryResult, Template, Variables};
use crate::simulate::plan::{self, Input, InputError, MetricTraffic, compared_metrics};

/// How `sluice plan` prints its report.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for pipelines.
    Json,
}

/// The arguments of `sluice plan`.
#[derive(clap::Args, Debug)]
pub struct PlanRequest {
    /// The manifest (the first FeatureRollout in it, or the one named by --name).
    pub file: PathBuf,
    /// Which rollout in the file, by metadata.name.
    #[arg(long)]
    pub name: Option<String>,
    /// Read each metric's request rate and baseline rate from this Prometheus with the
    /// rollout's own queries over --window (auth and TLS from spec.analysis.prometheus).
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// The window the rates are read over, ending at --at (Prometheus only).
    #[arg(long, default_value = "1h")]
    pub window: String,
    /// The end of the window (RFC 3339); defaults to now.
    #[arg(long)]
    pub at: Option<Timestamp>,
    /// The namespace for {{ namespace }}; defaults to metadata.namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Requests per second, both cohorts together: `RATE` for every metric or
    /// `METRIC=RATE` for one (repeatable); overrides what Prometheus says.
    #[arg(long = "traffic", value_name = "RATE")]
    pub traffic: Vec<String>,
    /// The baseline's share of bad events (errors, slow requests), e.g. 0.01: `P` for
    /// every metric or `METRIC=P` for one (repeatable); overrides what Prometheus says.
    #[arg(long = "baseline-rate", value_name = "P")]
    pub baseline_rate: Vec<String>,
    /// Bursty bad events: the coefficient of variation of a Gamma multiplier of each
    /// cohort's bad rate per look (BENCHMARK.md's S2 is 0.5); default none (binomial).
    #[arg(long)]
    pub burstiness: Option<f64>,
    /// Simulated rollouts per figure.
    #[arg(long, default_value_t = plan::DEFAULT_RUNS)]
    pub runs: usize,
    /// Base seed of the random streams.
    #[arg(long, default_value_t = crate::simulate::DEFAULT_SEED)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs `sluice plan` and returns its exit code.
pub fn run(request: PlanRequest) -> ExitCode {
    let report = match input(&request).and_then(|input| plan::run(&input)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sluice plan: {e}");
            return ExitCode::from(2);
        }
    };
    match request.output {
        Output::Text => print!("{}", plan::render(&report)),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("sluice plan: cannot write JSON: {e}");
                return ExitCode::from(2);
            }
        },
    }
    if report.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn error(field: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError {
        field: field.into(),
        message: message.into(),
    }
}

/// Values given per metric on the command line: `VALUE` for all, `METRIC=VALUE` for one.
fn per_metric(
    option: &str,
    values: &[String],
    metrics: &[&MetricSpec],
) -> Result<Vec<Option<f64>>, InputError> {
    let mut all = None;
    let mut one = vec![None; metrics.len()];
    for value in values {
        let (target, number) = match value.split_once('=') {
            Some((name, number)) => {
                let index = metrics
                    .iter()
                    .position(|m| m.name == name.trim())
                    .ok_or_else(|| {
                        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
                        error(
                            option,
                            format!(
                                "{value:?}: the rollout has no ratio or histogram metric named \
                                 {:?} (it has: {})",
                                name.trim(),
                                names.join(", ")
                            ),
                        )
                    })?;
                (Some(index), number)
            }
            None => (None, value.as_str()),
        };
        let number: f64 = number
            .trim()
            .parse()
            .map_err(|_| error(option, format!("{value:?} is not a number")))?;
        match target {
            Some(i) => one[i] = Some(number),
            None => all = Some(number),
        }
    }
    Ok(one.into_iter().map(|v| v.or(all)).collect())
}

/// Loads the rollout and builds the plan's input from the options and, when asked,
/// Prometheus.
fn input(request: &PlanRequest) -> Result<Input, InputError> {
    let shown = request.file.display().to_string();
    let rollout =
        crate::cli::load_rollout(&request.file, request.name.as_deref()).map_err(|e| {
            let message = e
                .strip_prefix(&format!("{shown}: "))
                .unwrap_or(&e)
                .to_owned();
            error(shown.clone(), message)
        })?;
    let valid = validate(&rollout.spec).map_err(|p| error(p[0].field.clone(), &p[0].message))?;
    let metrics = compared_metrics(&rollout.spec);
    if metrics.is_empty() {
        return Err(error(
            "spec.analysis.metrics",
            "no ratio or histogram metric: without a comparison there is nothing a stage can \
             detect",
        ));
    }
    let rates = per_metric("--traffic", &request.traffic, &metrics)?;
    let baselines = per_metric("--baseline-rate", &request.baseline_rate, &metrics)?;
    let by_hand = rates.iter().all(Option::is_some) && baselines.iter().all(Option::is_some);
    let counts_users = rollout.spec.analysis.iter().any(|a| a.users.is_some());
    // Prometheus is asked for what is not given by hand, and for the distinct users.
    let prometheus = request
        .prometheus
        .as_deref()
        .filter(|_| !by_hand || counts_users);
    let (read, users, source) = match prometheus {
        Some(url) => read_prometheus(request, url, &rollout, &valid, &metrics, &rates, &baselines)?,
        None if by_hand => (
            Vec::new(),
            Vec::new(),
            "traffic: given by hand (--traffic, --baseline-rate)".to_owned(),
        ),
        None => {
            let missing = metrics
                .iter()
                .zip(rates.iter().zip(&baselines))
                .find(|(_, (r, b))| r.is_none() || b.is_none())
                .map(|(m, (r, _))| {
                    (
                        m.name.clone(),
                        if r.is_none() {
                            "--traffic"
                        } else {
                            "--baseline-rate"
                        },
                    )
                })
                .unwrap_or_default();
            return Err(error(
                missing.1,
                format!(
                    "no value for metric {:?}: give {} VALUE (every metric) or {} {}=VALUE, or \
                     read the traffic with --prometheus URL",
                    missing.0, missing.1, missing.1, missing.0
                ),
            ));
        }
    };
    let traffic = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let from_prometheus = read.iter().find(|(name, _, _)| *name == m.name);
            let requests_per_second = rates[i]
                .or(from_prometheus.map(|r| r.1))
                .expect("a rate for every metric");
            let baseline_rate = baselines[i]
                .or(from_prometheus.map(|r| r.2))
                .expect("a baseline rate for every metric");
            MetricTraffic {
                name: m.name.clone(),
                requests_per_second,
                baseline_rate,
            }
        })
        .collect();
    Ok(Input {
        spec: rollout.spec.clone(),
        traffic,
        users,
        burstiness: request.burstiness,
        traffic_source: source,
        runs: request.runs,
        seed: request.seed,
        threads: request.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
    })
}

/// What Prometheus said: per metric (name, requests/s, baseline rate), the distinct
/// users over each stage's duration, and the sentence saying where and when.
type Read = (Vec<(String, f64, f64)>, Vec<Option<f64>>, String);

fn read_prometheus(
    request: &PlanRequest,
    url: &str,
    rollout: &FeatureRollout,
    valid: &ValidSpec,
    metrics: &[&MetricSpec],
    rates: &[Option<f64>],
    baselines: &[Option<f64>],
) -> Result<Read, InputError> {
    let window = parse_duration(&request.window).map_err(|e| error("--window", e))?;
    let window = Duration::try_from(window)
        .ok()
        .filter(|w| !w.is_zero())
        .ok_or_else(|| error("--window", format!("{}: must be positive", request.window)))?;
    let mut prometheus: PrometheusSpec = rollout
        .spec
        .analysis
        .as_ref()
        .and_then(|a| a.prometheus.clone())
        .unwrap_or_default();
    prometheus.address = url.to_owned();
    let config = client_config(&prometheus).map_err(|e| error("spec.analysis.prometheus", e))?;
    let client = PrometheusClient::new(config).map_err(|e| error("--prometheus", e.to_string()))?;
    let at = request.at.unwrap_or_else(Timestamp::now);
    let namespace = request
        .namespace
        .clone()
        .or(rollout.metadata.namespace.clone())
        .unwrap_or_default();
    let name = rollout.metadata.name.clone().unwrap_or_default();
    let analysis = rollout.spec.analysis.clone().unwrap_or_default();
    let variables = |window: Duration| {
        let mut v = Variables::new(&valid.flag.key, window, &namespace, &name);
        v.user = analysis.variables.clone().into_iter().collect();
        v
    };
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| error("--prometheus", format!("tokio runtime: {e}")))?;
    let query = |field: &str, source: &str, window: Duration| {
        let rendered = Template::parse(source)
            .and_then(|t| t.render(&variables(window)))
            .map_err(|e| error(field, e.to_string()))?;
        let result = runtime
            .block_on(client.query(&rendered, Some(at)))
            .map_err(|e| error(field, format!("query {rendered:?} failed: {e}")))?;
        Ok::<_, InputError>((rendered, result.result))
    };
    let seconds = window.as_secs_f64();
    let shown_window = crate::prometheus::template::format_duration(window);
    let mut read = Vec::new();
    for (i, metric) in metrics.iter().enumerate() {
        if rates[i].is_some() && baselines[i].is_some() {
            continue;
        }
        let index = analysis
            .metrics
            .iter()
            .position(|m| m.name == metric.name)
            .unwrap_or(0);
        let field = format!("spec.analysis.metrics[{index}]");
        let (bad, total) = if let Some(ratio) = &metric.ratio {
            let errors_field = format!("{field}.ratio.errors");
            let requests_field = format!("{field}.ratio.requests");
            let (errors_q, errors) = query(&errors_field, &ratio.errors, window)?;
            let (requests_q, requests) = query(&requests_field, &ratio.requests, window)?;
            let errors = sum(&errors).map_err(query_error(&errors_field, &errors_q))?;
            let requests = sum(&requests).map_err(query_error(&requests_field, &requests_q))?;
            (errors.unwrap_or(0.0), requests.unwrap_or(0.0))
        } else if let Some(h) = &metric.histogram {
            let buckets_field = format!("{field}.histogram.buckets");
            let (q, result) = query(&buckets_field, &h.buckets, window)?;
            let pairs = buckets(&result).map_err(query_error(&buckets_field, &q))?;
            if pairs.is_empty() {
                (0.0, 0.0)
            } else {
                histogram::slow_share(&pairs, h.threshold)
                    .map_err(query_error(&buckets_field, &q))?
            }
        } else {
            continue;
        };
        if total <= 0.0 {
            return Err(error(
                field,
                format!(
                    "metric {:?}: no events over the {shown_window} before {at}: is the service \
                     serving traffic, and does the query match while the flag serves only the \
                     baseline (a filter on feature_flag_result_reason=\"TARGETING_MATCH\" \
                     matches nothing then)? Give --traffic and --baseline-rate by hand \
                     instead",
                    metric.name,
                ),
            ));
        }
        read.push((metric.name.clone(), total / seconds, bad / total));
    }
    let mut users = vec![None; valid.stages.len()];
    if let Some(source) = &analysis.users {
        for (i, stage) in valid.stages.iter().enumerate() {
            let Ok(duration) = Duration::try_from(stage.duration) else {
                continue;
            };
            if duration.is_zero() || stage.audience.is_some() {
                continue;
            }
            let (q, result) = query("spec.analysis.users", source, duration)?;
            users[i] = sum(&result).map_err(query_error("spec.analysis.users", &q))?;
        }
    }
    let source = format!(
        "traffic: read from Prometheus {url} over the {shown_window} before {at} (the rollout's \
         own queries with {{{{ window }}}} = {shown_window}, every series summed){}",
        if analysis.users.is_some() {
            "; distinct users from its users query over each stage's duration"
        } else {
            ""
        }
    );
    Ok((read, users, source))
}

/// The error of field `field` whose query, rendered as `rendered`, gave an answer that
/// cannot be used: the query, then what is wrong with its answer.
fn query_error<E: std::fmt::Display>(field: &str, rendered: &str) -> impl Fn(E) -> InputError {
    move |e| error(field, format!("{rendered}: {e}"))
}

/// Why a query's answer is not the instant vector it must be.
fn not_an_instant_vector(result: &QueryResult) -> String {
    format!("returned a {}, not an instant vector", result.kind())
}

/// The sum of every series' value of an instant vector (or a scalar); `None` when empty.
fn sum(result: &QueryResult) -> Result<Option<f64>, String> {
    match result {
        QueryResult::Vector(samples) if samples.is_empty() => Ok(None),
        QueryResult::Vector(samples) => {
            let total: f64 = samples.iter().map(|s| s.value).sum();
            if total.is_finite() {
                Ok(Some(total))
            } else {
                Err("a series' value is NaN or infinite".into())
            }
        }
        QueryResult::Scalar { value, .. } if value.is_finite() => Ok(Some(*value)),
        other => Err(not_an_instant_vector(other)),
    }
}

/// Histogram buckets summed over every series by `le`, sorted by bound.
fn buckets(result: &QueryResult) -> Result<Vec<(f64, f64)>, String> {
    let QueryResult::Vector(samples) = result else {
        return Err(not_an_instant_vector(result));
    };
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for sample in samples {
        let le = sample
            .labels
            .get("le")
            .ok_or("a series has no le label (sum by (le, ...))")?;
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()
                .map_err(|_| format!("le={le:?} is not a number"))?
        };
        match by_le.iter_mut().find(|(b, _)| *b == le) {
            Some((_, count)) => *count += sample.value,
            None => by_le.push((le, sample.value)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(by_le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_apply_to_every_metric_or_to_the_one_named() {
        let spec: MetricSpec =
            serde_yaml_ng::from_str("{ name: e, ratio: { errors: a, requests: b } }").unwrap();
        let other: MetricSpec =
            serde_yaml_ng::from_str("{ name: slow, histogram: { buckets: c, threshold: 0.5 } }")
                .unwrap();
        let metrics = [&spec, &other];
        let got = per_metric("--traffic", &["50".into(), "slow=20".into()], &metrics).unwrap();
        assert_eq!(got, vec![Some(50.0), Some(20.0)]);
        let got = per_metric("--traffic", &["e=5".into()], &metrics).unwrap();
        assert_eq!(got, vec![Some(5.0), None]);
        let err = per_metric("--traffic", &["latency=5".into()], &metrics).unwrap_err();
        assert_eq!(err.field, "--traffic");
        assert!(err.message.contains("it has: e, slow"), "{err}");
        let err = per_metric("--baseline-rate", &["e=x".into()], &metrics).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--baseline-rate: \"e=x\" is not a number")
        );
    }
}
