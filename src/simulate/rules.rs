//! Rollback rules the simulator compares, look by look, on the same traffic.
//!
//! A [`Rule`] sees one [`Look`] per minute and answers [`Judgement::Continue`] or
//! [`Judgement::RollBack`]. It is [`reset`](Rule::reset) before every simulated rollout
//! and may keep state across the looks of one rollout.
//!
//! The anchor rules model today's tools as BENCHMARK.md describes them. The semantics
//! chosen where the description leaves room (each one checked against the tool's own
//! behaviour and against the anchor figures) are stated on each type.

use std::collections::HashMap;

use statrs::distribution::{ContinuousCDF, Normal};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu};

use super::traffic::{Cohorts, Counts, Schedule};

/// What a rule decides at one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// No rollback now: the rollout goes on (and is promoted after its last stage).
    Continue,
    /// Roll the candidate back now.
    RollBack,
}

/// Everything a rule may use at one look: the counts of the minute that just ended, the
/// current stage's and the whole rollout's cumulative counts, and where the rollout is.
#[derive(Clone, Copy, Debug)]
pub struct Look<'a> {
    /// Minutes since the rollout started; the first look is minute 1.
    pub minute: u32,
    /// Index of the current stage in [`schedule`](Look::schedule) (0 = first stage).
    pub stage: usize,
    /// Minutes since the current stage started; its first look is 1.
    pub minute_in_stage: u32,
    /// The current stage's exposure: the probability that a request is a candidate one.
    pub exposure: f64,
    /// Counts of the minute that just ended.
    pub last_minute: Cohorts,
    /// Counts since the current stage started, this minute included.
    pub stage_total: Cohorts,
    /// Counts since the rollout started, this minute included.
    pub rollout_total: Cohorts,
    /// Per-minute counts since the rollout started; the last entry is `last_minute`.
    pub history: &'a [Cohorts],
    /// The plan the rollout follows (known in advance, as in a real rollout).
    pub schedule: &'a Schedule,
}

/// A rollback rule under test.
///
/// Implementations must be deterministic: the same looks after a [`reset`](Rule::reset)
/// give the same judgements. Each worker thread works on its own copy
/// ([`boxed_clone`](Rule::boxed_clone)).
pub trait Rule: Send {
    /// Short name, as printed in the report.
    fn name(&self) -> &str;
    /// One line on what the rule does, as printed in the report.
    fn describe(&self) -> String;
    /// Forgets the previous rollout.
    fn reset(&mut self);
    /// Judges one look.
    fn judge(&mut self, look: &Look<'_>) -> Judgement;
    /// A fresh copy of the rule, for another thread.
    fn boxed_clone(&self) -> Box<dyn Rule>;
}

fn standard_normal() -> Normal {
    Normal::standard()
}

/// The `1 - alpha` quantile of the standard normal distribution.
pub fn normal_quantile_upper(alpha: f64) -> f64 {
    standard_normal().inverse_cdf(1.0 - alpha)
}

/// Flagger-style threshold rule: a look whose last-minute candidate error rate is above
/// `max_error_rate` is a failed check; the rollout is rolled back once `threshold` checks
/// have failed.
///
/// Semantics, as in Flagger: failed checks accumulate over the whole analysis; they need
/// not be consecutive and are not reset when the weight advances (Flagger resets
/// `status.failedChecks` only when a new revision restarts the analysis). A minute without
/// candidate requests has no rate and is not a failed check. The rollback is taken at the
/// look of the failing check that reaches the threshold; Flagger itself rolls back at its
/// next tick, one interval later, which would add one minute and its harm: the anchor's
/// excess-error figure (14.9) matches rolling back at the same look.
#[derive(Clone, Debug)]
pub struct FlaggerStyle {
    /// Highest tolerated candidate error rate in one minute.
    pub max_error_rate: f64,
    /// Failed checks that trigger the rollback.
    pub threshold: u32,
    failed: u32,
}

impl FlaggerStyle {
    /// BENCHMARK.md's anchor: 2 % and 5 failed checks.
    pub fn anchor() -> Self {
        Self::new(0.02, 5)
    }

    /// A rule with the given limit and threshold.
    pub fn new(max_error_rate: f64, threshold: u32) -> Self {
        FlaggerStyle {
            max_error_rate,
            threshold,
            failed: 0,
        }
    }
}

impl Rule for FlaggerStyle {
    fn name(&self) -> &str {
        "Flagger-style"
    }

    fn describe(&self) -> String {
        format!(
            "candidate error rate > {} % in the last minute is a failed check; roll back at \
             the {}th failed check (counted over the whole rollout, not necessarily \
             consecutive)",
            self.max_error_rate * 100.0,
            self.threshold
        )
    }

    fn reset(&mut self) {
        self.failed = 0;
    }

    fn judge(&mut self, look: &Look<'_>) -> Judgement {
        if look
            .last_minute
            .candidate
            .rate()
            .is_some_and(|rate| rate > self.max_error_rate)
        {
            self.failed += 1;
        }
        if self.failed >= self.threshold {
            Judgement::RollBack
        } else {
            Judgement::Continue
        }
    }

    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}

/// Argo-Rollouts-style rule: a look whose last-minute candidate error rate is above
/// `ratio` times the baseline's is a failed measurement; the analysis fails (rollback)
/// when the failed measurements exceed `failure_limit`.
///
/// Semantics, as in Argo Rollouts: a background AnalysisRun spans the whole rollout, its
/// failed measurements accumulate (not necessarily consecutive), and the metric fails when
/// their count is strictly greater than `failureLimit` (so `failureLimit: 3` rolls back at
/// the 4th failure), at that measurement. A minute without requests in a cohort has no
/// rate and is not a failure.
#[derive(Clone, Debug)]
pub struct ArgoStyle {
    /// Tolerated ratio of candidate to baseline error rate in one minute.
    pub ratio: f64,
    /// Failed measurements tolerated; one more fails the analysis.
    pub failure_limit: u32,
    failed: u32,
}

impl ArgoStyle {
    /// BENCHMARK.md's anchor: 1.2 × baseline, failureLimit 3.
    pub fn anchor() -> Self {
        Self::new(1.2, 3)
    }

    /// A rule with the given ratio and failure limit.
    pub fn new(ratio: f64, failure_limit: u32) -> Self {
        ArgoStyle {
            ratio,
            failure_limit,
            failed: 0,
        }
    }
}

impl Rule for ArgoStyle {
    fn name(&self) -> &str {
        "Argo-style"
    }

    fn describe(&self) -> String {
        format!(
            "candidate error rate > {} × baseline in the last minute is a failure; roll back \
             when failures exceed failureLimit {} (counted over the whole rollout)",
            self.ratio, self.failure_limit
        )
    }

    fn reset(&mut self) {
        self.failed = 0;
    }

    fn judge(&mut self, look: &Look<'_>) -> Judgement {
        let last = look.last_minute;
        if let (Some(c), Some(b)) = (last.candidate.rate(), last.baseline.rate())
            && c > self.ratio * b
        {
            self.failed += 1;
        }
        if self.failed > self.failure_limit {
            Judgement::RollBack
        } else {
            Judgement::Continue
        }
    }

    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}

/// Kayenta-style rule: at every look, a Mann-Whitney U test compares the candidate's
/// per-minute error rates with the baseline's, over the minutes of the current stage so
/// far; the rollout is rolled back when the two-sided p-value is below `alpha` and the
/// candidate ranks higher.
///
/// Semantics: Kayenta's Mann-Whitney classifier judges a metric "High" when the 98 %
/// two-sided confidence interval of the shift excludes zero on the high side; here that is
/// a two-sided p-value below 0.02 with the candidate's U above its null mean. The p-value
/// is the one Kayenta's `MannWhitney` computes, Apache Commons Math 3's
/// `MannWhitneyUTest` ([`RankTestMethod::CommonsMath`]: normal approximation without tie
/// or continuity correction). SciPy's default p-value instead (exact for small samples)
/// gives 6.7 % A/A and 158.6 excess errors at `m = 5` from minute 15 (20,000 runs) against
/// the anchor's 7.0 % and 155; R's `wilcox.test` default reproduces the anchor as well.
/// The test runs at every look, over the stage's minutes so far, rather than once at stage
/// end: stage-end judgements roll back only at minutes 10, 20, 30, 40 and cannot give the
/// anchor's 18-minute median for `m = 2`; a one-sided p < 0.02 doubles the A/A rate (15 %).
#[derive(Clone, Debug)]
pub struct KayentaStyle {
    /// Two-sided significance level.
    pub alpha: f64,
    /// How the p-value is computed.
    pub method: RankTestMethod,
    candidate: Vec<f64>,
    baseline: Vec<f64>,
    stage: Option<usize>,
    exact: ExactTails,
}

impl KayentaStyle {
    /// BENCHMARK.md's anchor: p < 0.02.
    pub fn anchor() -> Self {
        Self::new(0.02)
    }

    /// A rule at the given two-sided level.
    pub fn new(alpha: f64) -> Self {
        KayentaStyle {
            alpha,
            method: RankTestMethod::CommonsMath,
            candidate: Vec::new(),
            baseline: Vec::new(),
            stage: None,
            exact: HashMap::new(),
        }
    }
}

/// How the Mann-Whitney p-value is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankTestMethod {
    /// SciPy's default (`method="auto"`): exact when a sample has at most 8 values and
    /// there are no ties; otherwise normal with tie and continuity corrections.
    Scipy,
    /// R's `wilcox.test` default: exact when both samples have fewer than 50 values and
    /// there are no ties; otherwise normal with tie and continuity corrections.
    R,
    /// Apache Commons Math 3's `MannWhitneyUTest.mannWhitneyUTest`, which Kayenta's
    /// Mann-Whitney calls for its p-value: always the normal approximation, with midranks
    /// for ties but neither the tie correction of the variance nor a continuity correction.
    CommonsMath,
    /// Always the normal approximation with the tie correction, with or without the
    /// continuity correction.
    Normal {
        /// Apply the continuity correction.
        continuity: bool,
    },
}

/// The U statistic of `x` (midranks for ties) and the two-sided p-value of the plain
/// normal approximation `z = (U − n1·n2/2) / sqrt(n1·n2·(n1 + n2 + 1)/12)`, without tie or
/// continuity correction (Apache Commons Math 3's `MannWhitneyUTest`).
pub fn mann_whitney_uncorrected_normal(x: &[f64], y: &[f64]) -> (f64, f64) {
    // U of x: pairs where x wins, ties counting one half (equals R1 − n1(n1 + 1)/2 with
    // midranks).
    let u: f64 = x
        .iter()
        .map(|a| {
            y.iter()
                .map(|b| match a.total_cmp(b) {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                })
                .sum::<f64>()
        })
        .sum();
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let z = (u - n1 * n2 / 2.0) / (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt();
    (u, (2.0 * standard_normal().cdf(-z.abs())).min(1.0))
}

/// Exact null distributions of the Mann-Whitney U statistic, by sample sizes: entry `u`
/// of a table is `P(U ≥ u)` when there are no ties.
pub type ExactTails = HashMap<(usize, usize), Vec<f64>>;

/// `P(U ≥ u)` for every `u` in `0..=n1·n2`, where U counts the pairs in which one of `n1`
/// values exceeds one of `n2` values, all `(n1 + n2)!` orderings being equally likely.
pub fn mann_whitney_exact_tails(n1: usize, n2: usize) -> Vec<f64> {
    // ways[j][s]: orderings of the first positions with j values of the first sample at
    // zero-based positions summing to s. U = s − n1(n1 − 1)/2 once all positions are placed.
    let n = n1 + n2;
    let max_sum = n1 * n;
    let mut ways = vec![vec![0.0_f64; max_sum + 1]; n1 + 1];
    ways[0][0] = 1.0;
    for position in 0..n {
        for j in (0..n1).rev() {
            for s in (0..=max_sum - position).rev() {
                let w = ways[j][s];
                if w != 0.0 {
                    ways[j + 1][s + position] += w;
                }
            }
        }
    }
    let offset = n1 * n1.saturating_sub(1) / 2;
    let counts: Vec<f64> = (0..=n1 * n2).map(|u| ways[n1][u + offset]).collect();
    let total: f64 = counts.iter().sum();
    let mut tails = vec![0.0; counts.len()];
    let mut acc = 0.0;
    for u in (0..counts.len()).rev() {
        acc += counts[u];
        tails[u] = acc / total;
    }
    tails
}

/// A Mann-Whitney U test of `x` against `y`: the U statistic of `x` and the two-sided
/// p-value SciPy gives by default (`scipy.stats.mannwhitneyu(x, y)`, `method="auto"`):
/// exact when a sample has at most 8 values and there are no ties, otherwise the normal
/// approximation with tie and continuity corrections.
///
/// The normal approximation is statrs's; the exact p-value is computed here from the
/// exact null distribution (cached in `exact`), because statrs 0.19.1's exact p-value is
/// wrong whenever `x` has no more values than `y` (it returns the complement: 1.0 for
/// `x = [5, 6, 7, 8]`, `y = [1, 2, 3, 4]`, where SciPy gives 2/70).
pub fn mann_whitney_two_sided(
    x: &[f64],
    y: &[f64],
    method: RankTestMethod,
    exact: &mut ExactTails,
) -> Option<(f64, f64)> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let mut pooled: Vec<f64> = x.iter().chain(y).copied().collect();
    pooled.sort_by(f64::total_cmp);
    let ties = pooled.windows(2).any(|w| w[0] == w[1]);
    let use_exact = !ties
        && match method {
            RankTestMethod::Scipy => x.len() <= 8 || y.len() <= 8,
            RankTestMethod::R => x.len() < 50 && y.len() < 50,
            RankTestMethod::Normal { .. } | RankTestMethod::CommonsMath => false,
        };
    if method == RankTestMethod::CommonsMath {
        return Some(mann_whitney_uncorrected_normal(x, y));
    }
    if !use_exact {
        let correction = match method {
            RankTestMethod::Normal { continuity } => continuity,
            _ => true,
        };
        let statrs_method = if correction {
            MannWhitneyUMethod::AsymptoticInclContinuityCorrection
        } else {
            MannWhitneyUMethod::AsymptoticExclContinuityCorrection
        };
        return mannwhitneyu(x, y, statrs_method, Alternative::TwoSided).ok();
    }
    let u1: usize = x.iter().map(|a| y.iter().filter(|b| a > *b).count()).sum();
    let u = u1.max(x.len() * y.len() - u1);
    let (small, large) = (x.len().min(y.len()), x.len().max(y.len()));
    let tails = exact
        .entry((small, large))
        .or_insert_with(|| mann_whitney_exact_tails(small, large));
    Some((u1 as f64, (2.0 * tails[u]).min(1.0)))
}

impl Rule for KayentaStyle {
    fn name(&self) -> &str {
        "Kayenta-style"
    }

    fn describe(&self) -> String {
        format!(
            "Mann-Whitney U on per-minute error rates, candidate vs baseline minutes of the \
             current stage, at every look; roll back when two-sided p < {} ({:?} p-value) and \
             the candidate ranks higher",
            self.alpha, self.method
        )
    }

    fn reset(&mut self) {
        self.candidate.clear();
        self.baseline.clear();
        self.stage = None;
    }

    fn judge(&mut self, look: &Look<'_>) -> Judgement {
        if self.stage != Some(look.stage) {
            self.candidate.clear();
            self.baseline.clear();
            self.stage = Some(look.stage);
        }
        if let Some(rate) = look.last_minute.candidate.rate() {
            self.candidate.push(rate);
        }
        if let Some(rate) = look.last_minute.baseline.rate() {
            self.baseline.push(rate);
        }
        match mann_whitney_two_sided(
            &self.candidate,
            &self.baseline,
            self.method,
            &mut self.exact,
        ) {
            Some((u, p))
                if p < self.alpha
                    && u > (self.candidate.len() * self.baseline.len()) as f64 / 2.0 =>
            {
                Judgement::RollBack
            }
            _ => Judgement::Continue,
        }
    }

    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}

/// The pooled two-proportion z statistic of candidate against baseline (positive when the
/// candidate fails more), or `None` when it is undefined (no requests in a cohort, or no
/// error or only errors at all).
pub fn two_proportion_z(candidate: Counts, baseline: Counts) -> Option<f64> {
    let (pc, pb) = (candidate.rate()?, baseline.rate()?);
    let n_c = candidate.requests as f64;
    let n_b = baseline.requests as f64;
    let pooled = (candidate.errors + baseline.errors) as f64 / (n_c + n_b);
    let variance = pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_b);
    (variance > 0.0).then(|| (pc - pb) / variance.sqrt())
}

/// The naive rule: a one-sided pooled two-proportion z-test at level `alpha` at every look,
/// on the cumulative counts of the current stage.
///
/// Semantics: cumulative counts restart at every stage (each stage is "a test"), the
/// variance is pooled (the textbook test under the null). On the counts since the start of
/// the rollout the A/A rate would be about 40 % instead of the anchor's 57 %.
#[derive(Clone, Debug)]
pub struct ZTestEveryLook {
    /// One-sided level of each look's test.
    pub alpha: f64,
    critical: f64,
}

impl ZTestEveryLook {
    /// BENCHMARK.md's anchor: α = 5 % at every look.
    pub fn anchor() -> Self {
        Self::new(0.05)
    }

    /// A rule at the given one-sided level.
    pub fn new(alpha: f64) -> Self {
        ZTestEveryLook {
            alpha,
            critical: normal_quantile_upper(alpha),
        }
    }
}

impl Rule for ZTestEveryLook {
    fn name(&self) -> &str {
        "z-test every look"
    }

    fn describe(&self) -> String {
        format!(
            "one-sided pooled two-proportion z-test at α = {} % on the current stage's \
             cumulative counts, at every look",
            self.alpha * 100.0
        )
    }

    fn reset(&mut self) {}

    fn judge(&mut self, look: &Look<'_>) -> Judgement {
        match two_proportion_z(look.stage_total.candidate, look.stage_total.baseline) {
            Some(z) if z > self.critical => Judgement::RollBack,
            _ => Judgement::Continue,
        }
    }

    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}

/// The tuning parameter ρ² of an asymptotic confidence sequence that is tightest after
/// `target` observations (Waudby-Smith et al. 2024, the choice of ρ for a target time t*):
/// `ρ² = (−2 ln α + ln(1 − 2 ln α)) / t*`.
pub fn asymp_cs_rho_squared(alpha: f64, target: f64) -> f64 {
    let l = -2.0 * alpha.ln();
    (l + (l + 1.0).ln()) / target
}

/// The one-sided asymptotic confidence sequence's half-width multiplier of σ̂ after `t`
/// observations: `sqrt(2(tρ² + 1) / (t²ρ²) · ln(1 + sqrt(tρ² + 1) / (2α)))` (Waudby-Smith
/// et al. 2024, one-sided Gaussian-mixture boundary).
pub fn asymp_cs_one_sided_radius(t: f64, rho_squared: f64, alpha: f64) -> f64 {
    let tr = t * rho_squared;
    (2.0 * (tr + 1.0) / (t * tr) * (1.0 + (tr + 1.0).sqrt() / (2.0 * alpha)).ln()).sqrt()
}

/// Asymptotic confidence sequence per stage (Waudby-Smith, Arbour, Sinha, Kennedy,
/// Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences",
/// Ann. Statist. 2024): roll back when the one-sided lower bound of `p_c − p_b` on the
/// current stage's cumulative counts is above zero. The false-rollback budget `alpha` is
/// split equally over the stages.
///
/// Semantics: the experiment estimator of the paper for a randomised experiment with known
/// assignment probability. Each request `i` of the stage contributes
/// `ψ_i = Y_i (A_i / w − (1 − A_i) / (1 − w))` (inverse-probability weighting, `w` the
/// exposure), whose mean estimates `p_c − p_b`; σ̂ is the sample standard deviation of ψ,
/// `t` the stage's requests, and ρ is tuned for `t* =` the stage's planned requests
/// (`target_requests_per_stage`, here rate × stage length). With the unweighted difference
/// of rates and the binomial variance instead, the figures move by about two standard
/// errors away from the anchor.
#[derive(Clone, Debug)]
pub struct AsymptoticCs {
    /// False-rollback budget of the whole rollout, split equally over the stages.
    pub alpha: f64,
    /// The planned requests of one stage (both cohorts), the target time t* for ρ.
    pub target_requests_per_stage: f64,
}

impl AsymptoticCs {
    /// BENCHMARK.md's anchor: α = 5 % over the rollout, ρ tuned to a stage's planned
    /// requests.
    pub fn new(alpha: f64, target_requests_per_stage: f64) -> Self {
        AsymptoticCs {
            alpha,
            target_requests_per_stage,
        }
    }

    /// The one-sided lower confidence bound of `p_c − p_b` at this look, with the stage's
    /// share `alpha_stage` of the budget.
    pub fn lower_bound(&self, look: &Look<'_>, alpha_stage: f64) -> Option<f64> {
        let Cohorts {
            candidate,
            baseline,
        } = look.stage_total;
        let t = (candidate.requests + baseline.requests) as f64;
        if t == 0.0 {
            return None;
        }
        let w = look.exposure;
        let mean = candidate.errors as f64 / (w * t) - baseline.errors as f64 / ((1.0 - w) * t);
        let second_moment =
            (candidate.errors as f64 / (w * w) + baseline.errors as f64 / ((1.0 - w).powi(2))) / t;
        let variance = second_moment - mean * mean;
        if variance <= 0.0 {
            return None;
        }
        let rho_squared = asymp_cs_rho_squared(alpha_stage, self.target_requests_per_stage);
        Some(mean - variance.sqrt() * asymp_cs_one_sided_radius(t, rho_squared, alpha_stage))
    }
}

impl Rule for AsymptoticCs {
    fn name(&self) -> &str {
        "AsympCS per stage"
    }

    fn describe(&self) -> String {
        format!(
            "one-sided asymptotic confidence sequence for p_c − p_b (IPW with the known \
             exposure) on the current stage's counts, α = {} % split over the stages, ρ tuned \
             to t* = {:.0} requests per stage",
            self.alpha * 100.0,
            self.target_requests_per_stage
        )
    }

    fn reset(&mut self) {}

    fn judge(&mut self, look: &Look<'_>) -> Judgement {
        let alpha_stage = self.alpha / look.schedule.stages.len() as f64;
        match self.lower_bound(look, alpha_stage) {
            Some(lower) if lower > 0.0 => Judgement::RollBack,
            _ => Judgement::Continue,
        }
    }

    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}

/// The natural logarithm of the normal-mixture mSPRT statistic (Johari, Koomen, Pekelis,
/// Walsh, "Always valid inference", Oper. Res. 2022) for an estimate `theta` of the
/// difference with estimated variance `variance` and mixing standard deviation `tau`:
/// `ln Λ = ½ ln(V / (V + τ²)) + τ² θ² / (2 V (V + τ²))`.
pub fn msprt_log_statistic(theta: f64, variance: f64, tau: f64) -> f64 {
    let tau2 = tau * tau;
    0.5 * (variance / (variance + tau2)).ln()
        + tau2 * theta * theta / (2.0 * variance * (variance + tau2))
}

/// mSPRT per stage: roll back when the normal-mixture likelihood ratio for `p_c − p_b`
/// on the current stage's cumulative counts reaches `1 / α_stage` with the candidate
/// worse. The budget `alpha` is split equally over the stages; the mixing distribution is
/// `N(0, τ²)` with `τ = p0 / 2`.
///
/// Semantics: the two-sample form used for conversion rates (Johari et al.): θ̂ the
/// difference of the cohorts' error rates, `V = p̂_c(1 − p̂_c)/n_c + p̂_b(1 − p̂_b)/n_b`.
/// The mixture is two-sided; only a worse candidate rolls back.
#[derive(Clone, Debug)]
pub struct Msprt {
    /// False-rollback budget of the whole rollout, split equally over the stages.
    pub alpha: f64,
    /// Standard deviation of the normal mixing distribution of the difference.
    pub tau: f64,
}

impl Msprt {
    /// BENCHMARK.md's anchor: α = 5 % over the rollout, τ = p0 / 2.
    pub fn new(alpha: f64, tau: f64) -> Self {
        Msprt { alpha, tau }
    }
}

impl Rule for Msprt {
    fn name(&self) -> &str {
        "mSPRT per stage"
    }

    fn describe(&self) -> String {
        format!(
            "normal-mixture mSPRT (τ = {}) for p_c − p_b on the current stage's counts, \
             α = {} % split over the stages; roll back when Λ ≥ 1/α and the candidate is worse",
            self.tau,
            self.alpha * 100.0
        )
    }

    fn reset(&mut self) {}

    fn judge(&mut self, look: &Look<'_>) -> Judgement {
        let alpha_stage = self.alpha / look.schedule.stages.len() as f64;
        let Cohorts {
            candidate,
            baseline,
        } = look.stage_total;
        let (Some(pc), Some(pb)) = (candidate.rate(), baseline.rate()) else {
            return Judgement::Continue;
        };
        let variance = pc * (1.0 - pc) / candidate.requests as f64
            + pb * (1.0 - pb) / baseline.requests as f64;
        let theta = pc - pb;
        if variance > 0.0
            && theta > 0.0
            && msprt_log_statistic(theta, variance, self.tau) >= -alpha_stage.ln()
        {
            Judgement::RollBack
        } else {
            Judgement::Continue
        }
    }

    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}
