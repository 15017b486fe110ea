//! Delivery-latency benchmark (issue 17, item 4): from the moment `sluice standalone`
//! writes a rollback to the moment an app serves only the baseline, through the two paths
//! an app can take its flags by, measured on the same rollbacks:
//!
//! - **sync**: the OpenFeature Python SDK with the flagd provider in in-process mode,
//!   connected to Sluice's sync server (`--sync-address`);
//! - **file**: the same SDK and provider in file mode on the flag file Sluice writes
//!   (`openfeature-provider-flagd` 0.6.1 re-reads a file whose mtime moved every
//!   `deadline_ms`, 500 ms by default; `--file-poll-ms` sets it).
//!
//! ```text
//! cargo bench --bench delivery -- --rollbacks 25
//! cargo bench --bench delivery -- --rollbacks 25 --file-poll-ms 100
//! ```
//!
//! (`--profile dev` reuses the debug build; Sluice's part, a file replace and an
//! announcement, is not where the time goes.)
//!
//! Each round starts the rollout again (`sluice ctl retry`), waits until both apps serve
//! the candidate to the users of its 50 % cohort, then aborts (`sluice ctl abort`). The
//! write's time is the `FlagWritten` line of the events log (taken just after the file was
//! replaced and the change announced); the app's time is the first moment all of those
//! users got the baseline (each app evaluates them over and over, ~1 ms apart). Both are
//! wall-clock times of this machine. Prints figures; asserts nothing about speed.

mod common;
#[path = "../tests/support/sync_app.rs"]
mod sync_app;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sync_app::App;

struct Options {
    rollbacks: usize,
    file_poll_ms: u64,
    users: usize,
}

fn options() -> Options {
    let args = common::Args::parse(&[
        ("--rollbacks", "N"),
        ("--file-poll-ms", "MS"),
        ("--users", "N"),
    ]);
    let options = Options {
        rollbacks: args.get("--rollbacks", 25),
        file_poll_ms: args.get("--file-poll-ms", 500),
        users: args.get("--users", 200),
    };
    assert!(options.rollbacks >= 1, "--rollbacks must be at least 1");
    options
}

const ROLLOUT: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: FeatureRollout
metadata: { name: checkout }
spec:
  flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
  target: { file: { path: flags.json } }
  stages:
    - { name: half, weight: 50, duration: 1h }
    - { weight: 100 }
"#;

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ctl(state: &Path, args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("ctl")
        .arg("--state")
        .arg(state)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "sluice ctl {args:?}");
}

/// The events log's `FlagWritten` lines serving the baseline: their times (Unix seconds).
fn rollback_writes(state: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(state.join("events.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["reason"] == "FlagWritten" && l["serves"] == "baseline")
        .filter_map(|l| l["at"].as_str()?.parse::<jiff::Timestamp>().ok())
        .map(|at| at.as_nanosecond() as f64 / 1e9)
        .collect()
}

fn summary(name: &str, mut latencies: Vec<f64>) {
    latencies.sort_by(f64::total_cmp);
    let n = latencies.len();
    let median = if n % 2 == 1 {
        latencies[n / 2]
    } else {
        (latencies[n / 2 - 1] + latencies[n / 2]) / 2.0
    };
    println!(
        "{name:<6} rollbacks {n:>3}  median {:>8.1} ms  p90 {:>8.1} ms  max {:>8.1} ms  min {:>8.1} ms",
        median * 1e3,
        latencies[(n * 9).div_ceil(10).saturating_sub(1)] * 1e3,
        latencies[n - 1] * 1e3,
        latencies[0] * 1e3
    );
}

fn main() {
    let options = options();
    let dir = tempfile::tempdir().unwrap();
    let (rollouts, state) = (dir.path().join("rollouts"), dir.path().join("state"));
    std::fs::create_dir_all(&rollouts).unwrap();
    let flags = rollouts.join("flags.json");
    std::fs::write(&flags, r#"{"flags":{}}"#).unwrap();
    std::fs::write(rollouts.join("checkout.yaml"), ROLLOUT).unwrap();
    let log = dir.path().join("sluice.log");
    let mut sluice: Child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "standalone",
            "--plain",
            "--poll",
            "50ms",
            "--sync-address",
            "127.0.0.1:0",
        ])
        .arg("--rollouts")
        .arg(&rollouts)
        .arg("--state")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("sluice standalone starts");
    let port: u16 = wait_for("the sync server", || {
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().find(|l| l.contains("sync server listening"))?;
        line.split("address=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    });
    wait_for("the first stage", || {
        let text = std::fs::read_to_string(&flags).ok()?;
        text.contains("fractional").then_some(())
    });
    let selector = flags.display().to_string();
    let mut sync = App::in_process(port, &selector, None);
    let mut file = App::file(&flags, options.file_poll_ms);
    let cohort: Vec<String> = wait_for("the 50 % cohort", || {
        let variants = sync.variants("checkout", options.users);
        let on: Vec<String> = variants
            .iter()
            .enumerate()
            .filter(|(_, v)| v.as_deref() == Some("on"))
            .map(|(i, _)| format!("user-{i}"))
            .collect();
        (!on.is_empty()).then_some(on)
    });
    println!(
        "delivery of a rollback: {} rollbacks, {} users of the 50 % cohort watched, file mode re-reading every {} ms; sluice standalone --poll 50ms",
        options.rollbacks,
        cohort.len(),
        options.file_poll_ms
    );
    let (mut via_sync, mut via_file) = (Vec::new(), Vec::new());
    for round in 0..options.rollbacks {
        if round > 0 {
            ctl(&state, &["retry", "checkout"]);
        }
        for app in [&mut sync, &mut file] {
            let answer = app.wait_all("checkout", &cohort, "on", 60.0);
            assert_eq!(
                answer["ok"], true,
                "the apps serve the candidate again: {answer}"
            );
        }
        let before = rollback_writes(&state).len();
        ctl(&state, &["abort", "checkout"]);
        // Both apps watch the same write, each in its own thread.
        let (sync_answer, file_answer) = std::thread::scope(|s| {
            let waiting_sync = s.spawn(|| sync.wait_all("checkout", &cohort, "off", 60.0));
            let waiting_file = s.spawn(|| file.wait_all("checkout", &cohort, "off", 60.0));
            (waiting_sync.join().unwrap(), waiting_file.join().unwrap())
        });
        let written = wait_for("the rollback's FlagWritten line", || {
            rollback_writes(&state).get(before).copied()
        });
        for (answer, into) in [(sync_answer, &mut via_sync), (file_answer, &mut via_file)] {
            assert_eq!(answer["ok"], true, "the app serves the baseline: {answer}");
            into.push(answer["at"].as_f64().unwrap() - written);
        }
    }
    summary("sync", via_sync);
    summary("file", via_file);
    let _ = sluice.kill();
    let _ = sluice.wait();
}
