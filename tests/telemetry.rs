//! The admin endpoints and Sluice's own metrics: `/readyz` answers 503 until the first
//! list of FeatureRollouts and 200 after; `/metrics` carries the names of the contract;
//! the audit target survives a quiet `RUST_LOG`.

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sluice::crd::{Phase, Weight};
use sluice::runtime::log_filter as filter;
use sluice::telemetry::{Admin, Health, Metrics, admin_router, serve_admin};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

async fn get(admin: &Admin, path: &str) -> (StatusCode, String) {
    let response = admin_router(admin.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn admin() -> Admin {
    Admin {
        health: Arc::new(Health::default()),
        metrics: Arc::new(Metrics::new()),
    }
}

#[tokio::test]
async fn readyz_waits_for_the_first_list() {
    let admin = admin();
    assert_eq!(get(&admin, "/livez").await.0, StatusCode::OK);
    let (status, body) = get(&admin, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    admin.health.set_listed(true);
    assert_eq!(get(&admin, "/readyz").await.0, StatusCode::OK);
    // A new leader's controller starts over: not ready until it has listed again.
    admin.health.set_listed(false);
    assert_eq!(
        get(&admin, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A healthy standby replica is ready (a rolling update of two replicas can go on).
    admin.health.set_standby(true);
    assert_eq!(get(&admin, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_carry_the_contracted_names() {
    let admin = admin();
    let m = &admin.metrics;
    m.reconciled(true);
    m.reconciled(false);
    m.reconcile_error("conflict");
    m.decision("advance");
    m.observe_rollout(
        "shop",
        "checkout",
        "new-checkout",
        Phase::Progressing,
        Some(Weight::parse("5%").unwrap()),
    );
    m.observe_rollout(
        "shop",
        "banner",
        "banner",
        Phase::Promoted,
        Some(Weight::FULL),
    );
    m.analysis_took(std::time::Duration::from_millis(120));
    sluice::telemetry::observe_prometheus_query(std::time::Duration::from_millis(30));
    m.flag_written("configMap");
    m.set_leader(true);
    m.notification(true);

    let (status, text) = get(&admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for sample in [
        r#"sluice_reconciles_total{result="ok"} 1"#,
        r#"sluice_reconciles_total{result="error"} 1"#,
        r#"sluice_reconcile_errors_total{category="conflict"} 1"#,
        r#"sluice_decisions_total{kind="advance"} 1"#,
        r#"sluice_rollouts{phase="Progressing"} 1"#,
        r#"sluice_rollouts{phase="Promoted"} 1"#,
        r#"sluice_rollouts{phase="RolledBack"} 0"#,
        r#"sluice_rollout_weight{namespace="shop",name="checkout",flag="new-checkout"} 0.05"#,
        "sluice_analysis_duration_seconds_count 1",
        "sluice_prometheus_query_duration_seconds_count",
        r#"sluice_flag_writes_total{target="configMap"} 1"#,
        "sluice_leader 1",
        r#"sluice_notifications_total{result="sent"} 1"#,
    ] {
        assert!(text.contains(sample), "missing {sample:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));

    // The notifier's own totals are mirrored, never counted twice.
    m.set_notification_totals(3, 1);
    m.set_notification_totals(3, 1);
    let (_, text) = get(&admin, "/metrics").await;
    assert!(
        text.contains(r#"sluice_notifications_total{result="sent"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_notifications_total{result="failed"} 1"#),
        "{text}"
    );

    // A deleted rollout leaves no series behind.
    m.forget_rollout("shop", "checkout");
    let (_, text) = get(&admin, "/metrics").await;
    assert!(!text.contains(r#"name="checkout""#), "{text}");
    assert!(text.contains(r#"sluice_rollouts{phase="Progressing"} 0"#));
}

#[tokio::test]
async fn the_admin_server_answers_over_tcp_and_stops_on_shutdown() {
    let admin = admin();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (address, serving) = serve_admin("127.0.0.1:0", admin.clone(), async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let server = tokio::spawn(serving);
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn the_audit_target_survives_a_quiet_filter() {
    let quiet = filter(Some("warn")).unwrap().to_string();
    assert!(quiet.contains("sluice::audit=info"), "{quiet}");
    let explicit = filter(Some("info,sluice::audit=off")).unwrap().to_string();
    assert!(!explicit.contains("sluice::audit=info"), "{explicit}");
    assert!(filter(Some("=garbage=")).is_err());
}

#[tokio::test]
async fn the_weight_metric_reads_an_audience_stage_from_the_status() {
    // An audience stage used to be "5% of audience" in status, which the metric read as 0.
    let spec: sluice::crd::FeatureRolloutSpec = serde_yaml_ng::from_str(
        r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { file: { path: flags.json } }
stages:
  - { weight: 5, audience: { ends_with: [{ var: email }, "@example.com"] }, duration: 10m }
  - { weight: 100 }
"#,
    )
    .unwrap();
    let now = "2026-11-24T12:00:00Z".parse().unwrap();
    let plan = sluice::engine::plan(&spec, None, &Default::default(), now);
    assert_eq!(plan.status.exposure.as_deref(), Some("5% of audience"));
    assert!(plan.status.audience);
    let admin = admin();
    admin.metrics.observe_rollout(
        "shop",
        "checkout",
        "checkout",
        plan.status.phase,
        plan.status.weight,
    );
    let (_, text) = get(&admin, "/metrics").await;
    let sample = r#"sluice_rollout_weight{namespace="shop",name="checkout",flag="checkout"} 0.05"#;
    assert!(text.contains(sample), "missing {sample:?} in\n{text}");
}
