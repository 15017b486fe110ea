//! Helpers shared by the integration tests: a real Prometheus server loaded with known
//! data, an OpenMetrics writer for that data, a fake HTTP server whose misbehaviour a test
//! chooses, an in-memory Kubernetes API and an in-memory reconcile shell, `sluice standalone`
//! as a process, a real kube-apiserver with etcd, the FeatureRollout manifests of known
//! validity, the Helm chart rendered, and known shop traffic for the controller's looks.
//!
//! Each test binary uses only some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod apiserver;
pub mod chart_release;
pub mod crd_cases;
pub mod fake;
pub mod helm;
pub mod kube_api;
pub mod memory_shell;
pub mod openmetrics;
pub mod server;
pub mod shop_traffic;
pub mod standalone;
pub mod sync_app;
pub mod tls;
