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

use std::future::Future;
use std::time::Duration;

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
