//! The Helm chart (`charts/sluice`) rendered by Helm's own library (`scripts/helm.py
//! render`, the PyPI package `helm-python-sdk` in `.venv`; `make test` installs it). The
//! interpreter is `$SLUICE_PYTHON` or `<repo>/.venv/bin/python`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sluice::manifest;

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter that has helm-python-sdk.
pub fn python() -> PathBuf {
    let python = match std::env::var_os("SLUICE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => repo().join(".venv/bin/python"),
    };
    assert!(
        python.exists(),
        "no Python interpreter at {}: run `make venv helm` (it creates .venv with \
         tests/python/helm-requirements.txt), or point SLUICE_PYTHON at an interpreter \
         that has helm-python-sdk",
        python.display()
    );
    python
}

/// `helm template` of release `sluice` in `namespace` with these values: the rendered
/// YAML stream, or Helm's error.
pub fn try_render(values: &Value, namespace: &str) -> Result<String, String> {
    let output = Command::new(python())
        .arg(repo().join("scripts/helm.py"))
        .arg("render")
        .arg(repo().join("charts/sluice"))
        .args(["--name", "sluice", "--namespace", namespace])
        .arg("--values")
        .arg(values.to_string())
        .output()
        .expect("scripts/helm.py runs");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("UTF-8 output"))
    } else {
        Err(format!(
            "scripts/helm.py render failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Every document [`try_render`] renders, as JSON; fails the test on Helm's error.
pub fn render(values: &Value, namespace: &str) -> Vec<Value> {
    let text = try_render(values, namespace).unwrap_or_else(|e| panic!("{e}"));
    manifest::documents(&text).unwrap_or_else(|e| panic!("rendered YAML: {e:?}\n{text}"))
}
