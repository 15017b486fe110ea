//! Sample ratio mismatch: do the cohorts split the way the flag says they should?
//!
//! The flag sends a configured share of users to the candidate. If the distinct users
//! seen in each cohort disagree with that share beyond chance, assignment or
//! measurement is broken (a cohort label lost on one path, a redirect that drops
//! users, a bot hitting one variant) and the cohorts are no longer comparable:
//! [`sample_ratio_mismatch`] runs Pearson's chi-square goodness-of-fit test with one
//! degree of freedom on those user counts.
//!
//! Requests are no basis for this. Assignment is per user, and a few heavy users can
//! move the request share far from the exposure while assignment is perfect: with one
//! user sending 16 % of all requests, a 10 % cohort can hold 7 % of requests, and a
//! chi-square test on millions of requests calls that a certain mismatch.
//! [`request_share_deviation`] therefore only reports how far the request share is from
//! the configured one, for a human to read; nothing should hold on it.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// The p-value below which the design calls the split a mismatch.
pub const DEFAULT_ALPHA: f64 = 0.001;

/// The smallest expected user count per cohort for which the chi-square approximation is
/// trusted (the usual rule of thumb). Below it the test is anti-conservative: 3 candidate
/// users out of 50 at a 1 % share gives a chi-square p of 0.0004 where the exact
/// binomial tail is 0.014.
pub const MIN_EXPECTED_USERS: f64 = 5.0;

/// Invalid input to the sample ratio checks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SrmError {
    /// A count is NaN, infinite or negative.
    #[error("{cohort} count {value} is not a finite, non-negative number")]
    InvalidCount {
        /// `"baseline"` or `"candidate"`.
        cohort: &'static str,
        /// The offending count.
        value: f64,
    },
    /// The configured candidate share is not a fraction in `[0, 1]`.
    #[error("configured candidate share {share} is not a fraction between 0 and 1")]
    InvalidShare {
        /// The offending share.
        share: f64,
    },
    /// The significance threshold is not in `(0, 1)`.
    #[error("significance threshold {alpha} is not strictly between 0 and 1")]
    InvalidAlpha {
        /// The offending threshold.
        alpha: f64,
    },
}

/// Why a split cannot be checked. Not an error: the check simply does not apply yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NotApplicable {
    /// Neither cohort has been seen yet.
    NoObservations,
    /// The configured share is 0 or 1: there is only one cohort, nothing to split.
    NoSplit {
        /// The configured candidate share.
        share: f64,
    },
    /// A cohort expects fewer than [`MIN_EXPECTED_USERS`] users, too few for the
    /// chi-square approximation.
    TooFewExpected {
        /// Users the baseline should have at the configured share.
        expected_baseline: f64,
        /// Users the candidate should have at the configured share.
        expected_candidate: f64,
    },
}

impl std::fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoObservations => f.write_str("split not checked: no users observed yet"),
            Self::NoSplit { share } => write!(
                f,
                "split not checked: a candidate share of {share} leaves only one cohort"
            ),
            Self::TooFewExpected {
                expected_baseline,
                expected_candidate,
            } => write!(
                f,
                "split not checked yet: expected {expected_baseline} baseline and \
                 {expected_candidate} candidate users, the chi-square test needs at least \
                 {MIN_EXPECTED_USERS} in each"
            ),
        }
    }
}

/// The chi-square test of the observed user split against the configured share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SrmCheck {
    /// Distinct users observed in the baseline cohort.
    pub baseline_users: f64,
    /// Distinct users observed in the candidate cohort.
    pub candidate_users: f64,
    /// The configured candidate share.
    pub configured_share: f64,
    /// `candidate_users / (baseline_users + candidate_users)`.
    pub observed_share: f64,
    /// Baseline users expected at the configured share.
    pub expected_baseline: f64,
    /// Candidate users expected at the configured share.
    pub expected_candidate: f64,
    /// Pearson's chi-square statistic, `Σ (observed − expected)² / expected`.
    pub chi_square: f64,
    /// Upper tail of the chi-square distribution with 1 degree of freedom.
    pub p_value: f64,
    /// The threshold the p-value was compared with.
    pub alpha: f64,
    /// `p_value < alpha`: the cohorts are not comparable and the stage should hold.
    pub mismatch: bool,
}

/// The outcome of a sample ratio check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SrmOutcome {
    /// The test ran.
    Checked(SrmCheck),
    /// The test does not apply (yet).
    NotApplicable(NotApplicable),
}

/// Chi-square goodness-of-fit test (1 degree of freedom) of the distinct users seen per
/// cohort against the split `candidate_share : 1 − candidate_share`; a mismatch when
/// the p-value is below `alpha` (the design uses [`DEFAULT_ALPHA`]).
///
/// Counts are `f64` because they come from Prometheus; they need not be whole.
/// Equals SciPy's `chisquare([baseline, candidate], f_exp=[n·(1−share), n·share])`.
///
/// # Errors
/// [`SrmError`] for a NaN, infinite or negative count, a share outside `[0, 1]` or an
/// `alpha` outside `(0, 1)`. No users, a share of exactly 0 or 1, or an expected count
/// below [`MIN_EXPECTED_USERS`] are [`SrmOutcome::NotApplicable`].
pub fn sample_ratio_mismatch(
    baseline_users: f64,
    candidate_users: f64,
    candidate_share: f64,
    alpha: f64,
) -> Result<SrmOutcome, SrmError> {
    validate(baseline_users, candidate_users, candidate_share)?;
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(SrmError::InvalidAlpha { alpha });
    }
    if let Some(reason) = not_applicable(baseline_users, candidate_users, candidate_share) {
        return Ok(SrmOutcome::NotApplicable(reason));
    }
    let total = baseline_users + candidate_users;
    let expected_candidate = total * candidate_share;
    let expected_baseline = total * (1.0 - candidate_share);
    if expected_candidate < MIN_EXPECTED_USERS || expected_baseline < MIN_EXPECTED_USERS {
        return Ok(SrmOutcome::NotApplicable(NotApplicable::TooFewExpected {
            expected_baseline,
            expected_candidate,
        }));
    }
    // Both cells deviate by the same amount with opposite signs, so
    // Σ (o − e)² / e = d² / e_c + d² / e_b.
    let deviation = candidate_users - expected_candidate;
    let chi_square =
        deviation * deviation / expected_candidate + deviation * deviation / expected_baseline;
    let one_degree = ChiSquared::new(1.0).expect("one degree of freedom is a valid chi-square");
    let p_value = one_degree.sf(chi_square);
    Ok(SrmOutcome::Checked(SrmCheck {
        baseline_users,
        candidate_users,
        configured_share: candidate_share,
        observed_share: candidate_users / total,
        expected_baseline,
        expected_candidate,
        chi_square,
        p_value,
        alpha,
        mismatch: p_value < alpha,
    }))
}

/// How far the candidate's share of requests is from the configured share. Reported,
/// never held on (see the module documentation: heavy users).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestShare {
    /// Requests counted in the baseline cohort.
    pub baseline_requests: f64,
    /// Requests counted in the candidate cohort.
    pub candidate_requests: f64,
    /// The configured candidate share.
    pub configured_share: f64,
    /// `candidate_requests / (baseline_requests + candidate_requests)`.
    pub observed_share: f64,
    /// `observed_share − configured_share`, in share points (−0.03 is 3 points below).
    pub deviation: f64,
    /// `observed_share / configured_share − 1` (−0.3 is 30 % below the configured share).
    pub relative_deviation: f64,
}

/// The outcome of [`request_share_deviation`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestShareOutcome {
    /// The deviation, for the report.
    Reported(RequestShare),
    /// Nothing to compare.
    NotApplicable(NotApplicable),
}

/// The candidate's observed share of requests against the configured share, for the
/// report only: heavy users make the request share differ from the exposure even when
/// assignment is perfect, so a deviation here is never evidence of a mismatch.
///
/// # Errors
/// [`SrmError`] for a NaN, infinite or negative count or a share outside `[0, 1]`.
/// No requests or a share of exactly 0 or 1 are [`RequestShareOutcome::NotApplicable`].
pub fn request_share_deviation(
    baseline_requests: f64,
    candidate_requests: f64,
    candidate_share: f64,
) -> Result<RequestShareOutcome, SrmError> {
    validate(baseline_requests, candidate_requests, candidate_share)?;
    if let Some(reason) = not_applicable(baseline_requests, candidate_requests, candidate_share) {
        return Ok(RequestShareOutcome::NotApplicable(reason));
    }
    let observed_share = candidate_requests / (baseline_requests + candidate_requests);
    Ok(RequestShareOutcome::Reported(RequestShare {
        baseline_requests,
        candidate_requests,
        configured_share: candidate_share,
        observed_share,
        deviation: observed_share - candidate_share,
        relative_deviation: observed_share / candidate_share - 1.0,
    }))
}

fn validate(baseline: f64, candidate: f64, share: f64) -> Result<(), SrmError> {
    for (cohort, value) in [("baseline", baseline), ("candidate", candidate)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(SrmError::InvalidCount { cohort, value });
        }
    }
    if !(0.0..=1.0).contains(&share) {
        return Err(SrmError::InvalidShare { share });
    }
    Ok(())
}

fn not_applicable(baseline: f64, candidate: f64, share: f64) -> Option<NotApplicable> {
    if share == 0.0 || share == 1.0 {
        Some(NotApplicable::NoSplit { share })
    } else if baseline + candidate == 0.0 {
        Some(NotApplicable::NoObservations)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    //! Reference values from SciPy 1.17.1, computed outside the repository:
    //! `scipy.stats.chisquare(f_obs=[baseline, candidate], f_exp=[n·(1−share), n·share])`,
    //! quoted at each value.

    use super::*;

    fn assert_rel(actual: f64, expected: f64, tolerance: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= tolerance * expected.abs(),
            "{what}: got {actual:e}, expected {expected:e} (relative tolerance {tolerance:e})"
        );
    }

    fn checked(baseline: f64, candidate: f64, share: f64, alpha: f64) -> SrmCheck {
        match sample_ratio_mismatch(baseline, candidate, share, alpha).unwrap() {
            SrmOutcome::Checked(check) => check,
            SrmOutcome::NotApplicable(reason) => panic!("expected a check: {reason}"),
        }
    }

    /// Checks statistic (relative 1e-9) and p-value (relative 1e-6) against SciPy.
    fn assert_chi_square(check: &SrmCheck, statistic: f64, p_value: f64) {
        assert_rel(check.chi_square, statistic, 1e-9, "chi-square statistic");
        assert_rel(check.p_value, p_value, 1e-6, "p-value");
    }

    #[test]
    fn balanced_split_within_chance() {
        let check = checked(4_970.0, 5_030.0, 0.5, DEFAULT_ALPHA);
        // chisquare([4970, 5030], f_exp=[5000, 5000]) -> (0.36, 0.5485062355001471)
        assert_chi_square(&check, 0.36, 0.5485062355001471);
        assert!(!check.mismatch);
        assert_eq!(check.observed_share, 0.503);
        assert_eq!(
            (check.expected_baseline, check.expected_candidate),
            (5_000.0, 5_000.0)
        );
    }

    #[test]
    fn one_percent_stage_within_chance() {
        let check = checked(98_960.0, 1_040.0, 0.01, DEFAULT_ALPHA);
        // chisquare([98960, 1040], f_exp=[99000, 1000])
        //   -> (1.6161616161616164, 0.20362782709360203)
        assert_chi_square(&check, 1.6161616161616164, 0.20362782709360203);
        assert!(!check.mismatch);
        assert_rel(check.observed_share, 0.0104, 1e-12, "observed share");
    }

    #[test]
    fn tenth_of_a_percent_stage() {
        let check = checked(998_930.0, 1_070.0, 0.001, DEFAULT_ALPHA);
        // chisquare([998930, 1070], f_exp=[999000, 1000])
        //   -> (4.904904904904905, 0.02678052618280387)
        assert_chi_square(&check, 4.904904904904905, 0.02678052618280387);
        assert!(!check.mismatch);
    }

    #[test]
    fn clear_mismatch_holds() {
        let check = checked(90_600.0, 9_400.0, 0.1, DEFAULT_ALPHA);
        // chisquare([90600, 9400], f_exp=[90000, 10000]) -> (40.0, 2.5396285894708634e-10)
        assert_chi_square(&check, 40.0, 2.5396285894708634e-10);
        assert!(check.mismatch);
        assert_eq!(check.alpha, 0.001);
    }

    #[test]
    fn gross_mismatch_keeps_a_precise_tiny_p_value() {
        let check = checked(5_000.0, 6_000.0, 0.5, DEFAULT_ALPHA);
        // chisquare([5000, 6000], f_exp=[5500, 5500])
        //   -> (90.9090909090909, 1.5042695052612943e-21)
        assert_chi_square(&check, 90.9090909090909, 1.5042695052612943e-21);
        assert!(check.mismatch);
    }

    #[test]
    fn alpha_decides_the_flag() {
        // chisquare([4850, 5150], f_exp=[5000, 5000]) -> (9.0, 0.0026997960632601883)
        let strict = checked(4_850.0, 5_150.0, 0.5, DEFAULT_ALPHA);
        assert_chi_square(&strict, 9.0, 0.0026997960632601883);
        assert!(!strict.mismatch, "0.0027 is not below 0.001");
        assert!(
            checked(4_850.0, 5_150.0, 0.5, 0.01).mismatch,
            "0.0027 is below 0.01"
        );
    }

    #[test]
    fn perfect_split_and_fractional_counts() {
        // chisquare([495, 5], f_exp=[495, 5]) -> (0.0, 1.0); exactly MIN_EXPECTED_USERS.
        let perfect = checked(495.0, 5.0, 0.01, DEFAULT_ALPHA);
        assert_eq!((perfect.chi_square, perfect.p_value), (0.0, 1.0));
        // increase() of a distinct-user counter need not be whole:
        // chisquare([103.5, 12.25], f_exp=[115.75 * 0.9, 115.75 * 0.1])
        //   -> (0.04373650107991344, 0.8343446204053215)
        let fractional = checked(103.5, 12.25, 0.1, DEFAULT_ALPHA);
        assert_chi_square(&fractional, 0.04373650107991344, 0.8343446204053215);
    }

    #[test]
    fn too_few_expected_users_is_not_applicable() {
        // 3 candidate users out of 50 at 1 %: chisquare([47, 3], f_exp=[49.5, 0.5]).pvalue
        // is 0.00038036487865591013, but binomtest(3, 50, 0.01, alternative='greater').pvalue
        // is 0.013817270830600381: the approximation would hold a healthy stage.
        assert_eq!(
            sample_ratio_mismatch(47.0, 3.0, 0.01, DEFAULT_ALPHA),
            Ok(SrmOutcome::NotApplicable(NotApplicable::TooFewExpected {
                expected_baseline: 49.5,
                expected_candidate: 0.5,
            }))
        );
        // The baseline side counts too (a 99.5 % stage).
        assert!(matches!(
            sample_ratio_mismatch(3.0, 797.0, 0.995, DEFAULT_ALPHA),
            Ok(SrmOutcome::NotApplicable(
                NotApplicable::TooFewExpected { .. }
            ))
        ));
        let reason = NotApplicable::TooFewExpected {
            expected_baseline: 49.5,
            expected_candidate: 0.5,
        };
        assert_eq!(
            reason.to_string(),
            "split not checked yet: expected 49.5 baseline and 0.5 candidate users, \
             the chi-square test needs at least 5 in each"
        );
    }

    #[test]
    fn no_users_or_no_split_is_not_applicable() {
        assert_eq!(
            sample_ratio_mismatch(0.0, 0.0, 0.05, DEFAULT_ALPHA),
            Ok(SrmOutcome::NotApplicable(NotApplicable::NoObservations))
        );
        for share in [0.0, 1.0] {
            assert_eq!(
                sample_ratio_mismatch(900.0, 100.0, share, DEFAULT_ALPHA),
                Ok(SrmOutcome::NotApplicable(NotApplicable::NoSplit { share }))
            );
            assert_eq!(
                request_share_deviation(900.0, 100.0, share),
                Ok(RequestShareOutcome::NotApplicable(NotApplicable::NoSplit {
                    share
                }))
            );
        }
        assert_eq!(
            NotApplicable::NoSplit { share: 1.0 }.to_string(),
            "split not checked: a candidate share of 1 leaves only one cohort"
        );
    }

    #[test]
    fn invalid_input_is_an_error() {
        assert!(matches!(
            sample_ratio_mismatch(f64::NAN, 1.0, 0.5, DEFAULT_ALPHA),
            Err(SrmError::InvalidCount { cohort: "baseline", value }) if value.is_nan()
        ));
        let error = sample_ratio_mismatch(10.0, -1.0, 0.5, DEFAULT_ALPHA).unwrap_err();
        assert_eq!(
            error.to_string(),
            "candidate count -1 is not a finite, non-negative number"
        );
        assert!(sample_ratio_mismatch(f64::INFINITY, 1.0, 0.5, DEFAULT_ALPHA).is_err());
        for share in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(
                sample_ratio_mismatch(10.0, 10.0, share, DEFAULT_ALPHA),
                Err(SrmError::InvalidShare { .. })
            ));
            assert!(matches!(
                request_share_deviation(10.0, 10.0, share),
                Err(SrmError::InvalidShare { .. })
            ));
        }
        let error = sample_ratio_mismatch(10.0, 10.0, 1.5, DEFAULT_ALPHA).unwrap_err();
        assert_eq!(
            error.to_string(),
            "configured candidate share 1.5 is not a fraction between 0 and 1"
        );
        for alpha in [0.0, 1.0, f64::NAN] {
            assert!(matches!(
                sample_ratio_mismatch(10.0, 10.0, 0.5, alpha),
                Err(SrmError::InvalidAlpha { .. })
            ));
        }
    }

    #[test]
    fn heavy_users_move_the_request_share_and_it_is_only_reported() {
        // The design's example: a 10 % cohort holding 7 % of 1_000_000 requests.
        let outcome = request_share_deviation(930_000.0, 70_000.0, 0.1).unwrap();
        let RequestShareOutcome::Reported(report) = outcome else {
            panic!("expected a report, got {outcome:?}");
        };
        // Arithmetic: 70_000 / 1_000_000 = 0.07; 0.07 − 0.1 = −0.03; 0.07 / 0.1 − 1 = −0.3.
        assert_rel(report.observed_share, 0.07, 1e-12, "observed share");
        assert_rel(report.deviation, -0.03, 1e-9, "deviation");
        assert_rel(report.relative_deviation, -0.3, 1e-9, "relative deviation");
        // The same split in distinct users would be a certain mismatch; the request
        // report carries no verdict at all, only the numbers.
        assert!(checked(930_000.0, 70_000.0, 0.1, DEFAULT_ALPHA).mismatch);
        assert_eq!(
            request_share_deviation(0.0, 0.0, 0.1),
            Ok(RequestShareOutcome::NotApplicable(
                NotApplicable::NoObservations
            ))
        );
    }
}
