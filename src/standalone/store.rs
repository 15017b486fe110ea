//! The files standalone mode owns or writes: the state directory (status, controls,
//! events log) and the flagd documents, every write an atomic replace (a temporary file
//! in the same directory, flushed, then renamed over the old one), so a reader never sees
//! half a file and a crash leaves the old or the new content, never a mix.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crd::{Control, FeatureRolloutStatus};
use crate::engine::{Event, EventType};
use crate::flagd::merge_flag;
use crate::reconcile::{self, FlagWriteError, Shell};

use super::Error;

/// Writes `content` to `path` atomically: a temporary file next to it (same directory,
/// so the rename cannot cross file systems), flushed to disk, then renamed over `path`.
pub fn atomic_write(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One lock per flag document path, so two rollouts of this process that share a
/// document never lose each other's write (read, merge and replace happen under it).
static DOCUMENT_LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

fn document_lock(path: &Path) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = DOCUMENT_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// Per-field overrides of a rollout's `spec.control`, kept in
/// `STATE/<name>.control.json` and written by `sluice ctl`, so people steer a running
/// rollout without editing its YAML. A field that is absent leaves the YAML's value in
/// force.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlOverride {
    /// Overrides `control.paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Overrides `control.approve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve: Option<String>,
    /// Overrides `control.abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<bool>,
    /// Overrides `control.retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
}

impl ControlOverride {
    /// The control in force: these overrides over the YAML's `spec.control`.
    pub fn apply(&self, control: &Control) -> Control {
        Control {
            paused: self.paused.unwrap_or(control.paused),
            approve: self.approve.clone().or_else(|| control.approve.clone()),
            abort: self.abort.unwrap_or(control.abort),
            retry: self.retry.unwrap_or(control.retry),
        }
    }
}

/// One line of `STATE/events.log` (JSON lines): an event of the engine, a flag write or
/// a problem, with the rollout it concerns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogLine {
    /// When it happened.
    pub at: Timestamp,
    /// The rollout's name.
    pub rollout: String,
    /// `Normal` or `Warning` for events, `Flag` for flag writes, `Error` for problems.
    #[serde(rename = "type")]
    pub type_: String,
    /// A PascalCase reason (`StageAdvanced`, `RolledBack`, `FlagWritten`, ...).
    pub reason: String,
    /// What happened, in a sentence.
    pub message: String,
    /// For flag writes: what the document now serves (`baseline`, `promoted` or the
    /// candidate's share in millionths, as in the document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<String>,
}

/// The state directory: `<name>.status.json` (the rollout's `FeatureRolloutStatus`),
/// `<name>.control.json` ([`ControlOverride`]) and `events.log`.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// The suffix of status files.
pub const STATUS_SUFFIX: &str = ".status.json";
/// The suffix of control files.
pub const CONTROL_SUFFIX: &str = ".control.json";
/// The lock file's name.
pub const LOCK_FILE: &str = "standalone.lock";

/// The claim on a state directory; released (the file removed) when dropped.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The events log's file name.
pub const EVENTS_LOG: &str = "events.log";

impl StateDir {
    /// Opens (creates if needed) a state directory.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::State {
            path: dir.to_path_buf(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing state directory (for `sluice ctl`).
    pub fn existing(dir: &Path) -> Result<Self, Error> {
        if !dir.is_dir() {
            return Err(Error::State {
                path: dir.to_path_buf(),
                message: "is not a directory (is this the --state of sluice standalone?)".into(),
            });
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where a rollout's status lives.
    pub fn status_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{STATUS_SUFFIX}"))
    }

    /// Where a rollout's control overrides live.
    pub fn control_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{CONTROL_SUFFIX}"))
    }

    /// The events log.
    pub fn events_path(&self) -> PathBuf {
        self.dir.join(EVENTS_LOG)
    }

    /// The names of the rollouts that have a status here.
    pub fn names(&self) -> Result<Vec<String>, Error> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::State {
            path: self.dir.clone(),
            message: format!("cannot list: {e}"),
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(STATUS_SUFFIX))
                    .filter(|n| !n.starts_with('.'))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Claims the state directory for this process (`STATE/standalone.lock`, holding the
    /// process id): two processes on one state directory would overwrite each other's
    /// status. A lock left by a process that no longer runs (killed) is taken over. Where
    /// processes cannot be checked (no `/proc`), the lock is only advisory.
    pub fn lock(&self) -> Result<Lock, Error> {
        let path = self.dir.join(LOCK_FILE);
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(pid) = text.trim().parse::<u32>()
            && pid != std::process::id()
            && Path::new("/proc/self").exists()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(Error::State {
                path,
                message: format!(
                    "another sluice standalone (process {pid}) uses this state directory; stop it first (or delete this file if no such process is Sluice)"
                ),
            });
        }
        atomic_write(&path, format!("{}\n", std::process::id()).as_bytes()).map_err(|e| {
            Error::State {
                path: path.clone(),
                message: format!("cannot write: {e}"),
            }
        })?;
        Ok(Lock { path })
    }

    /// A rollout's persisted status; `None` when it has none yet.
    pub fn read_status(&self, name: &str) -> Result<Option<FeatureRolloutStatus>, Error> {
        read_json(&self.status_path(name))
    }

    /// Persists a rollout's status (atomic replace).
    pub fn write_status(&self, name: &str, status: &FeatureRolloutStatus) -> Result<(), Error> {
        let path = self.status_path(name);
        let mut text = serde_json::to_vec_pretty(status).map_err(|e| Error::State {
            path: path.clone(),
            message: format!("cannot serialize the status: {e}"),
        })?;
        text.push(b'\n');
        atomic_write(&path, &text).map_err(|e| Error::State {
            path,
            message: format!("cannot write: {e}"),
        })
    }

    /// A rollout's control overrides (empty when it has none).
    pub fn read_control(&self, name: &str) -> Result<ControlOverride, Error> {
        Ok(read_json(&self.control_path(name))?.unwrap_or_default())
    }

    /// Persists a rollout's control overrides (atomic replace).
    pub fn write_control(&self, name: &str, control: &ControlOverride) -> Result<(), Error> {
        let path = self.control_path(name);
        let mut text = serde_json::to_vec_pretty(control).map_err(|e| Error::State {
            path: path.clone(),
            message: format!("cannot serialize the controls: {e}"),
        })?;
        text.push(b'\n');
        atomic_write(&path, &text).map_err(|e| Error::State {
            path,
            message: format!("cannot write: {e}"),
        })
    }

    /// Forgets a rollout: removes its status and control overrides.
    pub fn forget(&self, name: &str) -> Result<(), Error> {
        for path in [self.status_path(name), self.control_path(name)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::State {
                        path,
                        message: format!("cannot remove: {e}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Appends one line to the events log (best effort: a failure is logged, never
    /// fatal). Lines are short and written with one `write` call in append mode, so lines
    /// from concurrent writers do not interleave.
    pub fn append_event(&self, line: &LogLine) {
        let path = self.events_path();
        let mut text = match serde_json::to_string(line) {
            Ok(text) => text,
            Err(_) => return,
        };
        text.push('\n');
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot append to the events log");
        }
    }

    /// Every line of the events log (unreadable lines are skipped).
    pub fn read_events(&self) -> Vec<LogLine> {
        std::fs::read_to_string(self.events_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::State {
                path: path.to_path_buf(),
                message: format!("is not valid: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::State {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// What a rendered flag serves, for the events log and the view.
pub fn serves(flag: &Value, baseline: &str, candidate: &str) -> String {
    let default = flag.get("defaultVariant").and_then(Value::as_str);
    match flag.get("targeting") {
        None | Some(Value::Null) if default == Some(baseline) => "baseline".into(),
        None | Some(Value::Null) if default == Some(candidate) => "promoted".into(),
        None | Some(Value::Null) => default.unwrap_or("?").to_owned(),
        Some(targeting) => {
            let text = targeting.to_string();
            // The candidate's bucket comes first: [[candidate, w], [baseline, rest]].
            let weight = find_fractional(targeting)
                .and_then(|f| f.get(0)?.get(1)?.as_u64())
                .map(|w| format!("{:.4}%", w as f64 / 10_000.0));
            weight.unwrap_or(text)
        }
    }
}

fn find_fractional(value: &Value) -> Option<&Value> {
    match value {
        Value::Object(map) => map
            .get("fractional")
            .or_else(|| map.values().find_map(find_fractional)),
        Value::Array(items) => items.iter().find_map(find_fractional),
        _ => None,
    }
}

/// The [`Shell`] of one rollout in standalone mode: its flag in a flagd JSON file, its
/// status and events in the state directory.
#[derive(Clone, Debug)]
pub struct FileShell {
    /// The rollout's name.
    pub name: String,
    /// The flagd document (resolved against the YAML file's directory).
    pub flag_path: PathBuf,
    /// The flag's baseline variant (to describe writes).
    pub baseline: String,
    /// The flag's candidate variant (to describe writes).
    pub candidate: String,
    /// The state directory.
    pub state: StateDir,
    /// The live view, told about events.
    pub view: Option<tokio::sync::mpsc::UnboundedSender<super::view::ViewMsg>>,
}

impl FileShell {
    async fn write_document(&self, key: &str, flag: &Value) -> Result<bool, FlagWriteError> {
        let unavailable = |message: String| FlagWriteError::Unavailable {
            category: "io",
            message: format!("{}: {message}", self.flag_path.display()),
        };
        let lock = document_lock(&self.flag_path);
        let _held = lock.lock().await;
        // Another process may write the same document: merge, then check it did not
        // change under us before replacing it (optimistic concurrency), a few times.
        for _ in 0..5 {
            let current = match std::fs::read_to_string(&self.flag_path) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(unavailable(format!("cannot read: {e}"))),
            };
            let merged = merge_flag(current.as_deref(), key, flag.clone())?;
            if current.as_deref() == Some(merged.as_str()) {
                return Ok(false);
            }
            let now = std::fs::read_to_string(&self.flag_path).ok();
            if now != current {
                continue;
            }
            if let Some(dir) = self.flag_path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| unavailable(format!("cannot create its directory: {e}")))?;
            }
            atomic_write(&self.flag_path, merged.as_bytes())
                .map_err(|e| unavailable(format!("cannot write: {e}")))?;
            return Ok(true);
        }
        Err(FlagWriteError::Unavailable {
            category: "conflict",
            message: format!(
                "{}: the document kept changing while Sluice wrote it",
                self.flag_path.display()
            ),
        })
    }
}

impl Shell for FileShell {
    async fn write_flag(&self, key: &str, flag: &Value) -> Result<bool, FlagWriteError> {
        let changed = self.write_document(key, flag).await?;
        if changed {
            let serves = serves(flag, &self.baseline, &self.candidate);
            self.state.append_event(&LogLine {
                at: Timestamp::now(),
                rollout: self.name.clone(),
                type_: "Flag".into(),
                reason: "FlagWritten".into(),
                message: format!(
                    "{}: flag {key} now serves {serves}",
                    self.flag_path.display()
                ),
                serves: Some(serves),
            });
        }
        Ok(changed)
    }

    async fn write_status(&self, status: &FeatureRolloutStatus) -> Result<(), reconcile::Error> {
        self.state
            .write_status(&self.name, status)
            .map_err(|e| reconcile::Error::WriteStatus {
                category: "io",
                message: e.to_string(),
            })
    }

    async fn publish(&self, event: &Event) {
        let type_ = match event.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        match event.type_ {
            EventType::Normal => tracing::info!(
                target: "sluice::events",
                rollout = %self.name, reason = event.reason, "{}", event.message
            ),
            EventType::Warning => tracing::warn!(
                target: "sluice::events",
                rollout = %self.name, reason = event.reason, "{}", event.message
            ),
        }
        let at = Timestamp::now();
        if let Some(view) = &self.view {
            let _ = view.send(super::view::ViewMsg::Event {
                at,
                rollout: self.name.clone(),
                warning: event.type_ == EventType::Warning,
                reason: event.reason.into(),
                message: event.message.clone(),
            });
        }
        self.state.append_event(&LogLine {
            at,
            rollout: self.name.clone(),
            type_: type_.into(),
            reason: event.reason.into(),
            message: event.message.clone(),
            serves: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["flags.json"]);
    }

    #[test]
    fn overrides_replace_only_the_fields_they_set() {
        let yaml = Control {
            paused: true,
            approve: Some("half".into()),
            abort: false,
            retry: 2,
        };
        assert_eq!(ControlOverride::default().apply(&yaml), yaml);
        let ctl = ControlOverride {
            paused: Some(false),
            retry: Some(3),
            ..ControlOverride::default()
        };
        let control = ctl.apply(&yaml);
        assert!(!control.paused);
        assert_eq!(control.approve.as_deref(), Some("half"));
        assert_eq!(control.retry, 3);
        assert!(serde_json::from_str::<ControlOverride>(r#"{"pause": true}"#).is_err());
    }

    #[test]
    fn writes_are_described_by_what_they_serve() {
        let baseline = json!({"defaultVariant": "off", "variants": {}});
        let promoted = json!({"defaultVariant": "on"});
        let stage = json!({"defaultVariant": "off", "targeting": {"fractional": [["on", 250000], ["off", 750000]]}});
        let audience = json!({"defaultVariant": "off", "targeting": {"if": [{"in": ["a", "b"]}, {"fractional": [["on", 5000], ["off", 995000]]}, null]}});
        assert_eq!(serves(&baseline, "off", "on"), "baseline");
        assert_eq!(serves(&promoted, "off", "on"), "promoted");
        assert_eq!(serves(&stage, "off", "on"), "25.0000%");
        assert_eq!(serves(&audience, "off", "on"), "0.5000%");
    }

    #[tokio::test]
    async fn the_file_shell_merges_skips_and_refuses_foreign_documents() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let flag_path = dir.path().join("flags.json");
        std::fs::write(
            &flag_path,
            r#"{"flags": {"other": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}"#,
        )
        .unwrap();
        let shell = FileShell {
            name: "r".into(),
            flag_path: flag_path.clone(),
            baseline: "off".into(),
            candidate: "on".into(),
            state: state.clone(),
            view: None,
        };
        let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
        assert!(shell.write_flag("mine", &flag).await.unwrap());
        assert!(
            !shell.write_flag("mine", &flag).await.unwrap(),
            "unchanged: no write"
        );
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&flag_path).unwrap()).unwrap();
        assert_eq!(
            doc["flags"]["other"]["variants"]["a"], 1,
            "other flags kept"
        );
        assert_eq!(doc["flags"]["mine"], flag);
        let events = state.read_events();
        assert_eq!(events.len(), 1, "one write, one line: {events:?}");
        assert_eq!(events[0].serves.as_deref(), Some("baseline"));

        std::fs::write(&flag_path, "{\"flags\": []}").unwrap();
        let error = shell.write_flag("mine", &flag).await.unwrap_err();
        assert!(matches!(error, FlagWriteError::Document(_)), "{error}");
        assert_eq!(
            std::fs::read_to_string(&flag_path).unwrap(),
            "{\"flags\": []}"
        );
    }
}
