//! The command line of `sluice controller`.

use crate::telemetry::LogFormat;

/// The arguments of `sluice controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Watch only this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// Only rollouts matching this label selector (e.g. `team=shop,tier!=test`).
    #[arg(long)]
    pub selector: Option<String>,
    /// Where /livez, /readyz and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub admin_address: String,
    /// Log format; filter from RUST_LOG.
    #[arg(long, value_enum, env = "SLUICE_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
    /// Elect a leader through a Lease (turn off for a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The Lease's name.
    #[arg(long, default_value = "sluice-controller")]
    pub lease_name: String,
    /// The Lease's namespace (required when leader election is on).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// The Prometheus used when a rollout has no spec.analysis.prometheus.
    #[arg(long)]
    pub default_prometheus: Option<String>,
    /// The only directory whose files rollouts may name as Prometheus credentials
    /// (`bearerTokenFile`, `basicAuth.passwordFile`); the chart mounts its auth Secret here.
    #[arg(long, default_value = "/etc/sluice/prometheus")]
    pub prometheus_credentials_dir: std::path::PathBuf,
    /// Notification webhooks for every rollout.
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,
    /// Simulated rollouts per figure of the plan computed for each rollout from the
    /// traffic its first looks observe (status.plan, condition PlanCanDetect); 0 turns
    /// the plans off.
    #[arg(long, default_value_t = crate::reconcile::PlanSettings::default().runs)]
    pub plan_runs: usize,
    /// flagd's sync protocol for the rollouts' targets, served by every replica.
    #[command(flatten)]
    pub sync: crate::sync::SyncArgs,
}
