//! Prometheus: the HTTP API client, per-cohort splitting of query results and the
//! query templates of a `FeatureRollout`'s metrics.
//!
//! - [`client`]: [`PrometheusClient`] sends instant queries to anything that speaks the
//!   Prometheus HTTP API (Prometheus, Thanos, Mimir, VictoriaMetrics) with a timeout per
//!   request, bounded retries, auth read from files at request time and TLS with a
//!   custom CA.
//! - [`response`]: the parsed result of a query ([`QueryResult`]).
//! - [`cohort`]: splits one vector result into the baseline and candidate cohorts
//!   ([`split_values`], [`split_buckets`]); a cohort without series is "no data", not
//!   an error.
//! - [`template`]: `{{ name }}` placeholders, substituted with values escaped for the
//!   PromQL context they land in.
//! - [`provider`]: the client as the analysis' [`crate::analysis::source::MetricsProvider`]:
//!   renders a metric's queries, runs them at once and splits the answers by cohort.
//!
//! Every failure is an [`Error`] (or a [`TemplateError`] while validating a spec) with a
//! bounded [`Error::category`] for metric labels and Event reasons. Secrets (tokens,
//! passwords) never appear in `Debug` output, errors or logs: the client reads them from
//! their files for each request and never keeps them.

pub mod client;
pub mod cohort;
pub mod error;
pub mod provider;
pub mod response;
pub mod template;

pub use client::{BasicAuth, ClientConfig, PrometheusClient, TlsConfig, ensure_crypto_provider};
pub use cohort::{CohortSpec, DEFAULT_COHORT_LABEL, global_value, split_buckets, split_values};
pub use error::Error;
pub use provider::client_config;
pub use response::{QueryResponse, QueryResult, Sample, Series};
pub use template::{BUILTIN_VARIABLES, Template, TemplateError, Variables};
