//! The sync server's targets in standalone mode: the flag files of the rollouts found in
//! the rollouts directory.
//!
//! A selector names a flag file by its path: exactly as Sluice logs it (`rollout found ...
//! flag_file=...`: `spec.target.file.path` joined to the directory of the rollout's YAML
//! file), or by any other path of the same file (absolute, or relative to the working
//! directory of `sluice standalone`; symbolic links resolved). A `file:` prefix, flagd's
//! URI form of a file source, is allowed.
//!
//! A followed file is read at once and again at every poll of the rollouts directory
//! (`--poll`), under the same lock as Sluice's writes of it, so an edit by somebody else is
//! served within a poll and Sluice's own writes (announced at once by
//! [`crate::standalone::store::FileStore`]) are never overtaken by an older read.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::{Catalog, Selector, Unknown};
use crate::flag_store::{ChangeFeed, Document, FlagStore as _, Follower, file_feed, file_feed_key};
use crate::reconcile::FlagWriteError;
use crate::standalone::store::{FileStore, document_lock};

/// How many known selectors a `NOT_FOUND` lists.
const LISTED: usize = 5;

/// The flag files standalone mode serves.
#[derive(Debug)]
pub struct FileCatalog {
    /// Feed key → the path as the rollout names it (what its writes lock).
    targets: RwLock<BTreeMap<String, PathBuf>>,
    ready: watch::Sender<bool>,
    poll: Duration,
}

impl FileCatalog {
    /// An empty catalog (not ready until the first [`FileCatalog::set_targets`]); followed
    /// files are read again every `poll`.
    pub fn new(poll: Duration) -> Arc<Self> {
        Arc::new(FileCatalog {
            targets: RwLock::default(),
            ready: watch::Sender::new(false),
            poll,
        })
    }

    /// The flag files of the rollouts found now (after each scan of the directory).
    pub fn set_targets(&self, paths: impl IntoIterator<Item = PathBuf>) {
        let targets: BTreeMap<String, PathBuf> = paths
            .into_iter()
            .map(|path| (file_feed_key(&path), path))
            .collect();
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = targets;
        self.ready
            .send_if_modified(|ready| !std::mem::replace(ready, true));
    }

    fn path_of(&self, key: &str) -> Option<PathBuf> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

impl Catalog for FileCatalog {
    fn resolve(&self, selector: &Selector) -> Result<String, Unknown> {
        let name = selector.0.strip_prefix("file:").unwrap_or(&selector.0);
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        if let Some((key, _)) = targets.iter().find(|(_, path)| path.as_os_str() == name) {
            return Ok(key.clone());
        }
        let key = file_feed_key(Path::new(name));
        if targets.contains_key(&key) {
            return Ok(key);
        }
        Err(Unknown::NotFound {
            known: targets
                .values()
                .take(LISTED)
                .map(|p| p.display().to_string())
                .collect(),
            how: "standalone mode serves the flag file of each rollout, named by its path (spec.target.file.path joined to the rollout file's directory) or any path of the same file",
        })
    }

    fn follow(&self, follower: Follower) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let path = self
            .path_of(follower.target())
            .unwrap_or_else(|| PathBuf::from(follower.target()));
        Box::pin(follow_file(follower, path, self.poll))
    }

    fn feed(&self) -> &ChangeFeed {
        file_feed()
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

/// Reads `path` under its write lock and publishes it, now and every `poll`, until nobody
/// follows it.
async fn follow_file(follower: Follower, path: PathBuf, poll: Duration) {
    let unfollowed = follower.unfollowed();
    tokio::pin!(unfollowed);
    let store = FileStore::new(&path);
    let mut last_problem: Option<String> = None;
    loop {
        {
            let lock = document_lock(&path);
            let _held = lock.lock().await;
            match store.read().await {
                Ok(stored) => {
                    last_problem = None;
                    follower.publish(Document::of(stored.document.as_deref()));
                }
                Err(FlagWriteError::Unavailable { message, .. }) => {
                    // Kept as it was: a passing failure does not take the flags away.
                    if last_problem.as_ref() != Some(&message) {
                        tracing::warn!(file = %path.display(), "the sync server cannot read the flag file: {message}");
                        last_problem = Some(message);
                    }
                }
                Err(other) => follower.publish(Document::Unusable(other.to_string())),
            }
        }
        tokio::select! {
            () = &mut unfollowed => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_named_by_its_path_or_any_path_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let flags = dir.path().join("flags.json");
        std::fs::write(&flags, "{}").unwrap();
        let catalog = FileCatalog::new(Duration::from_secs(1));
        let spelled = dir.path().join("sub").join("..").join("flags.json");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        catalog.set_targets([spelled.clone()]);
        let key = file_feed_key(&flags);
        let by = |s: &str| catalog.resolve(&Selector(s.into()));
        assert_eq!(by(&spelled.display().to_string()), Ok(key.clone()));
        assert_eq!(by(&flags.display().to_string()), Ok(key.clone()));
        assert_eq!(by(&format!("file:{}", flags.display())), Ok(key));
        let Err(Unknown::NotFound { known, .. }) = by("/nowhere/flags.json") else {
            panic!("an unknown file is not found");
        };
        assert_eq!(known, vec![spelled.display().to_string()]);
    }
}
