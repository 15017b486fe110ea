//! An app with the real OpenFeature Python SDK and flagd provider
//! (tests/python/flagd_sync_client.py) as a process: in-process mode against a sync
//! server, or file mode on a flag file; commands and answers are JSON lines.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// The Python interpreter with the SDK and the provider (`SLUICE_PYTHON`, else the
/// repository's `.venv`).
pub fn python() -> String {
    std::env::var("SLUICE_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

/// The running app; killed on drop.
pub struct App {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl App {
    /// An app in in-process mode, its flags from the sync server at `127.0.0.1:port`
    /// under `selector`; `tls_ca`: the server's CA certificate file for TLS.
    pub fn in_process(port: u16, selector: &str, tls_ca: Option<&Path>) -> Self {
        let mut args = vec![
            "--resolver".to_owned(),
            "in-process".into(),
            "--port".into(),
            port.to_string(),
            "--selector".into(),
            selector.into(),
        ];
        if let Some(ca) = tls_ca {
            args.extend(["--host".into(), "localhost".into()]);
            args.extend(["--tls-cert".into(), ca.display().to_string()]);
        }
        Self::start(&args)
    }

    /// An app in file mode, re-reading `document` every `poll_ms`.
    pub fn file(document: &Path, poll_ms: u64) -> Self {
        Self::start(&[
            "--resolver".into(),
            "file".into(),
            "--document".into(),
            document.display().to_string(),
            "--poll-ms".into(),
            poll_ms.to_string(),
        ])
    }

    fn start(args: &[String]) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/flagd_sync_client.py"
        );
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the Python app starts (SLUICE_PYTHON or .venv with the flagd provider)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut app = App {
            child,
            stdin,
            stdout,
        };
        let ready = app.read();
        assert_eq!(
            ready["ready"],
            json!(true),
            "the app's provider is READY: {ready}"
        );
        app
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("the app answers");
        assert!(!line.is_empty(), "the app ended without answering");
        serde_json::from_str(&line).expect("the app answers JSON")
    }

    /// Sends one command and returns the answer.
    pub fn ask(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").expect("the app reads its commands");
        self.stdin.flush().unwrap();
        self.read()
    }

    /// The variant each of `user-0` .. `user-(keys-1)` gets for the boolean `flag`
    /// (`None`: the evaluation failed).
    pub fn variants(&mut self, flag: &str, keys: usize) -> Vec<Option<String>> {
        let answer = self.ask(json!({ "op": "evaluate", "flag": flag, "keys": keys }));
        answer["variants"]
            .as_array()
            .expect("variants")
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// Waits (inside the app, evaluating over and over) until every one of `keys` gets
    /// `variant` of the boolean `flag`: the answer, with `at` (Unix seconds) when it first did.
    pub fn wait_all(
        &mut self,
        flag: &str,
        keys: &[String],
        variant: &str,
        timeout_s: f64,
    ) -> Value {
        self.ask(json!({
            "op": "wait", "flag": flag, "keys": keys, "variant": variant, "timeout": timeout_s,
        }))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({ "op": "quit" }));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
