//! A [`Shell`] in memory for the reconcile tests: a flag document (a [`FlagStore`]
//! versioned by a counter, written through the same [`flag_store::write_flag`] as the real
//! targets), a status and an ordered log of what the shell did; the flag write can be
//! made to fail as an unreachable API would.

use std::sync::Mutex;

use serde_json::Value;
use sluice::crd::{FeatureRolloutStatus, Phase};
use sluice::engine::Event;
use sluice::flag_store::{self, FlagStore, FlagWrite, Stored, Swap};
use sluice::flagd::{FlagDefinition, FlagState, flag_in_document};
use sluice::reconcile::{Error, FlagWriteError, Shell};

/// What the shell did, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The flag document changed to this text (a write that changes nothing is not one).
    Flag(String),
    /// A status with this phase was written.
    Status(Phase),
    /// An event with this reason was published.
    Event(&'static str),
}

impl Op {
    /// `flag`, `status <Phase>` or `event <Reason>`.
    pub fn short(&self) -> String {
        match self {
            Op::Flag(_) => "flag".into(),
            Op::Status(phase) => format!("status {phase:?}"),
            Op::Event(reason) => format!("event {reason}"),
        }
    }
}

/// The shell: a flag document, a status and the log of ops, each behind a lock.
#[derive(Default)]
pub struct MemoryShell {
    /// The document and its version (bumped at every change).
    pub document: Mutex<Option<String>>,
    pub version: Mutex<u64>,
    pub status: Mutex<Option<FeatureRolloutStatus>>,
    pub ops: Mutex<Vec<Op>>,
    /// When set, writing the flag fails as an unreachable API would.
    pub unavailable: Mutex<bool>,
}

impl MemoryShell {
    pub fn with_document(text: &str) -> Self {
        let shell = MemoryShell::default();
        shell.edit(text);
        shell
    }

    pub fn document(&self) -> Option<String> {
        self.document.lock().unwrap().clone()
    }

    /// Changes the document as another writer would (not one of the shell's ops).
    pub fn edit(&self, text: &str) {
        *self.document.lock().unwrap() = Some(text.to_owned());
        *self.version.lock().unwrap() += 1;
    }

    pub fn status(&self) -> Option<FeatureRolloutStatus> {
        self.status.lock().unwrap().clone()
    }

    pub fn take_ops(&self) -> Vec<Op> {
        std::mem::take(&mut self.ops.lock().unwrap())
    }

    /// The ops so far as [`Op::short`] strings.
    pub fn ops(&self) -> Vec<String> {
        self.ops.lock().unwrap().iter().map(Op::short).collect()
    }

    /// The `checkout` flag as the document serves it.
    pub fn served(&self) -> Value {
        flag_in_document(&self.document().expect("a document"), "checkout")
            .unwrap()
            .expect("the flag")
    }
}

impl FlagStore for MemoryShell {
    type Version = u64;

    fn describe(&self) -> String {
        "the memory document".into()
    }

    async fn read(&self) -> Result<Stored<u64>, FlagWriteError> {
        let document = self.document.lock().unwrap().clone();
        Ok(Stored {
            version: *self.version.lock().unwrap(),
            document,
        })
    }

    async fn swap(&self, version: &u64, document: &str) -> Result<Swap, FlagWriteError> {
        let mut current = self.version.lock().unwrap();
        if *current != *version {
            return Ok(Swap::Conflict);
        }
        *current += 1;
        self.ops.lock().unwrap().push(Op::Flag(document.to_owned()));
        *self.document.lock().unwrap() = Some(document.to_owned());
        Ok(Swap::Done)
    }
}

impl Shell for MemoryShell {
    async fn write_flag(
        &self,
        flag: &FlagDefinition,
        state: &FlagState,
    ) -> Result<FlagWrite, FlagWriteError> {
        if *self.unavailable.lock().unwrap() {
            return Err(FlagWriteError::Unavailable {
                category: "api",
                message: "the API server is away".into(),
            });
        }
        flag_store::write_flag(self, flag, state).await
    }

    async fn write_status(&self, status: &FeatureRolloutStatus) -> Result<(), Error> {
        self.ops.lock().unwrap().push(Op::Status(status.phase));
        *self.status.lock().unwrap() = Some(status.clone());
        Ok(())
    }

    async fn publish(&self, event: &Event) {
        self.ops.lock().unwrap().push(Op::Event(event.reason));
    }
}
