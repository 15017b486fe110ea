//! Where flag documents live, behind one abstraction: a [`FlagStore`] reads a flagd
//! document with a version and replaces it only if it is still at that version
//! (compare-and-swap). [`write_flag`] is the one place that renders Sluice's flag, merges
//! it into the document ([`crate::flagd::merge_flag`]) and retries on a conflict, a
//! bounded number of times, for every target: the flag file
//! ([`crate::standalone::store::FileStore`]), the ConfigMap and the `FeatureFlag`
//! ([`crate::controller::targets`]).
//!
//! A new target is one implementation of [`FlagStore`] plus its registration in the shell
//! that picks it.
//!
//! The change feed ([`ChangeFeed`]): one `tokio::sync::watch` per target somebody follows
//! (the sync server, [`crate::sync`], for its connected apps), holding the target's
//! [`Document`]. A follower keeps it up to date from the target itself (so edits by
//! others are served too), and every document [`write_flag`] writes is announced through
//! [`FlagStore::written`] the moment the write is done: the flag files of standalone mode
//! announce to [`file_feed`].

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::flagd::{FlagDefinition, FlagState, Served, merge_flag, render_flag, served};
use crate::reconcile::FlagWriteError;

/// How many times a write is attempted when other writers keep changing the document.
pub const WRITE_ATTEMPTS: u32 = 5;

/// A document as read, with the version a later [`FlagStore::swap`] is conditional on.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<V> {
    /// The version read (a `resourceVersion`, a file's identity and content digest).
    pub version: V,
    /// The document's text; `None` when there is no document yet.
    pub document: Option<String>,
}

/// The result of a compare-and-swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The document was replaced.
    Done,
    /// The document is no longer at the version read: read it again.
    Conflict,
}

/// A place holding one flagd document.
pub trait FlagStore: Sync {
    /// What identifies one state of the document.
    type Version: Send + Sync;

    /// The document for messages (`ConfigMap shop/flags`, a path).
    fn describe(&self) -> String;

    /// Reads the document and its version.
    fn read(&self) -> impl Future<Output = Result<Stored<Self::Version>, FlagWriteError>> + Send;

    /// Replaces the document with `document` if it is still at `version` (creating it
    /// when it did not exist at the read); [`Swap::Conflict`] when somebody else changed
    /// it since.
    fn swap(
        &self,
        version: &Self::Version,
        document: &str,
    ) -> impl Future<Output = Result<Swap, FlagWriteError>> + Send;

    /// Told of every document this store has just written (after [`Swap::Done`]), so the
    /// change feed announces it at once; nothing by default.
    fn written(&self, _document: &str) {}
}

/// What [`write_flag`] found and did.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagWrite {
    /// Whether the document changed (false: it already served this state, nothing was
    /// written).
    pub changed: bool,
    /// What the document served for Sluice's flag before, as read.
    pub before: Served,
}

/// Writes `flag` in `state` into the document of `store`: read, merge, compare-and-swap;
/// on a conflict, read and merge again (at most [`WRITE_ATTEMPTS`] times, with a short
/// pause that doubles). Every other flag and member of the document is kept. A document
/// that is not flagd's is refused before any write.
pub async fn write_flag<S: FlagStore>(
    store: &S,
    flag: &FlagDefinition,
    state: &FlagState,
) -> Result<FlagWrite, FlagWriteError> {
    let rendered = render_flag(flag, state);
    let mut pause = Duration::from_millis(5);
    for _ in 0..WRITE_ATTEMPTS {
        let stored = store.read().await?;
        let document = stored.document.as_deref();
        let merged = merge_flag(document, &flag.key, rendered.clone())?;
        let before = served(document, flag)?;
        if document == Some(merged.as_str()) {
            return Ok(FlagWrite {
                changed: false,
                before,
            });
        }
        match store.swap(&stored.version, &merged).await? {
            Swap::Done => {
                store.written(&merged);
                return Ok(FlagWrite {
                    changed: true,
                    before,
                });
            }
            Swap::Conflict => {
                tracing::debug!(document = %store.describe(), "conflict writing the flag: reading again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    Err(FlagWriteError::Unavailable {
        category: "conflict",
        message: format!(
            "{}: other writers changed it {WRITE_ATTEMPTS} times in a row",
            store.describe()
        ),
    })
}

/// A target's flag document as the change feed holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    /// Not read yet.
    Pending,
    /// The target holds no document (no file, no ConfigMap or key, no `flagSpec`).
    Missing,
    /// The target holds something that is not a flagd document (the reason); nothing is
    /// served from it. A target that held a good document before keeps that one.
    Unusable(String),
    /// The document's JSON text, exactly as the target holds it.
    Present(Arc<str>),
}

impl Document {
    /// The document for a target's text: [`Document::Present`] when it is a JSON object,
    /// [`Document::Unusable`] otherwise, [`Document::Missing`] for none.
    pub fn of(text: Option<&str>) -> Document {
        let Some(text) = text else {
            return Document::Missing;
        };
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => Document::Present(Arc::from(text)),
            Ok(other) => Document::Unusable(format!(
                "the document is {}, not a JSON object",
                crate::flagd::json_kind(&other)
            )),
            Err(e) => Document::Unusable(format!("the document is not JSON: {e}")),
        }
    }
}

/// One `watch` channel per followed target, keyed by the target's name (see
/// [`file_feed_key`] for files). Cheap to clone: clones share the channels.
#[derive(Clone, Debug, Default)]
pub struct ChangeFeed {
    targets: Arc<Mutex<HashMap<String, watch::Sender<Document>>>>,
}

/// A new follower of a target: the one task that keeps the target's document up to date
/// in the feed, until nobody follows it ([`Follower::unfollowed`]).
#[derive(Debug)]
pub struct Follower {
    feed: ChangeFeed,
    target: String,
    sender: watch::Sender<Document>,
}

impl ChangeFeed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Document>>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces `document` for `target` if anybody follows it (otherwise nothing: there
    /// is nobody to tell). Followers see only changes.
    pub fn publish(&self, target: &str, document: Document) {
        if let Some(sender) = self.lock().get(target) {
            publish_to(sender, document);
        }
    }

    /// Follows `target`: a receiver of its document, and, when nobody followed it yet,
    /// the [`Follower`] whose task must keep it up to date.
    pub fn subscribe(&self, target: &str) -> (watch::Receiver<Document>, Option<Follower>) {
        let mut targets = self.lock();
        if let Some(sender) = targets.get(target) {
            return (sender.subscribe(), None);
        }
        let (sender, receiver) = watch::channel(Document::Pending);
        targets.insert(target.to_owned(), sender.clone());
        let follower = Follower {
            feed: self.clone(),
            target: target.to_owned(),
            sender,
        };
        (receiver, Some(follower))
    }

    /// The targets followed now.
    pub fn followed(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }
}

fn publish_to(sender: &watch::Sender<Document>, document: Document) {
    sender.send_if_modified(|current| {
        // A target that turns unusable keeps serving its last good document.
        let keep =
            matches!(document, Document::Unusable(_)) && matches!(current, Document::Present(_));
        if keep || *current == document {
            return false;
        }
        *current = document;
        true
    });
}

impl Follower {
    /// The target followed.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Sets the target's document (followers see only changes).
    pub fn publish(&self, document: Document) {
        publish_to(&self.sender, document);
    }

    /// Returns once nobody follows the target any more; the target is then dropped from
    /// the feed (a later subscriber starts a new follower).
    pub async fn unfollowed(&self) {
        loop {
            self.sender.closed().await;
            let mut targets = self.feed.lock();
            // A subscriber may have come in between: it holds a receiver by now.
            if self.sender.receiver_count() == 0 {
                targets.remove(&self.target);
                return;
            }
        }
    }
}

/// The change feed of the flag files this process writes (standalone mode), keyed by
/// [`file_feed_key`]: one per process, like the files' write locks.
pub fn file_feed() -> &'static ChangeFeed {
    static FEED: LazyLock<ChangeFeed> = LazyLock::new(ChangeFeed::default);
    &FEED
}

/// The name of a flag file in [`file_feed`]: its absolute path with symbolic links
/// resolved (of the file when it exists, else of its directory), so two spellings of one
/// file are one target.
pub fn file_feed_key(path: &Path) -> String {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| {
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::canonicalize(&dir)
            .map(|dir| dir.join(&name))
            .unwrap_or_else(|_| path.to_path_buf())
    });
    absolute.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_see_changes_and_a_broken_document_never_replaces_a_good_one() {
        let feed = ChangeFeed::default();
        feed.publish("t", Document::Missing); // nobody follows yet: nothing kept
        assert!(feed.followed().is_empty());
        let (mut first, follower) = feed.subscribe("t");
        let follower = follower.expect("the first subscriber starts the follower");
        let (second, again) = feed.subscribe("t");
        assert!(again.is_none(), "one follower per target");
        follower.publish(Document::of(Some(r#"{"flags":{}}"#)));
        assert!(first.has_changed().unwrap());
        assert_eq!(
            *first.borrow_and_update(),
            Document::of(Some(r#"{"flags":{}}"#))
        );
        follower.publish(Document::of(Some("{ broken")));
        follower.publish(Document::of(Some("[]")));
        assert!(
            !first.has_changed().unwrap(),
            "the last good document stays"
        );
        feed.publish("t", Document::of(Some(r#"{"flags":{"a":{}}}"#)));
        assert!(first.has_changed().unwrap(), "a write is announced");
        assert!(matches!(Document::of(Some("[]")), Document::Unusable(_)));
        assert_eq!(Document::of(None), Document::Missing);

        drop(first);
        let unfollowed = tokio::spawn(async move {
            follower.unfollowed().await;
        });
        // One receiver is left: the follower keeps following.
        tokio::task::yield_now().await;
        assert!(!unfollowed.is_finished());
        drop(second);
        unfollowed.await.unwrap();
        assert!(
            feed.followed().is_empty(),
            "an unfollowed target leaves the feed"
        );
        let (_, follower) = feed.subscribe("t");
        assert!(follower.is_some(), "a new subscriber starts a new follower");
    }
}
