//! The numerical core of the comparison: normal and Student t tails, group-sequential
//! boundaries from an α-spending function, and the saddlepoint tail of a sum of binomials.
//!
//! - Boundaries: Lan and DeMets, "Discrete sequential boundaries for clinical trials",
//!   Biometrika 1983, computed with the recursive numerical integration of Armitage,
//!   McPherson and Rowe, "Repeated significance tests on accumulating data", JRSS A 1969
//!   (as in Jennison and Turnbull, "Group Sequential Methods", 2000, chapter 19). The
//!   score process is a Brownian motion in information time; the sub-density of paths that
//!   have not crossed is carried from look to look on a grid of cells, piecewise constant
//!   within each cell, and the normal kernel is integrated over each cell exactly (so looks
//!   that add almost no information are handled without loss of accuracy).
//! - Tails: the Lugannani-Rice saddlepoint approximation ("Saddle point approximation for
//!   the distribution of the sum of independent random variables", Adv. Appl. Prob. 1980)
//!   with Daniels' continuity correction for lattice variables ("Tail probability
//!   approximations", Int. Stat. Review 1987), for a sum of independent binomials: the
//!   conditional distribution of the candidate's bad events given each stratum's total.

use std::collections::HashMap;
use std::f64::consts::{PI, SQRT_2};
use std::sync::{Arc, Mutex, OnceLock};

use statrs::distribution::{ContinuousCDF, StudentsT};
use statrs::function::erf::{erfc, erfc_inv};

/// `Φ(x)`, the standard normal distribution function.
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// `1 − Φ(x)`, accurate in the upper tail.
pub fn norm_sf(x: f64) -> f64 {
    0.5 * erfc(x / SQRT_2)
}

/// The standard normal density.
pub fn norm_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// The upper-tail quantile: `x` with `1 − Φ(x) = p` (`+∞` for `p ≤ 0`).
pub fn norm_isf(p: f64) -> f64 {
    if p <= 0.0 {
        f64::INFINITY
    } else if p >= 1.0 {
        f64::NEG_INFINITY
    } else {
        SQRT_2 * erfc_inv(2.0 * p)
    }
}

/// The upper-tail quantile of Student's t with `df` degrees of freedom (`+∞` for `p ≤ 0`
/// or `df < 1`). Large `df` use the Cornish-Fisher expansion in `1/df` (Abramowitz and
/// Stegun 26.7.5), small ones the exact inverse.
pub fn t_isf(p: f64, df: f64) -> f64 {
    if p <= 0.0 || df.is_nan() || df < 1.0 {
        return f64::INFINITY;
    }
    let z = norm_isf(p);
    if df.is_infinite() {
        return z;
    }
    if df >= 100.0 {
        let (z2, n) = (z * z, df);
        let g1 = z * (z2 + 1.0) / 4.0;
        let g2 = z * ((5.0 * z2 + 16.0) * z2 + 3.0) / 96.0;
        let g3 = z * (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / 384.0;
        return z + g1 / n + g2 / (n * n) + g3 / (n * n * n);
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.inverse_cdf(1.0 - p),
        Err(_) => f64::INFINITY,
    }
}

/// `∫ Φ = x Φ(x) + φ(x)`, the antiderivative of the normal distribution function.
fn phi_integral(x: f64) -> f64 {
    if x < -38.0 {
        0.0
    } else if x > 38.0 {
        x
    } else {
        x * norm_cdf(x) + norm_pdf(x)
    }
}

/// Cells per look in the recursive integration.
const CELLS: usize = 240;
/// How many standard deviations below zero the grid reaches.
const GRID_DEPTH: f64 = 8.0;

/// Paths that have not crossed by a look: cell edges and the probability in each cell.
struct Continuation {
    edges: Vec<f64>,
    mass: Vec<f64>,
}

impl Continuation {
    /// The probability that a path in cell `j`, moved by `N(0, σ²)`, ends below `a`
    /// (the cell's mass spread evenly over it).
    fn below(&self, j: usize, a: f64, sigma: f64) -> f64 {
        let (lo, hi) = (self.edges[j], self.edges[j + 1]);
        let h = hi - lo;
        if sigma <= 0.0 || sigma < 1e-9 * h {
            return ((a - lo) / h).clamp(0.0, 1.0);
        }
        (sigma / h * (phi_integral((a - lo) / sigma) - phi_integral((a - hi) / sigma)))
            .clamp(0.0, 1.0)
    }

    /// The probability of having gone on so far and being at or above `b` at the next
    /// look, `σ²` of information later.
    fn crossing(&self, b: f64, sigma: f64) -> f64 {
        (0..self.mass.len())
            .map(|j| self.mass[j] * (1.0 - self.below(j, b, sigma)))
            .sum()
    }

    /// The continuation at the next look: the cells of `[lo, b)`.
    fn step(&self, lo: f64, b: f64, sigma: f64) -> Continuation {
        let edges = cell_edges(lo, b);
        let mut mass = vec![0.0; CELLS];
        for j in 0..self.mass.len() {
            if self.mass[j] < 1e-300 {
                continue;
            }
            let mut previous = self.below(j, edges[0], sigma);
            for (i, m) in mass.iter_mut().enumerate() {
                let next = self.below(j, edges[i + 1], sigma);
                *m += self.mass[j] * (next - previous);
                previous = next;
            }
        }
        Continuation { edges, mass }
    }
}

fn cell_edges(lo: f64, hi: f64) -> Vec<f64> {
    let h = (hi - lo) / CELLS as f64;
    (0..=CELLS).map(|i| lo + h * i as f64).collect()
}

/// The first look's continuation: `S ~ N(0, t)` below `b`.
fn first(t: f64, b: f64) -> Continuation {
    let sd = t.sqrt();
    let edges = cell_edges(-GRID_DEPTH * sd, b.min(GRID_DEPTH * sd));
    let mass = edges
        .windows(2)
        .map(|e| norm_cdf(e[1] / sd) - norm_cdf(e[0] / sd))
        .collect();
    Continuation { edges, mass }
}

/// Where the grid of look `k` ends: the boundary, or far above the mean when the look
/// spends nothing.
fn grid_top(b: f64, t: f64) -> f64 {
    b.min(GRID_DEPTH * t.sqrt())
}

/// The probability of crossing each boundary for the first time, for a standard Brownian
/// motion `S(t)` observed at `times` (increasing information, `t > 0`) against the
/// boundaries `z` on the z-scale (`S(t)/√t ≥ z`); `+∞` is a look that cannot cross.
pub fn crossing_probabilities(times: &[f64], z: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(times.len());
    let mut state: Option<Continuation> = None;
    let mut previous_t = 0.0;
    for (&t, &zk) in times.iter().zip(z) {
        let b = zk * t.sqrt();
        let sigma = (t - previous_t).max(0.0).sqrt();
        let (p, next) = match &state {
            None => (norm_sf(zk), first(t, b)),
            Some(c) => {
                let p = if b.is_finite() {
                    c.crossing(b, sigma)
                } else {
                    0.0
                };
                (p, c.step(-GRID_DEPTH * t.sqrt(), grid_top(b, t), sigma))
            }
        };
        out.push(p);
        state = Some(next);
        previous_t = t;
    }
    out
}

/// Boundaries on the z-scale for looks at information `times` that spend exactly the
/// cumulative false-alarm probabilities `spent` (non-decreasing, below 1): the first
/// crossing at look `k` has probability `spent[k] − spent[k − 1]` under no harm. A look
/// that spends nothing gets `+∞`.
pub fn boundaries(times: &[f64], spent: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(times.len());
    let mut state: Option<Continuation> = None;
    let mut previous_t = 0.0;
    let mut previous_spent = 0.0;
    for (&t, &s) in times.iter().zip(spent) {
        let target = s - previous_spent;
        let sd = t.sqrt();
        let sigma = (t - previous_t).max(0.0).sqrt();
        let z = if target <= 1e-15 {
            f64::INFINITY
        } else {
            match &state {
                None => norm_isf(target),
                Some(c) => {
                    // The crossing probability falls as the boundary rises: bisect.
                    let (mut lo, mut hi) = (-10.0_f64, 40.0_f64);
                    if c.crossing(hi * sd, sigma) >= target {
                        hi
                    } else if c.crossing(lo * sd, sigma) <= target {
                        lo
                    } else {
                        for _ in 0..60 {
                            let mid = 0.5 * (lo + hi);
                            if c.crossing(mid * sd, sigma) > target {
                                lo = mid;
                            } else {
                                hi = mid;
                            }
                        }
                        0.5 * (lo + hi)
                    }
                }
            }
        };
        let b = z * sd;
        state = Some(match &state {
            None => first(t, b),
            Some(c) => c.step(-GRID_DEPTH * sd, grid_top(b, t), sigma),
        });
        out.push(z);
        previous_t = t;
        previous_spent = s.max(previous_spent);
    }
    out
}

/// The spending function: the share of the plan's budget spent by information fraction
/// `t`. Hwang, Shih and DeCani's family ("Group sequential designs using a family of type
/// I error probability spending functions", Stat. Med. 1990), `(1 − e^{−γt})/(1 − e^{−γ})`
/// (positive `γ` spends early, Pocock-like near 1; negative late, O'Brien-Fleming-like
/// near −4), for all but [`SPENDING_FLOOR`] of the budget, which is spent in proportion to
/// information (`t`) so that no part of the plan is left without a share.
pub fn spending(t: f64, gamma: f64) -> f64 {
    let t = t.clamp(0.0, 1.0);
    let shaped = if gamma.abs() < 1e-9 {
        t
    } else {
        (-gamma * t).exp_m1() / (-gamma).exp_m1()
    };
    (1.0 - SPENDING_FLOOR) * shaped + SPENDING_FLOOR * t
}

/// The share of the budget spent in proportion to information, whatever `γ` front-loads.
pub const SPENDING_FLOOR: f64 = 0.04;

type CacheKey = Vec<u64>;

fn cache() -> &'static Mutex<HashMap<CacheKey, Arc<Vec<f64>>>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Arc<Vec<f64>>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The share of the budget spent by planned look `k` at information `t`: the first look
/// spends nothing (one look has no spread between looks to estimate the dispersion from,
/// so it never sets a boundary), and its share is carried over to the second.
pub fn planned_spending(k: usize, t: f64, gamma: f64) -> f64 {
    if k == 0 { 0.0 } else { spending(t, gamma) }
}

/// [`boundaries`] for the planned looks at `times` spending `budget ·`
/// [`planned_spending`], computed once per plan and kept (the simulator makes millions of
/// looks on one plan).
pub fn planned_boundaries(times: &[f64], budget: f64, gamma: f64) -> Arc<Vec<f64>> {
    let mut key: CacheKey = times.iter().map(|t| t.to_bits()).collect();
    key.push(budget.to_bits());
    key.push(gamma.to_bits());
    if let Some(found) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return found;
    }
    let spent: Vec<f64> = times
        .iter()
        .enumerate()
        .map(|(k, &t)| budget * planned_spending(k, t, gamma))
        .collect();
    let computed = Arc::new(boundaries(times, &spent));
    if let Ok(mut c) = cache().lock() {
        if c.len() > 256 {
            c.clear();
        }
        c.insert(key, computed.clone());
    }
    computed
}

/// One stratum of a sum of independent binomials: `size` trials (may be fractional: a
/// quasi-binomial with its events scaled down by the dispersion) of probability `p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BinomialTerm {
    /// Trials.
    pub size: f64,
    /// Success probability.
    pub p: f64,
}

/// A centred Gamma variable `scale·(G − shape)`, `G ~ Gamma(shape, 1)`: the part of a
/// count that bursts add beyond its binomial noise (a negative binomial is a Poisson whose
/// mean is Gamma), with a negative `scale` when the count enters a sum with a minus sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GammaTerm {
    /// Gamma shape: the squared mean over the variance of the bursty mean.
    pub shape: f64,
    /// Scale, negative for a count that is subtracted.
    pub scale: f64,
}

/// `P(Y ≥ y)` for `Y` the sum of independent binomials `terms`, by the Lugannani-Rice
/// saddlepoint approximation with Daniels' continuity correction (`lattice` is the lattice
/// step, 0 for none). Returns `(tail, mean, variance)`.
pub fn binomial_sum_sf(terms: &[BinomialTerm], y: f64, lattice: f64) -> (f64, f64, f64) {
    mixed_sum_sf(terms, &[], y, lattice)
}

/// [`binomial_sum_sf`] for the sum of independent binomials `terms` and centred Gammas
/// `gammas` (the continuity correction applies to a sum without Gammas only).
pub fn mixed_sum_sf(
    terms: &[BinomialTerm],
    gammas: &[GammaTerm],
    y: f64,
    lattice: f64,
) -> (f64, f64, f64) {
    let gammas: Vec<GammaTerm> = gammas
        .iter()
        .copied()
        .filter(|g| g.shape > 0.0 && g.scale != 0.0 && g.shape.is_finite())
        .collect();
    let lattice = if gammas.is_empty() { lattice } else { 0.0 };
    let mean: f64 = terms.iter().map(|t| t.size * t.p).sum();
    let variance: f64 = terms
        .iter()
        .map(|t| t.size * t.p * (1.0 - t.p))
        .sum::<f64>()
        + gammas
            .iter()
            .map(|g| g.shape * g.scale * g.scale)
            .sum::<f64>();
    // A positive Gamma has no largest value; a negative one is largest at `G = 0`.
    let max: f64 = if gammas.iter().any(|g| g.scale > 0.0) {
        f64::INFINITY
    } else {
        terms
            .iter()
            .filter(|t| t.p > 0.0)
            .map(|t| t.size)
            .sum::<f64>()
            - gammas.iter().map(|g| g.shape * g.scale).sum::<f64>()
    };
    if variance <= 0.0 {
        return (if y <= mean { 1.0 } else { 0.0 }, mean, variance);
    }
    let target = y - 0.5 * lattice;
    if target >= max {
        // Beyond the largest possible value (only the top lattice point remains).
        let top = if gammas.is_empty() {
            terms.iter().map(|t| t.size * t.p.ln()).sum::<f64>().exp()
        } else {
            0.0
        };
        return (if y <= max { top } else { 0.0 }, mean, variance);
    }
    let sd = variance.sqrt();
    if (target - mean).abs() < 1e-3 * sd {
        return (norm_sf((target - mean) / sd), mean, variance);
    }
    // K(θ) = Σ n ln(1 − p + p e^θ) + Σ −a ln(1 − sθ) − asθ, defined where every sθ < 1.
    let cgf = |theta: f64| -> (f64, f64, f64) {
        let (mut k, mut k1, mut k2) = (0.0, 0.0, 0.0);
        for t in terms {
            if t.p <= 0.0 || t.size <= 0.0 {
                continue;
            }
            // ln(1 − p + p e^θ), stably for large |θ|.
            let (l, q) = if theta > 0.0 {
                let a = (1.0 - t.p) * (-theta).exp();
                (theta + (t.p + a).ln(), t.p / (t.p + a))
            } else {
                let b = t.p * theta.exp();
                ((1.0 - t.p + b).ln(), b / (1.0 - t.p + b))
            };
            k += t.size * l;
            k1 += t.size * q;
            k2 += t.size * q * (1.0 - q);
        }
        for g in &gammas {
            let d = 1.0 - g.scale * theta;
            k += -g.shape * d.ln() - g.shape * g.scale * theta;
            k1 += g.shape * g.scale * (1.0 / d - 1.0);
            k2 += g.shape * g.scale * g.scale / (d * d);
        }
        (k, k1, k2)
    };
    // The CGF's domain: below 1/s for every positive scale, above it for every negative.
    let mut hi = gammas
        .iter()
        .filter(|g| g.scale > 0.0)
        .map(|g| 1.0 / g.scale)
        .fold(f64::INFINITY, f64::min);
    let mut lo = gammas
        .iter()
        .filter(|g| g.scale < 0.0)
        .map(|g| 1.0 / g.scale)
        .fold(f64::NEG_INFINITY, f64::max);
    // K' rises with θ: a Newton step that leaves the bracket is replaced by a step halfway
    // to the bracket's end.
    let mut theta = ((target - mean) / variance).clamp(
        if lo.is_finite() { 0.5 * lo } else { f64::MIN },
        if hi.is_finite() { 0.5 * hi } else { f64::MAX },
    );
    for _ in 0..200 {
        let (_, k1, k2) = cgf(theta);
        if k1 < target {
            lo = lo.max(theta);
        } else {
            hi = hi.min(theta);
        }
        if k2 <= 0.0 {
            break;
        }
        let newton = theta - ((k1 - target) / k2).clamp(-2.0, 2.0);
        let next = if newton >= hi {
            0.5 * (theta + hi)
        } else if newton <= lo {
            0.5 * (theta + lo)
        } else {
            newton
        };
        let step = next - theta;
        theta = next;
        if step.abs() < 1e-12 * theta.abs().max(1.0) {
            break;
        }
    }
    let (k, _, k2) = cgf(theta);
    let w = theta.signum() * (2.0 * (theta * target - k)).max(0.0).sqrt();
    let u = if lattice > 0.0 {
        2.0 * (theta * lattice / 2.0).sinh() / lattice * k2.sqrt()
    } else {
        theta * k2.sqrt()
    };
    if w.abs() < 1e-6 || u.abs() < 1e-12 {
        return (norm_sf((target - mean) / sd), mean, variance);
    }
    let tail = norm_sf(w) + norm_pdf(w) * (1.0 / u - 1.0 / w);
    (tail.clamp(0.0, 1.0), mean, variance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn normal_tails_match_scipy() {
        // scipy.stats.norm.sf(x), norm.isf(p)
        assert!(close(norm_sf(1.959963984540054), 0.025, 1e-9));
        assert!(close(norm_sf(5.0), 2.866515718791933e-07, 1e-10));
        assert!(close(norm_isf(1e-4), 3.7190164854556804, 1e-12));
        assert!(close(norm_isf(0.0125), 2.241402727604945, 1e-12));
        assert!(norm_isf(0.0).is_infinite());
    }

    #[test]
    fn student_t_quantiles_match_scipy() {
        // scipy.stats.t.isf(p, df)
        for (p, df, expected) in [
            (0.025, 10.0, 2.2281388519862753),
            (0.001, 5.0, 5.893429531356009),
            (1e-4, 30.0, 4.233985957272021),
            (1e-4, 150.0, 3.8130121989412262),
            (0.005, 1000.0, 2.580754698065951),
        ] {
            let got = t_isf(p, df);
            assert!(
                close(got, expected, 2e-6),
                "t.isf({p}, {df}) = {got}, scipy {expected}"
            );
        }
        assert!(t_isf(0.01, 0.5).is_infinite());
        assert!(close(t_isf(0.01, f64::INFINITY), norm_isf(0.01), 1e-15));
    }

    #[test]
    fn pocock_and_obrien_fleming_constants_give_their_level() {
        // Jennison and Turnbull (2000), Table 2.1 (two-sided α = 0.05, K = 5 equal looks):
        // Pocock C_P = 2.413, O'Brien-Fleming C_B = 2.040 (boundary C_B·sqrt(K/k)). One
        // side of a two-sided test crosses with probability 0.025 (less a negligible share
        // of paths that would cross the lower boundary first).
        let times: Vec<f64> = (1..=5).map(|k| f64::from(k) / 5.0).collect();
        let pocock = crossing_probabilities(&times, &[2.413; 5]);
        let total: f64 = pocock.iter().sum();
        assert!((total - 0.025).abs() < 2e-4, "Pocock: {total}");
        let obf: Vec<f64> = (1..=5)
            .map(|k| 2.040 * (5.0 / f64::from(k)).sqrt())
            .collect();
        let total: f64 = crossing_probabilities(&times, &obf).iter().sum();
        assert!((total - 0.025).abs() < 2e-4, "O'Brien-Fleming: {total}");
    }

    #[test]
    fn boundaries_spend_what_they_are_given() {
        // Unequal looks, one spending nothing, one adding almost no information.
        let times = [0.01, 0.0101, 0.2, 0.5, 0.5000001, 1.0];
        let spent = [0.002, 0.002, 0.01, 0.03, 0.0301, 0.05];
        let z = boundaries(&times, &spent);
        assert!(z[1].is_infinite());
        let crossed = crossing_probabilities(&times, &z);
        let mut cumulative = 0.0;
        for (k, p) in crossed.iter().enumerate() {
            cumulative += p;
            assert!(
                (cumulative - spent[k]).abs() < 2e-5,
                "look {k}: {cumulative} vs {}",
                spent[k]
            );
        }
        // The first boundary is the fixed-sample quantile.
        assert!(close(z[0], norm_isf(0.002), 1e-12));
    }

    #[test]
    fn boundaries_hold_their_level_by_monte_carlo() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let seed = 20_261_125;
        println!("seed {seed}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let times: Vec<f64> = (1..=20).map(|k| (f64::from(k) / 20.0).powi(2)).collect();
        let spent: Vec<f64> = times.iter().map(|&t| 0.05 * spending(t, 4.0)).collect();
        let z = boundaries(&times, &spent);
        let runs = 200_000;
        let mut crossed = 0;
        for _ in 0..runs {
            let (mut s, mut previous) = (0.0, 0.0);
            for (k, &t) in times.iter().enumerate() {
                let e: f64 = StandardNormal.sample(&mut rng);
                s += e * (t - previous).sqrt();
                previous = t;
                if s / t.sqrt() >= z[k] {
                    crossed += 1;
                    break;
                }
            }
        }
        let rate = f64::from(crossed) / f64::from(runs);
        // Binomial standard error at 5 %: 0.00049; allow four of them.
        assert!((rate - 0.05).abs() < 0.002, "Monte Carlo level {rate}");
    }

    #[test]
    fn the_tail_of_binomials_and_gammas_matches_scipy() {
        let gamma = |shape, scale| GammaTerm { shape, scale };
        let sf = |binomials: &[BinomialTerm], gammas: &[GammaTerm], y| {
            mixed_sum_sf(binomials, gammas, y, 1.0).0
        };
        // A difference of two Exp(1), a Laplace: scipy.stats.laplace.sf(3).
        let laplace = sf(&[], &[gamma(1.0, 1.0), gamma(1.0, -1.0)], 3.0);
        assert!(close(laplace, 0.024893534183931972, 0.03), "{laplace}");
        // 2(G − 3), G ~ Gamma(3): scipy.stats.gamma.sf(9, 3).
        let one = sf(&[], &[gamma(3.0, 2.0)], 12.0);
        assert!(close(one, 0.006232195106377317, 0.005), "{one}");
        // B ± 2(G − 3), B ~ Binomial(40, 0.3), by convolution:
        // sum(binom.pmf(b, 40, .3) * gamma.sf((y - b + 6) / 2, 3) for b in 0..=40), and
        // with gamma.cdf((b - y + 6) / 2, 3) for the subtracted Gamma.
        let b = [BinomialTerm { size: 40.0, p: 0.3 }];
        for (y, plus, minus) in [
            (20.0, 0.05014376333579125, 0.024660082310514954),
            (26.0, 0.005489059985373428, 0.00013572673466399272),
            (32.0, 0.00048418754881967576, 3.495274971686189e-08),
        ] {
            let up = sf(&b, &[gamma(3.0, 2.0)], y);
            assert!(close(up, plus, 0.01), "{y}: {up}");
            let down = sf(&b, &[gamma(3.0, -2.0)], y);
            assert!(close(down, minus, 0.01), "{y}: {down}");
        }
        // Beyond the largest value of B − 2(G − 3), 40 + 6: nothing.
        assert_eq!(sf(&b, &[gamma(3.0, -2.0)], 46.5), 0.0);
        // An empty Gamma (no bursts: shape or scale 0) is no Gamma: the binomial's tail,
        // with its continuity correction, scipy.stats.binom.sf(19, 40, .3).
        let empty = sf(&b, &[gamma(0.0, 0.0), gamma(2.0, 0.0)], 20.0);
        assert!(close(empty, 0.006254504372435016, 0.05), "{empty}");
    }

    #[test]
    fn the_first_planned_look_carries_its_share_to_the_second() {
        let times = [0.002, 0.004, 0.5, 1.0];
        assert_eq!(planned_spending(0, times[0], 45.0), 0.0);
        let z = planned_boundaries(&times, 0.05, 45.0);
        assert!(z[0].is_infinite());
        let crossed = crossing_probabilities(&times, &z);
        assert_eq!(crossed[0], 0.0);
        let by_second = crossed[0] + crossed[1];
        assert!(
            (by_second - 0.05 * spending(times[1], 45.0)).abs() < 2e-6,
            "{by_second}"
        );
        let total: f64 = crossed.iter().sum();
        assert!((total - 0.05).abs() < 2e-5, "{total}");
    }

    #[test]
    fn spending_is_the_hwang_shih_decani_function_with_a_floor() {
        // f = lambda t: 0.96 * (1 - np.exp(-45 * t)) / (1 - np.exp(-45)) + 0.04 * t
        // (NumPy 2.4): γ = 45, floor 0.04
        assert!(close(spending(0.02, 45.0), 0.5704931266490249, 1e-12));
        assert!(close(spending(0.1, 45.0), 0.9533353633232874, 1e-12));
        assert!(close(spending(0.5, 45.0), 0.9799999998375778, 1e-12));
        // g = lambda t: 0.96 * (1 - np.exp(-0.9 * t)) / (1 - np.exp(-0.9)) + 0.04 * t
        assert!(close(spending(0.5, 0.9), 0.606213664591253, 1e-12));
        // γ → 0 is the linear function.
        assert!(close(spending(0.3, 0.0), 0.3, 1e-15));
        assert_eq!(spending(0.0, 45.0), 0.0);
        assert!(close(spending(1.0, 45.0), 1.0, 1e-15));
        assert!(close(spending(3.0, 0.9), 1.0, 1e-15));
    }

    #[test]
    fn binomial_tails_match_scipy() {
        // scipy.stats.binom.sf(k - 1, n, p) = P(X ≥ k)
        for (n, p, k, expected) in [
            (300.0, 0.01, 9.0, 0.003_602_712_150_035_393),
            (300.0, 0.01, 12.0, 6.292_191_267_817_83e-5),
            (3000.0, 0.05, 180.0, 0.007_923_770_405_716_9),
            (40.0, 0.3, 20.0, 0.006_254_504_372_435_016),
        ] {
            let (tail, mean, _) = binomial_sum_sf(&[BinomialTerm { size: n, p }], k, 1.0);
            assert!(close(mean, n * p, 1e-12));
            assert!(
                close(tail, expected, 0.03),
                "n {n} p {p} k {k}: {tail} vs scipy {expected}"
            );
        }
    }

    #[test]
    fn a_sum_of_binomials_matches_its_exact_tail() {
        // Exact by convolution of scipy.stats.binom.pmf(range(31), 30, 0.01) and
        // binom.pmf(range(151), 150, 0.05): P(Y ≥ 16) = 1 - cumsum(np.convolve(a, b))[15]
        let terms = [
            BinomialTerm {
                size: 30.0,
                p: 0.01,
            },
            BinomialTerm {
                size: 150.0,
                p: 0.05,
            },
        ];
        let (tail, _, _) = binomial_sum_sf(&terms, 16.0, 1.0);
        assert!(close(tail, 0.005_315_140_378_290_062, 0.03), "{tail}");
    }
}
