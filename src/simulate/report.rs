//! BENCHMARK.md's figures from simulated outcomes, the fixed-horizon oracle, and the
//! printed report with the comparison against the anchor figures.

use std::fmt::Write as _;

use super::rules::normal_quantile_upper;
use super::sluice_rule::{ORACLE, ORACLE_CALIBRATION_RUNS};
use super::{Case, CaseResult, Outcome, Results, Traffic};

/// The figures of one rule on one case.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Simulated rollouts.
    pub runs: usize,
    /// Rollouts the rule rolled back (at any time).
    pub rolled_back: usize,
    /// Rollouts rolled back at or before the regression's onset (only counted when the
    /// onset is after the start).
    pub before_onset: usize,
    /// For every rollout rolled back after the onset ("detected"), the minutes from the
    /// onset to the rollback, sorted.
    pub minutes_to_rollback: Vec<u32>,
    /// For every detected rollout, the excess errors served to candidate users:
    /// `(p1 − p0) × candidate requests since the onset`.
    pub excess_errors: Vec<f64>,
    /// Rollouts rolled back in each stage, then (last entry) the promoted ones (the ones
    /// still held when the simulation stopped them are in neither: [`Summary::stuck`]).
    pub ended_in_stage: Vec<usize>,
    /// Rollouts the engine held past a stage's planned end.
    pub held: usize,
    /// Look intervals held past the planned ends, summed over all rollouts.
    pub held_looks: u64,
    /// Rollouts still held when the simulation stopped them, by the stage they were held
    /// in.
    pub stuck: Vec<usize>,
}

impl Summary {
    /// Summarises one rule's outcomes on `case`.
    pub fn new(case: &Case, outcomes: &[Outcome]) -> Self {
        let onset = case.regression.onset_minute;
        let stages = case.schedule.stages.len();
        let mut summary = Summary {
            runs: outcomes.len(),
            rolled_back: 0,
            before_onset: 0,
            minutes_to_rollback: Vec::new(),
            excess_errors: Vec::new(),
            ended_in_stage: vec![0; stages + 1],
            held: 0,
            held_looks: 0,
            stuck: vec![0; stages],
        };
        for outcome in outcomes {
            if outcome.held_looks > 0 {
                summary.held += 1;
                summary.held_looks += u64::from(outcome.held_looks);
            }
            if let Some(stage) = outcome.stuck {
                // Held at the cap: neither rolled back nor promoted.
                summary.stuck[stage.min(stages.saturating_sub(1))] += 1;
                continue;
            }
            let Some(minute) = outcome.rollback_minute else {
                summary.ended_in_stage[stages] += 1;
                continue;
            };
            summary.rolled_back += 1;
            let stage = outcome
                .rollback_stage
                .or_else(|| case.schedule.locate(minute - 1).map(|(s, _)| s))
                .unwrap_or(stages - 1);
            summary.ended_in_stage[stage] += 1;
            if minute <= onset {
                summary.before_onset += 1;
            } else {
                summary.minutes_to_rollback.push(minute - onset);
                summary
                    .excess_errors
                    .push(case.excess_error_rate() * outcome.candidate_requests_since_onset as f64);
            }
        }
        summary.minutes_to_rollback.sort_unstable();
        summary
    }

    /// Share of rollouts rolled back, with its binomial standard error.
    pub fn rollback_share(&self) -> Share {
        Share::new(self.rolled_back, self.runs)
    }

    /// Share of rollouts rolled back before the onset, with its standard error.
    pub fn before_onset_share(&self) -> Share {
        Share::new(self.before_onset, self.runs)
    }

    /// Median minutes from onset to rollback among detected rollouts, with a
    /// distribution-free 95 % confidence interval (order statistics), or `None` if none
    /// was detected.
    pub fn median_minutes(&self) -> Option<(u32, u32, u32)> {
        let sorted = &self.minutes_to_rollback;
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let half_width = 1.96 * (n as f64).sqrt() / 2.0;
        let lo = ((n as f64 / 2.0 - half_width).floor() as usize).clamp(1, n);
        let hi = ((n as f64 / 2.0 + half_width).ceil() as usize).clamp(1, n);
        Some((quantile(sorted, 0.5)?, sorted[lo - 1], sorted[hi - 1]))
    }

    /// Share of all rollouts rolled back within `minutes` of the onset (the median is at
    /// most `minutes` when this share is at least a half), with its standard error.
    pub fn within_share(&self, minutes: u32) -> Share {
        let count = self.minutes_to_rollback.partition_point(|&m| m <= minutes);
        Share::new(count, self.runs)
    }

    /// 90th percentile of minutes from onset to rollback among detected rollouts.
    pub fn p90_minutes(&self) -> Option<u32> {
        quantile(&self.minutes_to_rollback, 0.9)
    }

    /// Share of rollouts the engine held past a stage's planned end.
    pub fn held_share(&self) -> Share {
        Share::new(self.held, self.runs)
    }

    /// Mean minutes held past the planned stage ends per rollout (all rollouts), for looks
    /// every `look_seconds`.
    pub fn mean_held_minutes(&self, look_seconds: u32) -> f64 {
        self.held_looks as f64 * f64::from(look_seconds) / 60.0 / self.runs.max(1) as f64
    }

    /// Mean excess errors among detected rollouts and its standard error.
    pub fn mean_excess_errors(&self) -> Option<(f64, f64)> {
        mean_and_se(&self.excess_errors)
    }
}

/// The sample quantile that is the smallest value with at least `p` of the sample at or
/// below it (Hyndman and Fan type 1).
pub fn quantile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn mean_and_se(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some((mean, 0.0));
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some((mean, (variance / n as f64).sqrt()))
}

/// A share of rollouts and its binomial standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share {
    /// The share, in [0, 1].
    pub value: f64,
    /// `sqrt(value (1 − value) / n)`.
    pub standard_error: f64,
}

impl Share {
    /// `count` out of `n`.
    pub fn new(count: usize, n: usize) -> Self {
        if n == 0 {
            return Share {
                value: 0.0,
                standard_error: 0.0,
            };
        }
        let value = count as f64 / n as f64;
        Share {
            value,
            standard_error: (value * (1.0 - value) / n as f64).sqrt(),
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} % ± {:.2}",
            self.value * 100.0,
            self.standard_error * 100.0
        )
    }
}

/// Candidate requests a single fixed-horizon one-sided two-proportion z-test at level
/// `alpha` with the given power needs to see a candidate error rate `m · p0` against a
/// baseline of `p0`, when the baseline cohort gets `(1 − w)/w` times as many requests
/// (exposure `w`):
///
/// `n_c = (z_α sqrt(p̄(1 − p̄)(1 + 1/k)) + z_β sqrt(p1(1 − p1) + p0(1 − p0)/k))² / (p1 − p0)²`,
/// with `k = (1 − w)/w` and `p̄ = (p1 + k p0)/(1 + k)` (the normal-approximation sample
/// size for unequal groups, pooled variance under the null).
pub fn oracle_candidate_requests(p0: f64, m: f64, exposure: f64, alpha: f64, power: f64) -> f64 {
    let p1 = m * p0;
    let k = (1.0 - exposure) / exposure;
    let pooled = (p1 + k * p0) / (1.0 + k);
    let z_alpha = normal_quantile_upper(alpha);
    let z_beta = normal_quantile_upper(1.0 - power);
    let null_part = z_alpha * (pooled * (1.0 - pooled) * (1.0 + 1.0 / k)).sqrt();
    let alt_part = z_beta * (p1 * (1.0 - p1) + p0 * (1.0 - p0) / k).sqrt();
    (null_part + alt_part).powi(2) / (p1 - p0).powi(2)
}

/// One anchor row of BENCHMARK.md's "figures to beat" (S1, 10,000 rollouts per case).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Anchor {
    /// The rule's name, as [`Rule::name`](super::Rule::name) gives it.
    pub rule: &'static str,
    /// A/A false rollback share.
    pub aa_false_rollback: f64,
    /// `m = 1.5` from the start: share rolled back before promotion.
    pub m15_caught: f64,
    /// `m = 2` from the start: median minutes to rollback.
    pub m2_median_minutes: u32,
    /// `m = 5` from minute 15: mean excess errors.
    pub m5_late_excess_errors: f64,
}

/// BENCHMARK.md's anchor figures.
pub const ANCHORS: [Anchor; 6] = [
    Anchor {
        rule: "Flagger-style",
        aa_false_rollback: 0.339,
        m15_caught: 0.950,
        m2_median_minutes: 10,
        m5_late_excess_errors: 14.9,
    },
    Anchor {
        rule: "Argo-style",
        aa_false_rollback: 1.0,
        m15_caught: 1.0,
        m2_median_minutes: 8,
        m5_late_excess_errors: 9.3,
    },
    Anchor {
        rule: "Kayenta-style",
        aa_false_rollback: 0.070,
        m15_caught: 0.982,
        m2_median_minutes: 18,
        m5_late_excess_errors: 155.0,
    },
    Anchor {
        rule: "z-test every look",
        aa_false_rollback: 0.570,
        m15_caught: 1.0,
        m2_median_minutes: 6,
        m5_late_excess_errors: 9.4,
    },
    Anchor {
        rule: "AsympCS per stage",
        aa_false_rollback: 0.003,
        m15_caught: 0.882,
        m2_median_minutes: 23,
        m5_late_excess_errors: 23.6,
    },
    Anchor {
        rule: "mSPRT per stage",
        aa_false_rollback: 0.001,
        m15_caught: 0.820,
        m2_median_minutes: 25,
        m5_late_excess_errors: 45.7,
    },
];

/// Rollouts per case behind the anchor figures.
pub const ANCHOR_RUNS: f64 = 10_000.0;

/// How a simulated figure compares with its anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// Within two combined standard errors (ours and the anchor's own at 10,000 runs,
    /// after the anchor's rounding); for a median, the anchor lies in our 95 % interval.
    Reproduced,
    /// Between two and three combined standard errors.
    Marginal,
    /// Further apart.
    Differs,
}

impl Agreement {
    fn mark(self) -> &'static str {
        match self {
            Agreement::Reproduced => "ok",
            Agreement::Marginal => "~",
            Agreement::Differs => "DIFFERS",
        }
    }

    /// Classifies a difference from the anchor given the combined standard error and the
    /// anchor's rounding half-unit.
    pub fn of(ours: f64, anchor: f64, combined_se: f64, half_unit: f64) -> Self {
        let gap = ((ours - anchor).abs() - half_unit).max(0.0);
        if gap == 0.0 || gap <= 2.0 * combined_se {
            Agreement::Reproduced
        } else if gap <= 3.0 * combined_se {
            Agreement::Marginal
        } else {
            Agreement::Differs
        }
    }
}

/// Compares a share with an anchor share (rounded to 0.1 %).
pub fn compare_share(ours: Share, anchor: f64) -> Agreement {
    let anchor_se = (anchor * (1.0 - anchor) / ANCHOR_RUNS).sqrt();
    let combined = (ours.standard_error.powi(2) + anchor_se.powi(2)).sqrt();
    Agreement::of(ours.value, anchor, combined, 0.0005)
}

/// Compares a mean excess (with its standard error over `detected` runs out of `runs`) with
/// an anchor rounded to 0.1 (or to units above 100).
pub fn compare_mean(ours: (f64, f64), detected: usize, runs: usize, anchor: f64) -> Agreement {
    let (mean, se) = ours;
    // The anchor's own error: the same spread over the detected share of 10,000 runs.
    let anchor_detected = ANCHOR_RUNS * detected as f64 / runs.max(1) as f64;
    let anchor_se = se * (detected as f64 / anchor_detected.max(1.0)).sqrt();
    let combined = (se * se + anchor_se * anchor_se).sqrt();
    let half_unit = if anchor >= 100.0 { 0.5 } else { 0.05 };
    Agreement::of(mean, anchor, combined, half_unit)
}

/// Compares a median (with its 95 % interval) with an anchor median.
pub fn compare_median(ours: (u32, u32, u32), anchor: u32) -> Agreement {
    let (_, lo, hi) = ours;
    if (lo..=hi).contains(&anchor) {
        Agreement::Reproduced
    } else if lo.saturating_sub(1) <= anchor && anchor <= hi + 1 {
        Agreement::Marginal
    } else {
        Agreement::Differs
    }
}

fn percent(count: usize, n: usize) -> String {
    format!("{:.1}", 100.0 * count as f64 / n.max(1) as f64)
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

/// Prints the oracle: the fixed-horizon sample sizes.
fn write_oracle(out: &mut String, traffic: &Traffic, exposure: f64) {
    let per_minute = traffic.expected_requests(1) * exposure;
    let _ = writeln!(
        out,
        "Oracle: candidate requests a single one-sided two-proportion z-test (α = 5 %, power \
         80 %) needs at {} % exposure (baseline {:.0}× larger), and minutes at {per_minute:.0} \
         candidate requests/min:",
        exposure * 100.0,
        (1.0 - exposure) / exposure
    );
    for m in [1.5, 2.0, 5.0] {
        let n = oracle_candidate_requests(traffic.error_rate, m, exposure, 0.05, 0.8);
        let _ = writeln!(
            out,
            "  m = {m:<3}  {n:>8.1} candidate requests (≈ {:>5}), {:>5.1} minutes",
            n.round(),
            n / per_minute
        );
    }
    let _ = writeln!(
        out,
        "  (BENCHMARK.md: 849 for m = 2, 5.7 minutes; 3,004 for m = 1.5.)"
    );
}

fn write_case(out: &mut String, result: &CaseResult, listed: &[(String, String)]) {
    let case = &result.case;
    let onset = case.regression.onset_minute;
    let harmful = case.regression.multiplier != 1.0;
    let _ = writeln!(out, "\n## {}", case.label());
    if case.user_level {
        let replicas = case.traffic.users.map_or(1, |u| u.replicas);
        let _ = writeln!(
            out,
            "(Sluice with user-level statistics: the metric's per-user sums of the stage, {})",
            if replicas > 1 {
                format!(
                    "each of {replicas} replicas counting its own users (a user's requests \
                     are split between them, so its sums add up per replica)"
                )
            } else {
                "one instrumentation counting every user".to_owned()
            }
        );
    } else if case.scenario.starts_with("S3b") {
        let _ = writeln!(
            out,
            "(S3b without user-level statistics: Sluice judges requests here; its figure is \
             reported, the goal is for user-level statistics.)"
        );
    }
    let seconds = case.schedule.look_seconds;
    if seconds != 60 {
        let _ = writeln!(
            out,
            "(a look every {seconds} s: times below are in looks of {seconds} s, not minutes)"
        );
    }
    let stages = case.schedule.stages.len();
    let stage_header: Vec<String> = case
        .schedule
        .stages
        .iter()
        .map(|s| format!("{}%", s.exposure * 100.0))
        .chain(std::iter::once("promoted".to_owned()))
        .collect();
    let share_header = if harmful {
        "rolled back"
    } else {
        "false rollback"
    };
    let _ = write!(out, "{:<20} {:>16}", "rule", share_header);
    if onset > 0 {
        let _ = write!(out, " {:>16}", "before onset");
    }
    if harmful {
        let _ = write!(
            out,
            " {:>14} {:>4} {:>16}",
            "median min", "p90", "excess errors"
        );
    }
    let _ = write!(out, " {:>16} {:>10}", "held", "min held");
    let _ = writeln!(
        out,
        "   ended in stage (% of runs: {})",
        stage_header.join(" / ")
    );
    for ((name, _), outcomes) in result.rules.iter().zip(&result.outcomes) {
        let s = Summary::new(case, outcomes);
        let _ = write!(out, "{name:<20} {:>16}", s.rollback_share().to_string());
        if onset > 0 {
            let _ = write!(out, " {:>16}", s.before_onset_share().to_string());
        }
        if harmful {
            let median = s
                .median_minutes()
                .map(|(m, lo, hi)| format!("{m} [{lo}–{hi}]"));
            let excess = s
                .mean_excess_errors()
                .map(|(mean, se)| format!("{mean:.1} ± {se:.2}"));
            let _ = write!(
                out,
                " {:>14} {:>4} {:>16}",
                opt(median),
                opt(s.p90_minutes()),
                opt(excess)
            );
        }
        let _ = write!(
            out,
            " {:>16} {:>10.2}",
            s.held_share().to_string(),
            s.mean_held_minutes(seconds)
        );
        let ended: Vec<String> = (0..=stages)
            .map(|i| percent(s.ended_in_stage[i], s.runs))
            .collect();
        let held: usize = s.stuck.iter().sum();
        let stuck = if held > 0 {
            let by_stage: Vec<String> = s.stuck.iter().map(|&n| percent(n, s.runs)).collect();
            format!(
                " ({held} still held at the cap; % of runs by stage: {})",
                by_stage.join(" / ")
            )
        } else {
            String::new()
        };
        let _ = writeln!(out, "   {}{stuck}", ended.join(" / "));
    }
    // A rule the header does not list (the S4 oracle: the header lists the first case's
    // rules) is described with its figures.
    for (name, description) in &result.rules {
        if !listed.iter().any(|(n, _)| n == name) {
            let _ = writeln!(out, "{name}: {description}");
        }
    }
}

fn find<'a>(results: &'a Results, scenario: &str, m: f64, onset: u32) -> Option<&'a CaseResult> {
    results.cases.iter().find(|c| {
        c.case.scenario == scenario
            && c.case.regression.multiplier == m
            && c.case.regression.onset_minute == onset
    })
}

fn rule_summary(result: &CaseResult, rule: &str) -> Option<Summary> {
    let index = result.rules.iter().position(|(name, _)| name == rule)?;
    Some(Summary::new(&result.case, &result.outcomes[index]))
}

fn cell(ours: &str, anchor: &str, agreement: Option<Agreement>) -> String {
    format!(
        "{ours:>15} {anchor:>7} {:<7}",
        agreement.map_or("", Agreement::mark)
    )
}

fn write_comparison(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "\n## Figures to beat: this run vs BENCHMARK.md's anchors (S1)\n\
         Each cell: ours (± binomial standard error, or [95 % interval] of the median), the \
         anchor, and the agreement (ok: within 2 combined standard errors, ours and the \
         anchor's own at 10,000 runs, after the anchor's rounding; ~: within 3; DIFFERS: \
         further)."
    );
    let _ = writeln!(
        out,
        "{:<20} | {:<31} | {:<31} | {:<31} | {:<31}",
        "rule",
        "A/A false rollback",
        "m=1.5 caught before promotion",
        "m=2: median min to rollback",
        "m=5 from min 15: excess errors"
    );
    let sub = cell("ours", "anchor", None);
    let _ = writeln!(out, "{:<20} | {sub} | {sub} | {sub} | {sub}", "");
    let aa = find(results, "S1", 1.0, 0);
    let m15 = find(results, "S1", 1.5, 0);
    let m2 = find(results, "S1", 2.0, 0);
    let m5 = find(results, "S1", 5.0, 15);
    let missing = || cell("not simulated", "", None);
    for anchor in ANCHORS {
        let share_cell = |case: Option<&CaseResult>, anchor_value: f64| {
            case.and_then(|c| rule_summary(c, anchor.rule))
                .map_or_else(missing, |s| {
                    let share = s.rollback_share();
                    cell(
                        &share.to_string(),
                        &format!("{:.1} %", anchor_value * 100.0),
                        Some(compare_share(share, anchor_value)),
                    )
                })
        };
        let median_cell = m2
            .and_then(|c| rule_summary(c, anchor.rule))
            .and_then(|s| s.median_minutes())
            .map_or_else(missing, |median| {
                cell(
                    &format!("{} [{}–{}]", median.0, median.1, median.2),
                    &anchor.m2_median_minutes.to_string(),
                    Some(compare_median(median, anchor.m2_median_minutes)),
                )
            });
        let excess_cell = m5
            .and_then(|c| rule_summary(c, anchor.rule))
            .and_then(|s| {
                let detected = s.excess_errors.len();
                s.mean_excess_errors().map(|m| (m, detected, s.runs))
            })
            .map_or_else(missing, |(mean, detected, runs)| {
                cell(
                    &format!("{:.1} ± {:.2}", mean.0, mean.1),
                    &anchor.m5_late_excess_errors.to_string(),
                    Some(compare_mean(
                        mean,
                        detected,
                        runs,
                        anchor.m5_late_excess_errors,
                    )),
                )
            });
        let _ = writeln!(
            out,
            "{:<20} | {} | {} | {} | {}",
            anchor.rule,
            share_cell(aa, anchor.aa_false_rollback),
            share_cell(m15, anchor.m15_caught),
            median_cell,
            excess_cell
        );
    }
}

/// BENCHMARK.md's goals (`confidence: 0.95`), all to be met at once.
fn write_goals(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "\n## Goals (BENCHMARK.md): false rollback ≤ 5 % on S1 A/A and on S2; m=2 median ≤ 12 \
         min; m=1.5 caught before promotion ≥ 97 %; m=5 from min 15 excess errors ≤ 15\n\
         Each cell: our figure, then yes/no (the point estimate against the goal)."
    );
    let _ = writeln!(
        out,
        "{:<20} | {:<14} | {:<14} | {:<14} | {:<14} | {:<14} | all goals",
        "rule", "S1 A/A", "S2 A/A", "m=2 median", "m=1.5 caught", "m=5@15 excess"
    );
    let Some(first) = results.cases.first() else {
        return;
    };
    let cases = [
        find(results, "S1", 1.0, 0),
        find(results, "S2", 1.0, 0),
        find(results, "S1", 2.0, 0),
        find(results, "S1", 1.5, 0),
        find(results, "S1", 5.0, 15),
    ];
    let mut within = Vec::new();
    for (rule, _) in &first.rules {
        let summary = |i: usize| cases[i].and_then(|c| rule_summary(c, rule));
        let yes = |ok: bool| if ok { "yes" } else { "no" };
        if let Some(s) = summary(2) {
            let share = s.within_share(12);
            within.push(format!(
                "{rule} {:.1} % ± {:.1}",
                share.value * 100.0,
                share.standard_error * 100.0
            ));
        }
        let mut met = [false; 5];
        let mut cells = Vec::new();
        for (i, goal) in [(0, 0.05), (1, 0.05)] {
            cells.push(summary(i).map_or_else(
                || "—".to_owned(),
                |s| {
                    let v = s.rollback_share().value;
                    met[i] = v <= goal;
                    format!("{:.1} % {}", v * 100.0, yes(met[i]))
                },
            ));
        }
        cells.push(summary(2).and_then(|s| s.median_minutes()).map_or_else(
            || "—".to_owned(),
            |(m, _, _)| {
                met[2] = m <= 12;
                format!("{m} {}", yes(met[2]))
            },
        ));
        cells.push(summary(3).map_or_else(
            || "—".to_owned(),
            |s| {
                let v = s.rollback_share().value;
                met[3] = v >= 0.97;
                format!("{:.1} % {}", v * 100.0, yes(met[3]))
            },
        ));
        cells.push(summary(4).and_then(|s| s.mean_excess_errors()).map_or_else(
            || "—".to_owned(),
            |(m, _)| {
                met[4] = m <= 15.0;
                format!("{m:.2} {}", yes(met[4]))
            },
        ));
        let _ = writeln!(
            out,
            "{rule:<20} | {:<14} | {:<14} | {:<14} | {:<14} | {:<14} | {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            yes(met.iter().all(|m| *m))
        );
    }
    if !within.is_empty() {
        let _ = writeln!(
            out,
            "m=2 from the start, rolled back within 12 minutes (the median is ≤ 12 when this \
             is ≥ 50 %): {}",
            within.join("; ")
        );
    }
}

/// BENCHMARK.md's goals on S2–S5 for Sluice (through the engine).
fn write_scenario_goals(out: &mut String, results: &Results) {
    let sluice = |scenario: &str, m: f64, onset: u32| {
        find(results, scenario, m, onset).and_then(|c| rule_summary(c, "Sluice"))
    };
    let yes = |ok: bool| if ok { "yes" } else { "no" };
    let _ = writeln!(
        out,
        "\n## Goals on S2–S5 (BENCHMARK.md), Sluice through the engine\n\
         Each line: our figure, then yes/no (the point estimate against the goal)."
    );
    for (scenario, label) in [
        ("S2", "S2 A/A false rollback ≤ 5 %"),
        ("S3a", "S3a A/A false rollback ≤ 5 %"),
        ("S4", "S4 A/A false rollback ≤ 5 %"),
        ("S5", "S5's plan A/A false rollback ≤ 5 %"),
    ] {
        if let Some(s) = sluice(scenario, 1.0, 0) {
            let v = s.rollback_share();
            let _ = writeln!(out, "{label:<62} {v} {}", yes(v.value <= 0.05));
        }
    }
    if let Some(s) = sluice("S3b", 1.0, 0) {
        let _ = writeln!(
            out,
            "{:<62} {} (needs user-level statistics: not a goal of request-level analysis)",
            "S3b A/A false rollback (reported)",
            s.rollback_share()
        );
    }
    for (scenario, label) in [
        ("S3a users", "S3a A/A with user-level statistics ≤ 5 %"),
        ("S3b users", "S3b A/A with user-level statistics ≤ 5 %"),
    ] {
        if let Some(s) = sluice(scenario, 1.0, 0) {
            let v = s.rollback_share();
            let _ = writeln!(out, "{label:<62} {v} {}", yes(v.value <= 0.05));
        }
    }
    if let Some(s) = sluice("S3b users, 3 replicas", 1.0, 0) {
        let _ = writeln!(
            out,
            "{:<62} {} (reported: each replica counts its own users)",
            "S3b A/A, user-level, 3 replicas round-robin",
            s.rollback_share()
        );
    }
    for m in [1.5, 2.0] {
        if let (Some(request), Some(user)) = (sluice("S3b", m, 0), sluice("S3b users", m, 0)) {
            let _ = writeln!(
                out,
                "{:<62} {} user-level against {} request-level (not valid here)",
                format!("S3b m={m} caught before promotion (reported)"),
                user.rollback_share(),
                request.rollback_share()
            );
        }
    }
    if let Some(oracle) = find(results, "S4", 1.0, 0).and_then(|c| rule_summary(c, ORACLE)) {
        // The reference must spend the budget itself: its A/A share against 5 %, within
        // two standard errors of the evaluation's and the calibration's runs together.
        let v = oracle.rollback_share();
        let runs = (oracle.runs.max(1), ORACLE_CALIBRATION_RUNS);
        let se = (0.05 * 0.95 * (1.0 / runs.0 as f64 + 1.0 / runs.1 as f64)).sqrt();
        let _ = writeln!(
            out,
            "{:<62} {v} {}",
            "S4 oracle A/A false rollback = 5 % (its budget, within 2 s.e.)",
            yes((v.value - 0.05).abs() <= 2.0 * se)
        );
    }
    if let Some(case) = find(results, "S4", 2.0, 0) {
        let oracle = rule_summary(case, ORACLE);
        if let (Some(ours), Some(oracle)) = (rule_summary(case, "Sluice"), oracle) {
            let (a, b) = (ours.rollback_share(), oracle.rollback_share());
            let _ = writeln!(
                out,
                "{:<62} {a} against the oracle's {b}: {:.1} points {}",
                "S4 m=2 caught before promotion, within 10 points of the oracle",
                (b.value - a.value) * 100.0,
                yes(b.value - a.value <= 0.10)
            );
        }
    }
    for scenario in ["S5 errors", "S5 latency"] {
        let Some(case) = results.cases.iter().find(|c| c.case.scenario == scenario) else {
            continue;
        };
        if let Some(s) = rule_summary(case, "Sluice") {
            let caught = s.rollback_share();
            let first = Share::new(s.ended_in_stage[0], s.runs);
            let _ = writeln!(
                out,
                "{:<62} {caught} {}; in the 10 % stage {first} {}",
                format!("{scenario}: caught before promotion ≥ 99 %, in 10 % ≥ 90 %"),
                yes(caught.value >= 0.99),
                yes(first.value >= 0.90)
            );
        }
    }
}

/// The full report: parameters, rules, oracle, per-case figures and the comparison with
/// the anchors.
pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let config = &results.config;
    let _ = writeln!(
        out,
        "# sluice simulate — BENCHMARK.md scenarios\n\
         seed {} (ChaCha8, one stream per case and run), {} rollouts per case, {} threads",
        config.seed, config.runs, config.threads
    );
    if let Some(first) = config.cases.first() {
        let schedule = &first.schedule;
        let stages: Vec<String> = schedule
            .stages
            .iter()
            .map(|s| format!("{} % × {} min", s.exposure * 100.0, s.minutes))
            .collect();
        let _ = writeln!(
            out,
            "plan: {}, then promoted; one look per minute ({} looks)\n\
             traffic: {} requests/s, Poisson; candidate with probability = exposure; \
             p0 = {} %, binomial errors (S2: p0 × Gamma(mean 1, CV {}) per cohort and minute)",
            stages.join(", "),
            schedule.total_minutes(),
            first.traffic.requests_per_second,
            first.traffic.error_rate * 100.0,
            Traffic::s2().burstiness.unwrap_or_default()
        );
    }
    if let Some(first) = results.cases.first() {
        let _ = writeln!(out, "rules:");
        for (name, description) in &first.rules {
            let _ = writeln!(out, "  {name:<20} {description}");
        }
    }
    let _ = writeln!(
        out,
        "minutes to rollback: from the onset to the rollback look, among runs rolled back \
         after the onset (median [95 % interval], 90th percentile); excess errors: \
         (p1 − p0) × candidate requests from the onset through the rollback minute, mean ± \
         standard error among the same runs; shares are ± their binomial standard error.\n"
    );
    if let Some(first) = config.cases.first() {
        write_oracle(&mut out, &first.traffic, 0.05);
    }
    let listed = results.cases.first().map_or(&[][..], |c| &c.rules[..]);
    for case in &results.cases {
        write_case(&mut out, case, listed);
    }
    write_comparison(&mut out, results);
    write_goals(&mut out, results);
    write_scenario_goals(&mut out, results);
    write_sweep(&mut out, results);
    out
}

/// The validity sweep: Sluice's A/A false rollback rate per scenario, plan, baseline error
/// rate and traffic, one line per cell.
fn write_sweep(out: &mut String, results: &Results) {
    if results.sweep.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Validity sweep: Sluice's A/A false rollback rate (goal ≤ 5 %), through the engine, \
         {} rollouts per cell",
        results.sweep[0].runs
    );
    let _ = writeln!(
        out,
        "{:<8} | {:<50} | {:<6} | {:<9} | {:<18} | held",
        "scenario", "plan", "p0", "req/s", "false rollback"
    );
    for cell in &results.sweep {
        let share = Share::new(cell.rollbacks, cell.runs);
        let ok = if share.value <= 0.05 { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "{:<8} | {:<50} | {:<6} | {:<9} | {:<18} | {}",
            cell.scenario,
            cell.plan,
            format!("{} %", cell.error_rate * 100.0),
            cell.requests_per_second,
            format!("{share} {ok}"),
            percent(cell.held, cell.runs)
        );
    }
    let worst = results
        .sweep
        .iter()
        .map(|c| c.rollbacks as f64 / c.runs.max(1) as f64)
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "largest false rollback rate in the sweep: {:.2} % ({})",
        worst * 100.0,
        if worst <= 0.05 {
            "all cells ≤ 5 %"
        } else {
            "some cells above 5 %"
        }
    );
}
