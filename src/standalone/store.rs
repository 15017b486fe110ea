//! The files standalone mode owns or writes: the state directory (status, controls,
//! events log) and the flagd documents, every write an atomic replace (a temporary file
//! in the same directory, flushed, then renamed over the old one), so a reader never sees
//! half a file and a crash leaves the old or the new content, never a mix.
//!
//! The flag file is a [`FlagStore`] ([`FileStore`]): its version is the file's identity
//! (device, inode), modification time, size and a digest of its content; a write takes
//! `flock(2)` on `<file>.lock` next to it, reads the version again and renames only if it
//! is still the one read. Writers that take the same lock, or replace the file by an
//! atomic rename, never lose a change to Sluice; a writer that rewrites the file in place
//! without the lock is detected whenever its change lands before Sluice's check.

use std::collections::HashMap;
use std::hash::Hasher as _;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::crd::{Control, FeatureRolloutStatus};
use crate::engine::{Event, EventType};
use crate::flag_store::{self, FlagStore, FlagWrite, Stored, Swap};
use crate::flagd::{FlagDefinition, FlagState, FlagdError};
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

pub(crate) fn document_lock(path: &Path) -> Arc<tokio::sync::Mutex<()>> {
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
    /// candidate's share, `25%` or `5% of audience`).
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

/// What a flag state serves, for the events log: `baseline`, `promoted`, or the
/// candidate's share (`25%`, `5% of audience`).
pub fn serves(state: &FlagState) -> String {
    match state {
        FlagState::Baseline => "baseline".into(),
        FlagState::Promoted => "promoted".into(),
        FlagState::Split { .. } => state.exposure(),
    }
}

/// The version of a flag file: its identity, modification time and size, and a digest
/// of its content (`None` when there is no file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileVersion(Option<FileIdentity>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    modified_ns: i128,
    size: u64,
    digest: u64,
}

/// A flagd document in a file, as a [`FlagStore`]. A symbolic link is followed and its
/// target written; anything but a regular file (a FIFO, a device, a directory) is refused
/// without being opened; a replaced file keeps its mode and (where the process may set
/// it) its owner.
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store of the document at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> FlagWriteError {
        FlagWriteError::Unavailable {
            category: "io",
            message: format!("{}: {message}", self.path.display()),
        }
    }

    /// The file to read and replace: the path itself, or the end of its symbolic links.
    fn resolve(&self) -> Result<PathBuf, FlagWriteError> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(&self.path)
                .map_err(|e| {
                    let target = std::fs::read_link(&self.path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    FlagWriteError::Target(format!(
                        "{} is a symbolic link to {target}, which cannot be followed ({e}): create the file it points to, or point the link at the flag file",
                        self.path.display()
                    ))
                }),
            Ok(_) => Ok(self.path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(self.path.clone()),
            Err(e) => Err(self.unavailable(format!("cannot inspect: {e}"))),
        }
    }

    /// Refuses a file that is not a regular file, naming what it is.
    fn check_regular(&self, real: &Path, meta: &std::fs::Metadata) -> Result<(), FlagWriteError> {
        use std::os::unix::fs::FileTypeExt as _;
        let kind = meta.file_type();
        let what = if kind.is_file() {
            return Ok(());
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        let via = if real == self.path {
            String::new()
        } else {
            format!(" (the target of {})", self.path.display())
        };
        Err(FlagWriteError::Target(format!(
            "spec.target.file: {}{via} is {what}, not a regular file: Sluice writes flagd documents only to regular files",
            real.display()
        )))
    }

    /// Reads `real` and its version, without blocking on anything but a regular file.
    fn read_real(&self, real: &Path) -> Result<(FileVersion, Option<String>), FlagWriteError> {
        let meta = match std::fs::metadata(real) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((FileVersion(None), None));
            }
            Err(e) => return Err(self.unavailable(format!("cannot inspect: {e}"))),
        };
        self.check_regular(real, &meta)?;
        // O_NONBLOCK: should a FIFO replace the file between the check and the open, the
        // open returns at once instead of waiting for a writer.
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(real)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((FileVersion(None), None));
            }
            Err(e) => return Err(self.unavailable(format!("cannot open: {e}"))),
        };
        let meta = file
            .metadata()
            .map_err(|e| self.unavailable(format!("cannot inspect: {e}")))?;
        self.check_regular(real, &meta)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| self.unavailable(format!("cannot read: {e}")))?;
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(&bytes);
        let version = FileVersion(Some(FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            size: meta.len(),
            digest: hasher.finish(),
        }));
        let text = String::from_utf8(bytes).map_err(|e| {
            FlagWriteError::Document(FlagdError::InvalidJson {
                line: 1,
                column: 1,
                reason: format!("the file is not UTF-8 text ({e})"),
            })
        })?;
        Ok((version, Some(text)))
    }

    /// The blocking part of [`FlagStore::swap`]: a temporary file with the new content
    /// (same mode and owner as the file replaced), flushed; then under the lock, the
    /// version checked again and the temporary file renamed over the file.
    fn swap_blocking(
        &self,
        expected: &FileVersion,
        document: &str,
    ) -> Result<Swap, FlagWriteError> {
        let real = self.resolve()?;
        let dir = match real.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| self.unavailable(format!("cannot create its directory: {e}")))?;
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let original = std::fs::metadata(&real).ok();
        let temp = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(|e| self.unavailable(format!("cannot create {}: {e}", temp.display())))?;
            file.write_all(document.as_bytes())
                .map_err(|e| self.unavailable(format!("cannot write {}: {e}", temp.display())))?;
            if let Some(original) = &original {
                file.set_permissions(original.permissions())
                    .map_err(|e| self.unavailable(format!("cannot keep the file's mode: {e}")))?;
                let mine = file.metadata().ok();
                if mine.is_some_and(|m| (m.uid(), m.gid()) != (original.uid(), original.gid())) {
                    // Only a privileged process may give a file away; otherwise it stays ours.
                    let _ = std::os::unix::fs::fchown(
                        &file,
                        Some(original.uid()),
                        Some(original.gid()),
                    );
                }
            }
            file.sync_all()
                .map_err(|e| self.unavailable(format!("cannot flush {}: {e}", temp.display())))?;
            let lock_path = dir.join(format!("{name}.lock"));
            let lock = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(|e| {
                    self.unavailable(format!("cannot open the lock {}: {e}", lock_path.display()))
                })?;
            lock.lock().map_err(|e| {
                self.unavailable(format!("cannot lock {}: {e}", lock_path.display()))
            })?;
            let (now, _) = self.read_real(&real)?;
            if now != *expected {
                return Ok(Swap::Conflict);
            }
            self.replace(&temp, &real, expected)
        })();
        // The temporary file, or after an exchange the file replaced.
        let _ = std::fs::remove_file(&temp);
        result
    }

    /// Puts `temp` in place of `real`, which was at `expected` a moment ago (checked under
    /// the lock). Where the file system can, the two are exchanged atomically
    /// (`renameat2(RENAME_EXCHANGE)`) and the file taken out is checked: if a writer that
    /// does not take the lock renamed its own file in between, the exchange is undone and
    /// its file stays. A file that did not exist is created only if it still does not
    /// (`RENAME_NOREPLACE`). Elsewhere, a plain rename.
    fn replace(
        &self,
        temp: &Path,
        real: &Path,
        expected: &FileVersion,
    ) -> Result<Swap, FlagWriteError> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use rustix::io::Errno;
        let flags = if expected.0.is_some() {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::NOREPLACE
        };
        match renameat_with(CWD, temp, CWD, real, flags) {
            Ok(()) if expected.0.is_none() => Ok(Swap::Done),
            Ok(()) => {
                let (replaced, _) = self.read_real(temp)?;
                if replaced == *expected {
                    return Ok(Swap::Done);
                }
                renameat_with(CWD, temp, CWD, real, RenameFlags::EXCHANGE)
                    .map_err(|e| self.unavailable(format!("cannot undo a replace: {e}")))?;
                Ok(Swap::Conflict)
            }
            Err(Errno::EXIST) => Ok(Swap::Conflict),
            // The file went away since the check: read again.
            Err(Errno::NOENT) if expected.0.is_some() => Ok(Swap::Conflict),
            Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {
                std::fs::rename(temp, real)
                    .map_err(|e| self.unavailable(format!("cannot replace: {e}")))?;
                Ok(Swap::Done)
            }
            Err(e) => Err(self.unavailable(format!("cannot replace: {e}"))),
        }
    }
}

impl FlagStore for FileStore {
    type Version = FileVersion;

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn read(&self) -> Result<Stored<FileVersion>, FlagWriteError> {
        let store = self.clone();
        let (version, document) = tokio::task::spawn_blocking(move || {
            let real = store.resolve()?;
            store.read_real(&real)
        })
        .await
        .map_err(|e| self.unavailable(format!("the read was cancelled: {e}")))??;
        Ok(Stored { version, document })
    }

    async fn swap(&self, version: &FileVersion, document: &str) -> Result<Swap, FlagWriteError> {
        let store = self.clone();
        let (version, document) = (version.clone(), document.to_owned());
        tokio::task::spawn_blocking(move || store.swap_blocking(&version, &document))
            .await
            .map_err(|e| self.unavailable(format!("the write was cancelled: {e}")))?
    }

    /// Announces the new document to the sync server's followers of this file.
    fn written(&self, document: &str) {
        flag_store::file_feed().publish(
            &flag_store::file_feed_key(&self.path),
            flag_store::Document::of(Some(document)),
        );
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
    /// The state directory.
    pub state: StateDir,
    /// The live view, told about events.
    pub view: Option<tokio::sync::mpsc::UnboundedSender<super::view::ViewMsg>>,
}

impl Shell for FileShell {
    async fn write_flag(
        &self,
        flag: &FlagDefinition,
        state: &FlagState,
    ) -> Result<FlagWrite, FlagWriteError> {
        // Two rollouts of this process sharing a document take turns (the file lock
        // orders them against other processes).
        let lock = document_lock(&self.flag_path);
        let _held = lock.lock().await;
        let write = flag_store::write_flag(&FileStore::new(&self.flag_path), flag, state).await?;
        if write.changed {
            let serves = serves(state);
            self.state.append_event(&LogLine {
                at: Timestamp::now(),
                rollout: self.name.clone(),
                type_: "Flag".into(),
                reason: "FlagWritten".into(),
                message: format!(
                    "{}: flag {} now serves {serves} (it served {})",
                    self.flag_path.display(),
                    flag.key,
                    write.before.exposure()
                ),
                serves: Some(serves),
            });
        }
        Ok(write)
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
        assert_eq!(serves(&FlagState::Baseline), "baseline");
        assert_eq!(serves(&FlagState::Promoted), "promoted");
        let split = |w, audience| FlagState::Split {
            candidate_weight: w,
            audience,
        };
        assert_eq!(serves(&split(250_000, None)), "25%");
        assert_eq!(
            serves(&split(5_000, Some(json!({"in": ["a", "b"]})))),
            "0.5% of audience"
        );
    }

    fn definition() -> FlagDefinition {
        FlagDefinition {
            key: "mine".into(),
            variants: json!({"on": true, "off": false})
                .as_object()
                .cloned()
                .unwrap(),
            baseline: "off".into(),
            candidate: "on".into(),
        }
    }

    fn file_shell(dir: &Path, flag_path: &Path) -> (FileShell, StateDir) {
        let state = StateDir::open(&dir.join("state")).unwrap();
        let shell = FileShell {
            name: "r".into(),
            flag_path: flag_path.to_path_buf(),
            state: state.clone(),
            view: None,
        };
        (shell, state)
    }

    #[tokio::test]
    async fn the_file_shell_merges_skips_and_refuses_foreign_documents() {
        let dir = tempfile::tempdir().unwrap();
        let flag_path = dir.path().join("flags.json");
        std::fs::write(
            &flag_path,
            r#"{"flags": {"other": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}"#,
        )
        .unwrap();
        let (shell, state) = file_shell(dir.path(), &flag_path);
        let write = shell
            .write_flag(&definition(), &FlagState::Baseline)
            .await
            .unwrap();
        assert!(write.changed);
        assert_eq!(write.before, crate::flagd::Served::Absent);
        let again = shell
            .write_flag(&definition(), &FlagState::Baseline)
            .await
            .unwrap();
        assert!(!again.changed, "unchanged: no write");
        assert_eq!(
            again.before,
            crate::flagd::Served::State(FlagState::Baseline)
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&flag_path).unwrap()).unwrap();
        assert_eq!(
            doc["flags"]["other"]["variants"]["a"], 1,
            "other flags kept"
        );
        assert_eq!(doc["flags"]["mine"]["defaultVariant"], "off");
        let events = state.read_events();
        assert_eq!(events.len(), 1, "one write, one line: {events:?}");
        assert_eq!(events[0].serves.as_deref(), Some("baseline"));

        std::fs::write(&flag_path, "{\"flags\": []}").unwrap();
        let error = shell
            .write_flag(&definition(), &FlagState::Baseline)
            .await
            .unwrap_err();
        assert!(matches!(error, FlagWriteError::Document(_)), "{error}");
        assert_eq!(
            std::fs::read_to_string(&flag_path).unwrap(),
            "{\"flags\": []}"
        );
    }

    /// The error of a baseline write to `flag_path`, which must fail.
    async fn refusal(dir: &Path, flag_path: &Path) -> FlagWriteError {
        let (shell, _) = file_shell(dir, flag_path);
        shell
            .write_flag(&definition(), &FlagState::Baseline)
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn special_files_are_refused_without_being_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("flags.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (shell, _) = file_shell(dir.path(), &fifo);
        // A blocking open of a FIFO with no writer would never return: the test would hang.
        let error = shell
            .write_flag(&definition(), &FlagState::Baseline)
            .await
            .unwrap_err();
        assert!(matches!(error, FlagWriteError::Target(_)), "{error}");
        assert!(
            error
                .to_string()
                .contains("a FIFO (named pipe), not a regular file"),
            "{error}"
        );
        use std::os::unix::fs::FileTypeExt as _;
        assert!(
            std::fs::metadata(&fifo).unwrap().file_type().is_fifo(),
            "left alone"
        );

        let error = refusal(dir.path(), Path::new("/dev/null")).await;
        assert!(
            error
                .to_string()
                .contains("/dev/null is a character device"),
            "{error}"
        );
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );

        let error = refusal(dir.path(), dir.path()).await;
        assert!(error.to_string().contains("is a directory"), "{error}");
    }

    #[tokio::test]
    async fn a_symlink_is_written_through_and_mode_and_owner_are_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let target = dir.path().join("real/flags.json");
        std::fs::write(&target, "{\"flags\": {}}\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).unwrap();
        let link = dir.path().join("flags.json");
        std::os::unix::fs::symlink("real/flags.json", &link).unwrap();
        let before = std::fs::metadata(&target).unwrap();

        let (shell, _) = file_shell(dir.path(), &link);
        assert!(
            shell
                .write_flag(&definition(), &FlagState::Baseline)
                .await
                .unwrap()
                .changed
        );
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_symlink(), "the link stays a link");
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(
            text.contains("\"mine\""),
            "the link's target got the flag: {text}"
        );
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(after.permissions().mode() & 0o7777, 0o444, "mode kept");
        assert_eq!(
            (after.uid(), after.gid()),
            (before.uid(), before.gid()),
            "owner kept"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("real"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink("nowhere/flags.json", &dangling).unwrap();
        let error = refusal(dir.path(), &dangling).await;
        assert!(
            error
                .to_string()
                .contains("is a symbolic link to nowhere/flags.json"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_change_since_the_read_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        std::fs::write(&path, "{\"flags\": {}}").unwrap();
        let store = FileStore::new(&path);
        let stored = store.read().await.unwrap();
        // Another writer, in place, keeping the size: only the content digest differs.
        std::fs::write(&path, "{\"flags\": []}").unwrap();
        let swap = store.swap(&stored.version, "{}").await.unwrap();
        assert_eq!(swap, Swap::Conflict);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"flags\": []}");
        // Another writer by rename: a new inode.
        let stored = store.read().await.unwrap();
        atomic_write(&path, b"{\"flags\": []}").unwrap();
        assert_eq!(
            store.swap(&stored.version, "{}").await.unwrap(),
            Swap::Conflict
        );
        // Unchanged since the read: replaced.
        let stored = store.read().await.unwrap();
        assert_eq!(store.swap(&stored.version, "{}").await.unwrap(), Swap::Done);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
        // A file that appeared since a read that found none.
        let fresh = dir.path().join("new.json");
        let store = FileStore::new(&fresh);
        let stored = store.read().await.unwrap();
        assert_eq!(stored.document, None);
        std::fs::write(&fresh, "{}").unwrap();
        assert_eq!(
            store.swap(&stored.version, "{\"a\": 1}").await.unwrap(),
            Swap::Conflict
        );
    }

    /// Another process's read-modify-write of the same file: add one to `metadata.count`,
    /// under `flock(<file>.lock)` when `lock`, replacing the file by an atomic rename when
    /// `rename` (else rewriting it in place). It writes at least `count` times and goes on
    /// until Sluice has landed `interleaved` writes of its own (or `limit` writes in all, so a
    /// Sluice that never lands fails the test rather than hanging it); returns how many
    /// increments it made. Waiting on that condition, not on a pace, keeps the race a race on
    /// a loaded machine.
    fn other_writer(
        path: PathBuf,
        count: u64,
        lock: bool,
        rename: bool,
        landed: &std::sync::atomic::AtomicU32,
        interleaved: u32,
    ) -> u64 {
        use std::sync::atomic::Ordering;
        let limit = count * 100;
        let lock_path = path.with_file_name("flags.json.lock");
        let mut made = 0;
        while made < count || (landed.load(Ordering::Relaxed) < interleaved && made < limit) {
            made += 1;
            let guard = lock.then(|| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&lock_path)
                    .unwrap();
                file.lock().unwrap();
                file
            });
            let mut doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let n = doc["metadata"]["count"].as_u64().unwrap();
            doc["metadata"]["count"] = json!(n + 1);
            let text = doc.to_string();
            if rename {
                atomic_write(&path, text.as_bytes()).unwrap();
            } else {
                std::fs::write(&path, text).unwrap();
            }
            drop(guard);
            // Paces the writer (about the 5–30 ms of the report, faster), so that Sluice's
            // writes interleave with it rather than only conflicting.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        made
    }

    /// Sluice rewrites its flag (alternating between two weights) as fast as it can while
    /// the other writer runs, which goes on until `INTERLEAVED` of Sluice's writes have
    /// landed; returns how many increments the other writer made, its count in the file at
    /// the end and how many of Sluice's writes landed during the race.
    async fn race(lock: bool, rename: bool) -> (u64, u64, u32) {
        use std::sync::atomic::{AtomicU32, Ordering};
        const COUNT: u64 = 400;
        const INTERLEAVED: u32 = 10;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        std::fs::write(&path, r#"{"metadata": {"count": 0}, "flags": {}}"#).unwrap();
        let (shell, _) = file_shell(dir.path(), &path);
        let landed = std::sync::Arc::new(AtomicU32::new(0));
        let writer = {
            let (path, landed) = (path.clone(), landed.clone());
            std::thread::spawn(move || {
                other_writer(path, COUNT, lock, rename, &landed, INTERLEAVED)
            })
        };
        let mut weight = 1;
        let split = |w| FlagState::Split {
            candidate_weight: w,
            audience: None,
        };
        while !writer.is_finished() {
            weight = 3 - weight;
            match shell.write_flag(&definition(), &split(weight)).await {
                Ok(write) => {
                    landed.fetch_add(u32::from(write.changed), Ordering::Relaxed);
                }
                Err(e) if e.category() == "conflict" => {}
                Err(e) => panic!("{e}"),
            }
        }
        let made = writer.join().unwrap();
        // Alone again, Sluice's write lands.
        shell.write_flag(&definition(), &split(7)).await.unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            doc["flags"]["mine"]["targeting"]["fractional"][0][1], 7,
            "Sluice's flag is there"
        );
        (
            made,
            doc["metadata"]["count"].as_u64().unwrap(),
            landed.load(Ordering::Relaxed),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cooperating_writers_changes_are_never_lost() {
        for (lock, rename, how) in [
            (true, true, "with the lock, by rename"),
            (true, false, "with the lock, in place"),
            (false, true, "without the lock, by rename"),
        ] {
            let (made, count, landed) = race(lock, rename).await;
            eprintln!("{how}: count {count} of {made}, {landed} writes of Sluice's landed");
            assert_eq!(count, made, "{how}: the other writer lost changes");
            assert!(
                landed >= 10,
                "{how}: the writes did not interleave ({landed})"
            );
        }
    }
}
