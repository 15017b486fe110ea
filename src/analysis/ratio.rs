//! Share counts (errors over requests, slow over all requests), the tolerated harm, and the
//! per-stage confidence sequence the `max` test uses. The comparison of the two cohorts
//! (`maxIncrease`) is [`super::compare`]'s, over the whole rollout; the two-sample
//! confidence sequence below ([`fn@test`]) is the per-stage method it replaced, kept as a
//! reference.
//!
//! Each look tests `Δ = p_candidate − (1 + relative)·p_baseline − absolute`, one-sided,
//! on the counts of the current stage so far, with an asymptotic confidence sequence
//! (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory
//! and asymptotic confidence sequences", Annals of Statistics 2024): a lower confidence
//! bound on `Δ` that holds at every look at once, so looking every minute does not raise
//! the false-rollback rate above `alpha`. The rollout fails when the bound is above zero.
//!
//! The bound uses the normal-mixture boundary in the clock of effective sample size
//! `t = n_b·n_c / (n_b + n_c)` (request volumes, which do not depend on the error rates),
//! tuned to be tightest at the stage's expected end (`t*`). `t*` is fixed at the first
//! look of a stage from the request volume and the elapsed share of the stage, and kept
//! in status, so every later look of the stage uses the same boundary.

/// Bad and total counts of one cohort (floats: Prometheus' `increase()` extrapolates).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Counts {
    /// Bad events (errors, slow requests).
    pub bad: f64,
    /// All events (requests).
    pub total: f64,
}

impl Counts {
    /// The observed share, if there is any event.
    pub fn share(self) -> Option<f64> {
        (self.total > 0.0).then(|| self.bad / self.total)
    }

    /// The variance of the share's estimate, with the share smoothed by half an event
    /// (`(x + ½)/(n + 1)`) so a cohort with no bad events yet still has a positive one.
    fn share_variance(self) -> f64 {
        let smoothed = (self.bad + 0.5) / (self.total + 1.0);
        smoothed * (1.0 - smoothed) / self.total
    }
}

/// The harm tolerated before rolling back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// The candidate may be this fraction worse (0.1: 1 % may become 1.1 %).
    Relative(f64),
    /// The candidate may be this many points worse, as a fraction (0.005: 1 % → 1.5 %).
    Absolute(f64),
}

/// Fewest events each cohort needs before a share metric can pass.
pub const MIN_COHORT_SAMPLES: f64 = 100.0;

/// Shortest elapsed share of a stage used to project its expected end (avoids
/// projecting from the first seconds).
const MIN_ELAPSED_FRACTION: f64 = 0.05;

/// The outcome of one sequential test at one look.
#[derive(Clone, Debug, PartialEq)]
pub struct SequentialTest {
    /// `Δ̂`: the estimated harm beyond the tolerance (positive is worse).
    pub effect: f64,
    /// Lower confidence bound on `Δ`, valid over all looks of the stage.
    pub lower_bound: f64,
    /// Standard error of `Δ̂`.
    pub standard_error: f64,
    /// The boundary `Δ̂ / se` had to cross at this look.
    pub z_boundary: f64,
    /// The effective sample size at this look.
    pub effective_samples: f64,
    /// The effective sample size the boundary is tuned for.
    pub target_samples: f64,
    /// Whether the bound excludes "no harm": roll back.
    pub reject: bool,
}

/// The estimated harm of the candidate against a tolerance, and its standard error.
///
/// Shares are smoothed by half an event for the variance (`(x + ½)/(n + 1)`), so a cohort
/// with no bad events yet still has a positive variance.
pub fn harm(baseline: Counts, candidate: Counts, tolerance: Tolerance) -> Option<(f64, f64)> {
    let (pb, pc) = (baseline.share()?, candidate.share()?);
    let (k, a) = match tolerance {
        Tolerance::Relative(r) => (1.0 + r, 0.0),
        Tolerance::Absolute(a) => (1.0, a),
    };
    let variance = candidate.share_variance() + k * k * baseline.share_variance();
    Some((pc - k * pb - a, variance.sqrt()))
}

/// The effective sample size of a two-cohort comparison.
pub fn effective_samples(baseline: Counts, candidate: Counts) -> f64 {
    let (nb, nc) = (baseline.total, candidate.total);
    if nb <= 0.0 || nc <= 0.0 {
        0.0
    } else {
        nb * nc / (nb + nc)
    }
}

/// The target effective sample size: the current one projected to the stage's end.
pub fn projected_target(effective: f64, elapsed_fraction: f64) -> f64 {
    effective / elapsed_fraction.clamp(MIN_ELAPSED_FRACTION, 1.0)
}

/// Solves `x − ln(1 + x) = 2·ln(1/α)`: the mixture tuning that makes the boundary
/// tightest at the target sample size (`ρ² = x / t*`).
fn tuning(alpha: f64) -> f64 {
    let target = 2.0 * (1.0 / alpha).ln();
    // Newton from a start above the root; the function is convex and increasing.
    let mut x = target + (1.0 + target).ln() + 1.0;
    for _ in 0..50 {
        let f = x - (1.0 + x).ln() - target;
        let step = f / (1.0 - 1.0 / (1.0 + x));
        x -= step;
        if step.abs() < 1e-12 * x {
            break;
        }
    }
    x
}

/// The one-sided normal-mixture boundary on `Δ̂/se` at effective sample size `t`, tuned
/// for `target` and valid at level `alpha` over all looks:
/// `sqrt((1 + 1/(tρ²)) · (2 ln(1/α) + ln(1 + tρ²)))` with `ρ² = x/target`.
pub fn mixture_boundary(t: f64, target: f64, alpha: f64) -> f64 {
    let rho2 = tuning(alpha) / target.max(1.0);
    let v = t * rho2;
    ((1.0 + 1.0 / v) * (2.0 * (1.0 / alpha).ln() + (1.0 + v).ln())).sqrt()
}

/// One look of the sequential test: `None` when a cohort has no events yet.
pub fn test(
    baseline: Counts,
    candidate: Counts,
    tolerance: Tolerance,
    alpha: f64,
    target: f64,
) -> Option<SequentialTest> {
    let (effect, standard_error) = harm(baseline, candidate, tolerance)?;
    Some(sequential(
        effect,
        standard_error,
        effective_samples(baseline, candidate),
        target,
        alpha,
    ))
}

/// The one-sample version for an absolute ceiling on the candidate's share: a lower
/// confidence bound on `p_candidate − max`, valid over all looks.
pub fn test_ceiling(
    candidate: Counts,
    max: f64,
    alpha: f64,
    target: f64,
) -> Option<SequentialTest> {
    let pc = candidate.share()?;
    let standard_error = candidate.share_variance().sqrt();
    Some(sequential(
        pc - max,
        standard_error,
        candidate.total,
        target,
        alpha,
    ))
}

fn sequential(
    effect: f64,
    standard_error: f64,
    effective: f64,
    target: f64,
    alpha: f64,
) -> SequentialTest {
    let z_boundary = mixture_boundary(effective, target, alpha);
    let lower_bound = effect - z_boundary * standard_error;
    SequentialTest {
        effect,
        lower_bound,
        standard_error,
        z_boundary,
        effective_samples: effective,
        target_samples: target,
        reject: lower_bound > 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn tuning_and_boundary_match_scipy() {
        // x: scipy.optimize.brentq(lambda x: x - np.log1p(x) - 2*np.log(1/a), 1e-9, 1e4, xtol=1e-14)
        // boundary at t = t*: np.sqrt((1 + 1/x) * (2*np.log(1/a) + np.log1p(x)))
        for (alpha, x, boundary) in [
            (0.05, 8.211968062068253, 3.035122413028551),
            (0.0125, 11.271317933331929, 3.5030440952594257),
            (0.001, 16.68842079085992, 4.205760429560856),
        ] {
            assert!(
                close(tuning(alpha), x, 1e-10),
                "alpha {alpha}: {} vs {x}",
                tuning(alpha)
            );
            assert!(
                close(mixture_boundary(700.0, 700.0, alpha), boundary, 1e-10),
                "alpha {alpha}"
            );
        }
    }

    #[test]
    fn tuning_solves_its_equation() {
        for alpha in [0.05, 0.0125, 0.001] {
            let x = tuning(alpha);
            assert!(
                close(x - (1.0 + x).ln(), 2.0 * (1.0 / alpha).ln(), 1e-12),
                "alpha {alpha}"
            );
        }
    }

    #[test]
    fn the_boundary_is_tightest_at_its_target() {
        // The tuned boundary in the sum scale, z·sqrt(t), is minimal over targets at t = target.
        let alpha = 0.0125;
        let at = |target: f64| mixture_boundary(1_000.0, target, alpha);
        let tuned = at(1_000.0);
        for other in [200.0, 500.0, 2_000.0, 5_000.0] {
            assert!(
                at(other) > tuned,
                "target {other} gives a tighter boundary at 1000"
            );
        }
        // And it is wider than the fixed-sample one-sided z quantile (1.96 at 2.5 %).
        assert!(tuned > 2.241, "{tuned}"); // norm.ppf(1 - 0.0125) = 2.2414 (scipy.stats)
    }

    #[test]
    fn boundary_matches_the_closed_form() {
        // sqrt((1 + 1/v)(2 ln(1/α) + ln(1 + v))) with v = t·x/t*; at t = t*, v = x.
        let alpha: f64 = 0.05;
        let x = tuning(alpha);
        let expected = ((1.0 + 1.0 / x) * (2.0 * (1.0 / alpha).ln() + (1.0 + x).ln())).sqrt();
        assert!(close(
            mixture_boundary(500.0, 500.0, alpha),
            expected,
            1e-12
        ));
    }

    #[test]
    fn harm_follows_the_tolerance() {
        let b = Counts {
            bad: 100.0,
            total: 10_000.0,
        };
        let c = Counts {
            bad: 30.0,
            total: 1_000.0,
        };
        let (rel, _) = harm(b, c, Tolerance::Relative(0.1)).unwrap();
        assert!(close(rel, 0.03 - 1.1 * 0.01, 1e-12));
        let (abs, se) = harm(b, c, Tolerance::Absolute(0.005)).unwrap();
        assert!(close(abs, 0.03 - 0.01 - 0.005, 1e-12));
        let sb: f64 = 100.5 / 10_001.0;
        let sc = 30.5 / 1_001.0;
        let expected = (sc * (1.0 - sc) / 1_000.0 + sb * (1.0 - sb) / 10_000.0).sqrt();
        assert!(close(se, expected, 1e-12));
        assert!(harm(Counts::default(), c, Tolerance::Relative(0.1)).is_none());
    }

    #[test]
    fn a_clear_regression_is_rejected_and_equal_rates_are_not() {
        let b = Counts {
            bad: 1_000.0,
            total: 100_000.0,
        };
        let worse = Counts {
            bad: 60.0,
            total: 2_000.0,
        }; // 3 % vs 1 %
        let same = Counts {
            bad: 20.0,
            total: 2_000.0,
        };
        let target = effective_samples(b, worse);
        assert!(
            test(b, worse, Tolerance::Relative(0.1), 0.0125, target)
                .unwrap()
                .reject
        );
        assert!(
            !test(b, same, Tolerance::Relative(0.1), 0.0125, target)
                .unwrap()
                .reject
        );
    }

    #[test]
    fn the_ceiling_test_needs_evidence_not_one_unlucky_request() {
        let one_of_thirty = Counts {
            bad: 1.0,
            total: 30.0,
        }; // 3.3 % > 2 %, on 30 requests
        assert!(
            !test_ceiling(one_of_thirty, 0.02, 0.0125, 300.0)
                .unwrap()
                .reject
        );
        let many = Counts {
            bad: 100.0,
            total: 2_000.0,
        }; // 5 % on 2,000
        assert!(test_ceiling(many, 0.02, 0.0125, 2_000.0).unwrap().reject);
    }
}
