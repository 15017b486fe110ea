//! The runtime every shell shares (the controller, standalone mode and the one-shot
//! commands): the clock, the backoff policy, shutdown on SIGTERM/SIGINT, logging setup
//! and the redaction of secrets from text that leaves the process. (The bridge that
//! turns a notification that gave up into a Warning event is
//! [`crate::notify::forward_failures`].)
//!
//! One copy of each, so the shells cannot drift apart: a shell builds its process with
//! [`run`], which gives it a [`Shutdown`] and guarantees that the process ends promptly
//! on a signal whatever the shell's tasks are doing.

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::telemetry::{AUDIT_TARGET, LogFormat};

/// The time, injected so tests drive it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// The one backoff policy: `first` after the first failure, doubling after each further
/// one, never more than `max`, optionally spread by ± `jitter` (a fraction) so failing
/// work does not retry in lockstep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// The spread, as a fraction of the wait (0.1 is ± 10 %); 0 for none.
    pub jitter: f64,
}

impl Backoff {
    /// `first`, doubling, capped at `max`, without jitter.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            jitter: 0.0,
        }
    }

    /// The same policy with ± `jitter` (a fraction of the wait, clamped to 0..=1).
    pub const fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The wait after `failures` failures in a row (1 for the first), without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// [`Backoff::delay`] spread by the policy's jitter.
    pub fn jittered(&self, failures: u32) -> Duration {
        self.spread(self.delay(failures))
    }

    /// `delay` spread by ± the policy's jitter.
    pub fn spread(&self, delay: Duration) -> Duration {
        if self.jitter <= 0.0 {
            return delay;
        }
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * rand::random::<f64>();
        delay.mul_f64(factor)
    }
}

/// A [`Backoff`] per key (a rollout), counting failures in a row; a success resets the
/// key's count.
#[derive(Debug)]
pub struct KeyedBackoff {
    policy: Backoff,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for KeyedBackoff {
    /// The controller's policy: 5 s, 10 s, 20 s ... up to 5 minutes, ± 10 %.
    fn default() -> Self {
        KeyedBackoff::new(Backoff::new(Self::BASE, Self::MAX).with_jitter(0.1))
    }
}

impl KeyedBackoff {
    /// The controller's first delay.
    pub const BASE: Duration = Duration::from_secs(5);
    /// The controller's longest delay.
    pub const MAX: Duration = Duration::from_secs(300);

    /// Per-key counts under `policy`.
    pub fn new(policy: Backoff) -> Self {
        KeyedBackoff {
            policy,
            failures: Mutex::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Backoff {
        &self.policy
    }

    /// Counts a failure of `key` and returns how long to wait before the next attempt
    /// (without jitter: [`KeyedBackoff::jittered`] adds it).
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        self.policy.delay(*count)
    }

    /// `delay` spread by the policy's jitter.
    pub fn jittered(&self, delay: Duration) -> Duration {
        self.policy.spread(delay)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Rollbacks that must interrupt work in progress, by key (a rollout): rollback never
/// waits for a look at the metrics. The shell raises a key when it sees an abort arrive;
/// a reconcile in progress for that key, started before, is abandoned (its look has
/// written nothing) and the rollout is reconciled again at once.
#[derive(Debug, Default)]
pub struct Interrupts {
    keys: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Interrupts {
    /// Interrupts what is in progress for `key`.
    pub fn raise(&self, key: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.entry(key.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Completes at the first [`Interrupts::raise`] of `key` after this call.
    pub fn next(&self, key: &str) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.entry(key.to_owned())
                .or_insert_with(|| watch::Sender::new(0))
                .subscribe()
        };
        async move {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forgets `key` (its rollout is gone).
    pub fn forget(&self, key: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Work too slow for a reconcile (a simulation of seconds), run on tokio's blocking pool
/// beside it, never in its way: at most one job per key (a rollout) at a time, at most
/// `concurrency` jobs in all (a job that finds no free slot is not started: the caller
/// asks again later, so nothing queues up, whatever the number of rollouts), and each
/// result kept, tagged, until the caller takes it away with [`BackgroundJobs::forget`]. A
/// job that panics yields what `on_panic` makes of the panic. Cheap to clone.
#[derive(Debug)]
pub struct BackgroundJobs<T> {
    permits: Arc<tokio::sync::Semaphore>,
    jobs: Arc<Mutex<HashMap<String, Job<T>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Clone for BackgroundJobs<T> {
    fn clone(&self) -> Self {
        BackgroundJobs {
            permits: self.permits.clone(),
            jobs: self.jobs.clone(),
            next_id: self.next_id.clone(),
        }
    }
}

#[derive(Debug)]
enum Job<T> {
    Running { id: u64 },
    Done { tag: String, value: T },
}

impl<T: Clone + Send + 'static> BackgroundJobs<T> {
    /// Jobs of which at most `concurrency` (at least one) run at a time.
    pub fn new(concurrency: usize) -> Self {
        BackgroundJobs {
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            jobs: Arc::default(),
            next_id: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job<T>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The result of the finished job of `key`, if it was started with `tag`.
    pub fn finished(&self, key: &str, tag: &str) -> Option<T> {
        match self.lock().get(key) {
            Some(Job::Done { tag: done, value }) if done == tag => Some(value.clone()),
            _ => None,
        }
    }

    /// Whether a job of `key` is running.
    pub fn is_running(&self, key: &str) -> bool {
        matches!(self.lock().get(key), Some(Job::Running { .. }))
    }

    /// How many jobs run now.
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|j| matches!(j, Job::Running { .. }))
            .count()
    }

    /// Starts `work` for `key` on the blocking pool, its result to be tagged `tag`,
    /// unless a job of `key` runs already, every slot is taken, or there is no tokio
    /// runtime. Says whether it started. A previous result of `key` is dropped.
    pub fn try_start(
        &self,
        key: &str,
        tag: String,
        work: impl FnOnce() -> T + Send + 'static,
        on_panic: impl FnOnce(String) -> T + Send + 'static,
    ) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let mut jobs = self.lock();
        if matches!(jobs.get(key), Some(Job::Running { .. })) {
            return false;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return false;
        };
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        jobs.insert(key.to_owned(), Job::Running { id });
        drop(jobs);
        let this = self.clone();
        let key = key.to_owned();
        handle.spawn_blocking(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let value = outcome.unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                on_panic(text)
            });
            let mut jobs = this.lock();
            // Forgotten meanwhile (the rollout is gone, or its result no longer wanted):
            // the result is dropped.
            if matches!(jobs.get(&key), Some(Job::Running { id: running }) if *running == id) {
                jobs.insert(key, Job::Done { tag, value });
            }
            drop(jobs);
            drop(permit);
        });
        true
    }

    /// Forgets `key`: its result, or the job running for it (whose result is then
    /// dropped when it ends).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// How far a shutdown has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Running,
    /// Finish the writes in hand, then stop.
    Graceful,
    /// A second signal: stop now (every write is an atomic replace or a single API call,
    /// so abandoning one leaves the old state or the new, never a mix).
    Now,
}

/// A request to stop, shared by every task of a process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Stage>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A shutdown that only [`Shutdown::trigger`] requests (for tests and embedders).
    pub fn new() -> Self {
        Shutdown {
            tx: Arc::new(watch::Sender::new(Stage::Running)),
        }
    }

    /// A shutdown requested by SIGTERM or SIGINT: the first asks for a graceful stop, the
    /// second for an immediate one. Must be called inside a tokio runtime.
    pub fn on_signals() -> Self {
        let shutdown = Shutdown::new();
        let requester = shutdown.clone();
        tokio::spawn(async move {
            let mut signals = Signals::listen();
            let name = signals.next().await;
            tracing::info!(signal = name, "stopping: finishing the writes in hand");
            requester.trigger();
            let name = signals.next().await;
            tracing::warn!(signal = name, "second signal: stopping now");
            requester.tx.send_if_modified(|s| {
                let changed = *s != Stage::Now;
                *s = Stage::Now;
                changed
            });
        });
        shutdown
    }

    /// Asks for a graceful stop.
    pub fn trigger(&self) {
        self.tx.send_if_modified(|s| {
            let changed = *s == Stage::Running;
            if changed {
                *s = Stage::Graceful;
            }
            changed
        });
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        *self.tx.borrow() != Stage::Running
    }

    /// Completes once a stop is asked for (at once if it already was).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Stage::Graceful)
    }

    /// Completes once an immediate stop is asked for (a second signal).
    pub fn forced(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Stage::Now)
    }

    fn reached(&self, stage: Stage) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // The sender lives as long as any clone of this Shutdown; if all are gone,
            // nobody can ask any more: never complete.
            if rx.wait_for(|s| *s >= stage).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// SIGTERM and SIGINT as one stream of signal names.
struct Signals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let open = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for {name}");
                None
            }
        };
        Signals {
            terminate: open(SignalKind::terminate(), "SIGTERM"),
            interrupt: open(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn next(&mut self) -> &'static str {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.terminate) => "SIGTERM",
            () = recv(&mut self.interrupt) => "SIGINT",
        }
    }
}

/// Why the process runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime: {0}")]
pub struct StartError(#[source] pub std::io::Error);

/// How long the runtime waits, once the shell's work has returned, for tasks still
/// running (a blocked read, a delivery in flight) before the process goes on to exit.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Runs a shell's process: a multi-threaded tokio runtime, a [`Shutdown`] on SIGTERM and
/// SIGINT handed to `main`, and a prompt end whatever is left running. Returns `main`'s
/// result, or `None` when a second signal stopped it first. Background tasks still
/// running when `main` returns get [`DRAIN`] to finish, then are dropped: nothing keeps
/// the process alive after its work is done.
pub fn run<F, T>(main: impl FnOnce(Shutdown) -> F) -> Result<Option<T>, StartError>
where
    F: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError)?;
    let result = runtime.block_on(async {
        let shutdown = Shutdown::on_signals();
        let forced = shutdown.forced();
        tokio::select! {
            out = main(shutdown) => Some(out),
            () = forced => None,
        }
    });
    runtime.shutdown_timeout(DRAIN);
    Ok(result)
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTo {
    /// Standard error (colours when it is a terminal and the format is plain).
    Stderr,
    /// Appended to this file (standalone mode's live table owns the terminal).
    File(PathBuf),
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `RUST_LOG` does not parse.
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(String),
    /// The log file cannot be opened.
    #[error("cannot open the log file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A global subscriber was already installed.
    #[error("logging is already initialised")]
    AlreadyInitialised,
}

impl LogError {
    /// A bounded name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            LogError::Filter(_) => "filter",
            LogError::File { .. } => "log_file",
            LogError::AlreadyInitialised => "already_initialised",
        }
    }
}

/// The filter used: `RUST_LOG` (default `info`), plus `sluice::audit=info` unless
/// `RUST_LOG` names the audit target itself, so the audit trail survives `RUST_LOG=warn`.
pub fn log_filter(rust_log: Option<&str>) -> Result<tracing_subscriber::EnvFilter, LogError> {
    let base = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let directives = if base.contains(AUDIT_TARGET) {
        base.to_owned()
    } else {
        format!("{base},{AUDIT_TARGET}=info")
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| LogError::Filter(e.to_string()))
}

/// Installs the global `tracing` subscriber: `format` to `to`, filtered by `RUST_LOG`
/// ([`log_filter`]). Every line passes through [`redact`].
pub fn init_logging(format: LogFormat, to: LogTo) -> Result<(), LogError> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let (writer, ansi) = match &to {
        LogTo::Stderr => (
            RedactingWriter::Stderr,
            format == LogFormat::Plain && std::io::stderr().is_terminal(),
        ),
        LogTo::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| LogError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            (RedactingWriter::File(Arc::new(Mutex::new(file))), false)
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Plain => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init(),
    };
    result.map_err(|_| LogError::AlreadyInitialised)
}

/// A log destination that redacts every line it is given.
#[derive(Clone)]
enum RedactingWriter {
    Stderr,
    File(Arc<Mutex<std::fs::File>>),
}

/// One log line being written: buffered, redacted and written whole on drop.
struct LineWriter {
    to: RedactingWriter,
    buffer: Vec<u8>,
}

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        use std::io::Write as _;
        let text = String::from_utf8_lossy(&self.buffer);
        let text = redact(&text);
        let _ = match &self.to {
            RedactingWriter::Stderr => std::io::stderr().write_all(text.as_bytes()),
            RedactingWriter::File(file) => file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(text.as_bytes()),
        };
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            to: self.clone(),
            buffer: Vec::new(),
        }
    }
}

/// The secrets this process has read (bearer tokens, passwords, header values from
/// files), to be blanked out of any text that leaves it.
static SECRETS: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Mutex::default);

/// What a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not tracked: blanking every "a" would ruin messages,
/// and a secret that short is no secret.
const MIN_SECRET_CHARS: usize = 4;

/// Remembers `secret` so [`redact`] removes it from every text that leaves the process:
/// logs, status, events, notifications. Called by whoever reads a secret.
pub fn register_secret(secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_owned());
        // Longest first, so a secret containing another is blanked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by [`REDACTED`].
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_owned();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (1..=6).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(1));
        assert_eq!(policy.delay(0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let policy =
            Backoff::new(Duration::from_secs(10), Duration::from_secs(60)).with_jitter(0.1);
        for _ in 0..200 {
            let d = policy.jittered(1);
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }

    #[test]
    fn keyed_backoff_counts_per_key_and_resets() {
        let backoff =
            KeyedBackoff::new(Backoff::new(Duration::from_secs(1), Duration::from_secs(4)));
        let a: Vec<u64> = (0..4).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(a, [1, 2, 4, 4]);
        assert_eq!(backoff.failed("b").as_secs(), 1);
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a").as_secs(), 1);
    }

    #[test]
    fn registered_secrets_are_blanked_and_short_ones_ignored() {
        register_secret("s3cr3t-token-for-redaction-test\n");
        register_secret("ab");
        let text = "Authorization: Bearer s3cr3t-token-for-redaction-test; ab";
        assert_eq!(redact(text), "Authorization: Bearer [REDACTED]; ab");
    }

    #[tokio::test]
    async fn an_interrupt_reaches_only_what_began_before_it() {
        let interrupts = Interrupts::default();
        interrupts.raise("a");
        let waiting = interrupts.next("a");
        let other = interrupts.next("b");
        interrupts.raise("a");
        waiting.await;
        // "b" was never raised; an earlier raise of "a" does not reach a later waiter.
        let late = interrupts.next("a");
        tokio::select! {
            biased;
            () = other => panic!("b was not raised"),
            () = late => panic!("no raise of a came after"),
            () = tokio::task::yield_now() => {}
        }
    }

    #[tokio::test]
    async fn a_triggered_shutdown_completes_every_waiter() {
        let shutdown = Shutdown::new();
        let early = shutdown.requested();
        assert!(!shutdown.is_requested());
        shutdown.trigger();
        early.await;
        shutdown.requested().await;
        assert!(shutdown.is_requested());
    }
}
