//! Latency histograms per cohort: Prometheus cumulative buckets, the share of slow
//! requests above a threshold, and a Mann-Whitney U test over the binned distributions.
//!
//! Prometheus returns a classic histogram as one series per bucket, each carrying an
//! upper bound `le` and the cumulative count of observations at or below it, in no
//! particular order. [`Buckets::from_prometheus`] turns those pairs into sorted
//! cumulative counts (tolerating the tiny float noise `increase()` leaves behind) and
//! [`Buckets::bin_counts`] into the count of each bin.
//!
//! [`mann_whitney_binned`] works on the bins directly: every bin is one group of tied
//! observations, so counts of a million cost no more than counts of ten and nothing is
//! ever expanded into individual samples.

use statrs::distribution::{ContinuousCDF, Normal};

/// Relative tolerance used to match a threshold to a bucket bound and to forgive a
/// cumulative count that is a hair below the previous one (float noise from `increase()`).
pub const RELATIVE_TOLERANCE: f64 = 1e-9;

/// Why a set of buckets or bins cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistogramError {
    /// The query returned no bucket at all.
    #[error("no histogram buckets: the cohort has no bucket series")]
    Empty,
    /// A bucket's `le` is NaN or negative infinity.
    #[error("bucket bound le={le} is not a valid upper bound (NaN or -Inf)")]
    InvalidBound {
        /// The offending bound.
        le: f64,
    },
    /// A bucket's count is NaN or infinite.
    #[error("bucket le={le} has a count that is not a finite number ({count})")]
    NonFiniteCount {
        /// The bucket's upper bound.
        le: f64,
        /// The offending count.
        count: f64,
    },
    /// A bucket's count is below zero.
    #[error("bucket le={le} has a negative count ({count})")]
    NegativeCount {
        /// The bucket's upper bound.
        le: f64,
        /// The offending count.
        count: f64,
    },
    /// There is no `le="+Inf"` bucket, so the total count is unknown.
    #[error(
        "no +Inf bucket, so the total count is unknown (bounds found: [{}]); \
         the query must keep every bucket's `le` label, including le=\"+Inf\"",
        format_bounds(.bounds)
    )]
    NoInfBucket {
        /// The bounds that were present, ascending.
        bounds: Vec<f64>,
    },
    /// A cumulative count decreases by more than float noise from one bound to the next.
    #[error(
        "cumulative counts decrease from {lower_count} at le={lower_le} to {count} at le={le}; \
         bucket counts must be cumulative (does the query sum series with different bucket layouts?)"
    )]
    Decreasing {
        /// The lower bound.
        lower_le: f64,
        /// The cumulative count at the lower bound.
        lower_count: f64,
        /// The next bound up.
        le: f64,
        /// The smaller cumulative count found there.
        count: f64,
    },
    /// The threshold is NaN or infinite.
    #[error("threshold {threshold} is not a finite number")]
    InvalidThreshold {
        /// The offending threshold.
        threshold: f64,
    },
    /// The threshold is not one of the bucket bounds, so the slow share cannot be read off.
    #[error(
        "threshold {threshold} is not a bucket bound; the finite bounds are [{}]",
        format_bounds(.bounds)
    )]
    ThresholdNotABound {
        /// The requested threshold.
        threshold: f64,
        /// The finite bounds available, ascending.
        bounds: Vec<f64>,
    },
    /// The two cohorts' bins differ in number.
    #[error(
        "baseline has {baseline} bins but candidate has {candidate}; both need the same bin edges"
    )]
    BinCountMismatch {
        /// Number of baseline bins.
        baseline: usize,
        /// Number of candidate bins.
        candidate: usize,
    },
    /// The two cohorts' histograms have different bucket bounds.
    #[error(
        "baseline and candidate have different bucket bounds ([{}] vs [{}])",
        format_bounds(.baseline),
        format_bounds(.candidate)
    )]
    BoundsMismatch {
        /// Baseline finite bounds.
        baseline: Vec<f64>,
        /// Candidate finite bounds.
        candidate: Vec<f64>,
    },
    /// A bin count is NaN, infinite or negative.
    #[error("{cohort} bin {index} has count {count}; bin counts must be finite and not negative")]
    InvalidBinCount {
        /// `"baseline"` or `"candidate"`.
        cohort: &'static str,
        /// Zero-based index of the bin.
        index: usize,
        /// The offending count.
        count: f64,
    },
}

fn format_bounds(bounds: &[f64]) -> String {
    bounds
        .iter()
        .map(|b| {
            if *b == f64::INFINITY {
                "+Inf".to_owned()
            } else {
                b.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn approx_eq(a: f64, b: f64) -> bool {
    (a - b).abs() <= RELATIVE_TOLERANCE * a.abs().max(b.abs())
}

/// One cohort's cumulative histogram, sorted by bound, with a `+Inf` bucket last.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    /// Finite upper bounds, strictly ascending.
    bounds: Vec<f64>,
    /// Cumulative counts: one per finite bound, then the `+Inf` bucket (the total).
    /// Non-decreasing.
    cumulative: Vec<f64>,
}

impl Buckets {
    /// Builds a histogram from Prometheus bucket series: `(le, cumulative count)` pairs
    /// in any order, `le = f64::INFINITY` for the `+Inf` bucket.
    ///
    /// Series with exactly the same bound are added together (the same bucket exported
    /// under two spellings of `le`, such as `"1"` and `"1.0"`). A cumulative count that
    /// falls below the previous one by no more than [`RELATIVE_TOLERANCE`] of it is float
    /// noise and is raised to the previous count; a larger fall is an error.
    ///
    /// # Errors
    /// [`HistogramError::Empty`] for no series, [`HistogramError::NoInfBucket`] without a
    /// `+Inf` bucket, and an error naming the bucket for a NaN or `-Inf` bound, a NaN,
    /// infinite or negative count, or counts that really decrease.
    pub fn from_prometheus(series: &[(f64, f64)]) -> Result<Self, HistogramError> {
        if series.is_empty() {
            return Err(HistogramError::Empty);
        }
        for &(le, count) in series {
            if le.is_nan() || le == f64::NEG_INFINITY {
                return Err(HistogramError::InvalidBound { le });
            }
            if !count.is_finite() {
                return Err(HistogramError::NonFiniteCount { le, count });
            }
            if count < 0.0 {
                return Err(HistogramError::NegativeCount { le, count });
            }
        }
        let mut sorted = series.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut merged: Vec<(f64, f64)> = Vec::with_capacity(sorted.len());
        for (le, count) in sorted {
            match merged.last_mut() {
                Some(last) if last.0 == le => last.1 += count,
                _ => merged.push((le, count)),
            }
        }
        if merged.last().map(|&(le, _)| le) != Some(f64::INFINITY) {
            return Err(HistogramError::NoInfBucket {
                bounds: merged.iter().map(|&(le, _)| le).collect(),
            });
        }
        let mut bounds = Vec::with_capacity(merged.len() - 1);
        let mut cumulative: Vec<f64> = Vec::with_capacity(merged.len());
        let mut previous: Option<(f64, f64)> = None;
        for (le, count) in merged {
            let count = match previous {
                Some((lower_le, lower_count)) if count < lower_count => {
                    if lower_count - count <= RELATIVE_TOLERANCE * lower_count {
                        lower_count
                    } else {
                        return Err(HistogramError::Decreasing {
                            lower_le,
                            lower_count,
                            le,
                            count,
                        });
                    }
                }
                _ => count,
            };
            if le.is_finite() {
                bounds.push(le);
            }
            cumulative.push(count);
            previous = Some((le, count));
        }
        Ok(Self { bounds, cumulative })
    }

    /// The finite upper bounds, ascending (the `+Inf` bucket is implied).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Cumulative counts, one per finite bound and then the `+Inf` bucket; non-decreasing.
    pub fn cumulative(&self) -> &[f64] {
        &self.cumulative
    }

    /// Total number of observations (the `+Inf` bucket's count).
    pub fn total(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    /// Every upper bound, ascending, the last one `f64::INFINITY` (the `+Inf` bucket).
    pub fn upper_bounds(&self) -> impl Iterator<Item = f64> + '_ {
        self.bounds.iter().copied().chain([f64::INFINITY])
    }

    /// The cumulative count of the bucket whose upper bound is exactly `le`
    /// (`f64::INFINITY` for the `+Inf` bucket).
    pub fn get(&self, le: f64) -> Option<f64> {
        self.upper_bounds()
            .position(|b| b == le)
            .map(|i| self.cumulative[i])
    }

    /// Count in each bin: `(-Inf, b0]`, `(b0, b1]`, …, `(b_last, +Inf)`; one more bin than
    /// there are finite bounds. Every count is finite and not negative.
    pub fn bin_counts(&self) -> Vec<f64> {
        let mut below = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let bin = c - below;
                below = c;
                bin
            })
            .collect()
    }

    /// `(slow, total)`: the number of observations above `threshold` and the total.
    ///
    /// `threshold` must be one of the finite bucket bounds, compared with a relative
    /// tolerance of [`RELATIVE_TOLERANCE`] (so `0.5` matches a bound parsed from
    /// `"0.5000000000001"`); `slow` is `total − cumulative(le = threshold)`.
    ///
    /// # Errors
    /// [`HistogramError::InvalidThreshold`] for a NaN or infinite threshold,
    /// [`HistogramError::ThresholdNotABound`] (listing the bounds) when no bound matches.
    pub fn slow_share(&self, threshold: f64) -> Result<(f64, f64), HistogramError> {
        if !threshold.is_finite() {
            return Err(HistogramError::InvalidThreshold { threshold });
        }
        let index = self
            .bounds
            .iter()
            .position(|&b| approx_eq(b, threshold))
            .ok_or_else(|| HistogramError::ThresholdNotABound {
                threshold,
                bounds: self.bounds.clone(),
            })?;
        let total = self.total();
        Ok(((total - self.cumulative[index]).max(0.0), total))
    }
}

/// `(slow, total)` straight from Prometheus bucket series: [`Buckets::from_prometheus`]
/// followed by [`Buckets::slow_share`].
///
/// # Errors
/// Any error of those two steps.
pub fn slow_share(series: &[(f64, f64)], threshold: f64) -> Result<(f64, f64), HistogramError> {
    Buckets::from_prometheus(series)?.slow_share(threshold)
}

/// Whether the normal approximation of the Mann-Whitney test applies a continuity
/// correction, as SciPy's `mannwhitneyu(..., use_continuity=...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// No correction: `z = (U − μ) / σ` (SciPy `use_continuity=False`).
    Off,
    /// Move `U` half a unit towards its mean before the normal tail is taken
    /// (SciPy `use_continuity=True`, its default).
    On,
}

/// Why a Mann-Whitney test over bins has no answer. Not an error: there is not
/// enough spread in the data yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotComputable {
    /// The baseline cohort has no observations.
    EmptyBaseline,
    /// The candidate cohort has no observations.
    EmptyCandidate,
    /// Both cohorts together hold at most one observation.
    TooFewObservations,
    /// Every observation of both cohorts is in the same bin, so the rank statistic has
    /// no variance: the cohorts cannot be told apart at this resolution.
    NoVariance,
}

impl std::fmt::Display for NotComputable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EmptyBaseline => "Mann-Whitney not computable: the baseline has no observations",
            Self::EmptyCandidate => {
                "Mann-Whitney not computable: the candidate has no observations"
            }
            Self::TooFewObservations => {
                "Mann-Whitney not computable: fewer than two observations in total"
            }
            Self::NoVariance => {
                "Mann-Whitney not computable: every observation falls in the same bin"
            }
        })
    }
}

/// A Mann-Whitney U test of candidate against baseline over binned data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// Observations in the baseline cohort.
    pub n_baseline: f64,
    /// Observations in the candidate cohort.
    pub n_candidate: f64,
    /// `U` for the candidate: pairs (candidate, baseline) where the candidate is in a
    /// higher bin, plus half the pairs in the same bin (SciPy's `statistic` with
    /// `x` = candidate).
    pub u_candidate: f64,
    /// Mean of `U` under the null hypothesis: `n_baseline · n_candidate / 2`.
    pub mean_u: f64,
    /// Standard deviation of `U` under the null hypothesis, with the tie correction.
    pub sd_u: f64,
    /// `(U − μ) / σ` without continuity correction; positive when the candidate is slower.
    pub z: f64,
    /// Continuity correction applied to the p-values.
    pub continuity: Continuity,
    /// Two-sided p-value (SciPy `alternative='two-sided'`).
    pub p_two_sided: f64,
    /// One-sided p-value for "the candidate tends to be larger (slower)"
    /// (SciPy `alternative='greater'` with `x` = candidate).
    pub p_candidate_slower: f64,
    /// Common-language effect size `P(candidate > baseline) + ½·P(tie)`, that is
    /// `U / (n_baseline · n_candidate)`: 0.5 means no shift, above 0.5 a slower candidate.
    pub common_language: f64,
    /// Rank-biserial correlation `2·common_language − 1`, in `[-1, 1]`; positive when the
    /// candidate is slower.
    pub rank_biserial: f64,
}

/// The outcome of a binned Mann-Whitney test: a result, or the reason there is none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MannWhitneyOutcome {
    /// The test ran; every number in it is finite.
    Computed(MannWhitney),
    /// The data cannot support the test (yet).
    NotComputable(NotComputable),
}

/// Mann-Whitney U test of the candidate against the baseline over binned counts, with
/// SciPy's default continuity correction ([`Continuity::On`]); see
/// [`mann_whitney_binned_with`].
///
/// # Errors
/// As [`mann_whitney_binned_with`].
pub fn mann_whitney_binned(
    baseline: &[f64],
    candidate: &[f64],
) -> Result<MannWhitneyOutcome, HistogramError> {
    mann_whitney_binned_with(baseline, candidate, Continuity::On)
}

/// Mann-Whitney U test of the candidate against the baseline over binned counts.
///
/// `baseline[k]` and `candidate[k]` count the observations of each cohort in bin `k`;
/// bins are ordered by value and share the same edges. Every bin is one group of ties
/// and gets its mid-rank, so this equals SciPy's
/// `mannwhitneyu(x, y, method='asymptotic', use_continuity=...)` with `x` the candidate
/// values and `y` the baseline values expanded from the bins, without ever expanding:
/// counts may be large or fractional (as `increase()` returns them).
///
/// The variance uses the tie correction `σ² = n₁n₂/12 · ((n+1) − Σ(t³−t)/(n(n−1)))`,
/// computed in the algebraically equal form `n₁n₂ (n³ − Σt³) / (12 n (n−1))` with
/// `n³ − Σt³ = Σₖ tₖ (n − tₖ)(n + tₖ)`, which stays exact when one bin holds nearly
/// everything.
///
/// # Errors
/// [`HistogramError::BinCountMismatch`] when the slices differ in length,
/// [`HistogramError::InvalidBinCount`] for a NaN, infinite or negative count.
/// An empty cohort or no spread is not an error but
/// [`MannWhitneyOutcome::NotComputable`].
pub fn mann_whitney_binned_with(
    baseline: &[f64],
    candidate: &[f64],
    continuity: Continuity,
) -> Result<MannWhitneyOutcome, HistogramError> {
    if baseline.len() != candidate.len() {
        return Err(HistogramError::BinCountMismatch {
            baseline: baseline.len(),
            candidate: candidate.len(),
        });
    }
    for (cohort, bins) in [("baseline", baseline), ("candidate", candidate)] {
        if let Some((index, &count)) = bins
            .iter()
            .enumerate()
            .find(|&(_, &c)| !c.is_finite() || c < 0.0)
        {
            return Err(HistogramError::InvalidBinCount {
                cohort,
                index,
                count,
            });
        }
    }
    let n_baseline: f64 = baseline.iter().sum();
    let n_candidate: f64 = candidate.iter().sum();
    if n_baseline <= 0.0 {
        return Ok(MannWhitneyOutcome::NotComputable(
            NotComputable::EmptyBaseline,
        ));
    }
    if n_candidate <= 0.0 {
        return Ok(MannWhitneyOutcome::NotComputable(
            NotComputable::EmptyCandidate,
        ));
    }
    let n = n_baseline + n_candidate;
    if n <= 1.0 {
        return Ok(MannWhitneyOutcome::NotComputable(
            NotComputable::TooFewObservations,
        ));
    }

    // U for the candidate: each candidate observation in bin k beats every baseline
    // observation in a lower bin and ties with those in bin k.
    let mut baseline_below = 0.0;
    let mut u_candidate = 0.0;
    for (&b, &c) in baseline.iter().zip(candidate) {
        u_candidate += c * (baseline_below + 0.5 * b);
        baseline_below += b;
    }

    // n³ − Σt³ = Σ t_k (n − t_k)(n + t_k), with n − t_k summed from the other bins.
    let ties: Vec<f64> = baseline.iter().zip(candidate).map(|(b, c)| b + c).collect();
    let mut above = vec![0.0; ties.len()];
    let mut running = 0.0;
    for (k, &t) in ties.iter().enumerate().rev() {
        above[k] = running;
        running += t;
    }
    let mut below = 0.0;
    let mut spread = 0.0;
    for (k, &t) in ties.iter().enumerate() {
        spread += t * (below + above[k]) * (n + t);
        below += t;
    }
    let variance = n_baseline * n_candidate * spread / (12.0 * n * (n - 1.0));
    if !(variance > 0.0 && variance.is_finite()) {
        return Ok(MannWhitneyOutcome::NotComputable(NotComputable::NoVariance));
    }

    let pairs = n_baseline * n_candidate;
    let mean_u = pairs / 2.0;
    let sd_u = variance.sqrt();
    let deviation = u_candidate - mean_u;
    let correction = match continuity {
        Continuity::Off => 0.0,
        Continuity::On => 0.5,
    };
    let normal = Normal::standard();
    let p_two_sided = (2.0 * normal.sf((deviation.abs() - correction) / sd_u)).min(1.0);
    let p_candidate_slower = normal.sf((deviation - correction) / sd_u);
    let common_language = u_candidate / pairs;
    Ok(MannWhitneyOutcome::Computed(MannWhitney {
        n_baseline,
        n_candidate,
        u_candidate,
        mean_u,
        sd_u,
        z: deviation / sd_u,
        continuity,
        p_two_sided,
        p_candidate_slower,
        common_language,
        rank_biserial: 2.0 * common_language - 1.0,
    }))
}

/// [`mann_whitney_binned_with`] on two cohorts' histograms, after checking that they
/// have the same bucket bounds (within [`RELATIVE_TOLERANCE`]).
///
/// # Errors
/// [`HistogramError::BoundsMismatch`] when the bounds differ.
pub fn mann_whitney_buckets(
    baseline: &Buckets,
    candidate: &Buckets,
    continuity: Continuity,
) -> Result<MannWhitneyOutcome, HistogramError> {
    let same = baseline.bounds.len() == candidate.bounds.len()
        && baseline
            .bounds
            .iter()
            .zip(&candidate.bounds)
            .all(|(&a, &b)| approx_eq(a, b));
    if !same {
        return Err(HistogramError::BoundsMismatch {
            baseline: baseline.bounds.clone(),
            candidate: candidate.bounds.clone(),
        });
    }
    mann_whitney_binned_with(&baseline.bin_counts(), &candidate.bin_counts(), continuity)
}

#[cfg(test)]
mod tests {
    //! Reference values come from SciPy 1.17.1 (NumPy 2), computed outside the repository.
    //! Bins are expanded into samples there with
    //! `expand = lambda bins: np.repeat(np.arange(len(bins), dtype=float), bins)`,
    //! `x = expand(candidate)`, `y = expand(baseline)`; the call is quoted at each value.
    //! `sd` references are `np.sqrt(stats.tiecorrect(stats.rankdata(np.concatenate([x, y])))
    //! * n1 * n2 * (n1 + n2 + 1) / 12)`, SciPy's classic tie-corrected form.

    use super::*;

    const INF: f64 = f64::INFINITY;

    /// Closed-form quantities: relative 1e-9.
    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert_rel(actual, expected, 1e-9, what);
    }

    /// p-values: relative 1e-6.
    fn assert_p(actual: f64, expected: f64, what: &str) {
        assert_rel(actual, expected, 1e-6, what);
    }

    fn assert_rel(actual: f64, expected: f64, tolerance: f64, what: &str) {
        let error = (actual - expected).abs();
        assert!(
            error <= tolerance * expected.abs() || (expected == 0.0 && error == 0.0),
            "{what}: got {actual:e}, expected {expected:e} (relative tolerance {tolerance:e})"
        );
    }

    fn computed(outcome: MannWhitneyOutcome) -> MannWhitney {
        match outcome {
            MannWhitneyOutcome::Computed(result) => result,
            MannWhitneyOutcome::NotComputable(reason) => panic!("expected a result: {reason}"),
        }
    }

    /// Runs both continuity settings on one case.
    fn both(baseline: &[f64], candidate: &[f64]) -> (MannWhitney, MannWhitney) {
        let off = computed(mann_whitney_binned_with(baseline, candidate, Continuity::Off).unwrap());
        let on = computed(mann_whitney_binned_with(baseline, candidate, Continuity::On).unwrap());
        (off, on)
    }

    /// A realistic `sum by (le) (increase(..._bucket[10m]))` answer for the default
    /// Prometheus client buckets, shuffled as a query result may be, with float noise.
    fn realistic_series() -> Vec<(f64, f64)> {
        vec![
            (1.0, 9_890.000_000_000_2),
            (0.005, 310.0),
            (INF, 10_000.0),
            (0.05, 4_020.0),
            (0.01, 1_150.0),
            (0.5, 9_731.0),
            (0.025, 2_480.0),
            (0.1, 6_300.0),
            (2.5, 9_970.0),
            (0.25, 8_840.0),
            (5.0, 9_995.0),
            // A hair above the +Inf bucket: the float noise `increase()` leaves behind.
            (10.0, 10_000.000_000_001),
        ]
    }

    #[test]
    fn parses_unsorted_buckets_into_sorted_bins() {
        let buckets = Buckets::from_prometheus(&realistic_series()).unwrap();
        assert_eq!(
            buckets.bounds(),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
            ]
        );
        // The total is raised to the 10 s bucket's count instead of failing.
        assert_eq!(buckets.total(), 10_000.000_000_001);
        let bins = buckets.bin_counts();
        assert_eq!(bins.len(), 12);
        let expected = [
            310.0, 840.0, 1_330.0, 1_540.0, 2_280.0, 2_540.0, 891.0, 159.0, 80.0, 25.0, 5.0, 0.0,
        ];
        for (k, (&got, &want)) in bins.iter().zip(&expected).enumerate() {
            assert!((got - want).abs() < 1e-6, "bin {k}: got {got}, want {want}");
        }
        assert!(bins.iter().all(|&b| b >= 0.0));
    }

    #[test]
    fn slow_share_on_a_realistic_bucket_set() {
        // Arithmetic reference: total 10_000 − cumulative(le=0.5) 9_731 = 269 slow requests
        // (give or take the 1e-9 of float noise in the total).
        let (slow, total) = slow_share(&realistic_series(), 0.5).unwrap();
        assert_close(slow, 269.0, "slow above 0.5 s");
        assert_close(total, 10_000.0, "total");
        // 10_000 − 9_890.000_000_000_2 (le=1) = 110.
        let (slow, _) = slow_share(&realistic_series(), 1.0).unwrap();
        assert_close(slow, 110.0, "slow above 1 s");
        // The smallest bound: 10_000 − 310.
        let (slow, _) = slow_share(&realistic_series(), 0.005).unwrap();
        assert_close(slow, 9_690.0, "slow above 5 ms");
    }

    #[test]
    fn threshold_matches_a_bound_within_relative_tolerance_only() {
        let buckets = Buckets::from_prometheus(&realistic_series()).unwrap();
        let exact = buckets.slow_share(0.5).unwrap();
        assert_eq!(buckets.slow_share(0.5 * (1.0 + 5e-10)).unwrap(), exact);
        assert_eq!(buckets.slow_share(0.5 * (1.0 - 5e-10)).unwrap(), exact);
        let error = buckets.slow_share(0.5 * (1.0 + 1e-8)).unwrap_err();
        assert!(matches!(error, HistogramError::ThresholdNotABound { .. }));
        let error = buckets.slow_share(0.3).unwrap_err();
        assert_eq!(
            error.to_string(),
            "threshold 0.3 is not a bucket bound; the finite bounds are \
             [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]"
        );
        for threshold in [f64::NAN, INF, f64::NEG_INFINITY] {
            assert!(matches!(
                buckets.slow_share(threshold),
                Err(HistogramError::InvalidThreshold { .. })
            ));
        }
    }

    #[test]
    fn a_bucket_set_needs_a_plus_inf_bucket() {
        let error = Buckets::from_prometheus(&[(0.5, 3.0), (0.1, 1.0)]).unwrap_err();
        assert_eq!(
            error,
            HistogramError::NoInfBucket {
                bounds: vec![0.1, 0.5]
            }
        );
        assert!(error.to_string().starts_with("no +Inf bucket"), "{error}");
        assert!(error.to_string().contains("[0.1, 0.5]"), "{error}");
        assert_eq!(Buckets::from_prometheus(&[]), Err(HistogramError::Empty));
    }

    #[test]
    fn only_a_plus_inf_bucket_is_one_bin_and_has_no_threshold() {
        let buckets = Buckets::from_prometheus(&[(INF, 42.0)]).unwrap();
        assert_eq!(buckets.bin_counts(), vec![42.0]);
        let error = buckets.slow_share(0.5).unwrap_err();
        assert_eq!(
            error.to_string(),
            "threshold 0.5 is not a bucket bound; the finite bounds are []"
        );
    }

    #[test]
    fn float_noise_is_clamped_but_a_real_decrease_is_an_error() {
        // 1e-10 relative below the previous bucket: noise, raised to the previous count.
        let noisy = [(0.1, 1_000.0), (0.5, 1_000.0 - 1e-7), (INF, 1_000.0)];
        let buckets = Buckets::from_prometheus(&noisy).unwrap();
        assert_eq!(buckets.cumulative(), &[1_000.0, 1_000.0, 1_000.0]);
        assert_eq!(buckets.bin_counts(), vec![1_000.0, 0.0, 0.0]);

        // One whole observation fewer at a higher bound is not noise.
        let broken = [(0.1, 1_000.0), (0.5, 999.0), (INF, 1_000.0)];
        let error = Buckets::from_prometheus(&broken).unwrap_err();
        assert_eq!(
            error,
            HistogramError::Decreasing {
                lower_le: 0.1,
                lower_count: 1_000.0,
                le: 0.5,
                count: 999.0
            }
        );
        assert!(
            error
                .to_string()
                .starts_with("cumulative counts decrease from 1000 at le=0.1 to 999 at le=0.5"),
            "{error}"
        );
        // A total below a finite bucket is a decrease too.
        let short_total = [(0.1, 10.0), (INF, 9.0)];
        assert!(matches!(
            Buckets::from_prometheus(&short_total),
            Err(HistogramError::Decreasing { le, .. }) if le == INF
        ));
    }

    #[test]
    fn invalid_numbers_are_named() {
        let nan_count = Buckets::from_prometheus(&[(0.1, f64::NAN), (INF, 1.0)]).unwrap_err();
        assert!(matches!(nan_count, HistogramError::NonFiniteCount { le, .. } if le == 0.1));
        assert!(nan_count.to_string().contains("NaN"), "{nan_count}");
        let inf_count = Buckets::from_prometheus(&[(INF, INF)]).unwrap_err();
        assert!(matches!(inf_count, HistogramError::NonFiniteCount { .. }));
        let negative = Buckets::from_prometheus(&[(0.1, -2.0), (INF, 1.0)]).unwrap_err();
        assert_eq!(
            negative.to_string(),
            "bucket le=0.1 has a negative count (-2)"
        );
        let nan_bound = Buckets::from_prometheus(&[(f64::NAN, 1.0), (INF, 1.0)]).unwrap_err();
        assert!(matches!(nan_bound, HistogramError::InvalidBound { .. }));
        let minus_inf = Buckets::from_prometheus(&[(f64::NEG_INFINITY, 1.0), (INF, 1.0)]);
        assert!(matches!(
            minus_inf,
            Err(HistogramError::InvalidBound { .. })
        ));
    }

    #[test]
    fn the_same_bound_twice_is_summed() {
        // `le="1"` and `le="1.0"` both parse to 1.0 (a bucket renamed across a restart).
        let series = [(1.0, 4.0), (INF, 10.0), (1.0, 2.0), (INF, 5.0)];
        let buckets = Buckets::from_prometheus(&series).unwrap();
        assert_eq!(buckets.bounds(), &[1.0]);
        assert_eq!(buckets.cumulative(), &[6.0, 15.0]);
    }

    // Case A: baseline [3, 5, 2, 0], candidate [1, 2, 4, 3]; the candidate is slower.
    #[test]
    fn mann_whitney_case_a_candidate_slower() {
        let (off, on) = both(&[3.0, 5.0, 2.0, 0.0], &[1.0, 2.0, 4.0, 3.0]);
        // mannwhitneyu(x, y, alternative='two-sided', method='asymptotic',
        //              use_continuity=False).statistic == 78.5
        assert_close(off.u_candidate, 78.5, "U");
        assert_close(off.mean_u, 50.0, "mean");
        assert_close(off.sd_u, 12.695834376925204, "sd (tiecorrect form)");
        assert_close(off.z, 2.244830796768979, "z = (U - mean) / sd");
        // ... alternative='two-sided', use_continuity=False).pvalue
        assert_p(
            off.p_two_sided,
            0.02477899691233818,
            "two-sided, no continuity",
        );
        // ... alternative='greater', use_continuity=False).pvalue
        assert_p(
            off.p_candidate_slower,
            0.01238949845616909,
            "greater, no continuity",
        );
        // ... alternative='two-sided', use_continuity=True).pvalue
        assert_p(
            on.p_two_sided,
            0.027422686932569412,
            "two-sided, continuity",
        );
        // ... alternative='greater', use_continuity=True).pvalue
        assert_p(
            on.p_candidate_slower,
            0.013711343466284706,
            "greater, continuity",
        );
        // U / (n1 n2) = 78.5 / 100 and 2 * 0.785 - 1.
        assert_close(off.common_language, 0.785, "common language");
        assert_close(off.rank_biserial, 0.57, "rank-biserial");
        assert_eq!((off.n_baseline, off.n_candidate), (10.0, 10.0));
        assert_eq!(on.continuity, Continuity::On);
        // The continuity correction leaves the statistic and effect sizes alone.
        assert_eq!(
            (on.u_candidate, on.z, on.sd_u),
            (off.u_candidate, off.z, off.sd_u)
        );
    }

    // Case B: baseline [0, 4, 6, 1, 9], candidate [7, 3, 2, 0, 1]; the candidate is
    // faster, unequal sizes, empty bins on both sides.
    #[test]
    fn mann_whitney_case_b_candidate_faster() {
        let (off, on) = both(&[0.0, 4.0, 6.0, 1.0, 9.0], &[7.0, 3.0, 2.0, 0.0, 1.0]);
        // mannwhitneyu(x, y, alternative='two-sided', method='asymptotic',
        //              use_continuity=False).statistic == 35.5
        assert_close(off.u_candidate, 35.5, "U");
        assert_close(off.sd_u, 26.31017633517265, "sd");
        assert_close(off.z, -3.59176612106807, "z");
        // ... alternative='two-sided', use_continuity=False).pvalue
        assert_p(
            off.p_two_sided,
            0.0003284445492418847,
            "two-sided, no continuity",
        );
        // ... alternative='greater', use_continuity=False).pvalue
        assert_p(
            off.p_candidate_slower,
            0.999835777725379,
            "greater, no continuity",
        );
        // ... alternative='two-sided', use_continuity=True).pvalue
        assert_p(
            on.p_two_sided,
            0.00035323568736125226,
            "two-sided, continuity",
        );
        // ... alternative='greater', use_continuity=True).pvalue
        assert_p(
            on.p_candidate_slower,
            0.9998473554506088,
            "greater, continuity",
        );
        // 35.5 / (13 * 20)
        assert_close(off.common_language, 0.13653846153846153, "common language");
        assert_close(off.rank_biserial, -0.726923076923077, "rank-biserial");
    }

    // Case C: baseline [10, 0, 0, 5], candidate [2, 0, 1, 12]; almost everything in two
    // tie groups at the ends.
    #[test]
    fn mann_whitney_case_c_two_heavy_tie_groups() {
        let (off, on) = both(&[10.0, 0.0, 0.0, 5.0], &[2.0, 0.0, 1.0, 12.0]);
        // mannwhitneyu(x, y, alternative='two-sided', method='asymptotic',
        //              use_continuity=False).statistic == 170.0
        assert_close(off.u_candidate, 170.0, "U");
        assert_close(off.sd_u, 20.946360065653412, "sd");
        assert_close(off.z, 2.7451070171511596, "z");
        // ... alternative='two-sided', use_continuity=False).pvalue
        assert_p(
            off.p_two_sided,
            0.006049116803254802,
            "two-sided, no continuity",
        );
        // ... alternative='greater', use_continuity=False).pvalue
        assert_p(
            off.p_candidate_slower,
            0.003024558401627401,
            "greater, no continuity",
        );
        // ... alternative='two-sided', use_continuity=True).pvalue
        assert_p(
            on.p_two_sided,
            0.0065038208597150045,
            "two-sided, continuity",
        );
        // ... alternative='greater', use_continuity=True).pvalue
        assert_p(
            on.p_candidate_slower,
            0.0032519104298575022,
            "greater, continuity",
        );
        // 170 / 225
        assert_close(off.common_language, 0.7555555555555555, "common language");
        assert_close(off.rank_biserial, 0.5111111111111111, "rank-biserial");
    }

    // Case D: the same proportions in both cohorts: baseline [4, 8, 4], candidate [2, 4, 2].
    #[test]
    fn mann_whitney_case_d_no_shift() {
        let (off, on) = both(&[4.0, 8.0, 4.0], &[2.0, 4.0, 2.0]);
        // mannwhitneyu(x, y, ..., method='asymptotic', use_continuity=False).statistic == 64.0
        assert_close(off.u_candidate, 64.0, "U");
        assert_close(off.sd_u, 15.013037812109383, "sd");
        assert_eq!(off.z, 0.0);
        // alternative='two-sided', use_continuity=False and =True: pvalue == 1.0
        assert_eq!(off.p_two_sided, 1.0);
        assert_eq!(on.p_two_sided, 1.0);
        // alternative='greater', use_continuity=False: pvalue == 0.5
        assert_p(off.p_candidate_slower, 0.5, "greater, no continuity");
        // alternative='greater', use_continuity=True: pvalue == 0.5132840717422658
        assert_p(
            on.p_candidate_slower,
            0.5132840717422658,
            "greater, continuity",
        );
        assert_close(off.common_language, 0.5, "common language");
        assert_eq!(off.rank_biserial, 0.0);
    }

    // Case F: a realistic latency histogram (12 default buckets), about 50_000 requests per
    // cohort, the candidate a little slower in the tail.
    #[test]
    fn mann_whitney_case_f_realistic_latency() {
        let baseline = [
            1200.0, 5400.0, 9800.0, 14100.0, 9300.0, 5100.0, 2900.0, 1300.0, 520.0, 240.0, 90.0,
            50.0,
        ];
        let candidate = [
            1150.0, 5200.0, 9500.0, 13900.0, 9400.0, 5300.0, 3100.0, 1450.0, 600.0, 280.0, 110.0,
            60.0,
        ];
        let (off, on) = both(&baseline, &candidate);
        // mannwhitneyu(x, y, alternative='two-sided', method='asymptotic',
        //              use_continuity=False).statistic == 1277008750.0
        assert_close(off.u_candidate, 1_277_008_750.0, "U");
        assert_close(off.sd_u, 4_479_729.036978883, "sd");
        assert_close(off.z, 5.750068762500786, "z");
        // ... alternative='two-sided', use_continuity=False).pvalue
        assert_p(
            off.p_two_sided,
            8.920716006001688e-09,
            "two-sided, no continuity",
        );
        // ... alternative='greater', use_continuity=False).pvalue
        assert_p(
            off.p_candidate_slower,
            4.460358003000844e-09,
            "greater, no continuity",
        );
        // ... alternative='two-sided', use_continuity=True).pvalue
        assert_p(
            on.p_two_sided,
            8.920721895198822e-09,
            "two-sided, continuity",
        );
        // ... alternative='greater', use_continuity=True).pvalue
        assert_p(
            on.p_candidate_slower,
            4.460360947599411e-09,
            "greater, continuity",
        );
        // U / (50_000 * 50_050)
        assert_close(off.common_language, 0.5102932067932068, "common language");
        assert_close(off.rank_biserial, 0.020586413586413554, "rank-biserial");
    }

    // Case A scaled by 10 and by 100_000 (a million observations per cohort).
    #[test]
    fn mann_whitney_scales_with_the_counts() {
        let baseline = [3.0, 5.0, 2.0, 0.0];
        let candidate = [1.0, 2.0, 4.0, 3.0];
        let scaled = |bins: &[f64], k: f64| bins.iter().map(|b| b * k).collect::<Vec<_>>();
        let (unit, _) = both(&baseline, &candidate);

        let (off, on) = both(&scaled(&baseline, 10.0), &scaled(&candidate, 10.0));
        // x, y expanded from baseline [30, 50, 20, 0], candidate [10, 20, 40, 30]:
        // mannwhitneyu(x, y, alternative='two-sided', method='asymptotic',
        //              use_continuity=False).statistic == 7850.0
        assert_close(off.u_candidate, 7_850.0, "U x10");
        assert_close(off.sd_u, 392.2938597044428, "sd x10");
        // ... alternative='two-sided', use_continuity=False).pvalue
        assert_p(off.p_two_sided, 3.7314303847361263e-13, "two-sided x10");
        // ... alternative='greater', use_continuity=False).pvalue
        assert_p(
            off.p_candidate_slower,
            1.8657151923680632e-13,
            "greater x10",
        );
        // ... alternative='two-sided', use_continuity=True).pvalue
        assert_p(
            on.p_two_sided,
            3.766777193611318e-13,
            "two-sided x10, continuity",
        );
        // ... alternative='greater', use_continuity=True).pvalue
        assert_p(
            on.p_candidate_slower,
            1.883388596805659e-13,
            "greater x10, continuity",
        );

        let k = 100_000.0;
        let (big, _) = both(&scaled(&baseline, k), &scaled(&candidate, k));
        // baseline [300000, 500000, 200000, 0], candidate [100000, 200000, 400000, 300000]:
        // mannwhitneyu(x, y, ..., method='asymptotic', use_continuity=False).statistic
        //   == 785000000000.0; the pvalue underflows to 0.0 in SciPy.
        assert_close(big.u_candidate, 785_000_000_000.0, "U x1e5");
        assert_close(big.sd_u, 391_311_993.8904739, "sd x1e5");
        assert_close(big.z, 728.3191020200877, "z x1e5");
        assert!(big.p_two_sided >= 0.0 && big.p_two_sided < 1e-300);
        // Scaling by k: U by k², the variance by k⁴ (n − 1) / (k n − 1), effects not at all.
        assert_close(big.u_candidate, unit.u_candidate * k * k, "U scales by k^2");
        let n = unit.n_baseline + unit.n_candidate;
        assert_close(
            big.sd_u * big.sd_u,
            unit.sd_u * unit.sd_u * k.powi(4) * (n - 1.0) / (k * n - 1.0),
            "variance scaling",
        );
        assert_close(big.common_language, unit.common_language, "common language");
        assert_close(big.rank_biserial, unit.rank_biserial, "rank-biserial");
    }

    #[test]
    fn mann_whitney_accepts_fractional_counts() {
        // increase() extrapolates, so counts are rarely whole. Halving every count of case C
        // keeps the effect sizes exactly and gives a finite test.
        let (half, _) = both(&[5.0, 0.0, 0.0, 2.5], &[1.0, 0.0, 0.5, 6.0]);
        assert_close(half.common_language, 0.7555555555555555, "common language");
        assert!(half.p_two_sided > 0.0 && half.p_two_sided < 1.0);
    }

    #[test]
    fn degenerate_inputs_are_not_computable_never_nan() {
        let cases: [(&[f64], &[f64], NotComputable); 6] = [
            (&[0.0, 0.0], &[1.0, 2.0], NotComputable::EmptyBaseline),
            (&[3.0, 1.0], &[0.0, 0.0], NotComputable::EmptyCandidate),
            (&[], &[], NotComputable::EmptyBaseline),
            (
                &[0.0, 5.0, 0.0],
                &[0.0, 7.0, 0.0],
                NotComputable::NoVariance,
            ),
            (&[1e6], &[1e6], NotComputable::NoVariance),
            (&[0.3], &[0.4], NotComputable::TooFewObservations),
        ];
        for (baseline, candidate, reason) in cases {
            for continuity in [Continuity::Off, Continuity::On] {
                assert_eq!(
                    mann_whitney_binned_with(baseline, candidate, continuity),
                    Ok(MannWhitneyOutcome::NotComputable(reason)),
                    "{baseline:?} vs {candidate:?}"
                );
            }
        }
        assert_eq!(
            NotComputable::NoVariance.to_string(),
            "Mann-Whitney not computable: every observation falls in the same bin"
        );
    }

    #[test]
    fn invalid_bins_are_errors() {
        assert_eq!(
            mann_whitney_binned(&[1.0, 2.0], &[1.0]),
            Err(HistogramError::BinCountMismatch {
                baseline: 2,
                candidate: 1
            })
        );
        let error = mann_whitney_binned(&[1.0, 2.0], &[1.0, -1.0]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "candidate bin 1 has count -1; bin counts must be finite and not negative"
        );
        let error = mann_whitney_binned(&[f64::NAN, 2.0], &[1.0, 1.0]).unwrap_err();
        assert!(matches!(
            error,
            HistogramError::InvalidBinCount {
                cohort: "baseline",
                index: 0,
                ..
            }
        ));
        assert!(mann_whitney_binned(&[1.0, INF], &[1.0, 1.0]).is_err());
    }

    #[test]
    fn default_matches_scipy_default_continuity() {
        let default =
            computed(mann_whitney_binned(&[3.0, 5.0, 2.0, 0.0], &[1.0, 2.0, 4.0, 3.0]).unwrap());
        assert_eq!(default.continuity, Continuity::On);
        // mannwhitneyu(x, y, alternative='two-sided', method='asymptotic',
        //              use_continuity=True).pvalue
        assert_p(
            default.p_two_sided,
            0.027422686932569412,
            "default two-sided",
        );
    }

    #[test]
    fn mann_whitney_from_buckets_checks_the_bounds() {
        // Case A as cumulative buckets: baseline [3, 5, 2, 0], candidate [1, 2, 4, 3].
        let baseline =
            Buckets::from_prometheus(&[(0.1, 3.0), (0.2, 8.0), (0.4, 10.0), (INF, 10.0)]).unwrap();
        let candidate =
            Buckets::from_prometheus(&[(INF, 10.0), (0.4, 7.0), (0.2, 3.0), (0.1, 1.0)]).unwrap();
        let result =
            computed(mann_whitney_buckets(&baseline, &candidate, Continuity::Off).unwrap());
        // Same as case A: statistic 78.5, two-sided p (use_continuity=False) 0.02477899691233818.
        assert_close(result.u_candidate, 78.5, "U");
        assert_p(result.p_two_sided, 0.02477899691233818, "two-sided");

        let other = Buckets::from_prometheus(&[(0.1, 3.0), (0.3, 8.0), (INF, 10.0)]).unwrap();
        let error = mann_whitney_buckets(&baseline, &other, Continuity::Off).unwrap_err();
        assert_eq!(
            error.to_string(),
            "baseline and candidate have different bucket bounds ([0.1, 0.2, 0.4] vs [0.1, 0.3])"
        );
    }
}
