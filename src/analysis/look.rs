//! One look at the metrics: ask the metrics provider for every metric of a valid spec
//! (all at once; the provider bounds each request) and for the users of each cohort, then
//! judge the measurements.
//!
//! This is the only part of the analysis that waits on I/O, and it does none itself: the
//! provider ([`super::source::MetricsProvider`]) does. The controller, standalone mode and
//! `sluice analyze` all call it, then hand the result to the engine.

use futures::future::join_all;

pub use super::judge::LookAt;
use super::judge::{self};
pub use super::source::RolloutRef;
use super::source::{LookWindow, Measured, MetricsProvider};
use crate::crd::AnalysisStatus;
use crate::crd::validate::ValidSpec;

/// Makes one look for the stage `at.stage` of a valid spec through `provider`. A
/// metric the provider cannot measure is an `Error` verdict for that metric; it never
/// fails the look as a whole.
pub async fn look<P: MetricsProvider>(
    provider: &P,
    valid: &ValidSpec,
    rollout: RolloutRef<'_>,
    at: LookAt,
    previous: Option<&AnalysisStatus>,
) -> AnalysisStatus {
    let window = LookWindow::new(rollout, at);
    let metrics = join_all(valid.metrics.iter().map(|metric| {
        let window = &window;
        async move {
            let measurement = provider.observe(valid, metric, window).await;
            (metric.name.clone(), measurement)
        }
    }));
    let users = provider.users(valid, &window);
    let (measured, users) = futures::join!(metrics, users);
    let measured: Measured = measured.into_iter().collect();
    judge::judge_look(valid, at, measured, users, previous)
}
