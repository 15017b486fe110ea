//! From what the queries returned to a verdict per metric and for the stage. Pure: the
//! queries are run by [`super::look`], the statistics live in [`super::ratio`],
//! [`super::histogram`] and [`super::srm`].

use jiff::Timestamp;

use super::compare::{
    self, BoundaryState, Comparison, ComparisonTest, MIN_DEGREES_OF_FREEDOM, Plan, Window,
};
use super::histogram::{self, Buckets, Continuity, MannWhitneyOutcome};
use super::ratio::{self, Counts, MIN_COHORT_SAMPLES, SequentialTest, Tolerance};
pub use super::source::Observed;
use super::source::{Measured, Measurement, PerCohort};
use super::srm::{self, RequestShareOutcome, SrmOutcome};
use super::users::{StratumUsers, UserSums};
use crate::crd::validate::{MetricKind, ShareLimits, ValidMetric, ValidSpec};
use crate::crd::{
    AnalysisStatus, CohortNumbers, MetricAnalysis, MetricCause, RequestShare, SampleRatio, Verdict,
    Weight,
};

/// The p-value under which the observed split of users is a sample ratio mismatch.
pub const SRM_P_VALUE: f64 = 0.001;

/// What one look needs to know about the stage, fixed before the queries run.
#[derive(Clone, Debug, PartialEq)]
pub struct StageLook {
    /// Index of the current stage.
    pub stage: u32,
    /// The stage's exposure.
    pub weight: Weight,
    /// Whether the stage has an audience (then both cohorts exist even at 100%).
    pub audience: bool,
    /// Elapsed share of the stage's duration, in `[0, 1]` (1 once the duration passed).
    pub elapsed_fraction: f64,
    /// When the stage began (the query window starts here).
    pub started_at: Timestamp,
    /// Seconds since the stage began.
    pub elapsed_seconds: f64,
    /// The false-rollback budget of each `max` test at this stage (its confidence
    /// sequence restarts at every stage).
    pub alpha: f64,
    /// The false-rollback budget of each comparison (`maxIncrease`) over the whole
    /// rollout ([`budget_per_test`]).
    pub budget: f64,
    /// The plan's information profile, for the comparison's boundaries.
    pub plan: Plan,
}

impl StageLook {
    /// Whether a baseline cohort exists to compare with.
    pub fn comparable(&self) -> bool {
        self.audience || self.weight < Weight::FULL
    }
}

/// Where in the plan a look is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LookAt {
    /// The current stage's index.
    pub stage: u32,
    /// When the stage began (the query window starts here).
    pub stage_started_at: Timestamp,
    /// The evaluation time.
    pub now: Timestamp,
}

impl StageLook {
    /// The look `at` a stage of a valid spec, with the budgets of [`alpha_per_test`] and
    /// [`budget_per_test`]: what every caller (controller, standalone, `sluice analyze`,
    /// `sluice simulate`) judges with.
    pub fn new(valid: &ValidSpec, at: LookAt) -> StageLook {
        let index = at.stage;
        let elapsed = at
            .now
            .duration_since(at.stage_started_at)
            .max(jiff::SignedDuration::ZERO);
        let stage = &valid.stages[(index as usize).min(valid.stages.len() - 1)];
        let elapsed_fraction = if stage.duration.is_zero() {
            1.0
        } else {
            (elapsed.as_secs_f64() / stage.duration.as_secs_f64()).clamp(0.0, 1.0)
        };
        StageLook {
            stage: index,
            weight: stage.weight,
            audience: stage.audience.is_some(),
            elapsed_fraction,
            started_at: at.stage_started_at,
            elapsed_seconds: elapsed.as_secs_f64(),
            alpha: alpha_per_test(valid),
            budget: budget_per_test(valid),
            plan: Plan::new(valid),
        }
    }

    fn window(&self) -> Window {
        let weight = self.weight.fraction();
        Window {
            stage: self.stage,
            weight,
            rate: compare::information_rate(weight, self.audience),
            started_at: self.started_at,
            seconds: self.elapsed_seconds,
        }
    }
}

/// The number of tests a spec runs at each look (`maxIncrease` and `max` of every ratio
/// and histogram metric).
fn tests(valid: &ValidSpec) -> usize {
    valid
        .metrics
        .iter()
        .filter_map(|m| m.kind.limits())
        .map(ShareLimits::tests)
        .sum::<usize>()
        .max(1)
}

/// The budget of one test over the whole rollout: `1 − confidence` split evenly over the
/// tests (`maxIncrease` and `max` of every ratio and histogram metric). A comparison
/// spends it over the plan's looks.
pub fn budget_per_test(valid: &ValidSpec) -> f64 {
    (1.0 - valid.confidence) / tests(valid) as f64
}

/// The budget of one `max` test at one stage: [`budget_per_test`] split evenly over the
/// stages that are analysed (all but a final stage without duration).
pub fn alpha_per_test(valid: &ValidSpec) -> f64 {
    let stages = valid
        .stages
        .iter()
        .filter(|s| !s.duration.is_zero())
        .count()
        .max(1);
    budget_per_test(valid) / stages as f64
}

/// The previous look's record of a metric, if it was made in the same stage.
fn previous_metric<'a>(
    previous: Option<&'a AnalysisStatus>,
    stage: u32,
    metric: &str,
) -> Option<&'a MetricAnalysis> {
    previous
        .filter(|p| p.stage == stage)?
        .metrics
        .iter()
        .find(|m| m.name == metric)
}

/// An `Error` result for a check whose queries failed.
pub fn failed(name: &str, queries: Vec<String>, reason: String) -> MetricAnalysis {
    MetricAnalysis {
        name: name.into(),
        queries,
        baseline: None,
        candidate: None,
        effect: None,
        bound: None,
        test: None,
        ceiling_target_samples: None,
        shift: None,
        statistic: None,
        boundary: None,
        recent_statistic: None,
        recent_boundary: None,
        budget_spent: None,
        information_fraction: None,
        dispersion: None,
        baseline_dispersion: None,
        boundary_state: None,
        degrees_of_freedom: None,
        user_variance: None,
        evidence: None,
        verdict: Verdict::Error,
        reason: Some(reason),
        cause: None,
    }
}

/// Judges one metric at one look, from what its provider measured.
pub fn judge_metric(
    metric: &ValidMetric,
    measured: Measurement<Observed>,
    look: &StageLook,
    previous: Option<&AnalysisStatus>,
) -> MetricAnalysis {
    let Measurement { queries, result } = measured;
    // The `max` test's tuning is fixed at the stage's first look and carried through
    // every later look, errored or not, so the stage keeps one boundary. The comparison's
    // evidence is carried across stages: a look without data keeps it as it was.
    let before = previous_metric(previous, look.stage, &metric.name);
    let evidence = previous
        .and_then(|p| p.metrics.iter().find(|m| m.name == metric.name))
        .and_then(|m| m.evidence.clone());
    let mut out = MetricAnalysis {
        name: metric.name.clone(),
        queries,
        baseline: None,
        candidate: None,
        effect: None,
        bound: None,
        test: None,
        ceiling_target_samples: before.and_then(|m| m.ceiling_target_samples),
        shift: None,
        statistic: None,
        boundary: None,
        recent_statistic: None,
        recent_boundary: None,
        budget_spent: None,
        information_fraction: None,
        dispersion: None,
        baseline_dispersion: None,
        boundary_state: None,
        degrees_of_freedom: None,
        user_variance: None,
        evidence,
        verdict: Verdict::Inconclusive,
        reason: None,
        cause: None,
    };
    let result = match (&metric.kind, result) {
        (_, Err(error)) => Err((Verdict::Error, error.to_string())),
        (MetricKind::Guard { min, max, .. }, Ok(Observed::Guard { cohorts, global })) => {
            judge_guard(*min, *max, &cohorts, global, &mut out)
        }
        (MetricKind::Ratio { limits, .. }, Ok(Observed::Ratio { bad, total, users })) => {
            let counts = |b: Option<f64>, t: Option<f64>| {
                t.map(|total| Counts {
                    bad: b.unwrap_or(0.0),
                    total,
                })
            };
            let baseline = counts(bad.baseline, total.baseline);
            let candidate = counts(bad.candidate, total.candidate);
            judge_share(limits, baseline, candidate, users, look, &mut out)
        }
        (
            MetricKind::Histogram {
                threshold, limits, ..
            },
            Ok(Observed::Histogram { buckets, users }),
        ) => judge_histogram(*threshold, limits, &buckets, users, look, &mut out),
        (kind, Ok(other)) => Err((
            Verdict::Error,
            format!(
                "the metrics provider answered with {} values for a {} metric",
                other.kind(),
                kind.name()
            ),
        )),
    };
    let (verdict, reason) = match result {
        Ok(reason) => (Verdict::Pass, reason),
        Err(outcome) => outcome,
    };
    out.verdict = verdict;
    out.reason = Some(reason);
    out
}

type Judged = Result<String, (Verdict, String)>;

fn judge_guard(
    min: Option<f64>,
    max: Option<f64>,
    cohorts: &PerCohort<f64>,
    global: Option<f64>,
    out: &mut MetricAnalysis,
) -> Judged {
    let (value, whose) = match (cohorts.candidate, global) {
        (Some(v), _) => (v, "the candidate's"),
        (None, Some(v)) => (v, "the"),
        (None, None) if cohorts.baseline.is_some() => {
            return Err((
                Verdict::Inconclusive,
                "no data for the candidate cohort yet".into(),
            ));
        }
        (None, None) => return Err((Verdict::Inconclusive, "the query returned no data".into())),
    };
    out.candidate = Some(CohortNumbers { n: 1.0, value });
    out.test = Some("threshold".into());
    if let Some(max) = max.filter(|max| value > *max) {
        out.bound = Some(max);
        return Err((
            Verdict::Fail,
            format!("{whose} value {value} is above the guard's max {max}"),
        ));
    }
    if let Some(min) = min.filter(|min| value < *min) {
        out.bound = Some(min);
        return Err((
            Verdict::Fail,
            format!("{whose} value {value} is below the guard's min {min}"),
        ));
    }
    Ok(format!("{whose} value {value} is within the guard"))
}

/// The share test shared by ratio and histogram metrics.
fn judge_share(
    limits: &ShareLimits,
    baseline: Option<Counts>,
    candidate: Option<Counts>,
    users: Option<PerCohort<UserSums>>,
    look: &StageLook,
    out: &mut MetricAnalysis,
) -> Judged {
    for (cohort, counts) in [("baseline", baseline), ("candidate", candidate)] {
        if let Some(c) = counts {
            let sane = c.bad.is_finite()
                && c.total.is_finite()
                && c.bad >= 0.0
                && c.total >= 0.0
                && c.bad <= c.total;
            if !sane {
                return Err((
                    Verdict::Error,
                    format!(
                        "impossible counts for the {cohort} cohort: {} bad of {} in all: check that the two queries count the same requests",
                        c.bad, c.total
                    ),
                ));
            }
        }
    }
    let numbers = |c: Counts| CohortNumbers {
        n: c.total,
        value: c.share().unwrap_or(0.0),
    };
    out.baseline = baseline.map(numbers);
    out.candidate = candidate.map(numbers);
    let whole_stage = look.elapsed_fraction >= 1.0;
    let no_data = |cohort: &str| {
        let message = if whole_stage {
            format!(
                "no data for the {cohort} cohort during the whole stage: the query is probably wrong (check the flag key and the cohort label)"
            )
        } else {
            format!("no data for the {cohort} cohort yet")
        };
        Err((Verdict::Inconclusive, message))
    };
    let Some(candidate) = candidate.filter(|c| c.total > 0.0) else {
        out.cause = whole_stage.then_some(MetricCause::NoDataAllStage);
        return no_data("candidate");
    };
    let ceiling = limits.max;
    let mut reasons = Vec::new();

    let mut tested: Option<SequentialTest> = None;
    if let Some(max) = ceiling {
        let target = out
            .ceiling_target_samples
            .unwrap_or_else(|| ratio::projected_target(candidate.total, look.elapsed_fraction));
        out.ceiling_target_samples = Some(target);
        let test = ratio::test_ceiling(candidate, max, look.alpha, target)
            .expect("the candidate has events");
        if test.reject {
            record(
                out,
                &test,
                "asymptotic confidence sequence, candidate share against max",
            );
            return Err((
                Verdict::Fail,
                format!(
                    "the candidate's share {:.4}% is above max {:.4}% (lower bound {:.4}%)",
                    100.0 * candidate.share().unwrap_or(0.0),
                    100.0 * max,
                    100.0 * (test.lower_bound + max)
                ),
            ));
        }
        tested = Some(test);
    }
    if let Some(tolerance) = limits.max_increase.filter(|_| look.comparable()) {
        let Some(baseline) = baseline.filter(|b| b.total > 0.0) else {
            out.cause = whole_stage.then_some(MetricCause::NoDataAllStage);
            return no_data("baseline");
        };
        let test = ComparisonTest {
            tolerance,
            plan: &look.plan,
            budget: look.budget,
        };
        // The variance: from the per-user sums when the metric has them, else today's
        // request-level one.
        let c = match stage_users(users.as_ref(), baseline, candidate)? {
            Some(stage) => compare::compare_with_users(
                out.evidence.as_ref(),
                look.window(),
                baseline,
                candidate,
                stage,
                test,
            ),
            None => compare::compare(
                out.evidence.as_ref(),
                look.window(),
                baseline,
                candidate,
                test,
            ),
        };
        record_comparison(out, &c, baseline, candidate, tolerance);
        if c.reject() {
            let recent = matches!((c.recent_statistic, c.recent_boundary), (Some(z), Some(b)) if z >= b)
                && !c.boundary.is_some_and(|b| c.statistic >= b);
            let (which, z, b) = if recent {
                (
                    "over the last looks",
                    c.recent_statistic.unwrap_or_default(),
                    c.recent_boundary.unwrap_or_default(),
                )
            } else {
                (
                    "over the rollout so far",
                    c.statistic,
                    c.boundary.unwrap_or_default(),
                )
            };
            return Err((
                Verdict::Fail,
                format!(
                    "the candidate is worse than tolerated {which}: z = {z:.2} reached the boundary {b:.2} (this stage: {:.4}% against {:.4}%; dispersion κ = {:.3} candidate, {:.3} baseline; {:.0}% of the budget spent)",
                    100.0 * candidate.share().unwrap_or(0.0),
                    100.0 * baseline.share().unwrap_or(0.0),
                    c.dispersion,
                    c.baseline_dispersion,
                    100.0 * c.budget_spent
                ),
            ));
        }
        // Users cluster the requests: say so, since it is why the candidate's dispersion
        // is its own (and often why the look cannot judge yet).
        let clustered = if c.requests_independent == Some(false) {
            CLUSTERED_REQUESTS
        } else {
            ""
        };
        match c.boundary_state {
            BoundaryState::Set => reasons.push(format!(
                "no evidence of harm beyond the tolerance (z = {:.2}, boundary {:.2}){clustered}",
                c.statistic,
                c.boundary.unwrap_or_default()
            )),
            BoundaryState::NotPlannedLook => reasons.push(format!(
                "no evidence of harm beyond the tolerance (z = {:.2}; this look reached no planned look of its own: the last one decided)",
                c.statistic
            )),
            BoundaryState::FirstLook => reasons.push(format!(
                "no boundary at the first planned look: no spread between looks to estimate the dispersion from yet (z = {:.2})",
                c.statistic
            )),
            BoundaryState::CannotBeReached => reasons.push(format!(
                "no evidence of harm beyond the tolerance: z = {:.2} is below the boundary binomial counts would have, and the dispersion (too uncertain for a boundary of its own, {:.2} degrees of freedom) only raises it",
                c.statistic, c.degrees_of_freedom
            )),
            BoundaryState::DispersionUncertain => {
                return Err((
                    Verdict::Inconclusive,
                    format!(
                        "z = {:.2} is below its boundary {:.2} only because the dispersion between looks is uncertain ({:.1} degrees of freedom): at the estimated dispersion it would be harm; more looks decide{clustered}",
                        c.statistic,
                        c.boundary.unwrap_or_default(),
                        c.degrees_of_freedom
                    ),
                ));
            }
            BoundaryState::AwaitingPlannedLook => {
                return Err((
                    Verdict::Inconclusive,
                    format!(
                        "z = {:.2} is at or above the last planned look's threshold, and this look is not a planned one (only planned looks decide): the next planned look decides",
                        c.statistic
                    ),
                ));
            }
            BoundaryState::OutOfReach => {
                let (z, level) = c.by_requests.unwrap_or_default();
                return Err((
                    Verdict::Inconclusive,
                    format!(
                        "cannot judge yet: {}; request by request z = {z:.2} reaches {level:.2}, which who the few candidate users are may explain: more candidate users decide (a later look, a higher exposure)",
                        out_of_reach(&c)
                    ),
                ));
            }
            BoundaryState::JudgedByRequests => {
                let (z, level) = c.by_requests.unwrap_or_default();
                reasons.push(format!(
                    "no evidence of harm request by request (z = {z:.2}, below {level:.2}): {}, so the look is judged request by request, which understates the variance when users cluster errors and can only hold or pass",
                    out_of_reach(&c)
                ));
            }
            BoundaryState::TooFewDegreesOfFreedom => {
                return Err((
                    Verdict::Inconclusive,
                    format!(
                        "the dispersion between looks cannot be estimated well enough to judge z = {:.2}: {:.2} degrees of freedom, {MIN_DEGREES_OF_FREEDOM} needed (more looks add them){clustered}",
                        c.statistic, c.degrees_of_freedom
                    ),
                ));
            }
        }
        if let Some(short) = shortfall(baseline, candidate) {
            return Err((Verdict::Inconclusive, short));
        }
    } else if let Some(test) = &tested {
        record(
            out,
            test,
            "asymptotic confidence sequence, candidate share against max",
        );
        reasons.push("the candidate's share is not above max".into());
    } else {
        // At 100% for everybody no baseline cohort is left: the comparison does not apply.
        return Ok("not compared: no baseline cohort at 100% exposure".into());
    }
    if candidate.total < MIN_COHORT_SAMPLES {
        return Err((
            Verdict::Inconclusive,
            format!(
                "{} candidate events so far, {MIN_COHORT_SAMPLES} needed",
                events(candidate.total)
            ),
        ));
    }
    Ok(reasons.join("; "))
}

/// Added to a comparison's reason when the requests split unlike independent requests.
pub const CLUSTERED_REQUESTS: &str = "; the requests split between the cohorts unlike independent requests (users cluster them), so each cohort's dispersion is estimated on its own";

/// Event counts for people: whole numbers (`increase()` extrapolates to fractions).
fn events(count: f64) -> String {
    format!("{:.0}", count.max(0.0).round())
}

/// The cohorts with too few events for a comparison, each named with its count.
fn shortfall(baseline: Counts, candidate: Counts) -> Option<String> {
    let short: Vec<String> = [("candidate", candidate), ("baseline", baseline)]
        .into_iter()
        .filter(|(_, c)| c.total < MIN_COHORT_SAMPLES)
        .map(|(cohort, c)| format!("{} {cohort} events", events(c.total)))
        .collect();
    (!short.is_empty()).then(|| {
        format!(
            "{} so far, {MIN_COHORT_SAMPLES} needed in each cohort",
            short.join(" and ")
        )
    })
}

/// The test's name in status.
pub const COMPARISON_TEST: &str = "group-sequential stratified score over the rollout, with a recent window (binomial plus each cohort's Gamma bursts, saddlepoint tails)";

/// Why users cannot judge a look ([`BoundaryState::OutOfReach`] and
/// [`BoundaryState::JudgedByRequests`]): how far the statistic could go, and why.
fn out_of_reach(c: &compare::Comparison) -> String {
    let level = c.by_requests.map_or(0.0, |(_, level)| level);
    let users = c
        .user_variance
        .map(|u| format!(", {:.1} in this stage", u.candidate_effective_users))
        .unwrap_or_default();
    format!(
        "judged by users, even if every candidate request had been bad z would reach {:.2}, below the binomial boundary {level:.2} (z = {:.2}; for a harm that hits the candidate's users alike the statistic is bounded by about the square root of the candidate's effective users{users})",
        c.reach.unwrap_or_default(),
        c.statistic,
    )
}

/// Both cohorts' per-user sums for the comparison, when the metric has per-user queries:
/// a cohort with events but no sums (its series not there yet) is `Inconclusive`, and
/// impossible sums are an `Error` (checked here, before they reach the statistics).
fn stage_users(
    users: Option<&PerCohort<UserSums>>,
    baseline: Counts,
    candidate: Counts,
) -> Result<Option<StratumUsers>, (Verdict, String)> {
    let Some(users) = users else {
        return Ok(None);
    };
    let mut sums = StratumUsers::default();
    for (cohort, counts, given, slot) in [
        ("baseline", baseline, users.baseline, &mut sums.baseline),
        ("candidate", candidate, users.candidate, &mut sums.candidate),
    ] {
        match given {
            Some(s) if !s.is_consistent() => {
                return Err((
                    Verdict::Error,
                    format!(
                        "impossible per-user sums for the {cohort} cohort (Σn = {}, Σx = {}, Σn² = {}, Σx² = {}, Σn·x = {}): check that the per-user queries count the same events as the others",
                        s.n, s.x, s.nn, s.xx, s.nx
                    ),
                ));
            }
            Some(s) => *slot = s,
            None if counts.total > 0.0 => {
                return Err((
                    Verdict::Inconclusive,
                    format!(
                        "no per-user sums for the {cohort} cohort yet, which has {} events",
                        events(counts.total)
                    ),
                ));
            }
            None => {}
        }
    }
    Ok(Some(sums))
}

fn record_comparison(
    out: &mut MetricAnalysis,
    c: &Comparison,
    baseline: Counts,
    candidate: Counts,
    tolerance: Tolerance,
) {
    out.effect = ratio::harm(baseline, candidate, tolerance).map(|(effect, _)| effect);
    out.bound = None;
    out.test = Some(COMPARISON_TEST.into());
    out.statistic = Some(c.statistic);
    out.boundary = c.boundary;
    out.recent_statistic = c.recent_statistic;
    out.recent_boundary = c.recent_boundary;
    out.budget_spent = Some(c.budget_spent);
    out.information_fraction = Some(c.information_fraction);
    out.dispersion = Some(c.dispersion);
    out.baseline_dispersion = Some(c.baseline_dispersion);
    out.boundary_state = Some(c.boundary_state);
    out.degrees_of_freedom = Some(c.degrees_of_freedom).filter(|d| d.is_finite());
    out.user_variance = c.user_variance;
    out.evidence = Some(c.evidence.clone());
}

fn record(out: &mut MetricAnalysis, test: &SequentialTest, name: &str) {
    out.effect = Some(test.effect);
    out.bound = Some(test.lower_bound);
    out.test = Some(name.into());
}

fn judge_histogram(
    threshold: f64,
    limits: &ShareLimits,
    buckets: &PerCohort<Buckets>,
    users: Option<PerCohort<UserSums>>,
    look: &StageLook,
    out: &mut MetricAnalysis,
) -> Judged {
    let slow = |b: &Buckets| -> Result<Counts, (Verdict, String)> {
        let (bad, total) = b
            .slow_share(threshold)
            .map_err(|e| (Verdict::Error, e.to_string()))?;
        Ok(Counts { bad, total })
    };
    let baseline = buckets.baseline.as_ref().map(slow).transpose()?;
    let candidate = buckets.candidate.as_ref().map(slow).transpose()?;
    if let (Some(b), Some(c)) = (&buckets.baseline, &buckets.candidate) {
        out.shift = shift(b, c);
    }
    judge_share(limits, baseline, candidate, users, look, out)
}

/// The Mann-Whitney description of how the candidate's latency distribution moved.
fn shift(baseline: &Buckets, candidate: &Buckets) -> Option<String> {
    let outcome = histogram::mann_whitney_buckets(baseline, candidate, Continuity::On);
    match outcome {
        Ok(MannWhitneyOutcome::Computed(mw)) => Some(format!(
            "Mann-Whitney: P(candidate slower) = {:.3}, rank-biserial {:+.3}, p (two-sided) = {:.3e}",
            mw.common_language, mw.rank_biserial, mw.p_two_sided
        )),
        Ok(MannWhitneyOutcome::NotComputable(why)) => {
            Some(format!("Mann-Whitney: not computable: {why}"))
        }
        Err(e) => Some(format!("Mann-Whitney: {e}")),
    }
}

/// The sample-ratio check on distinct users per cohort against the stage's exposure.
pub fn sample_ratio(users: &PerCohort<f64>, look: &StageLook) -> Option<SampleRatio> {
    if look.audience {
        return None; // the audience share of all users is unknown
    }
    let (baseline, candidate) = (
        users.baseline.unwrap_or(0.0),
        users.candidate.unwrap_or(0.0),
    );
    match srm::sample_ratio_mismatch(baseline, candidate, look.weight.fraction(), SRM_P_VALUE)
        .ok()?
    {
        SrmOutcome::Checked(check) => Some(SampleRatio {
            baseline_users: baseline,
            candidate_users: candidate,
            expected_share: look.weight.fraction(),
            observed_share: check.observed_share,
            p_value: check.p_value,
            mismatch: check.mismatch,
        }),
        SrmOutcome::NotApplicable(_) => None,
    }
}

/// The candidate's share of requests in the first compared metric, for the report.
pub fn request_share(metrics: &[MetricAnalysis], look: &StageLook) -> Option<RequestShare> {
    if look.audience {
        return None;
    }
    let compared = metrics.iter().find(|m| {
        m.baseline.is_some() && m.candidate.is_some() && m.test.as_deref() != Some("threshold")
    })?;
    let (b, c) = (
        compared.baseline.as_ref()?.n,
        compared.candidate.as_ref()?.n,
    );
    match srm::request_share_deviation(b, c, look.weight.fraction()).ok()? {
        RequestShareOutcome::Reported(r) => Some(RequestShare {
            expected_share: r.configured_share,
            observed_share: r.observed_share,
            relative_deviation: r.relative_deviation,
        }),
        RequestShareOutcome::NotApplicable(_) => None,
    }
}

/// A look's judgement, pure: the stage context of `at`, each metric's measurement (by
/// metric name; a metric without one is an `Error`), the users query's measurement when
/// one is configured, and the previous look's status (`status.lastAnalysis`), whose
/// evidence it carries forward. [`super::look::look`] calls it after asking the metrics
/// provider; `sluice simulate` calls it with simulated counts.
pub fn judge_look(
    valid: &ValidSpec,
    at: LookAt,
    mut measured: Measured,
    users: Option<Measurement<PerCohort<f64>>>,
    previous: Option<&AnalysisStatus>,
) -> AnalysisStatus {
    let stage_look = StageLook::new(valid, at);
    let mut metrics: Vec<MetricAnalysis> = valid
        .metrics
        .iter()
        .map(|metric| {
            let measurement = measured.remove(&metric.name).unwrap_or_else(|| {
                Measurement::failed(super::source::ProviderError::Unavailable(
                    "nothing was measured for this metric".into(),
                ))
            });
            judge_metric(metric, measurement, &stage_look, previous)
        })
        .collect();
    let sample_ratio = match users {
        None => None,
        Some(Measurement { queries, result }) => match result {
            Ok(users) => sample_ratio(&users, &stage_look),
            Err(e) => {
                // A configured check that cannot run is an error, not a silent pass.
                metrics.push(failed(
                    "sample-ratio",
                    queries,
                    format!("the users query failed: {}", e.detail()),
                ));
                None
            }
        },
    };
    let candidate_samples = metrics
        .iter()
        .filter_map(|m| {
            m.candidate
                .as_ref()
                .filter(|_| m.test.as_deref() != Some("threshold"))
        })
        .map(|c| c.n.max(0.0).round() as u64)
        .min();
    combine(
        &stage_look,
        at.now,
        metrics,
        sample_ratio,
        candidate_samples,
    )
}

/// Combines the metrics into the stage's verdict: any failure fails; then an error is an
/// error; then a sample ratio mismatch or too little data is inconclusive; else pass.
pub fn combine(
    look: &StageLook,
    at: Timestamp,
    metrics: Vec<MetricAnalysis>,
    sample_ratio: Option<SampleRatio>,
    candidate_samples: Option<u64>,
) -> AnalysisStatus {
    let named = |v: Verdict| -> Vec<String> {
        metrics
            .iter()
            .filter(|m| m.verdict == v)
            .map(|m| format!("{}: {}", m.name, m.reason.as_deref().unwrap_or_default()))
            .collect()
    };
    let srm = sample_ratio.as_ref().filter(|s| s.mismatch);
    let request_share = request_share(&metrics, look);
    let (verdict, message) = if !named(Verdict::Fail).is_empty() {
        (Verdict::Fail, named(Verdict::Fail).join("; "))
    } else if !named(Verdict::Error).is_empty() {
        (Verdict::Error, named(Verdict::Error).join("; "))
    } else if let Some(s) = srm {
        (
            Verdict::Inconclusive,
            format!(
                "sample ratio mismatch: {:.3}% of distinct users are on the candidate where {:.3}% should be (p = {:.2e}); the cohorts are not comparable: check the flag delivery and the instrumentation",
                100.0 * s.observed_share,
                100.0 * s.expected_share,
                s.p_value
            ),
        )
    } else if !named(Verdict::Inconclusive).is_empty() {
        (
            Verdict::Inconclusive,
            named(Verdict::Inconclusive).join("; "),
        )
    } else {
        (Verdict::Pass, "no evidence of harm".to_owned())
    };
    AnalysisStatus {
        at,
        stage: look.stage,
        verdict,
        message: Some(message),
        candidate_samples,
        metrics,
        sample_ratio,
        request_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FeatureRolloutSpec;
    use crate::simulate::{Cohorts, Counts as SimCounts, Schedule};

    fn look_at(
        valid: &ValidSpec,
        minute: i64,
        stage_total: Cohorts,
        previous: Option<&AnalysisStatus>,
    ) -> AnalysisStatus {
        judge_look(
            valid,
            LookAt {
                stage: 0,
                stage_started_at: Timestamp::UNIX_EPOCH,
                now: Timestamp::from_second(60 * minute).unwrap(),
            },
            crate::simulate::sluice_rule::measured(stage_total),
            None,
            previous,
        )
    }

    fn cohorts(baseline: (u64, u64), candidate: (u64, u64)) -> Cohorts {
        Cohorts {
            baseline: SimCounts {
                requests: baseline.0,
                errors: baseline.1,
            },
            candidate: SimCounts {
                requests: candidate.0,
                errors: candidate.1,
            },
        }
    }

    #[test]
    fn a_look_with_too_few_degrees_of_freedom_says_so_and_is_inconclusive() {
        let yaml =
            crate::simulate::sluice_rule::benchmark_spec_yaml(&Schedule::benchmark(), 0.95, "0%");
        let spec: FeatureRolloutSpec = serde_yaml_ng::from_str(&yaml).unwrap();
        let valid = crate::crd::validate::validate(&spec).unwrap();
        // No baseline error in two looks, the candidate's errors all in the second one:
        // the dispersion cannot be estimated and decides whether this is harm.
        let first = look_at(&valid, 1, cohorts((2970, 0), (150, 0)), None);
        let second = look_at(&valid, 2, cohorts((5940, 0), (300, 20)), Some(&first));
        let metric = &second.metrics[0];
        assert_eq!(
            metric.boundary_state,
            Some(BoundaryState::TooFewDegreesOfFreedom),
            "{metric:#?}"
        );
        assert_eq!(second.verdict, Verdict::Inconclusive, "{second:#?}");
        let reason = metric.reason.as_deref().unwrap();
        assert!(reason.contains("degrees of freedom"), "{reason}");
        assert!(!reason.contains("planned look"), "{reason}");
    }

    #[test]
    fn impossible_or_missing_per_user_sums_are_an_error_or_inconclusive_never_a_pass() {
        let yaml =
            crate::simulate::sluice_rule::benchmark_spec_yaml(&Schedule::benchmark(), 0.95, "0%");
        let spec: FeatureRolloutSpec = serde_yaml_ng::from_str(&yaml).unwrap();
        let valid = crate::crd::validate::validate(&spec).unwrap();
        let judged = |users: PerCohort<UserSums>| {
            let mut measured =
                crate::simulate::sluice_rule::measured(cohorts((2970, 30), (150, 2)));
            if let Some(Measurement {
                result: Ok(Observed::Ratio { users: slot, .. }),
                ..
            }) = measured.get_mut("error-rate")
            {
                *slot = Some(users);
            }
            let at = LookAt {
                stage: 0,
                stage_started_at: Timestamp::UNIX_EPOCH,
                now: Timestamp::from_second(60).unwrap(),
            };
            judge_look(&valid, at, measured, None, None)
        };
        let one_each = |n: f64, x: f64| UserSums {
            n,
            x,
            nn: n,
            xx: x,
            nx: x,
        };
        let mut impossible = one_each(150.0, 2.0);
        impossible.xx = impossible.nx + 5.0;
        let look = judged(PerCohort {
            baseline: Some(one_each(2970.0, 30.0)),
            candidate: Some(impossible),
        });
        assert_eq!(look.verdict, Verdict::Error, "{look:#?}");
        let reason = look.metrics[0].reason.as_deref().unwrap();
        assert!(
            reason.contains("impossible per-user sums for the candidate"),
            "{reason}"
        );
        let look = judged(PerCohort {
            baseline: Some(one_each(2970.0, 30.0)),
            candidate: None,
        });
        assert_eq!(look.verdict, Verdict::Inconclusive, "{look:#?}");
        let reason = look.metrics[0].reason.as_deref().unwrap();
        assert!(
            reason.contains("no per-user sums for the candidate"),
            "{reason}"
        );
    }

    /// A candidate of three equal users: no harm, however large, could take the
    /// user-level statistic to its boundary, so users cannot judge the stage's looks and
    /// the look is judged request by request, which can only pass or hold. Healthy, it
    /// passes and says why (`JudgedByRequests`); failing ten times the baseline's rate, it
    /// holds (`OutOfReach`, inconclusive), never a rollback on requests alone. The same
    /// counts from 300 users are judged by users: a pass, and a rollback.
    #[test]
    fn a_candidate_of_too_few_users_is_judged_by_requests_which_pass_or_hold() {
        let yaml =
            crate::simulate::sluice_rule::benchmark_spec_yaml(&Schedule::benchmark(), 0.95, "0%");
        let spec: FeatureRolloutSpec = serde_yaml_ng::from_str(&yaml).unwrap();
        let valid = crate::crd::validate::validate(&spec).unwrap();
        let evenly = |n: f64, x: f64, users: f64| UserSums {
            n,
            x,
            nn: n * n / users,
            xx: x * x / users,
            nx: n * x / users,
        };
        // Ten one-minute looks of a 1 % baseline and a candidate of 30 requests a minute,
        // `bad` of them failing, from `candidate_users` equal users; the first `Fail`, if any.
        let stage = |candidate_users: f64, bad: u64| {
            let mut previous: Option<AnalysisStatus> = None;
            for minute in 1..=10_u32 {
                let (m, k) = (f64::from(minute), u64::from(minute));
                let total = cohorts((2970 * k, 30 * k), (30 * k, bad * k));
                let mut measured = crate::simulate::sluice_rule::measured(total);
                if let Some(Measurement {
                    result: Ok(Observed::Ratio { users: slot, .. }),
                    ..
                }) = measured.get_mut("error-rate")
                {
                    *slot = Some(PerCohort {
                        baseline: Some(evenly(2970.0 * m, 30.0 * m, 5000.0)),
                        candidate: Some(evenly(30.0 * m, bad as f64 * m, candidate_users)),
                    });
                }
                let at = LookAt {
                    stage: 0,
                    stage_started_at: Timestamp::UNIX_EPOCH,
                    now: Timestamp::from_second(60 * i64::from(minute)).unwrap(),
                };
                let look = judge_look(&valid, at, measured, None, previous.as_ref());
                if look.verdict == Verdict::Fail {
                    return look;
                }
                previous = Some(look);
            }
            previous.unwrap()
        };
        // Users cannot decide: the final look's verdict, state and reason.
        let expect = |status: &AnalysisStatus, verdict, state, phrases: &[&str]| {
            let metric = &status.metrics[0];
            assert_eq!(status.verdict, verdict, "{status:#?}");
            assert_eq!(metric.boundary_state, Some(state), "{metric:#?}");
            let reason = metric.reason.as_deref().unwrap();
            for phrase in phrases {
                assert!(reason.contains(phrase), "{reason}");
            }
        };
        expect(
            &stage(3.0, 0),
            Verdict::Pass,
            BoundaryState::JudgedByRequests,
            &[
                "no evidence of harm request by request",
                "3.0 in this stage",
            ],
        );
        expect(
            &stage(3.0, 3),
            Verdict::Inconclusive,
            BoundaryState::OutOfReach,
            &["cannot judge yet", "request by request z = "],
        );

        // Users decide: the failing candidate is not passed (these regular counts leave
        // the dispersion no degrees of freedom, so z = 9 holds for it rather than failing).
        let users_decide = |status: &AnalysisStatus| {
            !matches!(
                status.metrics[0].boundary_state,
                Some(BoundaryState::OutOfReach | BoundaryState::JudgedByRequests)
            )
        };
        let failing = stage(300.0, 3);
        assert_ne!(failing.verdict, Verdict::Pass, "{failing:#?}");
        assert!(users_decide(&failing), "{failing:#?}");
        let many = stage(300.0, 0);
        assert_eq!(many.verdict, Verdict::Pass, "{many:#?}");
        assert!(users_decide(&many), "{many:#?}");
    }

    #[test]
    fn a_shortfall_names_every_cohort_short_with_whole_counts() {
        assert_eq!(
            shortfall(
                Counts {
                    bad: 0.0,
                    total: 57.3
                },
                Counts {
                    bad: 0.0,
                    total: 3.4
                }
            )
            .as_deref(),
            Some("3 candidate events and 57 baseline events so far, 100 needed in each cohort")
        );
        assert_eq!(
            shortfall(
                Counts {
                    bad: 0.0,
                    total: 500.0
                },
                Counts {
                    bad: 0.0,
                    total: 67.460_625_000_000_01
                }
            )
            .as_deref(),
            Some("67 candidate events so far, 100 needed in each cohort")
        );
    }
}
