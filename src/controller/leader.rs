//! Leader election over a `coordination.k8s.io/v1` Lease: only the leader reconciles and
//! writes.
//!
//! A small loop, in the manner of client-go's leader election: every `retry_period` the
//! elector reads the Lease; it renews it while it holds it, takes it over when the holder
//! has not renewed it for a whole `lease_duration` (measured on this replica's own
//! clock, from the moment it last saw the record change, so clock skew between replicas
//! does not matter), and creates it when missing. Every write is a `replace` carrying the
//! `resourceVersion` it read, so two candidates never both win.
//!
//! [`Leadership`] is what the writers check: it is true only while the last successful
//! renewal is younger than `renew_deadline` (shorter than `lease_duration`), so a leader
//! cut off from the API server stops writing before anybody else may take over, even if
//! its loop is stuck. Permissions: `leases` get, create, update.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use super::Clock;

/// Timings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease holds without renewal before others may take it over.
    pub lease_duration: Duration,
    /// How long the leader keeps writing after its last successful renewal; shorter than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the elector tries to acquire or renew.
    pub retry_period: Duration,
    /// The timeout of one API call.
    pub call_timeout: Duration,
}

impl LeaseConfig {
    /// The defaults of client-go: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(name: String, namespace: String, identity: String) -> Self {
        LeaseConfig {
            name,
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// Whether this replica may write, checked before every write. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: always the leader (leader election is off).
    valid_until: Mutex<Option<Option<Timestamp>>>,
    clock: Clock,
    changes: watch::Sender<bool>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl Leadership {
    /// Always the leader: for a single replica (`--leader-election false`) and tests.
    pub fn always(clock: Clock) -> Self {
        Leadership {
            inner: Arc::new(Inner {
                valid_until: Mutex::new(None),
                clock,
                changes: watch::Sender::new(true),
            }),
        }
    }

    /// Not the leader until an [`Elector`] wins the Lease.
    pub fn elected(clock: Clock) -> Self {
        Leadership {
            inner: Arc::new(Inner {
                valid_until: Mutex::new(Some(None)),
                clock,
                changes: watch::Sender::new(false),
            }),
        }
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        let valid_until = self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match *valid_until {
            None => true,
            Some(None) => false,
            Some(Some(until)) => (self.inner.clock)() < until,
        }
    }

    /// Notified on every change of leadership (true: leading).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.changes.subscribe()
    }

    /// Waits until this replica leads.
    pub async fn acquired(&self) {
        let mut changes = self.subscribe();
        let _ = changes.wait_for(|leading| *leading).await;
    }

    /// Waits until this replica no longer leads (at once for a non-leader). Also notices
    /// an expired renewal that the elector loop has not reported.
    pub async fn lost(&self) {
        let mut changes = self.subscribe();
        loop {
            if !self.is_leader() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
        }
    }

    fn set(&self, until: Option<Timestamp>) {
        let mut valid_until = self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if valid_until.is_none() {
            return;
        }
        *valid_until = Some(until);
        drop(valid_until);
        let leading = self.is_leader();
        self.inner.changes.send_if_modified(|old| {
            let changed = *old != leading;
            *old = leading;
            changed
        });
    }

    /// Forgets leadership at once (the Lease was lost or released).
    pub fn revoke(&self) {
        self.set(None);
    }
}

/// Why one election step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API call failed.
    #[error("Lease {name}: {source}")]
    Api {
        /// The Lease.
        name: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The API call took too long.
    #[error("Lease {name}: no answer within {after:?}")]
    Timeout {
        /// The Lease.
        name: String,
        /// The timeout.
        after: Duration,
    },
}

impl Error {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api { .. } => "api",
            Error::Timeout { .. } => "timeout",
        }
    }
}

/// What one step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// This replica holds the Lease.
    Leading,
    /// Somebody else holds it (named).
    Following(String),
}

/// The last record seen from another holder and when (on this replica's clock).
#[derive(Debug)]
struct Observed {
    version: Option<String>,
    at: Timestamp,
}

/// Acquires and renews the Lease, and keeps [`Leadership`] up to date.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    leadership: Leadership,
    clock: Clock,
    observed: Mutex<Option<Observed>>,
}

impl Elector {
    /// An elector for `config` that updates `leadership` (made with
    /// [`Leadership::elected`]).
    pub fn new(client: kube::Client, config: LeaseConfig, leadership: Leadership) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        let clock = leadership.inner.clock.clone();
        Elector {
            api,
            config,
            leadership,
            clock,
            observed: Mutex::new(None),
        }
    }

    async fn call<T>(
        &self,
        future: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.config.call_timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(Error::Api {
                name: self.config.name.clone(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                name: self.config.name.clone(),
                after: self.config.call_timeout,
            }),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn won(&self, now: Timestamp) {
        let deadline = SignedDuration::try_from(self.config.renew_deadline)
            .unwrap_or(SignedDuration::from_secs(10));
        self.leadership.set(Some(now + deadline));
    }

    /// One attempt to acquire or renew the Lease.
    pub async fn step(&self) -> Result<Step, Error> {
        let now = (self.clock)();
        let me = self.config.identity.clone();
        // coordination.k8s.io leases: get
        let lease = self.call(self.api.get_opt(&self.config.name)).await?;
        let Some(mut lease) = lease else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            // coordination.k8s.io leases: create
            return match self
                .call(self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(_) => {
                    self.won(now);
                    Ok(Step::Leading)
                }
                Err(Error::Api {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 409 => {
                    self.leadership.revoke();
                    Ok(Step::Following(String::new()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone();
        if holder != me {
            let expired = {
                let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
                match observed.as_ref() {
                    Some(seen) if seen.version == version => {
                        let held = spec
                            .lease_duration_seconds
                            .map_or(self.config.lease_duration, |s| {
                                Duration::from_secs(u64::try_from(s).unwrap_or(0))
                            });
                        let held = SignedDuration::try_from(held).unwrap_or_default();
                        holder.is_empty() || now >= seen.at + held
                    }
                    _ => {
                        *observed = Some(Observed { version, at: now });
                        holder.is_empty()
                    }
                }
            };
            if !expired {
                self.leadership.revoke();
                return Ok(Step::Following(holder));
            }
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.lease_seconds());
        // coordination.k8s.io leases: update (the resourceVersion read above makes it
        // conditional: somebody else's write in between is a 409)
        match self
            .call(
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(_) => {
                self.won(now);
                Ok(Step::Leading)
            }
            Err(Error::Api {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 => {
                self.leadership.revoke();
                Ok(Step::Following(holder))
            }
            Err(e) => Err(e),
        }
    }

    /// Steps every `retry_period` until `shutdown`, then releases the Lease if held.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        metrics: Arc<crate::telemetry::Metrics>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut leading = false;
        loop {
            match self.step().await {
                Ok(Step::Leading) => {
                    if !leading {
                        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became the leader");
                    }
                    leading = true;
                }
                Ok(Step::Following(holder)) => {
                    if leading {
                        tracing::warn!(lease = %self.config.name, holder = %holder, "lost the leader Lease: writing stops");
                    }
                    leading = false;
                }
                Err(error) => {
                    tracing::warn!(%error, "leader election: the Lease could not be read or renewed");
                    if leading && !self.leadership.is_leader() {
                        tracing::warn!(lease = %self.config.name, "the Lease was not renewed in time: writing stops");
                        self.leadership.revoke();
                        leading = false;
                    }
                }
            }
            metrics.set_leader(self.leadership.is_leader());
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        if self.leadership.is_leader() {
            self.leadership.revoke();
            metrics.set_leader(false);
            if let Err(error) = self.release().await {
                tracing::warn!(%error, "could not release the Lease; the next leader waits for it to expire");
            }
        }
    }

    /// Gives the Lease up so another replica takes over without waiting for it to expire.
    pub async fn release(&self) -> Result<(), Error> {
        // coordination.k8s.io leases: get
        let Some(mut lease) = self.call(self.api.get_opt(&self.config.name)).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        // coordination.k8s.io leases: update
        self.call(
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease),
        )
        .await?;
        Ok(())
    }
}
