//! Why the controller or one reconcile failed, and what that means for the requeue.

use std::time::Duration;

use crate::reconcile::{self, FlagWriteError};
use crate::telemetry;

/// Why the controller or one reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reconcile step failed.
    #[error(transparent)]
    Reconcile(#[from] reconcile::Error),
    /// The flag could not be left safe on deletion; the finalizer stays.
    #[error("leaving the flag safe before deletion failed: {0}")]
    Release(#[source] FlagWriteError),
    /// Adding or removing the finalizer failed.
    #[error("the finalizer could not be updated: {0}")]
    Finalizer(String),
    /// This replica does not lead: it writes nothing.
    #[error("not the leader: nothing written")]
    NotLeader,
    /// One reconcile took longer than its whole budget.
    #[error("the reconcile did not finish within {0:?}")]
    Timeout(Duration),
    /// The command line is incomplete.
    #[error("{0}")]
    Config(String),
    /// Talking to the API server failed at start-up.
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// Logging or the admin server failed.
    #[error(transparent)]
    Telemetry(#[from] telemetry::Error),
}

impl Error {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Reconcile(e) => e.category(),
            Error::Release(e) => e.category(),
            Error::Finalizer(_) => "finalizer",
            Error::NotLeader => "not_leader",
            Error::Timeout(_) => "timeout",
            Error::Config(_) => "config",
            Error::Client(_) => "client",
            Error::Telemetry(e) => e.category(),
        }
    }

    /// Whether only a change of the rollout (or of leadership) can help: no requeue.
    pub fn waits_for_change(&self) -> bool {
        match self {
            Error::Reconcile(e) => e.needs_fix(),
            Error::NotLeader => true,
            _ => false,
        }
    }
}
