//! Notifications: webhooks told about rollbacks, promotions, holds that need a person and
//! metrics-provider trouble.
//!
//! What to send is decided by a pure function, [`notifications`], from the events a
//! reconcile published and the status before and after it. Sending is the [`Notifier`]'s
//! job: every delivery runs in a spawned task with a timeout and a bounded number of
//! attempts with exponential backoff, so a slow or broken receiver never delays a
//! reconcile, let alone a rollback. A delivery that gives up is reported as a
//! [`DeliveryFailure`] on a channel; the shell turns it into a `NotificationFailed`
//! Warning event on the rollout ([`DeliveryFailure::event`]).
//!
//! Webhooks come from the controller's command line (`--notify-webhook slack:URL`, global)
//! and from a rollout's `spec.notifications`. A URL may carry a token (Slack's incoming
//! webhooks do): it never appears in logs, events or errors, only its scheme and host
//! ([`redact`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::analysis::look::RolloutRef;
use crate::crd::validate::check_webhook_url;
use crate::crd::{
    FeatureRolloutSpec, FeatureRolloutStatus, MetricCause, NotificationFormat, NotificationTrigger,
    Phase, Verdict,
};
use crate::engine::{Event, EventType};

/// Time limit of one delivery attempt, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per delivery (the first and the retries), unless configured.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The wait before the first retry; it doubles at each retry.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// The event reason of a delivery that gave up.
pub const FAILED_REASON: &str = "NotificationFailed";
/// Undelivered failure reports kept for the shell; more are dropped (and logged).
const FAILURE_QUEUE: usize = 256;
/// The longest verdict summary and message sent, in characters.
const TEXT_LIMIT: usize = 1000;

/// Why a notifier could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A webhook given on the command line (`--notify-webhook`) is malformed.
    #[error("{0}")]
    BadWebhook(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client for notifications failed: {0}")]
    Client(String),
}

impl Error {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::BadWebhook(_) => "bad_webhook",
            Error::Client(_) => "client",
        }
    }
}

/// One webhook: where, in which format, for which notifications.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The URL (may carry a token: never logged).
    pub url: String,
    /// The payload format.
    pub format: NotificationFormat,
    /// Which notifications it gets; empty means all.
    pub on: Vec<NotificationTrigger>,
}

impl Webhook {
    /// Whether this webhook wants notifications of `trigger`.
    pub fn wants(&self, trigger: NotificationTrigger) -> bool {
        self.on.is_empty() || self.on.contains(&trigger)
    }

    /// The URL without anything that could be a secret: scheme and host.
    pub fn destination(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.destination())
            .field("format", &self.format)
            .field("on", &self.on)
            .finish()
    }
}

impl FromStr for Webhook {
    type Err = Error;

    /// `slack:URL`, `json:URL` or a bare `URL` (JSON), as `--notify-webhook` takes it.
    fn from_str(text: &str) -> Result<Self, Error> {
        let (format, url) = if let Some(url) = text.strip_prefix("slack:") {
            (NotificationFormat::Slack, url)
        } else if let Some(url) = text.strip_prefix("json:") {
            (NotificationFormat::Json, url)
        } else {
            (NotificationFormat::Json, text)
        };
        check_webhook_url(url).map_err(|message| {
            Error::BadWebhook(format!(
                "the URL {message}: give slack:URL, json:URL or an http(s) URL"
            ))
        })?;
        Ok(Webhook {
            url: url.to_owned(),
            format,
            on: Vec::new(),
        })
    }
}

/// A URL reduced to its scheme and host (and port): what may be shown of it.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path().len() > 1 || u.query().is_some() {
                "/…"
            } else {
                ""
            };
            format!("{}://{host}{port}{rest}", u.scheme())
        }
        Err(_) => "<invalid URL>".into(),
    }
}

/// One thing to tell people about one rollout. Its JSON form is the `json` payload.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Which kind of notification this is (what webhooks filter on with `on`).
    pub trigger: NotificationTrigger,
    /// The PascalCase reason: the event's (`RolledBack`, `Aborted`, `Promoted`,
    /// `AwaitingApproval`, `AnalysisFailing`, ...) or the hold's (`SampleRatioMismatch`,
    /// `NoData`).
    pub reason: String,
    /// `warning` or `info`.
    pub severity: &'static str,
    /// The rollout's name.
    pub rollout: String,
    /// The rollout's namespace (empty in standalone mode).
    pub namespace: String,
    /// The flag key.
    pub flag: String,
    /// The rollout's phase now.
    pub phase: Phase,
    /// The current stage's name, if any.
    pub stage: Option<String>,
    /// The exposure served now (`0%` after a rollback).
    pub weight: String,
    /// The exposure served before this reconcile.
    pub previous_weight: String,
    /// The last analysis' verdict, if any.
    pub verdict: Option<Verdict>,
    /// The last analysis in a sentence: the verdict and why (failing metrics first).
    pub verdict_summary: Option<String>,
    /// What happened, in a sentence.
    pub message: String,
    /// When it happened.
    pub time: Timestamp,
}

/// Maps an event reason to the notification it makes, if any.
pub fn trigger_of(event: &Event) -> Option<NotificationTrigger> {
    use NotificationTrigger::*;
    Some(match event.reason {
        "RolledBack" | "Aborted" => RolledBack,
        "Promoted" => Promoted,
        "AwaitingApproval"
        | "StageRemoved"
        | "InvalidSpec"
        | "FlagWriteFailed"
        | "FlagDocumentInvalid" => NeedsAttention,
        "AnalysisFailing" => ProviderTrouble,
        _ => return None,
    })
}

/// A hold that needs a person and has no event of its own, read from a status: a sample
/// ratio mismatch, or no data for a cohort during a whole stage.
fn attention_hold(status: &FeatureRolloutStatus) -> Option<(&'static str, String)> {
    let active = matches!(
        status.phase,
        Phase::Progressing | Phase::WaitingForApproval | Phase::Paused
    );
    let analysis = status.last_analysis.as_ref().filter(|_| active)?;
    if analysis.sample_ratio.as_ref().is_some_and(|s| s.mismatch) {
        let why = analysis.message.clone().unwrap_or_default();
        return Some((
            "SampleRatioMismatch",
            format!("Holding: the cohorts are not comparable: {why}."),
        ));
    }
    let no_data = analysis.metrics.iter().find(|m| {
        m.verdict == Verdict::Inconclusive && m.cause == Some(MetricCause::NoDataAllStage)
    })?;
    Some((
        "NoData",
        format!(
            "Holding: {}: {}.",
            no_data.name,
            no_data.reason.as_deref().unwrap_or_default()
        ),
    ))
}

/// What to tell about one reconcile: one notification per event that makes one, and one
/// per hold that needs a person and just began. Pure.
pub fn notifications(
    id: &RolloutRef<'_>,
    spec: &FeatureRolloutSpec,
    previous: &FeatureRolloutStatus,
    status: &FeatureRolloutStatus,
    events: &[Event],
    now: Timestamp,
) -> Vec<Notification> {
    let verdict = status.last_analysis.as_ref().map(|a| a.verdict);
    let verdict_summary = status.last_analysis.as_ref().map(|a| {
        shorten(&format!(
            "{:?}: {}",
            a.verdict,
            a.message.as_deref().unwrap_or("no message")
        ))
    });
    let make = |trigger, reason: &str, severity, message: &str| Notification {
        trigger,
        reason: reason.to_owned(),
        severity,
        rollout: id.name.to_owned(),
        namespace: id.namespace.to_owned(),
        flag: spec.flag.key.clone(),
        phase: status.phase,
        stage: status.stage_name.clone(),
        weight: status.exposure.clone().unwrap_or_else(|| "0%".into()),
        previous_weight: previous.exposure.clone().unwrap_or_else(|| "0%".into()),
        verdict,
        verdict_summary: verdict_summary.clone(),
        message: shorten(message),
        time: now,
    };
    let mut out: Vec<Notification> = events
        .iter()
        .filter_map(|event| {
            let trigger = trigger_of(event)?;
            let severity = match event.type_ {
                EventType::Warning => "warning",
                EventType::Normal if trigger == NotificationTrigger::Promoted => "info",
                EventType::Normal => "warning",
            };
            Some(make(trigger, event.reason, severity, &event.message))
        })
        .collect();
    if let Some((reason, message)) = attention_hold(status)
        && attention_hold(previous).is_none_or(|(before, _)| before != reason)
    {
        out.push(make(
            NotificationTrigger::NeedsAttention,
            reason,
            "warning",
            &message,
        ));
    }
    out
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= TEXT_LIMIT {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(TEXT_LIMIT - 1).collect();
    cut.push('…');
    cut
}

/// The `json` payload: the notification's fields, plus `source: "sluice"`.
pub fn json_payload(n: &Notification) -> Value {
    let mut value = serde_json::to_value(n).expect("a notification serializes");
    if let Value::Object(map) = &mut value {
        map.insert("source".into(), json!("sluice"));
    }
    value
}

/// The `slack` payload: `text` (the fallback and the notification line) and `blocks` (a
/// section with the message and a context line with the details).
pub fn slack_payload(n: &Notification) -> Value {
    let icon = match (n.trigger, n.severity) {
        (NotificationTrigger::Promoted, _) => ":white_check_mark:",
        (NotificationTrigger::RolledBack, _) => ":rotating_light:",
        (_, _) => ":warning:",
    };
    let place = if n.namespace.is_empty() {
        n.rollout.clone()
    } else {
        format!("{}/{}", n.namespace, n.rollout)
    };
    let headline = format!(
        "{icon} {} {}: {} (flag {})",
        n.reason,
        place,
        headline_of(n.trigger),
        n.flag
    );
    let mut details = vec![
        format!("*phase* {:?}", n.phase),
        format!("*weight* {} (was {})", n.weight, n.previous_weight),
    ];
    if let Some(stage) = &n.stage {
        details.push(format!("*stage* {stage}"));
    }
    if let Some(summary) = &n.verdict_summary {
        details.push(format!("*verdict* {summary}"));
    }
    details.push(format!("*time* {}", n.time));
    json!({
        "text": format!("{}\n{}", headline, n.message),
        "blocks": [
            {
                "type": "section",
                "text": { "type": "mrkdwn", "text": format!("*{}*\n{}", escape(&headline), escape(&n.message)) }
            },
            {
                "type": "context",
                "elements": [ { "type": "mrkdwn", "text": details.iter().map(|d| escape(d)).collect::<Vec<_>>().join("  ·  ") } ]
            }
        ]
    })
}

fn headline_of(trigger: NotificationTrigger) -> &'static str {
    match trigger {
        NotificationTrigger::RolledBack => "rolled back, everybody gets the baseline",
        NotificationTrigger::Promoted => "promoted, the candidate is the default",
        NotificationTrigger::NeedsAttention => "needs a person",
        NotificationTrigger::ProviderTrouble => "the metrics provider is failing",
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The payload of a notification for a webhook's format.
pub fn payload(format: NotificationFormat, n: &Notification) -> Value {
    match format {
        NotificationFormat::Json => json_payload(n),
        NotificationFormat::Slack => slack_payload(n),
    }
}

/// How a notifier sends.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// Webhooks told about every rollout (`--notify-webhook`).
    pub webhooks: Vec<Webhook>,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Attempts per delivery, at least 1.
    pub attempts: u32,
    /// The wait before the first retry; it doubles at each retry.
    pub backoff: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            webhooks: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
        }
    }
}

/// The notification options of `sluice controller` and `sluice standalone`, to
/// `#[command(flatten)]` into their arguments.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NotifyArgs {
    /// A webhook told about every rollout's rollbacks, promotions, holds that need a
    /// person and metrics-provider trouble: `slack:URL`, `json:URL` or a bare URL (JSON).
    /// Repeatable. The URL is never logged.
    #[arg(long = "notify-webhook", value_name = "[slack:|json:]URL")]
    pub webhooks: Vec<Webhook>,
}

impl NotifyArgs {
    /// The notifier's configuration, with the default timeout, attempts and backoff.
    pub fn config(&self) -> NotifierConfig {
        NotifierConfig {
            webhooks: self.webhooks.clone(),
            ..NotifierConfig::default()
        }
    }
}

/// A delivery that gave up, for the shell to turn into an event on the rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryFailure {
    /// The rollout's namespace (empty in standalone mode).
    pub namespace: String,
    /// The rollout's name.
    pub name: String,
    /// What the notification was about.
    pub trigger: NotificationTrigger,
    /// The notification's reason.
    pub reason: String,
    /// The webhook, redacted to scheme and host.
    pub destination: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error, without the URL.
    pub error: String,
}

impl DeliveryFailure {
    /// The Warning event `NotificationFailed` to publish on the rollout.
    pub fn event(&self) -> Event {
        Event {
            type_: EventType::Warning,
            reason: FAILED_REASON,
            message: format!(
                "The {:?} notification ({}) to {} failed after {} attempt(s): {}. The rollout is not affected.",
                self.trigger, self.reason, self.destination, self.attempts, self.error
            ),
        }
    }
}

/// Turns every delivery failure into a call of `publish` (which publishes
/// [`DeliveryFailure::event`] on the rollout), in a spawned task that ends when the
/// notifier is gone. Must be called within a Tokio runtime.
pub fn forward_failures<F, Fut>(
    mut failures: mpsc::Receiver<DeliveryFailure>,
    publish: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(DeliveryFailure) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        while let Some(failure) = failures.recv().await {
            publish(failure).await;
        }
    })
}

/// Sends notifications in the background. Cheap to clone; clones share the counters.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: NotifierConfig,
    client: reqwest::Client,
    failures: mpsc::Sender<DeliveryFailure>,
    pending: AtomicUsize,
    idle: tokio::sync::Notify,
    sent: AtomicU64,
    failed: AtomicU64,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("webhooks", &self.inner.config.webhooks)
            .field("pending", &self.pending())
            .finish()
    }
}

impl Notifier {
    /// A notifier and the receiving end of its failure reports. The shell drains the
    /// receiver and publishes [`DeliveryFailure::event`] on the rollout named.
    pub fn new(config: NotifierConfig) -> Result<(Self, mpsc::Receiver<DeliveryFailure>), Error> {
        crate::prometheus::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Client(e.without_url().to_string()))?;
        let (failures, receiver) = mpsc::channel(FAILURE_QUEUE);
        let config = NotifierConfig {
            attempts: config.attempts.max(1),
            ..config
        };
        let inner = Inner {
            config,
            client,
            failures,
            pending: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        Ok((
            Notifier {
                inner: Arc::new(inner),
            },
            receiver,
        ))
    }

    /// Sends what one reconcile calls for ([`notifications`]) to the global webhooks and
    /// the rollout's own, each in a spawned task: returns at once. Must be called within a
    /// Tokio runtime.
    pub fn notify(
        &self,
        id: &RolloutRef<'_>,
        spec: &FeatureRolloutSpec,
        previous: &FeatureRolloutStatus,
        status: &FeatureRolloutStatus,
        events: &[Event],
        now: Timestamp,
    ) {
        let found = notifications(id, spec, previous, status, events, now);
        if found.is_empty() {
            return;
        }
        let mut webhooks: Vec<Webhook> = self.inner.config.webhooks.clone();
        for n in &spec.notifications {
            let hook = Webhook {
                url: n.url.clone(),
                format: n.format,
                on: n.on.clone(),
            };
            // An invalid URL is reported by validation; never try it.
            if check_webhook_url(&hook.url).is_ok()
                && !webhooks
                    .iter()
                    .any(|w| w.url == hook.url && w.format == hook.format && w.on == hook.on)
            {
                webhooks.push(hook);
            }
        }
        for notification in found {
            for hook in webhooks.iter().filter(|w| w.wants(notification.trigger)) {
                self.spawn(hook.clone(), notification.clone());
            }
        }
    }

    fn spawn(&self, hook: Webhook, notification: Notification) {
        self.inner.pending.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let body = payload(hook.format, &notification).to_string();
            let result = deliver(&inner, &hook.url, body).await;
            match result {
                Ok(attempts) => {
                    inner.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        namespace = %notification.namespace,
                        rollout = %notification.rollout,
                        reason = %notification.reason,
                        destination = %hook.destination(),
                        attempts,
                        "notification sent"
                    );
                }
                Err((attempts, error)) => {
                    inner.failed.fetch_add(1, Ordering::Relaxed);
                    let failure = DeliveryFailure {
                        namespace: notification.namespace.clone(),
                        name: notification.rollout.clone(),
                        trigger: notification.trigger,
                        reason: notification.reason.clone(),
                        destination: hook.destination(),
                        attempts,
                        error,
                    };
                    tracing::warn!(
                        namespace = %failure.namespace,
                        rollout = %failure.name,
                        reason = %failure.reason,
                        destination = %failure.destination,
                        attempts,
                        error = %failure.error,
                        "notification failed"
                    );
                    if inner.failures.try_send(failure).is_err() {
                        tracing::warn!(
                            "the notification failure queue is full or closed: a NotificationFailed event is lost"
                        );
                    }
                }
            }
            if inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                inner.idle.notify_waiters();
            }
        });
    }

    /// Deliveries under way.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// Waits until no delivery is under way (for `--once` runs and shutdown; each delivery
    /// is bounded by its attempts, timeouts and backoff).
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Notifications delivered so far (for `sluice_notifications_total{result="sent"}`).
    pub fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Deliveries that gave up so far (for `sluice_notifications_total{result="failed"}`).
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }
}

/// POSTs `body` with retries: connection errors, timeouts, 429 and 5xx are retried with
/// exponential backoff; other answers are final. Returns the attempts made.
async fn deliver(inner: &Inner, url: &str, body: String) -> Result<u32, (u32, String)> {
    let config = &inner.config;
    let mut last = String::new();
    for attempt in 1..=config.attempts {
        let sent = inner
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, "sluice")
            .timeout(config.timeout)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return Ok(attempt),
            Ok(response) => {
                let status = response.status();
                last = format!("the receiver answered HTTP {}", status.as_u16());
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err((attempt, format!("{last} (not retried)")));
                }
            }
            Err(e) if e.is_timeout() => {
                last = format!("no answer within {:?}", config.timeout);
            }
            Err(e) => last = error_text(e),
        }
        if attempt < config.attempts {
            let policy = crate::runtime::Backoff::new(config.backoff, Duration::MAX);
            tokio::time::sleep(policy.delay(attempt)).await;
        }
    }
    Err((config.attempts, last))
}

/// An HTTP error with its causes, never the URL.
fn error_text(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
