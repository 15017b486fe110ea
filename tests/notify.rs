//! Notifications end to end: a reconcile that rolls back or promotes sends webhooks to
//! local receivers started here (checked in both formats), and a receiver that hangs or
//! answers 500 never delays the rollback; the 500 one ends in a `NotificationFailed`
//! event after the bounded attempts.
//!
//! The tests run on Tokio's current-thread runtime: a spawned delivery cannot make
//! progress until the test awaits, so "the reconcile returned while the delivery was
//! still pending" is an ordering fact, not a race.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use sluice::analysis::look::RolloutRef;
use sluice::crd::{
    AnalysisStatus, FeatureRolloutSpec, FeatureRolloutStatus, NotificationTrigger, Phase,
    SampleRatio, Verdict, Weight,
};
use sluice::engine::{Decision, Event, EventType};
use sluice::notify::{Notifier, NotifierConfig, Webhook, notifications};
use sluice::reconcile::{Context, Rollout, Shell, reconcile};
use support::fake::{Behaviour, FakeServer};
use support::memory_shell::MemoryShell;

const TIMED: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { file: { path: flags.json } }
stages:
  - { name: canary, weight: 1, duration: 10m }
  - { weight: 100 }
"#;

const ANALYSED: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { file: { path: flags.json } }
stages:
  - { name: canary, weight: 5, duration: 10m }
  - { weight: 100 }
analysis:
  interval: 1m
  prometheus: { address: "http://127.0.0.1:9" }
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
    context: &Context,
    spec: &FeatureRolloutSpec,
    now: Timestamp,
) -> sluice::reconcile::Outcome {
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
    reconcile(shell, context, rollout, now)
        .await
        .expect("the reconcile succeeds")
}

/// A shell whose rollout is in its first stage with a failing look half a minute before
/// `at(3)` (made in this stage, within the interval: no new look is due), so the
/// reconcile at `at(3)` rolls back.
async fn failing_rollout(spec: &FeatureRolloutSpec) -> MemoryShell {
    let shell = MemoryShell::default();
    let quiet = Context::default();
    run(&shell, &quiet, spec, at(0)).await;
    let mut status = shell.status().expect("started");
    assert_eq!(status.phase, Phase::Progressing);
    status.last_analysis = Some(AnalysisStatus {
        at: at(3) - SignedDuration::from_secs(30),
        stage: 0,
        verdict: Verdict::Fail,
        message: Some("errors: the candidate's error rate is above the tolerance".into()),
        candidate_samples: Some(4000),
        metrics: Vec::new(),
        sample_ratio: None,
        request_share: None,
    });
    *shell.status.lock().unwrap() = Some(status);
    shell.ops.lock().unwrap().clear();
    shell
}

fn fast(webhooks: Vec<Webhook>) -> NotifierConfig {
    NotifierConfig {
        webhooks,
        timeout: Duration::from_secs(30),
        attempts: 3,
        backoff: Duration::from_millis(10),
    }
}

fn hook(text: &str) -> Webhook {
    text.parse().expect("a valid webhook")
}

fn body(server: &FakeServer, index: usize) -> Value {
    let recorded = server.recorded();
    let request = recorded.get(index).expect("a request");
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    serde_json::from_str(&request.body).expect("a JSON body")
}

#[tokio::test]
async fn a_rollback_and_a_promotion_reach_json_and_slack_receivers() {
    let json_receiver = FakeServer::start(Behaviour::Respond(vec![(200, "{}".into())])).await;
    let slack_receiver = FakeServer::start(Behaviour::Respond(vec![(200, "ok".into())])).await;
    let promotions_only = FakeServer::start(Behaviour::Respond(vec![(204, String::new())])).await;
    let (notifier, mut failures) = Notifier::new(fast(vec![
        hook(&format!("json:{}/hooks/json", json_receiver.url)),
        hook(&format!(
            "slack:{}/services/T0/B0/SECRET",
            slack_receiver.url
        )),
    ]))
    .unwrap();
    let context = Context::default().with_notifier(notifier.clone());

    // The rollout's own webhook, for promotions only.
    let mut analysed = spec(ANALYSED);
    analysed.notifications = serde_yaml_ng::from_str(&format!(
        "[{{ url: '{}/mine', format: json, on: [Promoted] }}]",
        promotions_only.url
    ))
    .unwrap();

    // A rollback.
    let shell = failing_rollout(&analysed).await;
    let outcome = run(&shell, &context, &analysed, at(3)).await;
    assert!(matches!(outcome.decision, Decision::Rollback { .. }));
    notifier.idle().await;
    assert_eq!(json_receiver.requests(), 1);
    assert_eq!(slack_receiver.requests(), 1);
    assert_eq!(
        promotions_only.requests(),
        0,
        "the rollout's webhook wants promotions only"
    );

    let json = body(&json_receiver, 0);
    assert_eq!(json["source"], "sluice");
    assert_eq!(json["trigger"], "RolledBack");
    assert_eq!(json["reason"], "RolledBack");
    assert_eq!(json["severity"], "warning");
    assert_eq!(json["rollout"], "checkout");
    assert_eq!(json["namespace"], "shop");
    assert_eq!(json["flag"], "checkout");
    assert_eq!(json["phase"], "RolledBack");
    assert_eq!(json["stage"], "canary");
    assert_eq!(json["weight"], "0%");
    assert_eq!(json["previousWeight"], "5%");
    assert_eq!(json["verdict"], "Fail");
    assert!(
        json["verdictSummary"]
            .as_str()
            .unwrap()
            .starts_with("Fail: errors: the candidate's error rate"),
        "{json}"
    );
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with("Rolled back: everybody gets the baseline."),
        "{json}"
    );
    assert_eq!(json["time"], "2026-11-24T12:03:00Z");

    let slack = body(&slack_receiver, 0);
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains("RolledBack shop/checkout"), "{text}");
    assert!(text.contains("flag checkout"), "{text}");
    let blocks = slack["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    assert!(
        blocks[0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("Rolled back: everybody gets the baseline."),
    );
    let context_line = blocks[1]["elements"][0]["text"].as_str().unwrap();
    assert!(
        context_line.contains("*weight* 0% (was 5%)"),
        "{context_line}"
    );
    assert!(context_line.contains("*stage* canary"), "{context_line}");
    assert!(
        context_line.contains("*verdict* Fail: errors"),
        "{context_line}"
    );

    // A promotion: the timed rollout's first stage is over.
    let timed = {
        let mut s = spec(TIMED);
        s.notifications = analysed.notifications.clone();
        s
    };
    let shell = MemoryShell::default();
    run(&shell, &Context::default(), &timed, at(0)).await;
    let outcome = run(&shell, &context, &timed, at(10)).await;
    assert_eq!(outcome.decision, Decision::Promote);
    notifier.idle().await;
    assert_eq!(json_receiver.requests(), 2);
    assert_eq!(slack_receiver.requests(), 2);
    assert_eq!(promotions_only.requests(), 1);
    for json in [body(&json_receiver, 1), body(&promotions_only, 0)] {
        assert_eq!(json["trigger"], "Promoted");
        assert_eq!(json["reason"], "Promoted");
        assert_eq!(json["severity"], "info");
        assert_eq!(json["phase"], "Promoted");
        assert_eq!(json["weight"], "100%");
        assert_eq!(json["previousWeight"], "1%");
        assert_eq!(json["verdict"], Value::Null, "no analysis configured");
        assert_eq!(
            json["message"],
            "Promoted: the candidate is the default for everybody."
        );
    }
    let slack = body(&slack_receiver, 1);
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .starts_with(":white_check_mark: Promoted shop/checkout"),
        "{slack}"
    );
    assert_eq!((notifier.sent(), notifier.failed()), (5, 0));
    assert!(failures.try_recv().is_err(), "no delivery failed");
}

#[tokio::test]
async fn a_receiver_that_hangs_does_not_delay_the_rollback() {
    let receiver = FakeServer::start(Behaviour::Hang).await;
    let (notifier, _failures) = Notifier::new(NotifierConfig {
        webhooks: vec![hook(&receiver.url)],
        timeout: Duration::from_secs(600),
        attempts: 1,
        backoff: Duration::from_millis(10),
    })
    .unwrap();
    let context = Context::default().with_notifier(notifier.clone());
    let analysed = spec(ANALYSED);
    let shell = failing_rollout(&analysed).await;

    let outcome = run(&shell, &context, &analysed, at(3)).await;

    // The reconcile has returned with the flag rolled back and the status written, while
    // the delivery has not even started (nothing else ran on this thread yet).
    assert!(matches!(outcome.decision, Decision::Rollback { .. }));
    assert_eq!(shell.served()["defaultVariant"], "off");
    assert!(shell.served().get("targeting").is_none());
    assert_eq!(shell.status().unwrap().phase, Phase::RolledBack);
    assert_eq!(
        shell.ops(),
        ["flag", "status RolledBack", "event RolledBack"]
    );
    assert_eq!(notifier.pending(), 1);

    // The receiver gets the request and never answers: the delivery stays pending, and
    // the rollout is unaffected.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the receiver never got the notification"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(notifier.pending(), 1, "the receiver hangs: still pending");
    assert_eq!(shell.status().unwrap().phase, Phase::RolledBack);
}

#[tokio::test]
async fn a_receiver_that_fails_gets_bounded_retries_then_a_notification_failed_event() {
    let receiver = FakeServer::start(Behaviour::Respond(vec![(
        500,
        "{\"error\":\"down\"}".into(),
    )]))
    .await;
    let secret_url = format!("{}/services/T0/B0/SECRET", receiver.url);
    let (notifier, mut failures) =
        Notifier::new(fast(vec![hook(&format!("slack:{secret_url}"))])).unwrap();
    let context = Context::default().with_notifier(notifier.clone());
    let analysed = spec(ANALYSED);
    let shell = failing_rollout(&analysed).await;

    let outcome = run(&shell, &context, &analysed, at(3)).await;
    assert!(matches!(outcome.decision, Decision::Rollback { .. }));
    assert_eq!(shell.status().unwrap().phase, Phase::RolledBack);
    assert_eq!(
        notifier.pending(),
        1,
        "the reconcile returned before any attempt"
    );

    // The shell drains the failures and publishes them as events.
    notifier.idle().await;
    let failure = failures.recv().await.expect("a failure report");
    shell.publish(&failure.event()).await;

    assert_eq!(receiver.requests(), 3, "exactly the configured attempts");
    assert_eq!(
        shell.ops(),
        [
            "flag",
            "status RolledBack",
            "event RolledBack",
            "event NotificationFailed"
        ]
    );
    let event = failure.event();
    assert_eq!(event.type_, EventType::Warning);
    assert_eq!(event.reason, "NotificationFailed");
    assert!(
        event.message.contains("after 3 attempt(s)"),
        "{}",
        event.message
    );
    assert!(event.message.contains("HTTP 500"), "{}", event.message);
    assert!(
        !event.message.contains("SECRET"),
        "the URL's token must not leak: {}",
        event.message
    );
    assert_eq!(failure.trigger, NotificationTrigger::RolledBack);
    assert_eq!(
        (failure.namespace.as_str(), failure.name.as_str()),
        ("shop", "checkout")
    );
    assert_eq!((notifier.sent(), notifier.failed()), (0, 1));
    assert_eq!(shell.status().unwrap().phase, Phase::RolledBack);
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let receiver = FakeServer::start(Behaviour::Respond(vec![(404, "no".into())])).await;
    let (notifier, mut failures) = Notifier::new(fast(vec![hook(&receiver.url)])).unwrap();
    let context = Context::default().with_notifier(notifier.clone());
    let analysed = spec(ANALYSED);
    let shell = failing_rollout(&analysed).await;
    run(&shell, &context, &analysed, at(3)).await;
    notifier.idle().await;
    let failure = failures.recv().await.expect("a failure report");
    assert_eq!((receiver.requests(), failure.attempts), (1, 1));
    assert!(
        failure.error.contains("HTTP 404 (not retried)"),
        "{}",
        failure.error
    );
}

fn running_status() -> FeatureRolloutStatus {
    FeatureRolloutStatus {
        phase: Phase::Progressing,
        stage: Some(0),
        stage_name: Some("canary".into()),
        weight: Weight::from_units(50_000),
        exposure: Some("5%".into()),
        stage_started_at: Some(at(0)),
        ..FeatureRolloutStatus::default()
    }
}

fn look(verdict: Verdict, reason: &str, mismatch: Option<bool>) -> AnalysisStatus {
    look_with_cause(verdict, reason, mismatch, None)
}

fn look_with_cause(
    verdict: Verdict,
    reason: &str,
    mismatch: Option<bool>,
    cause: Option<&str>,
) -> AnalysisStatus {
    serde_json::from_value(serde_json::json!({
        "at": at(12).to_string(),
        "stage": 0,
        "verdict": format!("{verdict:?}"),
        "message": reason,
        "metrics": [{ "name": "errors", "verdict": format!("{verdict:?}"), "reason": reason, "cause": cause }],
    }))
    .map(|mut a: AnalysisStatus| {
        a.sample_ratio = mismatch.map(|mismatch| SampleRatio {
            baseline_users: 900.0,
            candidate_users: 20.0,
            expected_share: 0.05,
            observed_share: 0.0217,
            p_value: 1e-6,
            mismatch,
        });
        a
    })
    .unwrap()
}

#[test]
fn holds_that_need_a_person_are_told_once_when_they_begin() {
    let spec = spec(ANALYSED);
    let id = RolloutRef {
        namespace: "shop",
        name: "checkout",
    };
    let before = running_status();

    // A sample ratio mismatch appears: one NeedsAttention; the next look that still
    // mismatches says nothing new.
    let mut srm = running_status();
    srm.last_analysis = Some(look(
        Verdict::Inconclusive,
        "sample ratio mismatch",
        Some(true),
    ));
    let told = notifications(&id, &spec, &before, &srm, &[], at(12));
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].trigger, NotificationTrigger::NeedsAttention);
    assert_eq!(told[0].reason, "SampleRatioMismatch");
    assert!(notifications(&id, &spec, &srm, &srm, &[], at(13)).is_empty());

    // No data during the whole stage (the query is probably wrong) needs a person; no
    // data yet does not.
    let mut no_data = running_status();
    no_data.last_analysis = Some(look_with_cause(
        Verdict::Inconclusive,
        "no data for the candidate cohort during the whole stage: the query is probably wrong",
        None,
        Some("NoDataAllStage"),
    ));
    let told = notifications(&id, &spec, &before, &no_data, &[], at(12));
    assert_eq!(
        told.iter().map(|n| n.reason.as_str()).collect::<Vec<_>>(),
        ["NoData"]
    );
    let mut early = running_status();
    early.last_analysis = Some(look(
        Verdict::Inconclusive,
        "no data for the candidate cohort yet",
        Some(false),
    ));
    assert!(notifications(&id, &spec, &before, &early, &[], at(12)).is_empty());
    // The decision is on the cause, never on the words: the same words without it (a
    // reworded or translated message elsewhere) make no notification, and the cause
    // with other words does.
    let mut words_only = running_status();
    words_only.last_analysis = Some(look(
        Verdict::Inconclusive,
        "no data for the candidate cohort during the whole stage",
        None,
    ));
    assert!(notifications(&id, &spec, &before, &words_only, &[], at(12)).is_empty());
    let mut cause_only = running_status();
    cause_only.last_analysis = Some(look_with_cause(
        Verdict::Inconclusive,
        "keine Daten",
        None,
        Some("NoDataAllStage"),
    ));
    assert_eq!(
        notifications(&id, &spec, &before, &cause_only, &[], at(12))
            .iter()
            .map(|n| n.reason.as_str())
            .collect::<Vec<_>>(),
        ["NoData"]
    );

    // Events map to their notifications; routine ones make none.
    let events = [
        Event {
            type_: EventType::Normal,
            reason: "AwaitingApproval",
            message: "Stage \"canary\" is done; stage \"stage-2\" waits for approval.".into(),
        },
        Event {
            type_: EventType::Warning,
            reason: "AnalysisFailing",
            message: "Holding: the analysis errored 3 times in a row.".into(),
        },
        Event {
            type_: EventType::Normal,
            reason: "StageAdvanced",
            message: "Stage began.".into(),
        },
    ];
    let told = notifications(&id, &spec, &before, &before, &events, at(12));
    assert_eq!(
        told.iter()
            .map(|n| (n.trigger, n.reason.as_str()))
            .collect::<Vec<_>>(),
        [
            (NotificationTrigger::NeedsAttention, "AwaitingApproval"),
            (NotificationTrigger::ProviderTrouble, "AnalysisFailing"),
        ]
    );
}

#[test]
fn webhooks_parse_from_the_command_line_and_hide_their_tokens() {
    let slack = hook("slack:https://hooks.slack.com/services/T0/B0/SECRET");
    assert_eq!(slack.format, sluice::crd::NotificationFormat::Slack);
    assert_eq!(slack.url, "https://hooks.slack.com/services/T0/B0/SECRET");
    assert_eq!(slack.destination(), "https://hooks.slack.com/…");
    assert!(!format!("{slack:?}").contains("SECRET"));
    let json = hook("json:http://receiver:8080/x?token=SECRET");
    assert_eq!(json.format, sluice::crd::NotificationFormat::Json);
    assert_eq!(json.destination(), "http://receiver:8080/…");
    let bare = hook("https://example.com/hook");
    assert_eq!(bare.format, sluice::crd::NotificationFormat::Json);
    for bad in [
        "ftp://example.com/x",
        "slack:",
        "teams:https://x",
        "https://",
    ] {
        let error = bad.parse::<Webhook>().expect_err(bad).to_string();
        assert!(error.starts_with("the URL "), "{bad}: {error}");
    }
}

#[test]
fn notifications_are_validated_in_the_spec() {
    let mut bad = spec(TIMED);
    bad.notifications = serde_yaml_ng::from_str(
        "[{ url: 'ftp://hooks.example.com/T0/SECRET' }, { url: 'https://ok.example.com', on: [Promoted, Promoted] }]",
    )
    .unwrap();
    let problems = sluice::crd::validate(&bad).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "spec.notifications[0].url: has the scheme \"ftp\": use http or https",
            "spec.notifications[1].on: names Promoted twice",
        ]
    );
    assert!(!text.iter().any(|t| t.contains("SECRET")));
}

#[tokio::test]
async fn failures_are_forwarded_until_the_notifier_is_gone() {
    let receiver = FakeServer::start(Behaviour::Respond(vec![(503, String::new())])).await;
    let (notifier, failures) = Notifier::new(NotifierConfig {
        attempts: 2,
        ..fast(vec![hook(&receiver.url)])
    })
    .unwrap();
    let published = std::sync::Arc::new(Mutex::new(Vec::new()));
    let forwarder = sluice::notify::forward_failures(failures, {
        let published = published.clone();
        move |failure| {
            let published = published.clone();
            async move { published.lock().unwrap().push(failure.event()) }
        }
    });
    let context = Context::default().with_notifier(notifier.clone());
    let analysed = spec(ANALYSED);
    let shell = failing_rollout(&analysed).await;
    run(&shell, &context, &analysed, at(3)).await;
    notifier.idle().await;
    drop(context);
    drop(notifier);
    forwarder
        .await
        .expect("the forwarder ends with the notifier");
    let published = published.lock().unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].reason, "NotificationFailed");
    assert!(
        published[0].message.contains("HTTP 503"),
        "{}",
        published[0].message
    );
    assert_eq!(receiver.requests(), 2);
}

#[tokio::test]
async fn a_rollback_that_cannot_be_written_needs_attention() {
    let receiver = FakeServer::start(Behaviour::Respond(vec![(200, "{}".into())])).await;
    let (notifier, _failures) = Notifier::new(fast(vec![hook(&receiver.url)])).unwrap();
    let context = Context::default().with_notifier(notifier.clone());
    let analysed = spec(ANALYSED);
    let shell = failing_rollout(&analysed).await;
    *shell.unavailable.lock().unwrap() = true;

    let status = shell.status();
    let rollout = Rollout {
        id: RolloutRef {
            namespace: "shop",
            name: "checkout",
        },
        spec: &analysed,
        status: status.as_ref(),
        generation: Some(1),
    };
    let error = reconcile(&shell, &context, rollout, at(3))
        .await
        .expect_err("the flag cannot be written");
    assert!(!error.needs_fix(), "{error}");
    notifier.idle().await;
    assert_eq!(receiver.requests(), 1);
    let json = body(&receiver, 0);
    assert_eq!(json["trigger"], "NeedsAttention");
    assert_eq!(json["reason"], "FlagWriteFailed");
    // The status still claims the exposure the flag has: the stage is held, not rolled back yet.
    assert_eq!(json["phase"], "Progressing");
    assert_eq!(json["weight"], "5%");
    assert_eq!(json["verdict"], "Fail");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("the API server is away"),
        "{json}"
    );
}

#[test]
fn the_command_line_flag_parses_repeated_webhooks() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        notify: sluice::notify::NotifyArgs,
    }
    let cli = Cli::try_parse_from([
        "sluice",
        "--notify-webhook",
        "slack:https://hooks.slack.com/services/T0/B0/SECRET",
        "--notify-webhook",
        "https://alerts.example.com/sluice",
    ])
    .unwrap();
    let config = cli.notify.config();
    assert_eq!(
        config
            .webhooks
            .iter()
            .map(|w| (w.format, w.destination()))
            .collect::<Vec<_>>(),
        [
            (
                sluice::crd::NotificationFormat::Slack,
                "https://hooks.slack.com/…".to_owned()
            ),
            (
                sluice::crd::NotificationFormat::Json,
                "https://alerts.example.com/…".to_owned()
            ),
        ]
    );
    assert_eq!(config.attempts, sluice::notify::DEFAULT_ATTEMPTS);
    let error = Cli::try_parse_from(["sluice", "--notify-webhook", "ftp://x"])
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("the URL has the scheme \"ftp\""), "{error}");
    assert!(
        Cli::try_parse_from(["sluice"])
            .unwrap()
            .notify
            .webhooks
            .is_empty()
    );
}
