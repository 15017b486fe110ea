//! The kube-runtime wiring: one reconcile of one object ([`reconcile_rollout`]), the
//! error policy and requeues, and the controllers over the watched namespaces.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType as KubeEventType;
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Resource, ResourceExt};

use super::shell::{KubeShell, object_key, publish};
use super::{Error, FINALIZER, State};
use crate::analysis::look::RolloutRef;
use crate::crd::FeatureRollout;
use crate::engine::{Event, EventType};
use crate::reconcile::{self, FlagWriteError, Rollout, Shell as _};
use crate::telemetry::Health;

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
    Action::requeue(state.backoff.jittered(delay))
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
    let key = object_key(&rollout.metadata);
    // Rollback never waits: an abort that arrives while this reconcile (of a rollout not
    // aborted yet) looks at the metrics abandons it, and the rollout is reconciled again
    // at once. Until its flag write, the reconcile has written nothing.
    let interrupted = state.interrupts.next(&key);
    let work = reconcile::reconcile(
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
    );
    let outcome = if rollout.spec.control.abort {
        work.await?
    } else {
        tokio::select! {
            outcome = work => outcome?,
            () = interrupted => {
                tracing::info!(rollout = %key, "an abort arrived: the reconcile in progress is abandoned");
                return Ok(Action::requeue(Duration::from_millis(1)));
            }
        }
    };
    state.metrics.decision(outcome.decision.kind());
    if let Some(took) = outcome.analysis_took {
        state.metrics.analysis_took(took);
    }
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
    state.interrupts.forget(&object_key(&rollout.metadata));
    state.context.forget(&RolloutRef {
        namespace: &namespace,
        name: &name,
    });
    Ok(Action::await_change())
}

/// Runs the controllers (one per namespace, or one for all) until `stop` completes,
/// finishing the reconciles in hand. Marks `health` listed once every watch has listed.
/// While they run, `sluice_rollouts{phase}` and `sluice_rollout_weight` follow what the
/// watches see; when they stop, both are emptied.
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
        let watching = state.clone();
        let mut phases = PhaseGauge::new(scope.clone());
        let stream = watcher(api, config.clone())
            .default_backoff()
            // Nothing reads `managedFields` (the status is applied whole), and they are
            // a large part of every object the store keeps.
            .modify(|rollout| rollout.meta_mut().managed_fields = None)
            .reflect(writer)
            .inspect(move |event| {
                let Ok(event) = event else { return };
                phases.see(&watching.metrics, event);
                match event {
                    watcher::Event::InitDone => {
                        let mut done = listed.lock().unwrap_or_else(|e| e.into_inner());
                        done.insert(index);
                        if done.len() == total {
                            health.set_listed(true);
                        }
                    }
                    // An abort interrupts the reconcile of that rollout in progress.
                    watcher::Event::Apply(object) => {
                        if let Ok(rollout) = &object.0
                            && rollout.spec.control.abort
                        {
                            watching.interrupts.raise(&object_key(&rollout.metadata));
                        }
                    }
                    _ => {}
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
    // No longer watching (a stop, a lost Lease): what the gauge showed would go stale.
    state.metrics.retain_rollouts(|_, _| false);
}

/// Keeps `sluice_rollouts{phase}` and `sluice_rollout_weight` equal to what the
/// FeatureRollouts of one watch scope say: every version the watch sees is recorded with
/// the phase and weight of its status (`Pending` while it has none), a deleted one is
/// forgotten, and a relist forgets those it no longer lists (deleted while the watch was
/// down). The persisted status, not the outcome of a reconcile, is what the gauge shows:
/// a rollout whose reconcile fails (a first stage whose flag cannot be written holds in
/// `Pending`), one not reconciled yet and one reconciled by another replica count too.
struct PhaseGauge {
    scope: Option<String>,
    relisted: Option<HashSet<(String, String)>>,
}

impl PhaseGauge {
    fn new(scope: Option<String>) -> Self {
        PhaseGauge {
            scope,
            relisted: None,
        }
    }

    fn see(
        &mut self,
        metrics: &crate::telemetry::Metrics,
        event: &watcher::Event<DeserializeGuard<FeatureRollout>>,
    ) {
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let (namespace, name) = names(object);
                match &object.0 {
                    Ok(rollout) => {
                        let status = rollout.status.as_ref();
                        metrics.observe_rollout(
                            &namespace,
                            &name,
                            &rollout.spec.flag.key,
                            status.map(|s| s.phase).unwrap_or_default(),
                            status.and_then(|s| s.weight),
                        );
                    }
                    // An object that does not parse has no phase Sluice can tell.
                    Err(_) => metrics.forget_rollout(&namespace, &name),
                }
                if let Some(seen) = &mut self.relisted {
                    seen.insert((namespace, name));
                }
            }
            watcher::Event::Delete(object) => {
                let (namespace, name) = names(object);
                metrics.forget_rollout(&namespace, &name);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisted.take() {
                    let scope = self.scope.as_deref();
                    metrics.retain_rollouts(|namespace, name| {
                        scope.is_some_and(|s| s != namespace)
                            || seen.contains(&(namespace.to_owned(), name.to_owned()))
                    });
                }
            }
        }
    }
}

fn names(object: &DeserializeGuard<FeatureRollout>) -> (String, String) {
    let meta = match &object.0 {
        Ok(rollout) => &rollout.metadata,
        Err(invalid) => &invalid.metadata,
    };
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn log_controller_error(error: &controller::Error<Error, watcher::Error>) {
    match error {
        controller::Error::ReconcilerFailed(..) => {} // logged by error_policy
        other => tracing::warn!(error = %other, "controller"),
    }
}
