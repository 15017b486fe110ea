//! Splitting one query's result into the baseline and candidate cohorts.
//!
//! One query per metric returns both cohorts, told apart by the cohort label
//! (`feature_flag_result_variant` by default). A cohort without a series is "no data"
//! (`None`), not an error: its series appears only after its first request, and a 1 %
//! stage may see none for a while. Series of other variants are ignored.

use std::collections::BTreeMap;

use super::error::Error;
use super::response::{QueryResult, Sample};
use crate::analysis::source::{Buckets, PerCohort};

/// The label OpenTelemetry's `feature_flag.result.variant` attribute becomes in Prometheus.
pub const DEFAULT_COHORT_LABEL: &str = "feature_flag_result_variant";

/// Which label tells the cohorts apart and which values it takes for each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CohortSpec {
    /// The label carrying the variant, usually [`DEFAULT_COHORT_LABEL`].
    pub label: String,
    /// The baseline variant's name (the label value of the baseline cohort).
    pub baseline: String,
    /// The candidate variant's name.
    pub candidate: String,
}

impl CohortSpec {
    /// A spec with the default cohort label.
    pub fn new(baseline: impl Into<String>, candidate: impl Into<String>) -> Self {
        CohortSpec {
            label: DEFAULT_COHORT_LABEL.to_owned(),
            baseline: baseline.into(),
            candidate: candidate.into(),
        }
    }
}

/// One cumulative histogram bucket as a series gave it: the count of observations `<= le`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bucket {
    /// The upper bound (`le` label); `f64::INFINITY` for `+Inf`.
    le: f64,
    /// The (cumulative) count, as the query returned it.
    count: f64,
}

/// Splits a vector result into one value per cohort (ratio numerators and denominators,
/// guards on the candidate).
///
/// Errors when the result is not a vector, a series lacks the cohort label, a cohort has
/// more than one series, or a cohort's value is NaN or infinite.
pub fn split_values(result: &QueryResult, cohorts: &CohortSpec) -> Result<PerCohort<f64>, Error> {
    let samples = vector(result)?;
    let mut out = PerCohort::default();
    for sample in samples {
        let Some(slot) = slot(&mut out, sample, cohorts)? else {
            continue;
        };
        if slot.is_some() {
            return Err(Error::DuplicateSeries {
                cohort: sample.labels[&cohorts.label].clone(),
                labels: sample.labels.clone(),
            });
        }
        *slot = Some(finite(sample, &sample.labels[&cohorts.label])?);
    }
    Ok(out)
}

/// Splits a vector result of histogram buckets (`sum by (le, <cohort label>) (...)`) into
/// each cohort's buckets.
///
/// Errors, besides those of [`split_values`]: a series without a numeric `le` label, two
/// series for the same cohort and bucket, a cohort with buckets but no `+Inf` bucket.
pub fn split_buckets(
    result: &QueryResult,
    cohorts: &CohortSpec,
) -> Result<PerCohort<Buckets>, Error> {
    let samples = vector(result)?;
    let mut collected: PerCohort<Vec<(Bucket, &Sample)>> = PerCohort::default();
    for sample in samples {
        let Some(slot) = slot(&mut collected, sample, cohorts)? else {
            continue;
        };
        let le = parse_le(sample)?;
        let count = finite(sample, &sample.labels[&cohorts.label])?;
        slot.get_or_insert_with(Vec::new)
            .push((Bucket { le, count }, sample));
    }
    let finish = |cohort: &str, buckets: Option<Vec<(Bucket, &Sample)>>| {
        buckets
            .map(|buckets| into_buckets(cohort, buckets))
            .transpose()
    };
    Ok(PerCohort {
        baseline: finish(&cohorts.baseline, collected.baseline)?,
        candidate: finish(&cohorts.candidate, collected.candidate)?,
    })
}

/// The single value of a global query (a guard not split by cohort): a scalar, or a
/// vector of at most one series. `None` when the vector is empty.
pub fn global_value(result: &QueryResult) -> Result<Option<f64>, Error> {
    const GLOBAL: &str = "(global)";
    match result {
        QueryResult::Scalar { value, .. } => {
            if value.is_finite() {
                Ok(Some(*value))
            } else {
                Err(Error::NonFiniteValue {
                    cohort: GLOBAL.into(),
                    value: *value,
                    labels: BTreeMap::new(),
                })
            }
        }
        QueryResult::Vector(samples) => match samples.as_slice() {
            [] => Ok(None),
            [sample] => finite(sample, GLOBAL).map(Some),
            [_, second, ..] => Err(Error::DuplicateSeries {
                cohort: GLOBAL.into(),
                labels: second.labels.clone(),
            }),
        },
        other => Err(Error::UnexpectedResultType {
            expected: "scalar or vector",
            actual: other.kind(),
            hint: hint_for(other),
        }),
    }
}

fn vector(result: &QueryResult) -> Result<&[Sample], Error> {
    match result {
        QueryResult::Vector(samples) => Ok(samples),
        other => Err(Error::UnexpectedResultType {
            expected: "vector",
            actual: other.kind(),
            hint: hint_for(other),
        }),
    }
}

fn hint_for(result: &QueryResult) -> &'static str {
    match result {
        QueryResult::Matrix(_) => {
            "wrap the range selector in a function such as increase(...[{{ window }}])"
        }
        QueryResult::Scalar { .. } => {
            "keep the cohort label, e.g. sum by (feature_flag_result_variant) (...)"
        }
        _ => "",
    }
}

/// The slot of `sample`'s cohort in `out`: `None` for another variant's series.
fn slot<'a, T>(
    out: &'a mut PerCohort<T>,
    sample: &Sample,
    cohorts: &CohortSpec,
) -> Result<Option<&'a mut Option<T>>, Error> {
    let Some(variant) = sample.labels.get(&cohorts.label) else {
        return Err(Error::MissingCohortLabel {
            label: cohorts.label.clone(),
            labels: sample.labels.clone(),
        });
    };
    Ok(if *variant == cohorts.baseline {
        Some(&mut out.baseline)
    } else if *variant == cohorts.candidate {
        Some(&mut out.candidate)
    } else {
        None
    })
}

fn finite(sample: &Sample, cohort: &str) -> Result<f64, Error> {
    if sample.value.is_finite() {
        Ok(sample.value)
    } else {
        Err(Error::NonFiniteValue {
            cohort: cohort.to_owned(),
            value: sample.value,
            labels: sample.labels.clone(),
        })
    }
}

fn parse_le(sample: &Sample) -> Result<f64, Error> {
    let bad = |problem: String| Error::BadBucket {
        problem,
        labels: sample.labels.clone(),
    };
    let text = sample
        .labels
        .get("le")
        .ok_or_else(|| bad("no \"le\" label".into()))?;
    let le = match text.as_str() {
        "+Inf" | "Inf" | "inf" | "+inf" => f64::INFINITY,
        _ => text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(format!("an \"le\" label that is not a number ({text:?})")))?,
    };
    Ok(le)
}

fn into_buckets(cohort: &str, mut buckets: Vec<(Bucket, &Sample)>) -> Result<Buckets, Error> {
    buckets.sort_by(|a, b| a.0.le.total_cmp(&b.0.le));
    if let Some(pair) = buckets.windows(2).find(|w| w[0].0.le == w[1].0.le) {
        return Err(Error::DuplicateSeries {
            cohort: cohort.to_owned(),
            labels: pair[1].1.labels.clone(),
        });
    }
    if buckets.last().is_none_or(|b| b.0.le != f64::INFINITY) {
        return Err(Error::MissingInfBucket {
            cohort: cohort.to_owned(),
        });
    }
    let pairs: Vec<(f64, f64)> = buckets.iter().map(|(b, _)| (b.le, b.count)).collect();
    Buckets::from_prometheus(&pairs).map_err(|problem| Error::BrokenHistogram {
        cohort: cohort.to_owned(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timestamp: 1.0,
            value,
        }
    }

    fn spec() -> CohortSpec {
        CohortSpec::new("off", "on")
    }

    const V: &str = DEFAULT_COHORT_LABEL;

    #[test]
    fn values_are_split_and_other_variants_ignored() {
        let result = QueryResult::Vector(vec![
            sample(&[(V, "on")], 3.0),
            sample(&[(V, "off")], 7.0),
            sample(&[(V, "experimental")], 100.0),
        ]);
        let split = split_values(&result, &spec()).unwrap();
        assert_eq!(
            split,
            PerCohort {
                baseline: Some(7.0),
                candidate: Some(3.0)
            }
        );
        assert!(split.is_complete());
    }

    #[test]
    fn empty_results_and_missing_cohorts_are_no_data() {
        let empty = split_values(&QueryResult::Vector(vec![]), &spec()).unwrap();
        assert!(empty.is_empty());
        let only_baseline = split_values(
            &QueryResult::Vector(vec![sample(&[(V, "off")], 1.0)]),
            &spec(),
        )
        .unwrap();
        assert_eq!(only_baseline.baseline, Some(1.0));
        assert_eq!(only_baseline.candidate, None);
        assert!(!only_baseline.is_complete() && !only_baseline.is_empty());
    }

    #[test]
    fn a_custom_cohort_label_is_used() {
        let spec = CohortSpec {
            label: "variant".into(),
            ..spec()
        };
        let result = QueryResult::Vector(vec![sample(&[("variant", "on")], 2.0)]);
        assert_eq!(split_values(&result, &spec).unwrap().candidate, Some(2.0));
    }

    #[test]
    fn a_series_without_the_label_names_label_and_series() {
        let result = QueryResult::Vector(vec![sample(&[("job", "shop"), ("code", "500")], 1.0)]);
        let err = split_values(&result, &spec()).unwrap_err();
        assert_eq!(err.category(), "missing_cohort_label");
        let text = err.to_string();
        assert!(text.contains("\"feature_flag_result_variant\""), "{text}");
        assert!(text.contains("code=\"500\", job=\"shop\""), "{text}");
    }

    #[test]
    fn nan_and_infinite_values_are_errors() {
        for value in [f64::NAN, f64::INFINITY] {
            let result = QueryResult::Vector(vec![sample(&[(V, "on")], value)]);
            let err = split_values(&result, &spec()).unwrap_err();
            assert_eq!(err.category(), "non_finite_value");
            assert!(err.to_string().contains("\"on\""), "{err}");
        }
        let nan = QueryResult::Vector(vec![sample(&[(V, "on")], f64::NAN)]);
        assert!(
            split_values(&nan, &spec())
                .unwrap_err()
                .to_string()
                .contains("NaN")
        );
        // A NaN in a variant nobody compares is not our concern.
        let other = QueryResult::Vector(vec![sample(&[(V, "other")], f64::NAN)]);
        assert!(split_values(&other, &spec()).unwrap().is_empty());
    }

    #[test]
    fn two_series_for_one_cohort_are_ambiguous() {
        let result = QueryResult::Vector(vec![
            sample(&[(V, "on"), ("pod", "a")], 1.0),
            sample(&[(V, "on"), ("pod", "b")], 2.0),
        ]);
        let err = split_values(&result, &spec()).unwrap_err();
        assert_eq!(err.category(), "duplicate_series");
        assert!(err.to_string().contains("sum by"), "{err}");
    }

    #[test]
    fn non_vectors_are_refused_with_a_hint() {
        let matrix = QueryResult::Matrix(vec![]);
        let err = split_values(&matrix, &spec()).unwrap_err();
        assert_eq!(err.category(), "result_type");
        assert!(err.to_string().contains("matrix"), "{err}");
        assert!(err.to_string().contains("increase("), "{err}");
        let scalar = QueryResult::Scalar {
            timestamp: 1.0,
            value: 1.0,
        };
        assert!(split_buckets(&scalar, &spec()).is_err());
    }

    #[test]
    fn buckets_are_split_sorted_and_keyed_by_le() {
        let result = QueryResult::Vector(vec![
            sample(&[(V, "on"), ("le", "+Inf")], 10.0),
            sample(&[(V, "on"), ("le", "0.5")], 8.0),
            sample(&[(V, "on"), ("le", "0.1")], 2.0),
            sample(&[(V, "off"), ("le", "0.1")], 5.0),
            sample(&[(V, "off"), ("le", "+Inf")], 20.0),
            sample(&[(V, "other"), ("le", "0.1")], 1.0),
        ]);
        let split = split_buckets(&result, &spec()).unwrap();
        let on = split.candidate.unwrap();
        let les: Vec<f64> = on.upper_bounds().collect();
        assert_eq!(les, vec![0.1, 0.5, f64::INFINITY]);
        assert_eq!(on.get(0.5), Some(8.0));
        assert_eq!(on.get(0.25), None);
        assert_eq!(on.total(), 10.0);
        assert_eq!(split.baseline.unwrap().total(), 20.0);
    }

    #[test]
    fn bucket_errors_name_the_problem() {
        let cases: Vec<(Vec<Sample>, &str, &str)> = vec![
            (
                vec![sample(&[(V, "on")], 1.0)],
                "bad_histogram",
                "no \"le\" label",
            ),
            (
                vec![sample(&[(V, "on"), ("le", "fast")], 1.0)],
                "bad_histogram",
                "\"fast\"",
            ),
            (
                vec![sample(&[(V, "on"), ("le", "0.5")], 1.0)],
                "bad_histogram",
                "+Inf",
            ),
            (
                vec![
                    sample(&[(V, "on"), ("le", "+Inf"), ("pod", "a")], 1.0),
                    sample(&[(V, "on"), ("le", "+Inf"), ("pod", "b")], 1.0),
                ],
                "duplicate_series",
                "pod",
            ),
            (
                vec![sample(&[(V, "on"), ("le", "+Inf")], f64::NAN)],
                "non_finite_value",
                "NaN",
            ),
        ];
        for (samples, category, text) in cases {
            let err = split_buckets(&QueryResult::Vector(samples), &spec()).unwrap_err();
            assert_eq!(err.category(), category, "{err}");
            assert!(
                err.to_string().contains(text),
                "{err} should contain {text}"
            );
        }
    }

    #[test]
    fn global_values() {
        assert_eq!(global_value(&QueryResult::Vector(vec![])).unwrap(), None);
        assert_eq!(
            global_value(&QueryResult::Vector(vec![sample(&[], 4.0)])).unwrap(),
            Some(4.0)
        );
        assert_eq!(
            global_value(&QueryResult::Scalar {
                timestamp: 0.0,
                value: 2.0
            })
            .unwrap(),
            Some(2.0)
        );
        let two = QueryResult::Vector(vec![sample(&[("a", "1")], 1.0), sample(&[("a", "2")], 1.0)]);
        assert_eq!(
            global_value(&two).unwrap_err().category(),
            "duplicate_series"
        );
        let nan = QueryResult::Scalar {
            timestamp: 0.0,
            value: f64::NAN,
        };
        assert_eq!(
            global_value(&nan).unwrap_err().category(),
            "non_finite_value"
        );
    }
}
