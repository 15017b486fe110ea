//! The rollout engine, scenario by scenario: stage timing, analysis, approvals, pause,
//! abort, retry, promotion, spec changes and invalid specs. The properties that must hold
//! for any spec and any sequence of events are in `engine_properties.rs`.

use jiff::{SignedDuration, Timestamp};
use sluice::crd::{AnalysisStatus, FeatureRolloutSpec, FeatureRolloutStatus, Phase, Verdict};
use sluice::engine::{Decision, EventType, HISTORY_LIMIT, Observations, Plan, analysis_due, plan};
use sluice::flagd::FlagState;

fn spec(yaml: &str) -> FeatureRolloutSpec {
    serde_yaml_ng::from_str(yaml).expect("test spec parses")
}

const TIMED: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { file: { path: flags.json } }
stages:
  - { weight: 1, duration: 10m }
  - { weight: 5, duration: 10m }
  - { weight: 100 }
"#;

const ANALYSED: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { file: { path: flags.json } }
stages:
  - { name: one, weight: 1, duration: 10m }
  - { name: five, weight: 5, duration: 10m, minSamples: 100 }
  - { name: quarter, weight: 25, duration: 10m, approval: required }
  - { name: all, weight: 100 }
analysis:
  interval: 1m
  metrics:
    - name: errors
      ratio: { errors: "e", requests: "r" }
      maxIncrease: { relative: "10%" }
"#;

fn t0() -> Timestamp {
    "2026-11-24T12:00:00Z".parse().unwrap()
}

fn at(minutes: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(minutes)
}

fn look(stage: u32, when: Timestamp, verdict: Verdict) -> Observations {
    Observations {
        analysis: Some(AnalysisStatus {
            at: when,
            stage,
            verdict,
            message: Some(format!("{verdict:?} at stage {stage}")),
            candidate_samples: Some(1_000),
            metrics: vec![],
            sample_ratio: None,
            request_share: None,
        }),
        generation: Some(1),
        ..Observations::default()
    }
}

fn nothing() -> Observations {
    Observations {
        analysis: None,
        generation: Some(1),
        ..Observations::default()
    }
}

/// Plans and checks that planning again from the same inputs gives the same plan.
fn step(
    spec: &FeatureRolloutSpec,
    status: Option<&FeatureRolloutStatus>,
    obs: &Observations,
    now: Timestamp,
) -> Plan {
    let first = plan(spec, status, obs, now);
    assert_eq!(
        first,
        plan(spec, status, obs, now),
        "planning is not deterministic"
    );
    first
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason).collect()
}

fn split(percent: u32) -> Option<FlagState> {
    Some(FlagState::Split {
        candidate_weight: percent * 10_000,
        audience: None,
    })
}

#[test]
fn a_new_rollout_starts_its_first_stage() {
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    assert_eq!(p.decision, Decision::Start);
    assert_eq!(p.status.phase, Phase::Progressing);
    assert_eq!(p.status.stage, Some(0));
    assert_eq!(p.status.stage_name.as_deref(), Some("stage-1"));
    assert_eq!(p.status.exposure.as_deref(), Some("1%"));
    assert_eq!(p.status.stage_started_at, Some(t0()));
    assert_eq!(p.flag, split(1));
    assert_eq!(reasons(&p), ["Started"]);
    assert_eq!(
        p.next_look,
        Some(at(1)),
        "without metrics the next look is one interval away (the flag is checked then), not the stage's end"
    );
    assert_eq!(p.status.history.len(), 1);
}

#[test]
fn stages_advance_on_time_alone_without_metrics() {
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    let held = step(&s, Some(&p.status), &nothing(), at(9));
    assert!(matches!(held.decision, Decision::Hold { .. }));
    assert_eq!(held.flag, split(1));
    assert!(held.events.is_empty());
    assert_eq!(held.status.history, p.status.history);
    assert!(
        held.status
            .message
            .as_deref()
            .unwrap()
            .contains("ends at 2026-11-24T12:10:00Z"),
        "{:?}",
        held.status.message
    );

    let advanced = step(&s, Some(&held.status), &nothing(), at(10));
    assert_eq!(advanced.decision, Decision::Advance { from: 0, to: 1 });
    assert_eq!(advanced.flag, split(5));
    assert_eq!(advanced.status.stage_started_at, Some(at(10)));
    assert_eq!(reasons(&advanced), ["StageAdvanced"]);

    let promoted = step(&s, Some(&advanced.status), &nothing(), at(20));
    assert_eq!(promoted.decision, Decision::Promote);
    assert_eq!(promoted.status.phase, Phase::Promoted);
    assert_eq!(
        promoted.status.stage,
        Some(2),
        "the final stage is entered, not skipped"
    );
    assert_eq!(promoted.flag, Some(FlagState::Promoted));
    assert_eq!(promoted.next_look, None);

    let after = step(&s, Some(&promoted.status), &nothing(), at(500));
    assert_eq!(after.decision, Decision::Finished);
    assert_eq!(after.flag, Some(FlagState::Promoted));
    assert!(after.events.is_empty());
}

#[test]
fn a_stage_with_metrics_needs_a_fresh_passing_look_from_that_stage() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    assert_eq!(p.next_look, Some(t0()), "the first look is due at once");
    assert!(analysis_due(&s, Some(&p.status), t0()));

    // Duration over, but no look yet.
    let p = step(&s, Some(&p.status), &nothing(), at(10));
    assert!(matches!(p.decision, Decision::Hold { .. }));
    let held = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Held")
        .unwrap();
    assert_eq!(
        (held.status.as_str(), held.reason.as_str()),
        ("True", "WaitingForAnalysis")
    );

    // A pass from 2 minutes ago is stale at a 1-minute interval.
    let stale = step(&s, Some(&p.status), &look(0, at(8), Verdict::Pass), at(10));
    assert!(
        matches!(stale.decision, Decision::Hold { .. }),
        "{:?}",
        stale.decision
    );

    // A fresh pass ends the stage.
    let p = step(&s, Some(&p.status), &look(0, at(10), Verdict::Pass), at(10));
    assert_eq!(p.decision, Decision::Advance { from: 0, to: 1 });
    assert_eq!(p.flag, split(5));

    // The pass from stage 0 does not count in stage 1.
    let p = step(&s, Some(&p.status), &nothing(), at(20));
    assert!(
        matches!(p.decision, Decision::Hold { .. }),
        "{:?}",
        p.decision
    );
}

#[test]
fn inconclusive_and_errored_looks_hold_with_the_reason() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(
        &s,
        Some(&p.status),
        &look(0, at(10), Verdict::Inconclusive),
        at(10),
    );
    assert!(matches!(p.decision, Decision::Hold { .. }));
    assert_eq!(p.flag, split(1));
    let message = p.status.message.clone().unwrap();
    assert!(
        message.contains("inconclusive") && message.contains("Inconclusive at stage 0"),
        "{message}"
    );
    let held = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Held")
        .unwrap();
    assert_eq!(held.reason, "AnalysisInconclusive");

    let p = step(
        &s,
        Some(&p.status),
        &look(0, at(11), Verdict::Error),
        at(11),
    );
    assert_eq!(p.status.consecutive_errors, 1);
    assert!(p.events.is_empty());
    let p = step(
        &s,
        Some(&p.status),
        &look(0, at(12), Verdict::Error),
        at(12),
    );
    let p = step(
        &s,
        Some(&p.status),
        &look(0, at(13), Verdict::Error),
        at(13),
    );
    assert_eq!(p.status.consecutive_errors, 3);
    assert_eq!(reasons(&p), ["AnalysisFailing"]);
    assert_eq!(p.events[0].type_, EventType::Warning);
    assert_eq!(p.flag, split(1), "onError: hold keeps the exposure");
    let p = step(
        &s,
        Some(&p.status),
        &look(0, at(14), Verdict::Error),
        at(14),
    );
    assert!(
        p.events.is_empty(),
        "the warning is emitted once, on the transition"
    );
    let p = step(&s, Some(&p.status), &look(0, at(15), Verdict::Pass), at(15));
    assert_eq!(p.status.consecutive_errors, 0);
    assert_eq!(p.decision, Decision::Advance { from: 0, to: 1 });
}

/// Issue 14's fourth controller defect: a rollout whose Prometheus stays unreachable
/// rewrote its status at every look, because the count of errors in a row (in
/// `consecutiveErrors`, the message and the `Held` condition) and the look's time changed
/// each time. Once the rollout holds on the error (`onError.consecutive` reached), a look
/// that repeats it changes nothing in status; the next look is still an interval later,
/// and the message says since when the rollout holds.
#[test]
fn a_metrics_provider_that_stays_down_rewrites_the_status_only_until_the_hold() {
    let s = spec(ANALYSED);
    let mut p = step(&s, None, &nothing(), t0());
    let mut writes = 0;
    let mut since_hold = Vec::new();
    for minute in 1..=30 {
        let now = at(minute);
        assert!(analysis_due(&s, Some(&p.status), now), "a look at {now}");
        // As a look reports it: the resolved query (its window grows) in the reasons.
        let query = format!("sum(increase(errors_total{{job=\"shop\"}}[{minute}m]))");
        let reason = format!("query {query:?} failed: Prometheus is unreachable");
        let mut errored = look(0, now, Verdict::Error);
        let analysis = errored.analysis.as_mut().unwrap();
        analysis.message = Some(format!("errors: {reason}"));
        analysis.metrics = vec![
            serde_json::from_value(serde_json::json!({
                "name": "errors", "queries": [query], "verdict": "Error", "reason": reason,
            }))
            .unwrap(),
        ];
        let next = step(&s, Some(&p.status), &errored, now);
        assert_eq!(
            next.next_look,
            Some(at(minute + 1)),
            "the next look is an interval after this one"
        );
        if next.status != p.status {
            writes += 1;
            if p.status.consecutive_errors >= 3 {
                since_hold.push(minute);
            }
        }
        p = next;
    }
    // Three errors to reach the hold (`onError.consecutive` 3), then only the end of the
    // stage's duration (minute 10) is news.
    assert_eq!(since_hold, [10], "status rewritten while holding");
    assert_eq!(writes, 4, "status writes over 30 errored looks");
    let message = p.status.message.clone().unwrap();
    assert!(
        message.contains(&format!("holding since {}", at(3))),
        "{message}"
    );
    let held = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Held")
        .unwrap();
    assert_eq!(held.reason, "AnalysisFailing");
    // A look that errors another way is news; one that passes ends the hold.
    let mut other = look(0, at(31), Verdict::Error);
    other.analysis.as_mut().unwrap().message = Some("timeout".into());
    let p2 = step(&s, Some(&p.status), &other, at(31));
    assert_ne!(p2.status, p.status);
    assert!(p2.status.message.clone().unwrap().contains("timeout"));
    let p3 = step(
        &s,
        Some(&p2.status),
        &look(0, at(32), Verdict::Pass),
        at(32),
    );
    assert_eq!(p3.status.consecutive_errors, 0);
    assert_eq!(p3.decision, Decision::Advance { from: 0, to: 1 });
}

#[test]
fn errors_past_the_limit_roll_back_when_configured() {
    let s = spec(&ANALYSED.replace(
        "metrics:",
        "onError: { consecutive: 2, action: rollback }\n  metrics:",
    ));
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &look(0, at(1), Verdict::Error), at(1));
    assert_eq!(p.status.phase, Phase::Progressing);
    let p = step(&s, Some(&p.status), &look(0, at(2), Verdict::Error), at(2));
    assert_eq!(p.status.phase, Phase::RolledBack);
    assert_eq!(p.flag, Some(FlagState::Baseline));
}

#[test]
fn a_failing_look_rolls_back_at_once_whatever_else_holds() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    let failed = step(&s, Some(&p.status), &look(0, at(1), Verdict::Fail), at(1));
    assert!(matches!(failed.decision, Decision::Rollback { .. }));
    assert_eq!(failed.flag, Some(FlagState::Baseline));
    assert_eq!(failed.status.phase, Phase::RolledBack);
    assert_eq!(failed.status.exposure.as_deref(), Some("0%"));
    assert_eq!(reasons(&failed), ["RolledBack"]);
    assert_eq!(failed.events[0].type_, EventType::Warning);
    assert_eq!(failed.next_look, None);

    // Paused: still rolls back.
    let mut paused = s.clone();
    paused.control.paused = true;
    let p2 = step(&paused, Some(&p.status), &nothing(), at(1));
    assert_eq!(p2.status.phase, Phase::Paused);
    let failed = step(
        &paused,
        Some(&p2.status),
        &look(0, at(2), Verdict::Fail),
        at(2),
    );
    assert_eq!(failed.flag, Some(FlagState::Baseline));

    // Rolled back stays rolled back.
    let later = step(&s, Some(&failed.status), &nothing(), at(60));
    assert_eq!(later.decision, Decision::Finished);
    assert_eq!(later.flag, Some(FlagState::Baseline));
    assert!(later.events.is_empty());
}

#[test]
fn minimum_samples_hold_the_stage() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &look(0, at(10), Verdict::Pass), at(10));
    assert_eq!(p.status.stage, Some(1));
    let mut few = look(1, at(20), Verdict::Pass);
    few.analysis.as_mut().unwrap().candidate_samples = Some(40);
    let held = step(&s, Some(&p.status), &few, at(20));
    assert!(matches!(held.decision, Decision::Hold { .. }));
    assert!(
        held.status
            .message
            .as_deref()
            .unwrap()
            .contains("40 of the 100 candidate samples")
    );
}

#[test]
fn an_approval_gate_waits_at_the_previous_exposure_until_approved() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &look(0, at(10), Verdict::Pass), at(10));
    let p = step(&s, Some(&p.status), &look(1, at(20), Verdict::Pass), at(20));
    assert_eq!(
        p.decision,
        Decision::AwaitApproval {
            stage: "quarter".into()
        }
    );
    assert_eq!(p.status.phase, Phase::WaitingForApproval);
    assert_eq!(p.status.stage, Some(1));
    assert_eq!(
        p.status.awaiting_approval,
        Some(sluice::crd::AwaitedStage {
            index: 2,
            name: "quarter".into()
        }),
        "the status names the stage that waits (kubectl reads it)"
    );
    assert_eq!(
        p.flag,
        split(5),
        "the gated stage's exposure is not applied before approval"
    );
    assert_eq!(reasons(&p), ["AwaitingApproval"]);
    assert_eq!(p.next_look, Some(at(21)), "analysis goes on while waiting");

    // Still waiting, analysis goes on; a failing look still rolls back.
    let waiting = step(&s, Some(&p.status), &look(1, at(21), Verdict::Pass), at(21));
    assert_eq!(waiting.status.phase, Phase::WaitingForApproval);
    assert!(waiting.events.is_empty());
    let failed = step(
        &s,
        Some(&waiting.status),
        &look(1, at(22), Verdict::Fail),
        at(22),
    );
    assert_eq!(failed.flag, Some(FlagState::Baseline));

    // Approved: the next stage starts.
    let mut approved = s.clone();
    approved.control.approve = Some("quarter".into());
    let p = step(
        &approved,
        Some(&waiting.status),
        &look(1, at(22), Verdict::Pass),
        at(22),
    );
    assert_eq!(p.decision, Decision::Advance { from: 1, to: 2 });
    assert_eq!(p.status.awaiting_approval, None, "nothing waits any more");
    assert_eq!(p.flag, split(25));
}

#[test]
fn a_gated_first_stage_waits_on_the_baseline() {
    let s = spec(&TIMED.replace(
        "{ weight: 1, duration: 10m }",
        "{ name: first, weight: 1, duration: 10m, approval: required }",
    ));
    let p = step(&s, None, &nothing(), t0());
    assert_eq!(p.status.phase, Phase::WaitingForApproval);
    assert_eq!(p.flag, Some(FlagState::Baseline));
    assert_eq!(p.status.stage_started_at, None);
    let mut approved = s.clone();
    approved.control.approve = Some("first".into());
    let p = step(&approved, Some(&p.status), &nothing(), at(5));
    assert_eq!(p.decision, Decision::Start);
    assert_eq!(p.status.stage_started_at, Some(at(5)));
}

#[test]
fn pause_holds_and_resume_goes_on() {
    let s = spec(TIMED);
    let mut paused = s.clone();
    paused.control.paused = true;
    let p = step(&s, None, &nothing(), t0());
    let p = step(&paused, Some(&p.status), &nothing(), at(3));
    assert_eq!(p.decision, Decision::Pause);
    assert_eq!(reasons(&p), ["Paused"]);
    assert_eq!(p.flag, split(1));
    let p = step(&paused, Some(&p.status), &nothing(), at(30));
    assert_eq!(p.status.phase, Phase::Paused, "no stage ends while paused");
    assert!(p.events.is_empty());
    assert_eq!(
        p.next_look,
        Some(at(31)),
        "without metrics a paused rollout still looks at its flag every interval"
    );
    let p = step(&s, Some(&p.status), &nothing(), at(31));
    assert_eq!(p.decision, Decision::Advance { from: 0, to: 1 });
    assert_eq!(reasons(&p), ["Resumed", "StageAdvanced"]);
}

#[test]
fn a_rollout_paused_from_the_start_does_not_start() {
    let mut s = spec(TIMED);
    s.control.paused = true;
    let p = step(&s, None, &nothing(), t0());
    assert_eq!(p.status.phase, Phase::Paused);
    assert_eq!(p.flag, Some(FlagState::Baseline));
}

#[test]
fn abort_rolls_back_and_retry_starts_over() {
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &nothing(), at(10));
    let mut aborted = s.clone();
    aborted.control.abort = true;
    let p = step(&aborted, Some(&p.status), &nothing(), at(11));
    assert!(matches!(p.decision, Decision::Rollback { .. }));
    assert_eq!(reasons(&p), ["Aborted"]);
    assert_eq!(p.flag, Some(FlagState::Baseline));

    // Raising retry while abort is still set changes nothing.
    let mut both = aborted.clone();
    both.control.retry = 1;
    let p = step(&both, Some(&p.status), &nothing(), at(12));
    assert_eq!(p.status.phase, Phase::RolledBack);

    // Clearing abort without raising retry changes nothing either.
    let p = step(&s, Some(&p.status), &nothing(), at(13));
    assert_eq!(p.status.phase, Phase::RolledBack);

    let mut retried = s.clone();
    retried.control.retry = 1;
    let p = step(&retried, Some(&p.status), &nothing(), at(14));
    assert_eq!(p.decision, Decision::Start);
    assert_eq!(reasons(&p), ["Retried", "Started"]);
    assert_eq!(p.status.stage, Some(0));
    assert_eq!(p.flag, split(1));
    assert_eq!(p.status.retries, 1);
    let again = step(&retried, Some(&p.status), &nothing(), at(15));
    assert!(
        matches!(again.decision, Decision::Hold { .. }),
        "a retry is acted on once"
    );
}

#[test]
fn a_retry_number_present_at_creation_is_not_a_retry() {
    let mut s = spec(ANALYSED);
    s.control.retry = 3;
    let p = step(&s, None, &nothing(), t0());
    assert_eq!(p.status.retries, 3);
    let p = step(&s, Some(&p.status), &look(0, at(1), Verdict::Fail), at(1));
    let p = step(&s, Some(&p.status), &nothing(), at(2));
    assert_eq!(p.status.phase, Phase::RolledBack);
}

#[test]
fn a_final_stage_with_a_duration_holds_at_full_exposure_then_promotes() {
    let s = spec(&ANALYSED.replace(
        "{ name: all, weight: 100 }",
        "{ name: all, weight: 100, duration: 5m }",
    ));
    let mut status = step(&s, None, &nothing(), t0()).status;
    for (stage, minute) in [(0, 10), (1, 20)] {
        status = step(
            &s,
            Some(&status),
            &look(stage, at(minute), Verdict::Pass),
            at(minute),
        )
        .status;
    }
    let mut approved = s.clone();
    approved.control.approve = Some("quarter".into());
    let p = step(
        &approved,
        Some(&status),
        &look(1, at(21), Verdict::Pass),
        at(21),
    );
    let p = step(
        &approved,
        Some(&p.status),
        &look(2, at(31), Verdict::Pass),
        at(31),
    );
    assert_eq!(p.status.stage, Some(3));
    assert_eq!(p.flag, split(100));
    // At 100% the analysis judges guards and `max` only (comparisons do not apply), and
    // the stage still needs a passing look: an inconclusive or errored one holds.
    for verdict in [Verdict::Inconclusive, Verdict::Error] {
        let held = step(
            &approved,
            Some(&p.status),
            &look(3, at(36), verdict),
            at(36),
        );
        assert!(
            matches!(held.decision, Decision::Hold { .. }),
            "{verdict:?}: {:?}",
            held.decision
        );
        assert_eq!(held.flag, split(100));
    }
    let p2 = step(
        &approved,
        Some(&p.status),
        &look(3, at(36), Verdict::Pass),
        at(36),
    );
    assert_eq!(p2.decision, Decision::Promote);
    let p3 = step(
        &approved,
        Some(&p.status),
        &look(3, at(33), Verdict::Fail),
        at(33),
    );
    assert_eq!(p3.flag, Some(FlagState::Baseline));
}

#[test]
fn changing_the_candidate_starts_over() {
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &nothing(), at(10));
    assert_eq!(p.status.stage, Some(1));
    let changed = spec(
        &TIMED
            .replace(
                r#"variants: { "on": true, "off": false }"#,
                r#"variants: { "on": true, "off": false, "v3": 3 }"#,
            )
            .replace(r#"candidate: "on""#, r#"candidate: "v3""#),
    );
    let p = step(&changed, Some(&p.status), &nothing(), at(11));
    assert_eq!(reasons(&p), ["SpecChanged", "Started"]);
    assert_eq!(p.status.stage, Some(0));
    assert_eq!(p.flag, split(1));

    // A promoted rollout with a new candidate is a new rollout too.
    let p = step(&changed, Some(&p.status), &nothing(), at(21));
    let p = step(&changed, Some(&p.status), &nothing(), at(31));
    assert_eq!(p.status.phase, Phase::Promoted);
    let p = step(&s, Some(&p.status), &nothing(), at(40));
    assert_eq!(p.status.phase, Phase::Progressing);
    assert_eq!(p.status.stage, Some(0));
}

#[test]
fn editing_stages_mid_rollout_applies_to_the_current_stage() {
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &nothing(), at(10));
    assert_eq!(p.flag, split(5));
    // Only the current stage's duration is edited: the stage timer goes on.
    let longer = spec(&TIMED.replace(
        "{ weight: 5, duration: 10m }",
        "{ weight: 5, duration: 20m }",
    ));
    let p = step(&longer, Some(&p.status), &nothing(), at(12));
    assert_eq!(p.status.stage_started_at, Some(at(10)));
    assert!(p.events.is_empty());
    // Its weight is edited: the new exposure applies and the stage starts again, so the
    // new exposure is watched for the whole duration before the next stage.
    let edited = spec(&TIMED.replace(
        "{ weight: 5, duration: 10m }",
        "{ weight: 3, duration: 20m }",
    ));
    let p = step(&edited, Some(&p.status), &nothing(), at(13));
    assert_eq!(p.flag, split(3));
    assert_eq!(p.status.stage_started_at, Some(at(13)));
    assert_eq!(reasons(&p), ["StageChanged"]);
    let p = step(&edited, Some(&p.status), &nothing(), at(30));
    assert!(
        matches!(p.decision, Decision::Hold { .. }),
        "{:?}",
        p.decision
    );
    // Stages removed under the current one: hold, flag untouched, never a jump to 100%.
    let shorter = spec(&TIMED.replace(
        "  - { weight: 1, duration: 10m }\n  - { weight: 5, duration: 10m }\n",
        "  - { weight: 1, duration: 10m }\n",
    ));
    let p = step(&shorter, Some(&p.status), &nothing(), at(31));
    assert_eq!(p.status.stage, Some(1));
    assert_eq!(p.flag, None);
    assert_eq!(reasons(&p), ["StageRemoved"]);
    let again = step(&shorter, Some(&p.status), &nothing(), at(32));
    assert!(again.events.is_empty());
    assert_eq!(again.flag, None);
}

#[test]
fn abort_and_failing_looks_roll_back_even_when_the_spec_is_invalid() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    let mut broken = s.clone();
    broken.stages[1].duration = Some("0s".into());
    let failed = step(
        &broken,
        Some(&p.status),
        &look(0, at(1), Verdict::Fail),
        at(1),
    );
    assert_eq!(failed.flag, Some(FlagState::Baseline));
    assert_eq!(failed.status.phase, Phase::RolledBack);
    broken.control.abort = true;
    let aborted = step(&broken, Some(&p.status), &nothing(), at(1));
    assert_eq!(aborted.flag, Some(FlagState::Baseline));
    assert_eq!(reasons(&aborted), ["Aborted"]);
    // A broken flag cannot be rendered: nothing is written.
    broken.flag.baseline = "missing".into();
    assert_eq!(step(&broken, Some(&p.status), &nothing(), at(1)).flag, None);
}

#[test]
fn a_retry_raised_before_a_rollback_does_not_undo_it() {
    let mut s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    s.control.retry = 1; // raised while progressing: nothing to retry yet
    let p = step(&s, Some(&p.status), &nothing(), at(1));
    let p = step(&s, Some(&p.status), &look(0, at(2), Verdict::Fail), at(2));
    assert_eq!(p.status.phase, Phase::RolledBack);
    let p = step(&s, Some(&p.status), &nothing(), at(3));
    assert_eq!(
        p.status.phase,
        Phase::RolledBack,
        "the earlier retry undid the rollback"
    );
    s.control.retry = 2;
    let p = step(&s, Some(&p.status), &nothing(), at(4));
    assert_eq!(p.decision, Decision::Start);
}

#[test]
fn waiting_for_approval_does_not_flap_with_later_looks() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &look(0, at(10), Verdict::Pass), at(10));
    let mut p = step(&s, Some(&p.status), &look(1, at(20), Verdict::Pass), at(20));
    assert_eq!(p.status.phase, Phase::WaitingForApproval);
    let history = p.status.history.len();
    for (minute, verdict) in
        (21..30).zip([Verdict::Inconclusive, Verdict::Pass].into_iter().cycle())
    {
        p = step(
            &s,
            Some(&p.status),
            &look(1, at(minute), verdict),
            at(minute),
        );
        assert_eq!(p.status.phase, Phase::WaitingForApproval);
        assert!(p.events.is_empty(), "{:?}", p.events);
    }
    assert_eq!(p.status.history.len(), history);
}

#[test]
fn a_status_with_nothing_new_is_written_once() {
    // Planning again a minute later changes nothing in status (no countdowns), so the
    // shell can skip the write and does not wake itself up.
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    let p1 = step(&s, Some(&p.status), &nothing(), at(1));
    let p2 = step(&s, Some(&p1.status), &nothing(), at(2));
    assert_eq!(p1.status, p2.status);
}

#[test]
fn reordering_object_keys_in_variants_is_not_a_new_rollout() {
    let a = spec(&TIMED.replace(
        r#"variants: { "on": true, "off": false }"#,
        r#"variants: { "on": { "a": 1, "b": 2 }, "off": false }"#,
    ));
    let b = spec(&TIMED.replace(
        r#"variants: { "on": true, "off": false }"#,
        r#"variants: { "on": { "b": 2, "a": 1 }, "off": false }"#,
    ));
    assert_eq!(
        sluice::engine::fingerprint(&a),
        sluice::engine::fingerprint(&b)
    );
}

#[test]
fn an_invalid_spec_leaves_the_flag_alone_until_fixed() {
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    let p = step(&s, Some(&p.status), &nothing(), at(10));
    let mut broken = s.clone();
    broken.flag.candidate = "off".into();
    let bad = step(&broken, Some(&p.status), &nothing(), at(11));
    assert!(
        matches!(&bad.decision, Decision::Invalid { problems } if problems[0].field == "spec.flag.candidate")
    );
    assert_eq!(bad.flag, None);
    assert_eq!(bad.status.phase, Phase::Failed);
    assert_eq!(bad.next_look, None);
    assert_eq!(reasons(&bad), ["InvalidSpec"]);
    let ready = bad
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(ready.message.contains("spec.flag.candidate"));
    let again = step(&broken, Some(&bad.status), &nothing(), at(12));
    assert!(again.events.is_empty(), "the same problem is reported once");

    let fixed = step(&s, Some(&again.status), &nothing(), at(13));
    assert_eq!(fixed.status.phase, Phase::Progressing);
    assert_eq!(fixed.status.stage, Some(1), "it goes on where it was");
    assert_eq!(fixed.flag, split(5));
}

#[test]
fn conditions_change_transition_time_only_on_transitions() {
    let s = spec(TIMED);
    let p = step(&s, None, &nothing(), t0());
    let p1 = step(&s, Some(&p.status), &nothing(), at(1));
    let p2 = step(&s, Some(&p1.status), &nothing(), at(2));
    for c in &p2.status.conditions {
        assert_eq!(
            c.last_transition_time,
            t0(),
            "{} moved without a transition",
            c.type_
        );
    }
    let mut paused = s.clone();
    paused.control.paused = true;
    let p3 = step(&paused, Some(&p2.status), &nothing(), at(3));
    let held = p3
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Held")
        .unwrap();
    assert_eq!(
        (held.status.as_str(), held.last_transition_time),
        ("True", at(3))
    );
}

#[test]
fn history_is_bounded() {
    let s = spec(TIMED);
    let mut paused = s.clone();
    paused.control.paused = true;
    let mut status = step(&s, None, &nothing(), t0()).status;
    for minute in 1..=50 {
        let which = if minute % 2 == 0 { &s } else { &paused };
        status = step(
            which,
            Some(&status),
            &nothing(),
            t0() + SignedDuration::from_secs(minute),
        )
        .status;
    }
    assert_eq!(status.history.len(), HISTORY_LIMIT);
    assert_eq!(
        status.history.last().unwrap().at,
        t0() + SignedDuration::from_secs(50)
    );
}

#[test]
fn a_stage_ends_only_on_a_look_made_at_or_after_its_end() {
    let s = spec(ANALYSED);
    let p = step(&s, None, &nothing(), t0());
    // A pass 30 s before the stage's end: less than an interval old at the end, but the
    // last 30 s of the stage were never analysed.
    let before_end = at(10) - SignedDuration::from_secs(30);
    let p = step(
        &s,
        Some(&p.status),
        &look(0, before_end, Verdict::Pass),
        before_end,
    );
    assert!(
        analysis_due(&s, Some(&p.status), at(10)),
        "the stage's end needs its own look, though the last one is not an interval old"
    );
    let held = step(&s, Some(&p.status), &nothing(), at(10));
    assert!(
        matches!(held.decision, Decision::Hold { .. }),
        "{:?}",
        held.decision
    );
    let message = held.status.message.as_deref().unwrap();
    assert!(message.contains("whole duration"), "{message}");
    // The look at the end passes: the stage ends.
    let p = step(
        &s,
        Some(&held.status),
        &look(0, at(10), Verdict::Pass),
        at(10),
    );
    assert_eq!(p.decision, Decision::Advance { from: 0, to: 1 });
    // A look made after the end (a late reconcile) ends it too.
    let p = step(&s, None, &nothing(), t0());
    let late = at(10) + SignedDuration::from_secs(5);
    let p = step(&s, Some(&p.status), &look(0, late, Verdict::Pass), late);
    assert_eq!(p.decision, Decision::Advance { from: 0, to: 1 });
}

#[test]
fn analysis_is_due_once_per_interval_while_a_stage_runs() {
    let s = spec(ANALYSED);
    assert!(
        !analysis_due(&s, None, t0()),
        "nothing to analyse before the first stage"
    );
    let p = step(&s, None, &nothing(), t0());
    assert!(analysis_due(&s, Some(&p.status), t0()));
    let p = step(
        &s,
        Some(&p.status),
        &look(0, t0(), Verdict::Inconclusive),
        t0(),
    );
    assert!(!analysis_due(
        &s,
        Some(&p.status),
        t0() + SignedDuration::from_secs(59)
    ));
    assert!(analysis_due(&s, Some(&p.status), at(1)));
    assert_eq!(p.next_look, Some(at(1)));
    assert!(
        !analysis_due(&spec(TIMED), Some(&p.status), at(1)),
        "no metrics, no analysis"
    );
}
