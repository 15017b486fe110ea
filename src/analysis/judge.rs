//! From what the queries returned to a verdict per metric and for the stage. Pure: the
//! queries are run by [`super::look`], the statistics live in [`super::ratio`],
//! [`super::histogram`] and [`super::srm`].

use jiff::Timestamp;

use super::histogram::{self, Continuity, MannWhitneyOutcome};
use super::ratio::{self, Counts, MIN_COHORT_SAMPLES, SequentialTest, Tolerance};
use super::srm::{self, RequestShareOutcome, SrmOutcome};
use crate::crd::validate::ValidSpec;
use crate::crd::{
    AnalysisStatus, CohortNumbers, FeatureRolloutSpec, MetricAnalysis, MetricSpec, RequestShare,
    SampleRatio, Verdict, Weight, parse_percent,
};
use crate::prometheus::{Buckets, PerCohort};

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
    /// The false-rollback budget of each sequential test at this stage.
    pub alpha: f64,
}

impl StageLook {
    /// Whether a baseline cohort exists to compare with.
    pub fn comparable(&self) -> bool {
        self.audience || self.weight < Weight::FULL
    }
}

impl StageLook {
    /// The look at stage `index` after the stage has run for `elapsed`, with the budget
    /// of [`alpha_per_test`]: what every caller (controller, standalone, `sluice
    /// analyze`, `sluice simulate`) judges with.
    pub fn new(
        spec: &FeatureRolloutSpec,
        valid: &ValidSpec,
        index: u32,
        elapsed: jiff::SignedDuration,
    ) -> StageLook {
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
            alpha: alpha_per_test(spec, valid),
        }
    }
}

/// The budget of one sequential test: `1 − confidence` split evenly over the stages
/// that are analysed (all but a final stage without duration) and over the tests each
/// stage runs (`maxIncrease` and `max` of every ratio and histogram metric).
pub fn alpha_per_test(spec: &FeatureRolloutSpec, valid: &ValidSpec) -> f64 {
    let stages = valid
        .stages
        .iter()
        .filter(|s| !s.duration.is_zero())
        .count()
        .max(1);
    let tests: usize = spec
        .analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .filter(|m| m.guard.is_none())
        .map(|m| usize::from(m.max_increase.is_some()) + usize::from(m.max.is_some()))
        .sum();
    (1.0 - valid.confidence) / (stages * tests.max(1)) as f64
}

/// What the queries of one metric returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Bad and total events per cohort.
    Ratio {
        /// Bad events (errors) per cohort.
        bad: PerCohort<f64>,
        /// All events (requests) per cohort.
        total: PerCohort<f64>,
    },
    /// Histogram buckets per cohort.
    Histogram(PerCohort<Buckets>),
    /// A guard's value: the candidate cohort's, or one global value.
    Guard {
        /// The value per cohort, when the query is split by cohort.
        cohorts: PerCohort<f64>,
        /// The single value, when it is not.
        global: Option<f64>,
    },
    /// A query failed.
    Failed(String),
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

/// An `Error` result for a check whose query failed.
pub fn failed(name: &str, query: String, reason: String) -> MetricAnalysis {
    MetricAnalysis {
        name: name.into(),
        queries: vec![query],
        baseline: None,
        candidate: None,
        effect: None,
        bound: None,
        test: None,
        target_samples: None,
        ceiling_target_samples: None,
        shift: None,
        verdict: Verdict::Error,
        reason: Some(reason),
    }
}

/// Judges one metric at one look.
pub fn judge_metric(
    metric: &MetricSpec,
    observed: &Observed,
    look: &StageLook,
    previous: Option<&AnalysisStatus>,
    queries: Vec<String>,
) -> MetricAnalysis {
    // The boundaries' tuning is fixed at the stage's first look and carried through every
    // later look, errored or not, so the stage keeps one boundary.
    let before = previous_metric(previous, look.stage, &metric.name);
    let mut out = MetricAnalysis {
        name: metric.name.clone(),
        queries,
        baseline: None,
        candidate: None,
        effect: None,
        bound: None,
        test: None,
        target_samples: before.and_then(|m| m.target_samples),
        ceiling_target_samples: before.and_then(|m| m.ceiling_target_samples),
        shift: None,
        verdict: Verdict::Inconclusive,
        reason: None,
    };
    let result = match observed {
        Observed::Failed(message) => Err((Verdict::Error, message.clone())),
        Observed::Guard { cohorts, global } => judge_guard(metric, cohorts, *global, &mut out),
        Observed::Ratio { bad, total } => {
            let counts = |b: Option<f64>, t: Option<f64>| {
                t.map(|total| Counts {
                    bad: b.unwrap_or(0.0),
                    total,
                })
            };
            let baseline = counts(bad.baseline, total.baseline);
            let candidate = counts(bad.candidate, total.candidate);
            judge_share(metric, baseline, candidate, look, &mut out)
        }
        Observed::Histogram(buckets) => judge_histogram(metric, buckets, look, &mut out),
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
    metric: &MetricSpec,
    cohorts: &PerCohort<f64>,
    global: Option<f64>,
    out: &mut MetricAnalysis,
) -> Judged {
    let guard = metric.guard.as_ref().expect("a guard metric");
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
    if let Some(max) = guard.max.filter(|max| value > *max) {
        out.bound = Some(max);
        return Err((
            Verdict::Fail,
            format!("{whose} value {value} is above the guard's max {max}"),
        ));
    }
    if let Some(min) = guard.min.filter(|min| value < *min) {
        out.bound = Some(min);
        return Err((
            Verdict::Fail,
            format!("{whose} value {value} is below the guard's min {min}"),
        ));
    }
    Ok(format!("{whose} value {value} is within the guard"))
}

fn tolerance(metric: &MetricSpec) -> Option<Tolerance> {
    let t = metric.max_increase.as_ref()?;
    match (&t.relative, &t.absolute) {
        (Some(r), _) => parse_percent(r).ok().map(Tolerance::Relative),
        (None, Some(a)) => parse_percent(a).ok().map(Tolerance::Absolute),
        (None, None) => None,
    }
}

/// The share test shared by ratio and histogram metrics.
fn judge_share(
    metric: &MetricSpec,
    baseline: Option<Counts>,
    candidate: Option<Counts>,
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
        return no_data("candidate");
    };
    let ceiling = metric.max.as_deref().and_then(|m| parse_percent(m).ok());
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
    if let Some(tolerance) = tolerance(metric).filter(|_| look.comparable()) {
        let Some(baseline) = baseline.filter(|b| b.total > 0.0) else {
            return no_data("baseline");
        };
        let effective = ratio::effective_samples(baseline, candidate);
        let target = out
            .target_samples
            .unwrap_or_else(|| ratio::projected_target(effective, look.elapsed_fraction));
        out.target_samples = Some(target);
        let test = ratio::test(baseline, candidate, tolerance, look.alpha, target)
            .expect("both cohorts have events");
        record(
            out,
            &test,
            "asymptotic confidence sequence, candidate against tolerated baseline",
        );
        if test.reject {
            return Err((
                Verdict::Fail,
                format!(
                    "the candidate is worse than tolerated: {:.4}% against {:.4}% (harm beyond tolerance {:+.4} points, lower bound {:+.4})",
                    100.0 * candidate.share().unwrap_or(0.0),
                    100.0 * baseline.share().unwrap_or(0.0),
                    100.0 * test.effect,
                    100.0 * test.lower_bound
                ),
            ));
        }
        reasons.push(format!(
            "no evidence of harm beyond the tolerance (lower bound {:+.4} points)",
            100.0 * test.lower_bound
        ));
        if baseline.total < MIN_COHORT_SAMPLES {
            return Err((
                Verdict::Inconclusive,
                format!(
                    "{} baseline events so far, {MIN_COHORT_SAMPLES} needed",
                    baseline.total
                ),
            ));
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
                candidate.total
            ),
        ));
    }
    Ok(reasons.join("; "))
}

fn record(out: &mut MetricAnalysis, test: &SequentialTest, name: &str) {
    out.effect = Some(test.effect);
    out.bound = Some(test.lower_bound);
    out.test = Some(name.into());
}

fn judge_histogram(
    metric: &MetricSpec,
    buckets: &PerCohort<Buckets>,
    look: &StageLook,
    out: &mut MetricAnalysis,
) -> Judged {
    let threshold = metric
        .histogram
        .as_ref()
        .expect("a histogram metric")
        .threshold;
    let slow = |b: &Buckets| -> Result<Counts, (Verdict, String)> {
        let pairs: Vec<(f64, f64)> = b.as_slice().iter().map(|b| (b.le, b.count)).collect();
        let (bad, total) = histogram::slow_share(&pairs, threshold)
            .map_err(|e| (Verdict::Error, e.to_string()))?;
        Ok(Counts { bad, total })
    };
    let baseline = buckets.baseline.as_ref().map(slow).transpose()?;
    let candidate = buckets.candidate.as_ref().map(slow).transpose()?;
    if let (Some(b), Some(c)) = (&buckets.baseline, &buckets.candidate) {
        out.shift = shift(b, c);
    }
    judge_share(metric, baseline, candidate, look, out)
}

/// The Mann-Whitney description of how the candidate's latency distribution moved.
fn shift(baseline: &Buckets, candidate: &Buckets) -> Option<String> {
    let parse = |b: &Buckets| {
        let pairs: Vec<(f64, f64)> = b.as_slice().iter().map(|b| (b.le, b.count)).collect();
        histogram::Buckets::from_prometheus(&pairs)
    };
    let outcome = histogram::mann_whitney_buckets(
        &parse(baseline).ok()?,
        &parse(candidate).ok()?,
        Continuity::On,
    );
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
