//! What every reconcile of the controller shares.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::leader::Leadership;
use super::{Backoff, CALL_TIMEOUT, Clock};
use crate::reconcile;
use crate::runtime::Interrupts;
use crate::telemetry::Metrics;

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
    /// Aborts seen by the watch, which interrupt a reconcile of the same rollout in
    /// progress (a look hanging on a slow Prometheus never delays a rollback).
    pub interrupts: Interrupts,
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
            interrupts: Interrupts::default(),
        }
    }
}
