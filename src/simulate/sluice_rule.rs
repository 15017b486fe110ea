//! Sluice's own rule in the benchmark: each simulated look goes through the analysis code
//! the controller, standalone mode and `sluice analyze` use ([`judge::judge_look`], the
//! pure part of [`crate::analysis::look::look`]), on a real, validated `FeatureRollout`
//! spec of the benchmark's plan.
//!
//! The adapter only does what [`crate::analysis::look`] does around its queries: it hands
//! the stage's cumulative counts over as the error-rate query's answer, with the stage's
//! start and the look's time, and keeps the previous look's status as the controller keeps
//! it in `status.lastAnalysis` (the evidence kept across looks and stages lives there). A
//! `Fail` verdict rolls back, as in the engine. No statistics live here.

use jiff::Timestamp;

use super::rules::{Judgement, Look, Rule};
use super::traffic::{Counts, Schedule};
use crate::analysis::judge::{self, LookAt, Observed};
use crate::crd::validate::{self, ValidSpec};
use crate::crd::{AnalysisStatus, FeatureRolloutSpec, MetricSpec, Verdict};
use crate::prometheus::PerCohort;

/// The name of the error-rate metric in the benchmark's spec.
const METRIC: &str = "error-rate";

/// Sluice's analysis as a benchmark rule.
#[derive(Clone, Debug)]
pub struct SluiceRule {
    spec: FeatureRolloutSpec,
    valid: ValidSpec,
    metric: MetricSpec,
    alpha: f64,
    previous: Option<AnalysisStatus>,
}

/// The benchmark's rollout as the YAML of a `FeatureRollout` spec: the schedule's stages,
/// then 100 %; a look every minute; one ratio metric `error-rate` with the given
/// `maxIncrease` tolerance and `confidence`.
pub fn benchmark_spec_yaml(schedule: &Schedule, confidence: f64, max_increase: &str) -> String {
    let stages: String = schedule
        .stages
        .iter()
        .map(|s| {
            let percent = (s.exposure * 100.0 * 1_000.0).round() / 1_000.0;
            format!(
                "  - {{ weight: \"{percent}%\", duration: {}m }}\n",
                s.minutes
            )
        })
        .collect();
    format!(
        r#"flag: {{ key: benchmark, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
target: {{ file: {{ path: flags.json }} }}
stages:
{stages}  - {{ weight: 100 }}
analysis:
  interval: 1m
  confidence: {confidence}
  metrics:
    - name: {METRIC}
      ratio:
        errors: 'sum by (feature_flag_result_variant) (increase(http_requests_total{{code=~"5..",feature_flag_key="{{{{ flag }}}}"}}[{{{{ window }}}}]))'
        requests: 'sum by (feature_flag_result_variant) (increase(http_requests_total{{feature_flag_key="{{{{ flag }}}}"}}[{{{{ window }}}}]))'
      maxIncrease: {{ relative: "{max_increase}" }}
"#
    )
}

impl SluiceRule {
    /// Sluice on the benchmark's plan with the given confidence and tolerated relative
    /// increase (e.g. `"0%"`: any increase is harm, the hypothesis the anchors test).
    pub fn new(schedule: &Schedule, confidence: f64, max_increase: &str) -> Result<Self, String> {
        let yaml = benchmark_spec_yaml(schedule, confidence, max_increase);
        let spec: FeatureRolloutSpec =
            serde_yaml_ng::from_str(&yaml).map_err(|e| format!("{e}\n{yaml}"))?;
        let valid = validate::validate(&spec).map_err(|problems| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let metric = spec
            .analysis
            .iter()
            .flat_map(|a| &a.metrics)
            .find(|m| m.name == METRIC)
            .cloned()
            .ok_or("the benchmark spec has no error-rate metric")?;
        let alpha = judge::budget_per_test(&spec, &valid);
        Ok(SluiceRule {
            spec,
            valid,
            metric,
            alpha,
            previous: None,
        })
    }

    /// The benchmark's configuration: `confidence: 0.95`, `maxIncrease: 0%`.
    pub fn benchmark(schedule: &Schedule) -> Self {
        Self::new(schedule, 0.95, "0%").expect("the benchmark spec is valid")
    }

    /// The false-rollback budget of the comparison over the whole rollout, as the analysis
    /// computes it.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The spec the rule analyses.
    pub fn spec(&self) -> &FeatureRolloutSpec {
        &self.spec
    }

    /// The status of the last look, as the controller would keep it.
    pub fn last_analysis(&self) -> Option<&AnalysisStatus> {
        self.previous.as_ref()
    }
}

/// A cohort's answer as Prometheus gives it: no series until the first event.
fn answer(counts: Counts) -> (Option<f64>, Option<f64>) {
    let some = |v: u64| (v > 0).then_some(v as f64);
    (some(counts.errors), some(counts.requests))
}

impl Rule for SluiceRule {
    fn name(&self) -> &str {
        "Sluice"
    }

    fn describe(&self) -> String {
        format!(
            "the analysis module's judgement (analysis::judge) of a FeatureRollout with one \
             ratio metric, maxIncrease {:?}, confidence {}: α = {:.4} over the rollout; roll \
             back on Fail",
            self.metric
                .max_increase
                .as_ref()
                .and_then(|t| t.relative.clone().or(t.absolute.clone()))
                .unwrap_or_default(),
            self.valid.confidence,
            self.alpha
        )
    }

    fn reset(&mut self) {
        self.previous = None;
    }

    fn judge(&mut self, look: &Look<'_>) -> Judgement {
        if look.stage >= self.valid.stages.len() {
            return Judgement::Continue;
        }
        let minute = |m: u32| Timestamp::from_second(i64::from(m) * 60).unwrap_or_default();
        let at = LookAt {
            stage: look.stage as u32,
            stage_started_at: minute(look.minute - look.minute_in_stage),
            now: minute(look.minute),
        };
        let (bad_c, total_c) = answer(look.stage_total.candidate);
        let (bad_b, total_b) = answer(look.stage_total.baseline);
        let observed = Observed::Ratio {
            bad: PerCohort {
                baseline: bad_b,
                candidate: bad_c,
            },
            total: PerCohort {
                baseline: total_b,
                candidate: total_c,
            },
        };
        let status = judge::judge_look(
            &self.spec,
            &self.valid,
            at,
            vec![(observed, Vec::new())],
            None,
            self.previous.as_ref(),
        );
        let verdict = status.verdict;
        self.previous = Some(status);
        if verdict == Verdict::Fail {
            Judgement::RollBack
        } else {
            Judgement::Continue
        }
    }

    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}
