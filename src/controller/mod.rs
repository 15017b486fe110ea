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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::analysis::look::RolloutRef;
use crate::crd::{FeatureRollout, FeatureRolloutStatus, PrometheusSpec, Target};
use crate::engine::{Event, EventType};
use crate::flag_store::{self, FlagWrite};
use crate::flagd::{FlagDefinition, FlagState};
use crate::reconcile::{self, FlagWriteError, Rollout, Shell};
use crate::telemetry::{self, Admin, Health, LogFormat, Metrics};
use leader::{Elector, Leadership, LeaseConfig};

/// The finalizer Sluice puts on every FeatureRollout, so a deletion leaves the flag safe.
pub const FINALIZER: &str = "sluice.dev/flag-cleanup";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "sluice";
/// The timeout of one Kubernetes API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The time, injected so tests drive it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// The arguments of `sluice controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Watch only this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// Only rollouts matching this label selector (e.g. `team=shop,tier!=test`).
    #[arg(long)]
    pub selector: Option<String>,
    /// Where /livez, /readyz and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub admin_address: String,
    /// Log format; filter from RUST_LOG.
    #[arg(long, value_enum, env = "SLUICE_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
    /// Elect a leader through a Lease (turn off for a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The Lease's name.
    #[arg(long, default_value = "sluice-controller")]
    pub lease_name: String,
    /// The Lease's namespace (required when leader election is on).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// The Prometheus used when a rollout has no spec.analysis.prometheus.
    #[arg(long)]
    pub default_prometheus: Option<String>,
    /// The only directory whose files rollouts may name as Prometheus credentials
    /// (`bearerTokenFile`, `basicAuth.passwordFile`); the chart mounts its auth Secret here.
    #[arg(long, default_value = "/etc/sluice/prometheus")]
    pub prometheus_credentials_dir: std::path::PathBuf,
    /// Notification webhooks for every rollout.
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,
}

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

/// Per-object exponential backoff for transient failures: 5 s, 10 s, 20 s ... up to
/// 5 minutes, with ±10 % jitter so failing rollouts don't retry in lockstep; reset by a
/// success.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The first delay.
    pub const BASE: Duration = Duration::from_secs(5);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(300);

    /// Counts a failure of `key` and returns how long to wait before the next attempt
    /// (without jitter: [`Backoff::jittered`] adds it).
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        let delay = Self::BASE
            .saturating_mul(2u32.saturating_pow((*count).min(16)))
            .min(Self::MAX);
        *count = count.saturating_add(1);
        delay
    }

    /// `delay` ± 10 %.
    pub fn jittered(delay: Duration) -> Duration {
        let factor = 0.9 + 0.2 * rand::random::<f64>();
        delay.mul_f64(factor)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// What every reconcile shares.
pub struct State {
    /// The Kubernetes client.
    pub client: Client,
    /// Prometheus clients and the default Prometheus.
    pub context: reconcile::Context,
    /// The time.
    pub clock: Clock,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// Sluice's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events (events.k8s.io).
    pub recorder: Recorder,
    /// Per-object backoff.
    pub backoff: Backoff,
    /// The timeout of one API call.
    pub call_timeout: Duration,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("leadership", &self.leadership)
            .finish_non_exhaustive()
    }
}

impl State {
    /// A state that always leads, with fresh metrics and no default Prometheus; change
    /// the public fields for more.
    pub fn new(client: Client, clock: Clock, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "sluice".into(),
            instance,
        };
        State {
            recorder: Recorder::new(client.clone(), reporter),
            leadership: Leadership::always(clock.clone()),
            client,
            context: reconcile::Context::default(),
            clock,
            metrics: Arc::new(Metrics::new()),
            backoff: Backoff::default(),
            call_timeout: CALL_TIMEOUT,
        }
    }
}

/// Where a rollout's flag goes in the cluster.
#[derive(Clone, Debug)]
enum FlagTarget {
    ConfigMap { name: String, key: String },
    FeatureFlag { name: String },
    Unsupported(String),
}

impl FlagTarget {
    fn of(target: &Target) -> Self {
        if let Some(c) = &target.config_map {
            FlagTarget::ConfigMap {
                name: c.name.clone(),
                key: c.key.clone(),
            }
        } else if let Some(f) = &target.feature_flag {
            FlagTarget::FeatureFlag {
                name: f.name.clone(),
            }
        } else if target.file.is_some() {
            FlagTarget::Unsupported(
                "spec.target.file is for standalone mode; in a cluster use spec.target.configMap or spec.target.featureFlag".into(),
            )
        } else {
            FlagTarget::Unsupported("spec.target sets none of configMap or featureFlag".into())
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            FlagTarget::ConfigMap { .. } => "configMap",
            FlagTarget::FeatureFlag { .. } => "featureFlag",
            FlagTarget::Unsupported(_) => "unsupported",
        }
    }
}

/// One rollout's [`Shell`] in the cluster. Every write first checks [`Leadership`].
pub struct KubeShell<'a> {
    state: &'a State,
    namespace: String,
    name: String,
    target: FlagTarget,
    reference: ObjectReference,
}

impl<'a> KubeShell<'a> {
    /// The shell for `rollout` (which must have a namespace and a name).
    pub fn new(state: &'a State, rollout: &FeatureRollout) -> Self {
        KubeShell {
            state,
            namespace: rollout.namespace().unwrap_or_default(),
            name: rollout.name_any(),
            target: FlagTarget::of(&rollout.spec.target),
            reference: rollout.object_ref(&()),
        }
    }
}

impl Shell for KubeShell<'_> {
    async fn write_flag(
        &self,
        flag: &FlagDefinition,
        state: &FlagState,
    ) -> Result<FlagWrite, FlagWriteError> {
        if !self.state.leadership.is_leader() {
            return Err(FlagWriteError::Unavailable {
                category: "not_leader",
                message: "this replica no longer leads: the flag is not written".into(),
            });
        }
        let client = self.state.client.clone();
        let timeout = self.state.call_timeout;
        let write = match &self.target {
            FlagTarget::ConfigMap {
                name,
                key: data_key,
            } => {
                let store =
                    targets::ConfigMapStore::new(client, &self.namespace, name, data_key, timeout);
                flag_store::write_flag(&store, flag, state).await?
            }
            FlagTarget::FeatureFlag { name } => {
                let store = targets::FeatureFlagStore::new(client, &self.namespace, name, timeout);
                flag_store::write_flag(&store, flag, state).await?
            }
            FlagTarget::Unsupported(why) => return Err(FlagWriteError::Target(why.clone())),
        };
        if write.changed {
            self.state.metrics.flag_written(self.target.metric_label());
        }
        Ok(write)
    }

    async fn write_status(&self, status: &FeatureRolloutStatus) -> Result<(), reconcile::Error> {
        if !self.state.leadership.is_leader() {
            return Err(reconcile::Error::WriteStatus {
                category: "not_leader",
                message: "this replica no longer leads: the status is not written".into(),
            });
        }
        let api: Api<FeatureRollout> = Api::namespaced(self.state.client.clone(), &self.namespace);
        // Server-side apply of the whole status with one field manager: fields the new
        // status no longer has are removed (a merge patch would keep them).
        let patch = serde_json::json!({
            "apiVersion": FeatureRollout::api_version(&()),
            "kind": FeatureRollout::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        // featurerollouts/status: patch
        match tokio::time::timeout(
            self.state.call_timeout,
            api.patch_status(&self.name, &params, &Patch::Apply(&patch)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(reconcile::Error::WriteStatus {
                category: "api",
                message: format!("FeatureRollout {}/{}: {error}", self.namespace, self.name),
            }),
            Err(_) => Err(reconcile::Error::WriteStatus {
                category: "timeout",
                message: format!(
                    "FeatureRollout {}/{}: no answer within {:?}",
                    self.namespace, self.name, self.state.call_timeout
                ),
            }),
        }
    }

    async fn publish(&self, event: &Event) {
        if !self.state.leadership.is_leader() {
            return;
        }
        let type_ = match event.type_ {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        };
        publish(
            self.state,
            &self.reference,
            type_,
            event.reason,
            &event.message,
        )
        .await;
    }
}

/// Publishes one Event about `reference`, best effort (a lost event is logged).
async fn publish(
    state: &State,
    reference: &ObjectReference,
    type_: KubeEventType,
    reason: &str,
    message: &str,
) {
    // Events are at most 1 kB of note.
    let note: String = message.chars().take(1000).collect();
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // events.k8s.io events: create (a repeat within minutes: patch of its series)
    match tokio::time::timeout(
        state.call_timeout,
        state.recorder.publish(&event, reference),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, reason, "an Event could not be published"),
        Err(_) => tracing::warn!(reason, "publishing an Event timed out"),
    }
}

fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The longest one reconcile may take (a look, the writes); past it the reconcile is
/// dropped, which is as safe as a crash, and retried with backoff.
pub const RECONCILE_BUDGET: Duration = Duration::from_secs(120);

/// The controller's reconcile of one object: what the kube-runtime [`Controller`] calls,
/// and what the tests call with a mock API server.
pub async fn reconcile_rollout(
    object: Arc<DeserializeGuard<FeatureRollout>>,
    state: Arc<State>,
) -> Result<Action, Error> {
    let rollout = match &object.0 {
        Ok(rollout) => rollout,
        Err(invalid) => {
            let key = object_key(&invalid.metadata);
            tracing::warn!(rollout = %key, error = %invalid.error, "skipping a FeatureRollout that does not parse");
            if state.leadership.is_leader() {
                let reference = ObjectReference {
                    api_version: Some(FeatureRollout::api_version(&()).into_owned()),
                    kind: Some(FeatureRollout::kind(&()).into_owned()),
                    name: invalid.metadata.name.clone(),
                    namespace: invalid.metadata.namespace.clone(),
                    uid: invalid.metadata.uid.clone(),
                    resource_version: invalid.metadata.resource_version.clone(),
                    ..ObjectReference::default()
                };
                publish(
                    &state,
                    &reference,
                    KubeEventType::Warning,
                    "InvalidObject",
                    &format!(
                        "The FeatureRollout cannot be read, so Sluice skips it: {}",
                        invalid.error
                    ),
                )
                .await;
            }
            state.metrics.reconciled(false);
            state.metrics.reconcile_error("invalid_object");
            return Ok(Action::await_change());
        }
    };
    if !state.leadership.is_leader() {
        return Err(Error::NotLeader);
    }
    let key = object_key(&rollout.metadata);
    let namespace = rollout.namespace().unwrap_or_default();
    let api: Api<FeatureRollout> = Api::namespaced(state.client.clone(), &namespace);
    let rollout = Arc::new(rollout.clone());
    // featurerollouts: patch (kube's finalizer helper adds and removes the finalizer
    // with a JSON patch guarded by a `test`)
    let work = finalizer::finalizer(&api, FINALIZER, rollout, |event| async {
        match event {
            FinalizerEvent::Apply(rollout) => apply(&rollout, &state).await,
            FinalizerEvent::Cleanup(rollout) => cleanup(&rollout, &state).await,
        }
    });
    let result = match tokio::time::timeout(RECONCILE_BUDGET, work).await {
        Err(_) => Err(Error::Timeout(RECONCILE_BUDGET)),
        Ok(Ok(action)) => Ok(action),
        Ok(Err(finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e))) => Err(e),
        Ok(Err(finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e))) => {
            Err(Error::Finalizer(e.to_string()))
        }
        Ok(Err(e)) => Err(Error::Finalizer(e.to_string())),
    };
    if result.is_ok() {
        state.metrics.reconciled(true);
        state.backoff.succeeded(&key);
    }
    result
}

/// What the controller does after a failed reconcile: wait for a change when only one
/// can help, otherwise retry after a per-object exponential backoff.
pub fn error_policy(
    object: Arc<DeserializeGuard<FeatureRollout>>,
    error: &Error,
    state: Arc<State>,
) -> Action {
    state.metrics.reconciled(false);
    state.metrics.reconcile_error(error.category());
    let key = match &object.0 {
        Ok(rollout) => object_key(&rollout.metadata),
        Err(invalid) => object_key(&invalid.metadata),
    };
    if error.waits_for_change() {
        tracing::warn!(rollout = %key, %error, category = error.category(), "reconcile failed: waiting for a change");
        return Action::await_change();
    }
    let delay = state.backoff.failed(&key);
    tracing::warn!(rollout = %key, %error, category = error.category(), retry_in_s = delay.as_secs(), "reconcile failed: retrying");
    Action::requeue(Backoff::jittered(delay))
}

/// The requeue for a plan that wants to look again at `next` (`None`: wait for a change).
pub fn requeue_at(next: Option<Timestamp>, now: Timestamp) -> Action {
    match next {
        None => Action::await_change(),
        Some(next) => {
            let wait = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
            Action::requeue(wait.max(Duration::from_secs(1)))
        }
    }
}

async fn apply(rollout: &FeatureRollout, state: &State) -> Result<Action, Error> {
    let now = (state.clock)();
    let shell = KubeShell::new(state, rollout);
    let namespace = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    let outcome = reconcile::reconcile(
        &shell,
        &state.context,
        Rollout {
            id: RolloutRef {
                namespace: &namespace,
                name: &name,
            },
            spec: &rollout.spec,
            status: rollout.status.as_ref(),
            generation: rollout.metadata.generation,
        },
        now,
    )
    .await?;
    state.metrics.decision(outcome.decision.kind());
    if let Some(took) = outcome.analysis_took {
        state.metrics.analysis_took(took);
    }
    state.metrics.observe_rollout(
        &namespace,
        &name,
        &rollout.spec.flag.key,
        outcome.status.phase,
        outcome.status.weight,
    );
    tracing::debug!(
        namespace = %namespace, rollout = %name,
        decision = outcome.decision.kind(),
        flag_changed = outcome.flag_changed,
        status_written = outcome.status_written,
        next_look = ?outcome.next_look,
        "reconciled"
    );
    Ok(requeue_at(outcome.next_look, now))
}

async fn cleanup(rollout: &FeatureRollout, state: &State) -> Result<Action, Error> {
    let shell = KubeShell::new(state, rollout);
    let namespace = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    match reconcile::release(&shell, &rollout.spec, rollout.status.as_ref()).await {
        Ok(_) => {}
        // A document Sluice may not change (or a target it cannot use) will not heal by
        // retrying: let the deletion go on, loudly.
        Err(error @ (FlagWriteError::Document(_) | FlagWriteError::Target(_))) => {
            tracing::warn!(namespace = %namespace, rollout = %name, %error, "the flag could not be restored before deletion");
            shell
                .publish(&Event {
                    type_: EventType::Warning,
                    reason: "FlagNotRestored",
                    message: format!(
                        "The rollout is deleted but its flag could not be set back to the baseline: {error}"
                    ),
                })
                .await;
        }
        Err(error) => return Err(Error::Release(error)),
    }
    state.metrics.forget_rollout(&namespace, &name);
    Ok(Action::await_change())
}

/// Runs the controllers (one per namespace, or one for all) until `stop` completes,
/// finishing the reconciles in hand. Marks `health` listed once every watch has listed.
pub async fn run_controllers(
    state: Arc<State>,
    namespaces: Vec<String>,
    selector: Option<String>,
    health: Arc<Health>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let stop = stop.boxed().shared();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let total = scopes.len();
    let listed: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let mut config = watcher::Config::default();
    if let Some(selector) = &selector {
        config = config.labels(selector);
    }
    let runs = scopes.into_iter().enumerate().map(|(index, scope)| {
        // featurerollouts: list, watch
        let api: Api<DeserializeGuard<FeatureRollout>> = match &scope {
            Some(namespace) => Api::namespaced(state.client.clone(), namespace),
            None => Api::all(state.client.clone()),
        };
        // The controller's own watch, with its store: the first complete list (InitDone)
        // makes this scope ready. (`Controller::for_stream` needs kube's
        // `unstable-runtime` feature; `Store::wait_until_ready` cannot be shared with the
        // controller, which waits on it too, because it wakes only the last waiter.)
        let (reader, writer) = reflector::store();
        let health = health.clone();
        let listed = listed.clone();
        let stream = watcher(api, config.clone())
            .default_backoff()
            .reflect(writer)
            .inspect(move |event| {
                if let Ok(watcher::Event::InitDone) = event {
                    let mut done = listed.lock().unwrap_or_else(|e| e.into_inner());
                    done.insert(index);
                    if done.len() == total {
                        health.set_listed(true);
                    }
                }
            })
            .touched_objects();
        let controller = Controller::for_stream(stream, reader)
            .with_config(controller::Config::default().concurrency(64))
            .graceful_shutdown_on(stop.clone());
        controller
            .run(reconcile_rollout, error_policy, state.clone())
            .for_each(|result| async move {
                if let Err(error) = result {
                    log_controller_error(&error);
                }
            })
    });
    futures::future::join_all(runs).await;
}

fn log_controller_error(error: &controller::Error<Error, watcher::Error>) {
    match error {
        controller::Error::ReconcilerFailed(..) => {} // logged by error_policy
        other => tracing::warn!(error = %other, "controller"),
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// `sluice controller`: runs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let clock = system_clock();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(hostname)
        .unwrap_or_else(|| "sluice".into());
    let lease_namespace = match (&args.leader_election, &args.lease_namespace) {
        (true, None) => {
            return Err(Error::Config(
                "--lease-namespace (or env POD_NAMESPACE) is required when leader election is on; pass --leader-election false for a single replica".into(),
            ));
        }
        (_, namespace) => namespace.clone().unwrap_or_default(),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing the writes in hand");
        let _ = stop_tx.send(true);
    });

    let admin = Admin {
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let (bound, serving) = telemetry::serve_admin(&args.admin_address, admin, stopped()).await?;
    tracing::info!(address = %bound, "admin server: /livez /readyz /metrics");
    let admin_task = tokio::spawn(serving);

    crate::prometheus::ensure_crypto_provider();
    let client = Client::try_default().await.map_err(Error::Client)?;
    let mut state = State::new(client.clone(), clock.clone(), Some(identity.clone()));
    state.metrics = metrics.clone();
    let (notifier, failures) = crate::notify::Notifier::new(args.notify.config())
        .map_err(|e| Error::Config(format!("--notify-webhook: {e}")))?;
    state.context =
        reconcile::Context::new(
            args.default_prometheus
                .clone()
                .map(|address| PrometheusSpec {
                    address,
                    ..PrometheusSpec::default()
                }),
        )
        .with_credentials_dir(args.prometheus_credentials_dir.clone())
        .with_notifier(notifier.clone());
    let elector = if args.leader_election {
        state.leadership = Leadership::elected(clock.clone());
        Some(Elector::new(
            client,
            LeaseConfig::new(args.lease_name.clone(), lease_namespace, identity.clone()),
            state.leadership.clone(),
        ))
    } else {
        metrics.set_leader(true);
        None
    };
    let leadership = state.leadership.clone();
    let state = Arc::new(state);
    // A notification that gave up becomes a Warning Event on its rollout.
    let publisher = state.clone();
    crate::notify::forward_failures(failures, move |failure| {
        let state = publisher.clone();
        async move {
            if !state.leadership.is_leader() {
                return;
            }
            let event = failure.event();
            let reference = ObjectReference {
                api_version: Some(FeatureRollout::api_version(&()).into_owned()),
                kind: Some(FeatureRollout::kind(&()).into_owned()),
                name: Some(failure.name.clone()),
                namespace: Some(failure.namespace.clone()),
                ..ObjectReference::default()
            };
            publish(
                &state,
                &reference,
                KubeEventType::Warning,
                event.reason,
                &event.message,
            )
            .await;
        }
    });
    let counted = notifier.clone();
    let notification_metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            notification_metrics.set_notification_totals(counted.sent(), counted.failed());
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    // The elector keeps renewing until the controllers have finished the writes in hand,
    // then releases the Lease so the next leader need not wait for it to expire.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let elector_task = elector.map(|elector| {
        let done = async move {
            let _ = done_rx.wait_for(|done| *done).await;
        };
        tokio::spawn(elector.run(done, metrics.clone()))
    });

    loop {
        if args.leader_election {
            health.set_standby(true);
            tracing::info!(identity = %identity, "waiting to lead");
            tokio::select! {
                () = leadership.acquired() => {}
                () = stopped() => break,
            }
            health.set_standby(false);
        }
        tracing::info!(namespaces = ?args.namespaces, selector = ?args.selector, "reconciling FeatureRollouts");
        let lost = leadership.clone();
        let stop = stopped();
        run_controllers(
            state.clone(),
            args.namespaces.clone(),
            args.selector.clone(),
            health.clone(),
            async move {
                tokio::select! {
                    () = lost.lost() => tracing::warn!("leadership lost: stopping the controller"),
                    () = stop => {}
                }
            },
        )
        .await;
        health.set_listed(false);
        if tokio::time::timeout(Duration::ZERO, stopped())
            .await
            .is_ok()
        {
            break;
        }
    }
    // Deliveries in flight are bounded by their attempts, timeouts and backoff.
    notifier.idle().await;
    metrics.set_notification_totals(notifier.sent(), notifier.failed());
    let _ = done_tx.send(true);
    if let Some(task) = elector_task {
        let _ = task.await;
    }
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
