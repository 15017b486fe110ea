//! The sync server of `sluice standalone --sync-address` (flagd.sync.v1), with real
//! consumers: the OpenFeature Python SDK and flagd provider in in-process mode evaluating
//! many users through a whole rollout (exposure, sticky cohorts, rollback to everyone, a
//! kill -9 and restart of Sluice mid-stream, TLS), and a gRPC client of the protocol for
//! what an SDK does not show (selectors, unknown selectors, pushes, edits by others).
//!
//! Every wait polls a condition with a generous deadline; none asserts a duration (the
//! delivery latency is measured by `cargo bench --bench delivery`).

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sluice::crd::Phase;
use sluice::sync::proto::flag_sync_service_client::FlagSyncServiceClient;
use sluice::sync::proto::{FetchAllFlagsRequest, GetMetadataRequest, SyncFlagsRequest};
use support::standalone::{Standalone, ctl, directories, manifest, sluice, status, wait_for};
use support::sync_app::App;

/// Users the app evaluates.
const USERS: usize = 2000;

/// A rollout of the boolean flag `name` into `flags.json`: 10 % for a second, then 50 %
/// and 100 % each after an approval (so the test looks at each stage for as long as it
/// likes).
fn rollout(name: &str) -> String {
    manifest(
        name,
        "flags.json",
        "    - { name: ten, weight: 10, duration: 1s }
    - { name: half, weight: 50, duration: 1s, approval: required }
    - { name: all, weight: 100, approval: required }",
    )
}

/// A flag of somebody else's in the same document, which Sluice must serve as it is.
const OTHER: &str = r#"{"flags":{"other":{"state":"ENABLED","variants":{"a":"first","b":"second"},"defaultVariant":"a"}}}"#;

/// The sync server's port, from the log line that announces it.
fn sync_port(process: &Standalone) -> u16 {
    wait_for("the sync server to listen", || {
        let log = process.log();
        let line = log.lines().find(|l| l.contains("sync server listening"))?;
        let address = line.split("address=").nth(1)?.split_whitespace().next()?;
        address.rsplit(':').next()?.parse().ok()
    })
}

fn share(variants: &[Option<String>], variant: &str) -> f64 {
    variants
        .iter()
        .filter(|v| v.as_deref() == Some(variant))
        .count() as f64
        / variants.len() as f64
}

/// Waits until the app serves a share of `on` within `tolerance` of `exposure`, with no
/// evaluation error; returns what it served.
fn wait_for_exposure(
    app: &mut App,
    flag: &str,
    exposure: f64,
    tolerance: f64,
) -> Vec<Option<String>> {
    wait_for(&format!("the app to serve {flag} at {exposure}"), || {
        let variants = app.variants(flag, USERS);
        let errors = variants.iter().filter(|v| v.is_none()).count();
        assert_eq!(errors, 0, "no evaluation fails");
        ((share(&variants, "on") - exposure).abs() <= tolerance).then_some(variants)
    })
}

fn awaiting(state: &Path, name: &str, stage: &str) {
    wait_for(&format!("{name} to wait for approval of {stage}"), || {
        status(state, name).filter(|s| {
            s.phase == Phase::WaitingForApproval
                && s.awaiting_approval
                    .as_ref()
                    .is_some_and(|a| a.name == stage)
        })
    });
}

#[test]
fn an_in_process_app_follows_a_whole_rollout_through_a_restart() {
    let (dir, rollouts, state) = directories();
    std::fs::write(rollouts.join("flags.json"), OTHER).unwrap();
    std::fs::write(rollouts.join("checkout.yaml"), rollout("checkout")).unwrap();
    let log = dir.path().join("sluice.log");
    let mut sluice_process =
        Standalone::start(&rollouts, &state, &["--sync-address", "127.0.0.1:0"], &log);
    let port = sync_port(&sluice_process);
    awaiting(&state, "checkout", "half");

    // The selector is the flag file's path as the rollout names it.
    let selector = rollouts.join("flags.json").display().to_string();
    let mut app = App::in_process(port, &selector, None);
    let at_ten = wait_for_exposure(&mut app, "checkout", 0.10, 0.03);
    let other = app.ask(json!({ "op": "evaluate", "flag": "other", "type": "string", "keys": 3 }));
    assert_eq!(
        other["values"],
        json!({ "a": "first" }),
        "other flags are served as they are"
    );

    assert!(ctl(&state, &["approve", "half", "checkout"]).0);
    awaiting(&state, "checkout", "all");
    let at_half = wait_for_exposure(&mut app, "checkout", 0.50, 0.04);
    let lost: Vec<usize> = (0..USERS)
        .filter(|&i| at_ten[i].as_deref() == Some("on") && at_half[i].as_deref() != Some("on"))
        .collect();
    assert!(
        lost.is_empty(),
        "cohorts are sticky: users {lost:?} lost the candidate at 50 %"
    );
    assert_eq!(
        app.variants("checkout", USERS),
        at_half,
        "the same users get the same variants"
    );

    // Sluice dies mid-stream; the rollback is asked for while it is down and written by
    // the next Sluice, on the same address: the app reconnects and gets it.
    sluice_process.kill();
    assert!(ctl(&state, &["abort", "checkout"]).0);
    assert_eq!(
        app.variants("checkout", USERS),
        at_half,
        "while Sluice is down the app keeps the last document"
    );
    let address = format!("127.0.0.1:{port}");
    let _restarted = Standalone::start(&rollouts, &state, &["--sync-address", &address], &log);
    wait_for("the rollback", || {
        status(&state, "checkout").filter(|s| s.phase == Phase::RolledBack)
    });
    let everyone: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    let served = app.wait_all("checkout", &everyone, "off", 60.0);
    assert_eq!(
        served["ok"],
        json!(true),
        "every user gets the baseline: {served}"
    );
    let other = app.ask(json!({ "op": "evaluate", "flag": "other", "type": "string", "keys": 3 }));
    assert_eq!(other["values"], json!({ "a": "first" }));
}

#[test]
fn a_tls_sync_server_serves_an_app_that_trusts_its_ca() {
    let (dir, rollouts, state) = directories();
    let pki = support::tls::TestPki::generate();
    let (cert, key, ca) = (
        dir.path().join("sync.crt"),
        dir.path().join("sync.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(rollouts.join("flags.json"), OTHER).unwrap();
    std::fs::write(rollouts.join("checkout.yaml"), rollout("checkout")).unwrap();
    let log = dir.path().join("sluice.log");
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let process = Standalone::start(
        &rollouts,
        &state,
        &[
            "--sync-address",
            "127.0.0.1:0",
            "--sync-tls-cert",
            &cert_arg,
            "--sync-tls-key",
            &key_arg,
        ],
        &log,
    );
    let port = sync_port(&process);
    awaiting(&state, "checkout", "half");
    let selector = format!("source={}", rollouts.join("flags.json").display());
    let mut app = App::in_process(port, &selector, Some(&ca));
    wait_for_exposure(&mut app, "checkout", 0.10, 0.03);
}

async fn client(port: u16) -> FlagSyncServiceClient<tonic::transport::Channel> {
    FlagSyncServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("the sync server accepts connections")
}

fn fetch_request(selector: &str, header: Option<&str>) -> tonic::Request<FetchAllFlagsRequest> {
    #[allow(deprecated)]
    let mut request = tonic::Request::new(FetchAllFlagsRequest {
        provider_id: "test".into(),
        selector: selector.into(),
    });
    if let Some(header) = header {
        request
            .metadata_mut()
            .insert("flagd-selector", header.parse().unwrap());
    }
    request
}

fn flags_of(text: &str) -> Value {
    let document: Value = serde_json::from_str(text).expect("a JSON document");
    document["flags"].clone()
}

#[tokio::test]
async fn selectors_name_flag_files_and_unknown_ones_get_a_clear_status() {
    let (dir, rollouts, state) = directories();
    std::fs::write(rollouts.join("flags.json"), OTHER).unwrap();
    std::fs::write(rollouts.join("checkout.yaml"), rollout("checkout")).unwrap();
    let log = dir.path().join("sluice.log");
    let process = Standalone::start(&rollouts, &state, &["--sync-address", "127.0.0.1:0"], &log);
    let port = sync_port(&process);
    tokio::task::spawn_blocking({
        let state = state.clone();
        move || awaiting(&state, "checkout", "half")
    })
    .await
    .unwrap();
    let mut client = client(port).await;
    let path = rollouts.join("flags.json").display().to_string();
    let absolute = std::fs::canonicalize(rollouts.join("flags.json"))
        .unwrap()
        .display()
        .to_string();

    // The field, the header (which wins), source= and another path of the same file.
    for (field, header) in [
        (path.as_str(), None),
        ("nowhere.json", Some(path.as_str())),
        ("", Some(&*format!("source={path}"))),
        (absolute.as_str(), None),
    ] {
        let answer = client
            .fetch_all_flags(fetch_request(field, header))
            .await
            .unwrap_or_else(|s| panic!("{field:?} / {header:?}: {s:?}"))
            .into_inner();
        let flags = flags_of(&answer.flag_configuration);
        assert_eq!(flags["other"]["defaultVariant"], json!("a"), "{field:?}");
        assert!(
            flags["checkout"]["targeting"].is_object(),
            "{field:?}: Sluice's flag"
        );
    }

    let unknown = client
        .fetch_all_flags(fetch_request("/srv/elsewhere.json", None))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("/srv/elsewhere.json") && unknown.message().contains(&path),
        "the status names the selector and what is served: {}",
        unknown.message()
    );
    let mut stream_client = client.clone();
    #[allow(deprecated)]
    let unknown_stream = stream_client
        .sync_flags(SyncFlagsRequest {
            provider_id: String::new(),
            selector: "elsewhere.json".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_stream.code(), tonic::Code::NotFound);
    for bad in ["", "flagSetId=payments", "source="] {
        let refused = client
            .fetch_all_flags(fetch_request(bad, None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
    #[allow(deprecated)]
    let metadata = client
        .get_metadata(GetMetadataRequest {})
        .await
        .expect("GetMetadata answers")
        .into_inner();
    #[allow(deprecated)]
    let empty = metadata
        .metadata
        .expect("metadata is set")
        .fields
        .is_empty();
    assert!(empty, "Sluice adds no evaluation context");
    drop(process);
    drop(dir);
}

#[tokio::test]
async fn a_stream_gets_every_change_sluice_writes_and_edits_by_others() {
    let (dir, rollouts, state) = directories();
    let flags = rollouts.join("flags.json");
    std::fs::write(&flags, OTHER).unwrap();
    std::fs::write(rollouts.join("checkout.yaml"), rollout("checkout")).unwrap();
    let log = dir.path().join("sluice.log");
    let process = Standalone::start(&rollouts, &state, &["--sync-address", "127.0.0.1:0"], &log);
    let port = sync_port(&process);
    let mut client = client(port).await;
    #[allow(deprecated)]
    let mut stream = client
        .sync_flags(SyncFlagsRequest {
            provider_id: "test".into(),
            selector: flags.display().to_string(),
        })
        .await
        .expect("the stream opens")
        .into_inner();
    // The first message comes at once: the document as it is (with or without Sluice's
    // flag, depending on how far the first reconcile got).
    let mut next = async || {
        let message = tokio::time::timeout(support::standalone::DEADLINE, stream.message())
            .await
            .expect("a message before the deadline")
            .expect("the stream stays up")
            .expect("the stream stays open");
        flags_of(&message.flag_configuration)
    };
    let mut latest = next().await;
    assert_eq!(latest["other"]["defaultVariant"], json!("a"));
    while latest["checkout"]["targeting"].is_null() {
        latest = next().await;
    }

    // Sluice's rollback is pushed. (The status that claims the stage is written after the
    // flag: without it `ctl abort` finds no rollout to abort.)
    let state_dir = state.clone();
    let (aborted, said) = tokio::task::spawn_blocking(move || {
        wait_for("the first stage's status", || {
            status(&state_dir, "checkout")
        });
        ctl(&state_dir, &["abort", "checkout"])
    })
    .await
    .unwrap();
    assert!(aborted, "{said}");
    while latest["checkout"]["targeting"].is_object() {
        latest = next().await;
    }
    assert_eq!(latest["checkout"]["defaultVariant"], json!("off"));

    // Somebody else edits another flag (an atomic replace): served as the file holds it.
    let mut document: Value =
        serde_json::from_str(&std::fs::read_to_string(&flags).unwrap()).unwrap();
    document["flags"]["other"]["defaultVariant"] = json!("b");
    let temp = rollouts.join(".flags.json.edit");
    std::fs::write(&temp, document.to_string()).unwrap();
    std::fs::rename(&temp, &flags).unwrap();
    while latest["other"]["defaultVariant"] != json!("b") {
        latest = next().await;
    }
    assert_eq!(
        latest["checkout"]["defaultVariant"],
        json!("off"),
        "and Sluice's flag stays"
    );

    drop(process);
    drop(dir);
}

#[test]
fn bad_sync_options_are_refused_naming_the_option() {
    let (dir, rollouts, state) = directories();
    let run = |args: &[&str]| {
        let out = Command::new(sluice())
            .args(["standalone", "--plain", "--rollouts"])
            .arg(&rollouts)
            .arg("--state")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let with_tls = |cert: &str, key: &str| {
        run(&[
            "--sync-address",
            "127.0.0.1:0",
            "--sync-tls-cert",
            cert,
            "--sync-tls-key",
            key,
        ])
    };
    let missing = dir.path().join("missing.pem");
    let missing = missing.display().to_string();
    let (code, text) = with_tls(&missing, &missing);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--sync-tls-cert") && text.contains("missing.pem"),
        "{text}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.display().to_string();
    let (code, text) = with_tls(&garbage, &garbage);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cannot be used"), "{text}");

    let (code, text) = run(&["--sync-address", "127.0.0.1:0", "--sync-tls-cert", &garbage]);
    assert_eq!(code, Some(2), "a certificate needs its key: {text}");
    assert!(text.contains("--sync-tls-key"), "{text}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, text) = run(&["--sync-address", &address]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("--sync-address {address}: cannot listen")),
        "{text}"
    );

    let (code, text) = run(&["--sync-address", "127.0.0.1:0", "--once"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--once"), "{text}");
}
