{{- /*
Generated from src/rbac.rs PERMISSIONS by tests/chart.rs. Do not edit: after a change
to the table run `SLUICE_BLESS=1 cargo test --test chart`.
*/ -}}

{{- /* The rules the controller needs where it watches rollouts. */ -}}
{{- define "sluice.rules.watched" -}}
# controller: list and watch rollouts; add and remove the finalizer (JSON patch)
- apiGroups: ["sluice.dev"]
  resources: ["featurerollouts"]
  verbs: ["list", "watch", "patch"]
# controller: write status through the status subresource
- apiGroups: ["sluice.dev"]
  resources: ["featurerollouts/status"]
  verbs: ["patch"]
# configMap target: read the flagd document, create it when missing, replace it with its resourceVersion (optimistic concurrency)
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "update"]
# featureFlag target: read the flag, patch only Sluice's key
- apiGroups: ["core.openfeature.dev"]
  resources: ["featureflags"]
  verbs: ["get", "patch"]
# controller: publish an Event on every transition (kube-runtime's Recorder)
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- /* The rules the controller needs in its own namespace (leader election). */ -}}
{{- define "sluice.rules.leaderElection" -}}
# leader election: acquire and renew the Lease
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{- /* The rules the sync server adds where rollouts are watched (sync.enabled). */ -}}
{{- define "sluice.rules.sync" -}}
# sync server: watch the ConfigMap a connected app follows
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch"]
# sync server: watch the FeatureFlag a connected app follows
- apiGroups: ["core.openfeature.dev"]
  resources: ["featureflags"]
  verbs: ["list", "watch"]
{{- end }}
