//! The reconcile step shared by the controller and standalone mode, against an in-memory
//! shell: the order of writes, skipped writes, foreign documents, failed writes that must
//! not lose a rollback, and what deletion leaves behind.

mod support;

use jiff::{SignedDuration, Timestamp};
use sluice::analysis::look::RolloutRef;
use sluice::crd::{
    AnalysisStatus, FeatureRolloutSpec, FeatureRolloutStatus, Phase, Verdict, Weight,
};
use sluice::engine::Decision;
use sluice::flagd::FlagState;
use sluice::reconcile::{Context, Error, Rollout, reconcile, release, state_on_delete};
use support::memory_shell::{MemoryShell, Op};

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
  - { weight: 1, duration: 10m }
  - { weight: 100 }
analysis:
  interval: 1m
  metrics:
    - name: errors
      ratio: { errors: "e", requests: "r" }
      maxIncrease: { relative: "10%" }
"#;

fn spec(yaml: &str) -> FeatureRolloutSpec {
    serde_yaml_ng::from_str(yaml).expect("test spec parses")
}

fn at(minutes: i64) -> Timestamp {
    "2026-11-24T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
}

async fn run(
    shell: &MemoryShell,
    spec: &FeatureRolloutSpec,
    now: Timestamp,
) -> Result<sluice::reconcile::Outcome, Error> {
    let status = shell.status();
    let rollout = Rollout {
        id: RolloutRef {
            namespace: "shop",
            name: "checkout",
        },
        spec,
        status: status.as_ref(),
        generation: Some(1),
    };
    reconcile(shell, &Context::default(), rollout, now).await
}

#[tokio::test]
async fn the_first_reconcile_writes_the_flag_before_the_status_and_then_nothing_changes() {
    let shell = MemoryShell::default();
    let spec = spec(TIMED);
    let outcome = run(&shell, &spec, at(0)).await.unwrap();
    assert_eq!(outcome.decision, Decision::Start);
    assert!(outcome.flag_changed && outcome.status_written);
    let ops = shell.take_ops();
    assert!(matches!(ops[0], Op::Flag(_)), "flag first: {ops:?}");
    assert_eq!(ops[1], Op::Status(Phase::Progressing));
    assert!(ops[2..].iter().all(|op| matches!(op, Op::Event(_))));
    assert_eq!(
        shell.served()["targeting"]["fractional"][0],
        serde_json::json!(["on", 10_000])
    );

    // Same inputs a minute later: no write of any kind.
    let before = shell.status();
    let outcome = run(&shell, &spec, at(1)).await.unwrap();
    pretty_assertions::assert_eq!(before, Some(outcome.status.clone()));
    assert!(!outcome.flag_changed && !outcome.status_written);
    assert_eq!(shell.take_ops(), vec![]);
    assert_eq!(
        outcome.next_look,
        Some(at(2)),
        "one interval (1m) on: the flag is checked then"
    );
}

#[tokio::test]
async fn stages_advance_one_at_a_time_to_promotion() {
    let shell = MemoryShell::default();
    let spec = spec(TIMED);
    run(&shell, &spec, at(0)).await.unwrap();
    let outcome = run(&shell, &spec, at(10)).await.unwrap();
    assert_eq!(outcome.decision, Decision::Advance { from: 0, to: 1 });
    assert_eq!(
        shell.served()["targeting"]["fractional"][0],
        serde_json::json!(["on", 50_000])
    );
    let outcome = run(&shell, &spec, at(20)).await.unwrap();
    assert_eq!(outcome.decision, Decision::Promote);
    assert_eq!(shell.served()["defaultVariant"], "on");
    assert!(shell.served().get("targeting").is_none());
    assert_eq!(shell.status().unwrap().phase, Phase::Promoted);
}

#[tokio::test]
async fn a_foreign_document_is_left_alone_and_said_once() {
    let shell = MemoryShell::with_document("flags = [not json");
    let spec = spec(TIMED);
    let error = run(&shell, &spec, at(0)).await.unwrap_err();
    assert!(error.needs_fix(), "{error}");
    assert_eq!(shell.document().unwrap(), "flags = [not json");
    let status = shell.status().expect("a status saying why");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "FlagDocumentInvalid")
    );
    assert!(
        ready.message.contains("not valid JSON"),
        "{}",
        ready.message
    );
    assert_eq!(status.stage, None, "no stage is claimed without its flag");
    assert_eq!(
        shell.take_ops(),
        vec![Op::Event("FlagDocumentInvalid"), Op::Status(Phase::Pending)]
    );

    // Again: the same condition, no new event, no write.
    run(&shell, &spec, at(1)).await.unwrap_err();
    assert_eq!(shell.take_ops(), vec![]);

    // Fixed by its owner: the rollout starts, and the condition clears.
    *shell.document.lock().unwrap() = Some(r#"{"flags": {}}"#.into());
    run(&shell, &spec, at(2)).await.unwrap();
    let status = shell.status().unwrap();
    assert_eq!(status.phase, Phase::Progressing);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
}

fn failing_look(stage: u32, when: Timestamp) -> AnalysisStatus {
    AnalysisStatus {
        at: when,
        stage,
        verdict: Verdict::Fail,
        message: Some("errors: candidate 3% vs baseline 1%".into()),
        candidate_samples: Some(5_000),
        metrics: vec![],
        sample_ratio: None,
        request_share: None,
    }
}

#[tokio::test]
async fn a_rollback_whose_flag_write_fails_is_not_lost() {
    let shell = MemoryShell::default();
    let spec = spec_with_prometheus(&spec(ANALYSED));
    run(&shell, &spec, at(0)).await.unwrap();
    // The look made in this stage failed (as persisted by an earlier reconcile).
    let mut status = shell.status().unwrap();
    status.last_analysis = Some(failing_look(0, at(1)));
    *shell.status.lock().unwrap() = Some(status);
    shell.take_ops();

    *shell.unavailable.lock().unwrap() = true;
    let error = run(&shell, &spec, at(1)).await.unwrap_err();
    assert!(!error.needs_fix());
    assert_eq!(error.category(), "api");
    let held = shell.status().unwrap();
    assert_eq!(
        held.phase,
        Phase::Progressing,
        "no rollback claimed before it is served"
    );
    assert_eq!(held.last_analysis.as_ref().unwrap().verdict, Verdict::Fail);
    let ready = held.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "FlagWriteFailed");
    assert_eq!(
        shell.take_ops(),
        vec![Op::Event("FlagWriteFailed"), Op::Status(Phase::Progressing)]
    );

    // The API comes back: the rollback happens, flag before status.
    *shell.unavailable.lock().unwrap() = false;
    let outcome = run(&shell, &spec, at(1)).await.unwrap();
    assert!(matches!(outcome.decision, Decision::Rollback { .. }));
    let ops = shell.take_ops();
    assert!(matches!(ops[0], Op::Flag(_)), "{ops:?}");
    assert_eq!(ops[1], Op::Status(Phase::RolledBack));
    assert!(shell.served().get("targeting").is_none());
    assert_eq!(shell.served()["defaultVariant"], "off");
}

/// A spec with metrics and no Prometheus to ask is a mistake only a change can cure: it
/// waits for one with a condition saying what to set. It never becomes a failed look,
/// which `onError: rollback` would turn into a rollback.
#[tokio::test]
async fn a_spec_without_prometheus_waits_for_a_change_and_never_rolls_back() {
    let shell = MemoryShell::default();
    let spec = spec(&format!(
        "{ANALYSED}  onError: {{ consecutive: 1, action: rollback }}\n"
    ));
    let mut outcome = None;
    for minute in [0, 1, 2, 3] {
        outcome = Some(run(&shell, &spec, at(minute)).await.unwrap());
    }
    let outcome = outcome.unwrap();
    assert_ne!(outcome.status.phase, Phase::RolledBack);
    assert!(outcome.status.last_analysis.is_none(), "no look is made");
    assert!(outcome.analysis_took.is_none());
    assert_eq!(outcome.status.consecutive_errors, 0);
    assert_eq!(outcome.next_look, None, "it waits for a change");
    let ready = outcome
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("spec.analysis.prometheus.address")
            && ready.message.contains("no Prometheus is configured"),
        "the condition names the field: {}",
        ready.message
    );

    // Given a Prometheus, the same rollout goes on (the next look is due).
    let fixed = spec_with_prometheus(&spec);
    let outcome = run(&shell, &fixed, at(4)).await.unwrap();
    assert!(outcome.next_look.is_some());
    assert!(
        outcome
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}

fn spec_with_prometheus(spec: &FeatureRolloutSpec) -> FeatureRolloutSpec {
    let mut fixed = spec.clone();
    fixed.analysis.as_mut().unwrap().prometheus = Some(sluice::crd::PrometheusSpec {
        address: "http://127.0.0.1:9".into(),
        ..Default::default()
    });
    fixed
}

#[tokio::test]
async fn deletion_restores_the_baseline_unless_promoted() {
    let spec = spec(TIMED);
    let shell = MemoryShell::default();
    run(&shell, &spec, at(0)).await.unwrap();
    let status = shell.status();
    assert_eq!(state_on_delete(status.as_ref()), Some(FlagState::Baseline));
    assert!(release(&shell, &spec, status.as_ref()).await.unwrap());
    assert!(shell.served().get("targeting").is_none());
    assert_eq!(shell.served()["defaultVariant"], "off");
    // Twice is harmless: nothing changes.
    assert!(!release(&shell, &spec, status.as_ref()).await.unwrap());

    // Never started: nothing to undo, nothing written.
    assert_eq!(state_on_delete(None), None);
    let fresh = FeatureRolloutStatus::default();
    assert_eq!(state_on_delete(Some(&fresh)), None);

    // Promoted: the candidate stays the default.
    let promoted = FeatureRolloutStatus {
        phase: Phase::Promoted,
        weight: Some(Weight::FULL),
        ..Default::default()
    };
    assert_eq!(state_on_delete(Some(&promoted)), None);
}

/// In the cluster, a rollout's author must not make the controller send any file it can
/// read (its own ServiceAccount token) to an address of their choosing: credential files
/// outside the allowed directory are a spec mistake naming the field, which holds the
/// rollout (no look, no rollback) until the spec changes.
#[tokio::test]
async fn credential_files_outside_the_allowed_directory_are_refused() {
    let yaml = format!(
        "{ANALYSED}  onError: {{ consecutive: 1, action: rollback }}\n  prometheus:\n    address: http://127.0.0.1:9\n    bearerTokenFile: {{FILE}}\n"
    );
    for (file, refused) in [
        ("/var/run/secrets/kubernetes.io/serviceaccount/token", true),
        ("/etc/sluice/prometheus/../../../var/run/token", true),
        ("token", true),
        ("/etc/sluice/prometheus/token", false),
    ] {
        let spec = spec(&yaml.replace("{FILE}", file));
        let shell = MemoryShell::default();
        let context = Context::default().with_credentials_dir("/etc/sluice/prometheus");
        let mut outcome = None;
        for minute in [0, 1] {
            let status = shell.status();
            let rollout = Rollout {
                id: RolloutRef {
                    namespace: "shop",
                    name: "checkout",
                },
                spec: &spec,
                status: status.as_ref(),
                generation: Some(1),
            };
            outcome = Some(
                reconcile(&shell, &context, rollout, at(minute))
                    .await
                    .unwrap(),
            );
        }
        let status = outcome.unwrap().status;
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("a Ready condition");
        if refused {
            assert_eq!(ready.reason, "InvalidSpec", "{file}");
            assert!(
                ready
                    .message
                    .contains("spec.analysis.prometheus.bearerTokenFile"),
                "{file}: {}",
                ready.message
            );
            assert!(status.last_analysis.is_none(), "{file}: no look is made");
            assert_ne!(status.phase, Phase::RolledBack, "{file}");
        } else {
            // Allowed: the look is made, and is an error here (nothing listens on port
            // 9, and the file does not exist), which onError turns into a rollback.
            let look = status.last_analysis.expect("a look was due");
            assert_eq!(look.verdict, Verdict::Error, "{file}");
            assert_eq!(status.phase, Phase::RolledBack, "{file}");
        }
    }
}

/// Collects what `sluice::audit` logs while the guard lives (the test's runtime runs on
/// this thread).
struct Audit(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Audit {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_audit() -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("sluice::audit=info")
        .with_ansi(false)
        .with_writer(move || Audit(writer.clone()))
        .finish();
    (lines, tracing::subscriber::set_default(subscriber))
}

fn audit_lines(lines: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> Vec<String> {
    let text = String::from_utf8(std::mem::take(&mut *lines.lock().unwrap())).unwrap();
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn somebody_elses_edit_of_the_flag_is_repaired_at_the_next_reconcile_and_audited() {
    let shell = MemoryShell::default();
    let spec = spec(TIMED); // no metrics: nothing else brings a reconcile before 10m
    let started = run(&shell, &spec, at(0)).await.unwrap();
    let (lines, _guard) = capture_audit();
    let promoted = serde_json::json!({
        "flags": { "checkout": {
            "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on"
        } }
    });
    let (mut now, mut next) = (at(0), started.next_look);
    for edit in [promoted.to_string(), "{\"flags\": {}}".to_owned()] {
        shell.edit(&edit);
        let next_look = next.expect("a running stage looks again");
        assert!(
            next_look <= now + SignedDuration::from_mins(1),
            "the next reconcile must come within one interval, not at the stage's end: {next_look}"
        );
        now = next_look;
        let outcome = run(&shell, &spec, now).await.unwrap();
        next = outcome.next_look;
        assert!(outcome.flag_changed, "repaired");
        assert_eq!(outcome.status.stage, Some(0), "the stage goes on");
        assert_eq!(
            shell.served()["targeting"]["fractional"][0],
            serde_json::json!(["on", 10_000])
        );
    }
    let audit = audit_lines(&lines);
    assert_eq!(audit.len(), 2, "one line per repair: {audit:#?}");
    let repairs: Vec<&String> = audit
        .iter()
        .filter(|l| l.contains("reason=\"drift_repaired\""))
        .collect();
    assert_eq!(repairs.len(), 2, "{audit:#?}");
    assert!(repairs[0].contains("from_weight=100%"), "{}", repairs[0]);
    assert!(repairs[1].contains("from_weight=absent"), "{}", repairs[1]);
    assert!(
        repairs.iter().all(|l| l.contains("to_weight=1%")),
        "{repairs:?}"
    );
}

#[tokio::test]
async fn the_audit_line_says_what_the_document_served_when_the_status_is_gone() {
    // The flag file serves 30 % but the status was deleted: the rollout starts over, and
    // the audit line must not claim the flag served 0 %.
    let served = sluice::flagd::render_flag(
        &sluice::reconcile::definition(&spec(TIMED)),
        &FlagState::Split {
            candidate_weight: 300_000,
            audience: None,
        },
    );
    let shell = MemoryShell::with_document(
        &serde_json::json!({ "flags": { "checkout": served } }).to_string(),
    );
    let (lines, _guard) = capture_audit();
    let outcome = run(&shell, &spec(TIMED), at(0)).await.unwrap();
    assert_eq!(outcome.decision, Decision::Start);
    let audit = audit_lines(&lines);
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert!(audit[0].contains("from_weight=30%"), "{}", audit[0]);
    assert!(audit[0].contains("to_weight=1%"), "{}", audit[0]);
    assert!(audit[0].contains("reason=\"start\""), "{}", audit[0]);
}
