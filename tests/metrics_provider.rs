//! A metrics provider that is not Prometheus: counts from memory, behind the analysis'
//! `MetricsProvider` trait. Everything a provider needs is in this one file (the trait,
//! the typed metric and the look's window come from the library): the look and the judge
//! run on its measurements as they do on Prometheus' answers.
//!
//! The traffic is drawn with a fixed seed (printed): binomial errors per minute for each
//! cohort, summed over the look's window as `increase(...[window])` would.

use jiff::{SignedDuration, Timestamp};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use sluice::analysis::look::{LookAt, RolloutRef, look};
use sluice::analysis::source::{
    LookWindow, Measurement, MetricsProvider, Observed, PerCohort, ProviderError,
};
use sluice::crd::validate::{MetricKind, ValidMetric, ValidSpec};
use sluice::crd::{AnalysisStatus, FeatureRolloutSpec, Verdict, validate};

/// One minute of traffic: requests and errors of each cohort.
#[derive(Clone, Copy, Debug, Default)]
struct Minute {
    baseline: (u64, u64),
    candidate: (u64, u64),
}

/// The in-memory provider: per-minute counts from the stage's start; a ratio metric
/// gets the sums over the look's window, any other kind a typed error.
struct Memory {
    minutes: Vec<Minute>,
    /// What `users` answers (`None`: the spec has no users check).
    users: Option<PerCohort<f64>>,
}

impl Memory {
    /// `minutes` of traffic: `requests` a minute, the candidate's share of them at
    /// `weight`, errors at `baseline_rate` and `candidate_rate`.
    fn draw(
        seed: u64,
        minutes: usize,
        requests: u64,
        weight: f64,
        baseline_rate: f64,
        candidate_rate: f64,
    ) -> Self {
        println!("seed {seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut binomial = |n: u64, p: f64| Binomial::new(n, p).unwrap().sample(&mut rng);
        let minutes = (0..minutes)
            .map(|_| {
                let candidate = binomial(requests, weight);
                let baseline = requests - candidate;
                Minute {
                    baseline: (baseline, binomial(baseline, baseline_rate)),
                    candidate: (candidate, binomial(candidate, candidate_rate)),
                }
            })
            .collect();
        Memory {
            minutes,
            users: None,
        }
    }

    /// The cumulative counts over the window (whole minutes since the stage's start).
    fn window(&self, window: &LookWindow<'_>) -> Minute {
        let minutes = (window.length.as_secs() / 60) as usize;
        self.minutes
            .iter()
            .take(minutes)
            .fold(Minute::default(), |sum, m| Minute {
                baseline: (sum.baseline.0 + m.baseline.0, sum.baseline.1 + m.baseline.1),
                candidate: (
                    sum.candidate.0 + m.candidate.0,
                    sum.candidate.1 + m.candidate.1,
                ),
            })
    }
}

impl MetricsProvider for Memory {
    async fn observe(
        &self,
        _valid: &ValidSpec,
        metric: &ValidMetric,
        window: &LookWindow<'_>,
    ) -> Measurement<Observed> {
        let MetricKind::Ratio { .. } = metric.kind else {
            return Measurement::failed(ProviderError::Answer {
                category: "unsupported",
                message: format!(
                    "the memory provider measures only ratios, not {:?}",
                    metric.name
                ),
            });
        };
        let sum = self.window(window);
        // No series for a cohort until its first event, as Prometheus answers.
        let some = |v: u64| (v > 0).then_some(v as f64);
        Measurement {
            queries: vec![format!(
                "memory:{}[{}s]",
                metric.name,
                window.length.as_secs()
            )],
            result: Ok(Observed::Ratio {
                bad: PerCohort {
                    baseline: some(sum.baseline.1),
                    candidate: some(sum.candidate.1),
                },
                total: PerCohort {
                    baseline: some(sum.baseline.0),
                    candidate: some(sum.candidate.0),
                },
                users: None,
            }),
        }
    }

    async fn users(
        &self,
        _valid: &ValidSpec,
        _window: &LookWindow<'_>,
    ) -> Option<Measurement<PerCohort<f64>>> {
        self.users.clone().map(Measurement::observed)
    }
}

/// A provider that answers every metric with a guard's value, whatever its kind.
struct WrongKind;

impl MetricsProvider for WrongKind {
    async fn observe(
        &self,
        _valid: &ValidSpec,
        _metric: &ValidMetric,
        _window: &LookWindow<'_>,
    ) -> Measurement<Observed> {
        Measurement::observed(Observed::Guard {
            cohorts: PerCohort::default(),
            global: Some(1.0),
        })
    }

    async fn users(
        &self,
        _valid: &ValidSpec,
        _window: &LookWindow<'_>,
    ) -> Option<Measurement<PerCohort<f64>>> {
        None
    }
}

fn spec(metrics: &str) -> FeatureRolloutSpec {
    let yaml = format!(
        r#"
flag: {{ key: k, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
target: {{ file: {{ path: flags.json }} }}
stages:
  - {{ weight: 20, duration: 30m }}
  - {{ weight: 100 }}
analysis:
  metrics:
{metrics}
"#
    );
    serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

const ERROR_RATE: &str = r#"    - name: error-rate
      ratio: { errors: "errors", requests: "requests" }
      maxIncrease: { relative: "10%" }"#;

const LATENCY: &str = r#"    - name: slow
      histogram: { buckets: "buckets", threshold: 0.5 }
      maxIncrease: { relative: "10%" }"#;

const STARTED: i64 = 1_700_000_000;

/// The stage's looks, one a minute, each with the previous one as `status.lastAnalysis`,
/// until one fails or the stage's 30 minutes are over: the last look and its minute.
async fn looks<P: MetricsProvider>(provider: &P, valid: &ValidSpec) -> (u32, AnalysisStatus) {
    let started = Timestamp::from_second(STARTED).unwrap();
    let rollout = RolloutRef {
        namespace: "",
        name: "memory",
    };
    let mut previous: Option<AnalysisStatus> = None;
    for minute in 1..=30 {
        let at = LookAt {
            stage: 0,
            stage_started_at: started,
            now: started + SignedDuration::from_mins(minute),
        };
        let status = look(provider, valid, rollout.clone(), at, previous.as_ref()).await;
        if status.verdict == Verdict::Fail {
            return (minute as u32, status);
        }
        previous = Some(status);
    }
    (30, previous.expect("thirty looks"))
}

#[tokio::test]
async fn a_regression_measured_by_another_provider_fails_the_look() {
    let valid = validate(&spec(ERROR_RATE)).expect("a valid spec");
    // 2,000 requests a minute, 20% on the candidate; 1% errors against 3%.
    let provider = Memory::draw(7, 30, 2_000, 0.2, 0.01, 0.03);
    let (minute, last) = looks(&provider, &valid).await;
    println!("rolled back at minute {minute}: {:?}", last.message);
    assert_eq!(last.verdict, Verdict::Fail, "{last:#?}");
    assert!(minute < 30, "the harm is found before the stage ends");
    let metric = &last.metrics[0];
    assert_eq!(metric.name, "error-rate");
    assert_eq!(metric.verdict, Verdict::Fail);
    assert_eq!(
        metric.queries,
        vec![format!("memory:error-rate[{}s]", 60 * minute)],
        "the queries are the provider's own"
    );
    assert!(
        metric
            .reason
            .as_deref()
            .unwrap()
            .contains("worse than tolerated"),
        "{metric:#?}"
    );
}

#[tokio::test]
async fn the_same_traffic_on_both_cohorts_passes_the_stage() {
    let valid = validate(&spec(ERROR_RATE)).expect("a valid spec");
    // A/A: 1% errors on both cohorts, five seeds.
    for seed in 1..=5 {
        let provider = Memory::draw(seed, 30, 2_000, 0.2, 0.01, 0.01);
        let (minute, last) = looks(&provider, &valid).await;
        assert_eq!(minute, 30, "seed {seed}: no rollback: {:?}", last.message);
        assert_eq!(last.verdict, Verdict::Pass, "seed {seed}: {last:#?}");
        let evidence = last.metrics[0].evidence.as_ref().expect("evidence kept");
        assert_eq!(evidence.strata[0].candidate.looks, 30, "seed {seed}");
    }
}

#[tokio::test]
async fn a_provider_failure_is_an_error_verdict_naming_it() {
    let valid = validate(&spec(&format!("{ERROR_RATE}\n{LATENCY}"))).expect("a valid spec");
    let provider = Memory::draw(3, 30, 2_000, 0.2, 0.01, 0.01);
    let (_, last) = looks(&provider, &valid).await;
    assert_eq!(last.verdict, Verdict::Error, "{last:#?}");
    let slow = &last.metrics[1];
    assert_eq!(slow.name, "slow");
    assert_eq!(slow.verdict, Verdict::Error);
    assert_eq!(
        slow.reason.as_deref(),
        Some("the memory provider measures only ratios, not \"slow\"")
    );
    // The metric it can measure is judged as usual.
    assert_eq!(last.metrics[0].verdict, Verdict::Pass, "{last:#?}");
}

#[tokio::test]
async fn an_answer_of_the_wrong_kind_is_an_error_not_a_panic() {
    let valid = validate(&spec(ERROR_RATE)).expect("a valid spec");
    let (_, last) = looks(&WrongKind, &valid).await;
    assert_eq!(last.verdict, Verdict::Error, "{last:#?}");
    assert_eq!(
        last.metrics[0].reason.as_deref(),
        Some("the metrics provider answered with guard values for a ratio metric")
    );
}

#[tokio::test]
async fn the_users_count_comes_from_the_provider_too() {
    let valid = validate(&spec(ERROR_RATE)).expect("a valid spec");
    let mut provider = Memory::draw(5, 30, 2_000, 0.2, 0.01, 0.01);
    // Half the users on the candidate where the stage exposes 20%: a sample ratio
    // mismatch, so the look holds whatever the metrics say.
    provider.users = Some(PerCohort {
        baseline: Some(5_000.0),
        candidate: Some(5_000.0),
    });
    let (_, last) = looks(&provider, &valid).await;
    let srm = last.sample_ratio.as_ref().expect("a sample-ratio check");
    assert!(srm.mismatch, "{srm:#?}");
    assert_eq!(last.verdict, Verdict::Inconclusive, "{last:#?}");
}
