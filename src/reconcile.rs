//! One reconcile of one rollout, the same in the Kubernetes controller and in standalone
//! mode: observe (look at the metrics when a look is due), decide ([`engine::plan`]),
//! then act in the order that keeps the flag safe:
//!
//! 1. write the flag document (skipped when it already says the same),
//! 2. write the status that claims it (skipped when it did not change),
//! 3. publish the plan's events and one audit line per flag change,
//! 4. hand the events to the notifier, if any, which delivers them in the background.
//!
//! The two modes differ only in their [`Shell`]: where the flag document and the status
//! live and where events go. A crash between two steps is repaired by the next reconcile:
//! the plan is a pure function of the persisted status, so it renders the same flag.
//!
//! When the flag cannot be written (a document that is not flagd's, a failing API), the
//! engine plans what to persist instead ([`engine::plan_write_failure`]): the stage it
//! had, the look just made (so a failing verdict still rolls back at the next attempt,
//! even when the next look is inconclusive) and why, in the `Ready` condition.
//!
//! Every reconcile writes the flag the plan wants (the write is skipped when the document
//! already says it), so a flag changed or deleted by somebody else is repaired at the next
//! reconcile, with an audit line that says what the document served.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::analysis::judge;
use crate::analysis::look::{LookAt, RolloutRef, look};
use crate::analysis::source::{Measured, Measurement, ProviderError};
use crate::crd::validate::ValidSpec;
use crate::crd::{
    AnalysisStatus, FeatureRolloutSpec, FeatureRolloutStatus, Phase, Problem, PrometheusSpec,
    validate,
};
use crate::engine::{self, Decision, Event, Observations, WriteFailure};
use crate::flag_store::FlagWrite;
use crate::flagd::{FlagDefinition, FlagState, FlagdError, Served};
use crate::notify::Notifier;
use crate::prometheus::{PrometheusClient, client_config};
use crate::runtime::BackgroundJobs;
use crate::simulate::plan::summary::{self as plan_summary, ObservedTraffic};
use crate::simulate::plan::{self as simulated_plan, PlanError, Report};

/// Why writing the flag failed.
#[derive(Debug, thiserror::Error)]
pub enum FlagWriteError {
    /// The document holds something Sluice must not overwrite: it is left alone until
    /// somebody fixes it.
    #[error("the flag document cannot be changed safely: {0}")]
    Document(#[from] FlagdError),
    /// The target cannot be used where Sluice runs (a `file` target in the cluster, a
    /// `configMap` in standalone mode): nothing is written until the spec changes.
    #[error("{0}")]
    Target(String),
    /// The target could not be read or written (API error, conflicts past the retries,
    /// a file system error); worth another attempt later.
    #[error("{message}")]
    Unavailable {
        /// A bounded label for metrics (`conflict`, `api`, `io`, ...).
        category: &'static str,
        /// What failed, without secrets.
        message: String,
    },
}

impl FlagWriteError {
    /// The failure as the engine plans on it.
    pub fn failure(&self) -> WriteFailure {
        match self {
            FlagWriteError::Document(e) => WriteFailure::Document(e.to_string()),
            FlagWriteError::Target(e) => WriteFailure::Target(e.clone()),
            FlagWriteError::Unavailable { message, .. } => {
                WriteFailure::Unavailable(message.clone())
            }
        }
    }

    /// A bounded name for metrics labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            FlagWriteError::Document(e) => e.category(),
            FlagWriteError::Target(_) => "TargetUnsupported",
            FlagWriteError::Unavailable { category, .. } => category,
        }
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flag could not be written; the status says so.
    #[error("writing the flag failed: {0}")]
    WriteFlag(#[source] FlagWriteError),
    /// The status could not be written.
    #[error("writing the status failed: {message}")]
    WriteStatus {
        /// A bounded label for metrics.
        category: &'static str,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::WriteFlag(e) => e.category(),
            Error::WriteStatus { category, .. } => category,
        }
    }

    /// Whether waiting for a change of the inputs is the only cure (a foreign flag
    /// document); otherwise the reconcile is worth retrying with backoff.
    pub fn needs_fix(&self) -> bool {
        matches!(
            self,
            Error::WriteFlag(FlagWriteError::Document(_) | FlagWriteError::Target(_))
        )
    }
}

/// Where one rollout's flag and status live: the part of a reconcile that differs
/// between the controller and standalone mode.
pub trait Shell {
    /// Makes the rollout's flag document serve `flag` in `state`, keeping every other flag
    /// and member: [`crate::flag_store::write_flag`] on the store of the rollout's
    /// target (compare-and-swap, bounded retries). Says whether the document changed and
    /// what it served before.
    fn write_flag(
        &self,
        flag: &FlagDefinition,
        state: &FlagState,
    ) -> impl Future<Output = Result<FlagWrite, FlagWriteError>> + Send;

    /// Writes the rollout's status. Only called when it changed.
    fn write_status(
        &self,
        status: &FeatureRolloutStatus,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Publishes an event. Best effort: a lost event never fails a reconcile.
    fn publish(&self, event: &Event) -> impl Future<Output = ()> + Send;
}

/// How a shell computes the plan of its running rollouts ([`plan_summary`]): what each
/// stage can detect at the traffic the first looks observed, kept in `status.plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanSettings {
    /// Simulated rollouts per figure (fewer when the plan has too many looks for them).
    pub runs: usize,
    /// The longest one computation may take; past it, the plan says it ran out of time.
    pub limit: Duration,
    /// Computations at a time across every rollout (each takes one core).
    pub concurrency: usize,
}

impl Default for PlanSettings {
    /// 100 runs per figure, 2 minutes, one at a time.
    fn default() -> Self {
        PlanSettings {
            runs: 100,
            limit: Duration::from_secs(120),
            concurrency: 1,
        }
    }
}

/// What computes a plan: [`simulated_plan::run_until`], or a stand-in a test gives.
pub type PlanRunner = Arc<
    dyn Fn(&simulated_plan::Input, Option<std::time::Instant>) -> Result<Report, PlanError>
        + Send
        + Sync,
>;

/// The plans being computed off the reconcile path, and the ones waiting to be written.
struct Plans {
    settings: PlanSettings,
    runner: PlanRunner,
    jobs: BackgroundJobs<crate::crd::PlanSummary>,
}

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plans")
            .field("settings", &self.settings)
            .field("running", &self.jobs.running())
            .finish_non_exhaustive()
    }
}

/// What a reconcile shares across rollouts: Prometheus clients (one per distinct
/// configuration, so connections are reused), the default Prometheus, the notifier and
/// the plans computed in the background.
#[derive(Debug, Default)]
pub struct Context {
    default_prometheus: Option<PrometheusSpec>,
    clients: Mutex<HashMap<String, PrometheusClient>>,
    notifier: Option<Notifier>,
    credentials_dir: Option<PathBuf>,
    plans: Option<Plans>,
}

impl Context {
    /// A context whose rollouts without `spec.analysis.prometheus` use `default` (if any).
    pub fn new(default_prometheus: Option<PrometheusSpec>) -> Self {
        Context {
            default_prometheus,
            clients: Mutex::default(),
            notifier: None,
            credentials_dir: None,
            plans: None,
        }
    }

    /// The same context, computing each running rollout's plan from the traffic its
    /// first looks observe ([`plan_summary`]) and again when its stages or metrics
    /// change, off the reconcile path: on the blocking pool, `settings.concurrency` at a
    /// time, each bounded by `settings.limit`. The summary is written with the rollout's
    /// next status write; a stage that cannot detect its tolerance sets `PlanCanDetect`
    /// to False and publishes one Warning event. Without this, no plan is computed.
    pub fn with_plans(mut self, settings: PlanSettings) -> Self {
        self.plans = Some(Plans {
            settings,
            runner: Arc::new(simulated_plan::run_until),
            jobs: BackgroundJobs::new(settings.concurrency),
        });
        self
    }

    /// The same context, computing plans with `runner` instead of the simulation (for
    /// tests: a runner that blocks shows that looks and rollbacks do not wait for it).
    /// Turns plans on with the default settings if they were off.
    pub fn with_plan_runner(mut self, runner: PlanRunner) -> Self {
        if self.plans.is_none() {
            self = self.with_plans(PlanSettings::default());
        }
        if let Some(plans) = &mut self.plans {
            plans.runner = runner;
        }
        self
    }

    /// Forgets what is kept for a rollout that is gone (its plan being computed or
    /// waiting to be written).
    pub fn forget(&self, id: &RolloutRef<'_>) {
        if let Some(plans) = &self.plans {
            plans.jobs.forget(&plan_key(id));
        }
    }

    /// The same context, reading Prometheus credentials (`bearerTokenFile`,
    /// `basicAuth.passwordFile`) only from files under `dir`. The controller sets this:
    /// a rollout's author must not be able to make it send any file it can read (its own
    /// ServiceAccount token, say) to an address of their choosing.
    pub fn with_credentials_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.credentials_dir = Some(dir.into());
        self
    }

    /// Refuses credential files outside the allowed directory, naming the field.
    fn check_credentials(&self, settings: &PrometheusSpec) -> Result<(), (String, String)> {
        let Some(dir) = &self.credentials_dir else {
            return Ok(());
        };
        let files = [
            ("bearerTokenFile", settings.bearer_token_file.as_deref()),
            (
                "basicAuth.passwordFile",
                settings
                    .basic_auth
                    .as_ref()
                    .map(|b| b.password_file.as_str()),
            ),
        ];
        for (field, file) in files {
            let Some(file) = file else { continue };
            let path = Path::new(file);
            let inside = path.is_absolute()
                && path.starts_with(dir)
                && !path.components().any(|c| c == Component::ParentDir);
            if !inside {
                return Err((
                    format!("spec.analysis.prometheus.{field}"),
                    format!(
                        "{file:?} is not under {}, the only directory Sluice reads Prometheus credentials from (mount the Secret there; see --prometheus-credentials-dir)",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The same context, handing every reconcile's events to `notifier` after they are
    /// published (delivery runs in the background: it never delays a reconcile).
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// What this context finds wrong with a spec that [`validate`] accepted: a spec with
    /// metrics but no Prometheus to ask, a credential file outside the allowed directory,
    /// an address or client setting that cannot be used. Each is a mistake only a change
    /// can cure (of the spec, or of Sluice's flags), never a failed look: the engine holds
    /// the rollout on them ([`Observations::setup_problems`]).
    pub fn setup_problems(&self, valid: &ValidSpec) -> Vec<Problem> {
        if !valid.has_metrics() {
            return Vec::new();
        }
        let Some(settings) = self.settings(valid) else {
            return vec![Problem {
                field: "spec.analysis.prometheus.address".into(),
                message: "no Prometheus is configured: set it (or start Sluice with --default-prometheus)".into(),
            }];
        };
        if let Err((field, message)) = self.check_credentials(settings) {
            return vec![Problem { field, message }];
        }
        match self.cached_client(settings) {
            Err(ClientSetup::Config(message)) => vec![Problem {
                field: "spec.analysis.prometheus".into(),
                message,
            }],
            Err(ClientSetup::Client(
                e @ (crate::prometheus::Error::InvalidUrl { .. }
                | crate::prometheus::Error::InvalidConfig { .. }),
            )) => vec![Problem {
                field: "spec.analysis.prometheus".into(),
                message: e.to_string(),
            }],
            _ => Vec::new(),
        }
    }

    /// The Prometheus settings a spec uses: its own, or the default.
    fn settings<'a>(&'a self, valid: &'a ValidSpec) -> Option<&'a PrometheusSpec> {
        valid
            .prometheus
            .as_ref()
            .or(self.default_prometheus.as_ref())
    }

    /// The metrics provider for a spec: the Prometheus client of its settings. A new
    /// provider is chosen here, from the spec's settings for it.
    fn client(&self, valid: &ValidSpec) -> Result<PrometheusClient, String> {
        let settings = self.settings(valid).ok_or(
            "no Prometheus is configured: set spec.analysis.prometheus.address (or start Sluice with --default-prometheus)",
        )?;
        self.check_credentials(settings)
            .map_err(|(field, message)| format!("{field}: {message}"))?;
        self.cached_client(settings).map_err(|e| match e {
            ClientSetup::Config(message) => format!("spec.analysis.prometheus: {message}"),
            ClientSetup::Client(e) => format!("spec.analysis.prometheus: {e}"),
        })
    }

    /// The client for `settings`, made once and kept (a client holds a connection pool
    /// and its TLS setup: too costly to build at every reconcile).
    fn cached_client(&self, settings: &PrometheusSpec) -> Result<PrometheusClient, ClientSetup> {
        let key =
            serde_json::to_string(settings).map_err(|e| ClientSetup::Config(e.to_string()))?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let config = client_config(settings).map_err(ClientSetup::Config)?;
        let client = PrometheusClient::new(config).map_err(ClientSetup::Client)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Why no Prometheus client could be made for a spec's settings.
enum ClientSetup {
    /// The settings do not make a client configuration.
    Config(String),
    /// The client refused the configuration.
    Client(crate::prometheus::Error),
}

/// One rollout as the shell read it.
#[derive(Clone, Debug)]
pub struct Rollout<'a> {
    /// Namespace (empty in standalone mode) and name.
    pub id: RolloutRef<'a>,
    /// The spec.
    pub spec: &'a FeatureRolloutSpec,
    /// The persisted status, if any.
    pub status: Option<&'a FeatureRolloutStatus>,
    /// `metadata.generation`, if the store has one.
    pub generation: Option<i64>,
}

/// What a reconcile did.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The engine's decision.
    pub decision: Decision,
    /// The status now persisted (unchanged when nothing was written).
    pub status: FeatureRolloutStatus,
    /// Whether the flag document changed.
    pub flag_changed: bool,
    /// Whether the status was written.
    pub status_written: bool,
    /// When to reconcile again; `None` waits for a change of the rollout.
    pub next_look: Option<Timestamp>,
    /// The events published (transitions only).
    pub events: Vec<Event>,
    /// How long the look at the metrics took, when one was made.
    pub analysis_took: Option<Duration>,
}

/// Observes, decides and acts for one rollout at `now`.
pub async fn reconcile<S: Shell>(
    shell: &S,
    context: &Context,
    rollout: Rollout<'_>,
    now: Timestamp,
) -> Result<Outcome, Error> {
    let spec = rollout.spec;
    let mut analysis = None;
    let mut analysis_took = None;
    // Validated once: the look, the setup check and the plan all take this.
    let checked = validate(spec);
    let valid = checked.as_ref().ok();
    let setup_problems = valid
        .map(|valid| context.setup_problems(valid))
        .unwrap_or_default();
    if setup_problems.is_empty()
        && engine::analysis_due_validated(spec, valid, rollout.status, now)
        && let (Some(valid), Some(status)) = (valid, rollout.status)
        && let (Some(stage), Some(started)) = (status.stage, status.stage_started_at)
    {
        let at = LookAt {
            stage,
            stage_started_at: started,
            now,
        };
        let began = Instant::now();
        let previous = status.last_analysis.as_ref();
        analysis = Some(match context.client(valid) {
            Ok(client) => look(&client, valid, rollout.id.clone(), at, previous).await,
            Err(reason) => unreachable_look(valid, at, previous, reason),
        });
        analysis_took = Some(began.elapsed());
    }

    let observations = Observations {
        analysis,
        generation: rollout.generation,
        setup_problems,
    };
    let mut plan = engine::plan_validated(
        spec,
        checked.as_ref().map_err(Vec::as_slice),
        rollout.status,
        &observations,
        now,
    );
    if let (Some(plans), Ok(valid)) = (&context.plans, checked.as_ref()) {
        plans.step(&rollout.id, spec, valid, &mut plan, now);
    }
    let previous = rollout.status.cloned().unwrap_or_default();

    // 1. The flag, before the status that claims it.
    let mut written = None;
    if let Some(state) = &plan.flag {
        match shell.write_flag(&definition(spec), state).await {
            Ok(write) => written = Some((write, state)),
            Err(error) => {
                let held = engine::plan_write_failure(rollout.status, &plan, &error.failure(), now);
                for event in &held.events {
                    shell.publish(event).await;
                }
                if held.status != previous {
                    shell.write_status(&held.status).await?;
                }
                if let Some(notifier) = &context.notifier
                    && !held.events.is_empty()
                {
                    notifier.notify(
                        &rollout.id,
                        spec,
                        &previous,
                        &held.status,
                        &held.events,
                        now,
                    );
                }
                return Err(Error::WriteFlag(error));
            }
        }
    }
    let flag_changed = written.as_ref().is_some_and(|(w, _)| w.changed);

    // 2. The status, only when it changed (no write, no watch event, no wake-up).
    let status_written = plan.status != previous || rollout.status.is_none();
    if status_written {
        shell.write_status(&plan.status).await?;
    }

    // 3. Events and the audit trail.
    for event in &plan.events {
        shell.publish(event).await;
    }
    if let Some((write, state)) = written.as_ref().filter(|(w, _)| w.changed) {
        audit(&rollout, &previous, &plan, &write.before, state);
    }
    // 4. Notifications, in the background.
    if let Some(notifier) = &context.notifier {
        notifier.notify(
            &rollout.id,
            spec,
            &previous,
            &plan.status,
            &plan.events,
            now,
        );
    }

    Ok(Outcome {
        decision: plan.decision,
        status: plan.status,
        flag_changed,
        status_written,
        next_look: plan.next_look,
        events: plan.events,
        analysis_took,
    })
}

fn plan_key(id: &RolloutRef<'_>) -> String {
    format!("{}/{}", id.namespace, id.name)
}

impl Plans {
    /// The plan's part of a reconcile, after the engine planned and before anything is
    /// written; never waits. Puts a finished summary of the current spec into the status
    /// (with its condition and event), or starts its computation once a look observed
    /// the traffic, or does nothing (one runs already, or no slot is free: the next
    /// reconcile asks again).
    fn step(
        &self,
        id: &RolloutRef<'_>,
        spec: &FeatureRolloutSpec,
        valid: &ValidSpec,
        plan: &mut engine::Plan,
        now: Timestamp,
    ) {
        let key = plan_key(id);
        if simulated_plan::compared_metrics(spec).is_empty() {
            self.jobs.forget(&key);
            plan_summary::clear(&mut plan.status);
            return;
        }
        let digest = plan_summary::digest(spec);
        if plan
            .status
            .plan
            .as_ref()
            .is_some_and(|p| p.digest == digest)
        {
            // Written (or carried by the engine): nothing kept for it any more.
            self.jobs.forget(&key);
            return;
        }
        if let Some(summary) = self.jobs.finished(&key, &digest) {
            if let Some(error) = &summary.error {
                tracing::warn!(namespace = id.namespace, rollout = id.name, %error, "the plan could not be computed");
            }
            if let Some(event) = plan_summary::apply(&mut plan.status, summary, now) {
                plan.events.push(event);
            }
            return;
        }
        if self.jobs.is_running(&key) || plan.status.phase.is_finished() {
            return;
        }
        // The traffic of the latest look, or (for changed stages, before a look of a
        // plain stage observed it again) the traffic the last plan assumed.
        let observed = plan_summary::observed_traffic(spec, valid, &plan.status).or_else(|| {
            plan.status
                .plan
                .as_ref()
                .and_then(ObservedTraffic::of_summary)
                .filter(|o| o.fits(spec))
        });
        let Some(observed) = observed else { return };
        let input = plan_summary::input(spec, &observed, self.settings.runs);
        let runner = self.runner.clone();
        let limit = self.settings.limit;
        let (tag, panic_digest) = (digest.clone(), digest.clone());
        let (panic_spec, panic_observed) = (spec.clone(), observed.clone());
        let runs = self.settings.runs;
        let started = self.jobs.try_start(
            &key,
            tag,
            move || {
                let deadline = std::time::Instant::now() + limit;
                let mut input = input;
                match simulated_plan::affordable_runs(&input) {
                    Ok(most) => input.runs = input.runs.min(most).max(10),
                    Err(e) => {
                        return plan_summary::failed(
                            &PlanError::Input(e),
                            &input.spec,
                            &observed,
                            input.runs,
                            digest,
                            now,
                        );
                    }
                }
                match runner(&input, Some(deadline)) {
                    Ok(report) => plan_summary::summarize(&report, &observed, digest, now),
                    Err(e) => {
                        plan_summary::failed(&e, &input.spec, &observed, input.runs, digest, now)
                    }
                }
            },
            move |panic| {
                plan_summary::failed(
                    &PlanError::Panicked(panic),
                    &panic_spec,
                    &panic_observed,
                    runs,
                    panic_digest,
                    now,
                )
            },
        );
        if started {
            tracing::debug!(
                namespace = id.namespace,
                rollout = id.name,
                "computing the plan"
            );
        }
    }
}

/// The flag state to leave behind when a rollout is deleted: the baseline, unless the
/// rollout was promoted (then the promoted flag stays) or never started (then Sluice
/// never wrote the flag and has nothing to undo).
pub fn state_on_delete(status: Option<&FeatureRolloutStatus>) -> Option<FlagState> {
    let status = status?;
    // The engine sets `weight` whenever it writes the flag.
    if status.phase == Phase::Promoted || status.weight.is_none() {
        return None;
    }
    Some(FlagState::Baseline)
}

/// Leaves the flag safe before a rollout goes away ([`state_on_delete`]). Returns
/// whether the document changed.
pub async fn release<S: Shell>(
    shell: &S,
    spec: &FeatureRolloutSpec,
    status: Option<&FeatureRolloutStatus>,
) -> Result<bool, FlagWriteError> {
    let Some(state) = state_on_delete(status) else {
        return Ok(false);
    };
    let definition = definition(spec);
    if definition.validate().is_err() {
        // A flag that cannot be rendered was never written by Sluice.
        return Ok(false);
    }
    let write = shell.write_flag(&definition, &state).await?;
    if write.changed {
        tracing::info!(
            target: "sluice::audit",
            flag = %definition.key,
            from_weight = %write.before.exposure(),
            to_weight = %state.exposure(),
            reason = "deleted",
            "flag changed: the rollout was deleted, everybody gets the baseline"
        );
    }
    Ok(write.changed)
}

/// The flag as the spec defines it (also for a spec that fails other checks).
pub fn definition(spec: &FeatureRolloutSpec) -> FlagDefinition {
    FlagDefinition {
        key: spec.flag.key.clone(),
        variants: spec.flag.variants.clone().into_iter().collect(),
        baseline: spec.flag.baseline.clone(),
        candidate: spec.flag.candidate.clone(),
    }
}

/// A look that could not reach Prometheus at all: every metric is an `Error`. It goes
/// through the same judgement as any look, so the evidence kept in `previous` carries on.
fn unreachable_look(
    valid: &ValidSpec,
    at: LookAt,
    previous: Option<&AnalysisStatus>,
    reason: String,
) -> AnalysisStatus {
    let measured: Measured = valid
        .metrics
        .iter()
        .map(|metric| {
            let error = ProviderError::Unavailable(reason.clone());
            (metric.name.clone(), Measurement::failed(error))
        })
        .collect();
    judge::judge_look(valid, at, measured, None, previous)
}

/// One structured line per flag change, on its own target (`sluice::audit`): what the
/// document served before (read from it, not from the status, which may be missing or
/// stale) and what it serves now. A change the plan did not make (the status already
/// claimed this exposure) repairs somebody else's edit: reason `drift_repaired`.
fn audit(
    rollout: &Rollout<'_>,
    previous: &FeatureRolloutStatus,
    plan: &engine::Plan,
    before: &Served,
    state: &FlagState,
) {
    let next = &plan.status;
    let claimed = rollout.status.is_some_and(|s| {
        (s.phase, s.stage, s.weight, s.audience)
            == (next.phase, next.stage, next.weight, next.audience)
    });
    let (reason, message) = if claimed {
        (
            "drift_repaired",
            format!(
                "the document served {} instead of the rollout's {}: repaired",
                before.exposure(),
                state.exposure()
            ),
        )
    } else {
        (
            plan.decision.kind(),
            next.message.clone().unwrap_or_default(),
        )
    };
    let verdict = next
        .last_analysis
        .as_ref()
        .map(|a| {
            format!(
                "{:?}: {}",
                a.verdict,
                a.message.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "no analysis".to_owned());
    tracing::info!(
        target: "sluice::audit",
        namespace = rollout.id.namespace,
        rollout = rollout.id.name,
        flag = %rollout.spec.flag.key,
        from_weight = %before.exposure(),
        to_weight = %state.exposure(),
        from_phase = ?previous.phase,
        phase = ?next.phase,
        stage = next.stage_name.as_deref().unwrap_or_default(),
        reason,
        verdict = %verdict,
        "flag changed: {message}"
    );
}
