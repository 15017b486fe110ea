//! The decision-quality benchmark (`sluice simulate`): simulated rollouts, look by look, on
//! the scenarios of BENCHMARK.md, judged by several rollback rules on identical traffic.
//!
//! - [`traffic`] draws the per-minute cohort counts of one rollout (schedule, request and
//!   error model, regression);
//! - [`rules`] holds the [`Rule`] trait, the data of one [`Look`], and the anchor rules
//!   modelled on today's tools;
//! - [`sluice_rule`] runs Sluice's own analysis as one more rule;
//! - [`plan`] runs a user's own rollout the same way for `sluice plan` (what each stage
//!   can detect);
//! - [`report`] turns outcomes into BENCHMARK.md's figures and prints them.
//!
//! Every rollout draws its traffic from its own ChaCha stream, keyed by the base seed, the
//! case and the run index, so the figures do not depend on the number of threads or on
//! their scheduling.
//!
//! Sluice runs on the same traffic through the real engine
//! ([`sluice_rule::SluiceRollout`]): each rollout is planned by `engine::plan` look by look,
//! with the analysis the controller uses, so holds, stage ends, promotion and rollback are
//! the controller's; its outcome is listed after the anchors'.

pub mod plan;
pub mod report;
pub mod rules;
pub mod sluice_rule;
pub mod traffic;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use rules::{Judgement, Look, Rule};
pub use traffic::{Cohorts, Counts, Regression, Schedule, Stage, Traffic, TrafficSource, Users};

/// The seed used when none is given.
pub const DEFAULT_SEED: u64 = 20_260_501;

/// Rollouts simulated per case when no number is given (BENCHMARK.md asks for at least
/// 10,000).
pub const DEFAULT_RUNS: usize = 10_000;

/// One case of the benchmark: a scenario (schedule and traffic) and a regression.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// Scenario name, e.g. `S1`.
    pub scenario: String,
    /// The stage plan.
    pub schedule: Schedule,
    /// Traffic and error model.
    pub traffic: Traffic,
    /// The candidate's harm and when it starts.
    pub regression: Regression,
    /// Whether Sluice is given the stage's per-user sums (user-level statistics; only
    /// traffic from users has them).
    pub user_level: bool,
}

impl Case {
    /// A label unique within the benchmark, e.g. `S1 m=2 from minute 15`.
    pub fn label(&self) -> String {
        let m = self.regression.multiplier;
        let seconds = self.schedule.look_seconds;
        if m == 1.0 {
            format!("{} A/A (m=1)", self.scenario)
        } else if self.regression.onset_minute == 0 {
            format!("{} m={m} from the start", self.scenario)
        } else if seconds != 60 {
            format!(
                "{} m={m} from {} s",
                self.scenario,
                self.regression.onset_minute * seconds
            )
        } else {
            format!(
                "{} m={m} from minute {}",
                self.scenario, self.regression.onset_minute
            )
        }
    }

    /// The excess error probability of the candidate once the regression has started.
    pub fn excess_error_rate(&self) -> f64 {
        (self.regression.multiplier - 1.0) * self.traffic.error_rate
    }
}

impl Case {
    /// A case on BENCHMARK.md's plan: the candidate's error rate is `multiplier` times the
    /// baseline's from `onset_minute` on.
    pub fn benchmark(scenario: &str, traffic: Traffic, multiplier: f64, onset_minute: u32) -> Case {
        Case {
            scenario: scenario.to_owned(),
            schedule: Schedule::benchmark(),
            traffic,
            regression: Regression {
                multiplier,
                onset_minute,
            },
            user_level: false,
        }
    }

    /// The same case with Sluice given the per-user sums, under the scenario name
    /// `scenario`.
    pub fn with_user_level(mut self, scenario: &str) -> Case {
        self.scenario = scenario.to_owned();
        self.user_level = true;
        self
    }

    /// Sluice on this case's plan, through the engine, with user-level statistics when
    /// the case asks for them.
    pub fn sluice(&self) -> sluice_rule::SluiceRollout {
        sluice_rule::SluiceRollout::benchmark_per_user(&self.schedule, self.user_level)
    }
}

/// BENCHMARK.md's cases: S1 A/A; S1 with `m` = 1.5, 2, 5 from the start and from minute
/// 15; S2 A/A; S3a and S3b A/A, without and with user-level statistics, S3b with them and
/// its requests spread round-robin over 3 replicas, and S3b `m = 2` with them; S4 A/A
/// and `m = 2`; S5's plan A/A, its error case (+5 points from 20 s) and its latency case
/// (slow share 0.1 % → 12 % from 20 s).
pub fn benchmark_cases() -> Vec<Case> {
    let case = Case::benchmark;
    let mut cases = vec![case("S1", Traffic::s1(), 1.0, 0)];
    for onset in [0, 15] {
        for m in [1.5, 2.0, 5.0] {
            cases.push(case("S1", Traffic::s1(), m, onset));
        }
    }
    cases.push(case("S2", Traffic::s2(), 1.0, 0));
    cases.push(case("S3a", Traffic::s3a(), 1.0, 0));
    cases.push(case("S3b", Traffic::s3b(), 1.0, 0));
    cases.push(case("S3a", Traffic::s3a(), 1.0, 0).with_user_level("S3a users"));
    cases.push(case("S3b", Traffic::s3b(), 1.0, 0).with_user_level("S3b users"));
    cases.push(
        case("S3b", Traffic::s3b().on_replicas(3), 1.0, 0).with_user_level("S3b users, 3 replicas"),
    );
    for m in [1.5, 2.0] {
        cases.push(case("S3b", Traffic::s3b(), m, 0));
        cases.push(case("S3b", Traffic::s3b(), m, 0).with_user_level("S3b users"));
    }
    cases.push(case("S4", Traffic::s4(), 1.0, 0));
    cases.push(case("S4", Traffic::s4(), 2.0, 0));
    cases.extend(s5_cases());
    cases
}

/// S5: 10 % for 60 s, 50 % for 60 s, a look every 10 s, 100 requests/s, 0.5 % baseline
/// errors: A/A, `+5` points of errors from 20 s (`m = 11`), and the latency case. The
/// latency case is judged as the histogram metric judges it: the share of requests above
/// the threshold, compared like any ratio (0.1 % slow for both cohorts, 12 % for the
/// candidate from 20 s: `m = 120`).
pub fn s5_cases() -> Vec<Case> {
    let s5 = |scenario: &str, traffic: Traffic, multiplier: f64| Case {
        scenario: scenario.to_owned(),
        schedule: Schedule::s5(),
        traffic,
        regression: Regression {
            multiplier,
            onset_minute: if multiplier == 1.0 { 0 } else { 2 },
        },
        user_level: false,
    };
    let latency = Traffic {
        error_rate: 0.001,
        ..Traffic::s5()
    };
    vec![
        s5("S5", Traffic::s5(), 1.0),
        s5("S5 errors", Traffic::s5(), 11.0),
        s5("S5 latency", latency, 120.0),
    ]
}

/// The anchor rules the benchmark compares on a case, configured for the case's plan and
/// traffic as BENCHMARK.md describes them (S1–S4: they are defined on a look per minute;
/// none on S5's 10-second looks), and on S4 the oracle told the true dispersion, its
/// boundaries calibrated on [`sluice_rule::ORACLE_CALIBRATION_RUNS`] A/A rollouts of the
/// case's traffic and plan (on `threads` threads; the result does not depend on them).
/// Sluice runs through the engine beside them ([`sluice_rule::SluiceRollout`]).
pub fn benchmark_rules(case: &Case, threads: usize) -> Vec<Box<dyn Rule>> {
    if case.schedule.look_seconds != 60 {
        return Vec::new();
    }
    let stage_minutes = case.schedule.stages.first().map_or(0, |s| s.minutes);
    let anchors: Vec<Box<dyn Rule>> = vec![
        Box::new(rules::FlaggerStyle::anchor()),
        Box::new(rules::ArgoStyle::anchor()),
        Box::new(rules::KayentaStyle::anchor()),
        Box::new(rules::ZTestEveryLook::anchor()),
        Box::new(rules::AsymptoticCs::new(
            0.05,
            case.traffic.expected_requests(stage_minutes),
        )),
        Box::new(rules::Msprt::new(0.05, case.traffic.error_rate / 2.0)),
    ];
    anchors
        .into_iter()
        .chain(
            // The oracle told the true dispersion, for the heavy bursts of S4.
            case.traffic
                .burstiness
                .filter(|_| case.scenario == "S4")
                .map(|cv| {
                    Box::new(sluice_rule::KnownDispersionOracle::calibrated(
                        &case.schedule,
                        &case.traffic,
                        cv * cv,
                        sluice_rule::ORACLE_CALIBRATION_RUNS,
                        sluice_rule::ORACLE_CALIBRATION_SEED,
                        threads,
                    )) as Box<dyn Rule>
                }),
        )
        .collect()
}

/// What one rule did in one simulated rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The look (minutes since the start) at which the rule rolled back; `None` when the
    /// candidate was promoted.
    pub rollback_minute: Option<u32>,
    /// Candidate requests served from the regression's onset until the rollout ended
    /// (through the rollback minute, or the last minute when promoted).
    pub candidate_requests_since_onset: u64,
    /// The stage (index) the rule rolled back in.
    pub rollback_stage: Option<usize>,
    /// Look intervals the engine held stages beyond their planned durations (0 for rules
    /// that follow the schedule).
    pub held_looks: u32,
    /// The stage (index) still held when the simulation stopped the rollout
    /// ([`sluice_rule::HOLD_CAP`] times the plan's length): neither rolled back nor
    /// promoted.
    pub stuck: Option<usize>,
}

/// Runs every rule over one rollout's per-minute counts, look by look, and returns each
/// rule's outcome (in the order of `rules`). Rules are reset first.
pub fn judge_rollout(
    rules: &mut [Box<dyn Rule>],
    schedule: &Schedule,
    onset_minute: u32,
    minutes: &[Cohorts],
) -> Vec<Outcome> {
    for rule in rules.iter_mut() {
        rule.reset();
    }
    let mut outcomes = vec![Outcome::default(); rules.len()];
    let mut active = vec![true; rules.len()];
    let mut since_onset = 0;
    for_each_look(schedule, minutes, |look| {
        if look.minute > onset_minute {
            since_onset += look.last_minute.candidate.requests;
        }
        for ((rule, outcome), on) in rules.iter_mut().zip(&mut outcomes).zip(&mut active) {
            if !*on {
                continue;
            }
            outcome.candidate_requests_since_onset = since_onset;
            if rule.judge(look) == Judgement::RollBack {
                outcome.rollback_minute = Some(look.minute);
                outcome.rollback_stage = Some(look.stage);
                *on = false;
            }
        }
        active.iter().any(|on| *on)
    });
    outcomes
}

/// Hands `visit` each look of one rollout's per-minute counts on `schedule`, in order,
/// until the schedule ends or `visit` returns `false`.
pub fn for_each_look(
    schedule: &Schedule,
    minutes: &[Cohorts],
    mut visit: impl FnMut(&Look<'_>) -> bool,
) {
    let mut stage_total = Cohorts::default();
    let mut rollout_total = Cohorts::default();
    let mut current_stage = None;
    for (index, counts) in minutes.iter().enumerate() {
        let Some((stage, in_stage)) = schedule.locate(index as u32) else {
            break;
        };
        if current_stage != Some(stage) {
            stage_total = Cohorts::default();
            current_stage = Some(stage);
        }
        stage_total += *counts;
        rollout_total += *counts;
        let look = Look {
            minute: index as u32 + 1,
            stage,
            minute_in_stage: in_stage + 1,
            exposure: schedule.stages[stage].exposure,
            last_minute: *counts,
            stage_total,
            rollout_total,
            history: &minutes[..=index],
            schedule,
        };
        if !visit(&look) {
            break;
        }
    }
}

/// The random number generator of one simulated rollout: ChaCha8 keyed by the base seed,
/// on a stream made of the case's key and the run index.
pub fn rollout_rng(seed: u64, case: &Case, run: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((u64::from(case_key(case)) << 32) | (run as u64 & 0xffff_ffff));
    rng
}

/// A stable 32-bit key of a case (FNV-1a of its label), so adding or reordering cases
/// leaves the traffic of the others unchanged.
fn case_key(case: &Case) -> u32 {
    case.label().bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Simulates `runs` rollouts of `case` on `threads` threads and returns, for each rule (in
/// the order of `rules`, then Sluice through the engine when `sluice` is given), its
/// outcome in every run (in run order).
pub fn simulate_case(
    case: &Case,
    rules: &[Box<dyn Rule>],
    sluice: Option<&sluice_rule::SluiceRollout>,
    runs: usize,
    seed: u64,
    threads: usize,
) -> Vec<Vec<Outcome>> {
    const CHUNK: usize = 64;
    let next = AtomicUsize::new(0);
    let threads = threads.max(1);
    let columns = rules.len() + usize::from(sluice.is_some());
    let per_thread: Vec<Vec<(usize, Vec<Outcome>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let mut rules: Vec<Box<dyn Rule>> = rules.iter().map(|r| r.boxed_clone()).collect();
                let next = &next;
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= runs {
                            break;
                        }
                        for run in start..(start + CHUNK).min(runs) {
                            let mut rng = rollout_rng(seed, case, run);
                            let mut source = TrafficSource::new(
                                &mut rng,
                                &case.traffic,
                                case.schedule.look_seconds,
                            );
                            let minutes = traffic::simulate_rollout(
                                &mut rng,
                                &mut source,
                                &case.schedule,
                                &case.regression,
                            );
                            let mut outcomes = judge_rollout(
                                &mut rules,
                                &case.schedule,
                                case.regression.onset_minute,
                                &minutes,
                            );
                            if let Some(sluice) = sluice {
                                outcomes.push(sluice.run(
                                    &mut rng,
                                    &mut source,
                                    &case.regression,
                                    &minutes,
                                ));
                            }
                            done.push((run, outcomes));
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a simulation worker panicked"))
            .collect()
    });
    let mut by_rule = vec![vec![Outcome::default(); runs]; columns];
    for (run, outcomes) in per_thread.into_iter().flatten() {
        for (rule, outcome) in outcomes.into_iter().enumerate() {
            by_rule[rule][run] = outcome;
        }
    }
    by_rule
}

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Rollouts per case.
    pub runs: usize,
    /// Base seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// The cases.
    pub cases: Vec<Case>,
    /// Whether to run the validity sweep ([`validity_sweep`]) too.
    pub sweep: bool,
}

impl Config {
    /// BENCHMARK.md's cases with the given runs, seed and threads (`None`: all cores).
    pub fn benchmark(runs: usize, seed: u64, threads: Option<usize>) -> Self {
        Config {
            runs,
            seed,
            threads: threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            cases: benchmark_cases(),
            sweep: true,
        }
    }
}

/// The outcomes of one case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// The rules' names and descriptions, in the order of `outcomes`.
    pub rules: Vec<(String, String)>,
    /// Per rule, the outcome of every run.
    pub outcomes: Vec<Vec<Outcome>>,
}

/// One cell of the validity sweep: Sluice's false rollback rate under A/A on one plan, at
/// one baseline error rate and one traffic level.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepCell {
    /// `S1` (binomial errors), `S2` (overdispersed), `S3a` (user-clustered), `S4` (heavy
    /// bursts).
    pub scenario: String,
    /// The plan's name ([`sweep_plans`]).
    pub plan: String,
    /// Baseline error probability.
    pub error_rate: f64,
    /// Requests per second, both cohorts together.
    pub requests_per_second: f64,
    /// Runs rolled back (all false: the candidate is as good as the baseline).
    pub rollbacks: usize,
    /// Runs the engine held past a stage's planned end.
    pub held: usize,
    /// Runs simulated.
    pub runs: usize,
}

/// The baseline error rates of the validity sweep.
pub const SWEEP_ERROR_RATES: [f64; 3] = [0.002, 0.01, 0.05];

/// The traffic levels (requests/s) of the validity sweep.
pub const SWEEP_TRAFFIC: [f64; 3] = [10.0, 50.0, 500.0];

/// The plans of the validity sweep besides BENCHMARK.md's and S5's, differing from them in
/// stage count, durations, interval and first-stage weight.
pub fn sweep_plans() -> Vec<(&'static str, Schedule)> {
    vec![
        (
            "3 × 15 min at 5/20/50 %, 1-min looks",
            Schedule::of(&[(0.05, 15), (0.2, 15), (0.5, 15)], 60),
        ),
        (
            "0.5 % 10 min, 10 % 5 min, 50 % 10 min, 30-s looks",
            Schedule::of(&[(0.005, 20), (0.1, 10), (0.5, 20)], 30),
        ),
        (
            "one stage of 20 % for 30 min, 2-min looks",
            Schedule::of(&[(0.2, 15)], 120),
        ),
    ]
}

fn traffic_of(scenario: &str, error_rate: f64, requests_per_second: f64) -> Traffic {
    let base = match scenario {
        "S2" => Traffic::s2(),
        "S3a" => Traffic::s3a(),
        "S4" => Traffic::s4(),
        _ => Traffic::s1(),
    };
    Traffic {
        requests_per_second,
        error_rate,
        ..base
    }
}

/// The validity sweep, `runs` A/A rollouts per cell through the engine:
/// - BENCHMARK.md's plan: S1, S2 and S4 at every baseline error rate of
///   [`SWEEP_ERROR_RATES`] and traffic of [`SWEEP_TRAFFIC`]; S3a at every error rate and
///   50 requests/s (its users make it the costly one);
/// - S5's plan: S1 and S4 errors at every error rate, at 10, 100 and 500 requests/s;
/// - each plan of [`sweep_plans`]: S1, S2, S3a and S4 at 1 % and 50 requests/s.
pub fn validity_sweep(runs: usize, seed: u64, threads: usize) -> Vec<SweepCell> {
    let mut grid: Vec<(&str, String, Schedule, f64, f64)> = Vec::new();
    let benchmark = "BENCHMARK.md's";
    for scenario in ["S1", "S2", "S4"] {
        for error_rate in SWEEP_ERROR_RATES {
            for rate in SWEEP_TRAFFIC {
                grid.push((
                    scenario,
                    benchmark.into(),
                    Schedule::benchmark(),
                    error_rate,
                    rate,
                ));
            }
        }
    }
    for error_rate in SWEEP_ERROR_RATES {
        grid.push((
            "S3a",
            benchmark.into(),
            Schedule::benchmark(),
            error_rate,
            50.0,
        ));
    }
    for scenario in ["S1", "S4"] {
        for error_rate in SWEEP_ERROR_RATES {
            for rate in [10.0, 100.0, 500.0] {
                grid.push((scenario, "S5's".into(), Schedule::s5(), error_rate, rate));
            }
        }
    }
    for (name, schedule) in sweep_plans() {
        for scenario in ["S1", "S2", "S3a", "S4"] {
            grid.push((scenario, name.into(), schedule.clone(), 0.01, 50.0));
        }
    }
    grid.into_iter()
        .map(
            |(scenario, plan, schedule, error_rate, requests_per_second)| {
                // A scenario name per cell gives every cell its own random streams.
                let name =
                    format!("{scenario} sweep {plan} p0={error_rate} rate={requests_per_second}");
                let case = Case {
                    scenario: name,
                    schedule,
                    traffic: traffic_of(scenario, error_rate, requests_per_second),
                    regression: Regression {
                        multiplier: 1.0,
                        onset_minute: 0,
                    },
                    user_level: false,
                };
                let sluice = case.sluice();
                let outcomes = simulate_case(&case, &[], Some(&sluice), runs, seed, threads);
                SweepCell {
                    scenario: scenario.to_owned(),
                    plan,
                    error_rate,
                    requests_per_second,
                    rollbacks: outcomes[0]
                        .iter()
                        .filter(|o| o.rollback_minute.is_some())
                        .count(),
                    held: outcomes[0].iter().filter(|o| o.held_looks > 0).count(),
                    runs,
                }
            },
        )
        .collect()
}

/// Everything one benchmark run produced.
#[derive(Clone, Debug)]
pub struct Results {
    /// What was simulated.
    pub config: Config,
    /// One entry per case, in the order of `config.cases`.
    pub cases: Vec<CaseResult>,
    /// The validity sweep (empty when not asked for).
    pub sweep: Vec<SweepCell>,
    /// Wall time of the simulation.
    pub elapsed: Duration,
}

/// Simulates every case of `config` with [`benchmark_rules`], then the validity sweep when
/// asked for.
pub fn run(config: &Config) -> Results {
    let started = Instant::now();
    let cases = config
        .cases
        .iter()
        .map(|case| {
            let rules = benchmark_rules(case, config.threads);
            let sluice = case.sluice();
            let outcomes = simulate_case(
                case,
                &rules,
                Some(&sluice),
                config.runs,
                config.seed,
                config.threads,
            );
            CaseResult {
                case: case.clone(),
                rules: rules
                    .iter()
                    .map(|r| (r.name().to_owned(), r.describe()))
                    .chain(std::iter::once((
                        sluice.name().to_owned(),
                        sluice.describe(),
                    )))
                    .collect(),
                outcomes,
            }
        })
        .collect();
    let sweep = if config.sweep {
        validity_sweep(config.runs, config.seed, config.threads)
    } else {
        Vec::new()
    };
    Results {
        config: config.clone(),
        cases,
        sweep,
        elapsed: started.elapsed(),
    }
}
