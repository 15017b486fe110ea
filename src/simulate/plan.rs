//! `sluice plan`: what each stage of a rollout can detect, before it starts.
//!
//! The figures come from simulated rollouts of the rollout's own spec through the real
//! engine and analysis ([`SluiceRollout::from_spec`] and [`SluiceRollout::drive`], the
//! driver `sluice simulate` uses), on traffic drawn by [`TrafficSource`] at the request
//! rate and baseline rate of each metric (given by hand or read from Prometheus by the
//! command). No second model: a stage "catches" an increase when the engine rolls the
//! simulated rollout back while that stage runs.
//!
//! Per stage, with the harm starting when the engine enters the stage:
//! - the smallest multiple of each metric's baseline rate rolled back before the stage
//!   ends in at least [`DETECTION_POWER`] of the runs that reached it (a bisection over
//!   multiples, the same random streams for every multiple);
//! - for twice and five times the baseline rate: the share caught in the stage and before
//!   promotion, and the median minutes from the stage's start to the rollback among the
//!   runs rolled back (as `sluice simulate` reports it);
//! - from healthy (A/A) rollouts: the chance the stage is held past its end by
//!   `minSamples` or by a look that cannot judge yet, the minutes held, and the false
//!   rollbacks in the stage; the false-rollback budget the stage's looks may spend is the
//!   analysis's own (`budgetSpent` of its looks).
//!
//! What is not simulated: guard metrics (a threshold on a value, no sampling), the users
//! query (simulated assignment is exact), approvals (a person's wait) and stages with an
//! audience (the audience's share of the traffic is unknown): they are left out of the
//! simulated spec and the report says so.

pub mod summary;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::report::{Share, Summary};
use super::sluice_rule::{HOLD_CAP, SluiceRollout, Tick};
use super::traffic::{Cohorts, Traffic, TrafficSource};
use crate::analysis::judge;
use crate::analysis::ratio::MIN_COHORT_SAMPLES;
use crate::crd::validate::{self, ValidSpec};
use crate::crd::{
    Approval, Control, FeatureRolloutSpec, MetricSpec, Verdict, exposure_text, parse_percent,
};
use crate::engine::Decision;

/// Simulated rollouts per figure when no number is given.
pub const DEFAULT_RUNS: usize = 400;

/// The share of runs a stage must roll back before its end to "catch" an increase.
pub const DETECTION_POWER: f64 = 0.8;

/// Bisection steps of the search for the smallest increase caught (each halves the
/// interval in log scale: 6 steps leave at most 1.6 % of width between 1× and 2×).
const SEARCH_STEPS: u32 = 6;

/// The most planned looks one figure may simulate (runs × the plan's looks): a plan of
/// hours at one look per second would otherwise run for hours.
const MAX_LOOKS_PER_FIGURE: usize = 1_000_000;

/// The largest multiple of the baseline rate searched (besides a candidate rate of 1).
const MAX_MULTIPLIER: f64 = 1_000.0;

/// The traffic of one compared metric (a ratio or a histogram).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricTraffic {
    /// The metric's name.
    pub name: String,
    /// Events (requests) per second, both cohorts together.
    pub requests_per_second: f64,
    /// The share of bad events (errors, slow requests) while only the baseline is served.
    pub baseline_rate: f64,
}

/// What to plan.
#[derive(Clone, Debug)]
pub struct Input {
    /// The rollout's spec, as written.
    pub spec: FeatureRolloutSpec,
    /// One entry per ratio or histogram metric of the spec, in the spec's order.
    pub traffic: Vec<MetricTraffic>,
    /// Distinct users seen over each stage's duration (all of them, both cohorts), per
    /// stage of the spec, when a users query was read.
    pub users: Vec<Option<f64>>,
    /// Coefficient of variation of a per-cohort, per-look Gamma multiplier of the bad
    /// rate (bursty failures); `None` for binomial errors.
    pub burstiness: Option<f64>,
    /// Where the traffic figures come from, in words (printed with the report).
    pub traffic_source: String,
    /// Simulated rollouts per figure.
    pub runs: usize,
    /// Base seed of the random streams.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
}

/// A share of runs with its binomial standard error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    /// Runs counted.
    pub count: usize,
    /// Runs in the denominator.
    pub runs: usize,
    /// `count / runs`.
    pub share: f64,
    /// `sqrt(share (1 − share) / runs)`.
    pub standard_error: f64,
}

impl Rate {
    fn new(count: usize, runs: usize) -> Rate {
        let s = Share::new(count, runs);
        Rate {
            count,
            runs,
            share: s.value,
            standard_error: s.standard_error,
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Share::new(self.count, self.runs).fmt(f)
    }
}

/// What healthy (A/A) rollouts did in a stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Healthy {
    /// Runs that reached the stage (the denominator of the shares).
    pub reached: usize,
    /// Held past the stage's planned end.
    pub held: Rate,
    /// Held at the planned end because the candidate had fewer than `minSamples`.
    pub held_by_min_samples: Rate,
    /// Held at the planned end, with `minSamples` reached, because the look could not
    /// judge yet (too little data, a dispersion too uncertain): `Inconclusive`.
    pub held_by_too_little_data: Rate,
    /// Mean minutes held past the planned end, over the runs that reached the stage.
    pub mean_minutes_held: f64,
    /// Rolled back in the stage (all false: the candidate is as good as the baseline).
    pub false_rollbacks: Rate,
}

/// What a harm of a given size, starting when the stage begins, met.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Harm {
    /// The candidate's bad rate over the baseline's.
    pub multiplier: f64,
    /// Rolled back while the stage ran, among the runs that reached it.
    pub caught_in_stage: Rate,
    /// Rolled back before promotion (in the stage or a later one).
    pub caught_before_promotion: Rate,
    /// Median minutes from the stage's start to the rollback, among the runs rolled back
    /// after it began.
    pub median_minutes: Option<f64>,
    /// A distribution-free 95 % interval of that median.
    pub median_interval: Option<(f64, f64)>,
}

/// The smallest increase a stage catches.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detection {
    /// The candidate's bad rate over the baseline's.
    pub multiplier: f64,
    /// The candidate's bad rate.
    pub candidate_rate: f64,
    /// Its share caught in the stage.
    pub caught: Rate,
}

/// One metric's figures in one stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageMetric {
    /// The metric's name.
    pub name: String,
    /// The smallest increase rolled back before the stage ends in at least
    /// [`DETECTION_POWER`] of runs; `None` when not even the largest searched is.
    pub detectable: Option<Detection>,
    /// The largest multiple searched, when nothing was caught often enough.
    pub searched_up_to: f64,
    /// Twice the baseline rate.
    pub doubled: Harm,
    /// Five times the baseline rate.
    pub fivefold: Harm,
    /// Whether the stage catches the tolerance's target ([`Tolerance::target_multiplier`]).
    pub detects_tolerance: Option<bool>,
}

/// One stage of the plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    /// Index in the spec's stages.
    pub index: usize,
    /// The stage's name.
    pub name: String,
    /// The exposure, as status writes it.
    pub exposure: String,
    /// Its least duration.
    pub duration_seconds: f64,
    /// Its `minSamples`.
    pub min_samples: Option<u64>,
    /// Why the stage was not simulated (an audience, or the final promotion).
    pub not_simulated: Option<String>,
    /// Expected candidate requests over the stage's duration (the first metric's rate);
    /// `None` for a stage with an audience.
    pub expected_candidate_requests: Option<f64>,
    /// Expected distinct candidate users over the stage's duration, when a users query
    /// was read.
    pub expected_candidate_users: Option<f64>,
    /// The false-rollback budget the stage's looks may spend (a probability): its share
    /// of each comparison's budget, as the analysis plans it, plus each `max` test's
    /// per-stage budget.
    pub false_rollback_budget: Option<f64>,
    /// The share of each comparison's budget spent by the stage's planned looks.
    pub comparison_budget_share: Option<f64>,
    /// Healthy rollouts in this stage.
    pub healthy: Option<Healthy>,
    /// Per compared metric.
    pub metrics: Vec<StageMetric>,
}

/// A metric's tolerance: what its tests call harm.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tolerance {
    /// The metric's name.
    pub metric: String,
    /// Its baseline rate.
    pub baseline_rate: f64,
    /// The `maxIncrease`/`max` as written.
    pub written: String,
    /// The lowest candidate rate its tests call harm, when above the baseline's.
    pub harm_from: Option<f64>,
    /// The increase a stage should catch: twice the tolerated increase over the baseline
    /// (harm clearly beyond the tolerance), as a multiple of the baseline rate; a
    /// doubling when nothing is tolerated (`maxIncrease: 0%`).
    pub target_multiplier: f64,
}

/// Something about the plan a user should act on.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Warning {
    /// A stage's expected candidate requests are below its `minSamples`.
    MinSamplesUnreachable {
        /// The stage's name.
        stage: String,
        /// Expected candidate requests in its duration.
        expected: f64,
        /// Its `minSamples`.
        min_samples: u64,
        /// Minutes the stage needs at this traffic to see them.
        minutes_needed: f64,
    },
    /// A stage's expected candidate requests are below what a look needs to pass.
    TooLittleData {
        /// The stage's name.
        stage: String,
        /// Expected candidate requests in its duration.
        expected: f64,
        /// Events each cohort needs.
        needed: f64,
    },
    /// A stage cannot catch its metric's tolerance target.
    ToleranceUndetectable {
        /// The stage's name.
        stage: String,
        /// The metric's name.
        metric: String,
        /// The sentence.
        message: String,
    },
    /// The baseline is already above a metric's `max`.
    BaselineAboveMax {
        /// The metric's name.
        metric: String,
        /// The baseline rate.
        baseline_rate: f64,
        /// The `max`.
        max: f64,
    },
}

impl Warning {
    /// The warning as a sentence.
    pub fn message(&self) -> String {
        match self {
            Warning::MinSamplesUnreachable {
                stage,
                expected,
                min_samples,
                minutes_needed,
            } => format!(
                "stage {stage} cannot reach its minSamples in its duration: it expects {} \
                 candidate requests and needs {min_samples}, so it holds until about {} \
                 after it starts; lower minSamples, lengthen the stage or raise its weight",
                count(*expected),
                minutes(*minutes_needed)
            ),
            Warning::TooLittleData {
                stage,
                expected,
                needed,
            } => format!(
                "stage {stage} expects {} candidate requests in its duration; a look needs \
                 {needed} events in each cohort before it can pass (or fail on a \
                 comparison), so the stage holds past its end; lengthen it or raise its weight",
                count(*expected)
            ),
            Warning::ToleranceUndetectable { message, .. } => message.clone(),
            Warning::BaselineAboveMax {
                metric,
                baseline_rate,
                max,
            } => format!(
                "metric {metric}: the baseline's rate {} is already above its max {}: a \
                 candidate as good as the baseline would be rolled back",
                percent(*baseline_rate),
                percent(*max)
            ),
        }
    }
}

/// Everything `sluice plan` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Where the traffic figures come from, in words.
    pub traffic_source: String,
    /// The traffic the figures assume.
    pub traffic: Vec<MetricTraffic>,
    /// Burstiness assumed (Gamma coefficient of variation), if any.
    pub burstiness: Option<f64>,
    /// The rollout's `confidence`.
    pub confidence: f64,
    /// Simulated rollouts per figure.
    pub runs: usize,
    /// Base seed.
    pub seed: u64,
    /// Each metric's tolerance.
    pub tolerances: Vec<Tolerance>,
    /// The stages, in the spec's order.
    pub stages: Vec<StageReport>,
    /// Things to act on.
    pub warnings: Vec<Warning>,
    /// What the simulation left out or assumed.
    pub notes: Vec<String>,
    /// Wall time of the simulation, seconds.
    pub elapsed_seconds: f64,
}

/// A problem with the input, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    /// Where (`spec.analysis.metrics`, `--baseline-rate`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for InputError {}

fn input_error(field: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError {
        field: field.into(),
        message: message.into(),
    }
}

/// The metrics `sluice plan` simulates: the spec's ratio and histogram metrics, in order.
pub fn compared_metrics(spec: &FeatureRolloutSpec) -> Vec<&MetricSpec> {
    spec.analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .filter(|m| m.guard.is_none())
        .collect()
}

/// The spec the simulation runs: the user's, with its guards, users query, approvals,
/// audience stages, notifications and controls left out; and the index in the spec of
/// each simulated stage.
fn simulated_spec(spec: &FeatureRolloutSpec) -> (FeatureRolloutSpec, Vec<usize>) {
    let mut sim = spec.clone();
    sim.control = Control::default();
    sim.notifications.clear();
    if let Some(analysis) = &mut sim.analysis {
        analysis.users = None;
        analysis.metrics.retain(|m| m.guard.is_none());
    }
    let kept: Vec<usize> = (0..spec.stages.len())
        .filter(|&i| spec.stages[i].audience.is_none())
        .collect();
    sim.stages = kept
        .iter()
        .map(|&i| {
            let mut stage = spec.stages[i].clone();
            stage.approval = Approval::Auto;
            stage
        })
        .collect();
    (sim, kept)
}

/// Checks the input: a valid spec with at least one ratio or histogram metric and a
/// stage to simulate, one traffic entry per such metric with sane numbers.
fn check(input: &Input) -> Result<(ValidSpec, SluiceRollout, Vec<usize>), InputError> {
    let valid = validate::validate(&input.spec).map_err(|problems| {
        let first = &problems[0];
        let rest: Vec<String> = problems[1..].iter().map(ToString::to_string).collect();
        let mut message = first.message.clone();
        if !rest.is_empty() {
            message = format!("{message}; also {}", rest.join("; "));
        }
        input_error(first.field.clone(), message)
    })?;
    let metrics = compared_metrics(&input.spec);
    if metrics.is_empty() {
        return Err(input_error(
            "spec.analysis.metrics",
            "no ratio or histogram metric: without a comparison there is nothing a stage \
             can detect",
        ));
    }
    if input.traffic.len() != metrics.len() {
        return Err(input_error(
            "traffic",
            format!(
                "{} metric(s) to simulate, traffic for {}",
                metrics.len(),
                input.traffic.len()
            ),
        ));
    }
    for (metric, traffic) in metrics.iter().zip(&input.traffic) {
        if !(traffic.requests_per_second.is_finite() && traffic.requests_per_second > 0.0) {
            return Err(input_error(
                "--traffic",
                format!(
                    "metric {}: {} requests/s: the rate must be a positive number",
                    metric.name, traffic.requests_per_second
                ),
            ));
        }
        if !(traffic.baseline_rate.is_finite()
            && traffic.baseline_rate > 0.0
            && traffic.baseline_rate < 1.0)
        {
            return Err(input_error(
                "--baseline-rate",
                format!(
                    "metric {}: {}: the baseline's share of bad events must be above 0 and \
                     below 1 (a share, e.g. 0.01 for 1 %; for a baseline without any, give \
                     the rate you would still call healthy, e.g. 0.001)",
                    metric.name, traffic.baseline_rate
                ),
            ));
        }
    }
    if let Some(cv) = input.burstiness
        && !(cv.is_finite() && cv > 0.0)
    {
        return Err(input_error(
            "--burstiness",
            format!("{cv}: a coefficient of variation must be a positive number"),
        ));
    }
    if input.runs < 10 {
        return Err(input_error(
            "--runs",
            format!("{}: at least 10 runs per figure", input.runs),
        ));
    }
    let (sim, kept) = simulated_spec(&input.spec);
    let simulable = kept.iter().any(|&i| !valid.stages[i].duration.is_zero());
    if !simulable {
        return Err(input_error(
            "spec.stages",
            "no stage to simulate: every stage with a duration has an audience, whose share \
             of the traffic sluice plan cannot know",
        ));
    }
    if let Err(problems) = validate::validate(&sim) {
        return Err(input_error(
            "spec.stages",
            format!(
                "without its audience stages (not simulated) the plan is not valid: {}",
                problems[0]
            ),
        ));
    }
    let rollout = SluiceRollout::from_spec(sim).map_err(|e| input_error("spec", e))?;
    Ok((valid, rollout, kept))
}

/// Each metric's tolerance, from its `maxIncrease` and `max`.
fn tolerance(metric: &MetricSpec, baseline_rate: f64) -> Tolerance {
    let mut written = Vec::new();
    let mut harm_from: Option<f64> = None;
    let mut lower = |rate: f64| harm_from = Some(harm_from.map_or(rate, |h: f64| h.min(rate)));
    if let Some(t) = &metric.max_increase {
        if let Some(r) = t.relative.as_deref() {
            written.push(format!("maxIncrease {r} relative"));
            if let Ok(r) = parse_percent(r) {
                lower(baseline_rate * (1.0 + r));
            }
        } else if let Some(a) = t.absolute.as_deref() {
            written.push(format!("maxIncrease {a} absolute"));
            if let Ok(a) = parse_percent(a) {
                lower(baseline_rate + a);
            }
        }
    }
    if let Some(max) = metric.max.as_deref() {
        written.push(format!("max {max}"));
        if let Ok(max) = parse_percent(max) {
            lower(max);
        }
    }
    let harm_from = harm_from.filter(|h| *h > baseline_rate);
    let target_multiplier = match harm_from {
        Some(h) => (baseline_rate + 2.0 * (h - baseline_rate)) / baseline_rate,
        None => 2.0,
    };
    Tolerance {
        metric: metric.name.clone(),
        baseline_rate,
        written: if written.is_empty() {
            "none".into()
        } else {
            written.join(", ")
        },
        harm_from,
        target_multiplier,
    }
}

/// The random stream of one run of one experiment (a key for the stage and metric, or the
/// healthy rollouts): every multiple of a stage's search sees the same traffic draws.
fn run_rng(seed: u64, key: u32, run: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((u64::from(key) << 32) | (run as u64 & 0xffff_ffff));
    rng
}

/// Runs `per_run` for every run index on `threads` threads; results in run order.
fn parallel<T: Send>(runs: usize, threads: usize, per_run: impl Fn(usize) -> T + Sync) -> Vec<T> {
    const CHUNK: usize = 16;
    let next = AtomicUsize::new(0);
    let per_run = &per_run;
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let next = &next;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= runs {
                            break;
                        }
                        for run in start..(start + CHUNK).min(runs) {
                            out.push((run, per_run(run)));
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a plan worker panicked"))
            .collect()
    });
    done.sort_by_key(|(run, _)| *run);
    done.into_iter().map(|(_, t)| t).collect()
}

/// One healthy or harmed run, as the stages saw it.
#[derive(Clone, Debug, Default)]
struct RunRecord {
    /// Per simulated stage: the tick it began at.
    entered: Vec<Option<u32>>,
    /// Per simulated stage: looks it ran past its planned end.
    held: Vec<u32>,
    /// Per simulated stage: why it was held at its planned end.
    held_by: Vec<Option<HeldBy>>,
    /// Per simulated stage: the comparison budget share spent at its planned end.
    budget: Vec<Option<f64>>,
    /// The tick and stage of the rollback.
    rollback: Option<(u32, usize)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeldBy {
    MinSamples,
    TooLittleData,
    Other,
}

/// The simulation of one input.
struct Simulation<'a> {
    input: &'a Input,
    rollout: SluiceRollout,
    /// The simulated spec, validated.
    valid: ValidSpec,
    /// The most intervals a rollout runs ([`hold_cap`]).
    cap: u32,
    /// When to give up, if ever.
    deadline: Option<Instant>,
    /// Set once the deadline passed: every run after it returns at once, empty.
    stopped: AtomicBool,
}

/// The most intervals a simulated rollout of the plan runs before it is stopped as held:
/// [`HOLD_CAP`] times the plan's length, where each stage counts for as long as it needs
/// at the expected traffic to see its `minSamples` and the events a look needs in each
/// cohort, so that holds in early stages leave the later ones their whole duration.
fn hold_cap(valid: &ValidSpec, look_seconds: u32, traffic: &[MetricTraffic]) -> u32 {
    let rate = traffic
        .iter()
        .map(|t| t.requests_per_second)
        .fold(f64::INFINITY, f64::min);
    let seconds = f64::from(look_seconds.max(1));
    let looks: f64 = valid
        .stages
        .iter()
        .filter(|s| !s.duration.is_zero())
        .map(|s| {
            let planned = (s.duration.as_secs_f64() / seconds).ceil();
            let w = s.weight.fraction();
            let share = w.min(1.0 - w).max(1e-6);
            let needed = s
                .min_samples
                .map_or(0.0, |m| m as f64 / w.max(1e-6))
                .max(MIN_COHORT_SAMPLES / share)
                / rate.max(1e-9)
                / seconds;
            planned.max(needed.ceil())
        })
        .sum();
    (f64::from(HOLD_CAP) * looks.max(1.0)).min(f64::from(u32::MAX / 2)) as u32
}

impl Simulation<'_> {
    fn stages(&self) -> usize {
        self.rollout.schedule().stages.len()
    }

    /// Whether the deadline has passed (checked before each run: a run is short).
    fn out_of_time(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return true;
        }
        let late = self.deadline.is_some_and(|d| Instant::now() >= d);
        if late {
            self.stopped.store(true, Ordering::Relaxed);
        }
        late
    }

    /// One rollout: the metric `harmed` has `multiplier` times its baseline rate once the
    /// engine enters the simulated stage `from`; stops after that stage when `whole` is
    /// false.
    fn run(
        &self,
        key: u32,
        run: usize,
        harmed: Option<(usize, usize, f64)>,
        whole: bool,
    ) -> RunRecord {
        let stages = self.stages();
        if self.out_of_time() {
            return RunRecord {
                entered: vec![None; stages],
                held: vec![0; stages],
                held_by: vec![None; stages],
                budget: vec![None; stages],
                rollback: None,
            };
        }
        let schedule = self.rollout.schedule();
        let look_seconds = schedule.look_seconds;
        let mut rng = run_rng(self.input.seed, key, run);
        let mut sources: Vec<TrafficSource> = self
            .input
            .traffic
            .iter()
            .map(|t| {
                let traffic = Traffic {
                    requests_per_second: t.requests_per_second,
                    error_rate: t.baseline_rate,
                    burstiness: self.input.burstiness,
                    users: None,
                };
                TrafficSource::new(&mut rng, &traffic, look_seconds)
            })
            .collect();
        let mut record = RunRecord {
            entered: vec![None; stages],
            held: vec![0; stages],
            held_by: vec![None; stages],
            budget: vec![None; stages],
            rollback: None,
        };
        record.entered[0] = Some(0);
        let mut current = 0_usize;
        let mut draw = |_index: u32, stage: usize, exposure: f64| -> Vec<Cohorts> {
            sources
                .iter_mut()
                .enumerate()
                .map(|(i, source)| {
                    let harm = match harmed {
                        Some((metric, from, m)) if metric == i && stage >= from => m,
                        _ => 1.0,
                    };
                    source.draw(&mut rng, exposure, harm)
                })
                .collect()
        };
        let valid = &self.valid;
        let trace = |tick: &Tick| -> bool {
            let k = (tick.now.as_second() / i64::from(look_seconds.max(1))) as u32;
            let planned_end = record.entered[current].map(|e| e + schedule.stages[current].minutes);
            if planned_end == Some(k)
                && matches!(tick.decision, Decision::Hold { .. })
                && let Some(a) = tick.status.last_analysis.as_ref()
            {
                let short = valid.stages[current]
                    .min_samples
                    .is_some_and(|min| a.candidate_samples.unwrap_or(0) < min);
                record.held_by[current] = Some(if short {
                    HeldBy::MinSamples
                } else if a.verdict == Verdict::Inconclusive {
                    HeldBy::TooLittleData
                } else {
                    HeldBy::Other
                });
            }
            if planned_end.is_some_and(|end| k > end) {
                record.held[current] = k - planned_end.unwrap_or(k);
            }
            if planned_end.is_some_and(|end| k >= end)
                && record.budget[current].is_none()
                && let Some(a) = tick.status.last_analysis.as_ref()
                && a.stage as usize == current
            {
                record.budget[current] = a.metrics.iter().find_map(|m| m.budget_spent);
            }
            match tick.decision {
                Decision::Rollback { .. } => record.rollback = Some((k, current)),
                Decision::Advance { to, .. } => {
                    current = to as usize;
                    if let Some(entered) = record.entered.get_mut(current) {
                        *entered = Some(k);
                    }
                }
                _ => {}
            }
            let past = harmed.is_some_and(|(_, from, _)| current > from);
            whole || !past
        };
        self.rollout.drive(&mut draw, u32::MAX, self.cap, trace);
        record
    }
}

/// What a harm of `multiplier` met in the simulated stage `stage`, from its records.
fn harm(records: &[RunRecord], stage: usize, multiplier: f64, look_seconds: u32) -> Harm {
    let reached: Vec<&RunRecord> = records
        .iter()
        .filter(|r| r.entered[stage].is_some())
        .collect();
    let mut in_stage = 0;
    let mut minutes = Vec::new();
    for r in &reached {
        let entered = r.entered[stage].unwrap_or(0);
        if let Some((k, s)) = r.rollback
            && s >= stage
        {
            in_stage += usize::from(s == stage);
            minutes.push(k - entered);
        }
    }
    minutes.sort_unstable();
    let caught = minutes.len();
    let summary = Summary {
        runs: reached.len(),
        rolled_back: caught,
        before_onset: 0,
        minutes_to_rollback: minutes,
        excess_errors: Vec::new(),
        ended_in_stage: Vec::new(),
        held: 0,
        held_looks: 0,
        stuck: Vec::new(),
    };
    let scale = f64::from(look_seconds) / 60.0;
    let median = summary.median_minutes();
    Harm {
        multiplier,
        caught_in_stage: Rate::new(in_stage, reached.len()),
        caught_before_promotion: Rate::new(caught, reached.len()),
        median_minutes: median.map(|(m, _, _)| f64::from(m) * scale),
        median_interval: median.map(|(_, lo, hi)| (f64::from(lo) * scale, f64::from(hi) * scale)),
    }
}

/// The share caught in the simulated stage `stage`.
fn caught_in_stage(records: &[RunRecord], stage: usize) -> Rate {
    let reached = records.iter().filter(|r| r.entered[stage].is_some());
    let (mut n, mut caught) = (0, 0);
    for r in reached {
        n += 1;
        caught += usize::from(r.rollback.is_some_and(|(_, s)| s == stage));
    }
    Rate::new(caught, n)
}

/// A checked input, ready to simulate.
struct Prepared {
    /// The user's spec, validated.
    valid: ValidSpec,
    /// The simulated rollout.
    rollout: SluiceRollout,
    /// The index in the spec of each simulated stage.
    kept: Vec<usize>,
    /// The simulated spec, validated.
    sim_valid: ValidSpec,
    /// The most intervals a simulated rollout runs.
    cap: u32,
    /// The looks of the plan at the input's traffic, holds included.
    looks: usize,
}

fn prepare(input: &Input) -> Result<Prepared, InputError> {
    let (valid, rollout, kept) = check(input)?;
    let sim_valid = validate::validate(rollout.spec())
        .map_err(|p| input_error("spec", format!("the simulated spec is invalid: {}", p[0])))?;
    let cap = hold_cap(&sim_valid, rollout.schedule().look_seconds, &input.traffic);
    let looks = (cap / HOLD_CAP).max(1) as usize;
    Ok(Prepared {
        valid,
        rollout,
        kept,
        sim_valid,
        cap,
        looks,
    })
}

/// The most runs per figure [`run`] accepts for `input` (its `runs` aside): a plan of many
/// looks (long stages, a short interval, holds for `minSamples` at low traffic) affords
/// fewer.
pub fn affordable_runs(input: &Input) -> Result<usize, InputError> {
    Ok(MAX_LOOKS_PER_FIGURE / prepare(input)?.looks)
}

/// Why a plan with a deadline was not made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The input cannot be planned.
    #[error("{0}")]
    Input(#[from] InputError),
    /// The simulation did not finish before its deadline.
    #[error("the simulation did not finish within {}", minutes(.0.as_secs_f64() / 60.0))]
    OutOfTime(Duration),
    /// The simulation panicked (a bug): the plan is not made.
    #[error("the simulation failed: {0}")]
    Panicked(String),
}

/// Simulates the plan and reports what each stage can detect.
pub fn run(input: &Input) -> Result<Report, InputError> {
    run_until(input, None).map_err(|e| match e {
        PlanError::Input(e) => e,
        // Neither happens without a deadline; a panic unwinds through here.
        other => input_error("plan", other.to_string()),
    })
}

/// [`run`], giving up at `deadline`: the simulation checks it before each simulated
/// rollout, so it ends soon after (one rollout of the plan later at most per thread).
pub fn run_until(input: &Input, deadline: Option<Instant>) -> Result<Report, PlanError> {
    let started = Instant::now();
    let Prepared {
        valid,
        rollout,
        kept,
        sim_valid,
        cap,
        looks,
    } = prepare(input)?;
    let look_seconds = rollout.schedule().look_seconds;
    if input.runs.saturating_mul(looks) > MAX_LOOKS_PER_FIGURE {
        return Err(PlanError::Input(input_error(
            "--runs",
            format!(
                "{} runs of a plan of {looks} looks (one every {} s, with the holds its \
                 minSamples need at this traffic) would take too long; use at most --runs {}",
                input.runs,
                rollout.schedule().look_seconds,
                MAX_LOOKS_PER_FIGURE / looks
            ),
        )));
    }
    let sim = Simulation {
        input,
        rollout,
        valid: sim_valid.clone(),
        cap,
        deadline,
        stopped: AtomicBool::new(false),
    };
    let metrics = compared_metrics(&input.spec);
    let tolerances: Vec<Tolerance> = metrics
        .iter()
        .zip(&input.traffic)
        .map(|(m, t)| tolerance(m, t.baseline_rate))
        .collect();
    let stages = sim.stages();
    let runs = input.runs;
    let threads = input.threads.max(1);

    // Healthy rollouts.
    let healthy = parallel(runs, threads, |run| sim.run(0, run, None, true));

    // Per stage and metric: 2×, 5×, then the search.
    let sim_spec = sim.rollout.spec().clone();
    let mut per_stage: Vec<Vec<StageMetric>> = vec![Vec::new(); stages];
    for (stage, figures) in per_stage.iter_mut().enumerate() {
        if sim_valid.stages[stage].duration.is_zero() {
            continue;
        }
        for (j, traffic) in input.traffic.iter().enumerate() {
            let key = 1 + (stage * input.traffic.len() + j) as u32;
            let whole = |m: f64| {
                parallel(runs, threads, |run| {
                    sim.run(key, run, Some((j, stage, m)), true)
                })
            };
            let partial = |m: f64| {
                let records = parallel(runs, threads, |run| {
                    sim.run(key, run, Some((j, stage, m)), false)
                });
                caught_in_stage(&records, stage)
            };
            let doubled_runs = whole(2.0);
            let fivefold_runs = whole(5.0);
            let doubled = harm(&doubled_runs, stage, 2.0, look_seconds);
            let fivefold = harm(&fivefold_runs, stage, 5.0, look_seconds);
            let cap = (1.0 / traffic.baseline_rate).clamp(1.0, MAX_MULTIPLIER);
            let enough = |r: &Rate| r.runs > 0 && r.share >= DETECTION_POWER;
            let mut points: Vec<(f64, Option<Rate>)> = vec![
                (2.0, Some(doubled.caught_in_stage)),
                (5.0, Some(fivefold.caught_in_stage)),
                (cap, None),
            ];
            points.retain(|(m, _)| *m <= cap);
            if points.last().is_none_or(|(m, _)| *m < cap) {
                points.push((cap, None));
            }
            let mut lo = 1.0;
            let mut found: Option<(f64, Rate)> = None;
            for (m, known) in points {
                let rate = known.unwrap_or_else(|| partial(m));
                if enough(&rate) {
                    found = Some((m, rate));
                    break;
                }
                lo = m;
            }
            let detectable = found.map(|(mut hi, mut rate)| {
                for _ in 0..SEARCH_STEPS {
                    let mid = (lo * hi).sqrt();
                    let r = partial(mid);
                    if enough(&r) {
                        hi = mid;
                        rate = r;
                    } else {
                        lo = mid;
                    }
                }
                Detection {
                    multiplier: hi,
                    candidate_rate: (hi * traffic.baseline_rate).min(1.0),
                    caught: rate,
                }
            });
            let target = tolerances[j].target_multiplier;
            figures.push(StageMetric {
                name: traffic.name.clone(),
                detects_tolerance: (doubled.caught_in_stage.runs > 0)
                    .then(|| detectable.as_ref().is_some_and(|d| d.multiplier <= target)),
                detectable,
                searched_up_to: cap,
                doubled,
                fivefold,
            });
        }
    }

    // The budget the analysis plans per stage.
    let per_test = judge::budget_per_test(&sim_valid);
    let per_max = judge::alpha_per_test(&sim_valid);
    let comparisons = compared_metrics(&sim_spec)
        .iter()
        .filter(|m| m.max_increase.is_some())
        .count();
    let maxes = compared_metrics(&sim_spec)
        .iter()
        .filter(|m| m.max.is_some())
        .count();
    let cumulative: Vec<Option<f64>> = (0..stages)
        .map(|s| healthy.iter().find_map(|r| r.budget[s]))
        .collect();

    let mut reports = Vec::new();
    let mut warnings = Vec::new();
    let mut sim_index = 0;
    let first_rate = input.traffic[0].requests_per_second;
    for (index, stage) in valid.stages.iter().enumerate() {
        let duration = stage.duration.as_secs_f64();
        let weight = stage.weight.fraction();
        let simulated = kept.get(sim_index) == Some(&index);
        let expected = first_rate * weight * duration;
        let mut report = StageReport {
            index,
            name: stage.name.clone(),
            exposure: exposure_text(stage.weight, stage.audience.is_some()),
            duration_seconds: duration,
            min_samples: stage.min_samples,
            not_simulated: None,
            expected_candidate_requests: stage.audience.is_none().then_some(expected),
            expected_candidate_users: input
                .users
                .get(index)
                .copied()
                .flatten()
                .filter(|_| stage.audience.is_none())
                .map(|u| u * weight),
            false_rollback_budget: None,
            comparison_budget_share: None,
            healthy: None,
            metrics: Vec::new(),
        };
        if !simulated {
            report.not_simulated = Some(
                "the stage has an audience: its share of the traffic is unknown to sluice plan"
                    .into(),
            );
            reports.push(report);
            continue;
        }
        let s = sim_index;
        sim_index += 1;
        if duration == 0.0 {
            report.not_simulated = Some("the final stage: entering it is promotion".into());
            reports.push(report);
            continue;
        }
        let share = cumulative[s].map(|c| {
            let before = (0..s).rev().find_map(|p| cumulative[p]).unwrap_or(0.0);
            (c - before).max(0.0)
        });
        report.comparison_budget_share = share;
        report.false_rollback_budget =
            Some(share.unwrap_or(0.0) * per_test * comparisons as f64 + per_max * maxes as f64);
        let reached: Vec<&RunRecord> = healthy.iter().filter(|r| r.entered[s].is_some()).collect();
        let n = reached.len();
        let held_by = |why: HeldBy| {
            reached
                .iter()
                .filter(|r| r.held[s] > 0 && r.held_by[s] == Some(why))
                .count()
        };
        report.healthy = Some(Healthy {
            reached: n,
            held: Rate::new(reached.iter().filter(|r| r.held[s] > 0).count(), n),
            held_by_min_samples: Rate::new(held_by(HeldBy::MinSamples), n),
            held_by_too_little_data: Rate::new(held_by(HeldBy::TooLittleData), n),
            mean_minutes_held: reached.iter().map(|r| f64::from(r.held[s])).sum::<f64>()
                * f64::from(look_seconds)
                / 60.0
                / n.max(1) as f64,
            false_rollbacks: Rate::new(
                reached
                    .iter()
                    .filter(|r| r.rollback.is_some_and(|(_, at)| at == s))
                    .count(),
                n,
            ),
        });
        report.metrics = std::mem::take(&mut per_stage[s]);

        if let Some(min) = stage.min_samples
            && expected < min as f64
        {
            warnings.push(Warning::MinSamplesUnreachable {
                stage: stage.name.clone(),
                expected,
                min_samples: min,
                minutes_needed: min as f64 / (first_rate * weight) / 60.0,
            });
        } else if weight < 1.0 && expected < MIN_COHORT_SAMPLES {
            warnings.push(Warning::TooLittleData {
                stage: stage.name.clone(),
                expected,
                needed: MIN_COHORT_SAMPLES,
            });
        }
        reports.push(report);
    }

    for t in &tolerances {
        if let Some(max) = metrics
            .iter()
            .find(|m| m.name == t.metric)
            .and_then(|m| m.max.as_deref())
            .and_then(|m| parse_percent(m).ok())
            && t.baseline_rate >= max
        {
            warnings.push(Warning::BaselineAboveMax {
                metric: t.metric.clone(),
                baseline_rate: t.baseline_rate,
                max,
            });
        }
    }
    warnings.extend(tolerance_warnings(&reports, &tolerances));

    let mut notes = vec![
        "each figure is from simulated rollouts of this spec through the engine and the \
         analysis (the code the controller runs), with Poisson arrivals and binomial bad \
         events at the rates shown; real traffic is burstier (see --burstiness), so these \
         figures are the best case"
            .to_owned(),
        "a harm starts when the engine enters the stage; \"caught\" means rolled back \
         while the stage runs (held overtime included); medians are among the runs rolled \
         back"
            .to_owned(),
    ];
    let guards: Vec<&str> = input
        .spec
        .analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .filter(|m| m.guard.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if !guards.is_empty() {
        notes.push(format!(
            "guard metrics are not simulated (a threshold on a value, no sampling): {}",
            guards.join(", ")
        ));
    }
    if input
        .spec
        .stages
        .iter()
        .any(|s| s.approval == Approval::Required)
    {
        notes.push(
            "approvals are taken as given at once: the wait for a person is not simulated".into(),
        );
    }
    if input
        .spec
        .analysis
        .as_ref()
        .is_some_and(|a| a.users.is_some())
    {
        notes.push(
            "the users query's sample-ratio check is not simulated (simulated assignment is \
             exact)"
                .into(),
        );
    }
    if input.spec.analysis.as_ref().is_some_and(|a| {
        a.metrics.iter().any(|m| {
            m.ratio.as_ref().is_some_and(|r| r.per_user.is_some())
                || m.histogram.as_ref().is_some_and(|h| h.per_user.is_some())
        })
    }) {
        notes.push(
            "per-user sums are not simulated: each request is its own user here, so the \
             figures are what request-level analysis would catch; with a few heavy users in \
             the candidate, the user-level variance catches less, and a stage whose \
             candidate has too few users for it is judged request by request, holding on \
             what it shows (BENCHMARKS.md, S3b)"
                .into(),
        );
    }
    if input.traffic.len() > 1 {
        notes.push(
            "each metric's events are drawn independently at its own rate; the harm is put \
             on one metric at a time"
                .into(),
        );
    }
    if sim.stopped.load(Ordering::Relaxed) {
        return Err(PlanError::OutOfTime(
            deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(started)),
        ));
    }
    Ok(Report {
        traffic_source: input.traffic_source.clone(),
        traffic: input.traffic.clone(),
        burstiness: input.burstiness,
        confidence: valid.confidence,
        runs,
        seed: input.seed,
        tolerances,
        stages: reports,
        warnings,
        notes,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// A warning for each stage that cannot catch a metric's tolerance target, with what
/// would: a longer stage (the duration scaled by the square of the ratio of the
/// detectable to the targeted increase, since a detectable difference shrinks with the
/// square root of the samples), a later stage that catches it, or dropping the stage.
fn tolerance_warnings(stages: &[StageReport], tolerances: &[Tolerance]) -> Vec<Warning> {
    let mut out = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        for (metric, tolerance) in stage.metrics.iter().zip(tolerances) {
            if metric.detects_tolerance != Some(false) {
                continue;
            }
            let target = tolerance.target_multiplier;
            let seen = match &metric.detectable {
                Some(d) => format!(
                    "it rolls back before its end in {:.0} % of runs only from {} the \
                     baseline's rate ({})",
                    100.0 * DETECTION_POWER,
                    times(d.multiplier),
                    percent(d.candidate_rate)
                ),
                None => format!(
                    "not even {} the baseline's rate is rolled back before its end in {:.0} % \
                     of runs",
                    times(metric.searched_up_to),
                    100.0 * DETECTION_POWER
                ),
            };
            let wanted = match tolerance.harm_from {
                Some(h) => format!(
                    "{} calls harm from {}; a stage should catch twice that increase, {} ({})",
                    tolerance.written,
                    percent(h),
                    times(target),
                    percent(target * tolerance.baseline_rate)
                ),
                None => format!(
                    "{} tolerates no increase; a stage should at least catch a doubling ({})",
                    tolerance.written,
                    percent(target * tolerance.baseline_rate)
                ),
            };
            let longer = match &metric.detectable {
                Some(d) if d.multiplier > 1.0 => {
                    let factor = ((d.multiplier - 1.0) / (target - 1.0)).powi(2);
                    format!(
                        "about {} at {} on this traffic",
                        minutes(stage.duration_seconds / 60.0 * factor),
                        stage.exposure
                    )
                }
                _ => format!(
                    "more than {} at {} on this traffic",
                    minutes(
                        stage.duration_seconds / 60.0
                            * ((metric.searched_up_to - 1.0) / (target - 1.0)).powi(2)
                    ),
                    stage.exposure
                ),
            };
            let later: Vec<&str> = stages[i + 1..]
                .iter()
                .filter(|s| {
                    s.metrics
                        .iter()
                        .any(|m| m.name == metric.name && m.detects_tolerance == Some(true))
                })
                .map(|s| s.name.as_str())
                .collect();
            let later = match later.as_slice() {
                [] => "no later stage catches it either".to_owned(),
                [one] => format!("stage {one} catches it later"),
                [first @ .., last] => {
                    format!("stages {} and {last} catch it later", first.join(", "))
                }
            };
            out.push(Warning::ToleranceUndetectable {
                stage: stage.name.clone(),
                metric: metric.name.clone(),
                message: format!(
                    "stage {} ({} for {}) cannot detect {}'s tolerance: {seen}, and {wanted}. \
                     To catch it the stage would need {longer}; {later}; or drop the stage \
                     (or keep it as a smoke test for large harm only)",
                    stage.name,
                    stage.exposure,
                    minutes(stage.duration_seconds / 60.0),
                    metric.name
                ),
            });
        }
    }
    out
}

fn percent(share: f64) -> String {
    let p = 100.0 * share;
    if p >= 10.0 {
        format!("{p:.1} %")
    } else if p >= 0.1 {
        format!("{p:.2} %")
    } else {
        format!("{p:.3} %")
    }
}

fn times(m: f64) -> String {
    if m >= 10.0 {
        format!("{m:.0}×")
    } else {
        format!("{m:.2}×")
    }
}

fn count(n: f64) -> String {
    if n >= 100.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

fn minutes(m: f64) -> String {
    if m < 2.0 {
        format!("{:.0} s", m * 60.0)
    } else if m >= 120.0 {
        format!("{:.1} h", m / 60.0)
    } else if m >= 10.0 {
        format!("{m:.0} min")
    } else {
        format!("{m:.1} min")
    }
}

/// The report as text, for people.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{}", report.traffic_source);
    for t in &report.traffic {
        let _ = writeln!(
            out,
            "  {}: {:.2} requests/s, baseline rate {}",
            t.name,
            t.requests_per_second,
            percent(t.baseline_rate)
        );
    }
    if let Some(cv) = report.burstiness {
        let _ = writeln!(
            out,
            "  bursty bad events: Gamma multiplier per cohort and look, CV {cv}"
        );
    }
    let _ = writeln!(
        out,
        "simulation: {} rollouts per figure through the engine, seed {}; confidence {}; \
         ± is the binomial standard error, [a–b] a 95 % interval of a median",
        report.runs, report.seed, report.confidence
    );
    for t in &report.tolerances {
        let _ = writeln!(
            out,
            "tolerance of {}: {}{}; a stage should catch {} ({})",
            t.metric,
            t.written,
            t.harm_from
                .map_or_else(String::new, |h| format!(", harm from {}", percent(h))),
            times(t.target_multiplier),
            percent(t.target_multiplier * t.baseline_rate)
        );
    }
    for stage in &report.stages {
        let _ = writeln!(
            out,
            "\n{}: {}{}{}",
            stage.name,
            stage.exposure,
            if stage.duration_seconds > 0.0 {
                format!(" for {}", minutes(stage.duration_seconds / 60.0))
            } else {
                String::new()
            },
            stage
                .min_samples
                .map_or_else(String::new, |m| format!(", minSamples {m}"))
        );
        if let Some(why) = &stage.not_simulated {
            let _ = writeln!(out, "  not simulated: {why}");
            continue;
        }
        let users = stage
            .expected_candidate_users
            .map_or_else(String::new, |u| format!(", {} distinct users", count(u)));
        let _ = writeln!(
            out,
            "  expected candidate requests: {}{users}",
            stage
                .expected_candidate_requests
                .map_or_else(|| "-".into(), count)
        );
        if let Some(h) = &stage.healthy {
            if h.reached == 0 {
                let _ = writeln!(
                    out,
                    "  no healthy rollout reached this stage within the simulation's cap"
                );
            } else {
                let _ = writeln!(
                    out,
                    "  healthy rollouts (A/A, {} reached it): held past its end {} (by \
                     minSamples {}, by too little data {}), {} held on average; false \
                     rollbacks in the stage {}",
                    h.reached,
                    h.held,
                    h.held_by_min_samples,
                    h.held_by_too_little_data,
                    minutes(h.mean_minutes_held),
                    h.false_rollbacks
                );
            }
        }
        if let Some(b) = stage.false_rollback_budget {
            let _ = writeln!(
                out,
                "  false-rollback budget the stage spends: {:.4}{}",
                b,
                stage
                    .comparison_budget_share
                    .map_or_else(String::new, |s| format!(
                        " ({:.1} % of each comparison's budget)",
                        100.0 * s
                    ))
            );
        }
        for m in &stage.metrics {
            let detect = match &m.detectable {
                Some(d) => format!(
                    "from {} the baseline's rate ({}; caught {})",
                    times(d.multiplier),
                    percent(d.candidate_rate),
                    d.caught
                ),
                None => format!("not even at {}", times(m.searched_up_to)),
            };
            let _ = writeln!(
                out,
                "  {}: rolled back before the stage ends in ≥ {:.0} % of runs {detect}",
                m.name,
                100.0 * DETECTION_POWER
            );
            for h in [&m.doubled, &m.fivefold] {
                let median = match (h.median_minutes, h.median_interval) {
                    (Some(med), Some((lo, hi))) => format!(
                        "median {} to rollback [{}–{}]",
                        minutes(med),
                        minutes(lo),
                        minutes(hi)
                    ),
                    _ => "never rolled back".into(),
                };
                let _ = writeln!(
                    out,
                    "    {}: caught in the stage {}, before promotion {}; {median}",
                    times(h.multiplier),
                    h.caught_in_stage,
                    h.caught_before_promotion
                );
            }
        }
    }
    if report.warnings.is_empty() {
        let _ = writeln!(out, "\nno warnings");
    } else {
        let _ = writeln!(out, "\nwarnings:");
        for w in &report.warnings {
            let _ = writeln!(out, "  - {}", w.message());
        }
    }
    let _ = writeln!(out, "\nnotes:");
    for n in &report.notes {
        let _ = writeln!(out, "  - {n}");
    }
    let _ = writeln!(out, "simulated in {:.1} s", report.elapsed_seconds);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(yaml: &str) -> MetricSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn the_target_is_twice_the_tolerated_increase() {
        let relative = metric(
            "{ name: e, ratio: { errors: a, requests: b }, maxIncrease: { relative: \"10%\" } }",
        );
        let t = tolerance(&relative, 0.01);
        assert!((t.harm_from.unwrap() - 0.011).abs() < 1e-12);
        assert!((t.target_multiplier - 1.2).abs() < 1e-9);
        // `max` lower than the relative tolerance sets the harm level.
        let both = metric(
            "{ name: e, ratio: { errors: a, requests: b }, maxIncrease: { absolute: \"5%\" }, max: \"2%\" }",
        );
        let t = tolerance(&both, 0.01);
        assert!((t.harm_from.unwrap() - 0.02).abs() < 1e-12);
        assert!((t.target_multiplier - 3.0).abs() < 1e-9);
        assert_eq!(t.written, "maxIncrease 5% absolute, max 2%");
        // Nothing tolerated: a doubling.
        let zero = metric(
            "{ name: e, ratio: { errors: a, requests: b }, maxIncrease: { relative: \"0%\" } }",
        );
        assert_eq!(tolerance(&zero, 0.01).target_multiplier, 2.0);
        assert_eq!(tolerance(&zero, 0.01).harm_from, None);
    }

    #[test]
    fn a_stage_with_an_audience_and_guards_are_left_out_of_the_simulation() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/new-checkout.yaml"
        ))
        .unwrap();
        let doc: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        let spec: FeatureRolloutSpec = serde_json::from_value(doc["spec"].clone()).unwrap();
        let (sim, kept) = simulated_spec(&spec);
        assert_eq!(kept, vec![1, 2, 3, 4]);
        assert!(sim.stages.iter().all(|s| s.approval == Approval::Auto));
        let names: Vec<&str> = compared_metrics(&sim)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["error-rate", "slow-requests"]);
        assert_eq!(sim.analysis.as_ref().unwrap().metrics.len(), 2);
        assert!(validate::validate(&sim).is_ok());
    }
}
