//! Helpers shared by the Prometheus integration tests: a real Prometheus server loaded
//! with known data, an OpenMetrics writer for that data, and a fake HTTP server whose
//! misbehaviour a test chooses.
//!
//! Each test binary uses only some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod fake;
pub mod kube_api;
pub mod openmetrics;
pub mod server;
pub mod tls;
