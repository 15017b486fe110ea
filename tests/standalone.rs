//! `sluice standalone` and `sluice ctl` as a user runs them: the real binary on real
//! files. A rollout killed with SIGKILL continues from its status; broken inputs (a
//! malformed file, an invalid spec, a flag document that is not flagd's, a Prometheus
//! that is down) each give a clear message and leave the other rollouts running; the
//! controls steer a running rollout; a removed file puts the flag back to the baseline.
//!
//! Every wait polls a condition with a generous deadline.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sluice::crd::{FeatureRolloutStatus, Phase, Verdict};
use support::standalone::{
    DEADLINE, Standalone, ctl, error_rate_analysis, manifest, read_request, sluice, status,
    wait_for,
};

fn wait_phase(state: &Path, name: &str, phase: Phase) -> FeatureRolloutStatus {
    wait_for(&format!("{name} to be {phase:?}"), || {
        status(state, name).filter(|s| s.phase == phase)
    })
}

fn flag(path: &Path, key: &str) -> Value {
    let text = std::fs::read_to_string(path).expect("flag file");
    let doc: Value = serde_json::from_str(&text).expect("the flag file is always whole JSON");
    doc["flags"][key].clone()
}

fn serves_only_baseline(flag: &Value) -> bool {
    flag["defaultVariant"] == "off" && flag.get("targeting").is_none_or(Value::is_null)
}

#[test]
fn a_killed_process_continues_from_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    std::fs::write(
        rollouts.join("steady.yaml"),
        manifest(
            "steady",
            "../flags.json",
            "    - { weight: 10, duration: 3s }\n    - { weight: 25, duration: 3s }\n    - { weight: 50, duration: 3s }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    let log = dir.path().join("sluice.log");
    let mut first = Standalone::start(&rollouts, &state, &[], &log);
    let before = wait_for("the second stage", || {
        status(&state, "steady").filter(|s| s.stage == Some(1))
    });
    first.kill();
    let flags = dir.path().join("flags.json");
    assert_eq!(
        flag(&flags, "steady")["targeting"]["fractional"][0][1],
        250_000,
        "the flag file (relative to the YAML's directory) serves the second stage"
    );

    assert!(
        state.join("standalone.lock").exists(),
        "the killed process left its lock"
    );
    let second = Standalone::start(&rollouts, &state, &[], &log);
    let pid = second.child.id().to_string();
    wait_for("the second process to take the lock over", || {
        let owner = std::fs::read_to_string(state.join("standalone.lock")).ok()?;
        (owner.trim() == pid).then_some(())
    });
    // A second process on the same state directory is refused while this one runs.
    let refused = Command::new(sluice())
        .args(["standalone", "--plain", "--rollouts"])
        .arg(&rollouts)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("another sluice standalone"), "{said}");
    let after = wait_phase(&state, "steady", Phase::Promoted);
    assert_eq!(
        after.history[..before.history.len()],
        before.history[..],
        "the history from before the kill is kept as it was"
    );
    let stages: Vec<Option<u32>> = after.history.iter().map(|h| h.stage).collect();
    let reasons: Vec<&str> = after.history.iter().map(|h| h.reason.as_str()).collect();
    assert_eq!(
        stages,
        [Some(0), Some(1), Some(2), Some(3)],
        "every stage entered once, in order: {reasons:?}"
    );
    assert_eq!(
        reasons,
        ["Started", "StageAdvanced", "StageAdvanced", "Promoted"]
    );
    drop(second);
    // The second stage kept the start it had before the kill: its 3s were not restarted.
    let second_stage = after.history[1].at;
    assert_eq!(Some(second_stage), before.stage_started_at);
}

#[test]
fn broken_inputs_are_reported_and_the_other_rollouts_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    // A healthy rollout next to every kind of trouble.
    std::fs::write(
        rollouts.join("good.yaml"),
        manifest(
            "good",
            "flags.json",
            "    - { weight: 10, duration: 1s }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    std::fs::write(rollouts.join("garbled.yaml"), "spec: [unclosed\n").unwrap();
    std::fs::write(
        rollouts.join("invalid.yaml"),
        manifest(
            "invalid",
            "flags.json",
            "    - { weight: 50, duration: 1s }\n    - { weight: 10, duration: 1s }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    let foreign_text = "[\"this is not a flagd document\"]\n";
    std::fs::write(rollouts.join("foreign.json"), foreign_text).unwrap();
    std::fs::write(
        rollouts.join("foreign.yaml"),
        manifest(
            "foreign",
            "foreign.json",
            "    - { weight: 10, duration: 1s }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        rollouts.join("blind.yaml"),
        manifest(
            "blind",
            "flags.json",
            "    - { weight: 10, duration: 1s }\n    - { weight: 100 }",
        ) + &error_rate_analysis(port, "2s", ""),
    )
    .unwrap();

    // A Prometheus that accepts connections and never answers: each look hangs until
    // the client's timeout, and must not hold up the other rollouts.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::fs::write(
        rollouts.join("stuck.yaml"),
        std::fs::read_to_string(rollouts.join("blind.yaml"))
            .unwrap()
            .replace("name: blind", "name: stuck")
            .replace("key: blind", "key: stuck")
            .replace(&format!(":{port}\""), &format!(":{silent_port}\""))
            .replace("timeout: 2s", "timeout: 20s"),
    )
    .unwrap();

    let log = dir.path().join("sluice.log");
    let process = Standalone::start(&rollouts, &state, &[], &log);
    wait_phase(&state, "good", Phase::Promoted);
    assert!(
        status(&state, "stuck").is_some_and(|s| s.last_analysis.is_none()),
        "the good rollout went through two stages while the stuck one waited for its first look"
    );
    let foreign = wait_for("the foreign document to be refused", || {
        status(&state, "foreign").filter(|s| {
            s.conditions
                .iter()
                .any(|c| c.reason == "FlagDocumentInvalid" && c.status == "False")
        })
    });
    assert_ne!(foreign.phase, Phase::Promoted);
    assert_eq!(
        std::fs::read_to_string(rollouts.join("foreign.json")).unwrap(),
        foreign_text,
        "a document that is not flagd's is never overwritten"
    );
    let blind = wait_for("the blind rollout's errored look", || {
        status(&state, "blind").filter(|s| {
            s.last_analysis
                .as_ref()
                .is_some_and(|a| a.verdict == Verdict::Error)
        })
    });
    assert_eq!(blind.phase, Phase::Progressing, "an errored look holds");
    assert!(
        status(&state, "invalid").is_none(),
        "an invalid file never starts"
    );
    // Every problem is in the log, naming the file or the rollout and what is wrong.
    let text = wait_for("the messages", || {
        let text = process.log();
        text.contains("the look at the metrics failed")
            .then_some(text)
    });
    for expected in [
        "garbled.yaml: (document): is not valid YAML",
        "invalid.yaml: invalid: spec.stages[1].weight",
        "the flag document cannot be changed safely",
        "the look at the metrics failed (the stage holds): error-rate:",
    ] {
        assert!(
            text.contains(expected),
            "the log says {expected:?}:\n{text}"
        );
    }
    // The flag of the blind rollout sits at its first stage; the good one is promoted.
    let flags = rollouts.join("flags.json");
    assert_eq!(flag(&flags, "good")["defaultVariant"], "on");
    assert_eq!(
        flag(&flags, "blind")["targeting"]["fractional"][0][1],
        100_000
    );
}

#[test]
fn ctl_steers_a_running_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    std::fs::write(
        rollouts.join("gated.yaml"),
        manifest(
            "gated",
            "flags.json",
            "    - { weight: 10, duration: 1s }\n    - { name: half, weight: 50, duration: 1h, approval: required }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    let flags = rollouts.join("flags.json");
    let log = dir.path().join("sluice.log");
    let _process = Standalone::start(&rollouts, &state, &[], &log);

    wait_phase(&state, "gated", Phase::WaitingForApproval);
    let (ok, said) = ctl(&state, &["retry", "gated"]);
    assert!(!ok, "retry of a running rollout is refused: {said}");
    assert!(said.contains("WaitingForApproval"), "{said}");
    let (ok, said) = ctl(&state, &["approve", "half", "gated"]);
    assert!(ok, "{said}");
    let s = wait_for("the approved stage", || {
        status(&state, "gated").filter(|s| s.stage == Some(1))
    });
    assert_eq!(s.exposure.as_deref(), Some("50%"));

    assert!(ctl(&state, &["pause", "gated"]).0);
    wait_phase(&state, "gated", Phase::Paused);
    assert!(ctl(&state, &["resume", "gated"]).0);
    wait_phase(&state, "gated", Phase::Progressing);

    assert!(ctl(&state, &["abort", "gated"]).0);
    let rolled_back = wait_phase(&state, "gated", Phase::RolledBack);
    assert!(serves_only_baseline(&flag(&flags, "gated")));
    let (ok, said) = ctl(&state, &["status", "gated"]);
    assert!(ok);
    assert!(said.contains("gated: RolledBack"), "{said}");
    assert!(
        said.contains("Aborted"),
        "the history shows the abort: {said}"
    );

    let (ok, said) = ctl(&state, &["retry", "gated"]);
    assert!(ok, "{said}");
    let again = wait_for("the retried rollout", || {
        status(&state, "gated")
            .filter(|s| s.phase == Phase::Progressing && s.retries > rolled_back.retries)
    });
    assert_eq!(again.stage, Some(0), "a retry starts at the first stage");
    assert_eq!(
        flag(&flags, "gated")["targeting"]["fractional"][0][1],
        100_000
    );
    // The YAML was never touched: the controls live in the state directory.
    assert!(
        !std::fs::read_to_string(rollouts.join("gated.yaml"))
            .unwrap()
            .contains("control")
    );
    let (ok, said) = ctl(&state, &["pause", "nobody"]);
    assert!(!ok);
    assert!(said.contains("no rollout named \"nobody\""), "{said}");
}

#[test]
fn a_removed_file_puts_the_flag_back_and_forgets_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    let file = rollouts.join("leaving.yaml");
    std::fs::write(
        &file,
        manifest(
            "leaving",
            "flags.json",
            "    - { weight: 30, duration: 1h }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    let flags = rollouts.join("flags.json");
    let log = dir.path().join("sluice.log");
    let _process = Standalone::start(&rollouts, &state, &[], &log);
    wait_phase(&state, "leaving", Phase::Progressing);
    assert_eq!(
        flag(&flags, "leaving")["targeting"]["fractional"][0][1],
        300_000
    );
    std::fs::remove_file(&file).unwrap();
    wait_for("the status to be forgotten", || {
        (!state.join("leaving.status.json").exists()).then_some(())
    });
    assert!(serves_only_baseline(&flag(&flags, "leaving")));
}

#[test]
fn once_reconciles_every_rollout_and_reports_problems() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    std::fs::write(
        rollouts.join("one.yaml"),
        manifest(
            "one",
            "flags.json",
            "    - { weight: 5, duration: 1h }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    let run = || {
        Command::new(sluice())
            .args(["standalone", "--once", "--rollouts"])
            .arg(&rollouts)
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("one: Progressing stage 1"), "{stdout}");
    std::fs::write(rollouts.join("two.yml"), "kind: Nothing\n").unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("two.yml"), "{stderr}");
    assert!(
        stderr.contains("is not a sluice.dev/v1alpha1 FeatureRollout"),
        "{stderr}"
    );
}

#[test]
fn the_flag_key_and_target_of_a_running_rollout_cannot_move() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    let file = rollouts.join("fixed.yaml");
    let stages = "    - { weight: 20, duration: 1h }\n    - { weight: 100 }";
    std::fs::write(&file, manifest("fixed", "flags.json", stages)).unwrap();
    let log = dir.path().join("sluice.log");
    let process = Standalone::start(&rollouts, &state, &[], &log);
    wait_phase(&state, "fixed", Phase::Progressing);
    std::fs::write(&file, manifest("fixed", "elsewhere.json", stages)).unwrap();
    wait_for("the refusal", || {
        process
            .log()
            .contains("spec.flag.key and spec.target cannot change")
            .then_some(())
    });
    let flags = rollouts.join("flags.json");
    assert_eq!(
        flag(&flags, "fixed")["targeting"]["fractional"][0][1],
        200_000,
        "the flag stays where it was, still managed"
    );
    assert!(!rollouts.join("elsewhere.json").exists());
    assert_eq!(
        status(&state, "fixed").unwrap().history.len(),
        1,
        "no new rollout"
    );
}

/// Reads one HTTP request from `stream` (headers and a Content-Length body), answers 200
/// and returns the body.
fn serve_one(mut stream: std::net::TcpStream) -> String {
    use std::io::Write as _;
    let (_, body) = read_request(&mut stream);
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    body
}

#[test]
fn notifications_go_to_the_command_line_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    std::fs::write(
        rollouts.join("told.yaml"),
        manifest(
            "told",
            "flags.json",
            "    - { weight: 10, duration: 1s }\n    - { weight: 100 }",
        ),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("json:http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if tx.send(serve_one(stream)).is_err() {
                break;
            }
        }
    });
    let log = dir.path().join("sluice.log");
    let _process = Standalone::start(&rollouts, &state, &["--notify-webhook", &url], &log);
    wait_phase(&state, "told", Phase::Promoted);
    let body = rx.recv_timeout(DEADLINE).expect("a notification arrives");
    let payload: Value = serde_json::from_str(&body).expect("a JSON payload");
    assert!(
        payload.to_string().contains("told") && payload.to_string().contains("Promoted"),
        "{payload}"
    );
}
