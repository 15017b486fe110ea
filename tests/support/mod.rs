//! Helpers shared by the integration tests: a real Prometheus server loaded with known
//! data, an OpenMetrics writer for that data, a fake HTTP server whose misbehaviour a test
//! chooses, an in-memory Kubernetes API, an in-memory reconcile shell and `sluice standalone` as
//! a process.
//!
//! Each test binary uses only some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod fake;
pub mod kube_api;
pub mod memory_shell;
pub mod openmetrics;
pub mod server;
pub mod standalone;
pub mod tls;
