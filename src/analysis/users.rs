//! User-level statistics: the variance of a cohort's bad events when users, not requests,
//! are the unit of randomisation.
//!
//! Sluice assigns *users* to cohorts. When some users fail more than others for reasons
//! that have nothing to do with the flag (an old client, a bot, a region), a cohort's
//! error rate differs from the other's just by who is in it, and a variance that treats
//! requests as independent (the binomial, even widened by the spread between looks)
//! understates it. An instrumentation library that keeps each user's request count `n_i`
//! and bad-event count `x_i` since the flag's configuration last changed can export, per
//! cohort, the plain counters `Σn`, `Σx`, `Σn²`, `Σx²` and `Σn·x` ([`UserSums`]): they are
//! updated one request at a time (`(n + 1)² − n² = 2n + 1`).
//!
//! From them, the delta method for the ratio `R = Σx/Σn` of per-user sums gives the
//! cluster-robust variance `Var(R) ≈ Σ(x_i − p·n_i)²/(Σn)²`, with
//! `Σ(x_i − p·n_i)² = Σx² − 2pΣn·x + p²Σn²` ([`UserSums::residual_square`]). Three choices
//! make it usable in a sequential test with few heavy users:
//!
//! - **Residuals under the null.** `p` is the rate the comparison's null hypothesis fits to
//!   the stage (the candidate exactly as bad as tolerated), not the cohort's own ratio. A
//!   small candidate cohort often holds one or two users that carry most of its requests;
//!   residuals around the cohort's own ratio then nearly vanish (the heavy user *is* the
//!   ratio) and the unrestricted cluster-robust variance over-rejects badly. Residuals
//!   with the null imposed keep the heavy user's deviation, and the score divided by them
//!   is bounded by the square root of the number of users that carry the cohort: with
//!   few users, a test has little power, never a false certainty. This is the remedy for
//!   few treated clusters of very different sizes in MacKinnon & Webb, "Wild bootstrap
//!   inference for wildly different cluster sizes", *Journal of Applied Econometrics*
//!   32(2), 2017 (restricted residuals), after Cameron, Gelbach & Miller, "Bootstrap-based
//!   improvements for inference with clustered errors", *Review of Economics and
//!   Statistics* 90(3), 2008.
//! - **The binomial plus what users add.** The variance is `N·p(1 − p)` (today's binomial
//!   at the null rate) plus the *excess*: the squared residuals minus what the same
//!   requests would give if each were its own user (`Σx(1 − 2p) + p²Σn`), which is the sum
//!   over users of the covariances between their own requests (in expectation
//!   `κ p² Σn(n − 1)` when a user's error probability is `p` times a multiplier of
//!   variance `κ`). With each request its own user the excess is exactly 0 and the
//!   variance is today's. The excess is never taken below 0 (never below the binomial),
//!   as the dispersion between looks never is.
//! - **The small-sample correction.** `p` is fitted from the stage's counts, so each
//!   user's residual is shrunk by its leverage `h_i = n_i/N` (its share of the stage's
//!   requests, both cohorts); the expected residual sum is `Σσ_i²(1 − 2h_i + Σh_j²)`. For
//!   users of similar weight that is `(1 − Σh²)Σσ²`, and the excess is divided by
//!   `1 − Σn²/N²` ([`leverage_correction`]): the aggregate form of the bias-reduced
//!   (CR2) correction of Bell & McCaffrey, "Bias reduction in standard errors for linear
//!   regression with multi-stage samples", *Survey Methodology* 28(2), 2002, which with
//!   each request its own user is `N/(N − 1)`, the usual sample-variance factor.
//!
//! Across stages the same users stay in the same cohort (assignment is sticky and stages
//! only add users to the candidate), so the stages' user-level deviations are correlated:
//! [`stratified_inflation`] bounds the variance of their sum by Cauchy-Schwarz (as if the
//! deviations were perfectly correlated), which is valid whatever the users do.

pub use crate::crd::{StratumUsers, UserSums, UserVariance};

impl UserSums {
    /// `Σ(x_i − p·n_i)²`, from the sums (never below 0: rounding of large counters).
    pub fn residual_square(&self, p: f64) -> f64 {
        (self.xx - 2.0 * p * self.nx + p * p * self.nn).max(0.0)
    }

    /// The same sum if each request were its own user: `Σx(1 − 2p) + p²Σn`.
    pub fn residual_square_of_requests(&self, p: f64) -> f64 {
        (self.x * (1.0 - 2.0 * p) + p * p * self.n).max(0.0)
    }

    /// What users add to the squared residuals at rate `p`: the covariances between each
    /// user's own requests (0 when each request is its own user); may be negative.
    pub fn excess(&self, p: f64) -> f64 {
        // `Σ(x² − x) − 2pΣ(n·x − x) + p²Σ(n² − n)`: the same difference, written so that
        // it is exactly 0 when every user has one request.
        (self.xx - self.x) - 2.0 * p * (self.nx - self.x) + p * p * (self.nn - self.n)
    }

    /// Whether the sums are possible: finite, non-negative, `Σx ≤ Σn`, `Σn² ≥ Σn`
    /// (every user has at least one request), `Σx² ≤ Σn·x ≤ Σn²`.
    pub fn is_consistent(&self) -> bool {
        let all = [self.n, self.x, self.nn, self.xx, self.nx];
        // Counters from Prometheus' `increase()` are extrapolated: allow a little slack.
        let slack = |v: f64| 1e-6 * v.abs() + 1e-6;
        all.iter().all(|v| v.is_finite() && *v >= 0.0)
            && self.x <= self.n + slack(self.n)
            && self.nn + slack(self.nn) >= self.n
            && self.xx <= self.nx + slack(self.nx)
            && self.nx <= self.nn + slack(self.nn)
    }

    /// The same users with every event bad (`x_i = n_i`).
    pub fn all_bad(&self) -> UserSums {
        UserSums {
            n: self.n,
            x: self.n,
            nn: self.nn,
            xx: self.nn,
            nx: self.nn,
        }
    }

    /// Kish's effective number of users, `(Σn)²/Σn²`: how many users of equal weight
    /// would carry the cohort's requests as evenly.
    pub fn effective_users(&self) -> f64 {
        if self.nn > 0.0 {
            self.n * self.n / self.nn
        } else {
            0.0
        }
    }
}

/// The small-sample correction of the excess for a stage whose two cohorts' sums are
/// `baseline` and `candidate`: `1/(1 − Σn²/N²)` over both cohorts (see the module's
/// documentation); 1 when the stage has no requests or a single user.
pub fn leverage_correction(baseline: &UserSums, candidate: &UserSums) -> f64 {
    let n = baseline.n + candidate.n;
    if n <= 0.0 {
        return 1.0;
    }
    let concentration = (baseline.nn + candidate.nn) / (n * n);
    if concentration < 1.0 {
        1.0 / (1.0 - concentration)
    } else {
        1.0
    }
}

/// The variance of a cohort's bad events at the null rate `p` from its per-user sums:
/// the binomial `Σn·p(1 − p)` plus the corrected excess, never below the binomial.
pub fn cohort_variance(sums: &UserSums, p: f64, correction: f64) -> f64 {
    let p = p.clamp(0.0, 1.0);
    sums.n * p * (1.0 - p) + correction * sums.excess(p).max(0.0)
}

/// The user-level variances of one stage: each cohort's variance of its bad events and
/// of its ratio, at the null rates `(p_b, p_c)`.
pub fn stage_variance(
    baseline: &UserSums,
    candidate: &UserSums,
    rates: (f64, f64),
) -> UserVariance {
    let correction = leverage_correction(baseline, candidate);
    let (vb, vc) = (
        cohort_variance(baseline, rates.0, correction),
        cohort_variance(candidate, rates.1, correction),
    );
    let ratio = |v: f64, s: &UserSums| if s.n > 0.0 { v / (s.n * s.n) } else { 0.0 };
    let binomial = |s: &UserSums, p: f64| s.n * p * (1.0 - p);
    let over = |v: f64, b: f64| if b > 0.0 { v / b } else { 1.0 };
    UserVariance {
        baseline: ratio(vb, baseline),
        candidate: ratio(vc, candidate),
        baseline_over_binomial: over(vb, binomial(baseline, rates.0)),
        candidate_over_binomial: over(vc, binomial(candidate, rates.1)),
        baseline_effective_users: baseline.effective_users(),
        candidate_effective_users: candidate.effective_users(),
        correction,
    }
}

/// What users add to the variance of a stage's score `(1 − π)x_c − πx_b` beyond the
/// binomial, at the null rates `(p_b, p_c)`: `(1 − π)²·e_c + π²·e_b`, each cohort's
/// corrected excess (never below 0).
pub fn score_excess(users: &StratumUsers, rates: (f64, f64), pi: f64) -> f64 {
    let correction = leverage_correction(&users.baseline, &users.candidate);
    let excess = |s: &UserSums, p: f64| correction * s.excess(p.clamp(0.0, 1.0)).max(0.0);
    (1.0 - pi).powi(2) * excess(&users.candidate, rates.1)
        + pi * pi * excess(&users.baseline, rates.0)
}

/// The factor by which the variance of a stratified sum grows when its strata's
/// user-level parts are correlated (the same users stay in their cohort from stage to
/// stage): with `user_sd[k]` the standard deviation of stratum `k`'s user-level part and
/// `total_variance` the variance of the sum as if strata were independent, the sum's
/// variance is at most `total_variance + (Σ sd)² − Σ sd²` (Cauchy-Schwarz: every pair
/// perfectly correlated). At least 1.
pub fn stratified_inflation(user_sd: &[f64], total_variance: f64) -> f64 {
    if total_variance <= 0.0 {
        return 1.0;
    }
    let sum: f64 = user_sd.iter().sum();
    let squares: f64 = user_sd.iter().map(|s| s * s).sum();
    (1.0 + (sum * sum - squares).max(0.0) / total_variance).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BoundaryState;

    /// Sums over users given as `(n_i, x_i)`.
    fn sums(users: &[(u64, u64)]) -> UserSums {
        let mut s = UserSums::default();
        for &(n, x) in users {
            let (n, x) = (n as f64, x as f64);
            s.n += n;
            s.x += x;
            s.nn += n * n;
            s.xx += x * x;
            s.nx += n * x;
        }
        s
    }

    #[test]
    fn with_each_request_its_own_user_the_variance_is_the_binomial() {
        // 1,000 requests, 37 errors, one user each.
        let users: Vec<(u64, u64)> = (0..1000).map(|i| (1, u64::from(i < 37))).collect();
        let s = sums(&users);
        for p in [0.0, 0.01, 0.037, 0.2, 1.0] {
            assert!(s.excess(p).abs() < 1e-9, "p = {p}: {}", s.excess(p));
            let correction = leverage_correction(&s, &sums(&[(1, 0); 9000]));
            let v = cohort_variance(&s, p, correction);
            let binomial = 1000.0 * p * (1.0 - p);
            assert!(
                (v - binomial).abs() < 1e-9,
                "p = {p}: {v} against {binomial}"
            );
        }
        let v = stage_variance(&s, &s, (0.037, 0.037));
        assert!((v.candidate_over_binomial - 1.0).abs() < 1e-12);
        assert!((v.candidate - 0.037 * 0.963 / 1000.0).abs() < 1e-15);
    }

    /// The delta-method variance of a ratio of per-user sums is the cluster-robust
    /// variance of a request-level mean with users as clusters. Reference: statsmodels
    /// 0.15.0, one row per request (`y` = 1 for an error), an intercept-only OLS with
    /// cluster-robust covariance by user:
    /// ```python
    /// users = [(120, 6), (40, 1), (15, 0), (9, 1), (3, 0), (1, 0)]   # (n_i, x_i)
    /// y, g = [], []
    /// for i, (n, x) in enumerate(users):
    ///     y += [1] * x + [0] * (n - x); g += [i] * n
    /// fit = lambda c: sm.OLS(np.array(y, float), np.ones((len(y), 1))).fit(
    ///     cov_type="cluster", cov_kwds={"groups": np.array(g), "use_correction": c})
    /// fit(False).bse[0] ** 2   # 5.935326510073054e-05: Σ(x_i − R n_i)²/(Σn)²
    /// fit(True).bse[0] ** 2    # 7.122391812087664e-05: times G/(G − 1), G = 6 users
    /// ```
    #[test]
    fn the_residual_sum_is_the_cluster_robust_variance_of_statsmodels() {
        let users = [(120, 6), (40, 1), (15, 0), (9, 1), (3, 0), (1, 0)];
        let s = sums(&users);
        let r = s.x / s.n;
        let by_hand: f64 = users
            .iter()
            .map(|&(n, x)| (x as f64 - r * n as f64).powi(2))
            .sum();
        assert!((s.residual_square(r) - by_hand).abs() < 1e-9);
        let cr0 = s.residual_square(r) / (s.n * s.n);
        let reference = 5.935_326_510_073_054e-5;
        assert!(
            (cr0 - reference).abs() < 1e-12 * reference.max(1.0),
            "{cr0} against statsmodels' {reference}"
        );
        let g = users.len() as f64;
        let cr1 = g / (g - 1.0) * cr0;
        let reference = 7.122_391_812_087_664e-5;
        assert!((cr1 - reference).abs() < 1e-15, "{cr1} against {reference}");
    }

    #[test]
    fn a_heavy_user_who_fails_more_raises_the_variance_and_leverage_is_corrected() {
        // The candidate: one user with 500 requests and 25 errors (5 %), 100 light users
        // with 5 requests and no error; the stage's rate 1 %.
        let mut users = vec![(500, 25)];
        users.extend(std::iter::repeat_n((5, 0), 100));
        let c = sums(&users);
        // The baseline: 5,000 users with 10 requests each, one error for 500 of them
        // (1 %, spread as evenly as users allow: nothing beyond the binomial).
        let mut light = vec![(10, 1); 500];
        light.extend(std::iter::repeat_n((10, 0), 4500));
        let b = sums(&light);
        let v = stage_variance(&b, &c, (0.01, 0.01));
        assert!(v.candidate_over_binomial > 5.0, "{v:?}");
        assert!((v.baseline_over_binomial - 1.0).abs() < 1e-9, "{v:?}");
        let n = b.n + c.n;
        let expected = 1.0 / (1.0 - (b.nn + c.nn) / (n * n));
        assert!((v.correction - expected).abs() < 1e-12);
        assert!(v.correction > 1.0);
        assert!((c.effective_users() - 1000.0_f64.powi(2) / (250_000.0 + 2500.0)).abs() < 1e-9);
    }

    /// Through the comparison's hook: with each request its own user, the user-level
    /// comparison judges exactly as today's request-level one, look by look and across
    /// stages; with a heavy user who fails more in the candidate, it is more cautious.
    #[test]
    fn with_each_request_its_own_user_the_comparison_is_todays() {
        use crate::analysis::compare::{self, ComparisonTest, Plan, Window};
        use crate::analysis::ratio::{Counts, Tolerance};
        use jiff::Timestamp;
        let mut looks = Vec::new();
        let mut information = 0.0;
        for w in [0.05_f64, 0.5] {
            for _ in 0..10 {
                information += w * (1.0 - w) * 60.0;
                looks.push(information);
            }
        }
        let total = information;
        let plan = Plan {
            total,
            looks: looks.iter().map(|t| t / total).collect(),
            last_step: 0.25 * 60.0 / total,
            gamma: 0.9 * total / (0.05 * 0.95 * 600.0),
            request_shares: vec![Some(0.05), Some(0.5)],
        };
        let test = ComparisonTest {
            tolerance: Tolerance::Relative(0.0),
            plan: &plan,
            budget: 0.05,
        };
        let one_each = |requests: f64, errors: f64| UserSums {
            n: requests,
            x: errors,
            nn: requests,
            xx: errors,
            nx: errors,
        };
        let (mut today, mut users, mut heavy) = (None, None, None);
        for stage in 0..2_u32 {
            let weight = [0.05, 0.5][stage as usize];
            for minute in 1..=10_u32 {
                let window = Window {
                    stage,
                    weight,
                    rate: compare::information_rate(weight, false),
                    started_at: Timestamp::from_second(600 * i64::from(stage)).unwrap(),
                    seconds: 60.0 * f64::from(minute),
                };
                let m = f64::from(minute);
                let (nb, nc) = (3000.0 * (1.0 - weight) * m, 3000.0 * weight * m);
                let (xb, xc) = ((0.01 * nb).round(), (0.013 * nc).round());
                let (b, c) = (Counts { bad: xb, total: nb }, Counts { bad: xc, total: nc });
                let r = compare::compare(today.as_ref(), window, b, c, test);
                let stage_users = StratumUsers {
                    baseline: one_each(nb, xb),
                    candidate: one_each(nc, xc),
                };
                let u =
                    compare::compare_with_users(users.as_ref(), window, b, c, stage_users, test);
                assert!((r.statistic - u.statistic).abs() < 1e-9, "{r:?}\n{u:?}");
                assert_eq!(r.boundary, u.boundary);
                assert_eq!(r.recent_statistic, u.recent_statistic);
                assert_eq!(r.boundary_state, u.boundary_state);
                assert_eq!(r.reject(), u.reject());
                let v = u.user_variance.expect("the user-level variance");
                assert!((v.candidate_over_binomial - 1.0).abs() < 1e-12);
                // The same counts, with a fifth of the candidate's requests and half its
                // errors from one user.
                let mut candidate = one_each(nc - 0.2 * nc, xc - (xc / 2.0).floor());
                let (hn, hx) = (0.2 * nc, (xc / 2.0).floor());
                candidate.n += hn;
                candidate.x += hx;
                candidate.nn += hn * hn;
                candidate.xx += hx * hx;
                candidate.nx += hn * hx;
                let h = compare::compare_with_users(
                    heavy.as_ref(),
                    window,
                    b,
                    c,
                    StratumUsers {
                        candidate,
                        ..stage_users
                    },
                    test,
                );
                assert!(h.statistic <= r.statistic + 1e-12, "{h:?}\n{r:?}");
                if minute == 10 {
                    assert!(h.statistic < r.statistic - 0.1, "{h:?}\n{r:?}");
                    assert!(h.user_variance.unwrap().candidate_over_binomial > 1.5);
                }
                today = Some(r.evidence);
                users = Some(u.evidence);
                heavy = Some(h.evidence);
            }
        }
    }

    /// The limit of null-imposed user-level variance (README, "Users, not requests"): the
    /// candidate's deviations from the null include the harm itself, so the statistic
    /// cannot exceed about √(the candidate's effective users). A 5 % stage whose candidate
    /// is 5 equal users failing every request is not rolled back in its ten looks, where the
    /// same counts judged request by request are; this pins the documented limit (a `max`
    /// ceiling, request by request, is the backstop). Its looks say so: each look that had a
    /// boundary is `OutOfReach` (inconclusive), never a `Set` boundary that passed. With 100
    /// such users the same harm is rolled back.
    #[test]
    fn few_candidate_users_bound_the_statistic_whatever_the_harm() {
        use crate::analysis::compare::{self, ComparisonTest, Plan, Window};
        use crate::analysis::ratio::{Counts, Tolerance};
        use jiff::Timestamp;
        let weight = 0.05_f64;
        let looks: Vec<f64> = (1..=10).map(|i| f64::from(i) / 10.0).collect();
        let plan = Plan {
            total: weight * (1.0 - weight) * 600.0,
            looks,
            last_step: 0.1,
            gamma: 0.9,
            request_shares: vec![Some(weight)],
        };
        let test = ComparisonTest {
            tolerance: Tolerance::Relative(0.0),
            plan: &plan,
            budget: 0.05,
        };
        let (mut by_requests, mut by_users, mut by_many) = (None, None, None);
        let (mut most, mut rejected_by_requests) = (f64::NEG_INFINITY, false);
        let (mut out_of_reach, mut rejected_with_many) = (0, false);
        for minute in 1..=10_u32 {
            let window = Window {
                stage: 0,
                weight,
                rate: compare::information_rate(weight, false),
                started_at: Timestamp::UNIX_EPOCH,
                seconds: 60.0 * f64::from(minute),
            };
            let m = f64::from(minute);
            let (nb, nc) = (2850.0 * m, 150.0 * m);
            let xb = (0.01 * nb).round();
            let (b, c) = (Counts { bad: xb, total: nb }, Counts { bad: nc, total: nc });
            // Baseline: users of ten requests, errors spread one per user. Candidate: 5
            // users of equal weight, every request failing.
            let baseline = UserSums {
                n: nb,
                x: xb,
                nn: 10.0 * nb,
                xx: xb,
                nx: 10.0 * xb,
            };
            let per_user = nc / 5.0;
            let candidate = UserSums {
                n: nc,
                x: nc,
                nn: 5.0 * per_user * per_user,
                xx: 5.0 * per_user * per_user,
                nx: 5.0 * per_user * per_user,
            };
            let r = compare::compare(by_requests.as_ref(), window, b, c, test);
            rejected_by_requests |= r.reject();
            let u = compare::compare_with_users(
                by_users.as_ref(),
                window,
                b,
                c,
                StratumUsers {
                    baseline,
                    candidate,
                },
                test,
            );
            assert!(!u.reject(), "minute {minute}: {u:?}");
            // Every candidate request is bad: the reach is the statistic itself.
            let reach = u.reach.expect("a reach with per-user sums");
            assert!((reach - u.statistic).abs() < 1e-9, "{u:?}");
            assert_ne!(
                u.boundary_state,
                BoundaryState::Set,
                "minute {minute}: {u:?}"
            );
            out_of_reach += usize::from(u.boundary_state == BoundaryState::OutOfReach);
            most = most.max(u.statistic);
            // The same counts from 100 users of equal weight.
            let per_user = nc / 100.0;
            let many = UserSums {
                nn: 100.0 * per_user * per_user,
                xx: 100.0 * per_user * per_user,
                nx: 100.0 * per_user * per_user,
                ..candidate
            };
            let w = compare::compare_with_users(
                by_many.as_ref(),
                window,
                b,
                c,
                StratumUsers {
                    baseline,
                    candidate: many,
                },
                test,
            );
            assert_ne!(w.boundary_state, BoundaryState::OutOfReach, "{w:?}");
            rejected_with_many |= w.reject();
            by_requests = Some(r.evidence);
            by_users = Some(u.evidence);
            by_many = Some(w.evidence);
        }
        assert!(out_of_reach >= 5, "{out_of_reach} looks out of reach");
        assert!(rejected_with_many);
        println!(
            "largest user-level statistic: {most:.3} (√5 = {:.3})",
            5.0_f64.sqrt()
        );
        assert!(rejected_by_requests);
        assert!(most <= 5.0_f64.sqrt() + 0.1, "{most}");
    }

    #[test]
    fn impossible_sums_are_refused() {
        let good = sums(&[(3, 1), (2, 0)]);
        assert!(good.is_consistent());
        let mut bad = good;
        bad.xx = bad.nx + 1.0;
        assert!(!bad.is_consistent());
        let mut bad = good;
        bad.nn = bad.n - 1.0;
        assert!(!bad.is_consistent());
        let mut bad = good;
        bad.x = f64::NAN;
        assert!(!bad.is_consistent());
    }

    #[test]
    fn the_stratified_inflation_is_one_for_one_stratum_and_bounds_perfect_correlation() {
        assert_eq!(stratified_inflation(&[3.0], 10.0), 1.0);
        assert_eq!(stratified_inflation(&[], 10.0), 1.0);
        // Two strata whose user parts (sd 2 and 2) are perfectly correlated: the sum's
        // variance is 10 + 2·2·2 = 18.
        assert!((stratified_inflation(&[2.0, 2.0], 10.0) - 1.8).abs() < 1e-12);
    }
}
