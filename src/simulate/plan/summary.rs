//! The plan Sluice makes for a running rollout: `sluice plan` on the traffic its first
//! looks observed, kept short in `status.plan`, with the `PlanCanDetect` condition and a
//! Warning event when a stage cannot detect a metric's tolerance.
//!
//! Everything here is pure and typed: which traffic counts as observed
//! ([`observed_traffic`]), what the plan depends on ([`digest`]), the summary of a report
//! ([`summarize`]), what it says ([`PlanCheck`]) and what that does to the status and
//! the events ([`apply`]). The shells only run the simulation off their reconcile path
//! (see [`crate::reconcile::PlanSettings`]), store the summary and publish the event.

use std::fmt::Write as _;

use jiff::Timestamp;

use super::{
    Input, MetricTraffic, PlanError, Report, compared_metrics, minutes, percent, simulated_spec,
    times, tolerance,
};
use crate::crd::validate::ValidSpec;
use crate::crd::{
    FeatureRolloutSpec, FeatureRolloutStatus, PlanStage, PlanStageMetric, PlanSummary, PlanTraffic,
};
use crate::engine::{Event, EventType};

/// The analysis intervals a stage runs before its looks' traffic is taken for the plan:
/// the first looks, long enough for a rate, early enough to warn while the stage runs.
pub const OBSERVED_INTERVALS: u32 = 3;

/// The condition that says whether every stage catches every metric's tolerance.
pub const CONDITION: &str = "PlanCanDetect";

/// The reason of the Warning event published when a new plan finds a stage that cannot
/// detect a tolerance.
pub const UNDETECTABLE_EVENT: &str = "PlanCannotDetect";

/// The traffic a rollout's looks observed, as the plan takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedTraffic {
    /// The stage (index) whose looks it comes from.
    pub stage: u32,
    /// Seconds of that stage it was measured over.
    pub seconds: f64,
    /// One entry per ratio or histogram metric, in the spec's order.
    pub traffic: Vec<MetricTraffic>,
}

impl ObservedTraffic {
    /// The traffic a summary assumed (to plan changed stages on it when no look of a
    /// plain stage has observed the traffic since).
    pub fn of_summary(summary: &PlanSummary) -> Option<ObservedTraffic> {
        if summary.traffic.is_empty() {
            return None;
        }
        Some(ObservedTraffic {
            stage: summary.observed_stage,
            seconds: summary.observed_seconds,
            traffic: summary
                .traffic
                .iter()
                .map(|t| MetricTraffic {
                    name: t.metric.clone(),
                    requests_per_second: t.requests_per_second,
                    baseline_rate: t.baseline_rate,
                })
                .collect(),
        })
    }

    /// Whether it holds traffic for exactly the ratio and histogram metrics of `spec`.
    pub fn fits(&self, spec: &FeatureRolloutSpec) -> bool {
        let metrics = compared_metrics(spec);
        metrics.len() == self.traffic.len()
            && metrics
                .iter()
                .zip(&self.traffic)
                .all(|(m, t)| m.name == t.name)
    }
}

/// The traffic of the rollout's latest look, once it is one the plan can use: a look of
/// the current stage made at least [`OBSERVED_INTERVALS`] intervals into it, in a stage
/// without an audience (whose share of the traffic is unknown) and below 100 % (so a
/// baseline cohort exists), with counts for both cohorts' events of every ratio and
/// histogram metric. The look's counts cover the stage so far, so the rate is the events
/// of both cohorts over the seconds since the stage began, and the baseline rate is the
/// baseline cohort's share of bad events, as `(bad + ½) / (events + 1)` so that a
/// baseline without any bad event yet still plans on a small positive rate.
pub fn observed_traffic(
    spec: &FeatureRolloutSpec,
    valid: &ValidSpec,
    status: &FeatureRolloutStatus,
) -> Option<ObservedTraffic> {
    let analysis = status.last_analysis.as_ref()?;
    let started = status.stage_started_at?;
    if status.stage != Some(analysis.stage) || analysis.at <= started {
        return None;
    }
    let stage = valid.stages.get(analysis.stage as usize)?;
    let weight = stage.weight.fraction();
    if stage.audience.is_some() || weight <= 0.0 || weight >= 1.0 {
        return None;
    }
    let seconds = analysis.at.duration_since(started).as_secs_f64();
    let needed = f64::from(OBSERVED_INTERVALS) * valid.interval.as_secs_f64();
    if seconds < needed {
        return None;
    }
    let traffic = compared_metrics(spec)
        .iter()
        .map(|metric| {
            let seen = analysis.metrics.iter().find(|m| m.name == metric.name)?;
            let baseline = seen
                .baseline
                .as_ref()
                .filter(|b| b.n.is_finite() && b.n > 0.0 && b.value.is_finite())?;
            let candidate = seen
                .candidate
                .as_ref()
                .map_or(0.0, |c| if c.n.is_finite() { c.n.max(0.0) } else { 0.0 });
            let bad = (baseline.value * baseline.n).clamp(0.0, baseline.n);
            Some(MetricTraffic {
                name: metric.name.clone(),
                requests_per_second: (baseline.n + candidate) / seconds,
                baseline_rate: (bad + 0.5) / (baseline.n + 1.0),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    (!traffic.is_empty()).then_some(ObservedTraffic {
        stage: analysis.stage,
        seconds,
        traffic,
    })
}

/// A digest of what a plan of `spec` depends on: the stages and the analysis without
/// what the simulation leaves out (guards, the users query, Prometheus settings). The
/// same spec gives the same digest in every process and version (the engine's stable
/// digest of canonical JSON).
pub fn digest(spec: &FeatureRolloutSpec) -> String {
    let (simulated, _) = simulated_spec(spec);
    let mut analysis = simulated.analysis;
    if let Some(analysis) = &mut analysis {
        analysis.prometheus = None;
    }
    crate::engine::digest(&serde_json::json!({ "stages": spec.stages, "analysis": analysis }))
}

/// The input of the plan of a running rollout, on the traffic its looks observed: `runs`
/// rollouts per figure, one thread, the default seed (so the same traffic gives the same
/// figures).
pub fn input(spec: &FeatureRolloutSpec, observed: &ObservedTraffic, runs: usize) -> Input {
    Input {
        spec: spec.clone(),
        traffic: observed.traffic.clone(),
        users: Vec::new(),
        burstiness: None,
        traffic_source: format!(
            "traffic: observed by the looks of stage {} over its first {}",
            observed.stage + 1,
            minutes(observed.seconds / 60.0)
        ),
        runs,
        seed: crate::simulate::DEFAULT_SEED,
        threads: 1,
    }
}

fn traffic(report: &Report) -> Vec<PlanTraffic> {
    report
        .traffic
        .iter()
        .zip(&report.tolerances)
        .map(|(t, tolerance)| PlanTraffic {
            metric: t.name.clone(),
            requests_per_second: t.requests_per_second,
            baseline_rate: t.baseline_rate,
            target_multiplier: tolerance.target_multiplier,
        })
        .collect()
}

/// The short form of `report` that status keeps.
pub fn summarize(
    report: &Report,
    observed: &ObservedTraffic,
    digest: String,
    computed_at: Timestamp,
) -> PlanSummary {
    let stages = report
        .stages
        .iter()
        .filter(|s| s.duration_seconds > 0.0)
        .map(|s| PlanStage {
            index: s.index as u32,
            name: s.name.clone(),
            exposure: s.exposure.clone(),
            minutes: s.duration_seconds / 60.0,
            not_simulated: s.not_simulated.clone(),
            metrics: s
                .metrics
                .iter()
                .map(|m| PlanStageMetric {
                    name: m.name.clone(),
                    detectable: m.detectable.as_ref().map(|d| d.multiplier),
                    searched_up_to: m.searched_up_to,
                    minutes_to_catch_doubled: m.doubled.median_minutes,
                    doubled_caught_in_stage: m.doubled.caught_in_stage.share,
                    detects_tolerance: m.detects_tolerance,
                })
                .collect(),
        })
        .collect();
    PlanSummary {
        digest,
        computed_at,
        runs: u32::try_from(report.runs).unwrap_or(u32::MAX),
        observed_stage: observed.stage,
        observed_seconds: observed.seconds,
        traffic: traffic(report),
        stages,
        warnings: report.warnings.iter().map(|w| w.message()).collect(),
        error: None,
    }
}

/// The summary of a plan that could not be made: it says why, and is not tried again
/// until the stages or metrics change.
pub fn failed(
    error: &PlanError,
    spec: &FeatureRolloutSpec,
    observed: &ObservedTraffic,
    runs: usize,
    digest: String,
    computed_at: Timestamp,
) -> PlanSummary {
    let metrics = compared_metrics(spec);
    PlanSummary {
        digest,
        computed_at,
        runs: u32::try_from(runs).unwrap_or(u32::MAX),
        observed_stage: observed.stage,
        observed_seconds: observed.seconds,
        traffic: observed
            .traffic
            .iter()
            .map(|t| PlanTraffic {
                metric: t.name.clone(),
                requests_per_second: t.requests_per_second,
                baseline_rate: t.baseline_rate,
                target_multiplier: metrics
                    .iter()
                    .find(|m| m.name == t.name)
                    .map_or(2.0, |m| tolerance(m, t.baseline_rate).target_multiplier),
            })
            .collect(),
        stages: Vec::new(),
        warnings: Vec::new(),
        error: Some(error.to_string()),
    }
}

/// A stage that cannot catch a metric's tolerance target.
#[derive(Clone, Debug, PartialEq)]
pub struct Undetectable {
    /// The stage's name.
    pub stage: String,
    /// The metric's name.
    pub metric: String,
    /// The smallest multiple of the baseline rate it catches, if any.
    pub detectable: Option<f64>,
    /// The multiple it should catch.
    pub target: f64,
}

/// What a plan summary says about detection.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanCheck {
    /// Every simulated stage catches every metric's tolerance target.
    CanDetect,
    /// Some stages cannot.
    ToleranceUndetectable(Vec<Undetectable>),
    /// The plan could not be made (out of time, a failure).
    NotComputed(String),
}

impl PlanCheck {
    /// What `summary` says.
    pub fn of(summary: &PlanSummary) -> PlanCheck {
        if let Some(error) = &summary.error {
            return PlanCheck::NotComputed(error.clone());
        }
        let mut missed = Vec::new();
        for stage in &summary.stages {
            for m in &stage.metrics {
                if m.detects_tolerance == Some(false) {
                    let target = summary
                        .traffic
                        .iter()
                        .find(|t| t.metric == m.name)
                        .map_or(f64::NAN, |t| t.target_multiplier);
                    missed.push(Undetectable {
                        stage: stage.name.clone(),
                        metric: m.name.clone(),
                        detectable: m.detectable,
                        target,
                    });
                }
            }
        }
        if missed.is_empty() {
            PlanCheck::CanDetect
        } else {
            PlanCheck::ToleranceUndetectable(missed)
        }
    }

    /// The condition's status: `True`, `False` or `Unknown`.
    pub fn status(&self) -> &'static str {
        match self {
            PlanCheck::CanDetect => "True",
            PlanCheck::ToleranceUndetectable(_) => "False",
            PlanCheck::NotComputed(_) => "Unknown",
        }
    }

    /// The condition's PascalCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanCheck::CanDetect => "CanDetect",
            PlanCheck::ToleranceUndetectable(_) => "ToleranceUndetectable",
            PlanCheck::NotComputed(_) => "PlanNotComputed",
        }
    }

    /// The condition's message.
    pub fn message(&self) -> String {
        match self {
            PlanCheck::CanDetect => "At the traffic the first looks observed, every stage \
                catches twice each metric's tolerated increase (see status.plan)."
                .into(),
            PlanCheck::ToleranceUndetectable(missed) => {
                let each: Vec<String> = missed
                    .iter()
                    .map(|u| {
                        let seen = match u.detectable {
                            Some(d) => format!("catches only from {}", times(d)),
                            None => "catches no increase searched".into(),
                        };
                        format!(
                            "stage {} on {} ({seen}, should catch {})",
                            u.stage,
                            u.metric,
                            times(u.target)
                        )
                    })
                    .collect();
                format!(
                    "At the traffic the first looks observed, some stages cannot detect \
                     their tolerance: {} (see status.plan).",
                    each.join("; ")
                )
            }
            PlanCheck::NotComputed(error) => format!("The plan could not be computed: {error}."),
        }
    }
}

/// Puts a new plan summary in `status` with its condition. Returns the Warning event to
/// publish when it finds a stage that cannot detect a tolerance: once per new summary
/// (a new rollout, changed stages or metrics), never per look.
pub fn apply(
    status: &mut FeatureRolloutStatus,
    summary: PlanSummary,
    now: Timestamp,
) -> Option<Event> {
    let check = PlanCheck::of(&summary);
    let message = check.message();
    status.set_condition_status(CONDITION, check.status(), check.reason(), &message, now);
    let event = match &check {
        PlanCheck::ToleranceUndetectable(_) => {
            // The first warning says what would help; the condition lists every stage.
            let advice = summary
                .warnings
                .first()
                .map_or_else(String::new, |w| format!(" {w}."));
            Some(Event {
                type_: EventType::Warning,
                reason: UNDETECTABLE_EVENT,
                message: format!("{message}{advice}"),
            })
        }
        _ => None,
    };
    status.plan = Some(summary);
    event
}

/// Takes the plan out of `status` (a spec left without ratio or histogram metrics).
/// Says whether anything changed.
pub fn clear(status: &mut FeatureRolloutStatus) -> bool {
    let had = status.plan.take().is_some();
    let before = status.conditions.len();
    status.conditions.retain(|c| c.type_ != CONDITION);
    had || status.conditions.len() != before
}

/// The summary for people, a few lines (what `kubectl sluice status` and `sluice ctl
/// status` print under "Plan"): where the traffic came from, then per stage one line and
/// one indented line per metric.
pub fn lines(summary: &PlanSummary) -> Vec<String> {
    let mut out = Vec::new();
    let mut head = format!(
        "computed at {} from the traffic of stage {} over {}, {} simulated rollouts per figure",
        summary.computed_at,
        summary.observed_stage + 1,
        minutes(summary.observed_seconds / 60.0),
        summary.runs
    );
    if let Some(error) = &summary.error {
        let _ = write!(head, ": not computed: {error}");
        out.push(head);
        return out;
    }
    out.push(head);
    for t in &summary.traffic {
        out.push(format!(
            "{}: {:.2} requests/s, baseline rate {}; a stage should catch {}",
            t.metric,
            t.requests_per_second,
            percent(t.baseline_rate),
            times(t.target_multiplier)
        ));
    }
    for stage in &summary.stages {
        let name = format!(
            "{} ({} for {})",
            stage.name,
            stage.exposure,
            minutes(stage.minutes)
        );
        if let Some(why) = &stage.not_simulated {
            out.push(format!("{name}: not simulated: {why}"));
            continue;
        }
        out.push(format!("{name}:"));
        for m in &stage.metrics {
            if m.detects_tolerance.is_none() {
                out.push(format!(
                    "  {}: no simulated rollout reached the stage",
                    m.name
                ));
                continue;
            }
            let detect = match m.detectable {
                Some(d) => format!("detects from {}", times(d)),
                None => format!("detects no increase up to {}", times(m.searched_up_to)),
            };
            let verdict = if m.detects_tolerance == Some(false) {
                ", MISSES its tolerance"
            } else {
                ""
            };
            let doubled = match m.minutes_to_catch_doubled {
                Some(median) => format!(
                    "2× caught in the stage in {:.0} % of runs, median {} to rollback",
                    100.0 * m.doubled_caught_in_stage,
                    minutes(median)
                ),
                None => "2× never rolled back".into(),
            };
            out.push(format!("  {}: {detect}{verdict}; {doubled}", m.name));
        }
    }
    for w in &summary.warnings {
        out.push(format!("warning: {w}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::crd::validate::validate;
    use crate::crd::{AnalysisStatus, CohortNumbers, MetricAnalysis, Phase, Verdict};

    const SPEC: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { configMap: { name: shop-flags } }
stages:
  - { name: staff, weight: 100, audience: { in: [{ var: email }, ["a@example.com"]] }, duration: 5m }
  - { name: one-percent, weight: 1, duration: 5m }
  - { name: half, weight: 50, duration: 5m }
  - { weight: 100 }
analysis:
  interval: 1m
  prometheus: { address: "http://prometheus:9090" }
  metrics:
    - name: error-rate
      ratio: { errors: 'sum by (v) (x)', requests: 'sum by (v) (y)' }
      maxIncrease: { relative: "10%" }
    - name: memory
      guard: { query: 'max(m)', max: 1.5e9 }
"#;

    fn spec() -> FeatureRolloutSpec {
        serde_yaml_ng::from_str(SPEC).unwrap()
    }

    fn at(minutes: i64) -> Timestamp {
        "2026-12-01T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
    }

    fn metric(name: &str, baseline: (f64, f64), candidate: Option<f64>) -> MetricAnalysis {
        let mut m = crate::analysis::judge::failed(name, Vec::new(), String::new());
        m.verdict = Verdict::Inconclusive;
        m.baseline = Some(CohortNumbers {
            n: baseline.0,
            value: baseline.1,
        });
        m.candidate = candidate.map(|n| CohortNumbers { n, value: 0.0 });
        m
    }

    /// Running `stage` since minute 0, its last look at `minutes`.
    fn status(stage: u32, minutes: i64, metrics: Vec<MetricAnalysis>) -> FeatureRolloutStatus {
        FeatureRolloutStatus {
            phase: Phase::Progressing,
            stage: Some(stage),
            stage_started_at: Some(at(0)),
            last_analysis: Some(AnalysisStatus {
                at: at(minutes),
                stage,
                verdict: Verdict::Inconclusive,
                message: None,
                candidate_samples: None,
                metrics,
                sample_ratio: None,
                request_share: None,
            }),
            ..FeatureRolloutStatus::default()
        }
    }

    #[test]
    fn the_traffic_is_taken_from_the_third_interval_of_a_plain_stage() {
        let spec = spec();
        let valid = validate(&spec).unwrap();
        let looked = |stage, minutes| {
            let seen = vec![metric("error-rate", (17_820.0, 0.01), Some(180.0))];
            observed_traffic(&spec, &valid, &status(stage, minutes, seen))
        };
        assert_eq!(looked(1, 2), None, "two intervals are not enough");
        assert_eq!(looked(0, 4), None, "a stage with an audience is not used");
        assert_eq!(looked(3, 4), None, "100 % leaves no baseline cohort");
        let seen = looked(1, 3).expect("the third look of the 1 % stage");
        assert_eq!((seen.stage, seen.seconds), (1, 180.0));
        assert_eq!(seen.traffic.len(), 1, "guards are not planned");
        let t = &seen.traffic[0];
        assert_eq!(t.name, "error-rate");
        assert!((t.requests_per_second - 100.0).abs() < 1e-9);
        assert!((t.baseline_rate - (178.2 + 0.5) / 17_821.0).abs() < 1e-12);

        // A baseline without any bad event still plans on a positive rate; a metric
        // without a baseline count waits.
        let clean = vec![metric("error-rate", (999.0, 0.0), None)];
        let t = observed_traffic(&spec, &valid, &status(1, 3, clean)).unwrap();
        assert!((t.traffic[0].baseline_rate - 0.0005).abs() < 1e-12);
        let mut empty = metric("error-rate", (0.0, 0.0), None);
        empty.baseline = None;
        assert_eq!(
            observed_traffic(&spec, &valid, &status(1, 3, vec![empty])),
            None
        );
        // A look of another stage than the current one is not used.
        let mut moved = status(1, 3, vec![metric("error-rate", (100.0, 0.01), None)]);
        moved.stage = Some(2);
        assert_eq!(observed_traffic(&spec, &valid, &moved), None);
    }

    #[test]
    fn the_digest_follows_the_stages_and_metrics_only() {
        let base = spec();
        let d = digest(&base);
        assert_eq!(d, digest(&spec()), "stable");
        let mut moved = base.clone();
        moved
            .analysis
            .as_mut()
            .unwrap()
            .prometheus
            .as_mut()
            .unwrap()
            .address = "http://other:9090".into();
        moved.analysis.as_mut().unwrap().metrics[1]
            .guard
            .as_mut()
            .unwrap()
            .max = Some(2e9);
        moved.control.paused = true;
        assert_eq!(
            d,
            digest(&moved),
            "Prometheus, guards and controls do not matter"
        );
        let mut longer = base.clone();
        longer.stages[1].duration = Some("30m".into());
        assert_ne!(d, digest(&longer));
        let mut looser = base;
        looser.analysis.as_mut().unwrap().metrics[0]
            .max_increase
            .as_mut()
            .unwrap()
            .relative = Some("50%".into());
        assert_ne!(d, digest(&looser));
    }

    fn planned(rate: f64, runs: usize) -> (PlanSummary, ObservedTraffic) {
        let spec = spec();
        let observed = ObservedTraffic {
            stage: 1,
            seconds: 180.0,
            traffic: vec![MetricTraffic {
                name: "error-rate".into(),
                requests_per_second: rate,
                baseline_rate: 0.01,
            }],
        };
        let report = super::super::run(&input(&spec, &observed, runs)).unwrap();
        (
            summarize(&report, &observed, digest(&spec), at(3)),
            observed,
        )
    }

    #[test]
    fn a_stage_that_cannot_detect_its_tolerance_sets_the_condition_false_with_one_event() {
        // 2 requests/s: the 1 % stage sees 6 candidate requests in 5 minutes.
        let (summary, _) = planned(2.0, 20);
        assert_eq!(summary.runs, 20);
        let names: Vec<&str> = summary.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["staff", "one-percent", "half"],
            "the promotion is left out"
        );
        assert!(summary.stages[0].not_simulated.is_some());
        let one = &summary.stages[1].metrics[0];
        assert_eq!(one.detects_tolerance, Some(false));
        assert!((summary.traffic[0].target_multiplier - 1.2).abs() < 1e-9);
        let check = PlanCheck::of(&summary);
        let PlanCheck::ToleranceUndetectable(missed) = &check else {
            panic!("{check:?}")
        };
        assert!(
            missed
                .iter()
                .any(|u| u.stage == "one-percent" && u.metric == "error-rate"),
            "{missed:?}"
        );

        let mut status = FeatureRolloutStatus::default();
        let event = apply(&mut status, summary.clone(), at(4)).expect("a Warning event");
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, UNDETECTABLE_EVENT);
        assert!(
            event.message.contains("stage one-percent on error-rate"),
            "{}",
            event.message
        );
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION)
            .unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "ToleranceUndetectable")
        );
        assert_eq!(status.plan.as_ref(), Some(&summary));
        let text = lines(&summary).join("\n");
        assert!(
            text.contains("one-percent (1% for 5.0 min):\n  error-rate: detects from"),
            "{text}"
        );
        assert!(text.contains("MISSES its tolerance"), "{text}");
        assert!(
            text.contains("error-rate: 2.00 requests/s, baseline rate 1.00 %"),
            "{text}"
        );

        // Cleared when the spec has nothing left to plan.
        assert!(clear(&mut status));
        assert!(status.plan.is_none() && status.conditions.is_empty());
        assert!(!clear(&mut status));
    }

    #[test]
    fn a_plan_that_ran_out_of_time_is_unknown_without_an_event() {
        let spec = spec();
        let (_, observed) = planned(2.0, 10);
        let past = std::time::Instant::now();
        let error = super::super::run_until(&input(&spec, &observed, 20), Some(past))
            .expect_err("the deadline has passed");
        assert!(matches!(error, PlanError::OutOfTime(_)), "{error}");
        let summary = failed(&error, &spec, &observed, 20, digest(&spec), at(3));
        assert_eq!(
            summary.traffic.len(),
            1,
            "the traffic is kept for a later plan"
        );
        assert_eq!(ObservedTraffic::of_summary(&summary), Some(observed));
        let mut status = FeatureRolloutStatus::default();
        assert_eq!(apply(&mut status, summary.clone(), at(4)), None);
        let condition = &status.conditions[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("Unknown", "PlanNotComputed")
        );
        let text = lines(&summary).join("\n");
        assert!(
            text.contains("not computed: the simulation did not finish"),
            "{text}"
        );
    }
}
