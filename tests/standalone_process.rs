//! `sluice standalone` and `sluice ctl` as processes under the faults probing found: a
//! signal must end standalone mode promptly (empty directory, a look hanging on a silent
//! Prometheus, stdin from /dev/null or a pipe, two signals); concurrent `ctl` commands
//! must lose none of each other's changes; an abort must not wait for a look in
//! progress; a secret Prometheus echoes must not reach stderr, the status or the events
//! log; `sluice validate` and standalone mode refuse names the API server refuses and
//! duplicate keys; `sluice analyze` stops at the first look that cannot be made.
//!
//! Every wait polls a condition with a generous deadline; none asserts a duration.

mod support;

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice::crd::{FeatureRolloutStatus, Phase};
use support::standalone::{
    Standalone, ctl, directories, error_rate_analysis, manifest, read_request, sluice, status,
    wait_for,
};

/// A rollout whose first stage lasts an hour, with one metric queried at `port`, each
/// query allowed `timeout`.
fn analysed(name: &str, port: u16, timeout: &str, extra_prometheus: &str) -> String {
    manifest(
        name,
        "flags.json",
        "    - { weight: 10, duration: 1h }\n    - { weight: 100 }",
    ) + &error_rate_analysis(port, timeout, extra_prometheus)
}

/// [`directories`] with rollout `stuck` in them: its looks hang on the silent Prometheus
/// at `port` (each query is allowed ten minutes).
fn stuck_directories(port: u16) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, rollouts, state) = directories();
    std::fs::write(
        rollouts.join("stuck.yaml"),
        analysed("stuck", port, "10m", ""),
    )
    .unwrap();
    (dir, rollouts, state)
}

/// A Prometheus that accepts connections and never answers (the listener is kept open
/// by the returned value).
fn silent_prometheus() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// One way to stop standalone mode: the signals sent, its stdin, and whether a rollout's
/// look hangs on a silent Prometheus meanwhile.
type StopCase = (&'static [&'static str], fn() -> Stdio, bool);

#[test]
fn a_signal_ends_standalone_mode_promptly_in_every_case() {
    let (_silent, port) = silent_prometheus();
    let cases: [StopCase; 5] = [
        (&["TERM"], Stdio::null, false),
        (&["INT"], Stdio::null, false),
        (&["TERM"], Stdio::piped, true),
        (&["INT"], Stdio::null, true),
        (&["TERM", "TERM"], Stdio::piped, true),
    ];
    for (i, (signals, stdin, hanging)) in cases.into_iter().enumerate() {
        let (dir, rollouts, state) = if hanging {
            stuck_directories(port)
        } else {
            directories()
        };
        let log = dir.path().join("sluice.log");
        let mut process = Standalone::start_with(&rollouts, &state, &[], &log, stdin());
        wait_for("standalone to start", || {
            process
                .log()
                .contains("sluice standalone started")
                .then_some(())
        });
        if hanging {
            // The first stage has begun: the next reconcile looks, and the look hangs.
            wait_for("the stage to start", || {
                status(&state, "stuck").filter(|s| s.phase == Phase::Progressing)
            });
        }
        for signal in signals {
            process.signal(signal);
        }
        let exit = process.exited();
        assert!(
            exit.success(),
            "case {i} ({signals:?}, hanging look {hanging}): {exit:?}\n{}",
            process.log()
        );
        assert!(
            !state.join("standalone.lock").exists(),
            "case {i}: the state directory's lock is released"
        );
    }
}

#[test]
fn concurrent_ctl_commands_lose_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let running = FeatureRolloutStatus {
        phase: Phase::Progressing,
        stage: Some(0),
        ..Default::default()
    };
    std::fs::write(
        state.join("r.status.json"),
        serde_json::to_vec(&running).unwrap(),
    )
    .unwrap();
    let control = state.join("r.control.json");
    for burst in 0..10 {
        let _ = std::fs::remove_file(&control);
        let mut commands: Vec<Vec<String>> = vec![
            vec!["abort".into(), "r".into()],
            vec!["approve".into(), "half".into(), "r".into()],
        ];
        for k in 0..24 {
            let verb = if k % 2 == 0 { "pause" } else { "resume" };
            commands.insert(k % commands.len(), vec![verb.into(), "r".into()]);
        }
        let children: Vec<Child> = commands
            .iter()
            .map(|args| {
                Command::new(sluice())
                    .arg("ctl")
                    .arg("--state")
                    .arg(&state)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
        let text = std::fs::read_to_string(&control).unwrap();
        let written: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            written["abort"], true,
            "burst {burst}: the abort is kept: {text}"
        );
        assert_eq!(
            written["approve"], "half",
            "burst {burst}: the approval is kept: {text}"
        );
        assert!(written["paused"].is_boolean(), "burst {burst}: {text}");
    }
}

#[test]
fn an_abort_does_not_wait_for_a_look_in_progress() {
    let (_silent, port) = silent_prometheus();
    // Each look waits up to ten minutes for the silent Prometheus, far past the deadline:
    // only an abort that abandons the look rolls back in time.
    let (dir, rollouts, state) = stuck_directories(port);
    let log = dir.path().join("sluice.log");
    let mut process = Standalone::start(&rollouts, &state, &[], &log);
    wait_for("the stage to start", || {
        status(&state, "stuck").filter(|s| s.phase == Phase::Progressing)
    });
    // The look is due at once and hangs: give the reconcile a moment to be inside it.
    let (ok, said) = ctl(&state, &["abort", "stuck"]);
    assert!(ok, "{said}");
    let rolled_back = wait_for("the rollback", || {
        status(&state, "stuck").filter(|s| s.phase == Phase::RolledBack)
    });
    assert_eq!(
        rolled_back.history.last().map(|h| h.reason.as_str()),
        Some("Aborted")
    );
    let flags: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rollouts.join("flags.json")).unwrap())
            .unwrap();
    assert_eq!(flags["flags"]["stuck"]["defaultVariant"], "off");
    assert!(
        flags["flags"]["stuck"]
            .get("targeting")
            .is_none_or(|t| t.is_null())
    );
    process.signal("TERM");
    assert!(process.exited().success());
}

/// A Prometheus that refuses every query and echoes the request's `Authorization`
/// header in its error body, as some proxies do.
fn echoing_prometheus() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || echo_authorization(stream));
        }
    });
    (port, served)
}

fn echo_authorization(mut stream: TcpStream) {
    let (head, _) = read_request(&mut stream);
    let authorization = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .unwrap_or("no authorization")
        .trim()
        .to_owned();
    let body = format!(
        r#"{{"status":"error","errorType":"internal","error":"upstream refused the request with {authorization}"}}"#
    );
    let _ = write!(
        stream,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[test]
fn a_secret_echoed_by_prometheus_never_leaves_the_process() {
    let (port, served) = echoing_prometheus();
    let (dir, rollouts, state) = directories();
    let token = "tok-3f9a8c1d2e7b4a60";
    let password = "pw-91c2d3e4f5a6b7c8";
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    std::fs::write(dir.path().join("password"), password).unwrap();
    let token_file = dir.path().join("token");
    let password_file = dir.path().join("password");
    std::fs::write(
        rollouts.join("bearer.yaml"),
        analysed(
            "bearer",
            port,
            "5s",
            &format!(", bearerTokenFile: {:?}", token_file.display().to_string()),
        ),
    )
    .unwrap();
    std::fs::write(
        rollouts.join("basic.yaml"),
        analysed(
            "basic",
            port,
            "5s",
            &format!(
                ", basicAuth: {{ username: sluice, passwordFile: {:?} }}",
                password_file.display().to_string()
            ),
        ),
    )
    .unwrap();
    let log = dir.path().join("sluice.log");
    let process = Standalone::start(&rollouts, &state, &[], &log);
    for name in ["bearer", "basic"] {
        wait_for(&format!("{name}'s look to fail"), || {
            status(&state, name).filter(|s| {
                s.last_analysis
                    .as_ref()
                    .and_then(|a| a.message.as_deref())
                    .is_some_and(|m| m.contains("upstream refused"))
            })
        });
    }
    assert!(served.load(Ordering::SeqCst) > 0);
    // `sluice:<password>` in base64, as the Basic header carries it.
    let basic = "c2x1aWNlOnB3LTkxYzJkM2U0ZjVhNmI3Yzg=";
    let texts = [
        ("stderr", process.log()),
        (
            "bearer status",
            std::fs::read_to_string(state.join("bearer.status.json")).unwrap(),
        ),
        (
            "basic status",
            std::fs::read_to_string(state.join("basic.status.json")).unwrap(),
        ),
        (
            "events.log",
            std::fs::read_to_string(state.join("events.log")).unwrap_or_default(),
        ),
    ];
    for (what, text) in &texts {
        for secret in [token, password, basic] {
            assert!(!text.contains(secret), "{what} holds a secret:\n{text}");
        }
    }
    assert!(
        texts[1].1.contains("[REDACTED]"),
        "the status says a secret was removed: {}",
        texts[1].1
    );
}

fn validate(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rollout.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(sluice())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn validate_refuses_names_the_api_server_refuses_and_duplicate_keys() {
    let good = analysed("fine", 9090, "5s", "");
    let (ok, said) = validate(&good);
    assert!(ok, "{said}");
    let long = "a".repeat(300);
    for name in ["\"../../evil\"", "Search_V2", long.as_str()] {
        let (ok, said) = validate(&good.replacen("name: fine", &format!("name: {name}"), 1));
        assert!(!ok, "{name} is refused: {said}");
        assert!(said.contains("metadata.name"), "{name}: {said}");
    }
    // A key written twice: YAML forbids it and the last one would silently win.
    let twice = good.replacen(
        "  target: { file: { path: flags.json } }\n",
        "  target: { file: { path: flags.json } }\n  target: { file: { path: other.json } }\n",
        1,
    );
    let (ok, said) = validate(&twice);
    assert!(!ok, "{said}");
    assert!(
        said.contains("spec") && said.contains("duplicate entry with key \"target\""),
        "{said}"
    );
}

#[test]
fn standalone_mode_refuses_duplicate_keys_too() {
    let (_dir, rollouts, state) = directories();
    let twice = analysed("twice", 9, "5s", "").replacen(
        "    - { weight: 10, duration: 1h }\n",
        "    - { weight: 10, weight: 90, duration: 1h }\n",
        1,
    );
    std::fs::write(rollouts.join("twice.yaml"), twice).unwrap();
    let out = Command::new(sluice())
        .args(["standalone", "--once", "--rollouts"])
        .arg(&rollouts)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("spec.stages[0]") && said.contains("duplicate entry with key \"weight\""),
        "{said}"
    );
    assert!(status(&state, "twice").is_none(), "nothing was started");
}

#[test]
fn analyze_stops_at_the_first_look_that_cannot_be_made() {
    // A Prometheus that answers every query with a server error (counted).
    let (port, served) = echoing_prometheus();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rollout.yaml");
    std::fs::write(&file, analysed("down", port, "5s", "")).unwrap();
    let out = Command::new(sluice())
        .args(["analyze", "--elapsed", "10m"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(said.contains("stopped at look 1 of"), "{said}");
    // One look: two queries (errors, requests), each with its retries (3 attempts).
    let requests = served.load(Ordering::SeqCst);
    assert!(requests <= 6, "{requests} requests");
}

#[test]
fn a_signal_ends_a_once_run_whose_look_hangs() {
    let (silent, port) = silent_prometheus();
    let (dir, rollouts, state) = stuck_directories(port);
    let log = dir.path().join("sluice.log");
    // The first run starts the stage; the second one looks, and its look hangs.
    let mut first = Standalone::start(&rollouts, &state, &["--once"], &log);
    assert!(first.exited().success(), "{}", first.log());
    let mut second = Standalone::start(&rollouts, &state, &["--once"], &log);
    silent.set_nonblocking(true).unwrap();
    let mut held = Vec::new();
    wait_for("the look to be in progress", || {
        let (stream, _) = silent.accept().ok()?;
        held.push(stream);
        Some(())
    });
    second.signal("TERM");
    let exit = second.exited();
    assert!(exit.success(), "{exit:?}\n{}", second.log());
}
