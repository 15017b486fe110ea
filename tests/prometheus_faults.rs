//! The client against servers that misbehave in chosen ways: each failure gives an error
//! that names the cause, promptly, and is retried only when it should be.

mod support;

use std::time::{Duration, Instant};

use sluice::prometheus::{BasicAuth, ClientConfig, Error, PrometheusClient, QueryResult};
use support::fake::{Behaviour, FakeServer};

const SUCCESS: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"feature_flag_result_variant":"on"},"value":[1672532400,"42"]}]}}"#;

fn config(url: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    config.timeout = Duration::from_millis(500);
    config.max_retries = 2;
    config.retry_backoff = Duration::from_millis(10);
    config
}

fn respond(answers: &[(u16, &str)]) -> Behaviour {
    Behaviour::Respond(
        answers
            .iter()
            .map(|(status, body)| (*status, (*body).to_owned()))
            .collect(),
    )
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_once() {
    let server = FakeServer::start(Behaviour::Hang).await;
    let client = PrometheusClient::new(config(&server.url)).unwrap();
    let started = Instant::now();
    let err = client.query("up", None).await.unwrap_err();
    let elapsed = started.elapsed();
    println!("{err} after {elapsed:?}");
    assert_eq!(err.category(), "timeout");
    assert!(
        matches!(err, Error::TimedOut { after, .. } if after == Duration::from_millis(500)),
        "{err:?}"
    );
    assert!(err.to_string().contains("within 500ms"), "{err}");
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    // Not retried (one request), and reported promptly.
    assert_eq!(server.requests(), 1);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let server = FakeServer::start(respond(&[(
        500,
        r#"{"status":"error","errorType":"internal","error":"boom in the query engine"}"#,
    )]))
    .await;
    let client = PrometheusClient::new(config(&server.url)).unwrap();
    let started = Instant::now();
    let err = client.query("up", None).await.unwrap_err();
    println!("{err} after {:?}", started.elapsed());
    assert_eq!(server.requests(), 3, "one attempt and two retries");
    assert_eq!(err.category(), "server_error");
    assert!(
        matches!(
            err,
            Error::ServerError {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("HTTP 500 after 3 attempt(s)"), "{text}");
    assert!(text.contains(&server.url), "{text}");
    assert!(
        text.contains("internal: boom in the query engine"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_server_error_that_clears_up_is_retried_to_success() {
    let server = FakeServer::start(respond(&[
        (503, "<html>upstream unavailable</html>"),
        (200, SUCCESS),
    ]))
    .await;
    let client = PrometheusClient::new(config(&server.url)).unwrap();
    let response = client.query("up", None).await.expect("second attempt");
    assert_eq!(server.requests(), 2);
    let QueryResult::Vector(samples) = response.result else {
        panic!("expected a vector");
    };
    assert_eq!(samples[0].value, 42.0);
}

#[tokio::test]
async fn zero_retries_means_one_attempt() {
    let server = FakeServer::start(respond(&[(502, "bad gateway")])).await;
    let mut config = config(&server.url);
    config.max_retries = 0;
    let err = PrometheusClient::new(config)
        .unwrap()
        .query("up", None)
        .await
        .unwrap_err();
    assert_eq!(server.requests(), 1);
    assert!(
        err.to_string()
            .contains("HTTP 502 after 1 attempt(s): bad gateway"),
        "{err}"
    );
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    for (status, body, category, text) in [
        (
            400,
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected end of input"}"#,
            "query_rejected",
            "rejected the query (HTTP 400, bad_data): 1:5: parse error",
        ),
        (
            422,
            r#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#,
            "query_rejected",
            "(HTTP 422, execution): many-to-many",
        ),
        (
            401,
            "Unauthorized",
            "unauthorized",
            "refused the credentials (HTTP 401)",
        ),
        (
            404,
            "404 page not found",
            "http_status",
            "check the address and its path prefix",
        ),
        (
            429,
            "too many requests",
            "http_status",
            "unexpected HTTP 429",
        ),
        (302, "", "http_status", "redirects are not followed"),
    ] {
        let server = FakeServer::start(respond(&[(status, body)])).await;
        let err = PrometheusClient::new(config(&server.url))
            .unwrap()
            .query("up", None)
            .await
            .unwrap_err();
        println!("{status}: {err}");
        assert_eq!(server.requests(), 1, "HTTP {status} must not be retried");
        assert_eq!(err.category(), category, "{err}");
        assert!(err.to_string().contains(text), "{err}");
    }
}

#[tokio::test]
async fn malformed_answers_are_errors_that_say_so() {
    for (body, text) in [
        (r#"{"status":"success","data":"#, "not the API's JSON"),
        ("<html><body>Proxy login</body></html>", "Proxy login"),
        (
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#,
            "\"abc\"",
        ),
        (r#"{"status":"maybe"}"#, "unknown status \"maybe\""),
    ] {
        let server = FakeServer::start(respond(&[(200, body)])).await;
        let err = PrometheusClient::new(config(&server.url))
            .unwrap()
            .query("up", None)
            .await
            .unwrap_err();
        println!("{err}");
        assert_eq!(server.requests(), 1);
        assert_eq!(err.category(), "malformed_response");
        assert!(err.to_string().contains(text), "{err}");
    }
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_retried_then_reported() {
    let server = FakeServer::start(Behaviour::Close).await;
    let err = PrometheusClient::new(config(&server.url))
        .unwrap()
        .query("up", None)
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(server.requests(), 3);
    assert_eq!(err.category(), "connection_lost");
    assert!(err.to_string().contains("after 3 attempt(s)"), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let port = support::server::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let err = PrometheusClient::new(config(&url))
        .unwrap()
        .query("up", None)
        .await
        .unwrap_err();
    println!("{err} after {:?}", started.elapsed());
    assert_eq!(err.category(), "unreachable");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // `.invalid` never resolves (RFC 2606); a generous timeout lets a slow resolver fail.
    let mut dns = config("http://prometheus.invalid:9090");
    dns.timeout = Duration::from_secs(20);
    dns.max_retries = 0;
    let err = PrometheusClient::new(dns)
        .unwrap()
        .query("up", None)
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.category(), "unreachable");
}

#[tokio::test]
async fn requests_carry_the_query_time_headers_and_a_rotated_token() {
    let server = FakeServer::start(respond(&[(200, SUCCESS)])).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token-value\n").unwrap();
    let mut config = config(&format!("{}/prometheus/", server.url));
    config.bearer_token_file = Some(token_file.clone());
    config
        .headers
        .insert("X-Scope-OrgID".into(), "tenant-a".into());
    let client = PrometheusClient::new(config).unwrap();
    assert!(!format!("{client:?}").contains("first-token-value"));

    let at = jiff::Timestamp::new(1_672_532_400, 250_000_000).ok();
    client
        .query(r#"sum by (v) (x{a="b c"})"#, at)
        .await
        .unwrap();
    std::fs::write(&token_file, "second-token-value").unwrap();
    client.query("up", None).await.unwrap();

    let recorded = server.recorded();
    assert_eq!(recorded.len(), 2);
    let first = &recorded[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/prometheus/api/v1/query");
    assert_eq!(
        first.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(first.headers["authorization"], "Bearer first-token-value");
    assert_eq!(first.headers["x-scope-orgid"], "tenant-a");
    assert!(first.headers["user-agent"].starts_with("sluice/"));
    assert_eq!(
        first.body,
        "query=sum+by+%28v%29+%28x%7Ba%3D%22b+c%22%7D%29&timeout=500ms&time=2023-01-01T00%3A20%3A00.250Z"
    );
    // The token file is read at every query: a rotated Secret takes effect.
    assert_eq!(
        recorded[1].headers["authorization"],
        "Bearer second-token-value"
    );
    assert_eq!(recorded[1].body, "query=up&timeout=500ms");
}

#[tokio::test]
async fn basic_auth_reads_the_password_file() {
    let server = FakeServer::start(respond(&[(200, SUCCESS)])).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret pass\n").unwrap();
    let mut config = config(&server.url);
    config.basic_auth = Some(BasicAuth {
        username: "sluice".into(),
        password_file,
    });
    let client = PrometheusClient::new(config).unwrap();
    assert!(!format!("{client:?}").contains("s3cret"));
    client.query("up", None).await.unwrap();
    // base64("sluice:s3cret pass")
    assert_eq!(
        server.recorded()[0].headers["authorization"],
        "Basic c2x1aWNlOnMzY3JldCBwYXNz"
    );
}

#[tokio::test]
async fn unusable_secret_files_name_the_file_never_the_content() {
    let server = FakeServer::start(respond(&[(401, "token expired")])).await;
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing-token");
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "very-secret\u{7}value").unwrap();
    for (path, text) in [
        (&missing, "No such file"),
        (&empty, "is empty"),
        (&bad, "not allowed in an HTTP header"),
    ] {
        let mut config = config(&server.url);
        config.bearer_token_file = Some(path.clone());
        let err = PrometheusClient::new(config)
            .unwrap()
            .query("up", None)
            .await
            .unwrap_err();
        println!("{err}");
        assert_eq!(err.category(), "file");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(shown.contains(text), "{shown}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }
    // None of them reached the server.
    assert_eq!(server.requests(), 0);

    // A refused token is an error without the token.
    let token = dir.path().join("token");
    std::fs::write(&token, "very-secret-token").unwrap();
    let mut config = config(&server.url);
    config.bearer_token_file = Some(token);
    let err = PrometheusClient::new(config)
        .unwrap()
        .query("up", None)
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert_eq!(err.category(), "unauthorized");
    assert!(shown.contains("token expired"), "{shown}");
    assert!(!shown.contains("very-secret"), "{shown}");
}

#[tokio::test]
async fn oversized_answers_are_refused() {
    let huge = format!(
        r#"{{"status":"success","data":{{"resultType":"string","result":[1,"{}"]}}}}"#,
        "x".repeat(sluice::prometheus::client::MAX_RESPONSE_BYTES)
    );
    let server = FakeServer::start(Behaviour::Respond(vec![(200, huge)])).await;
    let mut config = config(&server.url);
    config.timeout = Duration::from_secs(10);
    let err = PrometheusClient::new(config)
        .unwrap()
        .query("up", None)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "malformed_response");
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
}
