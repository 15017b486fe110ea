//! The Prometheus HTTP API client: instant queries with a timeout per request, bounded
//! retries, auth read from files at request time, extra headers and TLS.
//!
//! Reference: <https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries>.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::Error;
use super::response::{Envelope, QueryResponse, parse_success};

/// The most retries a configuration may ask for: retries are for a blip, not an outage.
pub const MAX_RETRIES_LIMIT: u32 = 10;

/// The longest wait between two attempts, however many retries were configured.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The largest answer read; a query that returns more is not a per-cohort aggregate.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How much of an unexpected body an error message quotes.
const BODY_EXCERPT_CHARS: usize = 200;

/// How to reach and authenticate to a Prometheus-compatible API.
///
/// Credentials are files, read at every query, so a rotated Kubernetes Secret mounted as
/// a volume takes effect without a restart; their content is never kept or shown. `Debug`
/// shows extra headers by name only, in case one carries a key.
#[derive(Clone, PartialEq)]
pub struct ClientConfig {
    /// Base URL of the API, e.g. `http://prometheus.monitoring:9090` or, behind a path
    /// prefix, `https://mimir.example.com/prometheus`. `/api/v1/query` is appended.
    /// Must not contain credentials, a query string or a fragment.
    pub base_url: String,
    /// Timeout of each HTTP request (connect, send, wait and read the answer). Also sent
    /// to the server as the query's `timeout` so it stops evaluating too.
    pub timeout: Duration,
    /// How many times a failed request is retried (at most [`MAX_RETRIES_LIMIT`]). Only
    /// connection failures and 5xx answers are retried; timeouts, 4xx answers and bad
    /// queries are not.
    pub max_retries: u32,
    /// The wait before the first retry; it doubles at each further retry (capped at 5 s).
    pub retry_backoff: Duration,
    /// File holding a bearer token, sent as `Authorization: Bearer <token>`. Surrounding
    /// whitespace (a trailing newline) is ignored.
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic auth; exclusive with `bearer_token_file`.
    pub basic_auth: Option<BasicAuth>,
    /// Extra headers sent with every request, e.g. `X-Scope-OrgID` for a Mimir or Cortex
    /// tenant. `Authorization` is refused here: use a token or password file.
    pub headers: BTreeMap<String, String>,
    /// TLS settings for `https` addresses.
    pub tls: TlsConfig,
}

impl ClientConfig {
    /// A configuration for `base_url` with the defaults: 10 s timeout, 2 retries starting
    /// at 200 ms, no auth, no extra headers, TLS verified against the system's roots.
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_backoff: Duration::from_millis(200),
            bearer_token_file: None,
            basic_auth: None,
            headers: BTreeMap::new(),
            tls: TlsConfig::default(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("basic_auth", &self.basic_auth)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("tls", &self.tls)
            .finish()
    }
}

/// HTTP basic auth: the username inline, the password in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct BasicAuth {
    /// The username (not a secret).
    pub username: String,
    /// File holding the password. Surrounding whitespace (a trailing newline) is ignored.
    pub password_file: PathBuf,
}

/// TLS settings. Certificates are verified unless `insecure_skip_verify` says otherwise.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) to trust. When set, only these are trusted
    /// (as Prometheus's own `ca_file` does); when unset, the system's roots are.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. Defaults to `false`; for tests only: it lets
    /// anybody on the path read the credentials and forge answers.
    pub insecure_skip_verify: bool,
}

/// Makes sure a rustls crypto provider is installed for the process: `ring`, the one kube
/// uses, unless one was installed already.
///
/// reqwest is built without a provider of its own (feature `rustls-no-provider`), so the
/// process has exactly one and kube's `ClientConfig::builder()` cannot find two and panic.
/// [`PrometheusClient::new`] calls this; a binary may call it first thing in `main`.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one in between: that is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A client for the Prometheus HTTP API (Prometheus, Thanos, Mimir, VictoriaMetrics...).
///
/// Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct PrometheusClient {
    http: reqwest::Client,
    endpoint: Url,
    headers: HeaderMap,
    config: ClientConfig,
}

impl fmt::Debug for PrometheusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A secret read from a file, redacted in `Debug`; dropped right after the request.
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The credentials for one query, read from their files.
#[derive(Debug)]
enum Credentials {
    None,
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt.
    Retryable(Transient),
    /// Final: return this error.
    Final(Error),
}

/// A failure that another attempt may not repeat.
enum Transient {
    Connect(String),
    Lost(String),
    Status(StatusCode, String),
}

impl PrometheusClient {
    /// Checks the configuration and builds the client. Reads the CA file (if any) now;
    /// token and password files are read at each query.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let endpoint = endpoint_url(&config.base_url)?;
        if config.timeout.is_zero() {
            return Err(Error::InvalidConfig {
                reason: "the request timeout must be greater than zero".into(),
            });
        }
        if config.max_retries > MAX_RETRIES_LIMIT {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "max retries is {}, at most {MAX_RETRIES_LIMIT} are allowed",
                    config.max_retries
                ),
            });
        }
        if config.bearer_token_file.is_some() && config.basic_auth.is_some() {
            return Err(Error::InvalidConfig {
                reason: "both a bearer token file and basic auth are set; choose one".into(),
            });
        }
        let headers = extra_headers(&config.headers)?;

        ensure_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.tls.ca_file {
            builder = builder.tls_certs_only(read_ca_file(path)?);
        }
        if config.tls.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| Error::ClientBuild {
            reason: error_chain(&e),
        })?;
        Ok(PrometheusClient {
            http,
            endpoint,
            headers,
            config,
        })
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The full URL queries are sent to (`<base>/api/v1/query`).
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Runs an instant query (`POST /api/v1/query`), evaluated at `time` or, when `None`,
    /// at the server's current time.
    ///
    /// Connection failures and 5xx answers are retried up to `max_retries` times with
    /// exponential backoff; everything else fails at once. The credentials files are read
    /// once per call.
    pub async fn query(
        &self,
        promql: &str,
        time: Option<jiff::Timestamp>,
    ) -> Result<QueryResponse, Error> {
        let credentials = self.read_credentials()?;
        let mut form = vec![
            ("query", promql.to_owned()),
            (
                "timeout",
                format!("{}ms", self.config.timeout.as_millis().max(1)),
            ),
        ];
        if let Some(time) = time {
            form.push(("time", time.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()));
        }

        let began = std::time::Instant::now();
        let result = self.attempts(&form, &credentials).await;
        crate::telemetry::observe_prometheus_query(began.elapsed());
        result
    }

    /// The attempts of one query, retried as [`PrometheusClient::query`] says.
    async fn attempts(
        &self,
        form: &[(&str, String)],
        credentials: &Credentials,
    ) -> Result<QueryResponse, Error> {
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let failure = match self.attempt(form, credentials).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let transient = match failure {
                Failure::Final(error) => return Err(error),
                Failure::Retryable(transient) => transient,
            };
            if attempts > self.config.max_retries {
                return Err(self.give_up(transient, attempts));
            }
            let wait = self.backoff(attempts);
            tracing::debug!(
                url = %self.endpoint,
                attempt = attempts,
                wait_ms = wait.as_millis() as u64,
                cause = %self.describe(&transient),
                "retrying a Prometheus query"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One HTTP request and the classification of its outcome.
    async fn attempt(
        &self,
        form: &[(&str, String)],
        credentials: &Credentials,
    ) -> Result<QueryResponse, Failure> {
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .timeout(self.config.timeout)
            .headers(self.headers.clone())
            .form(form);
        request = match credentials {
            Credentials::None => request,
            Credentials::Bearer(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.0))
                    .map_err(|_| Failure::Final(self.bad_secret_error()))?;
                value.set_sensitive(true);
                request.header(AUTHORIZATION, value)
            }
            Credentials::Basic { username, password } => {
                request.basic_auth(username, Some(&password.0))
            }
        };

        let mut response = request
            .send()
            .await
            .map_err(|e| self.classify_send_error(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(Failure::Final(Error::MalformedResponse {
                            reason: format!(
                                "the answer is larger than {} MiB; aggregate the query so it returns one series per cohort",
                                MAX_RESPONSE_BYTES / (1024 * 1024)
                            ),
                        }));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(self.classify_send_error(&e)),
            }
        }
        self.interpret(status, &body)
    }

    /// Turns a status and body into a result or a failure.
    fn interpret(&self, status: StatusCode, body: &[u8]) -> Result<QueryResponse, Failure> {
        let envelope = serde_json::from_slice::<Envelope>(body).ok();
        if status.is_success() {
            let Some(envelope) = envelope else {
                return Err(Failure::Final(Error::MalformedResponse {
                    reason: format!(
                        "HTTP {} with a body that is not the API's JSON: {}",
                        status.as_u16(),
                        excerpt(body)
                    ),
                }));
            };
            return match envelope.status.as_str() {
                "success" => parse_success(envelope).map_err(Failure::Final),
                "error" => Err(Failure::Final(rejected(status, envelope))),
                other => Err(Failure::Final(Error::MalformedResponse {
                    reason: format!("unknown status {other:?} (expected \"success\" or \"error\")"),
                })),
            };
        }
        match status.as_u16() {
            400 | 422 => Err(Failure::Final(match envelope {
                Some(envelope) => rejected(status, envelope),
                None => Error::QueryRejected {
                    status: status.as_u16(),
                    error_type: "unknown".into(),
                    message: excerpt(body),
                },
            })),
            401 | 403 => Err(Failure::Final(Error::Unauthorized {
                status: status.as_u16(),
                detail: excerpt(body),
            })),
            500..=599 => {
                let detail = match envelope {
                    Some(Envelope {
                        error: Some(error),
                        error_type,
                        ..
                    }) => crate::runtime::redact(&match error_type {
                        Some(kind) => format!("{kind}: {error}"),
                        None => error,
                    }),
                    _ => excerpt(body),
                };
                Err(Failure::Retryable(Transient::Status(status, detail)))
            }
            _ => {
                let detail = if status.is_redirection() {
                    "redirects are not followed; set the address to the final URL".to_owned()
                } else if status == StatusCode::NOT_FOUND {
                    format!(
                        "no Prometheus API here; check the address and its path prefix ({})",
                        excerpt(body)
                    )
                } else {
                    excerpt(body)
                };
                Err(Failure::Final(Error::UnexpectedStatus {
                    url: self.endpoint.to_string(),
                    status: status.as_u16(),
                    detail,
                }))
            }
        }
    }

    fn classify_send_error(&self, error: &reqwest::Error) -> Failure {
        if error.is_timeout() {
            return Failure::Final(Error::TimedOut {
                url: self.endpoint.to_string(),
                after: self.config.timeout,
            });
        }
        if let Some(tls) = find_tls_error(error) {
            return Failure::Final(Error::Tls {
                url: self.endpoint.to_string(),
                reason: tls,
            });
        }
        if error.is_connect() {
            Failure::Retryable(Transient::Connect(root_cause(error)))
        } else {
            Failure::Retryable(Transient::Lost(root_cause(error)))
        }
    }

    fn give_up(&self, transient: Transient, attempts: u32) -> Error {
        let url = self.endpoint.to_string();
        match transient {
            Transient::Connect(reason) => Error::Unreachable {
                url,
                attempts,
                reason,
            },
            Transient::Lost(reason) => Error::ConnectionLost {
                url,
                attempts,
                reason,
            },
            Transient::Status(status, detail) => Error::ServerError {
                url,
                status: status.as_u16(),
                attempts,
                detail,
            },
        }
    }

    fn describe(&self, transient: &Transient) -> String {
        match transient {
            Transient::Connect(reason) => format!("cannot connect: {reason}"),
            Transient::Lost(reason) => format!("connection broke: {reason}"),
            Transient::Status(status, _) => format!("HTTP {}", status.as_u16()),
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        crate::runtime::Backoff::new(self.config.retry_backoff, MAX_BACKOFF).delay(attempts)
    }

    fn read_credentials(&self) -> Result<Credentials, Error> {
        if let Some(path) = &self.config.bearer_token_file {
            return Ok(Credentials::Bearer(read_secret(path, "bearer token file")?));
        }
        if let Some(basic) = &self.config.basic_auth {
            let password = read_secret(&basic.password_file, "basic auth password file")?;
            // `Authorization: Basic` carries the base64 of `user:password`.
            crate::runtime::register_secret(
                &base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", basic.username, password.0)),
            );
            return Ok(Credentials::Basic {
                username: basic.username.clone(),
                password,
            });
        }
        Ok(Credentials::None)
    }

    fn bad_secret_error(&self) -> Error {
        Error::File {
            what: "bearer token file",
            path: self.config.bearer_token_file.clone().unwrap_or_default(),
            reason: "the token contains characters not allowed in an HTTP header".into(),
        }
    }
}

/// `<base>/api/v1/query`, after checking the base URL.
fn endpoint_url(base_url: &str) -> Result<Url, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: redact_userinfo(base_url),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("the scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the address are not allowed; use basic auth with a password file",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the address has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "the address must not have a query string or fragment",
        ));
    }
    let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// The address for an error message, with any `user:password@` removed.
fn redact_userinfo(base_url: &str) -> String {
    match Url::parse(base_url) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(_) => base_url.to_owned(),
        // Unparseable: it may still hold credentials; show only that it is broken.
        Err(_) if base_url.contains('@') => "<unparseable address>".to_owned(),
        Err(_) => base_url.to_owned(),
    }
}

fn extra_headers(headers: &BTreeMap<String, String>) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::InvalidConfig {
            reason: format!("{name:?} is not a valid HTTP header name"),
        })?;
        if header == AUTHORIZATION {
            return Err(Error::InvalidConfig {
                reason: "the Authorization header cannot be set as an extra header; use a bearer token file or basic auth".into(),
            });
        }
        let value = HeaderValue::from_str(value).map_err(|_| Error::InvalidConfig {
            reason: format!("the value of header {name:?} is not a valid HTTP header value"),
        })?;
        map.insert(header, value);
    }
    Ok(map)
}

/// Reads a secret file; errors name the file, never its content.
fn read_secret(path: &Path, what: &'static str) -> Result<Secret, Error> {
    let file_error = |reason: String| Error::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(file_error("the file is empty".into()));
    }
    // A server may echo what it was sent (its `Authorization` header) in an error body:
    // every text that leaves the process is redacted of it.
    crate::runtime::register_secret(trimmed);
    Ok(Secret(trimmed.to_owned()))
}

/// Reads and checks a PEM file of CA certificates.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let file_error = |reason: String| Error::File {
        what: "CA file",
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let mut store = rustls::RootCertStore::empty();
    let mut certificates = Vec::new();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| file_error(format!("invalid PEM: {e}")))?;
        let certificate = reqwest::Certificate::from_der(&der)
            .map_err(|e| file_error(format!("invalid certificate: {e}")))?;
        store
            .add(der)
            .map_err(|e| file_error(format!("invalid certificate: {e}")))?;
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err(file_error("the file contains no PEM certificate".into()));
    }
    Ok(certificates)
}

fn rejected(status: StatusCode, envelope: Envelope) -> Error {
    Error::QueryRejected {
        status: status.as_u16(),
        error_type: envelope.error_type.unwrap_or_else(|| "unknown".into()),
        message: crate::runtime::redact(&envelope.error.unwrap_or_default()),
    }
}

/// The start of a body, on one line and without any secret it echoes, for an error
/// message.
fn excerpt(body: &[u8]) -> String {
    let text = crate::runtime::redact(&String::from_utf8_lossy(body));
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut out: String = text
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > BODY_EXCERPT_CHARS {
        out.push('…');
    }
    out
}

/// The errors of a chain, outermost first. `io::Error`'s `source()` skips the error it
/// wraps, so that one is visited explicitly.
fn chain<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        out.push(current);
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => current.source(),
        };
    }
    out
}

/// The innermost cause, e.g. `Connection refused (os error 111)`.
fn root_cause(error: &reqwest::Error) -> String {
    chain(error)
        .last()
        .map(|e| e.to_string())
        .unwrap_or_else(|| error.to_string())
}

/// Every message of the chain, joined.
fn error_chain(error: &reqwest::Error) -> String {
    chain(error)
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// The TLS library's error, if the chain holds one.
fn find_tls_error(error: &reqwest::Error) -> Option<String> {
    chain(error)
        .into_iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>().map(ToString::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_appends_the_api_path_to_any_prefix() {
        assert_eq!(
            endpoint_url("http://prom:9090").unwrap().as_str(),
            "http://prom:9090/api/v1/query"
        );
        assert_eq!(
            endpoint_url("https://mimir.example.com/prometheus/")
                .unwrap()
                .as_str(),
            "https://mimir.example.com/prometheus/api/v1/query"
        );
    }

    #[test]
    fn bad_addresses_are_config_errors_without_credentials() {
        for (url, reason) in [
            ("prom:9090", "scheme"),
            ("ftp://prom", "scheme must be http or https"),
            ("http://", "empty host"),
            ("http://prom:9090/?x=1", "query string"),
            (
                "http://user:hunter2@prom:9090",
                "credentials in the address",
            ),
            ("not a url", "relative URL"),
        ] {
            let err = PrometheusClient::new(ClientConfig::new(url)).unwrap_err();
            assert_eq!(err.category(), "config", "{url}");
            let text = err.to_string();
            assert!(text.contains(reason), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn inconsistent_configurations_are_refused() {
        let mut both = ClientConfig::new("http://prom:9090");
        both.bearer_token_file = Some("/token".into());
        both.basic_auth = Some(BasicAuth {
            username: "u".into(),
            password_file: "/password".into(),
        });
        let mut authorization = ClientConfig::new("http://prom:9090");
        authorization
            .headers
            .insert("authorization".into(), "Bearer x".into());
        let mut bad_header = ClientConfig::new("http://prom:9090");
        bad_header
            .headers
            .insert("X-Scope-OrgID".into(), "a\nb".into());
        let mut zero = ClientConfig::new("http://prom:9090");
        zero.timeout = Duration::ZERO;
        let mut retries = ClientConfig::new("http://prom:9090");
        retries.max_retries = 1000;
        for (config, expected) in [
            (both, "choose one"),
            (authorization, "Authorization header"),
            (bad_header, "X-Scope-OrgID"),
            (zero, "greater than zero"),
            (retries, "at most 10"),
        ] {
            let err = PrometheusClient::new(config).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert_eq!(err.category(), "config");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut config = ClientConfig::new("http://prom:9090");
        config.retry_backoff = Duration::from_millis(100);
        let client = PrometheusClient::new(config).unwrap();
        assert_eq!(client.backoff(1), Duration::from_millis(100));
        assert_eq!(client.backoff(2), Duration::from_millis(200));
        assert_eq!(client.backoff(3), Duration::from_millis(400));
        assert_eq!(client.backoff(10), MAX_BACKOFF);
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(excerpt(b"a\nb"), "a b");
        let long = "x".repeat(500);
        let short = excerpt(long.as_bytes());
        assert_eq!(short.chars().count(), BODY_EXCERPT_CHARS + 1);
    }

    #[test]
    fn debug_shows_header_names_only() {
        let mut config = ClientConfig::new("http://prom:9090");
        config
            .headers
            .insert("X-Api-Key".into(), "key-material".into());
        let text = format!("{config:?}");
        assert!(text.contains("X-Api-Key"), "{text}");
        assert!(!text.contains("key-material"), "{text}");
        let client = PrometheusClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("key-material"));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let credentials = Credentials::Basic {
            username: "sluice".into(),
            password: Secret("hunter2".into()),
        };
        let text = format!("{credentials:?}");
        assert!(text.contains("sluice"));
        assert!(!text.contains("hunter2"), "{text}");
    }
}
