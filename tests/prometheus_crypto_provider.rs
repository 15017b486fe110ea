//! kube and the Prometheus client must agree on one rustls crypto provider.
//!
//! kube builds its TLS config with `rustls::ClientConfig::builder()`, which panics ("Could
//! not automatically determine the process-level CryptoProvider") when rustls was built
//! with both `ring` and `aws-lc-rs` and no provider was installed. reqwest's default TLS
//! feature pulls in `aws-lc-rs`; Sluice uses reqwest's `rustls-no-provider` instead. This
//! file holds a single test so it runs in a fresh process where nothing installed a
//! provider yet: kube's client comes first, exactly as in the controller.

mod support;

use sluice::prometheus::{ClientConfig, PrometheusClient};
use support::tls::TestPki;

#[tokio::test]
async fn kube_first_then_a_prometheus_client_with_a_custom_ca() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "this test needs a process where no provider is installed yet"
    );
    let kube_config = kube::Config::new("https://127.0.0.1:6443".parse().expect("url"));
    let kube_client = kube::Client::try_from(kube_config).expect("kube client");

    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, TestPki::generate().ca_pem).expect("write CA");
    let mut config = ClientConfig::new("https://prometheus.monitoring:9090");
    config.tls.ca_file = Some(ca_file);
    let prometheus = PrometheusClient::new(config).expect("prometheus client");

    // Both exist side by side, and the process now has exactly one provider: ring's.
    let provider = rustls::crypto::CryptoProvider::get_default().expect("a provider");
    let groups = |p: &rustls::crypto::CryptoProvider| {
        p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
    };
    assert_eq!(
        groups(provider),
        groups(&rustls::crypto::ring::default_provider()),
        "the installed provider is ring's"
    );
    drop((kube_client, prometheus));
}
