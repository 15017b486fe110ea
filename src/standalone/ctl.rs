//! `sluice ctl`: steering a running `sluice standalone` from the command line. Each
//! command writes the rollout's control overrides (`STATE/<name>.control.json`, the
//! fields of `spec.control`), which the running process reads at its next poll; the
//! user's YAML is never edited. The semantics are those of `spec.control`: pause holds,
//! approve names a stage that may start, abort rolls back and stays rolled back, retry
//! raises the counter above `status.retries` (and clears abort).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::crd::{FeatureRolloutStatus, Phase};

use super::Error;
use super::store::{ControlOverride, StateDir};
use super::view::metric_lines;

/// The arguments of `sluice ctl`.
#[derive(clap::Args, Clone, Debug)]
pub struct CtlArgs {
    /// The state directory of the running `sluice standalone`.
    #[arg(long)]
    pub state: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands of `sluice ctl`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum CtlCommand {
    /// Print a rollout's phase, stage, weight, last look (cohort numbers and verdict per
    /// metric), controls and history; every rollout without NAME.
    Status {
        /// The rollout (metadata.name).
        name: Option<String>,
    },
    /// Hold at the current stage (analysis goes on; harm still rolls back).
    Pause {
        /// The rollout.
        name: String,
    },
    /// Undo pause.
    Resume {
        /// The rollout.
        name: String,
    },
    /// Let a stage with `approval: required` start.
    Approve {
        /// The stage's name.
        stage: String,
        /// The rollout.
        name: String,
    },
    /// Roll back now and stay rolled back (until retry).
    Abort {
        /// The rollout.
        name: String,
    },
    /// Start a rolled-back rollout again from its first stage.
    Retry {
        /// The rollout.
        name: String,
    },
}

/// How a command changes the overrides, given the status and the stage argument.
type Change = fn(&mut ControlOverride, &FeatureRolloutStatus, &str) -> Result<String, Error>;

/// Runs one `sluice ctl` command; returns what to print.
pub fn run(args: &CtlArgs) -> Result<String, Error> {
    let state = StateDir::existing(&args.state)?;
    let (name, change): (&str, Change) = match &args.command {
        CtlCommand::Status { name } => return status(&state, name.as_deref()),
        CtlCommand::Pause { name } => (name, |c, _, _| {
            c.paused = Some(true);
            Ok("pause requested".into())
        }),
        CtlCommand::Resume { name } => (name, |c, _, _| {
            c.paused = Some(false);
            Ok("resume requested".into())
        }),
        CtlCommand::Approve { name, .. } => (name, |c, _, stage| {
            c.approve = Some(stage.to_owned());
            Ok(format!("stage {stage:?} approved"))
        }),
        CtlCommand::Abort { name } => (name, |c, _, _| {
            c.abort = Some(true);
            Ok("abort requested: the rollout rolls back and stays rolled back until retry".into())
        }),
        CtlCommand::Retry { name } => (name, |c, s, _| {
            if s.phase != Phase::RolledBack {
                return Err(Error::Usage(format!(
                    "retry starts a rolled-back rollout again; this one is {:?}",
                    s.phase
                )));
            }
            let retry = s.retries.max(c.retry.unwrap_or(0)) + 1;
            c.retry = Some(retry);
            c.abort = Some(false);
            Ok(format!(
                "retry requested (control.retry {retry}, abort false)"
            ))
        }),
    };
    let stage = match &args.command {
        CtlCommand::Approve { stage, .. } => stage.as_str(),
        _ => "",
    };
    let Some(current) = state.read_status(name)? else {
        let known = state.names()?;
        return Err(Error::Usage(format!(
            "no rollout named {name:?} has a status in {} (known: {})",
            state.path().display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    let said = {
        // Read, change and write under the rollout's control lock: two commands at once
        // (an abort and a pause) each see the other's change, so none is lost.
        let _held = lock_controls(&state, name)?;
        let mut control = state.read_control(name)?;
        let said = change(&mut control, &current, stage)?;
        state.write_control(name, &control)?;
        said
    };
    Ok(format!(
        "{name}: {said}; sluice standalone applies it at its next poll ({})\n",
        state.control_path(name).display()
    ))
}

/// The lock file that serialises the commands changing one rollout's controls.
fn control_lock_path(state: &StateDir, name: &str) -> PathBuf {
    state.path().join(format!(".{name}.control.lock"))
}

/// Takes the rollout's control lock (an advisory `flock` on a file of its own, since the
/// control file itself is replaced at every write), waiting for a command that holds it.
/// Released when the returned file is dropped, or when the process dies.
fn lock_controls(state: &StateDir, name: &str) -> Result<std::fs::File, Error> {
    let path = control_lock_path(state, name);
    let fail = |e: std::io::Error| Error::State {
        path: path.clone(),
        message: format!("cannot lock the controls: {e}"),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(fail)?;
    file.lock().map_err(fail)?;
    Ok(file)
}

fn status(state: &StateDir, name: Option<&str>) -> Result<String, Error> {
    let names = match name {
        Some(name) => vec![name.to_owned()],
        None => state.names()?,
    };
    if names.is_empty() {
        return Ok(format!(
            "no rollout has a status in {}\n",
            state.path().display()
        ));
    }
    let mut out = String::new();
    for name in names {
        let Some(status) = state.read_status(&name)? else {
            return Err(Error::Usage(format!(
                "no rollout named {name:?} has a status in {} (known: {})",
                state.path().display(),
                state.names()?.join(", ")
            )));
        };
        let control = state.read_control(&name)?;
        out.push_str(&describe(&name, &status));
        if control != Default::default() {
            let _ = writeln!(
                out,
                "controls: {}",
                serde_json::to_string(&control).unwrap_or_default()
            );
        }
        out.push('\n');
    }
    Ok(out)
}

/// A rollout's status for people: where it is, its last look and its history.
pub fn describe(name: &str, status: &FeatureRolloutStatus) -> String {
    let mut out = String::new();
    let stage = match (status.stage, &status.stage_name) {
        (Some(i), Some(n)) => format!("{} ({n})", i + 1),
        (Some(i), None) => format!("{}", i + 1),
        _ => "-".into(),
    };
    let _ = writeln!(
        out,
        "{name}: {:?}, stage {stage}, weight {}",
        status.phase,
        status.exposure.as_deref().unwrap_or("0%")
    );
    if let Some(message) = &status.message {
        let _ = writeln!(out, "  {message}");
    }
    for c in status
        .conditions
        .iter()
        .filter(|c| c.status == "False" && c.type_ == "Ready")
    {
        let _ = writeln!(out, "  not ready ({}): {}", c.reason, c.message);
    }
    if let Some(a) = &status.last_analysis {
        let _ = writeln!(
            out,
            "last look {} (stage {}): {:?}: {}",
            a.at.strftime("%Y-%m-%d %H:%M:%S"),
            a.stage + 1,
            a.verdict,
            a.message.as_deref().unwrap_or_default()
        );
        for line in metric_lines(a) {
            let _ = writeln!(out, "  {line}");
        }
        for m in &a.metrics {
            if let Some(reason) = &m.reason {
                let _ = writeln!(out, "  {}: {reason}", m.name);
            }
        }
    }
    if let Some(plan) = &status.plan {
        let _ = writeln!(out, "plan:");
        for line in crate::simulate::plan::summary::lines(plan) {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !status.history.is_empty() {
        let _ = writeln!(out, "history:");
        for h in &status.history {
            let _ = writeln!(
                out,
                "  {} {:?} -> {:?} stage {} weight {} {}: {}",
                h.at.strftime("%H:%M:%S"),
                h.from,
                h.to,
                h.stage.map_or("-".into(), |s| (s + 1).to_string()),
                crate::crd::exposure_text(h.weight, h.audience),
                h.reason,
                h.message
            );
        }
    }
    out
}
