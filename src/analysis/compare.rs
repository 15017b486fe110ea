//! The comparison of the candidate with the tolerated baseline, over the whole rollout.
//!
//! Every look compares the two cohorts concurrently, so the stages are strata of one
//! experiment: the evidence of a stage is kept (as sums in [`Evidence`], in status) when
//! the next one starts, and each look judges all of it.
//!
//! - **Statistic.** Per stratum, given the stratum's bad events `X = x_b + x_c`, the
//!   candidate's share of them is binomial with `π = k·n_c/(n_b + k·n_c)` when the
//!   candidate's rate is exactly `k` times the baseline's (`k = 1 + relative` tolerance; an
//!   absolute tolerance shifts the count instead). The statistic is the sum over strata of
//!   `x_c − πX` (a Mantel-Haenszel style stratified score), each stratum scaled by its
//!   dispersion factor `φ` (a quasi-binomial: `X/φ` trials), and its tail is the
//!   saddlepoint tail of that sum of binomials ([`sequential::binomial_sum_sf`]), exact
//!   enough where counts are small, turned into a z-score.
//! - **Dispersion.** Bad events per look vary more than the binomial says when failures come
//!   in bursts: `Var = μ(1 − p) + κμ²`. `κ` is estimated by moments from the look-to-look
//!   increments of both cohorts in every stage so far (unbiased for the stage means
//!   estimated from the same increments), never below 0 (the binomial); its uncertainty
//!   widens the boundaries as a Student t with Satterthwaite's degrees of freedom, with the
//!   estimate's variance taken [`DISPERSION_MARGIN`] standard errors above `κ` (a plug-in
//!   variance at a low estimate would claim a precision a few looks cannot have).
//! - **Boundaries.** The information of the comparison grows like `λ·w(1 − w)` (traffic
//!   `λ`, exposure `w`), so the share of the plan's information reached at a look follows
//!   from the plan alone: `t = Σ w(1 − w)·seconds / Σ_plan w(1 − w)·duration`. The budget
//!   is spent over the plan's looks (one per interval) by a Lan-DeMets spending function
//!   ([`sequential::spending`]), front-loaded over the first stage ([`FIRST_STAGE_RATE`]),
//!   and nothing at the first look, which has no spread between looks to estimate `κ` from
//!   ([`sequential::planned_spending`]); each
//!   planned look decides at most once (the first look that reaches it), so extra looks (a
//!   stage's first, a retried one) never spend twice.
//! - **Recent window.** The same statistic over the increments of the last
//!   [`RECENT_LOOKS`] looks, with [`RECENT_SHARE`] of the budget spent in proportion to each
//!   planned look's information (Bonferroni over looks), catches a regression that starts
//!   late before the older healthy data dilute it.
//! - **Overtime.** Looks beyond the plan's information (a stage held for samples, a pause,
//!   an approval wait) spend [`OVERTIME_RESERVE`] of the budget, `6/(π²i²)` of it at the
//!   `i`-th one, so the promise holds however long the rollout runs.

use std::f64::consts::PI;
use std::sync::Arc;

use jiff::Timestamp;

use super::ratio::{Counts, Tolerance};
use super::sequential::{self, BinomialTerm};
use crate::crd::validate::ValidSpec;
use crate::crd::{Evidence, Increment, IncrementSums, Stratum};

/// The share of a comparison's budget kept for the recent-window statistic. Small: a
/// regression that starts late stands out so sharply in a short window that a small
/// share catches it within a few looks, and the rest is worth more to the main statistic.
pub const RECENT_SHARE: f64 = 0.04;

/// Looks in the recent window.
pub const RECENT_LOOKS: usize = 3;

/// The share of a comparison's budget kept for looks beyond the plan's information.
pub const OVERTIME_RESERVE: f64 = 0.01;

/// How fast the budget is spent: the spending function's `γ` times the first stage's share
/// of the plan's information. When the first stage holds a small share (a small cohort),
/// `1 − e^{−0.9}`, about 59 %, of the shaped budget is spent by its end and the rest at
/// the same falling rate: the first stages are where harm must be caught, before it
/// reaches many users, and the later ones have so much information that a smaller share
/// of the budget is enough. A plan of one stage spends nearly evenly (`γ = 0.9`).
pub const FIRST_STAGE_RATE: f64 = 0.9;

/// How many standard errors above the estimate of `κ` its own variance is evaluated at,
/// for the degrees of freedom of the t that widens the boundaries.
pub const DISPERSION_MARGIN: f64 = 2.0;

/// The information rate of a stage per second of its duration: `w(1 − w)` for exposure
/// `w`; a stage with an audience and full exposure compares the audience with everybody
/// else, in an unknown split, and counts as an even one (`0.25`).
pub fn information_rate(weight: f64, audience: bool) -> f64 {
    if audience && weight >= 1.0 {
        0.25
    } else {
        (weight * (1.0 - weight)).max(0.0)
    }
}

/// The plan's information profile: what every look's boundary derives from.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The plan's total information (`Σ rate · duration`, in seconds).
    pub total: f64,
    /// The information fraction of each planned look, increasing, the last one 1.
    pub looks: Vec<f64>,
    /// The information one interval adds in the last analysed stage (for overtime looks).
    pub last_step: f64,
    /// The spending function's `γ` ([`FIRST_STAGE_RATE`] over the first stage's share).
    pub gamma: f64,
}

impl Plan {
    /// The plan of a valid spec: a look every `interval` through each analysed stage.
    pub fn new(valid: &ValidSpec) -> Plan {
        let interval = valid.interval.as_secs_f64().max(1.0);
        let mut looks = Vec::new();
        let mut information = 0.0;
        let mut last_step = 0.0;
        let mut first_stage = None;
        for stage in &valid.stages {
            let rate = information_rate(stage.weight.fraction(), stage.audience.is_some());
            let duration = stage.duration.as_secs_f64();
            if rate <= 0.0 || duration <= 0.0 {
                continue;
            }
            let mut elapsed = 0.0;
            while elapsed < duration - 1e-9 {
                let step = interval.min(duration - elapsed);
                elapsed += step;
                information += rate * step;
                looks.push(information);
            }
            last_step = rate * interval;
            first_stage.get_or_insert(information);
        }
        let total = information;
        if total > 0.0 {
            for t in &mut looks {
                *t /= total;
            }
            if let Some(last) = looks.last_mut() {
                *last = 1.0;
            }
            last_step /= total;
        }
        let first_share = first_stage.map_or(1.0, |f| f / total).clamp(1e-9, 1.0);
        Plan {
            total,
            looks,
            last_step,
            gamma: FIRST_STAGE_RATE / first_share,
        }
    }

    /// The main statistic's boundaries at the planned looks for `budget`.
    fn boundaries(&self, budget: f64) -> Arc<Vec<f64>> {
        sequential::planned_boundaries(&self.looks, budget, self.gamma)
    }
}

/// Where a look is in the plan: a planned look (index into [`Plan::looks`]) or the `i`-th
/// overtime look (`i ≥ 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlannedLook {
    Planned(usize),
    Overtime(u32),
}

impl PlannedLook {
    fn at(plan: &Plan, t: f64) -> Option<PlannedLook> {
        let reached = plan
            .looks
            .partition_point(|&x| x <= t * (1.0 + 1e-9) + 1e-12);
        if t > 1.0 + 1e-9 && plan.last_step > 0.0 {
            let i = ((t - 1.0) / plan.last_step - 1e-9).floor() as u32;
            if i >= 1 {
                return Some(PlannedLook::Overtime(i));
            }
        }
        reached.checked_sub(1).map(PlannedLook::Planned)
    }

    fn index(self, plan: &Plan) -> u32 {
        match self {
            PlannedLook::Planned(j) => j as u32,
            PlannedLook::Overtime(i) => plan.looks.len() as u32 + i - 1,
        }
    }
}

/// The current look's place in the rollout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// The stage's index.
    pub stage: u32,
    /// The stage's exposure, as a fraction.
    pub weight: f64,
    /// The stage's information rate ([`information_rate`]).
    pub rate: f64,
    /// When the stage (its current window) began.
    pub started_at: Timestamp,
    /// Seconds since then.
    pub seconds: f64,
}

/// The comparison at one look.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The stratified z-score over every stage so far.
    pub statistic: f64,
    /// Its boundary at this look (`None`: this look cannot roll back on it).
    pub boundary: Option<f64>,
    /// The recent window's z-score, when the window has data from both cohorts.
    pub recent_statistic: Option<f64>,
    /// Its boundary at this look.
    pub recent_boundary: Option<f64>,
    /// The share of the budget spent so far.
    pub budget_spent: f64,
    /// The information fraction reached.
    pub information_fraction: f64,
    /// The estimated dispersion `κ`.
    pub dispersion: f64,
    /// The degrees of freedom of the dispersion's estimate (0 until two looks with events
    /// can be compared: then no boundary is set).
    pub degrees_of_freedom: f64,
    /// The evidence to keep for the next look.
    pub evidence: Evidence,
}

impl Comparison {
    /// Whether the evidence of harm crosses a boundary: roll back.
    pub fn reject(&self) -> bool {
        self.boundary.is_some_and(|b| self.statistic >= b)
            || matches!((self.recent_statistic, self.recent_boundary), (Some(z), Some(b)) if z >= b)
    }
}

impl IncrementSums {
    fn add(&mut self, n: f64, x: f64) {
        self.looks += 1;
        self.n += n;
        self.x += x;
        self.xx += x * x;
        self.xn += x * n;
        self.nn += n * n;
        self.nnn += n * n * n;
        self.nnnn += n * n * n * n;
    }
}

/// The moment estimate of `κ` and its approximate variance from every stratum's
/// increments: per stratum and cohort, with `p = x/n` and residuals `r = x_j − n_j p`,
/// `E Σr² = p(1 − p)(n − Σn_j²/n) + κ p²(Σn_j² − 2Σn_j³/n + (Σn_j²)²/n²)`.
/// Returns `(κ, Var κ)`, the variance evaluated at `κ +` [`DISPERSION_MARGIN`] standard
/// errors; `None` when no stage has two looks with events to compare.
pub fn dispersion(strata: &[Stratum]) -> Option<(f64, f64)> {
    let groups = || {
        strata
            .iter()
            .flat_map(|s| [&s.baseline, &s.candidate])
            .filter(|g| g.n > 0.0 && g.looks >= 2)
    };
    let (mut excess, mut weight) = (0.0, 0.0);
    for g in groups() {
        let p = (g.x / g.n).clamp(0.0, 1.0);
        let residuals = g.xx - 2.0 * p * g.xn + p * p * g.nn;
        let binomial = p * (1.0 - p) * (g.n - g.nn / g.n);
        let b = p * p * (g.nn - 2.0 * g.nnn / g.n + g.nn * g.nn / (g.n * g.n));
        excess += residuals - binomial;
        weight += b.max(0.0);
    }
    if weight <= 1e-12 {
        return None;
    }
    let kappa = (excess / weight).max(0.0);
    let spread = |kappa: f64| -> f64 {
        groups()
            .map(|g| {
                let p = (g.x / g.n).clamp(0.0, 1.0);
                let q = p * (1.0 - p);
                // Var(r²) ≈ 2v² for normal residuals; bursts with a Gamma-like spread have
                // the heavier tails of a fourth moment `3κ² + 6κ³`: `2(1 + 3κ)` for the
                // burst part.
                2.0 * (q * q * g.nn
                    + 2.0 * kappa * p * p * q * g.nnn
                    + (1.0 + 3.0 * kappa) * kappa * kappa * p.powi(4) * g.nnnn)
            })
            .sum::<f64>()
            / (weight * weight)
    };
    let upper = kappa + DISPERSION_MARGIN * spread(kappa).sqrt();
    Some((kappa, spread(upper)))
}

/// The rates of both cohorts when the candidate is exactly as bad as tolerated, fitted to
/// a stratum's counts: `(p_b, p_c)`.
fn null_rates(nb: f64, xb: f64, nc: f64, xc: f64, tolerance: Tolerance) -> (f64, f64) {
    match tolerance {
        Tolerance::Relative(r) => {
            let k = 1.0 + r;
            let pb = ((xb + xc) / (nb + k * nc)).clamp(0.0, 1.0);
            (pb, (k * pb).min(1.0))
        }
        Tolerance::Absolute(a) => {
            let pb = ((xb + xc - a * nc) / (nb + nc)).clamp(0.0, 1.0);
            (pb, (pb + a).min(1.0))
        }
    }
}

/// The candidate's expected share of the bad events, and the count's shift, under the
/// tolerated harm.
fn share_and_shift(nb: f64, nc: f64, tolerance: Tolerance) -> (f64, f64) {
    match tolerance {
        Tolerance::Relative(r) => {
            let k = 1.0 + r;
            (k * nc / (nb + k * nc), 0.0)
        }
        Tolerance::Absolute(a) => (nc / (nb + nc), a * nc * nb / (nb + nc)),
    }
}

/// One stratum's (or increment's) share in a statistic.
struct Term {
    binomial: BinomialTerm,
    /// The observed, shifted and scaled count.
    y: f64,
    /// Binomial variance of the score, and its part that grows with `κ`.
    v0: f64,
    w: f64,
    phi: f64,
}

#[allow(clippy::too_many_arguments)]
fn term(
    nb: f64,
    xb: f64,
    nc: f64,
    xc: f64,
    nnb: f64,
    nnc: f64,
    rates: (f64, f64),
    tolerance: Tolerance,
    kappa: f64,
) -> Option<Term> {
    if nb <= 0.0 || nc <= 0.0 {
        return None;
    }
    let (pb, pc) = rates;
    let (pi, shift) = share_and_shift(nb, nc, tolerance);
    let v0 = (1.0 - pi).powi(2) * nc * pc * (1.0 - pc) + pi * pi * nb * pb * (1.0 - pb);
    let w = (1.0 - pi).powi(2) * pc * pc * nnc + pi * pi * pb * pb * nnb;
    let phi = if v0 > 0.0 { 1.0 + kappa * w / v0 } else { 1.0 };
    Some(Term {
        binomial: BinomialTerm {
            size: (xb + xc) / phi,
            p: pi,
        },
        y: (xc - shift) / phi,
        v0,
        w,
        phi,
    })
}

/// The z-score of a sum of terms and its Satterthwaite degrees of freedom.
fn score(terms: &[Term], var_kappa: Option<f64>) -> Option<(f64, f64)> {
    if terms.is_empty() {
        return None;
    }
    let y: f64 = terms.iter().map(|t| t.y).sum();
    let binomials: Vec<BinomialTerm> = terms.iter().map(|t| t.binomial).collect();
    // No continuity correction: the uncorrected saddlepoint tail of a lattice variable is
    // close to its mid-p value, which spends the budget on average rather than wasting
    // the lattice's gaps (the A/A rates of the benchmark's sweep check the result).
    let lattice = 0.0;
    let (tail, mean, variance) = sequential::binomial_sum_sf(&binomials, y, lattice);
    if variance <= 0.0 {
        return None;
    }
    let z = if y - 0.5 * lattice <= mean {
        (y - 0.5 * lattice - mean) / variance.sqrt()
    } else {
        sequential::norm_isf(tail).min(40.0)
    };
    let v: f64 = terms.iter().map(|t| t.v0 * t.phi).sum();
    let w: f64 = terms.iter().map(|t| t.w).sum();
    let df = match var_kappa {
        // One look: the spread between looks is unknown, no boundary can be trusted.
        None => 0.0,
        // Satterthwaite's degrees of freedom.
        Some(var) if w * w * var > 0.0 => 2.0 * v * v / (w * w * var),
        Some(_) => f64::INFINITY,
    };
    Some((z, df))
}

/// The comparison at one look, from the stage's cumulative counts and the evidence kept
/// by the previous look. `budget` is this comparison's share of `1 − confidence`.
pub fn compare(
    previous: Option<&Evidence>,
    window: Window,
    baseline: Counts,
    candidate: Counts,
    tolerance: Tolerance,
    plan: &Plan,
    budget: f64,
) -> Comparison {
    let mut evidence = previous.cloned().unwrap_or_default();
    let new_window = evidence
        .strata
        .last()
        .is_none_or(|s| s.stage != window.stage || s.started_at != window.started_at);
    if new_window {
        evidence.strata.push(Stratum {
            stage: window.stage,
            started_at: window.started_at,
            weight: window.weight,
            rate: window.rate,
            seconds: 0.0,
            baseline: IncrementSums::default(),
            candidate: IncrementSums::default(),
        });
    }
    let current = evidence.strata.last_mut().expect("a stratum");
    current.seconds = window.seconds;
    // Counts are cumulative within the stage: the increment is the difference (never
    // negative: `increase()` extrapolates, and counters reset).
    let step = Increment {
        baseline_n: (baseline.total - current.baseline.n).max(0.0),
        baseline_x: (baseline.bad - current.baseline.x).max(0.0),
        candidate_n: (candidate.total - current.candidate.n).max(0.0),
        candidate_x: (candidate.bad - current.candidate.x).max(0.0),
    };
    current.baseline.add(step.baseline_n, step.baseline_x);
    current.candidate.add(step.candidate_n, step.candidate_x);
    if step.baseline_n + step.candidate_n > 0.0 {
        evidence.recent.push(step);
        let excess = evidence.recent.len().saturating_sub(RECENT_LOOKS);
        evidence.recent.drain(..excess);
    }

    let estimated = dispersion(&evidence.strata);
    let (kappa, var_kappa) = estimated.map_or((0.0, None), |(k, v)| (k, Some(v)));

    // The statistic over every stratum.
    let mut current_rates = (0.0, 0.0);
    let strata_terms: Vec<Term> = evidence
        .strata
        .iter()
        .filter_map(|s| {
            let (b, c) = (&s.baseline, &s.candidate);
            let rates = null_rates(b.n, b.x, c.n, c.x, tolerance);
            current_rates = rates;
            term(b.n, b.x, c.n, c.x, b.nn, c.nn, rates, tolerance, kappa)
        })
        .collect();
    let (statistic, df) = score(&strata_terms, var_kappa).unwrap_or((0.0, f64::INFINITY));
    let recent_terms: Vec<Term> = evidence
        .recent
        .iter()
        .filter_map(|i| {
            let (nb, nc) = (i.baseline_n, i.candidate_n);
            term(
                nb,
                i.baseline_x,
                nc,
                i.candidate_x,
                nb * nb,
                nc * nc,
                current_rates,
                tolerance,
                kappa,
            )
        })
        .collect();
    let recent = score(&recent_terms, var_kappa);

    // Where the look is in the plan.
    let closed: f64 = evidence.strata.iter().map(|s| s.rate * s.seconds).sum();
    let t = if plan.total > 0.0 {
        closed / plan.total
    } else {
        0.0
    };
    let planned = PlannedLook::at(plan, t);
    let fresh = planned.filter(|p| Some(p.index(plan)) != evidence.planned_look);
    let plan_budget = (1.0 - OVERTIME_RESERVE) * budget;
    let (main_budget, recent_budget) = (
        (1.0 - RECENT_SHARE) * plan_budget,
        RECENT_SHARE * plan_budget,
    );
    let overtime = |i: u32| OVERTIME_RESERVE * budget * 6.0 / (PI * PI * f64::from(i * i));
    let (alpha_main, alpha_recent) = match fresh {
        None => (None, None),
        Some(PlannedLook::Planned(j)) => {
            let z = plan.boundaries(main_budget)[j];
            let before = if j == 0 { 0.0 } else { plan.looks[j - 1] };
            (
                Some(sequential::norm_sf(z)),
                Some(recent_budget * (plan.looks[j] - before)),
            )
        }
        Some(PlannedLook::Overtime(i)) => (Some(overtime(i) / 2.0), Some(overtime(i) / 2.0)),
    };
    let budget_spent = match planned {
        None => 0.0,
        Some(PlannedLook::Planned(j)) => {
            let tj = plan.looks[j];
            (main_budget * sequential::planned_spending(j, tj, plan.gamma) + recent_budget * tj)
                / budget
        }
        Some(PlannedLook::Overtime(i)) => {
            (plan_budget + (1..=i).map(overtime).sum::<f64>()) / budget
        }
    };
    if let Some(p) = fresh {
        evidence.planned_look = Some(p.index(plan));
    }
    let boundary = alpha_main
        .map(|a| sequential::t_isf(a, df))
        .filter(|b| b.is_finite());
    let recent_boundary = match (recent, alpha_recent) {
        (Some((_, df)), Some(a)) => Some(sequential::t_isf(a, df)).filter(|b| b.is_finite()),
        _ => None,
    };
    Comparison {
        statistic,
        boundary,
        recent_statistic: recent.map(|(z, _)| z),
        recent_boundary,
        budget_spent,
        information_fraction: t,
        dispersion: kappa,
        degrees_of_freedom: df,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Binomial, Distribution, Gamma};

    /// One look's increments: ((baseline n, x), (candidate n, x)).
    type Step = ((f64, f64), (f64, f64));

    fn window(stage: u32, weight: f64, started: i64, seconds: f64) -> Window {
        Window {
            stage,
            weight,
            rate: information_rate(weight, false),
            started_at: Timestamp::from_second(started).unwrap(),
            seconds,
        }
    }

    fn plan() -> Plan {
        // The benchmark's plan: 1 %, 5 %, 25 %, 50 % × 10 looks of 60 s.
        let mut looks = Vec::new();
        let mut information = 0.0;
        for w in [0.01, 0.05, 0.25, 0.5] {
            for _ in 0..10 {
                information += w * (1.0 - w) * 60.0;
                looks.push(information);
            }
        }
        let total = information;
        Plan {
            total,
            looks: looks.iter().map(|t| t / total).collect(),
            last_step: 0.25 * 60.0 / total,
            gamma: FIRST_STAGE_RATE / (0.0099 / 0.4949),
        }
    }

    fn counts(bad: f64, total: f64) -> Counts {
        Counts { bad, total }
    }

    /// Feeds cumulative counts of one stage look by look; returns the last comparison.
    fn run(evidence: Option<Evidence>, stage: u32, weight: f64, increments: &[Step]) -> Comparison {
        let mut evidence = evidence;
        let (mut b, mut c) = (counts(0.0, 0.0), counts(0.0, 0.0));
        let mut last = None;
        for (i, ((nb, xb), (nc, xc))) in increments.iter().enumerate() {
            b = counts(b.bad + xb, b.total + nb);
            c = counts(c.bad + xc, c.total + nc);
            let w = window(stage, weight, 600 * i64::from(stage), 60.0 * (i + 1) as f64);
            let out = compare(
                evidence.as_ref(),
                w,
                b,
                c,
                Tolerance::Relative(0.0),
                &plan(),
                0.05,
            );
            evidence = Some(out.evidence.clone());
            last = Some(out);
        }
        last.unwrap()
    }

    fn bursty(seed: u64, looks: usize, cv: Option<f64>) -> Vec<Step> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let gamma = cv.map(|cv| Gamma::new(1.0 / (cv * cv), cv * cv).unwrap());
        let mut draw = |n: u64| {
            let g = gamma.as_ref().map_or(1.0, |g| g.sample(&mut rng));
            Binomial::new(n, (0.01 * g).min(1.0))
                .unwrap()
                .sample(&mut rng) as f64
        };
        (0..looks)
            .map(|_| ((1500.0, draw(1500)), (1500.0, draw(1500))))
            .collect()
    }

    #[test]
    fn the_dispersion_is_recovered_from_the_spread_between_looks() {
        let seed = 3;
        println!("seed {seed}");
        // Gamma(mean 1, CV 0.5) per cohort and look: κ = 0.25.
        let c = run(None, 3, 0.5, &bursty(seed, 200, Some(0.5)));
        assert!((c.dispersion - 0.25).abs() < 0.07, "κ = {}", c.dispersion);
        assert!(c.degrees_of_freedom > 50.0);
        // Binomial counts: κ near 0, never below.
        let c = run(None, 3, 0.5, &bursty(seed, 200, None));
        assert!(
            c.dispersion >= 0.0 && c.dispersion < 0.02,
            "κ = {}",
            c.dispersion
        );
    }

    #[test]
    fn one_look_sets_no_boundary_and_two_do() {
        let one = run(None, 0, 0.01, &[((2970.0, 30.0), (30.0, 10.0))]);
        assert!(one.boundary.is_none() && one.recent_boundary.is_none());
        assert!(!one.reject(), "one look cannot roll back: {one:?}");
        let two = run(
            None,
            0,
            0.01,
            &[((2970.0, 30.0), (30.0, 0.0)), ((2970.0, 30.0), (30.0, 0.0))],
        );
        assert!(two.boundary.is_some(), "{two:?}");
    }

    #[test]
    fn evidence_is_kept_across_stages_and_a_restarted_stage_is_a_new_stratum() {
        let healthy = [((2850.0, 28.0), (150.0, 2.0)); 5];
        let first = run(None, 1, 0.05, &healthy);
        assert_eq!(first.evidence.strata.len(), 1);
        assert_eq!(first.evidence.strata[0].baseline.n, 5.0 * 2850.0);
        // The next stage's counts start from zero again: a new stratum, the old one kept.
        let second = run(Some(first.evidence.clone()), 2, 0.25, &healthy);
        assert_eq!(second.evidence.strata.len(), 2);
        assert_eq!(second.evidence.strata[0], first.evidence.strata[0]);
        // The same stage restarted (an exposure edit): its own stratum too.
        let mut restarted = first.evidence.clone();
        restarted.strata[0].started_at = Timestamp::from_second(1).unwrap();
        let again = run(Some(restarted), 1, 0.05, &healthy);
        assert_eq!(again.evidence.strata.len(), 2);
        assert!(again.information_fraction > first.information_fraction);
        // The recent window holds the last looks only.
        assert_eq!(second.evidence.recent.len(), RECENT_LOOKS);
    }

    #[test]
    fn each_planned_look_decides_once() {
        let healthy = [((2850.0, 28.0), (150.0, 2.0)); 3];
        let first = run(None, 1, 0.05, &healthy);
        // Another look a second later reaches no new planned look.
        let last = &first.evidence.strata[0];
        let again = compare(
            Some(&first.evidence),
            window(1, 0.05, 600, last.seconds + 1.0),
            counts(last.baseline.x, last.baseline.n),
            counts(last.candidate.x + 20.0, last.candidate.n),
            Tolerance::Relative(0.0),
            &plan(),
            0.05,
        );
        assert!(again.boundary.is_none() && !again.reject(), "{again:?}");
    }

    #[test]
    fn a_clear_regression_is_caught_and_healthy_traffic_is_not() {
        let healthy = run(None, 1, 0.05, &[((2850.0, 28.0), (150.0, 2.0)); 10]);
        assert!(!healthy.reject(), "{healthy:?}");
        let worse = run(None, 1, 0.05, &[((2850.0, 28.0), (150.0, 8.0)); 10]);
        assert!(worse.reject(), "{worse:?}");
        assert!(worse.budget_spent > 0.0 && worse.budget_spent < 1.0);
    }

    #[test]
    fn the_spending_rate_follows_the_first_stage() {
        let plan_of = |yaml: &str| {
            let spec: crate::crd::FeatureRolloutSpec = serde_yaml_ng::from_str(yaml).unwrap();
            Plan::new(&crate::crd::validate::validate(&spec).unwrap())
        };
        let benchmark = crate::simulate::sluice_rule::benchmark_spec_yaml(
            &crate::simulate::Schedule::benchmark(),
            0.95,
            "0%",
        );
        let p = plan_of(&benchmark);
        // The first stage holds 0.0099 / 0.4949 of the information: γ = 0.9 / 0.0200 ≈ 45.
        assert!(
            (p.gamma - 0.9 * 0.4949 / 0.0099).abs() < 1e-6,
            "{}",
            p.gamma
        );
        assert_eq!(p.looks, plan().looks);
        // One stage: all the information is in it, the budget is spent nearly evenly.
        let one = benchmark.replace(
            "  - { weight: \"1%\", duration: 10m }\n  - { weight: \"5%\", duration: 10m }\n  - { weight: \"25%\", duration: 10m }\n",
            "",
        );
        assert_ne!(one, benchmark);
        let p = plan_of(&one);
        assert_eq!(p.looks.len(), 10);
        assert!((p.gamma - FIRST_STAGE_RATE).abs() < 1e-12, "{}", p.gamma);
    }

    #[test]
    fn the_plan_spends_by_information() {
        let p = plan();
        assert_eq!(p.looks.len(), 40);
        assert!((p.looks[39] - 1.0).abs() < 1e-15);
        // 1 % for 10 minutes is 0.0099·600 of 0.4949·600 (the plan: 0.0099 + 0.0475 + 0.1875 + 0.25 per second).
        assert!(
            (p.looks[9] - 0.0099 / 0.4949).abs() < 1e-12,
            "{}",
            p.looks[9]
        );
        assert_eq!(PlannedLook::at(&p, 0.0), None);
        assert_eq!(
            PlannedLook::at(&p, p.looks[3]),
            Some(PlannedLook::Planned(3))
        );
        assert_eq!(
            PlannedLook::at(&p, 1.0 + 2.5 * p.last_step),
            Some(PlannedLook::Overtime(2))
        );
    }
}
