//! Logs, metrics and health: what an operator of Sluice watches.
//!
//! - Logging is set up by [`crate::runtime::init_logging`] (JSON or plain text, filtered
//!   by `RUST_LOG`, with the audit target [`AUDIT_TARGET`] always on).
//! - [`Metrics`]: Sluice's own Prometheus metrics (prefix `sluice`, bounded labels).
//! - [`Health`] and [`admin_router`]: `/livez`, `/readyz` (ready only after the first
//!   list of FeatureRollouts) and `/metrics`.
//!
//! Shared by the controller and standalone mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::{Phase, Weight};

/// The target that carries the audit trail: one line per flag change.
pub const AUDIT_TARGET: &str = "sluice::audit";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Plain,
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Logging could not start.
    #[error(transparent)]
    Logging(#[from] crate::runtime::LogError),
    /// The admin server could not bind or serve.
    #[error("admin server on {address}: {message}")]
    Admin {
        /// The address asked for.
        address: String,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Logging(e) => e.category(),
            Error::Admin { .. } => "admin",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    namespace: String,
    name: String,
    flag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: &'static str,
}

/// The Prometheus query duration histogram, process-wide so the Prometheus client can
/// observe it without holding a [`Metrics`]; every registry exposes the same one.
static PROMETHEUS_QUERY_DURATION: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.005, 2.0, 14)));

/// Records the duration of one Prometheus query (called by the Prometheus client).
pub fn observe_prometheus_query(took: Duration) {
    PROMETHEUS_QUERY_DURATION.observe(took.as_secs_f64());
}

/// Sluice's own metrics, in one registry with the prefix `sluice`.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_errors: Family<CategoryLabel, Counter>,
    decisions: Family<KindLabel, Counter>,
    rollouts: Family<PhaseLabel, Gauge>,
    rollout_weight: Family<RolloutLabels, Gauge<f64, AtomicU64>>,
    analysis_duration: Histogram,
    flag_writes: Family<TargetLabel, Counter>,
    leader: Gauge,
    notifications: Family<ResultLabel, Counter>,
    phases: Mutex<HashMap<(String, String), (Phase, String)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            decisions: Family::default(),
            rollouts: Family::default(),
            rollout_weight: Family::default(),
            analysis_duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            flag_writes: Family::default(),
            leader: Gauge::default(),
            notifications: Family::default(),
            phases: Mutex::default(),
            registry: Registry::default(),
        };
        // Counter names get `_total` from the library.
        registry.register(
            "reconciles",
            "Reconciles of FeatureRollouts by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "decisions",
            "Engine decisions by kind",
            metrics.decisions.clone(),
        );
        registry.register(
            "rollouts",
            "FeatureRollouts per phase",
            metrics.rollouts.clone(),
        );
        registry.register(
            "rollout_weight",
            "Candidate exposure per rollout (0..1)",
            metrics.rollout_weight.clone(),
        );
        registry.register(
            "analysis_duration_seconds",
            "Duration of one look at the metrics",
            metrics.analysis_duration.clone(),
        );
        registry.register(
            "prometheus_query_duration_seconds",
            "Duration of one Prometheus query",
            PROMETHEUS_QUERY_DURATION.clone(),
        );
        registry.register(
            "flag_writes",
            "Flag document writes by target kind",
            metrics.flag_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        registry.register(
            "notifications",
            "Notifications by result",
            metrics.notifications.clone(),
        );
        // Every phase, so the `sluice_rollouts{phase}` gauge shows zeros too.
        for phase in Phase::ALL {
            metrics
                .rollouts
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str(),
                })
                .set(0);
        }
        for result in ["ok", "error"] {
            let _ = metrics.reconciles.get_or_create(&ResultLabel { result });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts one failed reconcile by its error category.
    pub fn reconcile_error(&self, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&CategoryLabel { category })
            .inc();
    }

    /// Counts one engine decision.
    pub fn decision(&self, kind: &'static str) {
        self.decisions.get_or_create(&KindLabel { kind }).inc();
    }

    /// Records how long one look at the metrics took.
    pub fn analysis_took(&self, took: Duration) {
        self.analysis_duration.observe(took.as_secs_f64());
    }

    /// Counts one flag document write (`configMap`, `featureFlag` or `file`).
    pub fn flag_written(&self, target: &'static str) {
        self.flag_writes
            .get_or_create(&TargetLabel { target })
            .inc();
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts one notification (`sent` or `failed`).
    pub fn notification(&self, sent: bool) {
        let result = if sent { "sent" } else { "failed" };
        self.notifications
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Brings `sluice_notifications_total` up to the notifier's own totals.
    pub fn set_notification_totals(&self, sent: u64, failed: u64) {
        for (result, total) in [("sent", sent), ("failed", failed)] {
            let counter = self.notifications.get_or_create(&ResultLabel { result });
            let now = counter.get();
            if total > now {
                counter.inc_by(total - now);
            }
        }
    }

    /// Records a rollout's phase and exposure (`status.weight`: the candidate's share of
    /// the eligible users, of the audience for an audience stage), replacing what was
    /// recorded for it before. The controller calls it for every version of every
    /// FeatureRollout its watch sees, so `sluice_rollouts{phase}` counts the phases the
    /// rollouts' statuses hold (a rollout without a status yet is `Pending`).
    pub fn observe_rollout(
        &self,
        namespace: &str,
        name: &str,
        flag: &str,
        phase: Phase,
        weight: Option<Weight>,
    ) {
        let fraction = weight.map_or(0.0, Weight::fraction);
        let key = (namespace.to_owned(), name.to_owned());
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        match phases.insert(key, (phase, flag.to_owned())) {
            Some((old_phase, old_flag)) => {
                if old_flag != flag {
                    self.rollout_weight.remove(&RolloutLabels {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        flag: old_flag,
                    });
                }
                if old_phase != phase {
                    self.count(old_phase, -1);
                    self.count(phase, 1);
                }
            }
            None => self.count(phase, 1),
        }
        self.rollout_weight
            .get_or_create(&RolloutLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                flag: flag.to_owned(),
            })
            .set(fraction);
    }

    /// Forgets a deleted rollout.
    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((phase, flag)) = phases.remove(&(namespace.to_owned(), name.to_owned())) {
            self.forget(namespace, name, phase, flag);
        }
    }

    /// Forgets every rollout for which `keep(namespace, name)` is false (after a relist of
    /// the watch: the rollouts deleted while it was not watching).
    pub fn retain_rollouts(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<(String, String)> = phases
            .keys()
            .filter(|(namespace, name)| !keep(namespace, name))
            .cloned()
            .collect();
        for (namespace, name) in gone {
            if let Some((phase, flag)) = phases.remove(&(namespace.clone(), name.clone())) {
                self.forget(&namespace, &name, phase, flag);
            }
        }
    }

    fn forget(&self, namespace: &str, name: &str, phase: Phase, flag: String) {
        self.rollout_weight.remove(&RolloutLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            flag,
        });
        self.count(phase, -1);
    }

    /// Moves `sluice_rollouts{phase}` by `by` (called with the phases map locked, so
    /// the counts always add up to the rollouts recorded).
    fn count(&self, phase: Phase, by: i64) {
        self.rollouts
            .get_or_create(&PhaseLabel {
                phase: phase.as_str(),
            })
            .inc_by(by);
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Liveness and readiness, shared between the controller and the admin server.
#[derive(Debug, Default)]
pub struct Health {
    listed: AtomicBool,
    standby: AtomicBool,
}

impl Health {
    /// Marks the first list of FeatureRollouts as done: the replica is ready.
    pub fn set_listed(&self, listed: bool) {
        self.listed.store(listed, Ordering::SeqCst);
    }

    /// Marks the replica as a healthy standby (it follows the Lease but does not lead):
    /// ready too, so a rolling update of two replicas can proceed.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.listed.load(Ordering::SeqCst) || self.standby.load(Ordering::SeqCst)
    }
}

/// What the admin server reads.
#[derive(Clone, Debug)]
pub struct Admin {
    /// Readiness.
    pub health: Arc<Health>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
}

/// The admin routes: `/livez`, `/readyz`, `/metrics`.
pub fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.health.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: FeatureRollouts not listed yet\n",
        )
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.encode(),
    )
}

/// Binds the admin server on `address`; returns the bound address and the serving future,
/// which ends when `shutdown` completes.
pub async fn serve_admin(
    address: &str,
    admin: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = Result<(), Error>> + Send + 'static,
    ),
    Error,
> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Admin {
            address: address.to_owned(),
            message: e.to_string(),
        })?;
    let bound = listener.local_addr().map_err(|e| Error::Admin {
        address: address.to_owned(),
        message: e.to_string(),
    })?;
    let shown = bound.to_string();
    let serving = async move {
        axum::serve(listener, admin_router(admin))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Admin {
                address: shown,
                message: e.to_string(),
            })
    };
    Ok((bound, serving))
}
