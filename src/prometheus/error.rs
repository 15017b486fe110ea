//! The errors of the Prometheus client and of splitting results into cohorts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Why a query (or splitting its result into cohorts) gave no usable answer.
///
/// Messages name the cause and what to check; they never contain a token or password
/// (secret files are named by path only). [`Error::category`] gives a bounded string for
/// metric labels and Event reasons.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// The base URL cannot be used.
    #[error("invalid Prometheus address {url:?}: {reason}")]
    InvalidUrl {
        /// The address as configured (never contains credentials: those are refused).
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The client configuration is inconsistent (both auth kinds, a bad header, a zero
    /// timeout...).
    #[error("invalid Prometheus client configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A file the configuration names (bearer token, password, CA) cannot be used.
    /// The message names the file and never shows its content.
    #[error("cannot use the {what} {path:?}: {reason}")]
    File {
        /// Which file this is, e.g. `"bearer token file"`.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why it cannot be used (an I/O error, "is empty", "contains no PEM certificate").
        reason: String,
    },

    /// The HTTP client could not be built.
    #[error("cannot build the Prometheus HTTP client: {reason}")]
    ClientBuild {
        /// The underlying error.
        reason: String,
    },

    /// No connection could be made (connection refused, DNS failure, no route).
    #[error("Prometheus at {url} is unreachable after {attempts} attempt(s): {reason}")]
    Unreachable {
        /// The endpoint queried.
        url: String,
        /// How many connection attempts were made.
        attempts: u32,
        /// The cause reported by the network stack.
        reason: String,
    },

    /// The TLS handshake failed (untrusted or invalid certificate, protocol mismatch).
    #[error(
        "TLS handshake with Prometheus at {url} failed: {reason} (check the CA file, or the address's host name)"
    )]
    Tls {
        /// The endpoint queried.
        url: String,
        /// The TLS library's reason.
        reason: String,
    },

    /// A connection was made but broke before a complete answer arrived.
    #[error("the connection to Prometheus at {url} broke after {attempts} attempt(s): {reason}")]
    ConnectionLost {
        /// The endpoint queried.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The cause.
        reason: String,
    },

    /// No complete answer arrived within the per-request timeout. Not retried: a server
    /// that is too slow once is likely to be too slow again.
    #[error("Prometheus at {url} did not answer within {}", format!("{:?}", .after))]
    TimedOut {
        /// The endpoint queried.
        url: String,
        /// The per-request timeout that expired.
        after: Duration,
    },

    /// Prometheus refused the query itself (HTTP 400 or 422): a PromQL syntax error, an
    /// unknown function, an execution error. Never retried.
    #[error("Prometheus rejected the query (HTTP {status}, {error_type}): {message}")]
    QueryRejected {
        /// The HTTP status (400 or 422).
        status: u16,
        /// Prometheus's `errorType`, e.g. `bad_data`.
        error_type: String,
        /// Prometheus's `error` text, e.g. `1:10: parse error: unexpected ...`.
        message: String,
    },

    /// Prometheus refused the credentials (HTTP 401 or 403).
    #[error(
        "Prometheus refused the credentials (HTTP {status}): check the bearer token or basic auth files{}",
        detail_suffix(detail)
    )]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// The start of the response body, if any.
        detail: String,
    },

    /// Prometheus kept answering with a server error (5xx) until the retries ran out.
    #[error(
        "Prometheus at {url} answered HTTP {status} after {attempts} attempt(s){}",
        detail_suffix(detail)
    )]
    ServerError {
        /// The endpoint queried.
        url: String,
        /// The last HTTP status.
        status: u16,
        /// How many attempts were made.
        attempts: u32,
        /// Prometheus's error text or the start of the body.
        detail: String,
    },

    /// Any other unexpected HTTP status (404 for a wrong path prefix, a redirect, 429...).
    #[error("unexpected HTTP {status} from {url}{}", detail_suffix(detail))]
    UnexpectedStatus {
        /// The endpoint queried.
        url: String,
        /// The HTTP status.
        status: u16,
        /// A hint or the start of the body.
        detail: String,
    },

    /// The answer is not the JSON the Prometheus API documents.
    #[error("malformed answer from Prometheus: {reason}")]
    MalformedResponse {
        /// What was wrong, with the start of the body where useful.
        reason: String,
    },

    /// The query returned a different kind of result than the caller needs.
    #[error(
        "the query returned a {actual} where a {expected} was expected{}",
        hint_suffix(hint)
    )]
    UnexpectedResultType {
        /// What the caller needs, e.g. `"vector"`.
        expected: &'static str,
        /// What came back, e.g. `"matrix"`.
        actual: &'static str,
        /// How to fix the query, if there is a usual fix.
        hint: &'static str,
    },

    /// A series of the result has no cohort label, so it belongs to no cohort.
    #[error(
        "a series has no {label:?} label: {{{}}}; aggregate with `sum by ({label})` and select only series of the flag",
        format_labels(labels)
    )]
    MissingCohortLabel {
        /// The cohort label that was expected.
        label: String,
        /// The labels the series does have.
        labels: BTreeMap<String, String>,
    },

    /// A histogram bucket series has no usable `le` label.
    #[error(
        "a bucket series has {problem}: {{{}}}; query the `_bucket` series with `sum by (le, ...)`",
        format_labels(labels)
    )]
    BadBucket {
        /// What is wrong with its `le` label.
        problem: String,
        /// The labels of the series.
        labels: BTreeMap<String, String>,
    },

    /// A cohort's histogram has no `le="+Inf"` bucket, so its total is unknown.
    #[error(
        "the buckets of cohort {cohort:?} have no le=\"+Inf\" bucket; the query must keep every bucket of the histogram"
    )]
    MissingInfBucket {
        /// The cohort (variant name).
        cohort: String,
    },

    /// A cohort's buckets do not make a histogram (counts that fall as the bound rises,
    /// a negative count): the message is the histogram's own.
    #[error("{problem}")]
    BrokenHistogram {
        /// The cohort (variant name).
        cohort: String,
        /// What is wrong with its buckets.
        problem: crate::analysis::histogram::HistogramError,
    },

    /// More than one series for the same cohort (or bucket), so its value is ambiguous.
    #[error(
        "more than one series for cohort {cohort:?}: {{{}}}; aggregate with `sum by (...)` so each cohort has one series",
        format_labels(labels)
    )]
    DuplicateSeries {
        /// The cohort (variant name), or `"(global)"` for a global value.
        cohort: String,
        /// The labels of one of the duplicate series.
        labels: BTreeMap<String, String>,
    },

    /// A value is NaN or infinite (for example 0/0 in a ratio query).
    #[error(
        "the value for cohort {cohort:?} is {}: {{{}}}; a ratio query dividing by zero gives this, query counts instead",
        format_value(*value),
        format_labels(labels)
    )]
    NonFiniteValue {
        /// The cohort (variant name), or `"(global)"` for a global value.
        cohort: String,
        /// The value (NaN or ±Inf).
        value: f64,
        /// The labels of the series.
        labels: BTreeMap<String, String>,
    },
}

impl Error {
    /// A short, bounded name for the kind of failure, for metric labels and Event reasons.
    /// Never contains error text or object names.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } | Error::InvalidConfig { .. } | Error::ClientBuild { .. } => {
                "config"
            }
            Error::File { .. } => "file",
            Error::Unreachable { .. } => "unreachable",
            Error::Tls { .. } => "tls",
            Error::ConnectionLost { .. } => "connection_lost",
            Error::TimedOut { .. } => "timeout",
            Error::QueryRejected { .. } => "query_rejected",
            Error::Unauthorized { .. } => "unauthorized",
            Error::ServerError { .. } => "server_error",
            Error::UnexpectedStatus { .. } => "http_status",
            Error::MalformedResponse { .. } => "malformed_response",
            Error::UnexpectedResultType { .. } => "result_type",
            Error::MissingCohortLabel { .. } => "missing_cohort_label",
            Error::BadBucket { .. }
            | Error::MissingInfBucket { .. }
            | Error::BrokenHistogram { .. } => "bad_histogram",
            Error::DuplicateSeries { .. } => "duplicate_series",
            Error::NonFiniteValue { .. } => "non_finite_value",
        }
    }

    /// Whether asking again later may succeed (the server or the network failed), as
    /// opposed to a problem with the configuration or the query that needs a change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::ConnectionLost { .. }
                | Error::TimedOut { .. }
                | Error::ServerError { .. }
        )
    }
}

/// Formats labels the way PromQL shows a series, without the braces.
pub(crate) fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{name}={value:?}");
    }
    out
}

fn format_value(value: f64) -> &'static str {
    if value.is_nan() {
        "NaN"
    } else if value > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    }
}
