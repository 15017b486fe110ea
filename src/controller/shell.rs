//! One rollout's [`Shell`] in the cluster: the flag in a ConfigMap or a `FeatureFlag`
//! ([`super::targets`]), the status through the status subresource (server-side apply),
//! events through kube-runtime's [`kube::runtime::events::Recorder`].

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType};
use kube::{Api, Resource, ResourceExt};

use super::{FIELD_MANAGER, State, targets};
use crate::crd::{self, FeatureRollout, FeatureRolloutStatus, Target};
use crate::engine::{Event, EventType};
use crate::flag_store::{self, FlagWrite};
use crate::flagd::{FlagDefinition, FlagState};
use crate::reconcile::{self, FlagWriteError, Shell};

/// Where a rollout's flag goes in the cluster.
#[derive(Clone, Debug)]
enum FlagTarget {
    ConfigMap { name: String, key: String },
    FeatureFlag { name: String },
    Unsupported(String),
}

impl FlagTarget {
    fn of(target: &Target) -> Self {
        match target.choice() {
            Ok(crd::FlagTarget::ConfigMap { name, key }) => FlagTarget::ConfigMap { name, key },
            Ok(crd::FlagTarget::FeatureFlag { name }) => FlagTarget::FeatureFlag { name },
            Ok(crd::FlagTarget::File { .. }) => FlagTarget::Unsupported(
                "spec.target.file is for standalone mode; in a cluster use spec.target.configMap or spec.target.featureFlag".into(),
            ),
            Err(_) => {
                FlagTarget::Unsupported("spec.target sets none of configMap or featureFlag".into())
            }
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
pub(super) async fn publish(
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
        action: action_of(&note),
        note: Some(note),
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

/// The Event's `action`: kube's Recorder folds Events with the same type, reason, action
/// and object into one series and keeps the first one's note, so each transition (a
/// different note: "advanced to stage 3", then "to stage 4") needs an action of its own,
/// while an identical repeat still folds. A digest of the note, prefixed by the verb.
fn action_of(note: &str) -> String {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    let mut hasher = DefaultHasher::new();
    note.hash(&mut hasher);
    format!("Reconcile-{:016x}", hasher.finish())
}

pub(super) fn object_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}
