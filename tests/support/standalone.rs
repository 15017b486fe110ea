//! `sluice standalone` and `sluice ctl` as processes: the real binary on real files, and
//! waits that poll a condition with a generous deadline.

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice::crd::FeatureRolloutStatus;

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `sluice` binary under test.
pub fn sluice() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Polls `check` until it gives a value; fails the test after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary directory with an empty `rollouts` directory in it and the path of a
/// `state` directory (not created: standalone mode creates it).
pub fn directories() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&rollouts).unwrap();
    (dir, rollouts, state)
}

/// A rollout's status file, if it has one.
pub fn status(state: &Path, name: &str) -> Option<FeatureRolloutStatus> {
    let text = std::fs::read_to_string(state.join(format!("{name}.status.json"))).ok()?;
    Some(serde_json::from_str(&text).expect("the status file is always whole"))
}

/// A FeatureRollout manifest of the boolean flag `name` (variants `on` and `off`, baseline
/// `off`) into the flag file `flags` (relative to the manifest), through `stages` (the YAML
/// lines of the list, `    - { ... }` each). More of the spec, indented by two spaces
/// (as [`error_rate_analysis`]), may be appended.
pub fn manifest(name: &str, flags: &str, stages: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: FeatureRollout
metadata: {{ name: {name} }}
spec:
  flag: {{ key: {name}, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
  target: {{ file: {{ path: {flags} }} }}
  stages:
{stages}
"#
    )
}

/// The `analysis` of a [`manifest`]'s spec: a look every second at the share of
/// `http_requests_total` with code 500 (at most 2 %) from the Prometheus at
/// `127.0.0.1:port`, each query allowed `timeout`; `prometheus` is appended to the fields
/// of `analysis.prometheus` (`, bearerTokenFile: ...`, or nothing).
pub fn error_rate_analysis(port: u16, timeout: &str, prometheus: &str) -> String {
    format!(
        r#"  analysis:
    interval: 1s
    prometheus: {{ address: "http://127.0.0.1:{port}", timeout: {timeout}{prometheus} }}
    metrics:
      - name: error-rate
        ratio:
          errors: 'sum by (feature_flag_result_variant) (increase(http_requests_total{{code="500"}}[{{{{ window }}}}]))'
          requests: 'sum by (feature_flag_result_variant) (increase(http_requests_total[{{{{ window }}}}]))'
        max: "2%"
"#
    )
}

/// Runs `sluice ctl --state STATE ARGS`: whether it succeeded, and what it printed.
pub fn ctl(state: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(sluice())
        .arg("ctl")
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("sluice ctl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Reads one HTTP request from `stream`: its head (request line and headers) and its
/// body (by Content-Length). Whatever arrived, if the connection ends first.
pub fn read_request(stream: &mut TcpStream) -> (String, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return (text[..end].to_string(), text[end + 4..].to_string());
            }
        }
    }
    (String::from_utf8_lossy(&data).to_string(), String::new())
}

/// A running `sluice standalone` (`--plain --poll 100ms`), killed on drop; stdout goes to
/// `LOG.out`, stderr is appended to `LOG`.
pub struct Standalone {
    /// The process.
    pub child: Child,
    stderr: PathBuf,
}

impl Standalone {
    /// Starts it with stdin from /dev/null.
    pub fn start(rollouts: &Path, state: &Path, extra: &[&str], log: &Path) -> Self {
        Self::start_with(rollouts, state, extra, log, Stdio::null())
    }

    /// Starts it with the given stdin.
    pub fn start_with(
        rollouts: &Path,
        state: &Path,
        extra: &[&str],
        log: &Path,
        stdin: Stdio,
    ) -> Self {
        let child = Command::new(sluice())
            .args(["standalone", "--plain", "--poll", "100ms", "--rollouts"])
            .arg(rollouts)
            .arg("--state")
            .arg(state)
            .args(extra)
            .stdin(stdin)
            .stdout(Stdio::from(
                std::fs::File::create(log.with_extension("out")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            ))
            .spawn()
            .expect("sluice standalone starts");
        Standalone {
            child,
            stderr: log.to_path_buf(),
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// Waits for the process to end on its own.
    pub fn exited(&mut self) -> ExitStatus {
        let child = &mut self.child;
        wait_for("sluice standalone to exit", || child.try_wait().unwrap())
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
