//! The client against a real Prometheus serving https with a certificate from a private
//! CA and requiring basic auth (Prometheus's `--web.config.file`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use sluice::prometheus::{BasicAuth, ClientConfig, PrometheusClient, QueryResult, TlsConfig};
use support::openmetrics::OpenMetrics;
use support::server::{PrometheusServer, ServerOptions};
use support::tls::TestPki;

const USER: &str = "sluice";
const PASSWORD: &str = "correct horse battery staple";

struct Setup {
    server: PrometheusServer,
    ca_file: PathBuf,
    password_file: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Setup {
    let pki = TestPki::generate();
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    let web_config = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  {USER}: '{hash}'\n"
    );
    sluice::prometheus::ensure_crypto_provider();
    let ready_client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let mut data = OpenMetrics::default();
    data.gauge("probe", &[("probe_set", "tls")], 1.0, 1_672_531_200);
    let server = PrometheusServer::start_with(
        &data,
        ServerOptions {
            web_config: Some(web_config),
            files: vec![
                ("server.crt".into(), pki.server_cert_pem.clone()),
                ("server.key".into(), pki.server_key_pem.clone()),
            ],
            https: true,
            ready_client: Some(ready_client),
            ready_basic_auth: Some((USER.into(), PASSWORD.into())),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    Setup {
        server,
        ca_file,
        password_file,
        _dir: dir,
    }
}

fn config(setup: &Setup, url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    config.timeout = Duration::from_secs(5);
    config.max_retries = 0;
    config.basic_auth = Some(BasicAuth {
        username: USER.into(),
        password_file: setup.password_file.clone(),
    });
    config.tls = TlsConfig {
        ca_file: Some(setup.ca_file.clone()),
        insecure_skip_verify: false,
    };
    config
}

#[tokio::test]
async fn https_with_a_custom_ca_and_basic_auth() {
    let setup = start().await;

    // The private CA is trusted, by IP and by host name.
    for url in [setup.server.base_url(), setup.server.localhost_url()] {
        let client = PrometheusClient::new(config(&setup, url.clone())).expect("client");
        let response = client.query("1 + 1", None).await.expect("query over TLS");
        assert!(
            matches!(response.result, QueryResult::Scalar { value, .. } if value == 2.0),
            "{url}: {response:?}"
        );
    }

    // Verification is on by default: without the CA, the system roots don't know it.
    let mut no_ca = config(&setup, setup.server.base_url());
    no_ca.tls.ca_file = None;
    let err = PrometheusClient::new(no_ca)
        .unwrap()
        .query("1", None)
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.category(), "tls");
    assert!(err.to_string().contains("certificate"), "{err}");

    // Explicitly skipping verification connects anyway.
    let mut insecure = config(&setup, setup.server.base_url());
    insecure.tls = TlsConfig {
        ca_file: None,
        insecure_skip_verify: true,
    };
    PrometheusClient::new(insecure)
        .unwrap()
        .query("1", None)
        .await
        .expect("insecure_skip_verify");
}

#[tokio::test]
async fn a_rotated_password_file_takes_effect_without_a_new_client() {
    let setup = start().await;
    std::fs::write(&setup.password_file, "an old password").unwrap();
    let client = PrometheusClient::new(config(&setup, setup.server.base_url())).unwrap();
    let err = client.query("1", None).await.unwrap_err();
    println!("{err}");
    assert_eq!(err.category(), "unauthorized");
    assert!(!format!("{err} {err:?}").contains("old password"));

    std::fs::write(&setup.password_file, PASSWORD).unwrap();
    client.query("1", None).await.expect("rotated password");
}

#[tokio::test]
async fn an_unusable_ca_file_is_named_without_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "secret-looking text, not a certificate").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    for (path, text) in [
        (&not_pem, "contains no PEM certificate"),
        (&broken, "invalid certificate"),
        (&missing, "No such file"),
    ] {
        let mut config = ClientConfig::new("https://prometheus.example:9090");
        config.tls.ca_file = Some(path.clone());
        let err = PrometheusClient::new(config).unwrap_err();
        println!("{err}");
        assert_eq!(err.category(), "file");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(shown.contains(text), "{shown}");
        assert!(!shown.contains("secret-looking"), "{shown}");
    }
}
