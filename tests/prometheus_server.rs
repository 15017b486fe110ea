//! The client, templates and cohort split against a real Prometheus loaded with data
//! whose answer is known.
//!
//! Data: counters every 15 s for 20 minutes from 2023-01-01T00:00:00Z; queries run at the
//! end with a 10-minute window, which holds exactly 40 steps, so `increase()` is exact.

mod support;

use std::time::{Duration, Instant};

use sluice::prometheus::{
    ClientConfig, CohortSpec, Error, PrometheusClient, QueryResult, Template, Variables,
    global_value, split_buckets, split_values,
};
use support::openmetrics::OpenMetrics;
use support::server::PrometheusServer;

const START: i64 = 1_672_531_200;
const STEP: i64 = 15;
const POINTS: usize = 81;
const END: i64 = START + STEP * (POINTS as i64 - 1);
const WINDOW: Duration = Duration::from_secs(600);
const STEPS_IN_WINDOW: f64 = 40.0;

const ERRORS: &str = r#"sum by (feature_flag_result_variant) (increase(http_requests_total{job="shop",code=~"5..",feature_flag_key="{{ flag }}"}[{{ window }}]))"#;
const REQUESTS: &str = r#"sum by (feature_flag_result_variant) (increase(http_requests_total{job="shop",feature_flag_key="{{ flag }}"}[{{ window }}]))"#;
const BUCKETS: &str = r#"sum by (le, feature_flag_result_variant) (increase(http_request_duration_seconds_bucket{job="shop",feature_flag_key="{{ flag }}"}[{{ window }}]))"#;

/// Per-step increments: (flag, variant, code, increment).
const TRAFFIC: [(&str, &str, &str, f64); 8] = [
    ("new-checkout", "off", "200", 9.0),
    ("new-checkout", "off", "500", 1.0),
    ("new-checkout", "on", "200", 4.0),
    ("new-checkout", "on", "500", 1.0),
    // A third variant and another flag that the split must leave out.
    ("new-checkout", "experimental", "500", 100.0),
    ("other-flag", "off", "500", 1000.0),
    ("other-flag", "on", "500", 1000.0),
    // Only the baseline has served requests yet.
    ("rare-flag", "off", "200", 3.0),
];

fn data() -> OpenMetrics {
    let mut data = OpenMetrics::default();
    for (flag, variant, code, increment) in TRAFFIC {
        data.counter(
            "http_requests",
            &[
                ("job", "shop"),
                ("feature_flag_key", flag),
                ("feature_flag_result_variant", variant),
                ("code", code),
            ],
            START,
            STEP,
            POINTS,
            increment,
        );
    }
    for (variant, buckets) in [
        ("off", [("0.1", 5.0), ("0.5", 8.0), ("+Inf", 10.0)]),
        ("on", [("0.1", 1.0), ("0.5", 3.0), ("+Inf", 5.0)]),
    ] {
        data.histogram(
            "http_request_duration_seconds",
            &[
                ("job", "shop"),
                ("feature_flag_key", "new-checkout"),
                ("feature_flag_result_variant", variant),
            ],
            &buckets,
            START,
            STEP,
            POINTS,
        );
    }
    data
}

fn at_end() -> Option<jiff::Timestamp> {
    jiff::Timestamp::new(END, 0).ok()
}

fn client(server: &PrometheusServer) -> PrometheusClient {
    let mut config = ClientConfig::new(server.base_url());
    config.timeout = Duration::from_secs(5);
    PrometheusClient::new(config).expect("client")
}

fn variables(flag: &str) -> Variables {
    Variables::new(flag, WINDOW, "shop", "new-checkout")
}

async fn query(client: &PrometheusClient, template: &str, flag: &str) -> QueryResult {
    let promql = Template::parse(template)
        .and_then(|t| t.render(&variables(flag)))
        .expect("render");
    client
        .query(&promql, at_end())
        .await
        .unwrap_or_else(|e| panic!("{promql}: {e}"))
        .result
}

fn assert_close(actual: Option<f64>, expected: f64, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what}: no data, expected {expected}"));
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.max(1.0),
        "{what}: {actual} != {expected}"
    );
}

#[tokio::test]
async fn cohort_counts_buckets_and_no_data_match_the_loaded_data() {
    let server = PrometheusServer::start(&data()).await;
    let client = client(&server);
    let cohorts = CohortSpec::new("off", "on");

    let requests = split_values(&query(&client, REQUESTS, "new-checkout").await, &cohorts)
        .expect("split requests");
    let errors =
        split_values(&query(&client, ERRORS, "new-checkout").await, &cohorts).expect("split");
    println!("requests {requests:?}, errors {errors:?}");
    assert_close(
        requests.baseline,
        10.0 * STEPS_IN_WINDOW,
        "baseline requests",
    );
    assert_close(
        requests.candidate,
        5.0 * STEPS_IN_WINDOW,
        "candidate requests",
    );
    assert_close(errors.baseline, STEPS_IN_WINDOW, "baseline errors");
    assert_close(errors.candidate, STEPS_IN_WINDOW, "candidate errors");

    let buckets =
        split_buckets(&query(&client, BUCKETS, "new-checkout").await, &cohorts).expect("split");
    println!("buckets {buckets:?}");
    let baseline = buckets.baseline.expect("baseline buckets");
    let candidate = buckets.candidate.expect("candidate buckets");
    let les: Vec<f64> = baseline.upper_bounds().collect();
    assert_eq!(les, vec![0.1, 0.5, f64::INFINITY]);
    assert_close(baseline.get(0.1), 5.0 * STEPS_IN_WINDOW, "baseline le=0.1");
    assert_close(baseline.get(0.5), 8.0 * STEPS_IN_WINDOW, "baseline le=0.5");
    assert_close(
        Some(baseline.total()),
        10.0 * STEPS_IN_WINDOW,
        "baseline +Inf",
    );
    assert_close(candidate.get(0.1), STEPS_IN_WINDOW, "candidate le=0.1");
    assert_close(
        candidate.get(0.5),
        3.0 * STEPS_IN_WINDOW,
        "candidate le=0.5",
    );
    assert_close(
        Some(candidate.total()),
        5.0 * STEPS_IN_WINDOW,
        "candidate +Inf",
    );

    // A cohort whose series does not exist yet is no data, not an error.
    let rare = split_values(&query(&client, REQUESTS, "rare-flag").await, &cohorts).expect("split");
    assert_close(rare.baseline, 3.0 * STEPS_IN_WINDOW, "rare baseline");
    assert_eq!(rare.candidate, None);
    // So is an empty result.
    let missing =
        split_values(&query(&client, REQUESTS, "missing-flag").await, &cohorts).expect("split");
    assert!(missing.is_empty(), "{missing:?}");
    let missing_buckets =
        split_buckets(&query(&client, BUCKETS, "rare-flag").await, &cohorts).expect("split");
    assert!(missing_buckets.is_empty(), "{missing_buckets:?}");
}

#[tokio::test]
async fn every_result_type_is_parsed_and_shape_errors_name_the_cause() {
    let server = PrometheusServer::start(&data()).await;
    let client = client(&server);
    let cohorts = CohortSpec::new("off", "on");

    let scalar = client
        .query(
            r#"scalar(sum(increase(http_requests_total{feature_flag_key="new-checkout",feature_flag_result_variant="on"}[10m])))"#,
            at_end(),
        )
        .await
        .expect("scalar query")
        .result;
    assert_eq!(
        scalar,
        QueryResult::Scalar {
            timestamp: END as f64,
            value: 5.0 * STEPS_IN_WINDOW
        }
    );
    assert_eq!(global_value(&scalar).unwrap(), Some(200.0));

    let string = client.query(r#""hello""#, at_end()).await.unwrap().result;
    assert_eq!(
        string,
        QueryResult::String {
            timestamp: END as f64,
            value: "hello".into()
        }
    );

    let matrix = client
        .query(
            r#"http_requests_total{feature_flag_key="rare-flag"}[1m]"#,
            at_end(),
        )
        .await
        .unwrap()
        .result;
    let QueryResult::Matrix(series) = &matrix else {
        panic!("expected a matrix, got {matrix:?}");
    };
    assert_eq!(series.len(), 1);
    // Samples at END-60s ... END, 15 s apart.
    let values: Vec<(f64, f64)> = series[0].values.clone();
    assert_eq!(values.len(), 5, "{values:?}");
    assert_eq!(values.last(), Some(&(END as f64, 3.0 * 80.0)));
    let err = split_values(&matrix, &cohorts).unwrap_err();
    assert_eq!(err.category(), "result_type");
    assert!(err.to_string().contains("increase("), "{err}");

    // Aggregating the cohort label away: the error names the label and shows the series.
    let flat = client
        .query(
            r#"sum by (job) (increase(http_requests_total{feature_flag_key="new-checkout"}[10m]))"#,
            at_end(),
        )
        .await
        .unwrap()
        .result;
    let err = split_values(&flat, &cohorts).unwrap_err();
    println!("{err}");
    assert_eq!(err.category(), "missing_cohort_label");
    assert!(
        err.to_string()
            .contains(r#"no "feature_flag_result_variant" label: {job="shop"}"#),
        "{err}"
    );

    // 0/0 per cohort: NaN is an error, never a value.
    let nan = client
        .query(
            r#"sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key="new-checkout",code="500"}[10m])) * 0 / 0"#,
            at_end(),
        )
        .await
        .unwrap()
        .result;
    let err = split_values(&nan, &cohorts).unwrap_err();
    println!("{err}");
    assert_eq!(err.category(), "non_finite_value");
    assert!(err.to_string().contains("NaN"), "{err}");
}

#[tokio::test]
async fn a_syntax_error_carries_prometheus_message_and_is_not_retried() {
    let server = PrometheusServer::start(&data()).await;
    let mut config = ClientConfig::new(server.base_url());
    config.max_retries = 3;
    config.retry_backoff = Duration::from_secs(2);
    let client = PrometheusClient::new(config).unwrap();
    let started = Instant::now();
    let err = client
        .query(r#"sum(rate(http_requests_total{job="shop"}[5m])"#, None)
        .await
        .unwrap_err();
    println!("{err} after {:?}", started.elapsed());
    // A retry would have waited 2 s first.
    assert_eq!(err.category(), "query_rejected");
    match &err {
        Error::QueryRejected {
            status,
            error_type,
            message,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(error_type, "bad_data");
            assert!(message.contains("parse error"), "{message}");
        }
        other => panic!("expected QueryRejected, got {other:?}"),
    }
    assert!(
        err.to_string().contains("unclosed left parenthesis"),
        "{err}"
    );

    // An execution error (not a parse error) is a rejection too, with Prometheus's text.
    let err = client
        .query(
            r#"http_requests_total{feature_flag_key="new-checkout"} / on(job) http_requests_total{feature_flag_key="new-checkout"}"#,
            at_end(),
        )
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.category(), "query_rejected");
    assert!(err.to_string().contains("many-to-many"), "{err}");
}

#[tokio::test]
async fn a_stopped_prometheus_is_unreachable_promptly() {
    let mut server = PrometheusServer::start(&data()).await;
    let mut config = ClientConfig::new(server.base_url());
    config.max_retries = 2;
    config.retry_backoff = Duration::from_millis(50);
    let client = PrometheusClient::new(config).unwrap();
    client.query("1", None).await.expect("up before the stop");

    server.stop();
    let started = Instant::now();
    let err = client.query("1", None).await.unwrap_err();
    let elapsed = started.elapsed();
    println!("{err} after {elapsed:?}");
    assert_eq!(err.category(), "unreachable");
    assert!(
        matches!(err, Error::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("Connection refused"), "{text}");
    assert!(text.contains(&server.base_url()), "{text}");
}
