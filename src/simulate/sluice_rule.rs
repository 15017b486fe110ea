//! Sluice in the benchmark: each simulated rollout is driven by the real engine, look by
//! look, as the controller drives it ([`SluiceRollout::run`]).
//!
//! At every tick (one look interval) the driver does what a reconcile does: when
//! [`engine::analysis_due`] says a look is due, it judges the current stage's cumulative
//! counts with [`judge::judge_look`] (the pure part of [`crate::analysis::look::look`],
//! the code the controller, standalone mode and `sluice analyze` use), hands the look to
//! [`engine::plan`] and keeps the status the plan returns, as the controller keeps it in
//! the API server. Stage ends, holds on `Inconclusive`, promotion and rollback are the
//! engine's decisions; the exposure of the next interval's traffic is the stage the
//! engine chose. No statistics and no rollout rules live here.
//!
//! While the engine follows the schedule, the rollout consumes the same pre-drawn traffic
//! as the anchor rules; once it is held past a stage's end, its traffic is drawn on from
//! the same rollout's source at the exposure the engine holds.

use jiff::{SignedDuration, Timestamp};
use rand::Rng;

use std::collections::HashMap;

use super::Outcome;
use super::traffic::{Cohorts, Counts, Regression, Schedule, TrafficSource, UserStep};
use crate::analysis::histogram::Buckets;
use crate::analysis::judge::{self, LookAt, Observed};
use crate::analysis::source::{Measured, Measurement, PerCohort};
use crate::analysis::users::UserSums;
use crate::crd::validate::{self, MetricKind, ValidSpec};
use crate::crd::{FeatureRolloutSpec, FeatureRolloutStatus, MetricSpec};
use crate::engine::{self, Decision, Observations};

/// The name of the error-rate metric in the benchmark's spec.
const METRIC: &str = "error-rate";

/// How many times its planned length a simulated rollout may run before the simulation
/// stops it as held (neither rolled back nor promoted).
pub const HOLD_CAP: u32 = 3;

/// The benchmark's rollout as the YAML of a `FeatureRollout` spec: the schedule's stages,
/// then 100 %; a look every interval of the schedule; one ratio metric `error-rate` with
/// the given `maxIncrease` tolerance and `confidence`.
pub fn benchmark_spec_yaml(schedule: &Schedule, confidence: f64, max_increase: &str) -> String {
    let stages: String = schedule
        .stages
        .iter()
        .map(|s| {
            let percent = (s.exposure * 100.0 * 1_000.0).round() / 1_000.0;
            format!(
                "  - {{ weight: \"{percent}%\", duration: {}s }}\n",
                s.minutes * schedule.look_seconds
            )
        })
        .collect();
    format!(
        r#"flag: {{ key: benchmark, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
target: {{ file: {{ path: flags.json }} }}
stages:
{stages}  - {{ weight: 100 }}
analysis:
  interval: {}s
  confidence: {confidence}
  metrics:
    - name: {METRIC}
      ratio:
        errors: 'sum by (feature_flag_result_variant) (increase(http_requests_total{{code=~"5..",feature_flag_key="{{{{ flag }}}}"}}[{{{{ window }}}}]))'
        requests: 'sum by (feature_flag_result_variant) (increase(http_requests_total{{feature_flag_key="{{{{ flag }}}}"}}[{{{{ window }}}}]))'
      maxIncrease: {{ relative: "{max_increase}" }}
"#,
        schedule.look_seconds
    )
}

/// [`benchmark_spec_yaml`] with the per-user queries of the Python instrumentation's
/// counters on its ratio metric (user-level statistics).
pub fn benchmark_spec_yaml_per_user(
    schedule: &Schedule,
    confidence: f64,
    max_increase: &str,
) -> String {
    let per_user: String = [
        ("requests", "sluice_user_requests_total"),
        ("bad", "sluice_user_errors_total"),
        ("requestsSquared", "sluice_user_requests_squared_total"),
        ("badSquared", "sluice_user_errors_squared_total"),
        ("requestsTimesBad", "sluice_user_requests_errors_total"),
    ]
    .iter()
    .map(|(field, series)| {
        format!(
            "          {field}: 'sum by (feature_flag_result_variant) (increase({series}{{feature_flag_key=\"{{{{ flag }}}}\"}}[{{{{ window }}}}]))'\n"
        )
    })
    .collect();
    benchmark_spec_yaml(schedule, confidence, max_increase).replace(
        "      maxIncrease:",
        &format!("        perUser:\n{per_user}      maxIncrease:"),
    )
}

/// What one interval of a simulated rollout drew: one [`Cohorts`] per metric of the spec,
/// and the users' requests and errors (scenario S3; empty otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Drawn {
    /// The counts, one per metric.
    pub counts: Vec<Cohorts>,
    /// Each user's requests and errors on each replica in the interval.
    pub users: Vec<UserStep>,
}

impl From<Vec<Cohorts>> for Drawn {
    fn from(counts: Vec<Cohorts>) -> Self {
        Drawn {
            counts,
            users: Vec::new(),
        }
    }
}

/// The per-user sums of the current stage, as an instrumentation keeps them: each user's
/// (and replica's) counts since the stage began, and the running sums over users of
/// `n`, `x`, `n²`, `x²` and `n·x`, updated one interval at a time.
#[derive(Clone, Debug, Default)]
pub struct StageUsers {
    counts: HashMap<u32, (u64, u64)>,
    sums: [UserSums; 2],
}

impl StageUsers {
    /// Adds one user's interval.
    pub fn add(&mut self, step: &UserStep) {
        let (n, x) = self.counts.entry(step.key).or_default();
        let (old_n, old_x) = (*n as f64, *x as f64);
        *n += u64::from(step.requests);
        *x += u64::from(step.errors);
        let (new_n, new_x) = (*n as f64, *x as f64);
        let s = &mut self.sums[usize::from(step.candidate)];
        s.n += new_n - old_n;
        s.x += new_x - old_x;
        s.nn += new_n * new_n - old_n * old_n;
        s.xx += new_x * new_x - old_x * old_x;
        s.nx += new_n * new_x - old_n * old_x;
    }

    /// Forgets the stage (the flag's configuration changed).
    pub fn clear(&mut self) {
        self.counts.clear();
        self.sums = Default::default();
    }

    /// Both cohorts' sums, as the per-user queries return them: no series for a cohort
    /// until its first request.
    pub fn sums(&self) -> PerCohort<UserSums> {
        let some = |s: UserSums| (s.n > 0.0).then_some(s);
        PerCohort {
            baseline: some(self.sums[0]),
            candidate: some(self.sums[1]),
        }
    }
}

/// One tick of a simulated rollout, for tests that replay it on another path.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    /// The evaluation time.
    pub now: Timestamp,
    /// The current stage's cumulative counts, as the queries would return them.
    pub stage_total: Cohorts,
    /// Whether a look was made.
    pub looked: bool,
    /// The engine's decision.
    pub decision: Decision,
    /// The status after the tick.
    pub status: FeatureRolloutStatus,
}

/// Sluice's rollout of the benchmark's spec, through the engine.
#[derive(Clone, Debug)]
pub struct SluiceRollout {
    spec: FeatureRolloutSpec,
    valid: ValidSpec,
    metric: MetricSpec,
    alpha: f64,
    schedule: Schedule,
    user_level: bool,
}

impl SluiceRollout {
    /// Sluice on the schedule's plan with the given confidence and tolerated relative
    /// increase (e.g. `"0%"`: any increase is harm, the hypothesis the anchors test).
    pub fn new(schedule: &Schedule, confidence: f64, max_increase: &str) -> Result<Self, String> {
        Self::from_yaml(
            &benchmark_spec_yaml(schedule, confidence, max_increase),
            schedule,
        )
    }

    fn from_yaml(yaml: &str, schedule: &Schedule) -> Result<Self, String> {
        let yaml = yaml.to_owned();
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
        let alpha = judge::budget_per_test(&valid);
        let user_level = valid.metrics.iter().any(|m| m.kind.per_user().is_some());
        Ok(SluiceRollout {
            spec,
            valid,
            metric,
            alpha,
            schedule: schedule.clone(),
            user_level,
        })
    }

    /// Sluice on any spec (the user's, for `sluice plan`): its own stages, interval,
    /// confidence and metrics, one look every interval. Every metric must be a ratio or a
    /// histogram (both are judged on the share of bad events; a guard has no sampling to
    /// simulate), and no users query is run (simulated assignment is exact). Per-user
    /// queries are not simulated (the plan's traffic has no users): the metric is judged
    /// on its requests. The stages
    /// become the schedule: each runs `ceil(duration / interval)` looks.
    pub fn from_spec(spec: FeatureRolloutSpec) -> Result<Self, String> {
        let valid = validate::validate(&spec).map_err(|problems| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let metrics: Vec<&MetricSpec> = spec.analysis.iter().flat_map(|a| &a.metrics).collect();
        if let Some(guard) = metrics.iter().find(|m| m.guard.is_some()) {
            return Err(format!(
                "metric {:?} is a guard: only ratio and histogram metrics are simulated",
                guard.name
            ));
        }
        let metric = (*metrics
            .first()
            .ok_or("the spec has no metric to simulate")?)
        .clone();
        let interval = valid.interval.as_secs_f64().max(1.0);
        let schedule = Schedule {
            stages: valid
                .stages
                .iter()
                .map(|s| super::traffic::Stage {
                    exposure: s.weight.fraction(),
                    minutes: (s.duration.as_secs_f64() / interval - 1e-9).ceil().max(0.0) as u32,
                })
                .collect(),
            look_seconds: interval.round() as u32,
        };
        let alpha = judge::budget_per_test(&valid);
        Ok(SluiceRollout {
            spec,
            valid,
            metric,
            alpha,
            schedule,
            user_level: false,
        })
    }

    /// The schedule the rollout follows (one entry per stage of the spec).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The number of metrics each look judges (the spec's metrics).
    pub fn metric_count(&self) -> usize {
        self.spec.analysis.iter().map(|a| a.metrics.len()).sum()
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

    /// The benchmark's rollout with or without the per-user queries on its metric: with
    /// them, its measurement carries the stage's per-user sums (user-level statistics on
    /// scenario S3's users).
    pub fn benchmark_per_user(schedule: &Schedule, per_user: bool) -> Self {
        if !per_user {
            return Self::benchmark(schedule);
        }
        Self::from_yaml(
            &benchmark_spec_yaml_per_user(schedule, 0.95, "0%"),
            schedule,
        )
        .expect("the benchmark spec with per-user queries is valid")
    }

    /// Whether the rollout is judged with user-level statistics.
    pub fn user_level(&self) -> bool {
        self.user_level
    }

    /// The spec the rollout runs.
    pub fn spec(&self) -> &FeatureRolloutSpec {
        &self.spec
    }

    /// The rule's name in the report.
    pub fn name(&self) -> &'static str {
        "Sluice"
    }

    /// One line on what the rollout does, for the report.
    pub fn describe(&self) -> String {
        format!(
            "the engine (engine::plan) driving a FeatureRollout with one ratio metric judged \
             by analysis::judge, maxIncrease {:?}, confidence {}: α = {:.4} over the rollout; \
             stages end, hold, promote and roll back as the controller decides",
            self.metric
                .max_increase
                .as_ref()
                .and_then(|t| t.relative.clone().or(t.absolute.clone()))
                .unwrap_or_default(),
            self.valid.confidence,
            self.alpha
        )
    }

    /// Runs one rollout through the engine: `scheduled` is the traffic pre-drawn on the
    /// schedule (used while the engine follows it), `source` and `rng` draw the rest.
    pub fn run<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        source: &mut TrafficSource,
        regression: &Regression,
        scheduled: &[Cohorts],
    ) -> Outcome {
        self.run_traced(rng, source, regression, scheduled, |_| {})
    }

    /// [`run`](Self::run), handing every tick to `trace`.
    pub fn run_traced<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        source: &mut TrafficSource,
        regression: &Regression,
        scheduled: &[Cohorts],
        mut trace: impl FnMut(&Tick),
    ) -> Outcome {
        let mut on_schedule = true;
        self.drive(
            |index, stage, exposure| {
                on_schedule &= self.schedule.locate(index).map(|(s, _)| s) == Some(stage)
                    && (index as usize) < scheduled.len();
                let (counts, drawn) = if on_schedule {
                    (scheduled[index as usize], index as usize)
                } else {
                    let counts = source.draw(rng, exposure, regression.harm_at(index));
                    (counts, source.drawn().saturating_sub(1))
                };
                Drawn {
                    counts: vec![counts],
                    users: if self.user_level {
                        source.user_steps(drawn).to_vec()
                    } else {
                        Vec::new()
                    },
                }
            },
            regression.onset_minute,
            HOLD_CAP * self.schedule.total_minutes().max(1),
            |tick| {
                trace(tick);
                true
            },
        )
    }

    /// The driver every simulated rollout runs through. At every tick it asks
    /// `interval(index, stage, exposure)` for the counts of the zero-based interval
    /// `index`, spent in the engine's current `stage` at its `exposure`: one [`Cohorts`]
    /// per metric of the spec, in order; it adds them to the stage's totals, makes the
    /// look [`engine::analysis_due`] asks for and plans with [`engine::plan`]. `trace`
    /// sees every tick and returns whether to go on (`false` stops the rollout there,
    /// neither rolled back nor promoted); after `cap` intervals the rollout is stopped as
    /// held ([`Outcome::stuck`]). Candidate requests are counted from `onset_minute` on, on
    /// the first metric's counts.
    pub fn drive<D: Into<Drawn>>(
        &self,
        mut interval: impl FnMut(u32, usize, f64) -> D,
        onset_minute: u32,
        cap: u32,
        mut trace: impl FnMut(&Tick) -> bool,
    ) -> Outcome {
        let seconds = i64::from(self.schedule.look_seconds);
        let t0 = Timestamp::UNIX_EPOCH;
        let nothing = Observations {
            generation: Some(1),
            ..Observations::default()
        };
        // The spec is validated once, as a reconcile does, for every plan and look.
        let valid = Ok(&self.valid);
        let mut status = engine::plan_validated(&self.spec, valid, None, &nothing, t0).status;
        let mut outcome = Outcome::default();
        let mut stage_totals = vec![Cohorts::default(); self.metric_count().max(1)];
        let mut stage_users = StageUsers::default();
        let mut stage = 0_usize;
        let mut in_stage = 0_u32;
        // Tick 0 is the reconcile right after the start (its look sees no data yet); tick
        // k ends the k-th interval.
        for k in 0..=cap {
            let now = t0 + SignedDuration::from_secs(seconds * i64::from(k));
            if k > 0 {
                let index = k - 1;
                let exposure = self.schedule.stages[stage].exposure;
                let Drawn { counts, users } = interval(index, stage, exposure).into();
                for (total, counts) in stage_totals.iter_mut().zip(&counts) {
                    *total += *counts;
                }
                for step in &users {
                    stage_users.add(step);
                }
                in_stage += 1;
                if index >= onset_minute {
                    outcome.candidate_requests_since_onset +=
                        counts.first().map_or(0, |c| c.candidate.requests);
                }
            }
            let looked =
                engine::analysis_due_validated(&self.spec, Some(&self.valid), Some(&status), now);
            let users = self.user_level.then(|| stage_users.sums());
            let analysis = looked.then(|| self.look(&status, &stage_totals, users, now));
            let observations = Observations {
                analysis,
                generation: Some(1),
                ..Observations::default()
            };
            let plan = engine::plan_validated(&self.spec, valid, Some(&status), &observations, now);
            status = plan.status;
            let go_on = trace(&Tick {
                now,
                stage_total: stage_totals[0],
                looked,
                decision: plan.decision.clone(),
                status: status.clone(),
            });
            let planned = self.schedule.stages[stage].minutes;
            match plan.decision {
                Decision::Rollback { .. } => {
                    outcome.rollback_minute = Some(k);
                    outcome.rollback_stage = Some(stage);
                    outcome.held_looks += in_stage.saturating_sub(planned);
                    return outcome;
                }
                Decision::Promote => {
                    outcome.held_looks += in_stage.saturating_sub(planned);
                    return outcome;
                }
                Decision::Advance { to, .. } => {
                    outcome.held_looks += in_stage.saturating_sub(planned);
                    stage = to as usize;
                    stage_totals.fill(Cohorts::default());
                    stage_users.clear();
                    in_stage = 0;
                }
                _ => {}
            }
            if !go_on {
                outcome.held_looks += in_stage.saturating_sub(planned);
                return outcome;
            }
        }
        let planned = self.schedule.stages[stage].minutes;
        outcome.held_looks += in_stage.saturating_sub(planned);
        outcome.stuck = Some(stage);
        outcome
    }

    /// The look a reconcile makes at `now`: each metric's cumulative counts in the stage
    /// as the queries return them (no series until a cohort's first event), judged with
    /// the previous look kept in status.
    fn look(
        &self,
        status: &FeatureRolloutStatus,
        stage_totals: &[Cohorts],
        users: Option<PerCohort<UserSums>>,
        now: Timestamp,
    ) -> crate::crd::AnalysisStatus {
        let at = LookAt {
            stage: status.stage.unwrap_or(0),
            stage_started_at: status.stage_started_at.unwrap_or(now),
            now,
        };
        let mut measured = measured_metrics(&self.valid, stage_totals);
        if let Some(users) = users
            && let Some(first) = self.valid.metrics.first()
            && let Some(Measurement {
                result:
                    Ok(
                        Observed::Ratio { users: slot, .. }
                        | Observed::Histogram { users: slot, .. },
                    ),
                ..
            }) = measured.get_mut(&first.name)
        {
            *slot = Some(users);
        }
        judge::judge_look(
            &self.valid,
            at,
            measured,
            None,
            status.last_analysis.as_ref(),
        )
    }
}

/// The benchmark spec's measurements for cumulative counts: its one ratio metric,
/// [`observed`].
pub fn measured(stage_total: Cohorts) -> Measured {
    Measured::from([(
        METRIC.to_owned(),
        Measurement::observed(observed(stage_total)),
    )])
}

/// Each compared metric's measurement for its cumulative counts in the stage (`totals`
/// in the order of the spec's ratio and histogram metrics), as a provider answers: a
/// ratio metric's counts ([`observed`]), a histogram metric's two buckets, its threshold
/// and `+Inf` ([`observed_buckets`]).
pub fn measured_metrics(valid: &ValidSpec, totals: &[Cohorts]) -> Measured {
    valid
        .metrics
        .iter()
        .filter(|m| !matches!(m.kind, MetricKind::Guard { .. }))
        .zip(totals)
        .map(|(metric, total)| {
            let answer = match metric.kind {
                MetricKind::Histogram { threshold, .. } => observed_buckets(*total, threshold),
                _ => observed(*total),
            };
            (metric.name.clone(), Measurement::observed(answer))
        })
        .collect()
}

/// A histogram metric's answer for cumulative counts: the slow requests (`errors`) above
/// `threshold`, the others at or below it; no series for a cohort without requests.
pub fn observed_buckets(stage_total: Cohorts, threshold: f64) -> Observed {
    let buckets = |c: Counts| {
        (c.requests > 0).then(|| {
            let total = c.requests as f64;
            let fast = c.requests.saturating_sub(c.errors) as f64;
            Buckets::from_prometheus(&[(threshold, fast), (f64::INFINITY, total)])
                .expect("two ascending buckets with non-decreasing counts")
        })
    };
    Observed::Histogram {
        buckets: PerCohort {
            baseline: buckets(stage_total.baseline),
            candidate: buckets(stage_total.candidate),
        },
        users: None,
    }
}

/// The ratio metric's answers for cumulative counts, as Prometheus gives them: no series
/// for a cohort until its first event.
pub fn observed(stage_total: Cohorts) -> Observed {
    let some = |v: u64| (v > 0).then_some(v as f64);
    let answer = |c: Counts| (some(c.errors), some(c.requests));
    let (bad_c, total_c) = answer(stage_total.candidate);
    let (bad_b, total_b) = answer(stage_total.baseline);
    Observed::Ratio {
        bad: PerCohort {
            baseline: bad_b,
            candidate: bad_c,
        },
        total: PerCohort {
            baseline: total_b,
            candidate: total_c,
        },
        users: None,
    }
}

/// The name of the S4 oracle's rule ([`KnownDispersionOracle`]) in the report.
pub const ORACLE: &str = "oracle (known κ)";

/// The seed of the oracle's calibration runs: fixed, so the oracle is the same rule
/// whatever seed the benchmark is evaluated on, and its calibration draws streams of its
/// own (a case of its own, [`KnownDispersionOracle::calibrated`]).
pub const ORACLE_CALIBRATION_SEED: u64 = 0x0_5EED_0AC1;

/// A/A rollouts the benchmark calibrates the oracle on: the share it rolls back is then
/// its budget within about ±0.15 points (one binomial standard error).
pub const ORACLE_CALIBRATION_RUNS: usize = 20_000;

/// How the oracle's boundaries were fitted to its budget under the known null.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OracleCalibration {
    /// A/A rollouts simulated, on the oracle's plan and traffic model.
    pub runs: usize,
    /// Their seed (their case is the calibration's own, so its streams are not the
    /// evaluation's even on the same seed).
    pub seed: u64,
    /// The factor both boundaries (the main statistic's and the recent window's) are
    /// multiplied by.
    pub scale: f64,
    /// Share of the calibration runs that the scaled boundaries roll back.
    pub false_rollback: f64,
    /// Share of the calibration runs that the unscaled boundaries (scale 1) roll back.
    pub unscaled_false_rollback: f64,
}

/// The oracle for overdispersed traffic (BENCHMARK.md's S4): Sluice's comparison told the
/// true dispersion `κ` of both cohorts (no estimate, no widening of the boundaries), on
/// the same plan, spending and looks, following the schedule. It measures what the
/// estimation of the dispersion costs.
///
/// Told `κ`, the comparison's normal boundaries still do not hold its budget under
/// independent Gamma bursts per cohort: the score's variance rests on the stratum's
/// fitted rate, which the baseline's bursts move, so the statistic is close to a ratio of
/// two cohorts' bursts, whose tail is heavy (on S4 about 18 % of healthy rollouts cross
/// them against 5 %). The oracle also
/// knows the data-generating model, so [`calibrated`](Self::calibrated) multiplies both
/// boundaries by the one factor that makes its A/A false rollback share equal to the
/// budget on simulated A/A rollouts of the same model and plan.
#[derive(Clone, Debug)]
pub struct KnownDispersionOracle {
    kappa: f64,
    plan: crate::analysis::compare::Plan,
    budget: f64,
    evidence: Option<crate::crd::Evidence>,
    /// Rolls back when the statistic reaches `scale` times its boundary.
    scale: f64,
    calibration: Option<OracleCalibration>,
}

impl KnownDispersionOracle {
    /// The oracle on the schedule's plan (`confidence: 0.95`, `maxIncrease: 0%`), told
    /// `kappa` (a Gamma multiplier of coefficient of variation `c` per cohort and look has
    /// `κ = c²`), with the comparison's boundaries as they are (not calibrated).
    pub fn new(schedule: &Schedule, kappa: f64) -> Self {
        let sluice = SluiceRollout::benchmark(schedule);
        KnownDispersionOracle {
            kappa,
            plan: crate::analysis::compare::Plan::new(&sluice.valid),
            budget: sluice.alpha,
            evidence: None,
            scale: 1.0,
            calibration: None,
        }
    }

    /// The oracle with its boundaries scaled to spend its budget exactly: `runs` A/A
    /// rollouts of `traffic` on `schedule` (seed `seed`, on `threads` threads) give each
    /// run's largest ratio of statistic to boundary over its looks; the scale is the
    /// point between the `⌊α·runs⌋`-th and the next largest ratio, so that `⌊α·runs⌋`
    /// runs reach it. Each rollback is monotone in the scale, so this is the one factor
    /// with that share (up to ties). With fewer runs than `1/α` no run may roll back: the
    /// scale is infinite.
    pub fn calibrated(
        schedule: &Schedule,
        traffic: &super::Traffic,
        kappa: f64,
        runs: usize,
        seed: u64,
        threads: usize,
    ) -> Self {
        let mut oracle = Self::new(schedule, kappa);
        let case = super::Case {
            scenario: "oracle calibration".to_owned(),
            schedule: schedule.clone(),
            traffic: *traffic,
            regression: Regression {
                multiplier: 1.0,
                onset_minute: 0,
            },
            user_level: false,
        };
        let threads = threads.clamp(1, runs.max(1));
        let mut ratios: Vec<f64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|worker| {
                    let (case, mut oracle) = (&case, oracle.clone());
                    scope.spawn(move || {
                        (worker..runs)
                            .step_by(threads)
                            .map(|run| oracle.largest_ratio(case, seed, run))
                            .collect::<Vec<f64>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a calibration worker panicked"))
                .collect()
        });
        ratios.sort_by(|a, b| b.total_cmp(a));
        let share =
            |scale: f64| ratios.iter().filter(|&&r| r >= scale).count() as f64 / runs.max(1) as f64;
        let k = (oracle.budget * runs as f64).floor() as usize;
        let scale = match (k.checked_sub(1).and_then(|i| ratios.get(i)), ratios.get(k)) {
            (Some(&above), Some(&below)) if below.is_finite() => (above + below) / 2.0,
            // Fewer than `k` runs reach any boundary: nothing to give up.
            (Some(&above), _) if above.is_finite() => above / 2.0,
            _ => f64::INFINITY,
        }
        // A boundary at or below zero would roll back on no evidence.
        .max(f64::MIN_POSITIVE);
        oracle.scale = scale;
        oracle.calibration = Some(OracleCalibration {
            runs,
            seed,
            scale,
            false_rollback: share(scale),
            unscaled_false_rollback: share(1.0),
        });
        oracle
    }

    /// How its boundaries were calibrated (`None`: as the comparison sets them).
    pub fn calibration(&self) -> Option<OracleCalibration> {
        self.calibration
    }

    /// One calibration run: the largest ratio of statistic to boundary over its looks.
    fn largest_ratio(&mut self, case: &super::Case, seed: u64, run: usize) -> f64 {
        let mut rng = super::rollout_rng(seed, case, run);
        let mut source = TrafficSource::new(&mut rng, &case.traffic, case.schedule.look_seconds);
        let minutes = super::traffic::simulate_rollout(
            &mut rng,
            &mut source,
            &case.schedule,
            &case.regression,
        );
        self.evidence = None;
        let mut largest = f64::NEG_INFINITY;
        super::for_each_look(&case.schedule, &minutes, |look| {
            largest = largest.max(self.ratio(look));
            true
        });
        largest
    }

    /// The look's largest ratio of a statistic to its boundary (the main statistic's and
    /// the recent window's; `−∞` when neither has a boundary), its evidence kept for the
    /// next look. Boundaries are positive: every look spends less than half the budget.
    fn ratio(&mut self, look: &super::Look<'_>) -> f64 {
        use crate::analysis::compare::{self, Window};
        use crate::analysis::ratio::{Counts as Share, Tolerance};
        let seconds = f64::from(look.schedule.look_seconds);
        let started = look.minute - look.minute_in_stage;
        let counts = |c: Counts| Share {
            bad: c.errors as f64,
            total: c.requests as f64,
        };
        let (b, c) = (look.stage_total.baseline, look.stage_total.candidate);
        if b.requests == 0 || c.requests == 0 {
            return f64::NEG_INFINITY;
        }
        let window = Window {
            stage: look.stage as u32,
            weight: look.exposure,
            rate: compare::information_rate(look.exposure, false),
            started_at: Timestamp::from_second((f64::from(started) * seconds) as i64)
                .unwrap_or_default(),
            seconds: f64::from(look.minute_in_stage) * seconds,
        };
        let out = compare::compare_known_dispersion(
            self.evidence.as_ref(),
            window,
            counts(b),
            counts(c),
            compare::ComparisonTest {
                tolerance: Tolerance::Relative(0.0),
                plan: &self.plan,
                budget: self.budget,
            },
            self.kappa,
        );
        let ratio = |z: Option<f64>, b: Option<f64>| match (z, b) {
            (Some(z), Some(b)) if b > 0.0 => z / b,
            _ => f64::NEG_INFINITY,
        };
        let largest = ratio(Some(out.statistic), out.boundary)
            .max(ratio(out.recent_statistic, out.recent_boundary));
        self.evidence = Some(out.evidence);
        largest
    }
}

impl super::Rule for KnownDispersionOracle {
    fn name(&self) -> &str {
        ORACLE
    }

    fn describe(&self) -> String {
        let told = format!(
            "Sluice's comparison told the true dispersion κ = {} of both cohorts, same \
             spending and looks, following the schedule",
            self.kappa
        );
        match self.calibration {
            None => told,
            Some(c) => format!(
                "{told}; boundaries × {:.3}, calibrated on {} A/A rollouts of the same \
                 traffic model and plan (seed {}, streams of their own), where they roll \
                 back {:.2} % (budget {:.0} %; unscaled: {:.2} %)",
                c.scale,
                c.runs,
                c.seed,
                c.false_rollback * 100.0,
                self.budget * 100.0,
                c.unscaled_false_rollback * 100.0
            ),
        }
    }

    fn reset(&mut self) {
        self.evidence = None;
    }

    fn judge(&mut self, look: &super::Look<'_>) -> super::Judgement {
        if self.ratio(look) >= self.scale {
            super::Judgement::RollBack
        } else {
            super::Judgement::Continue
        }
    }

    fn boxed_clone(&self) -> Box<dyn super::Rule> {
        Box::new(self.clone())
    }
}
