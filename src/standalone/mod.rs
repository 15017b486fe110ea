//! Standalone mode: the same engine and analysis as the controller, without a cluster.
//!
//! `sluice standalone --rollouts DIR --state DIR` reads `FeatureRollout` YAML files from
//! `DIR` (new, changed and removed files are picked up by polling), keeps each rollout's
//! status in `STATE/<name>.status.json` and writes its flag into a flagd JSON file, every
//! write an atomic replace. Each rollout runs in its own task, reconciled at the engine's
//! `next_look` and whenever its file or its controls change, with a timeout: a slow or
//! failing rollout never blocks the others.
//!
//! - **Controls**: `sluice ctl` writes `STATE/<name>.control.json`, per-field overrides of
//!   `spec.control` ([`store::ControlOverride`]) read at the next poll, so nobody edits the
//!   user's YAML.
//! - **Removed files**: a rollout missing from the directory for two polls in a row is
//!   released ([`reconcile::release`]: the baseline unless promoted) and its status and
//!   controls are forgotten, as deleting the object does in the cluster. A file that
//!   fails to parse keeps its rollouts running on their last good spec.
//! - **Restarts** continue from the status files.
//! - **Events** go to the log (stderr, or `STATE/sluice.log` while the live table owns the
//!   terminal) and to `STATE/events.log` (JSON lines), with every flag write.

pub mod ctl;
pub mod source;
pub mod store;
pub mod view;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::analysis::look::RolloutRef;
use crate::crd::{FeatureRolloutSpec, FeatureRolloutStatus, PrometheusSpec, Verdict};
use crate::notify::{self, Notifier, NotifyArgs};
use crate::reconcile::{self, Context, PlanSettings, Rollout, Shell as _};
use crate::runtime::{self, Backoff, LogTo, Shutdown};
use crate::telemetry::LogFormat;

use source::{FileProblem, Source};
use store::{ControlOverride, FileShell, LogLine, StateDir};
use view::{Mode, ViewMsg};

/// Why standalone mode (or `sluice ctl`) could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the state directory could not be read or written.
    #[error("{}: {message}", path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The command line asked for something impossible.
    #[error("{0}")]
    Usage(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
}

impl Error {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::State { .. } => "state",
            Error::Usage(_) => "usage",
            Error::Runtime(_) => "runtime",
        }
    }
}

/// The options of `sluice standalone`.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// The directory of FeatureRollout YAML files (`*.yaml`, `*.yml`).
    #[arg(long)]
    pub rollouts: PathBuf,
    /// The state directory: status, controls and the events log (created if missing).
    #[arg(long)]
    pub state: PathBuf,
    /// Reconcile every rollout once, print where each stands and exit (1 if any file or
    /// rollout has a problem).
    #[arg(long)]
    pub once: bool,
    /// The Prometheus base URL for rollouts without spec.analysis.prometheus.
    #[arg(long, value_name = "URL")]
    pub default_prometheus: Option<String>,
    /// Plain log lines instead of the live table (the default without a terminal).
    #[arg(long)]
    pub plain: bool,
    /// How often the rollouts directory and the controls are read (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_poll)]
    pub poll: Duration,
    /// The longest one reconcile (with its look at the metrics) may take before it is
    /// abandoned and retried (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_poll)]
    pub reconcile_timeout: Duration,
    /// Webhooks told about every rollout's rollbacks, promotions and troubles.
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// Simulated rollouts per figure of the plan computed for each rollout from the
    /// traffic its first looks observe (status.plan, condition PlanCanDetect); 0 turns
    /// the plans off. Not computed with --once.
    #[arg(long, default_value_t = PlanSettings::default().runs)]
    pub plan_runs: usize,
    /// flagd's sync protocol for the rollouts' flag files (selector: the file's path).
    #[command(flatten)]
    pub sync: crate::sync::SyncArgs,
}

fn parse_poll(text: &str) -> Result<Duration, String> {
    let duration = crate::crd::parse_duration(text).map_err(|e| e.to_string())?;
    let duration = Duration::try_from(duration).map_err(|e| e.to_string())?;
    if duration < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(duration)
}

/// What a rollout's task works from: the spec with the controls in force, and where its
/// flag lives.
#[derive(Clone, Debug, PartialEq)]
struct Input {
    spec: FeatureRolloutSpec,
    flag_path: PathBuf,
    removed: bool,
}

/// A rollout's task, seen from the supervisor.
struct Running {
    tx: watch::Sender<Input>,
    handle: JoinHandle<()>,
    /// Polls in a row the rollout was missing from the directory.
    missing: u32,
    /// The controls last applied (kept when the control file becomes unreadable).
    overrides: ControlOverride,
    /// The control file's problem, reported once.
    control_problem: Option<String>,
    /// A refused edit of the spec, reported once.
    spec_problem: Option<String>,
}

/// Polls in a row a rollout must be missing before it is released (an editor that saves
/// by rename makes a file vanish for an instant).
const MISSING_POLLS: u32 = 2;

/// Runs standalone mode until SIGTERM or SIGINT (or once, with `--once`). Returns whether
/// everything was fine (for `--once`'s exit code).
///
/// On the first signal every rollout task stops at its next await point: a look at the
/// metrics in progress is abandoned (it writes nothing), a write in hand finishes (each
/// is an atomic replace), and the process exits. A second signal stops at once.
pub fn run(options: Options) -> Result<bool, Error> {
    if !options.rollouts.is_dir() {
        return Err(Error::Usage(format!(
            "--rollouts {}: is not a directory",
            options.rollouts.display()
        )));
    }
    if options.once && options.sync.address.is_some() {
        return Err(Error::Usage(
            "--sync-address serves connected apps for as long as Sluice runs: it does not go with --once".into(),
        ));
    }
    let state = StateDir::open(&options.state)?;
    let _lock = state.lock()?;
    let mode = if options.plain || options.once || !std::io::stdout().is_terminal() {
        Mode::Plain
    } else {
        Mode::Table
    };
    let log_to = match mode {
        Mode::Table => LogTo::File(state.path().join("sluice.log")),
        Mode::Plain => LogTo::Stderr,
    };
    if let Err(e) = runtime::init_logging(LogFormat::Plain, log_to) {
        eprintln!("sluice standalone: {e}");
    }
    let finished = runtime::run(|shutdown| async move {
        let default_prometheus = options
            .default_prometheus
            .clone()
            .map(|address| PrometheusSpec {
                address,
                ..PrometheusSpec::default()
            });
        let (notifier, failures) =
            Notifier::new(options.notify.config()).map_err(|e| Error::Usage(e.to_string()))?;
        // Every reconcile hands its events to the notifier (webhooks from the command line
        // and from spec.notifications).
        let mut context = Context::new(default_prometheus).with_notifier(notifier.clone());
        // A single pass exits before a plan could be written.
        if options.plan_runs > 0 && !options.once {
            context = context.with_plans(PlanSettings {
                runs: options.plan_runs,
                ..PlanSettings::default()
            });
        }
        let context = Arc::new(context);
        let (view_tx, view_rx) = mpsc::unbounded_channel();
        // A delivery that gave up becomes a Warning event on its rollout.
        let failure_state = state.clone();
        let failure_view = view_tx.clone();
        notify::forward_failures(failures, move |failure| {
            let shell = FileShell {
                name: failure.name.clone(),
                flag_path: PathBuf::new(),
                state: failure_state.clone(),
                view: Some(failure_view.clone()),
            };
            async move { shell.publish(&failure.event()).await }
        });
        let fine = if options.once {
            drop(view_rx);
            // A stop abandons the reconciles in progress (their looks), as in a long run.
            tokio::select! {
                fine = run_once(&options, &state, &context, &view_tx) => fine,
                () = shutdown.requested() => {
                    println!("interrupted: not every rollout was reconciled");
                    true
                }
            }
        } else {
            let sync = match &options.sync.address {
                Some(address) => {
                    let catalog = crate::sync::files::FileCatalog::new(options.poll);
                    let (bound, serving) = crate::sync::bind(
                        &options.sync,
                        address,
                        catalog.clone(),
                        shutdown.requested(),
                    )
                    .await
                    .map_err(|e| Error::Usage(e.to_string()))?;
                    tracing::info!(address = %bound, "sync server listening: flagd.sync.v1.FlagSyncService (selector: a flag file's path)");
                    Some((catalog, tokio::spawn(serving)))
                }
                None => None,
            };
            // The view ends on the stop, not when every sender is gone: the notification
            // bridge keeps one for as long as the notifier lives.
            let view = tokio::spawn(view::run(view_rx, mode, shutdown.requested()));
            let catalog = sync.as_ref().map(|(catalog, _)| catalog.as_ref());
            supervise(&options, &state, &context, &view_tx, &shutdown, catalog).await;
            drop(view_tx);
            let _ = view.await;
            if let Some((_, serving)) = sync {
                // Its streams end on the stop; connections still open after a moment are
                // dropped with the process.
                let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
            }
            true
        };
        // Let the notifications in flight go out (each has its own timeout); after a stop
        // was asked for, only briefly.
        let grace = if shutdown.is_requested() {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(15)
        };
        let _ = tokio::time::timeout(grace, notifier.idle()).await;
        Ok(fine)
    })
    .map_err(|e| Error::Runtime(e.0.to_string()))?;
    // `None`: a second signal stopped the process at once.
    let result = finished.unwrap_or(Ok(true));
    tracing::info!("stopped");
    result
}

async fn run_once(
    options: &Options,
    state: &StateDir,
    context: &Arc<Context>,
    view_tx: &mpsc::UnboundedSender<ViewMsg>,
) -> bool {
    let mut source = Source::new(&options.rollouts);
    let scan = source.scan();
    let mut fine = scan.problems.is_empty();
    for problem in &scan.problems {
        report_problem(state, problem);
    }
    let tasks = scan.rollouts.values().map(|found| {
        let overrides = state.read_control(&found.name);
        let context = context.clone();
        let state = state.clone();
        let view_tx = view_tx.clone();
        let limit = options.reconcile_timeout;
        async move {
            let overrides = match overrides {
                Ok(o) => o,
                Err(e) => return (found.name.clone(), None, Some(e.to_string())),
            };
            let mut spec = found.spec.clone();
            spec.control = overrides.apply(&spec.control);
            let input = Input {
                spec,
                flag_path: found.flag_path.clone(),
                removed: false,
            };
            let mut status = match state.read_status(&found.name) {
                Ok(status) => status,
                Err(e) => return (found.name.clone(), None, Some(e.to_string())),
            };
            let result = step(
                &found.name,
                &state,
                context.as_ref(),
                &input,
                &mut status,
                &view_tx,
                limit,
            )
            .await;
            (found.name.clone(), status, result.err())
        }
    });
    for (name, status, problem) in futures::future::join_all(tasks).await {
        let mut line = view::summary_line(&name, status.as_ref());
        if let Some(problem) = problem {
            fine = false;
            line.push_str(&format!(" | problem: {problem}"));
        }
        println!("{line}");
    }
    fine
}

async fn supervise(
    options: &Options,
    state: &StateDir,
    context: &Arc<Context>,
    view_tx: &mpsc::UnboundedSender<ViewMsg>,
    shutdown: &Shutdown,
    sync: Option<&crate::sync::files::FileCatalog>,
) {
    let mut source = Source::new(&options.rollouts);
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut last_problems: Vec<FileProblem> = Vec::new();
    let mut first = true;
    let mut poll = tokio::time::interval(options.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.requested();
    tokio::pin!(stop);
    tracing::info!(
        rollouts = %options.rollouts.display(),
        state = %state.path().display(),
        "sluice standalone started"
    );
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = poll.tick() => {}
        }
        let scan = source.scan();
        if let Some(catalog) = sync {
            catalog.set_targets(scan.rollouts.values().map(|f| f.flag_path.clone()));
        }
        if scan.problems != last_problems {
            for problem in scan.problems.iter().filter(|p| !last_problems.contains(p)) {
                report_problem(state, problem);
            }
            let _ = view_tx.send(ViewMsg::Problems(scan.problems.clone()));
            last_problems = scan.problems.clone();
        }
        if first {
            first = false;
            for name in state.names().unwrap_or_default() {
                if !scan.rollouts.contains_key(&name) {
                    tracing::warn!(
                        rollout = %name,
                        "has a status in {} but no rollout file in {}: its flag is left as it is (delete {} to forget it)",
                        state.path().display(),
                        options.rollouts.display(),
                        state.status_path(&name).display()
                    );
                }
            }
        }
        for (name, found) in &scan.rollouts {
            let overrides = state.read_control(name);
            if let Some(entry) = running.get_mut(name) {
                if entry.tx.borrow().removed {
                    continue; // still releasing; started again once that is done
                }
                entry.missing = 0;
                match overrides {
                    Ok(o) => {
                        entry.overrides = o;
                        entry.control_problem = None;
                    }
                    Err(e) => {
                        let message = e.to_string();
                        if entry.control_problem.as_ref() != Some(&message) {
                            tracing::error!(rollout = %name, "the controls cannot be read, the last good ones stay in force: {message}");
                            entry.control_problem = Some(message);
                        }
                    }
                }
                let input = input(found, &entry.overrides);
                let moved = {
                    let current = entry.tx.borrow();
                    current.flag_path != input.flag_path
                        || current.spec.flag.key != input.spec.flag.key
                };
                if moved {
                    // As in the cluster (a CEL transition rule), the flag's key and target
                    // are fixed for a rollout's life: moving them would leave the old flag
                    // exposed. The old spec stays in force.
                    let message = format!(
                        "{}: {name}: spec.flag.key and spec.target cannot change; the rollout goes on with the old ones. To move the flag, remove this rollout (its flag goes back to the baseline) and add a new one",
                        found.file.display()
                    );
                    if entry.spec_problem.as_ref() != Some(&message) {
                        tracing::error!("{message}");
                        entry.spec_problem = Some(message);
                    }
                    continue;
                }
                entry.spec_problem = None;
                if *entry.tx.borrow() != input {
                    entry.tx.send_replace(input);
                }
                continue;
            }
            let overrides = overrides.unwrap_or_else(|e| {
                tracing::error!(rollout = %name, "the controls cannot be read and are ignored until fixed: {e}");
                ControlOverride::default()
            });
            let (tx, rx) = watch::channel(input(found, &overrides));
            let handle = tokio::spawn(rollout_task(
                name.clone(),
                state.clone(),
                context.clone(),
                rx,
                view_tx.clone(),
                options.reconcile_timeout,
                shutdown.clone(),
            ));
            tracing::info!(rollout = %name, file = %found.file.display(), flag_file = %found.flag_path.display(), "rollout found");
            running.insert(
                name.clone(),
                Running {
                    tx,
                    handle,
                    missing: 0,
                    overrides,
                    control_problem: None,
                    spec_problem: None,
                },
            );
        }
        running.retain(|name, entry| {
            if entry.handle.is_finished() {
                return false;
            }
            if !scan.rollouts.contains_key(name) && !entry.tx.borrow().removed {
                entry.missing += 1;
                if entry.missing >= MISSING_POLLS {
                    tracing::info!(rollout = %name, "the rollout file is gone: releasing the flag");
                    entry.tx.send_modify(|i| i.removed = true);
                }
            }
            true
        });
    }
    // Every task sees the stop at its next await point: a look in progress is abandoned,
    // a write in hand (never more than an atomic replace) finishes.
    let handles: Vec<JoinHandle<()>> = running.into_values().map(|r| r.handle).collect();
    futures::future::join_all(handles).await;
}

fn input(found: &source::Found, overrides: &ControlOverride) -> Input {
    let mut spec = found.spec.clone();
    spec.control = overrides.apply(&spec.control);
    Input {
        spec,
        flag_path: found.flag_path.clone(),
        removed: false,
    }
}

fn report_problem(state: &StateDir, problem: &FileProblem) {
    tracing::error!("{problem}");
    state.append_event(&LogLine {
        at: Timestamp::now(),
        rollout: String::new(),
        type_: "Error".into(),
        reason: "InvalidRolloutFile".into(),
        message: problem.to_string(),
        serves: None,
    });
}

/// The wait after failed reconciles of one rollout: 2 s, 4 s ... up to 30 s, ± 10 %.
const RETRY: Backoff =
    Backoff::new(Duration::from_secs(2), Duration::from_secs(30)).with_jitter(0.1);

/// Whether `next` must interrupt a reconcile made for `current`: a rollback (an abort,
/// or the rollout's removal) never waits for a look at the metrics in progress.
fn interrupts(current: &Input, next: &Input) -> bool {
    (next.removed && !current.removed) || (next.spec.control.abort && !current.spec.control.abort)
}

/// One rollout, until its sender goes away, a stop is asked for, or it is removed.
async fn rollout_task(
    name: String,
    state: StateDir,
    context: Arc<Context>,
    mut rx: watch::Receiver<Input>,
    view: mpsc::UnboundedSender<ViewMsg>,
    limit: Duration,
    shutdown: Shutdown,
) {
    let mut status: Option<FeatureRolloutStatus> = None;
    let mut loaded = false;
    let mut wake: Option<Instant> = Some(Instant::now());
    let mut failures: u32 = 0;
    let mut last_problem: Option<String> = None;
    let stop = shutdown.requested();
    tokio::pin!(stop);
    loop {
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return,
            changed = rx.changed() => if changed.is_err() { return },
            () = sleep => {}
        }
        let input = rx.borrow_and_update().clone();
        if !loaded {
            match state.read_status(&name) {
                Ok(found) => {
                    status = found;
                    loaded = true;
                }
                Err(e) => {
                    // Starting over would expose users again: refuse until it is fixed.
                    let message =
                        format!("{e}; the rollout waits until the file is fixed or removed");
                    if last_problem.as_ref() != Some(&message) {
                        tracing::error!(rollout = %name, "{message}");
                    }
                    let _ = view.send(ViewMsg::Rollout {
                        name: name.clone(),
                        status: None,
                        problem: Some(message.clone()),
                    });
                    last_problem = Some(message);
                    wake = Some(Instant::now() + Duration::from_secs(5));
                    continue;
                }
            }
        }
        let shell = shell(&name, &state, &input, &view);
        if input.removed {
            match reconcile::release(&shell, &input.spec, status.as_ref()).await {
                Ok(_) => {
                    context.forget(&RolloutRef {
                        namespace: "",
                        name: &name,
                    });
                    if let Err(e) = state.forget(&name) {
                        tracing::error!(rollout = %name, "{e}");
                    }
                    tracing::info!(rollout = %name, "released and forgotten");
                }
                Err(e) => tracing::error!(
                    rollout = %name,
                    "the rollout file is gone but the flag could not be put back to the baseline: {e}; the status stays in {}",
                    state.status_path(&name).display()
                ),
            }
            let _ = view.send(ViewMsg::Removed { name });
            return;
        }
        // The reconcile races the stop and a rollback: both abandon a look in progress
        // (it has written nothing yet; the flag write, once begun, is one atomic replace
        // with no await point before the status is written).
        let mut seen_change = false;
        let result = {
            let step = step(&name, &state, &context, &input, &mut status, &view, limit);
            tokio::pin!(step);
            loop {
                tokio::select! {
                    biased;
                    () = &mut stop => return,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if interrupts(&input, &rx.borrow()) {
                            tracing::info!(rollout = %name, "a rollback arrived: the reconcile in progress is abandoned");
                            break None;
                        }
                        seen_change = true;
                    }
                    result = &mut step => break Some(result),
                }
            }
        };
        // The input may have changed during the reconcile: go again at once if so.
        let changed_meanwhile = seen_change || rx.has_changed().unwrap_or(false);
        match result {
            None => {
                wake = Some(Instant::now());
            }
            Some(Ok(next)) => {
                failures = 0;
                last_problem = None;
                wake = next.map(|next| {
                    let wait = next.duration_since(Timestamp::now());
                    let wait = Duration::try_from(wait).unwrap_or_default();
                    Instant::now() + wait.max(Duration::from_millis(50))
                });
            }
            Some(Err(message)) => {
                failures += 1;
                if last_problem.as_ref() != Some(&message) {
                    tracing::error!(rollout = %name, "{message}");
                    state.append_event(&LogLine {
                        at: Timestamp::now(),
                        rollout: name.clone(),
                        type_: "Error".into(),
                        reason: "ReconcileFailed".into(),
                        message: message.clone(),
                        serves: None,
                    });
                }
                last_problem = Some(message);
                wake = Some(Instant::now() + RETRY.jittered(failures));
            }
        }
        if changed_meanwhile {
            wake = Some(Instant::now());
        }
    }
}

fn shell(
    name: &str,
    state: &StateDir,
    input: &Input,
    view: &mpsc::UnboundedSender<ViewMsg>,
) -> FileShell {
    FileShell {
        name: name.to_owned(),
        flag_path: input.flag_path.clone(),
        state: state.clone(),
        view: Some(view.clone()),
    }
}

/// One reconcile with a timeout; updates `status` and the view. Returns when to look
/// again, or what went wrong.
async fn step(
    name: &str,
    state: &StateDir,
    context: &Context,
    input: &Input,
    status: &mut Option<FeatureRolloutStatus>,
    view: &mpsc::UnboundedSender<ViewMsg>,
    limit: Duration,
) -> Result<Option<Timestamp>, String> {
    let shell = shell(name, state, input, view);
    let previous_error = analysis_error(status.as_ref());
    let rollout = Rollout {
        id: RolloutRef {
            namespace: "",
            name,
        },
        spec: &input.spec,
        status: status.as_ref(),
        generation: None,
    };
    let now = Timestamp::now();
    let result =
        tokio::time::timeout(limit, reconcile::reconcile(&shell, context, rollout, now)).await;
    let outcome = match result {
        Ok(Ok(outcome)) => {
            *status = Some(outcome.status);
            Ok(outcome.next_look)
        }
        Ok(Err(e)) => {
            // A failed flag write still records the look (and why) in the status.
            if let Ok(Some(persisted)) = state.read_status(name) {
                *status = Some(persisted);
            }
            Err(format!("{e} (category {})", e.category()))
        }
        Err(_) => Err(format!(
            "the reconcile took longer than {}s and was abandoned; retrying",
            limit.as_secs()
        )),
    };
    let now_error = analysis_error(status.as_ref());
    if now_error.is_some() && now_error != previous_error {
        tracing::warn!(
            rollout = %name,
            "the look at the metrics failed (the stage holds): {}",
            now_error.unwrap_or_default()
        );
    }
    let _ = view.send(ViewMsg::Rollout {
        name: name.to_owned(),
        status: status.clone().map(Box::new),
        problem: outcome.as_ref().err().cloned(),
    });
    outcome
}

/// The reasons of an errored look, to log them once when they appear.
fn analysis_error(status: Option<&FeatureRolloutStatus>) -> Option<String> {
    let analysis = status?.last_analysis.as_ref()?;
    if analysis.verdict != Verdict::Error {
        return None;
    }
    let reasons: Vec<String> = analysis
        .metrics
        .iter()
        .filter(|m| m.verdict == Verdict::Error)
        .map(|m| format!("{}: {}", m.name, m.reason.as_deref().unwrap_or("error")))
        .collect();
    Some(reasons.join("; "))
}
