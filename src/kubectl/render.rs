//! What `kubectl sluice` prints: the `get` table, `status` and `history`. Pure: every
//! function takes the time to measure ages against.

use std::fmt::Write as _;

use jiff::Timestamp;

use crate::crd::{
    Approval, CohortNumbers, FeatureRollout, FeatureRolloutSpec, FeatureRolloutStatus,
    MetricAnalysis, Phase, Target, TargetChoiceError,
};

/// How many history entries `status` shows (the newest).
pub const STATUS_HISTORY: usize = 5;

/// A table in kubectl's style: upper-case headers, left-aligned columns three spaces
/// apart, the last column unpadded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's short human durations (`45s`, `5m30s`, `3h`, `2d4h`, `1y20d`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The age of `then` at `now`, kubectl-style.
pub fn age(then: Timestamp, now: Timestamp) -> String {
    human_duration(now.duration_since(then).as_secs())
}

fn creation(rollout: &FeatureRollout) -> Option<Timestamp> {
    let time = rollout.metadata.creation_timestamp.as_ref()?;
    serde_json::to_value(time)
        .ok()?
        .as_str()?
        .parse::<Timestamp>()
        .ok()
}

/// The `get` table.
pub fn get_table(rollouts: &[FeatureRollout], all_namespaces: bool, now: Timestamp) -> String {
    let mut headers = vec!["NAME", "PHASE", "STAGE", "WEIGHT", "VERDICT", "AGE"];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|r| {
            let status = r.status.as_ref();
            let mut row = vec![
                r.metadata.name.clone().unwrap_or_default(),
                status.map_or("", |s| s.phase.as_str()).to_owned(),
                status
                    .and_then(|s| s.stage_name.clone())
                    .unwrap_or_default(),
                status.and_then(|s| s.exposure.clone()).unwrap_or_default(),
                status
                    .and_then(|s| s.last_analysis.as_ref())
                    .map(|a| format!("{:?}", a.verdict))
                    .unwrap_or_default(),
                creation(r).map_or_else(|| "<unknown>".into(), |t| age(t, now)),
            ];
            if all_namespaces {
                row.insert(0, r.metadata.namespace.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// The stages' names, `stage-N` (1-based) where unset.
pub fn stage_names(spec: &FeatureRolloutSpec) -> Vec<String> {
    spec.stages
        .iter()
        .enumerate()
        .map(|(i, s)| s.name.clone().unwrap_or_else(|| format!("stage-{}", i + 1)))
        .collect()
}

/// The stage (index and name) a rollout waits to have approved, if it waits for one: as
/// the controller put it in `status.awaitingApproval`.
pub fn waiting_stage(status: Option<&FeatureRolloutStatus>) -> Option<(usize, String)> {
    let status = status.filter(|s| s.phase == Phase::WaitingForApproval)?;
    let awaited = status.awaiting_approval.as_ref()?;
    Some((awaited.index as usize, awaited.name.clone()))
}

/// In one sentence, what the rollout is waiting for.
pub fn waiting_for(rollout: &FeatureRollout) -> String {
    let name = rollout.metadata.name.as_deref().unwrap_or_default();
    let ns = rollout
        .metadata
        .namespace
        .as_deref()
        .map(|n| format!(" -n {n}"))
        .unwrap_or_default();
    let Some(status) = rollout.status.as_ref() else {
        return "The controller to pick it up: it has no status yet (is the Sluice controller running and watching this namespace?).".into();
    };
    if let (Some(generation), Some(observed)) =
        (rollout.metadata.generation, status.observed_generation)
        && observed < generation
    {
        return format!(
            "The controller to act on the latest change (generation {generation}; the status is from generation {observed})."
        );
    }
    let message = status.message.clone().unwrap_or_default();
    match status.phase {
        Phase::Pending => "The first stage to begin at the controller's next reconcile.".into(),
        Phase::Progressing if message.is_empty() => "The next reconcile.".into(),
        Phase::Progressing => message,
        Phase::WaitingForApproval => match waiting_stage(Some(status)) {
            Some((_, stage)) => format!(
                "Approval of stage {stage:?}: run `kubectl sluice approve {name}{ns}` (or `promote`)."
            ),
            None => message,
        },
        Phase::Paused => format!(
            "A person to resume it: run `kubectl sluice resume {name}{ns}` (harm still rolls back while paused)."
        ),
        Phase::Promoted => {
            "Nothing: it is promoted, the candidate is the default for everybody.".into()
        }
        Phase::RolledBack if rollout.spec.control.abort => format!(
            "Nothing: it was aborted and stays rolled back; `kubectl sluice retry {name}{ns}` starts it again from the first stage."
        ),
        Phase::RolledBack => format!(
            "Nothing: it is rolled back; `kubectl sluice retry {name}{ns}` starts it again from the first stage."
        ),
        Phase::Failed => format!("A fix of the spec: {message}"),
    }
}

fn target_text(target: &Target) -> String {
    match target.choice() {
        Ok(target) => target.to_string(),
        Err(TargetChoiceError::None) => "<none>".into(),
        Err(TargetChoiceError::Several) => "<more than one>".into(),
    }
}

fn control_text(spec: &FeatureRolloutSpec) -> String {
    let c = &spec.control;
    let mut parts = Vec::new();
    if c.paused {
        parts.push("paused".to_owned());
    }
    if let Some(stage) = &c.approve {
        parts.push(format!("approve {stage:?}"));
    }
    if c.abort {
        parts.push("abort".to_owned());
    }
    if c.retry > 0 {
        parts.push(format!("retry {}", c.retry));
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(", ")
    }
}

/// Whether a metric's cohort values are shares (ratio and histogram metrics) rather than
/// plain values (guards).
fn is_share(spec: &FeatureRolloutSpec, metric: &str) -> bool {
    spec.analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .find(|m| m.name == metric)
        .is_some_and(|m| m.guard.is_none())
}

fn cohort_cells(c: Option<&CohortNumbers>, share: bool) -> (String, String) {
    match c {
        // Guards have no baseline to compare with.
        None if !share => ("-".into(), "-".into()),
        None => ("-".into(), "no data".into()),
        Some(c) if share => (format!("{}", c.n), format!("{:.3}%", 100.0 * c.value)),
        Some(c) => (format!("{}", c.n), plain(c.value)),
    }
}

/// A guard's value: whole numbers as they are, others with four decimals.
fn plain(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

fn signed(v: Option<f64>, share: bool) -> String {
    match v {
        None => "-".into(),
        Some(v) if share => format!("{:+.3}pp", 100.0 * v),
        Some(v) => format!("{v:+.4}"),
    }
}

fn metric_rows(spec: &FeatureRolloutSpec, metrics: &[MetricAnalysis]) -> String {
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|m| {
            let share = is_share(spec, &m.name);
            let (bn, brate) = cohort_cells(m.baseline.as_ref(), share);
            let (cn, crate_) = cohort_cells(m.candidate.as_ref(), share);
            vec![
                m.name.clone(),
                format!("{:?}", m.verdict),
                bn,
                brate,
                cn,
                crate_,
                signed(m.effect, share),
                signed(m.bound, share),
            ]
        })
        .collect();
    let text = table(
        &[
            "METRIC",
            "VERDICT",
            "BASE N",
            "BASE RATE",
            "CAND N",
            "CAND RATE",
            "ESTIMATE",
            "BOUND",
        ],
        &rows,
    );
    let mut out = String::new();
    let mut lines = text.lines();
    if let Some(header) = lines.next() {
        let _ = writeln!(out, "  {header}");
    }
    for (line, m) in lines.zip(metrics) {
        let _ = writeln!(out, "  {line}");
        if let Some(reason) = &m.reason {
            let _ = writeln!(out, "      {reason}");
        }
    }
    out
}

/// Whether the comparisons count users or requests: the metrics with per-user queries and
/// their candidate's variance over the binomial at the last look, and those without
/// (`None` when no metric is compared).
fn user_clustering(
    spec: &crate::crd::FeatureRolloutSpec,
    metrics: &[crate::crd::MetricAnalysis],
) -> Option<String> {
    let compared: Vec<(&str, bool)> = spec
        .analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .filter(|m| m.max_increase.is_some())
        .filter_map(|m| {
            let per_user = match (&m.ratio, &m.histogram) {
                (Some(r), _) => r.per_user.is_some(),
                (_, Some(h)) => h.per_user.is_some(),
                _ => return None,
            };
            Some((m.name.as_str(), per_user))
        })
        .collect();
    if compared.is_empty() {
        return None;
    }
    let with: Vec<String> = compared
        .iter()
        .filter(|(_, p)| *p)
        .map(|(name, _)| {
            let variance = metrics
                .iter()
                .find(|m| m.name == *name)
                .and_then(|m| m.user_variance);
            match variance {
                Some(v) => format!(
                    "{name} (candidate variance {:.2}× the binomial, {:.1} effective users)",
                    v.candidate_over_binomial, v.candidate_effective_users
                ),
                None => format!("{name} (no per-user sums yet)"),
            }
        })
        .collect();
    let without: Vec<&str> = compared
        .iter()
        .filter(|(_, p)| !*p)
        .map(|(name, _)| *name)
        .collect();
    let mut parts = Vec::new();
    if !with.is_empty() {
        parts.push(format!("accounted for in {}", with.join(", ")));
    }
    if !without.is_empty() {
        parts.push(format!(
            "NOT accounted for in {} (no perUser queries: requests are judged as independent)",
            without.join(", ")
        ));
    }
    Some(format!("User clustering: {}", parts.join("; ")))
}

/// `kubectl sluice status NAME`.
pub fn status(rollout: &FeatureRollout, now: Timestamp) -> String {
    let spec = &rollout.spec;
    let status = rollout.status.clone().unwrap_or_default();
    let has_status = rollout.status.is_some();
    let names = stage_names(spec);
    let mut out = String::new();
    let field = |out: &mut String, key: &str, value: &str| {
        let _ = writeln!(out, "{:<14}{value}", format!("{key}:"));
    };
    field(
        &mut out,
        "Name",
        rollout.metadata.name.as_deref().unwrap_or_default(),
    );
    if let Some(ns) = &rollout.metadata.namespace {
        field(&mut out, "Namespace", ns);
    }
    field(
        &mut out,
        "Flag",
        &format!(
            "{} ({:?} → {:?})",
            spec.flag.key, spec.flag.baseline, spec.flag.candidate
        ),
    );
    field(&mut out, "Target", &target_text(&spec.target));
    field(
        &mut out,
        "Phase",
        if has_status {
            status.phase.as_str()
        } else {
            "Pending (no status yet)"
        },
    );
    let stage_text = match (status.stage, &status.stage_name) {
        (Some(i), Some(n)) => format!("{} of {} ({n})", i + 1, names.len()),
        _ => "<none>".into(),
    };
    field(&mut out, "Stage", &stage_text);
    field(
        &mut out,
        "Weight",
        status.exposure.as_deref().unwrap_or("<none>"),
    );
    field(&mut out, "Waiting for", &waiting_for(rollout));
    field(&mut out, "Control", &control_text(spec));

    // Stages, the current one marked.
    let waiting = waiting_stage(rollout.status.as_ref()).map(|(i, _)| i);
    let current = status.stage.map(|s| s as usize);
    let rows: Vec<Vec<String>> = spec
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let marker = if Some(i) == current && has_status {
                "*"
            } else {
                ""
            };
            let state = stage_state(&status, has_status, i, current, waiting);
            let weight = match s.audience {
                Some(_) => format!("{} of audience", s.weight),
                None => s.weight.to_string(),
            };
            vec![
                marker.to_owned(),
                (i + 1).to_string(),
                names[i].clone(),
                weight,
                s.duration.clone().unwrap_or_else(|| "-".into()),
                s.min_samples.map_or_else(|| "-".into(), |n| n.to_string()),
                match s.approval {
                    Approval::Auto => "auto".into(),
                    Approval::Required => "required".into(),
                },
                state.to_owned(),
            ]
        })
        .collect();
    let _ = writeln!(out, "\nStages:");
    for line in table(
        &[
            "",
            "#",
            "NAME",
            "WEIGHT",
            "DURATION",
            "MIN SAMPLES",
            "APPROVAL",
            "STATE",
        ],
        &rows,
    )
    .lines()
    {
        let _ = writeln!(out, "  {line}");
    }

    // The last analysis.
    match &status.last_analysis {
        None => {
            let _ = writeln!(out, "\nLast analysis: <none>");
        }
        Some(a) => {
            let stage = names
                .get(a.stage as usize)
                .cloned()
                .unwrap_or_else(|| format!("stage-{}", a.stage + 1));
            let _ = writeln!(
                out,
                "\nLast analysis: {:?} at {} ({} ago), stage {stage:?}",
                a.verdict,
                a.at,
                age(a.at, now)
            );
            if let Some(message) = &a.message {
                let _ = writeln!(out, "  {message}");
            }
            if !a.metrics.is_empty() {
                out.push_str(&metric_rows(spec, &a.metrics));
            }
            if let Some(n) = a.candidate_samples {
                let _ = writeln!(out, "  Candidate samples: {n}");
            }
            match &a.sample_ratio {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "  Sample ratio: {} baseline / {} candidate users: candidate share {:.3}% (expected {:.3}%), p = {:.2e}: {}",
                        s.baseline_users,
                        s.candidate_users,
                        100.0 * s.observed_share,
                        100.0 * s.expected_share,
                        s.p_value,
                        if s.mismatch {
                            "MISMATCH, the stage holds"
                        } else {
                            "ok"
                        }
                    );
                }
                None => {
                    let _ = writeln!(out, "  Sample ratio: not checked (analysis.users unset)");
                }
            }
            if let Some(line) = user_clustering(spec, &a.metrics) {
                let _ = writeln!(out, "  {line}");
            }
            if let Some(r) = &a.request_share {
                let _ = writeln!(
                    out,
                    "  Request share: candidate {:.3}% of requests (expected {:.3}%, {:+.1}%), reported only",
                    100.0 * r.observed_share,
                    100.0 * r.expected_share,
                    100.0 * r.relative_deviation
                );
            }
        }
    }

    // What each stage can detect, at the traffic the first looks observed.
    if let Some(plan) = &status.plan {
        let _ = writeln!(out, "\nPlan ({} ago):", age(plan.computed_at, now));
        for line in crate::simulate::plan::summary::lines(plan) {
            let _ = writeln!(out, "  {line}");
        }
    }

    // Conditions.
    if !status.conditions.is_empty() {
        let rows: Vec<Vec<String>> = status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    age(c.last_transition_time, now),
                    c.message.clone(),
                ]
            })
            .collect();
        let _ = writeln!(out, "\nConditions:");
        for line in table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }

    // Recent history.
    let _ = writeln!(out, "\nRecent history (newest last):");
    if status.history.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        let skip = status.history.len().saturating_sub(STATUS_HISTORY);
        for line in history_table(spec, &status.history[skip..], now).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn stage_state(
    status: &FeatureRolloutStatus,
    has_status: bool,
    index: usize,
    current: Option<usize>,
    waiting: Option<usize>,
) -> &'static str {
    if !has_status {
        return "";
    }
    if Some(index) == waiting {
        return "waiting for approval";
    }
    let Some(current) = current else { return "" };
    match status.phase {
        Phase::Promoted => "done",
        _ if index < current => "done",
        Phase::RolledBack if index == current => "rolled back",
        Phase::Failed if index == current => "failed",
        Phase::Paused if index == current && status.stage_started_at.is_some() => "paused",
        Phase::Paused if index == current => "paused before start",
        Phase::WaitingForApproval if index == current => "done",
        Phase::Progressing if index == current => "running",
        _ => "",
    }
}

/// The history table (`kubectl sluice history`).
pub fn history_table(
    spec: &FeatureRolloutSpec,
    history: &[crate::crd::HistoryEntry],
    now: Timestamp,
) -> String {
    let names = stage_names(spec);
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|h| {
            vec![
                h.at.to_string(),
                age(h.at, now),
                h.from.as_str().to_owned(),
                h.to.as_str().to_owned(),
                h.stage
                    .map(|s| {
                        names
                            .get(s as usize)
                            .cloned()
                            .unwrap_or_else(|| format!("stage-{}", s + 1))
                    })
                    .unwrap_or_else(|| "-".into()),
                crate::crd::exposure_text(h.weight, h.audience),
                h.reason.clone(),
                h.message.clone(),
            ]
        })
        .collect();
    table(
        &[
            "TIME", "AGE", "FROM", "TO", "STAGE", "WEIGHT", "REASON", "MESSAGE",
        ],
        &rows,
    )
}
