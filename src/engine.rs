//! The rollout engine: one pure function, [`plan`], that decides from the spec, the last
//! status, what was just observed and the time what the rollout does next.
//!
//! No clock, no I/O: the same inputs always give the same [`Plan`]. The shells (the
//! Kubernetes controller and standalone mode) observe, call [`plan`], then act in a safe
//! order: write the flag document, then the status that claims it, then the events.
//!
//! The rules, in the order they apply:
//! 1. An invalid spec changes nothing but the status: the flag is left as it is.
//! 2. A changed flag (key, variants, baseline, candidate) or target starts over at the
//!    first stage.
//! 3. A promoted rollout stays promoted; a rolled-back one stays rolled back until
//!    `control.retry` is raised (and `control.abort` is false).
//! 4. `control.abort`, a `Fail` verdict, or errors past `onError` with `action: rollback`
//!    roll back at once, whatever else holds (paused, waiting for approval, a retry
//!    asked for in the same breath).
//! 5. A paused rollout ends no stage.
//! 6. A stage ends when its duration has passed, its minimum samples were seen and a
//!    look made at or after the stage's end (one that covers the stage's whole duration)
//!    passed; then the next stage begins, unless it
//!    needs an approval that `control.approve` does not give. Stages are entered one at a
//!    time, so none is ever skipped. Entering a final 100% stage without a duration is
//!    promotion.

use jiff::{SignedDuration, Timestamp};

use crate::crd::validate::{ValidSpec, ValidStage};
use crate::crd::{
    AnalysisStatus, Approval, AwaitedStage, ErrorAction, FeatureRolloutSpec, FeatureRolloutStatus,
    HistoryEntry, Phase, Problem, Verdict, Weight, exposure_text as weight_text, validate,
};
use crate::flagd::FlagState;

/// Most history entries kept in status; older ones are dropped.
pub const HISTORY_LIMIT: usize = 20;

/// What the shell observed before planning.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    /// The look at the metrics made for this reconcile, if one was due ([`analysis_due`]).
    pub analysis: Option<AnalysisStatus>,
    /// The `metadata.generation` of the spec.
    pub generation: Option<i64>,
    /// What the shell's setup finds wrong with the spec beyond [`validate`]: no
    /// Prometheus to query, a credential file outside the directory Sluice may read, an
    /// unusable Prometheus address. Decided as an invalid spec is (no look, and no
    /// rollback for it; an abort or harm already seen still rolls back): the rollout holds
    /// with `Ready=False` (`InvalidSpec`) until the spec (or Sluice's configuration)
    /// changes.
    pub setup_problems: Vec<Problem>,
}

/// What to do, decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The decision, for logs and metrics.
    pub decision: Decision,
    /// The status to write once the flag is written.
    pub status: FeatureRolloutStatus,
    /// The flag state to write; `None` leaves the flag document untouched.
    pub flag: Option<FlagState>,
    /// Events to emit (transitions only).
    pub events: Vec<Event>,
    /// When to look again; `None` waits for a change of the resource.
    pub next_look: Option<Timestamp>,
}

/// The decision of one plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The first stage begins.
    Start,
    /// The next stage begins.
    Advance {
        /// Index of the stage that ended.
        from: u32,
        /// Index of the stage that began.
        to: u32,
    },
    /// Nothing changes yet.
    Hold {
        /// Why, in a sentence.
        reason: String,
    },
    /// The next stage waits for `control.approve`.
    AwaitApproval {
        /// The stage waiting.
        stage: String,
    },
    /// Held by `control.paused`.
    Pause,
    /// Everybody back on the baseline.
    Rollback {
        /// Why, in a sentence.
        reason: String,
    },
    /// The candidate becomes the default.
    Promote,
    /// The rollout is finished; nothing to do.
    Finished,
    /// The spec cannot be carried out.
    Invalid {
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl Decision {
    /// A bounded name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Start => "start",
            Decision::Advance { .. } => "advance",
            Decision::Hold { .. } => "hold",
            Decision::AwaitApproval { .. } => "await_approval",
            Decision::Pause => "pause",
            Decision::Rollback { .. } => "rollback",
            Decision::Promote => "promote",
            Decision::Finished => "finished",
            Decision::Invalid { .. } => "invalid",
        }
    }
}

/// Whether an event reports routine progress or something to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Routine.
    Normal,
    /// Needs attention.
    Warning,
}

/// A Kubernetes-style event: emitted on transitions only.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Normal or Warning.
    pub type_: EventType,
    /// A PascalCase reason (`StageAdvanced`, `RolledBack`).
    pub reason: &'static str,
    /// A sentence for people.
    pub message: String,
}

/// Whether the shell should look at the metrics before planning now: the rollout is
/// running a stage with metrics and the last look is older than one interval, or was made
/// in another stage.
pub fn analysis_due(
    spec: &FeatureRolloutSpec,
    status: Option<&FeatureRolloutStatus>,
    now: Timestamp,
) -> bool {
    analysis_due_validated(spec, validate(spec).ok().as_ref(), status, now)
}

/// [`analysis_due`] for a spec already validated (`None` when it is invalid): what a
/// reconcile calls, so the spec is validated once.
pub fn analysis_due_validated(
    spec: &FeatureRolloutSpec,
    valid: Option<&ValidSpec>,
    status: Option<&FeatureRolloutStatus>,
    now: Timestamp,
) -> bool {
    let Some(valid) = valid else {
        return false;
    };
    let Some(status) = status else { return false };
    if spec.control.abort {
        // Rollback never waits for a look at the metrics (nor for a slow provider).
        return false;
    }
    let active = matches!(
        status.phase,
        Phase::Progressing | Phase::WaitingForApproval | Phase::Paused
    );
    let exists = status
        .stage
        .is_some_and(|i| (i as usize) < valid.stages.len());
    if !valid.has_metrics() || !active || status.stage_started_at.is_none() || !exists {
        // A stage removed under the rollout holds loudly (`StageRemoved`) without looks:
        // its exposure is no longer in the spec to judge it against.
        return false;
    }
    let ends = status
        .stage
        .zip(status.stage_started_at)
        .map(|(i, started)| started + valid.stages[i as usize].duration);
    match &status.last_analysis {
        None => true,
        Some(last) => {
            Some(last.stage) != status.stage
                || last.at + valid.interval <= now
                // The stage's end needs a look of its own, covering its whole duration.
                || ends.is_some_and(|ends| now >= ends && last.at < ends)
        }
    }
}

/// The stable identity of what is rolled out: a change starts a new rollout.
pub fn fingerprint(spec: &FeatureRolloutSpec) -> String {
    digest(&serde_json::json!({ "flag": spec.flag, "target": spec.target }))
}

/// The stable identity of a stage's exposure: a change restarts the stage.
fn stage_fingerprint(stage: &ValidStage) -> String {
    digest(&serde_json::json!({ "weight": stage.weight.units(), "audience": stage.audience }))
}

/// Keys sorted at every level, so the order a user wrote them in does not matter.
fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(canonical).collect())
        }
        other => other.clone(),
    }
}

/// A stable digest of a JSON value: FNV-1a over its canonical form.
pub(crate) fn digest(value: &serde_json::Value) -> String {
    let identity = canonical(value);
    // FNV-1a over the canonical JSON (maps are ordered): stable across versions and hosts.
    let hash = identity
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// Decides what the rollout does next. Pure: the same inputs always give the same plan.
pub fn plan(
    spec: &FeatureRolloutSpec,
    status: Option<&FeatureRolloutStatus>,
    observations: &Observations,
    now: Timestamp,
) -> Plan {
    let checked = validate(spec);
    plan_validated(
        spec,
        checked.as_ref().map_err(Vec::as_slice),
        status,
        observations,
        now,
    )
}

/// [`plan`] for a spec already validated (`valid` is what [`validate`] returned for it):
/// what a reconcile calls, so the spec is validated once.
pub fn plan_validated(
    spec: &FeatureRolloutSpec,
    valid: Result<&ValidSpec, &[Problem]>,
    status: Option<&FeatureRolloutStatus>,
    observations: &Observations,
    now: Timestamp,
) -> Plan {
    let prev = status.cloned().unwrap_or_default();
    let observed_fail = observations
        .analysis
        .as_ref()
        .filter(|a| a.verdict == Verdict::Fail)
        .cloned();
    let mut p = Planner {
        now,
        prev: prev.clone(),
        next: prev,
        events: Vec::new(),
        observed_fail,
        retry_token: spec.control.retry,
        resync: None,
        repeated_look: None,
    };
    p.next.observed_generation = observations.generation.or(p.prev.observed_generation);

    let valid = match valid {
        Ok(valid) => valid,
        Err(problems) => {
            let problems = problems.to_vec();
            // Rollback never waits: if the flag itself can be rendered, abort and a failing
            // look still roll back, even while the rest of the spec is broken.
            let flag_usable = !spec.flag.key.is_empty()
                && spec.flag.variants.contains_key(&spec.flag.baseline)
                && !problems.iter().any(|p| {
                    p.field.starts_with("spec.flag") || p.field.starts_with("spec.target")
                });
            let wants_rollback = spec.control.abort || p.observed_fail.is_some();
            if flag_usable && wants_rollback && !p.next.phase.is_finished() {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                let why = if spec.control.abort {
                    "control.abort is set"
                } else {
                    "the analysis failed"
                };
                let reason = if spec.control.abort {
                    "Aborted"
                } else {
                    "RolledBack"
                };
                p.set_condition(
                    "Ready",
                    false,
                    "InvalidSpec",
                    &format!("The spec is invalid: {}", list.join("; ")),
                );
                return p.rollback(
                    reason,
                    format!("{why} (the spec is also invalid: {}).", list.join("; ")),
                );
            }
            return p.invalid(problems);
        }
    };
    p.set_condition("Ready", true, "Valid", "The spec is valid.");
    p.resync = Some(valid.interval);
    p.next.warnings = valid.warnings.iter().map(ToString::to_string).collect();
    if p.next.phase == Phase::Failed {
        p.next.phase = if p.next.stage_started_at.is_some() {
            Phase::Progressing
        } else {
            Phase::Pending
        };
    }
    if let Some(analysis) = &observations.analysis {
        p.record_analysis(analysis, valid.on_error.consecutive);
    }

    let fingerprint = fingerprint(spec);
    let changed = p
        .prev
        .fingerprint
        .as_ref()
        .is_some_and(|f| *f != fingerprint);
    p.next.fingerprint = Some(fingerprint);
    if changed {
        p.reset(spec.control.retry);
        p.event(
            EventType::Normal,
            "SpecChanged",
            "The flag or target changed: starting over at the first stage.",
        );
    }

    match p.next.phase {
        Phase::Promoted => return p.finished(spec),
        Phase::RolledBack if spec.control.abort || spec.control.retry <= p.next.retries => {
            return p.finished(spec);
        }
        Phase::RolledBack => {
            p.reset(spec.control.retry);
            p.event(
                EventType::Normal,
                "Retried",
                "control.retry was raised: starting over at the first stage.",
            );
        }
        Phase::Pending if p.prev.fingerprint.is_none() => p.next.retries = spec.control.retry,
        _ => {}
    }

    if spec.control.abort {
        return p.rollback("Aborted", "control.abort is set.".into());
    }
    if let Some(reason) = p.harm(valid) {
        return p.rollback("RolledBack", reason);
    }
    // A spec the shell cannot act on (no Prometheus, a credential file it may not read)
    // holds like an invalid one, after abort and harm already seen have rolled back.
    if !observations.setup_problems.is_empty() {
        return p.invalid(observations.setup_problems.clone());
    }

    match p.next.stage_started_at {
        None => p.before_first_stage(valid, spec),
        Some(started) => p.in_stage(valid, spec, started),
    }
}

/// Why the flag could not be written, as far as planning cares: whether only a fix of
/// the document or the spec helps, or another attempt may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The document holds something Sluice must not overwrite (not a flagd document).
    Document(String),
    /// The target cannot be used where Sluice runs (a `file` target in the cluster, a
    /// special file, ...).
    Target(String),
    /// The target could not be read or written (API error, conflicts past the retries,
    /// a file system error); the shell tries again with backoff.
    Unavailable(String),
}

impl WriteFailure {
    /// The PascalCase reason of the `Ready=False` condition and the Warning event.
    pub fn reason(&self) -> &'static str {
        match self {
            WriteFailure::Document(_) => "FlagDocumentInvalid",
            WriteFailure::Target(_) => "TargetUnsupported",
            WriteFailure::Unavailable(_) => "FlagWriteFailed",
        }
    }

    fn message(&self) -> String {
        match self {
            WriteFailure::Document(e) => format!(
                "The flag document is not one Sluice can change, so the flag is left as it is: {e}. Fix or remove the document."
            ),
            WriteFailure::Target(e) => {
                format!("The flag target cannot be used here, so the flag is left as it is: {e}")
            }
            WriteFailure::Unavailable(e) => format!("Writing the flag failed; retrying: {e}"),
        }
    }
}

/// The plan when the flag `planned` wanted could not be written: the status keeps the
/// stage, phase and exposure it had (it must never claim a flag that was not written),
/// records the look just made (so a failing verdict still rolls back at the next
/// attempt, even when the next look is inconclusive) and says in `Ready=False` what
/// failed. One Warning event when that condition appears. It writes no flag, and its
/// `next_look` is `None`: the shell retries an unavailable target with backoff and waits
/// for a change otherwise. Pure, like [`plan`].
pub fn plan_write_failure(
    status: Option<&FeatureRolloutStatus>,
    planned: &Plan,
    failure: &WriteFailure,
    now: Timestamp,
) -> Plan {
    let previous = status.cloned().unwrap_or_default();
    let reason = failure.reason();
    let message = failure.message();
    let mut held = previous;
    held.last_analysis = planned.status.last_analysis.clone();
    held.consecutive_errors = planned.status.consecutive_errors;
    held.observed_generation = planned.status.observed_generation;
    held.fingerprint = held.fingerprint.or(planned.status.fingerprint.clone());
    let appeared = !held
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == reason);
    held.set_condition("Ready", false, reason, &message, now);
    let events = if appeared {
        vec![Event {
            type_: EventType::Warning,
            reason,
            message: message.clone(),
        }]
    } else {
        Vec::new()
    };
    Plan {
        decision: Decision::Hold { reason: message },
        status: held,
        flag: None,
        events,
        next_look: None,
    }
}

struct Planner {
    now: Timestamp,
    prev: FeatureRolloutStatus,
    next: FeatureRolloutStatus,
    events: Vec<Event>,
    /// A failing look observed for this plan: it rolls back whatever else holds.
    observed_fail: Option<AnalysisStatus>,
    /// `control.retry` in the spec being planned.
    retry_token: u32,
    /// At most how long a running rollout goes without a reconcile (the analysis
    /// interval), so a flag somebody else changed is repaired then, with or without
    /// metrics; `None` for an invalid spec.
    resync: Option<SignedDuration>,
    /// When the look observed for this plan was made, if it only repeated the error
    /// the rollout holds on (and so was not recorded).
    repeated_look: Option<Timestamp>,
}

impl Planner {
    fn event(&mut self, type_: EventType, reason: &'static str, message: impl Into<String>) {
        self.events.push(Event {
            type_,
            reason,
            message: message.into(),
        });
    }

    fn set_condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        self.next
            .set_condition(type_, status, reason, message, self.now);
    }

    /// Sets the exposure the plan serves: `weight`, of the audience only when `audience`.
    fn serve(&mut self, weight: Weight, audience: bool) {
        self.next.weight = Some(weight);
        self.next.audience = audience;
        self.next.exposure = Some(weight_text(weight, audience));
    }

    /// Records the look just made. One that only repeats the error the rollout already
    /// holds on (`onError.consecutive` reached, same stage, the same metrics failing the
    /// same way: [`same_failure`]) is not recorded:
    /// it says nothing new, so the status is not rewritten at every look of a rollout
    /// whose Prometheus is down; `lastAnalysis` stays the look that began the hold (its
    /// `at` says since when) and the count stays where the hold began.
    fn record_analysis(&mut self, analysis: &AnalysisStatus, hold_after: u32) {
        let repeat = analysis.verdict == Verdict::Error
            && self.next.consecutive_errors >= hold_after
            && self
                .next
                .last_analysis
                .as_ref()
                .is_some_and(|kept| same_failure(kept, analysis));
        if repeat {
            self.repeated_look = Some(analysis.at);
            return;
        }
        self.next.consecutive_errors = match analysis.verdict {
            Verdict::Error => self.next.consecutive_errors.saturating_add(1),
            _ => 0,
        };
        self.next.last_analysis = Some(analysis.clone());
    }

    /// Back to the start, as a new rollout: the retry token in force is consumed.
    fn reset(&mut self, retry: u32) {
        self.next.phase = Phase::Pending;
        self.next.stage = None;
        self.next.stage_name = None;
        self.next.stage_started_at = None;
        self.next.stage_fingerprint = None;
        self.next.consecutive_errors = 0;
        self.next.last_analysis = None;
        self.next.retries = retry;
    }

    /// The look that decides the current stage: the latest one made in it.
    fn current_analysis(&self) -> Option<&AnalysisStatus> {
        let started = self.next.stage_started_at?;
        self.next
            .last_analysis
            .as_ref()
            .filter(|a| Some(a.stage) == self.next.stage && a.at >= started)
    }

    /// Evidence of harm that rolls back now, if any.
    fn harm(&self, valid: &ValidSpec) -> Option<String> {
        let analysis = self.current_analysis();
        let failed = self
            .observed_fail
            .as_ref()
            .or(analysis.filter(|a| a.verdict == Verdict::Fail));
        if let Some(a) = failed {
            return Some(format!(
                "The analysis failed: {}",
                a.message.as_deref().unwrap_or("harm detected")
            ));
        }
        let errors = self.next.consecutive_errors;
        if valid.on_error.action == ErrorAction::Rollback && errors >= valid.on_error.consecutive {
            let last = analysis
                .and_then(|a| a.message.as_deref())
                .unwrap_or("analysis error");
            return Some(format!(
                "The analysis errored {errors} times in a row (onError: rollback): {last}"
            ));
        }
        None
    }

    fn finish(
        mut self,
        decision: Decision,
        flag: Option<FlagState>,
        next_look: Option<Timestamp>,
    ) -> Plan {
        if self.next.phase != Phase::WaitingForApproval {
            self.next.awaiting_approval = None;
        }
        let from = (self.prev.phase, self.prev.stage, self.prev.weight);
        let to = (self.next.phase, self.next.stage, self.next.weight);
        if from != to {
            let (reason, message) = match self.events.last() {
                Some(e) => (e.reason.to_owned(), e.message.clone()),
                None => (decision.kind().to_owned(), String::new()),
            };
            self.next.history.push(HistoryEntry {
                at: self.now,
                from: self.prev.phase,
                to: self.next.phase,
                stage: self.next.stage,
                weight: self.next.weight.unwrap_or(Weight::ZERO),
                audience: self.next.audience,
                reason,
                message,
            });
            let excess = self.next.history.len().saturating_sub(HISTORY_LIMIT);
            self.next.history.drain(..excess);
        }
        let progressing = matches!(
            self.next.phase,
            Phase::Pending | Phase::Progressing | Phase::WaitingForApproval | Phase::Paused
        );
        let phase = format!("{:?}", self.next.phase);
        let message = self.next.message.clone().unwrap_or_default();
        self.set_condition("Progressing", progressing, &phase, &message);
        // A running rollout that serves a flag looks again within one interval, even
        // with nothing to analyse, so somebody else's edit of its flag does not last
        // until the stage ends (finished rollouts wait for a change).
        let next_look = match self.resync {
            Some(resync) if progressing && flag.is_some() => {
                let by = self.now + resync;
                Some(next_look.map_or(by, |n| n.min(by)))
            }
            _ => next_look,
        };
        Plan {
            decision,
            status: self.next,
            flag,
            events: self.events,
            next_look,
        }
    }

    fn invalid(mut self, problems: Vec<Problem>) -> Plan {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let message = format!(
            "The spec is invalid; the flag is left as it is. Fix: {}",
            list.join("; ")
        );
        if !self.next.phase.is_finished() {
            self.next.phase = Phase::Failed;
        }
        let was_invalid = self
            .prev
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False");
        if !was_invalid || self.prev.message.as_deref() != Some(message.as_str()) {
            self.event(EventType::Warning, "InvalidSpec", message.clone());
        }
        self.next.message = Some(message.clone());
        self.set_condition("Ready", false, "InvalidSpec", &message);
        self.set_condition("Held", true, "InvalidSpec", &message);
        self.finish(Decision::Invalid { problems }, None, None)
    }

    fn finished(mut self, spec: &FeatureRolloutSpec) -> Plan {
        let (flag, message) = if self.next.phase == Phase::Promoted {
            self.serve(Weight::FULL, false);
            let message = if spec.control.abort {
                "Promoted; control.abort does nothing after promotion: to go back, roll the old variant out as a new candidate."
            } else {
                "Promoted: the candidate is the default for everybody."
            };
            (FlagState::Promoted, message.to_owned())
        } else {
            self.serve(Weight::ZERO, false);
            let message = self
                .next
                .message
                .clone()
                .unwrap_or_else(|| "Rolled back.".into());
            (FlagState::Baseline, message)
        };
        self.next.message = Some(message.clone());
        self.set_condition("Held", false, "Finished", &message);
        self.finish(Decision::Finished, Some(flag), None)
    }

    fn rollback(mut self, reason: &'static str, why: String) -> Plan {
        // Only a retry raised after this rollback may undo it.
        self.next.retries = self.next.retries.max(self.retry_token);
        let message = format!("Rolled back: everybody gets the baseline. {why}");
        self.next.phase = Phase::RolledBack;
        self.serve(Weight::ZERO, false);
        self.next.message = Some(message.clone());
        self.event(EventType::Warning, reason, message.clone());
        self.set_condition("Held", false, reason, &message);
        self.finish(
            Decision::Rollback { reason: why },
            Some(FlagState::Baseline),
            None,
        )
    }

    fn hold_pending(
        mut self,
        phase: Phase,
        decision: Decision,
        message: String,
        reason: &str,
    ) -> Plan {
        self.next.phase = phase;
        self.serve(Weight::ZERO, false);
        self.next.message = Some(message.clone());
        self.set_condition("Held", true, reason, &message);
        self.finish(decision, Some(FlagState::Baseline), None)
    }

    fn before_first_stage(mut self, valid: &ValidSpec, spec: &FeatureRolloutSpec) -> Plan {
        let first = &valid.stages[0];
        self.next.stage = Some(0);
        self.next.stage_name = Some(first.name.clone());
        if spec.control.paused {
            if self.prev.phase != Phase::Paused {
                self.event(
                    EventType::Normal,
                    "Paused",
                    "control.paused is set: the rollout has not started.",
                );
            }
            let message =
                "Paused before the first stage: set control.paused to false to start.".to_owned();
            return self.hold_pending(Phase::Paused, Decision::Pause, message, "Paused");
        }
        if first.approval == Approval::Required
            && spec.control.approve.as_deref() != Some(first.name.as_str())
        {
            let message = format!(
                "Waiting for approval of stage {:?}: set control.approve to {:?}.",
                first.name, first.name
            );
            if self.prev.phase != Phase::WaitingForApproval {
                self.event(EventType::Normal, "AwaitingApproval", message.clone());
            }
            self.next.awaiting_approval = Some(AwaitedStage {
                index: 0,
                name: first.name.clone(),
            });
            let decision = Decision::AwaitApproval {
                stage: first.name.clone(),
            };
            return self.hold_pending(
                Phase::WaitingForApproval,
                decision,
                message,
                "AwaitingApproval",
            );
        }
        self.enter(valid, 0, Decision::Start, "Started")
    }

    fn promote(mut self) -> Plan {
        self.next.phase = Phase::Promoted;
        self.serve(Weight::FULL, false);
        let message = "Promoted: the candidate is the default for everybody.".to_owned();
        self.next.message = Some(message.clone());
        self.event(EventType::Normal, "Promoted", message.clone());
        self.set_condition("Held", false, "Promoted", &message);
        self.finish(Decision::Promote, Some(FlagState::Promoted), None)
    }

    /// Begins stage `index` now (or promotes, for a final stage without a duration).
    fn enter(
        mut self,
        valid: &ValidSpec,
        index: usize,
        decision: Decision,
        reason: &'static str,
    ) -> Plan {
        let stage = &valid.stages[index];
        let last = index + 1 == valid.stages.len();
        self.next.stage = Some(index as u32);
        self.next.stage_name = Some(stage.name.clone());
        self.next.stage_started_at = Some(self.now);
        self.next.stage_fingerprint = Some(stage_fingerprint(stage));
        if last && stage.duration == SignedDuration::ZERO {
            return self.promote();
        }
        self.next.phase = Phase::Progressing;
        self.serve(stage.weight, stage.audience.is_some());
        let message = format!("Stage {:?} began: {}.", stage.name, exposure_text(stage));
        self.event(EventType::Normal, reason, message.clone());
        // The status says what the next plans will say while the stage runs, so the
        // reconcile after this one has nothing to write.
        let running = format!(
            "Stage {:?} ({}): its duration ends at {}.",
            stage.name,
            exposure_text(stage),
            self.now + stage.duration
        );
        self.next.message = Some(running.clone());
        self.set_condition("Held", false, "StageRunning", &running);
        let next_look = self.next_look(valid, stage, self.now);
        self.finish(decision, Some(split(stage)), next_look)
    }

    fn in_stage(
        mut self,
        valid: &ValidSpec,
        spec: &FeatureRolloutSpec,
        started: Timestamp,
    ) -> Plan {
        let last_index = valid.stages.len() - 1;
        let index = self.next.stage.unwrap_or(0) as usize;
        let replaced_by_promotion = index == last_index
            && valid.stages[index].duration.is_zero()
            && self
                .prev
                .stage_fingerprint
                .as_ref()
                .is_some_and(|f| *f != stage_fingerprint(&valid.stages[index]));
        if index > last_index || replaced_by_promotion {
            // The stages were shortened under the current one: never jump to a later
            // stage's exposure without analysis; hold and leave the flag as it is.
            let message = format!(
                "Stage {} no longer exists as it was (the stages were shortened under it): the flag is left as it is; restore the stage, or abort.",
                index + 1
            );
            if self.prev.message.as_deref() != Some(message.as_str()) {
                self.event(EventType::Warning, "StageRemoved", message.clone());
            }
            self.next.message = Some(message.clone());
            self.set_condition("Held", true, "StageRemoved", &message);
            let next_look = self.analysis_look(valid);
            return self.finish(Decision::Hold { reason: message }, None, next_look);
        }
        let stage = &valid.stages[index];
        self.next.stage_name = Some(stage.name.clone());
        self.serve(stage.weight, stage.audience.is_some());
        let flag = Some(split(stage));
        let exposure = stage_fingerprint(stage);
        let mut started = started;
        if self
            .prev
            .stage_fingerprint
            .as_ref()
            .is_some_and(|f| *f != exposure)
        {
            // The current stage's exposure was edited: it starts again, so the new
            // exposure is analysed for the whole duration before the next stage.
            started = self.now;
            self.next.stage_started_at = Some(self.now);
            self.next.last_analysis = None;
            self.next.consecutive_errors = 0;
            self.event(
                EventType::Normal,
                "StageChanged",
                format!(
                    "Stage {:?} was edited: it starts again at {}.",
                    stage.name,
                    exposure_text(stage)
                ),
            );
        }
        self.next.stage_fingerprint = Some(exposure);
        let ends = started + stage.duration;

        if spec.control.paused {
            if self.prev.phase != Phase::Paused {
                self.event(
                    EventType::Normal,
                    "Paused",
                    format!("control.paused is set: holding at stage {:?}.", stage.name),
                );
            }
            let message = format!(
                "Paused at stage {:?} ({}): set control.paused to false to resume. Harm still rolls back.",
                stage.name,
                exposure_text(stage)
            );
            self.next.phase = Phase::Paused;
            self.next.message = Some(message.clone());
            self.set_condition("Held", true, "Paused", &message);
            let next_look = self.analysis_look(valid);
            return self.finish(Decision::Pause, flag, next_look);
        }
        if self.prev.phase == Phase::Paused {
            self.event(
                EventType::Normal,
                "Resumed",
                format!(
                    "control.paused was cleared: stage {:?} goes on.",
                    stage.name
                ),
            );
        }
        self.next.phase = Phase::Progressing;
        let restarted = self.next.stage_started_at != self.prev.stage_started_at;
        if self.prev.phase == Phase::WaitingForApproval && !restarted && index < last_index {
            // The stage was done; it waits for the approval only, whatever later looks say
            // (a failing one rolls back above).
            return self.gate(valid, spec, index, flag);
        }

        // What keeps the stage from ending, besides time.
        let mut waits = Vec::new();
        let analysis = self.current_analysis().cloned();
        // The latest look says how the stage goes while it is at most one interval old;
        // from the stage's end on, only such a look made at or after the end (covering the
        // stage's whole duration) may end it. An older one (the shell skipped a due look,
        // or a failed flag write is retried later) waits for the next look.
        // An error the rollout holds on (`onError.consecutive` reached) stands until a look
        // says otherwise: the looks repeating it are not recorded.
        let holding_on_errors = self.next.consecutive_errors >= valid.on_error.consecutive;
        let fresh = analysis.as_ref().filter(|a| {
            (a.verdict == Verdict::Error && holding_on_errors)
                || (a.at + valid.interval > self.now && (self.now < ends || a.at >= ends))
        });
        if let Some(min) = stage.min_samples {
            let seen = analysis
                .as_ref()
                .and_then(|a| a.candidate_samples)
                .unwrap_or(0);
            if seen < min {
                waits.push((
                    "WaitingForSamples",
                    format!("{seen} of the {min} candidate samples the stage needs were seen"),
                ));
            }
        }
        if valid.has_metrics() && fresh.is_none_or(|a| a.verdict != Verdict::Pass) {
            let (reason, text) = match fresh {
                None if self.now >= ends && analysis.is_some() => (
                    "WaitingForAnalysis",
                    "waiting for a look covering the stage's whole duration".to_owned(),
                ),
                None => (
                    "WaitingForAnalysis",
                    "waiting for a look at the metrics".to_owned(),
                ),
                Some(a)
                    if a.verdict == Verdict::Error
                        && self.next.consecutive_errors >= valid.on_error.consecutive =>
                {
                    (
                        "AnalysisFailing",
                        format!(
                            "the analysis keeps erroring (onError: hold after {} in a row), holding since {}: {}",
                            valid.on_error.consecutive,
                            a.at,
                            a.message.as_deref().unwrap_or("analysis error")
                        ),
                    )
                }
                Some(a) if a.verdict == Verdict::Error => (
                    "AnalysisError",
                    format!(
                        "the analysis errored: {}",
                        a.message.as_deref().unwrap_or("analysis error")
                    ),
                ),
                Some(a) => (
                    "AnalysisInconclusive",
                    format!(
                        "the analysis is inconclusive: {}",
                        a.message.as_deref().unwrap_or("not enough data yet")
                    ),
                ),
            };
            waits.push((reason, text));
        }
        let failing = waits.iter().any(|(r, _)| *r == "AnalysisFailing");
        let was_failing = self.prev.consecutive_errors >= valid.on_error.consecutive;
        if failing && !was_failing {
            let text = waits
                .iter()
                .find(|(r, _)| *r == "AnalysisFailing")
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            self.event(
                EventType::Warning,
                "AnalysisFailing",
                format!("Holding at stage {:?}: {text}.", stage.name),
            );
        }

        if self.now < ends || !waits.is_empty() {
            let mut parts: Vec<String> = Vec::new();
            if self.now < ends {
                parts.push(format!("its duration ends at {ends}"));
            }
            parts.extend(waits.iter().map(|(_, t)| t.clone()));
            let message = format!(
                "Stage {:?} ({}): {}.",
                stage.name,
                exposure_text(stage),
                parts.join("; ")
            );
            // Held: something other than time keeps the stage from ending.
            let held = self.now >= ends || failing;
            let reason = waits.first().map_or("StageRunning", |(r, _)| *r);
            self.next.message = Some(message.clone());
            self.set_condition(
                "Held",
                held,
                if held { reason } else { "StageRunning" },
                &message,
            );
            let next_look = self.next_look(valid, stage, started);
            return self.finish(Decision::Hold { reason: message }, flag, next_look);
        }

        // The stage is done.
        if index == last_index {
            return self.promote();
        }
        self.gate(valid, spec, index, flag)
    }

    /// After stage `index` is done: the next stage begins, unless it waits for approval.
    fn gate(
        mut self,
        valid: &ValidSpec,
        spec: &FeatureRolloutSpec,
        index: usize,
        flag: Option<FlagState>,
    ) -> Plan {
        let stage = &valid.stages[index];
        let upcoming = &valid.stages[index + 1];
        if upcoming.approval == Approval::Required
            && spec.control.approve.as_deref() != Some(upcoming.name.as_str())
        {
            let message = format!(
                "Stage {:?} is done; stage {:?} waits for approval: set control.approve to {:?}.",
                stage.name, upcoming.name, upcoming.name
            );
            if self.prev.phase != Phase::WaitingForApproval {
                self.event(EventType::Normal, "AwaitingApproval", message.clone());
            }
            self.next.phase = Phase::WaitingForApproval;
            self.next.awaiting_approval = Some(AwaitedStage {
                index: index as u32 + 1,
                name: upcoming.name.clone(),
            });
            self.next.message = Some(message.clone());
            self.set_condition("Held", true, "AwaitingApproval", &message);
            let next_look = self.analysis_look(valid);
            return self.finish(
                Decision::AwaitApproval {
                    stage: upcoming.name.clone(),
                },
                flag,
                next_look,
            );
        }
        let decision = Decision::Advance {
            from: index as u32,
            to: index as u32 + 1,
        };
        self.enter(valid, index + 1, decision, "StageAdvanced")
    }

    /// The next look while a stage runs: the next analysis, or the stage's end, whichever
    /// comes first.
    fn next_look(
        &self,
        valid: &ValidSpec,
        stage: &ValidStage,
        started: Timestamp,
    ) -> Option<Timestamp> {
        let ends = started + stage.duration;
        let end = (ends > self.now).then_some(ends);
        match (self.analysis_look(valid), end) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e).or(Some(self.now)),
        }
    }

    /// When the next analysis is due, if metrics are configured.
    fn analysis_look(&self, valid: &ValidSpec) -> Option<Timestamp> {
        if !valid.has_metrics() {
            return None;
        }
        // A look just made that only repeated the kept error counts too.
        let due = match self.current_analysis() {
            Some(a) => a.at.max(self.repeated_look.unwrap_or(a.at)) + valid.interval,
            None => self.now,
        };
        Some(due.max(self.now))
    }
}

/// Whether two errored looks of one stage failed the same way: the same verdict per
/// metric and the same reasons once the resolved queries are left out (they hold the
/// window, which grows at every look), as they are or quoted.
fn same_failure(kept: &AnalysisStatus, new: &AnalysisStatus) -> bool {
    let failure = |a: &AnalysisStatus| {
        let without_queries = |text: &str| {
            a.metrics
                .iter()
                .flat_map(|m| &m.queries)
                .filter(|q| !q.is_empty())
                // A reason may quote the query as Rust's `{:?}` does (quotes escaped).
                .fold(text.to_owned(), |text, query| {
                    text.replace(&format!("{query:?}"), "")
                        .replace(query.as_str(), "")
                })
        };
        let metrics: Vec<(String, Verdict, String)> = a
            .metrics
            .iter()
            .map(|m| {
                let reason = without_queries(m.reason.as_deref().unwrap_or_default());
                (m.name.clone(), m.verdict, reason)
            })
            .collect();
        (
            a.verdict,
            a.stage,
            without_queries(a.message.as_deref().unwrap_or_default()),
            metrics,
        )
    };
    kept.verdict == Verdict::Error && failure(kept) == failure(new)
}

fn split(stage: &ValidStage) -> FlagState {
    FlagState::Split {
        candidate_weight: stage.weight.units(),
        audience: stage.audience.clone(),
    }
}

fn exposure_text(stage: &ValidStage) -> String {
    match stage.audience {
        Some(_) => format!("{} of the audience on the candidate", stage.weight),
        None => format!("{} of users on the candidate", stage.weight),
    }
}
