//! The result of an instant query, parsed from the Prometheus HTTP API's JSON.
//!
//! Reference: <https://prometheus.io/docs/prometheus/latest/querying/api/#expression-query-result-formats>.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::error::Error;

/// A successful answer to an instant query.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryResponse {
    /// The result.
    pub result: QueryResult,
    /// Warnings Prometheus attached to the answer (e.g. a partial response from Thanos).
    pub warnings: Vec<String>,
}

/// The four kinds of result an instant query can return.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryResult {
    /// An instant vector: one sample per series (the usual result of `sum by (...)`).
    /// Empty when no series matched.
    Vector(Vec<Sample>),
    /// A single number with no labels, e.g. the result of `scalar(...)` or `1 + 1`.
    Scalar {
        /// Evaluation time, seconds since the Unix epoch.
        timestamp: f64,
        /// The value.
        value: f64,
    },
    /// A range vector: several samples per series (a query ending in a range selector
    /// such as `x[5m]`).
    Matrix(Vec<Series>),
    /// A string literal.
    String {
        /// Evaluation time, seconds since the Unix epoch.
        timestamp: f64,
        /// The string.
        value: String,
    },
}

impl QueryResult {
    /// The kind of result as Prometheus names it: `vector`, `scalar`, `matrix`, `string`.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryResult::Vector(_) => "vector",
            QueryResult::Scalar { .. } => "scalar",
            QueryResult::Matrix(_) => "matrix",
            QueryResult::String { .. } => "string",
        }
    }
}

/// One series of an instant vector with its value at the evaluation time.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' labels (including `__name__` when the query kept it).
    pub labels: BTreeMap<String, String>,
    /// Timestamp of the value, seconds since the Unix epoch.
    pub timestamp: f64,
    /// The value; may be NaN or infinite (Prometheus sends `"NaN"`, `"+Inf"`, `"-Inf"`).
    pub value: f64,
}

/// One series of a range vector with its samples, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// `(timestamp, value)` pairs, timestamps in seconds since the Unix epoch.
    pub values: Vec<(f64, f64)>,
}

/// The JSON envelope every API answer shares.
#[derive(Deserialize)]
pub(crate) struct Envelope {
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) data: Option<Value>,
    #[serde(default, rename = "errorType")]
    pub(crate) error_type: Option<String>,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

/// Parses the JSON body of a successful (`"status": "success"`) answer.
pub(crate) fn parse_success(envelope: Envelope) -> Result<QueryResponse, Error> {
    let data = envelope
        .data
        .ok_or_else(|| malformed("the answer has status \"success\" but no \"data\""))?;
    let result_type = data
        .get("resultType")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("\"data\" has no string \"resultType\""))?;
    let result = data
        .get("result")
        .ok_or_else(|| malformed("\"data\" has no \"result\""))?;
    let result = match result_type {
        "vector" => QueryResult::Vector(
            as_array(result, "vector result")?
                .iter()
                .map(parse_sample)
                .collect::<Result<_, _>>()?,
        ),
        "matrix" => QueryResult::Matrix(
            as_array(result, "matrix result")?
                .iter()
                .map(parse_series)
                .collect::<Result<_, _>>()?,
        ),
        "scalar" => {
            let (timestamp, value) = parse_point(result, "scalar result")?;
            QueryResult::Scalar {
                timestamp,
                value: parse_number(value, "scalar result")?,
            }
        }
        "string" => {
            let (timestamp, value) = parse_point(result, "string result")?;
            QueryResult::String {
                timestamp,
                value: value.to_owned(),
            }
        }
        other => {
            return Err(malformed(&format!(
                "unknown resultType {other:?} (expected vector, scalar, matrix or string)"
            )));
        }
    };
    Ok(QueryResponse {
        result,
        warnings: envelope.warnings,
    })
}

fn parse_sample(item: &Value) -> Result<Sample, Error> {
    let labels = parse_labels(item)?;
    let Some(point) = item.get("value") else {
        if item.get("histogram").is_some() {
            return Err(malformed(
                "a series holds a native histogram, which Sluice does not read; query the classic `_bucket` series",
            ));
        }
        return Err(malformed("a vector sample has no \"value\""));
    };
    let (timestamp, value) = parse_point(point, "vector sample")?;
    Ok(Sample {
        labels,
        timestamp,
        value: parse_number(value, "vector sample")?,
    })
}

fn parse_series(item: &Value) -> Result<Series, Error> {
    let labels = parse_labels(item)?;
    let Some(points) = item.get("values") else {
        if item.get("histograms").is_some() {
            return Err(malformed(
                "a series holds native histograms, which Sluice does not read; query the classic `_bucket` series",
            ));
        }
        return Err(malformed("a matrix series has no \"values\""));
    };
    let values = as_array(points, "matrix series values")?
        .iter()
        .map(|point| {
            let (timestamp, value) = parse_point(point, "matrix sample")?;
            Ok((timestamp, parse_number(value, "matrix sample")?))
        })
        .collect::<Result<_, Error>>()?;
    Ok(Series { labels, values })
}

fn parse_labels(item: &Value) -> Result<BTreeMap<String, String>, Error> {
    let metric = item
        .get("metric")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("a series has no \"metric\" object"))?;
    metric
        .iter()
        .map(|(name, value)| match value.as_str() {
            Some(value) => Ok((name.clone(), value.to_owned())),
            None => Err(malformed(&format!("label {name:?} is not a string"))),
        })
        .collect()
}

/// Parses `[<unix time>, "<value>"]`.
fn parse_point<'a>(point: &'a Value, what: &str) -> Result<(f64, &'a str), Error> {
    match point.as_array().map(Vec::as_slice) {
        Some([timestamp, value]) => {
            let timestamp = timestamp
                .as_f64()
                .ok_or_else(|| malformed(&format!("the timestamp of a {what} is not a number")))?;
            let value = value
                .as_str()
                .ok_or_else(|| malformed(&format!("the value of a {what} is not a string")))?;
            Ok((timestamp, value))
        }
        _ => Err(malformed(&format!(
            "a {what} is not a [timestamp, \"value\"] pair"
        ))),
    }
}

/// Parses a sample value as Prometheus formats it (Go's `strconv.FormatFloat`, with
/// `NaN`, `+Inf` and `-Inf`).
fn parse_number(text: &str, what: &str) -> Result<f64, Error> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| malformed(&format!("the value {text:?} of a {what} is not a number"))),
    }
}

fn as_array<'a>(value: &'a Value, what: &str) -> Result<&'a Vec<Value>, Error> {
    value
        .as_array()
        .ok_or_else(|| malformed(&format!("the {what} is not an array")))
}

fn malformed(reason: &str) -> Error {
    Error::MalformedResponse {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<QueryResponse, Error> {
        let envelope: Envelope = serde_json::from_str(body).expect("valid JSON envelope");
        parse_success(envelope)
    }

    #[test]
    fn parses_a_vector_with_special_values() {
        let response = parse(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"feature_flag_result_variant":"on"},"value":[1700000000.5,"12.5"]},
                {"metric":{"feature_flag_result_variant":"off"},"value":[1700000000.5,"NaN"]},
                {"metric":{},"value":[1700000000.5,"+Inf"]},
                {"metric":{},"value":[1700000000.5,"-Inf"]},
                {"metric":{},"value":[1700000000.5,"1e+06"]}]},
              "warnings":["partial response"]}"#,
        )
        .unwrap();
        assert_eq!(response.warnings, vec!["partial response".to_owned()]);
        let QueryResult::Vector(samples) = response.result else {
            panic!("expected a vector");
        };
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[0].labels["feature_flag_result_variant"], "on");
        assert_eq!(samples[0].timestamp, 1_700_000_000.5);
        assert_eq!(samples[0].value, 12.5);
        assert!(samples[1].value.is_nan());
        assert_eq!(samples[2].value, f64::INFINITY);
        assert_eq!(samples[3].value, f64::NEG_INFINITY);
        // Go formats large values with an exponent.
        assert_eq!(samples[4].value, 1e6);
    }

    #[test]
    fn parses_scalar_string_and_matrix() {
        let scalar =
            parse(r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"2"]}}"#)
                .unwrap();
        assert_eq!(
            scalar.result,
            QueryResult::Scalar {
                timestamp: 1.0,
                value: 2.0
            }
        );
        let string =
            parse(r#"{"status":"success","data":{"resultType":"string","result":[1,"hi"]}}"#)
                .unwrap();
        assert_eq!(
            string.result,
            QueryResult::String {
                timestamp: 1.0,
                value: "hi".into()
            }
        );
        let matrix = parse(
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"a":"b"},"values":[[1,"1"],[2,"3e2"]]}]}}"#,
        )
        .unwrap();
        assert_eq!(matrix.result.kind(), "matrix");
        let QueryResult::Matrix(series) = matrix.result else {
            panic!("expected a matrix");
        };
        assert_eq!(series[0].values, vec![(1.0, 1.0), (2.0, 300.0)]);
    }

    #[test]
    fn rejects_unexpected_shapes_with_a_reason() {
        let cases = [
            (r#"{"status":"success"}"#, "no \"data\""),
            (
                r#"{"status":"success","data":{"result":[]}}"#,
                "no string \"resultType\"",
            ),
            (
                r#"{"status":"success","data":{"resultType":"table","result":[]}}"#,
                "unknown resultType \"table\"",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":{}}}"#,
                "not an array",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,2]}]}}"#,
                "not a string",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#,
                "\"x\" of a vector sample is not a number",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}"#,
                "native histogram",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":1},"value":[1,"1"]}]}}"#,
                "label \"a\" is not a string",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.category(), "malformed_response", "{body}");
            assert!(
                err.to_string().contains(expected),
                "{body}: {err} should contain {expected}"
            );
        }
    }
}
