//! `kubectl sluice`: look at and steer `FeatureRollout`s from the command line, with the
//! user's kubeconfig, like kubectl.
//!
//! Every control writes only `spec.control` (a JSON merge patch with the field manager
//! `kubectl-sluice`), the declarative fields the controller acts on: `paused`, `approve`,
//! `abort` and `retry`. A GitOps tool that owns the manifest reverts such a change at its
//! next sync unless the manifest is changed too.
//!
//! Errors follow kubectl: a message on stderr (`Error from server (NotFound): ...` for
//! the API's refusals, `error: ...` for the plugin's own) and exit code 1.

pub mod render;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt as _;
use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, Config};
use serde_json::{Value, json};

use crate::crd::{Approval, FeatureRollout, Phase};

/// The field manager of every write, visible in `managedFields`.
pub const FIELD_MANAGER: &str = "kubectl-sluice";
/// The resource as kubectl names it in messages.
const RESOURCE: &str = "featurerollouts.sluice.dev";
/// The resource as kubectl names one object in success messages.
const OBJECT: &str = "featurerollout.sluice.dev";

/// Look at and steer Sluice's FeatureRollouts.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-sluice",
    bin_name = "kubectl sluice",
    version,
    about = "Look at and steer Sluice's FeatureRollouts",
    after_help = "Controls change only spec.control. A GitOps tool that owns the manifest reverts them at its next sync unless the manifest is changed too."
)]
pub struct Args {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// List rollouts in every namespace (`get` only).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `get`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
    /// `featurerollout.sluice.dev/NAME` per object.
    Name,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List rollouts: name, phase, stage, weight, last verdict, age.
    Get {
        /// One rollout only.
        name: Option<String>,
        /// Print the objects instead of the table.
        #[arg(short = 'o', long)]
        output: Option<Output>,
        /// Redraw on every change.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show one rollout: stages, the last analysis per metric, recent history, and what
    /// it is waiting for.
    Status {
        /// The rollout.
        name: String,
        /// Redraw on every change.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show a rollout's history of phases and exposures.
    History {
        /// The rollout.
        name: String,
    },
    /// Hold at the current stage (sets spec.control.paused). Harm still rolls back.
    Pause {
        /// The rollout.
        name: String,
    },
    /// Let a paused rollout go on (clears spec.control.paused).
    Resume {
        /// The rollout.
        name: String,
    },
    /// Let a stage with `approval: required` begin (sets spec.control.approve).
    Approve {
        /// The rollout.
        name: String,
        /// The stage to approve (default: the stage the rollout waits for). Naming a later
        /// stage approves it in advance.
        stage: Option<String>,
    },
    /// Approve the stage the rollout waits for (the same as `approve NAME`). It never
    /// skips stages or analysis.
    Promote {
        /// The rollout.
        name: String,
    },
    /// Roll back now and stay rolled back (sets spec.control.abort).
    Abort {
        /// The rollout.
        name: String,
    },
    /// Start a rolled-back rollout again from its first stage (raises spec.control.retry
    /// above status.retries and clears spec.control.abort).
    Retry {
        /// The rollout.
        name: String,
    },
}

/// Why a command failed. `Display` is the message kubectl would print.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be loaded.
    #[error("error: {0}")]
    Config(String),
    /// The API server refused or failed.
    #[error("Error from server ({reason}): {message}{hint}")]
    Server {
        /// The API's reason (`NotFound`, `Forbidden`, `Conflict`, ...).
        reason: String,
        /// The API's message.
        message: String,
        /// What to do, on its own line (may be empty).
        hint: String,
    },
    /// The API could not be reached.
    #[error("error: {0}")]
    Connection(String),
    /// The command does not apply to the rollout as it is.
    #[error("error: {0}")]
    Refused(String),
    /// Bad arguments.
    #[error("error: {0}")]
    Usage(String),
}

impl Error {
    /// A bounded name for the kind of failure.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Server { .. } => "server",
            Error::Connection(_) => "connection",
            Error::Refused(_) => "refused",
            Error::Usage(_) => "usage",
        }
    }

    /// kubectl's exit code for it.
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// What a command printed: `stdout` and, for notes like "No resources found", `stderr`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    /// The result.
    pub stdout: String,
    /// Notes for people.
    pub stderr: String,
}

impl From<String> for Printed {
    fn from(stdout: String) -> Self {
        Printed {
            stdout,
            stderr: String::new(),
        }
    }
}

/// Builds a client from `--kubeconfig` and `--context`, or kubectl's defaults.
pub async fn connect(args: &Args) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
        None => Config::infer().await.map_err(|e| {
            Error::Config(format!(
                "{e}: no kubeconfig found (set KUBECONFIG or --kubeconfig)"
            ))
        })?,
    };
    Client::try_from(config).map_err(|e| Error::Config(e.to_string()))
}

/// Runs the command line: connects, runs, prints, and returns kubectl's exit code.
pub async fn main(args: Args) -> ExitCode {
    let result = match connect(&args).await {
        Ok(client) => {
            let watching = matches!(
                args.command,
                Command::Get { watch: true, .. } | Command::Status { watch: true, .. }
            );
            if watching {
                let terminal = std::io::stdout().is_terminal();
                let mut first = true;
                let draw = |view: &str| {
                    let mut out = std::io::stdout().lock();
                    // A terminal is redrawn in place; a pipe gets one view after another.
                    let _ = if terminal {
                        write!(out, "\x1b[H\x1b[2J{view}")
                    } else {
                        write!(out, "{}{view}", if first { "" } else { "\n" })
                    };
                    let _ = out.flush();
                    first = false;
                };
                watch(&args, client, Timestamp::now, draw, None)
                    .await
                    .map(|()| Printed::default())
            } else {
                execute(&args, client, Timestamp::now()).await
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(printed) => {
            print!("{}", printed.stdout);
            eprint!("{}", printed.stderr);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(error.exit_code())
        }
    }
}

struct Scope {
    namespace: String,
    all: bool,
}

impl Scope {
    fn of(args: &Args, client: &Client) -> Self {
        Scope {
            namespace: args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            all: args.all_namespaces,
        }
    }

    fn api(&self, client: Client) -> Api<FeatureRollout> {
        if self.all {
            Api::all(client)
        } else {
            Api::namespaced(client, &self.namespace)
        }
    }

    /// Refuses `-A` for commands on one object, as kubectl does.
    fn one(&self) -> Result<(), Error> {
        if self.all {
            return Err(Error::Usage(
                "a resource cannot be retrieved by name across all namespaces".into(),
            ));
        }
        Ok(())
    }

    fn flag(&self) -> String {
        format!(" -n {}", self.namespace)
    }
}

/// Runs one command (not `--watch`) with `client` at `now` and returns what to print.
pub async fn execute(args: &Args, client: Client, now: Timestamp) -> Result<Printed, Error> {
    let scope = Scope::of(args, &client);
    let api = scope.api(client);
    match &args.command {
        Command::Get { name, output, .. } => get(&api, &scope, name.as_deref(), *output, now).await,
        Command::Status { name, .. } => {
            scope.one()?;
            let rollout = fetch(&api, &scope, name).await?;
            Ok(render::status(&rollout, now).into())
        }
        Command::History { name } => {
            scope.one()?;
            let rollout = fetch(&api, &scope, name).await?;
            let history = rollout.status.map(|s| s.history).unwrap_or_default();
            if history.is_empty() {
                return Ok(Printed {
                    stdout: String::new(),
                    stderr: format!("No history yet for {OBJECT}/{name}.\n"),
                });
            }
            Ok(render::history_table(&rollout.spec, &history, now).into())
        }
        command => {
            scope.one()?;
            control(&api, &scope, command).await.map(Printed::from)
        }
    }
}

fn server_error(error: kube::Error, scope: &Scope, name: Option<&str>) -> Error {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                format!("{}", status.code)
            } else {
                status.reason.clone()
            };
            let hint = match (reason.as_str(), name) {
                ("NotFound", Some(_)) => format!(
                    "\nList the rollouts with: kubectl sluice get{} (or -A for every namespace).",
                    scope.flag()
                ),
                ("NotFound", None) => "\nIs the FeatureRollout CRD installed? kubectl apply -f crds/featurerollout.yaml".into(),
                ("Forbidden", _) => "\nAsk for RBAC rights on featurerollouts.sluice.dev (get, list, watch, patch).".into(),
                ("Conflict", _) => "\nThe rollout changed meanwhile: run the command again.".into(),
                _ => String::new(),
            };
            Error::Server {
                reason,
                message: status.message.clone(),
                hint,
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            Error::Connection(format!(
                "the API server could not be reached ({text}): check the kubeconfig context (--context, --kubeconfig) and that the cluster is up"
            ))
        }
    }
}

async fn fetch(
    api: &Api<FeatureRollout>,
    scope: &Scope,
    name: &str,
) -> Result<FeatureRollout, Error> {
    api.get(name)
        .await
        .map_err(|e| server_error(e, scope, Some(name)))
}

async fn get(
    api: &Api<FeatureRollout>,
    scope: &Scope,
    name: Option<&str>,
    output: Option<Output>,
    now: Timestamp,
) -> Result<Printed, Error> {
    let rollouts = match name {
        Some(name) => {
            scope.one()?;
            vec![fetch(api, scope, name).await?]
        }
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(|e| server_error(e, scope, None))?
                .items
        }
    };
    if rollouts.is_empty() && output.is_none() {
        let stderr = if scope.all {
            "No resources found\n".to_owned()
        } else {
            format!("No resources found in {} namespace.\n", scope.namespace)
        };
        return Ok(Printed {
            stdout: String::new(),
            stderr,
        });
    }
    let stdout = match output {
        None => render::get_table(&rollouts, scope.all, now),
        Some(Output::Name) => rollouts
            .iter()
            .map(|r| {
                format!(
                    "{OBJECT}/{}\n",
                    r.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect(),
        Some(format) => {
            let mut items: Vec<Value> = rollouts.iter().map(printable).collect();
            let value = if name.is_some() {
                items.remove(0)
            } else {
                json!({ "apiVersion": "v1", "kind": "List", "items": items, "metadata": { "resourceVersion": "" } })
            };
            match format {
                Output::Json => {
                    let mut text = serde_json::to_string_pretty(&value).expect("JSON prints");
                    text.push('\n');
                    text
                }
                _ => serde_yaml_ng::to_string(&value).expect("YAML prints"),
            }
        }
    };
    Ok(stdout.into())
}

/// An object as `-o yaml|json` prints it: without `managedFields`, as kubectl does.
fn printable(rollout: &FeatureRollout) -> Value {
    let mut value = serde_json::to_value(rollout).expect("a rollout serializes");
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    value
}

/// The `spec.control` change a control makes, and what to print when it is made.
async fn control(
    api: &Api<FeatureRollout>,
    scope: &Scope,
    command: &Command,
) -> Result<String, Error> {
    let name = match command {
        Command::Pause { name }
        | Command::Resume { name }
        | Command::Approve { name, .. }
        | Command::Promote { name }
        | Command::Abort { name }
        | Command::Retry { name } => name,
        Command::Get { .. } | Command::Status { .. } | Command::History { .. } => {
            unreachable!("not a control")
        }
    };
    let rollout = fetch(api, scope, name).await?;
    let (patch, done) = plan_control(&rollout, scope, command)?;
    let Some(patch) = patch else {
        return Ok(format!("{OBJECT}/{name} {done}\n"));
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(
        name,
        &params,
        &Patch::Merge(json!({ "spec": { "control": patch } })),
    )
    .await
    .map_err(|e| server_error(e, scope, Some(name)))?;
    Ok(format!("{OBJECT}/{name} {done}\n"))
}

/// Decides a control without the network: the `spec.control` fields to merge and the
/// words to print (no fields when nothing needs to change), or why the control does not
/// apply.
fn plan_control(
    rollout: &FeatureRollout,
    scope: &Scope,
    command: &Command,
) -> Result<(Option<Value>, String), Error> {
    let name = rollout.metadata.name.as_deref().unwrap_or_default();
    let object = format!("{RESOURCE} {name:?}");
    let here = scope.flag();
    let spec = &rollout.spec;
    let status = rollout.status.as_ref();
    let phase = status.map(|s| s.phase).unwrap_or_default();
    let message = status
        .and_then(|s| s.message.clone())
        .unwrap_or_else(|| "it has no status yet".into());
    match command {
        Command::Pause { .. } => {
            if spec.control.paused {
                return Err(Error::Refused(format!("{object} is already paused")));
            }
            if phase.is_finished() {
                return Err(Error::Refused(format!(
                    "{object} is {}: pausing changes nothing. {}",
                    phase.as_str(),
                    render::waiting_for(rollout)
                )));
            }
            Ok((Some(json!({ "paused": true })), "paused".into()))
        }
        Command::Resume { .. } => {
            if !spec.control.paused {
                return Err(Error::Refused(format!(
                    "{object} is not paused (it is {})",
                    phase.as_str()
                )));
            }
            Ok((Some(json!({ "paused": false })), "resumed".into()))
        }
        Command::Approve { stage: None, .. } | Command::Promote { .. } => {
            let Some((_, stage)) = render::waiting_stage(status) else {
                let later = approvable_later(rollout);
                let hint = if later.is_empty() {
                    String::new()
                } else {
                    format!(
                        " To approve a later stage in advance, name it: kubectl sluice approve {name} STAGE{here} (stages with approval: required ahead: {}).",
                        later.join(", ")
                    )
                };
                let promote = if matches!(command, Command::Promote { .. }) {
                    " promote approves the stage a rollout waits for; it never skips stages or analysis."
                } else {
                    ""
                };
                return Err(Error::Refused(format!(
                    "{object} is not waiting for approval: it is {}: {message}{promote}{hint}",
                    phase.as_str()
                )));
            };
            approve(rollout, &stage)
        }
        Command::Approve {
            stage: Some(stage), ..
        } => {
            let names = render::stage_names(spec);
            let Some(index) = names.iter().position(|n| n == stage) else {
                return Err(Error::Refused(format!(
                    "{object} has no stage {stage:?}; its stages are: {}",
                    names.join(", ")
                )));
            };
            if spec.stages[index].approval != Approval::Required {
                let required: Vec<&str> = names
                    .iter()
                    .zip(&spec.stages)
                    .filter(|(_, s)| s.approval == Approval::Required)
                    .map(|(n, _)| n.as_str())
                    .collect();
                let which = if required.is_empty() {
                    "no stage of it does".to_owned()
                } else {
                    format!("stages that do: {}", required.join(", "))
                };
                return Err(Error::Refused(format!(
                    "stage {stage:?} of {object} does not need approval (approval: auto); {which}"
                )));
            }
            if phase.is_finished() {
                return Err(Error::Refused(format!(
                    "{object} is {}: there is nothing to approve",
                    phase.as_str()
                )));
            }
            if let Some((waiting, waiting_name)) = render::waiting_stage(status)
                && index > waiting
            {
                return Err(Error::Refused(format!(
                    "{object} waits for approval of stage {waiting_name:?} first: approve it (kubectl sluice approve {name} {waiting_name}{here}) before stage {stage:?}"
                )));
            }
            let entered = status.is_some_and(|s| s.stage_started_at.is_some())
                && status
                    .and_then(|s| s.stage)
                    .is_some_and(|s| index <= s as usize);
            if entered {
                return Err(Error::Refused(format!(
                    "stage {stage:?} of {object} has already begun: there is nothing to approve"
                )));
            }
            approve(rollout, stage)
        }
        Command::Abort { .. } => {
            if phase == Phase::Promoted {
                return Err(Error::Refused(format!(
                    "{object} is Promoted: abort does nothing after promotion; to go back, roll the old variant out as a new candidate"
                )));
            }
            if spec.control.abort {
                return Err(Error::Refused(format!("{object} is already aborted")));
            }
            Ok((
                Some(json!({ "abort": true })),
                "aborted (everybody gets the baseline at the next reconcile)".into(),
            ))
        }
        Command::Retry { .. } => {
            if phase != Phase::RolledBack {
                return Err(Error::Refused(format!(
                    "{object} is not rolled back: it is {}: {message} retry starts a rolled-back rollout again from its first stage",
                    phase.as_str()
                )));
            }
            let retries = status.map_or(0, |s| s.retries);
            let next = spec
                .control
                .retry
                .max(retries)
                .checked_add(1)
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "{object} has used every retry (control.retry is at its maximum)"
                    ))
                })?;
            Ok((
                Some(json!({ "abort": false, "retry": next })),
                format!("retried (control.retry={next}; it starts again from the first stage)"),
            ))
        }
        Command::Get { .. } | Command::Status { .. } | Command::History { .. } => {
            unreachable!("not a control")
        }
    }
}

fn approve(rollout: &FeatureRollout, stage: &str) -> Result<(Option<Value>, String), Error> {
    if rollout.spec.control.approve.as_deref() == Some(stage) {
        return Ok((
            None,
            format!("unchanged: stage {stage:?} is already approved"),
        ));
    }
    Ok((
        Some(json!({ "approve": stage })),
        format!("approved stage {stage:?}"),
    ))
}

/// Stages with `approval: required` the rollout has not entered yet.
fn approvable_later(rollout: &FeatureRollout) -> Vec<String> {
    let status = rollout.status.as_ref();
    if status.is_some_and(|s| s.phase.is_finished()) {
        return Vec::new();
    }
    let current = status
        .filter(|s| s.stage_started_at.is_some())
        .and_then(|s| s.stage)
        .map_or(0, |s| s as usize + 1);
    render::stage_names(&rollout.spec)
        .into_iter()
        .zip(&rollout.spec.stages)
        .enumerate()
        .filter(|(i, (_, s))| *i >= current && s.approval == Approval::Required)
        .map(|(_, (n, _))| n)
        .collect()
}

/// `get --watch` and `status --watch`: a watcher feeds a local cache; the view is redrawn
/// whenever it changes (and every few seconds for ages), until interrupted.
///
/// `draw` gets each view that differs from the one before; `now` is the clock of the
/// ages; with `frames`, the watch returns after that many views (for tests).
pub async fn watch(
    args: &Args,
    client: Client,
    now: impl Fn() -> Timestamp,
    mut draw: impl FnMut(&str),
    frames: Option<usize>,
) -> Result<(), Error> {
    let scope = Scope::of(args, &client);
    let api = scope.api(client);
    let (name, status_view) = match &args.command {
        Command::Get { name, output, .. } => {
            if output.is_some() {
                return Err(Error::Usage(
                    "--watch prints the table only: drop -o".into(),
                ));
            }
            (name.clone(), false)
        }
        Command::Status { name, .. } => (Some(name.clone()), true),
        _ => unreachable!("only get and status watch"),
    };
    if name.is_some() {
        scope.one()?;
        // Fail fast, with kubectl's message, on a rollout that does not exist.
        fetch(&api, &scope, name.as_deref().unwrap_or_default()).await?;
    }
    let mut config = watcher::Config::default();
    if let Some(name) = &name {
        config = config.fields(&format!("metadata.name={name}"));
    }
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    futures::pin_mut!(stream);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut shown = String::new();
    let mut drawn = 0;
    let mut ready = false;
    loop {
        tokio::select! {
            event = stream.next() => match event {
                None => return Ok(()),
                Some(Err(e)) => { eprintln!("error: watching: {e} (retrying)"); continue; }
                Some(Ok(watcher::Event::InitDone)) => ready = true,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {}
        }
        if !ready {
            continue;
        }
        let mut rollouts: Vec<FeatureRollout> =
            reader.state().iter().map(|r| (**r).clone()).collect();
        rollouts.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let now = now();
        let view = if status_view {
            match rollouts.first() {
                Some(r) => render::status(r, now),
                None => format!(
                    "{RESOURCE} {:?} was deleted\n",
                    name.as_deref().unwrap_or_default()
                ),
            }
        } else if rollouts.is_empty() {
            format!("No resources found in {} namespace.\n", scope.namespace)
        } else {
            render::get_table(&rollouts, scope.all, now)
        };
        if view != shown {
            draw(&view);
            shown = view;
            drawn += 1;
            if frames.is_some_and(|f| drawn >= f) {
                return Ok(());
            }
        }
    }
}
