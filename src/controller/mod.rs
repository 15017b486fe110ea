//! `sluice controller`: the Kubernetes shell around [`reconcile::reconcile`].
//!
//! A kube-runtime [`Controller`] per watched namespace (or one for all) over
//! `DeserializeGuard<FeatureRollout>`, so one malformed object is reported and skipped
//! instead of stopping the watch. Each reconcile:
//!
//! 1. checks this replica leads (only the leader writes, see [`leader`]);
//! 2. keeps the finalizer (added first; on deletion the flag is left safe by
//!    [`reconcile::release`], then the finalizer is removed);
//! 3. observes, decides and acts through [`reconcile::reconcile`] with a [`KubeShell`]:
//!    the flag in a ConfigMap or a `FeatureFlag` ([`targets`]), the status through the
//!    status subresource (server-side apply, field manager `sluice`), events through
//!    kube-runtime's [`Recorder`];
//! 4. requeues at the plan's next look; an invalid spec or a document that needs a fix
//!    waits for a change; a transient failure backs off per object, exponentially.
//!
//! Every API call has a timeout, and reconciles of different rollouts run concurrently,
//! so one slow rollout never delays the others. The clock is injected ([`Clock`]) so
//! tests drive time.

pub mod leader;
pub mod targets;

mod args;
mod error;
mod process;
mod runner;
mod shell;
mod state;

use std::time::Duration;

pub use crate::runtime::{Clock, system_clock};
pub use args::Args;
pub use error::Error;
pub use process::{run, run_with};
pub use runner::{RECONCILE_BUDGET, error_policy, reconcile_rollout, requeue_at, run_controllers};
pub use shell::KubeShell;
pub use state::State;

/// The controller's per-object backoff: 5 s, 10 s, 20 s ... up to 5 minutes, ± 10 %,
/// reset by a success (the runtime's one policy, counted per rollout).
pub type Backoff = crate::runtime::KeyedBackoff;

/// The finalizer Sluice puts on every FeatureRollout, so a deletion leaves the flag safe.
pub const FINALIZER: &str = "sluice.dev/flag-cleanup";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "sluice";
/// The timeout of one Kubernetes API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
