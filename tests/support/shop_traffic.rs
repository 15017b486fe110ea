//! Rollouts through the controller's own reconcile with every look answered by a real
//! Prometheus loaded with known traffic: the data (`http_requests_total` of job `shop`
//! every 15 s for an hour from 2023-01-01T00:00:00Z), the spec of a rollout that reads it
//! with an error-rate ratio, the injected clock's minutes, and the harness holding the
//! rollout.

use jiff::{SignedDuration, Timestamp};

use super::kube_api::{Harness, rollout, rollout_path};
use super::openmetrics::OpenMetrics;
use super::server::PrometheusServer;

/// The data's first sample: 2023-01-01T00:00:00Z.
pub const START: i64 = 1_672_531_200;
/// Seconds between samples.
pub const STEP: i64 = 15;
/// Samples per series: an hour.
pub const POINTS: usize = 241;

/// `http_requests_total{job="shop"}` for each `(flag, baseline errors, candidate errors)`:
/// at every step 1,000 more requests in each cohort (variant `off` the baseline, `on` the
/// candidate), that many of them with code 500 and the rest with code 200.
pub fn requests(flags: &[(&str, f64, f64)]) -> OpenMetrics {
    let mut data = OpenMetrics::default();
    for &(flag, baseline_errors, candidate_errors) in flags {
        for (variant, errors) in [("off", baseline_errors), ("on", candidate_errors)] {
            for (code, increment) in [("200", 1000.0 - errors), ("500", errors)] {
                let labels = [
                    ("job", "shop"),
                    ("feature_flag_key", flag),
                    ("feature_flag_result_variant", variant),
                    ("code", code),
                ];
                data.counter("http_requests", &labels, START, STEP, POINTS, increment);
            }
        }
    }
    data
}

/// The spec of a rollout of the boolean flag `flag` (baseline `off`) into ConfigMap
/// `shop-flags` through `stages` (the YAML lines of the list, `  - { ... }` each, inserted
/// as they are), looking every minute at the error rate the data holds through
/// `prometheus`, with a tolerance of 10 % over the baseline's.
pub fn spec(flag: &str, prometheus: &str, stages: &str) -> String {
    format!(
        r#"
flag: {{ key: {flag}, variants: {{ "on": true, "off": false }}, baseline: "off", candidate: "on" }}
target: {{ configMap: {{ name: shop-flags }} }}
stages:
{stages}
analysis:
  interval: 1m
  prometheus: {{ address: "{prometheus}", timeout: 5s }}
  metrics:
    - name: error-rate
      ratio:
        errors: 'sum by (feature_flag_result_variant) (increase(http_requests_total{{job="shop",code=~"5..",feature_flag_key="{{{{ flag }}}}"}}[{{{{ window }}}}]))'
        requests: 'sum by (feature_flag_result_variant) (increase(http_requests_total{{job="shop",feature_flag_key="{{{{ flag }}}}"}}[{{{{ window }}}}]))'
      maxIncrease: {{ relative: "10%" }}
"#
    )
}

/// A minute into the data, plus `minutes`.
pub fn at(minutes: i64) -> Timestamp {
    Timestamp::from_second(START).unwrap() + SignedDuration::from_mins(1 + minutes)
}

/// A real Prometheus holding `data`, and a harness at [`at`]`(0)` holding rollout `name`
/// with the spec `spec` gives for that Prometheus's URL.
pub async fn start(
    data: &OpenMetrics,
    name: &str,
    spec: impl FnOnce(&str) -> String,
) -> (PrometheusServer, Harness) {
    let prometheus = PrometheusServer::start(data).await;
    let h = Harness::new(at(0));
    h.api.insert(
        &rollout_path(name),
        rollout(name, &spec(&prometheus.base_url())),
    );
    (prometheus, h)
}
