//! `sluice controller` as a process: the admin server, leader election, the notifier and
//! the controllers, until the runtime's [`Shutdown`] asks it to stop.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::EventType as KubeEventType;
use kube::{Client, Resource};

use super::leader::{Elector, Leadership, LeaseConfig};
use super::shell::publish;
use super::{Args, Error, State, run_controllers};
use crate::crd::{FeatureRollout, PrometheusSpec};
use crate::reconcile;
use crate::runtime::{Shutdown, system_clock};
use crate::telemetry::{self, Admin, Health, Metrics};

/// `sluice controller`: runs until SIGTERM or SIGINT. Must be called inside a tokio
/// runtime; [`run_with`] takes the stop from the caller.
pub async fn run(args: Args) -> Result<(), Error> {
    run_with(args, Shutdown::on_signals()).await
}

/// `sluice controller`: runs until `shutdown` is requested, finishing the writes in hand.
pub async fn run_with(args: Args, shutdown: Shutdown) -> Result<(), Error> {
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

    let stopped = || shutdown.requested();

    let admin = Admin {
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let (bound, serving) = telemetry::serve_admin(&args.admin_address, admin, stopped()).await?;
    tracing::info!(address = %bound, "admin server: /livez /readyz /metrics");
    let admin_task = tokio::spawn(serving);

    crate::prometheus::ensure_crypto_provider();
    let client = Client::try_default().await.map_err(Error::Client)?;
    // Every replica serves the sync protocol from its own watches, leader or not.
    let sync_task = match &args.sync.address {
        Some(address) => {
            let catalog = crate::sync::cluster::ClusterCatalog::new(client.clone());
            tokio::spawn(catalog.clone().watch_rollouts(
                args.namespaces.clone(),
                args.selector.clone(),
                stopped(),
            ));
            let (bound, serving) = crate::sync::bind(&args.sync, address, catalog, stopped())
                .await
                .map_err(|e| Error::Config(e.to_string()))?;
            tracing::info!(address = %bound, "sync server listening: flagd.sync.v1.FlagSyncService (selector: <namespace>/<configmap>/<key> or core.openfeature.dev/<namespace>/<featureflag>)");
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let mut state = State::new(client.clone(), clock.clone(), Some(identity.clone()));
    state.metrics = metrics.clone();
    let (notifier, failures) = crate::notify::Notifier::new(args.notify.config())
        .map_err(|e| Error::Config(format!("--notify-webhook: {e}")))?;
    let context =
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
    // Each rollout's plan, from the traffic its first looks observe, off the reconcile
    // path.
    state.context = if args.plan_runs > 0 {
        context.with_plans(reconcile::PlanSettings {
            runs: args.plan_runs,
            ..reconcile::PlanSettings::default()
        })
    } else {
        context
    };
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
        let ended = async move {
            tokio::select! {
                () = lost.lost() => tracing::warn!("leadership lost: stopping the controller"),
                () = stop => {}
            }
        }
        .shared();
        let controllers = run_controllers(
            state.clone(),
            args.namespaces.clone(),
            args.selector.clone(),
            health.clone(),
            ended.clone(),
        );
        // The writes in hand get a bounded time to finish once the controllers are told to
        // stop: a reconcile still running after it (one frozen with the process, one
        // waiting on an API server that went away) is abandoned. Every write is a single
        // API call, so abandoning one leaves the old state or the new, and the next leader
        // repairs a flag written without its status.
        let grace = drain_time(state.call_timeout);
        tokio::select! {
            () = controllers => {}
            () = async move {
                ended.await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!(?grace, "reconciles still running after the stop: abandoned"),
        }
        health.set_listed(false);
        if shutdown.is_requested() {
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
    if let Some(task) = sync_task {
        // Its streams end on the stop; connections still open after a moment go with the
        // process.
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long the reconciles in hand may take to finish once the controllers stop: two API
/// calls (a flag write and the status that claims it), each bounded by `call_timeout`.
fn drain_time(call_timeout: Duration) -> Duration {
    call_timeout.saturating_mul(2)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
