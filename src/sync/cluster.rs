//! The sync server's targets in the cluster: the ConfigMaps and `FeatureFlag`s the
//! FeatureRollouts that this controller watches write to. Every replica, leader or not,
//! serves them from its own watches, so a Service can spread the apps over all replicas.
//!
//! Selectors (after flagd's optional `source=`):
//! - a ConfigMap: `<namespace>/<name>/<key>`, or `<namespace>/<name>` when the rollouts
//!   write only one key of it;
//! - a `FeatureFlag`: `core.openfeature.dev/<namespace>/<name>`, flagd's own name of a
//!   `FeatureFlag` source (`flagd --uri core.openfeature.dev/ns/name`), or
//!   `<namespace>/<name>` when no ConfigMap of the rollouts has that name.
//!
//! A target is followed with a watch of that one object (field selector `metadata.name`)
//! for as long as an app follows it: every change, Sluice's or anybody's, is pushed as the
//! API server announces it. Namespace names hold no dots, so the `core.openfeature.dev/`
//! prefix cannot be mistaken for one.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::watch;

use super::{Catalog, Selector, Unknown};
use crate::controller::targets::{feature_flag_document, feature_flag_resource};
use crate::crd::{FeatureRollout, FlagTarget};
use crate::flag_store::{ChangeFeed, Document, Follower};

/// flagd's prefix of a `FeatureFlag` source.
pub const FEATURE_FLAG_PREFIX: &str = "core.openfeature.dev/";

/// How many known selectors a `NOT_FOUND` lists.
const LISTED: usize = 5;

/// A document the rollouts write in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterTarget {
    /// `data[key]` of a ConfigMap.
    ConfigMap {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The data key.
        key: String,
    },
    /// `spec.flagSpec` of an OpenFeature `FeatureFlag`.
    FeatureFlag {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl ClusterTarget {
    /// The target of a rollout in `namespace` (none for a target the cluster does not
    /// write, a file).
    pub fn of(namespace: &str, target: &crate::crd::Target) -> Option<Self> {
        match target.choice().ok()? {
            FlagTarget::ConfigMap { name, key } => Some(ClusterTarget::ConfigMap {
                namespace: namespace.into(),
                name,
                key,
            }),
            FlagTarget::FeatureFlag { name } => Some(ClusterTarget::FeatureFlag {
                namespace: namespace.into(),
                name,
            }),
            FlagTarget::File { .. } => None,
        }
    }

    /// Its full selector (and its name in the feed).
    pub fn selector(&self) -> String {
        match self {
            ClusterTarget::ConfigMap {
                namespace,
                name,
                key,
            } => format!("{namespace}/{name}/{key}"),
            ClusterTarget::FeatureFlag { namespace, name } => {
                format!("{FEATURE_FLAG_PREFIX}{namespace}/{name}")
            }
        }
    }

    fn namespace_name(&self) -> (&str, &str) {
        match self {
            ClusterTarget::ConfigMap {
                namespace, name, ..
            }
            | ClusterTarget::FeatureFlag { namespace, name } => (namespace, name),
        }
    }
}

/// Which targets `selector` names among `targets`.
pub fn resolve_in<'a>(
    targets: impl IntoIterator<Item = &'a ClusterTarget> + Clone,
    selector: &str,
) -> Result<ClusterTarget, Unknown> {
    let known = || Unknown::NotFound {
        known: targets
            .clone()
            .into_iter()
            .take(LISTED)
            .map(ClusterTarget::selector)
            .collect(),
        how: "the cluster serves the targets of the watched FeatureRollouts: a ConfigMap as <namespace>/<name>/<key>, a FeatureFlag as core.openfeature.dev/<namespace>/<name>, either as <namespace>/<name> when that names one",
    };
    if let Some(rest) = selector.strip_prefix(FEATURE_FLAG_PREFIX) {
        let found = targets.clone().into_iter().find(|t| {
            matches!(t, ClusterTarget::FeatureFlag { .. })
                && t.selector()[FEATURE_FLAG_PREFIX.len()..] == *rest
        });
        return found.cloned().ok_or_else(known);
    }
    let parts: Vec<&str> = selector.split('/').collect();
    match parts.as_slice() {
        [namespace, name, key] => targets
            .clone()
            .into_iter()
            .find(|t| {
                matches!(t, ClusterTarget::ConfigMap { namespace: n, name: m, key: k }
                    if n == namespace && m == name && k == key)
            })
            .cloned()
            .ok_or_else(known),
        [namespace, name] => {
            let matching: Vec<&ClusterTarget> = targets
                .clone()
                .into_iter()
                .filter(|t| t.namespace_name() == (*namespace, *name))
                .collect();
            match matching.as_slice() {
                [] => Err(known()),
                [one] => Ok((*one).clone()),
                several => Err(Unknown::Invalid(format!(
                    "names {} documents; select one: {}",
                    several.len(),
                    several
                        .iter()
                        .map(|t| t.selector())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
        _ => Err(known()),
    }
}

/// The cluster's targets, from this replica's own watch of the FeatureRollouts.
pub struct ClusterCatalog {
    client: Client,
    /// (scope, namespace, rollout) → its target.
    rollouts: RwLock<BTreeMap<(usize, String, String), ClusterTarget>>,
    ready: watch::Sender<bool>,
    feed: ChangeFeed,
}

impl std::fmt::Debug for ClusterCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCatalog").finish_non_exhaustive()
    }
}

impl ClusterCatalog {
    /// An empty catalog, ready after the first list of [`ClusterCatalog::watch_rollouts`].
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(ClusterCatalog {
            client,
            rollouts: RwLock::default(),
            ready: watch::Sender::new(false),
            feed: ChangeFeed::default(),
        })
    }

    /// Watches the FeatureRollouts (all namespaces, or each of `namespaces`, with the
    /// label `selector`) and keeps their targets, until `stop`. A malformed rollout is
    /// skipped.
    pub async fn watch_rollouts(
        self: Arc<Self>,
        namespaces: Vec<String>,
        selector: Option<String>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        let scopes: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.into_iter().map(Some).collect()
        };
        let total = scopes.len();
        let listed: Arc<std::sync::Mutex<HashSet<usize>>> = Arc::default();
        let mut config = watcher::Config::default();
        if let Some(selector) = &selector {
            config = config.labels(selector);
        }
        let watches = scopes.into_iter().enumerate().map(|(scope, namespace)| {
            // featurerollouts: list, watch
            let api: Api<DeserializeGuard<FeatureRollout>> = match &namespace {
                Some(namespace) => Api::namespaced(self.client.clone(), namespace),
                None => Api::all(self.client.clone()),
            };
            let catalog = self.clone();
            let listed = listed.clone();
            let mut relisted: Option<BTreeMap<(usize, String, String), ClusterTarget>> = None;
            watcher(api, config.clone())
                .default_backoff()
                .for_each(move |event| {
                    match event {
                        Ok(watcher::Event::Init) => relisted = Some(BTreeMap::new()),
                        Ok(watcher::Event::InitApply(object)) => {
                            if let (Some(list), Some((key, target))) =
                                (relisted.as_mut(), entry(scope, &object))
                            {
                                list.insert(key, target);
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            let list = relisted.take().unwrap_or_default();
                            let mut rollouts = catalog.write();
                            rollouts.retain(|(s, _, _), _| *s != scope);
                            rollouts.extend(list);
                            drop(rollouts);
                            let mut done = listed.lock().unwrap_or_else(|e| e.into_inner());
                            done.insert(scope);
                            if done.len() == total {
                                catalog.ready.send_if_modified(|r| !std::mem::replace(r, true));
                            }
                        }
                        Ok(watcher::Event::Apply(object)) => {
                            let key = (scope, object.namespace().unwrap_or_default(), object.name_any());
                            let mut rollouts = catalog.write();
                            match entry(scope, &object) {
                                Some((key, target)) => {
                                    rollouts.insert(key, target);
                                }
                                None => {
                                    rollouts.remove(&key);
                                }
                            }
                        }
                        Ok(watcher::Event::Delete(object)) => {
                            let key = (scope, object.namespace().unwrap_or_default(), object.name_any());
                            catalog.write().remove(&key);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "sync server: watching FeatureRollouts failed; retrying");
                        }
                    }
                    std::future::ready(())
                })
        });
        tokio::select! {
            _ = futures::future::join_all(watches) => {}
            () = stop => {}
        }
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<(usize, String, String), ClusterTarget>> {
        self.rollouts.write().unwrap_or_else(|e| e.into_inner())
    }

    fn targets(&self) -> Vec<ClusterTarget> {
        let rollouts = self.rollouts.read().unwrap_or_else(|e| e.into_inner());
        let mut targets: Vec<ClusterTarget> = rollouts.values().cloned().collect();
        targets.sort();
        targets.dedup();
        targets
    }
}

fn entry(
    scope: usize,
    object: &DeserializeGuard<FeatureRollout>,
) -> Option<((usize, String, String), ClusterTarget)> {
    let rollout = object.0.as_ref().ok()?;
    let namespace = rollout.namespace().unwrap_or_default();
    let target = ClusterTarget::of(&namespace, &rollout.spec.target)?;
    Some(((scope, namespace, rollout.name_any()), target))
}

impl Catalog for ClusterCatalog {
    fn resolve(&self, selector: &Selector) -> Result<String, Unknown> {
        let targets = self.targets();
        resolve_in(&targets, &selector.0).map(|t| t.selector())
    }

    fn follow(&self, follower: Follower) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let target = self
            .targets()
            .into_iter()
            .find(|t| t.selector() == follower.target());
        let client = self.client.clone();
        Box::pin(async move {
            match target {
                Some(target) => follow_object(client, target, follower).await,
                // Removed in between: nothing to follow.
                None => follower.unfollowed().await,
            }
        })
    }

    fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

/// The document `target` holds in `object` (the ConfigMap or the `FeatureFlag`).
fn document_of(target: &ClusterTarget, object: &DynamicObject) -> Document {
    match target {
        ClusterTarget::ConfigMap { key, .. } => {
            let value = serde_json::to_value(object).unwrap_or_default();
            if value
                .pointer("/binaryData")
                .and_then(|b| b.get(key))
                .is_some()
            {
                return Document::Unusable(format!("data key {key} is binary data"));
            }
            Document::of(
                value
                    .pointer("/data")
                    .and_then(|d| d.get(key))
                    .and_then(|v| v.as_str()),
            )
        }
        ClusterTarget::FeatureFlag { .. } => {
            let value = serde_json::to_value(object).unwrap_or_default();
            match feature_flag_document(&value) {
                Ok(text) => Document::of(text.as_deref()),
                Err(e) => Document::Unusable(e.to_string()),
            }
        }
    }
}

/// Watches the one object of `target` and publishes its document until nobody follows it.
async fn follow_object(client: Client, target: ClusterTarget, follower: Follower) {
    let (namespace, name) = target.namespace_name();
    let api: Api<DynamicObject> = match &target {
        // configmaps: list, watch (one, by field selector)
        ClusterTarget::ConfigMap { .. } => Api::namespaced_with(
            client,
            namespace,
            &kube::api::ApiResource::erase::<ConfigMap>(&()),
        ),
        // featureflags: list, watch (one, by field selector)
        ClusterTarget::FeatureFlag { .. } => {
            Api::namespaced_with(client, namespace, &feature_flag_resource())
        }
    };
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff();
    tokio::pin!(stream);
    let unfollowed = follower.unfollowed();
    tokio::pin!(unfollowed);
    let mut seen = false;
    loop {
        let event = tokio::select! {
            () = &mut unfollowed => return,
            event = stream.next() => event,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Init)) => seen = false,
            Some(Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object))) => {
                seen = true;
                follower.publish(document_of(&target, &object));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if !seen {
                    follower.publish(Document::Missing);
                }
            }
            Some(Ok(watcher::Event::Delete(_))) => follower.publish(Document::Missing),
            Some(Err(error)) => {
                tracing::warn!(%error, target = %target.selector(), "sync server: watching a flag document failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(namespace: &str, name: &str, key: &str) -> ClusterTarget {
        ClusterTarget::ConfigMap {
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn selectors_name_config_maps_and_feature_flags() {
        let flag = ClusterTarget::FeatureFlag {
            namespace: "shop".into(),
            name: "flags".into(),
        };
        let targets = vec![
            config_map("shop", "flags", "flags.json"),
            config_map("shop", "two", "a.json"),
            config_map("shop", "two", "b.json"),
            flag.clone(),
            config_map("pay", "only", "flags.json"),
        ];
        let resolve = |s: &str| resolve_in(&targets, s);
        assert_eq!(resolve("shop/flags/flags.json"), Ok(targets[0].clone()));
        assert_eq!(resolve("core.openfeature.dev/shop/flags"), Ok(flag));
        assert_eq!(resolve("pay/only"), Ok(targets[4].clone()));
        let Err(Unknown::Invalid(why)) = resolve("shop/two") else {
            panic!("two keys of one ConfigMap are ambiguous");
        };
        assert!(
            why.contains("shop/two/a.json") && why.contains("shop/two/b.json"),
            "{why}"
        );
        assert!(
            matches!(resolve("shop/flags"), Err(Unknown::Invalid(_))),
            "a ConfigMap and a FeatureFlag of one name are ambiguous"
        );
        for unknown in [
            "shop/none",
            "shop/flags/other.json",
            "core.openfeature.dev/pay/only",
            "x",
        ] {
            assert!(
                matches!(resolve(unknown), Err(Unknown::NotFound { .. })),
                "{unknown}"
            );
        }
    }
}
