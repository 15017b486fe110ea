//! The Kubernetes permissions the controller uses, one entry per (API group, resource),
//! each with the code path that needs it.
//!
//! This table is the contract between the code and the Helm chart: the chart grants
//! exactly these verbs (a test renders the chart's RBAC and compares), so a change to a
//! client call that needs a new verb must change this table too.

/// One rule: the verbs Sluice uses on one resource of one API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// The API group (`""` for the core group).
    pub group: &'static str,
    /// The resource (plural), with a subresource after a slash (`featurerollouts/status`).
    pub resource: &'static str,
    /// The verbs used.
    pub verbs: &'static [&'static str],
    /// Why: the code path that makes these calls.
    pub why: &'static str,
    /// Whether the rule is needed in the cluster scope even when the controller watches
    /// only some namespaces (leader election's Lease lives in the controller's own
    /// namespace and is granted there by a Role).
    pub own_namespace_only: bool,
}

/// Every permission the controller needs.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        group: "sluice.dev",
        resource: "featurerollouts",
        verbs: &["list", "watch", "patch"],
        why: "controller: list and watch rollouts; add and remove the finalizer (JSON patch)",
        own_namespace_only: false,
    },
    Permission {
        group: "sluice.dev",
        resource: "featurerollouts/status",
        verbs: &["patch"],
        why: "controller: write status through the status subresource",
        own_namespace_only: false,
    },
    Permission {
        group: "",
        resource: "configmaps",
        verbs: &["get", "create", "update"],
        why: "configMap target: read the flagd document, create it when missing, replace it with its resourceVersion (optimistic concurrency)",
        own_namespace_only: false,
    },
    Permission {
        group: "core.openfeature.dev",
        resource: "featureflags",
        verbs: &["get", "patch"],
        why: "featureFlag target: read the flag, patch only Sluice's key",
        own_namespace_only: false,
    },
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "controller: publish an Event on every transition (kube-runtime's Recorder)",
        own_namespace_only: false,
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        why: "leader election: acquire and renew the Lease",
        own_namespace_only: true,
    },
];

/// The permissions the sync server adds (`--sync-address`; chart: `sync.enabled`): every
/// replica watches the one object of each target an app follows (by field selector).
pub const SYNC_PERMISSIONS: &[Permission] = &[
    Permission {
        group: "",
        resource: "configmaps",
        verbs: &["list", "watch"],
        why: "sync server: watch the ConfigMap a connected app follows",
        own_namespace_only: false,
    },
    Permission {
        group: "core.openfeature.dev",
        resource: "featureflags",
        verbs: &["list", "watch"],
        why: "sync server: watch the FeatureFlag a connected app follows",
        own_namespace_only: false,
    },
];
