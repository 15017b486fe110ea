//! The live view of `sluice standalone`: on a terminal, a table of every rollout (stage,
//! weight, per-metric cohort numbers and verdict) redrawn as it changes, with the latest
//! events and problems under it; otherwise (or with `--plain`) one plain line per change.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;

use crate::crd::{AnalysisStatus, CohortNumbers, FeatureRolloutStatus};

use super::source::FileProblem;

/// What the view is told.
#[derive(Clone, Debug)]
pub enum ViewMsg {
    /// A rollout's latest status and, when the last reconcile failed, why.
    Rollout {
        /// The rollout.
        name: String,
        /// Its status (None before its first reconcile).
        status: Option<Box<FeatureRolloutStatus>>,
        /// The last reconcile's problem, if it failed.
        problem: Option<String>,
    },
    /// A rollout went away.
    Removed {
        /// The rollout.
        name: String,
    },
    /// The problems of the rollouts directory's files (the whole current list).
    Problems(Vec<FileProblem>),
    /// An event of a rollout.
    Event {
        /// When.
        at: Timestamp,
        /// The rollout.
        rollout: String,
        /// Warning or not.
        warning: bool,
        /// The reason.
        reason: String,
        /// The message.
        message: String,
    },
}

/// How the view draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A table redrawn in place (a terminal).
    Table,
    /// One line per change.
    Plain,
}

/// The cohort numbers of a metric: `n=1200 0.410%`.
fn cohort(c: Option<&CohortNumbers>) -> String {
    match c {
        Some(c) if c.value.abs() < 1.0 => format!("n={:.0} {:.3}%", c.n, 100.0 * c.value),
        Some(c) => format!("n={:.0} {:.4}", c.n, c.value),
        None => "no data".into(),
    }
}

/// One line per metric of a look (name, baseline and candidate numbers, verdict), and
/// the split of distinct users when the rollout counts them.
pub fn metric_lines(analysis: &AnalysisStatus) -> Vec<String> {
    let mut lines: Vec<String> = analysis
        .metrics
        .iter()
        .map(|m| {
            format!(
                "{:<16} baseline {:<20} candidate {:<20} {:?}",
                m.name,
                cohort(m.baseline.as_ref()),
                cohort(m.candidate.as_ref()),
                m.verdict
            )
        })
        .collect();
    if let Some(s) = &analysis.sample_ratio {
        lines.push(format!(
            "{:<16} baseline {:<20} candidate {:<20} {}",
            "users",
            format!("{:.0}", s.baseline_users),
            format!(
                "{:.0} = {:.1}% (expected {:.1}%)",
                s.candidate_users,
                100.0 * s.observed_share,
                100.0 * s.expected_share
            ),
            if s.mismatch { "MISMATCH" } else { "ok" }
        ));
    }
    lines
}

/// The stage as `2/4 (fifty)`.
fn stage(status: &FeatureRolloutStatus) -> String {
    match (status.stage, &status.stage_name) {
        (Some(i), Some(name)) => format!("{} ({name})", i + 1),
        (Some(i), None) => format!("{}", i + 1),
        _ => "-".into(),
    }
}

/// One rollout in one line: phase, stage, weight, the look's verdict and every metric's
/// cohort numbers and verdict.
pub fn summary_line(name: &str, status: Option<&FeatureRolloutStatus>) -> String {
    let Some(status) = status else {
        return format!("{name}: not started");
    };
    let mut line = format!(
        "{name}: {:?} stage {} weight {}",
        status.phase,
        stage(status),
        status.exposure.as_deref().unwrap_or("0%")
    );
    if let Some(a) = &status.last_analysis {
        let _ = write!(line, " | look {:?}", a.verdict);
        for m in &a.metrics {
            let _ = write!(
                line,
                " | {}: baseline {} candidate {} {:?}",
                m.name,
                cohort(m.baseline.as_ref()),
                cohort(m.candidate.as_ref()),
                m.verdict
            );
        }
    }
    if let Some(message) = &status.message {
        let _ = write!(line, " | {message}");
    }
    line
}

#[derive(Default)]
struct State {
    rows: BTreeMap<String, (Option<Box<FeatureRolloutStatus>>, Option<String>)>,
    printed: BTreeMap<String, String>,
    problems: Vec<FileProblem>,
    events: Vec<String>,
}

const EVENTS_SHOWN: usize = 8;

impl State {
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sluice standalone    {}    (Ctrl-C stops; sluice ctl steers)\n",
            Timestamp::now().strftime("%H:%M:%S")
        );
        let _ = writeln!(
            out,
            "{:<22} {:<19} {:<16} {:>9}  {:<13}",
            "ROLLOUT", "PHASE", "STAGE", "WEIGHT", "VERDICT"
        );
        for (name, (status, problem)) in &self.rows {
            let Some(status) = status else {
                let _ = writeln!(out, "{name:<22} (not started)");
                continue;
            };
            let verdict = status
                .last_analysis
                .as_ref()
                .map_or("-".into(), |a| format!("{:?}", a.verdict));
            let _ = writeln!(
                out,
                "{:<22} {:<19} {:<16} {:>9}  {:<13}",
                name,
                format!("{:?}", status.phase),
                stage(status),
                status.exposure.as_deref().unwrap_or("0%"),
                verdict
            );
            if let Some(a) = &status.last_analysis {
                for line in metric_lines(a) {
                    let _ = writeln!(out, "    {line}");
                }
            }
            if let Some(message) = &status.message {
                let _ = writeln!(out, "    {message}");
            }
            if let Some(problem) = problem {
                let _ = writeln!(out, "    ! {problem}");
            }
        }
        if !self.problems.is_empty() {
            let _ = writeln!(out, "\nproblems:");
            for p in &self.problems {
                let _ = writeln!(out, "  ! {p}");
            }
        }
        if !self.events.is_empty() {
            let _ = writeln!(out, "\nevents:");
            for e in &self.events {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }
}

/// Draws what it is told until every sender is gone or `stop` completes (then what is
/// already queued is drawn too).
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<ViewMsg>,
    mode: Mode,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut state = State::default();
    let mut dirty = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => {
                while let Ok(msg) = rx.try_recv() {
                    apply(&mut state, msg, mode);
                }
                break;
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                apply(&mut state, msg, mode);
                dirty = true;
            }
            _ = tick.tick() => {
                if dirty && mode == Mode::Table {
                    let mut stdout = std::io::stdout().lock();
                    let _ = write!(stdout, "\x1b[H\x1b[2J{}", state.table());
                    let _ = stdout.flush();
                    dirty = false;
                }
            }
        }
    }
    if mode == Mode::Table {
        print!("\x1b[H\x1b[2J{}", state.table());
    }
}

fn apply(state: &mut State, msg: ViewMsg, mode: Mode) {
    let now = Timestamp::now().strftime("%H:%M:%S%.3f");
    match msg {
        ViewMsg::Rollout {
            name,
            status,
            problem,
        } => {
            if mode == Mode::Plain {
                let mut line = summary_line(&name, status.as_deref());
                if let Some(problem) = &problem {
                    let _ = write!(line, " | problem: {problem}");
                }
                if state.printed.get(&name) != Some(&line) {
                    println!("{now} {line}");
                    state.printed.insert(name.clone(), line);
                }
            }
            state.rows.insert(name, (status, problem));
        }
        ViewMsg::Removed { name } => {
            if mode == Mode::Plain {
                println!("{now} {name}: removed");
            }
            state.rows.remove(&name);
            state.printed.remove(&name);
        }
        ViewMsg::Problems(problems) => {
            if mode == Mode::Plain {
                for p in problems.iter().filter(|p| !state.problems.contains(p)) {
                    println!("{now} problem: {p}");
                }
                for p in state.problems.iter().filter(|p| !problems.contains(p)) {
                    println!("{now} resolved: {p}");
                }
            }
            state.problems = problems;
        }
        ViewMsg::Event {
            at,
            rollout,
            warning,
            reason,
            message,
        } => {
            let line = format!(
                "{} {rollout} {}{reason}: {message}",
                at.strftime("%H:%M:%S"),
                if warning { "WARNING " } else { "" }
            );
            // Plain mode: events reach the log (stderr) through tracing already.
            state.events.push(line);
            if state.events.len() > EVENTS_SHOWN {
                state.events.remove(0);
            }
        }
    }
}
