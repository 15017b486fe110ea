//! The example Python service (`examples/python-service/`), its instrumentation module
//! and its load generator, run for real: the OpenFeature SDK with the flagd provider in
//! file mode reads flag documents rendered by `sluice::flagd`, requests go over loopback
//! HTTP, and the checks read the service's own `/metrics`.
//!
//! The interpreter is `$SLUICE_PYTHON` (set by `make test`) or `<repo>/.venv/bin/python`
//! with `tests/python/requirements.txt` installed. If neither exists the tests say so
//! loudly and pass without running: `make test` always provides it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice::flagd::{FlagDefinition, FlagState, WEIGHT_SCALE, merge_flag, render_flag};

/// How long any wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// How often a condition is checked while waiting.
const POLL: Duration = Duration::from_millis(20);
/// Requests in flight at once when the tests send many.
const CONCURRENCY: usize = 16;

const CHECKOUT: &str = "new-checkout";
const SEARCH: &str = "new-search";

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/python-service")
        .join(file)
}

/// The interpreter with the project's Python packages, or `None` (with a loud message)
/// when there is none to be had.
fn python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_PYTHON") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "SLUICE_PYTHON={} does not exist",
            path.display()
        );
        return Some(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if path.exists() {
        return Some(path);
    }
    eprintln!(
        "\n######## SKIPPED: no Python for the example service ########\n\
         SLUICE_PYTHON is unset and {} is missing. Run `make test`, or\n\
         `python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt`.\n",
        path.display()
    );
    None
}

fn definition(key: &str) -> FlagDefinition {
    FlagDefinition {
        key: key.to_owned(),
        variants: json!({ "on": true, "off": false })
            .as_object()
            .cloned()
            .unwrap(),
        baseline: "off".to_owned(),
        candidate: "on".to_owned(),
    }
}

/// A split giving `percent` % of users the candidate.
fn split(percent: u32) -> FlagState {
    FlagState::Split {
        candidate_weight: WEIGHT_SCALE / 100 * percent,
        audience: None,
    }
}

/// The flag document with both flags in the given states, as Sluice would write it.
fn document(checkout: &FlagState, search: &FlagState) -> String {
    let doc = merge_flag(None, CHECKOUT, render_flag(&definition(CHECKOUT), checkout))
        .expect("a new document");
    merge_flag(Some(&doc), SEARCH, render_flag(&definition(SEARCH), search))
        .expect("merging into a valid document")
}

/// Replaces `path` so a reader sees the old or the new document, never half of one.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).expect("write the flag document");
    std::fs::rename(&tmp, path).expect("replace the flag document");
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What one response said.
#[derive(Clone, Debug, Deserialize)]
struct Served {
    #[serde(skip)]
    status: u16,
    variant: Option<String>,
    reason: String,
    path: String,
}

/// A running service; killed when dropped if not stopped.
struct Service {
    child: Child,
    dir: tempfile::TempDir,
    flags: PathBuf,
    base: String,
    http: reqwest::Client,
}

impl Service {
    /// Starts the service over a document with the two flags in the given states.
    async fn start(python: &Path, checkout: &FlagState, search: &FlagState, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let flags = dir.path().join("flags.json");
        write_atomically(&flags, &document(checkout, search));
        let port_file = dir.path().join("port");
        let log = std::fs::File::create(dir.path().join("service.log")).expect("log file");
        let mut child = Command::new(python)
            .arg(example("service.py"))
            .arg("--flags")
            .arg(&flags)
            .args(["--port", "0", "--seed", "1", "--port-file"])
            .arg(&port_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the service");
        let deadline = Instant::now() + DEADLINE;
        let port: u16 = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().expect("a port number in the port file");
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the service exited with {status} before listening:\n{}",
                    std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the service did not start");
            tokio::time::sleep(POLL).await;
        };
        sluice::prometheus::ensure_crypto_provider();
        Service {
            child,
            dir,
            flags,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    fn write_flags(&self, checkout: &FlagState, search: &FlagState) {
        write_atomically(&self.flags, &document(checkout, search));
    }

    async fn get(&self, path: &str, user: Option<&str>) -> Served {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(user) = user {
            // The header here, the query parameter in the load generator: both work.
            request = request.header("X-User", user);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        let body = response.text().await.expect("a body");
        let mut served: Served = serde_json::from_str(&body).expect("a JSON body");
        served.status = status;
        served
    }

    /// One request per user, `CONCURRENCY` at a time; answers in the users' order.
    async fn get_all(&self, path: &str, users: &[String]) -> Vec<Served> {
        futures::stream::iter(users.iter().map(|u| self.get(path, Some(u))))
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    async fn scrape(&self) -> Scrape {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("the service answers /metrics")
            .text()
            .await
            .unwrap();
        Scrape(parse_exposition(&text))
    }

    /// Scrapes once the service has recorded `requests` requests in all: it records a
    /// request after the response went out, so a client can be a moment ahead of it.
    async fn scrape_after(&self, requests: usize) -> Scrape {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let scrape = self.scrape().await;
            let recorded = scrape.sum("http_requests_total", &[]);
            if recorded >= requests as f64 {
                assert_eq!(recorded, requests as f64, "more requests than were sent");
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "the service recorded {recorded} of {requests} requests"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `/metrics` until the service has seen `flag`'s configuration change after
    /// `since` (unix seconds); returns when it did, by the service's clock.
    async fn wait_for_reload(&self, flag: &str, since: f64) -> f64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let scrape = self.scrape().await;
            let changed = scrape.sum(
                "feature_flag_configuration_changed_timestamp_seconds",
                &[("feature_flag_key", flag)],
            );
            if changed >= since {
                return changed;
            }
            assert!(
                Instant::now() < deadline,
                "the service never reloaded {flag}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM and waits for the exit.
    async fn stop(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "the service ignored SIGTERM");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of the Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Everything one scrape returned.
struct Scrape(Vec<Sample>);

impl Scrape {
    fn samples<'a>(
        &'a self,
        name: &'a str,
        filters: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.0.iter().filter(move |s| {
            s.name == name
                && filters
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map_or(v.is_empty(), |l| l == v))
        })
    }

    /// The sum of the samples named `name` whose labels match `filters` (an empty value
    /// matches an absent label).
    fn sum(&self, name: &str, filters: &[(&str, &str)]) -> f64 {
        self.samples(name, filters).map(|s| s.value).sum()
    }
}

/// Parses the Prometheus text format (what prometheus_client serves by default).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().expect("a sample value"),
        });
    }
    samples
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "a quoted label value");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').to_owned(), value);
    }
}

/// Five standard errors of a share `p` observed over `n` users: a correct split leaves
/// this band about once in 1.7 million runs.
fn tolerance(p: f64, n: usize) -> f64 {
    5.0 * (p * (1.0 - p) / n as f64).sqrt()
}

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Users served each variant, from the responses (distinct targeting keys).
fn distinct_by_variant(users: &[String], served: &[Served]) -> HashMap<String, usize> {
    let mut sets: HashMap<String, std::collections::HashSet<&str>> = HashMap::new();
    for (user, s) in users.iter().zip(served) {
        let variant = s.variant.clone().unwrap_or_default();
        sets.entry(variant).or_default().insert(user);
    }
    sets.into_iter().map(|(v, s)| (v, s.len())).collect()
}

fn flag_filter<'a>(flag: &'a str, variant: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("feature_flag_key", flag),
        ("feature_flag_result_variant", variant),
        ("feature_flag_result_reason", "TARGETING_MATCH"),
    ]
}

#[test]
fn the_python_unit_tests_pass() {
    let Some(python) = python() else { return };
    let output = Command::new(&python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(example(""))
        .output()
        .expect("run the Python unit tests");
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(output.status.success(), "the Python unit tests failed");
    assert!(stderr.contains("OK"), "the Python unit tests ran nothing?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_users_and_faults_are_recorded_by_the_variant_served() {
    let Some(python) = python() else { return };
    const N: usize = 2_000;
    const CHECKOUT_PERCENT: u32 = 30;
    let service = Service::start(
        &python,
        &split(CHECKOUT_PERCENT),
        &split(50),
        &["--fault", "new-search:errors=0.3,latency=50ms"],
    )
    .await;

    let checkout_users = users("c-", N);
    let search_users = users("s-", N);
    let checkout = service.get_all("/checkout", &checkout_users).await;
    let search = service.get_all("/search", &search_users).await;
    // The first 500 checkout users come back: more requests, no new users.
    let repeat = service.get_all("/checkout", &checkout_users[..500]).await;
    let anonymous = service.get("/checkout", None).await;
    let scrape = service
        .scrape_after(checkout.len() + search.len() + repeat.len() + 1)
        .await;

    // Every flag-labelled series carries the three flag labels and the status code.
    let labelled: Vec<&Sample> = scrape
        .samples("http_requests_total", &[])
        .filter(|s| s.labels.contains_key("feature_flag_key"))
        .collect();
    assert!(!labelled.is_empty());
    for sample in &labelled {
        for label in [
            "feature_flag_result_variant",
            "feature_flag_result_reason",
            "code",
        ] {
            assert!(
                sample.labels.contains_key(label),
                "{sample:?} lacks {label}"
            );
        }
    }

    // Requests: the counters agree with the responses, series by series.
    let mut answered: HashMap<(&str, String, u16), f64> = HashMap::new();
    for (flag, served) in [
        (CHECKOUT, &checkout),
        (CHECKOUT, &repeat),
        (SEARCH, &search),
    ] {
        for s in served.iter() {
            assert_eq!(s.reason, "TARGETING_MATCH");
            *answered
                .entry((flag, s.variant.clone().unwrap(), s.status))
                .or_default() += 1.0;
        }
    }
    for ((flag, variant, code), count) in &answered {
        let mut filter = flag_filter(flag, variant).to_vec();
        let code = code.to_string();
        filter.push(("code", &code));
        assert_eq!(
            scrape.sum("http_requests_total", &filter),
            *count,
            "{flag} {variant} {code}"
        );
    }
    // Without a targeting key: the baseline, reason DEFAULT, and no user counted.
    assert_eq!(
        (anonymous.variant.as_deref(), anonymous.reason.as_str()),
        (Some("off"), "DEFAULT")
    );
    let default = [
        ("feature_flag_key", CHECKOUT),
        ("feature_flag_result_reason", "DEFAULT"),
    ];
    assert_eq!(scrape.sum("http_requests_total", &default), 1.0);
    assert_eq!(scrape.sum("feature_flag_users_total", &default), 0.0);

    // Users: each counted once per variant, repeats included; the split near the weight.
    for (flag, who, served) in [
        (CHECKOUT, &checkout_users, &checkout),
        (SEARCH, &search_users, &search),
    ] {
        let distinct = distinct_by_variant(who, served);
        for variant in ["on", "off"] {
            assert_eq!(
                scrape.sum("feature_flag_users_total", &flag_filter(flag, variant)),
                distinct[variant] as f64,
                "{flag} {variant}"
            );
        }
    }
    let on = scrape.sum("feature_flag_users_total", &flag_filter(CHECKOUT, "on"));
    let off = scrape.sum("feature_flag_users_total", &flag_filter(CHECKOUT, "off"));
    assert_eq!(on + off, N as f64);
    let share = on / (on + off);
    let weight = f64::from(CHECKOUT_PERCENT) / 100.0;
    let bound = tolerance(weight, N);
    println!("candidate share of users: {share:.4} (weight {weight} ± {bound:.4})");
    assert!(
        (share - weight).abs() <= bound,
        "{share} vs {weight} ± {bound}"
    );

    // Faults: only on the faulty flag's candidate path.
    let errors = |flag: &str, variant: &str| {
        let mut filter = flag_filter(flag, variant).to_vec();
        filter.push(("code", "500"));
        scrape.sum("http_requests_total", &filter)
    };
    assert_eq!(errors(CHECKOUT, "on") + errors(CHECKOUT, "off"), 0.0);
    assert_eq!(errors(SEARCH, "off"), 0.0);
    let candidate_requests = search.iter().filter(|s| s.path == "candidate").count();
    let error_share = errors(SEARCH, "on") / candidate_requests as f64;
    let bound = tolerance(0.3, candidate_requests);
    println!(
        "injected error share on the candidate: {error_share:.4} of {candidate_requests} (0.3 ± {bound:.4})"
    );
    assert!((error_share - 0.3).abs() <= bound, "{error_share}");
    assert_eq!(
        scrape.sum(
            "fault_injected_total",
            &[("feature_flag_key", SEARCH), ("kind", "error")]
        ),
        errors(SEARCH, "on")
    );
    // The added latency: no candidate request of the faulty flag under 25 ms, while
    // baseline requests are.
    let fast = |flag: &str, variant: &str| {
        let mut filter = flag_filter(flag, variant).to_vec();
        filter.push(("le", "0.025"));
        scrape.sum("http_request_duration_seconds_bucket", &filter)
    };
    assert_eq!(fast(SEARCH, "on"), 0.0);
    assert!(fast(SEARCH, "off") > 0.0);
    assert!(fast(CHECKOUT, "on") > 0.0);
    let mut all = flag_filter(SEARCH, "on").to_vec();
    all.push(("le", "+Inf"));
    assert_eq!(
        scrape.sum("http_request_duration_seconds_bucket", &all),
        candidate_requests as f64
    );
    // The moment of the first injected fault: a gauge and a log line.
    let first = scrape.sum(
        "fault_first_injected_timestamp_seconds",
        &[("feature_flag_key", SEARCH)],
    );
    assert!(first > 0.0 && first <= unix_now(), "{first}");
    assert!(
        service
            .log()
            .contains("first injected fault flag=new-search unix="),
        "{}",
        service.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_start_after_their_delay() {
    let Some(python) = python() else { return };
    const AFTER: f64 = 1.5;
    let service = Service::start(
        &python,
        &split(100),
        &split(0),
        &["--fault", "new-checkout:errors=1,after=1500ms"],
    )
    .await;
    // Poll the candidate path until the fault starts; from then on every request fails.
    let deadline = Instant::now() + DEADLINE;
    let mut before = 0;
    loop {
        let served = service.get("/checkout", Some("alice")).await;
        assert_eq!(served.path, "candidate");
        if served.status == 500 {
            break;
        }
        before += 1;
        assert!(Instant::now() < deadline, "the fault never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = service.get_all("/checkout", &users("u-", 50)).await;
    assert!(after.iter().all(|s| s.status == 500));
    let scrape = service.scrape().await;
    let first = scrape.sum(
        "fault_first_injected_timestamp_seconds",
        &[("feature_flag_key", CHECKOUT)],
    );
    let started = scrape.sum("process_start_time_seconds", &[]);
    println!(
        "{before} requests served before the fault; the first fault {:.2}s after the process started",
        first - started
    );
    assert!(first - started >= AFTER, "{first} - {started}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_bad_user_fails_on_every_route_and_variant_and_is_no_flag_fault() {
    let Some(python) = python() else { return };
    // A malformed option is refused before anything starts, naming the option.
    for bad in ["old-client", "old-client:1.5", ":0.5", "old-client:often"] {
        let output = Command::new(&python)
            .arg(example("service.py"))
            .args(["--flags", "/nonexistent.json", "--sticky-bad-user", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--sticky-bad-user wants USER:PROB"),
            "{bad}: {stderr}"
        );
    }

    const N: usize = 30;
    // `new-checkout` serves everybody its candidate, `new-search` its baseline: the bad
    // user meets both variants.
    let service = Service::start(
        &python,
        &split(100),
        &split(0),
        &["--sticky-bad-user", "old-client:1"],
    )
    .await;
    let old_client = vec!["old-client".to_owned(); N];
    let checkout = service.get_all("/checkout", &old_client).await;
    let search = service.get_all("/search", &old_client).await;
    let others = service.get_all("/checkout", &users("u-", N)).await;
    assert!(
        checkout
            .iter()
            .all(|s| s.status == 500 && s.path == "candidate")
    );
    assert!(
        search
            .iter()
            .all(|s| s.status == 500 && s.path == "baseline")
    );
    assert!(
        others
            .iter()
            .all(|s| s.status == 200 && s.path == "candidate")
    );

    let scrape = service.scrape_after(3 * N).await;
    for flag in [CHECKOUT, SEARCH] {
        let injected = scrape.sum(
            "fault_injected_total",
            &[("feature_flag_key", flag), ("kind", "user")],
        );
        assert_eq!(injected, N as f64, "{flag}");
        // Not the flag's fault: the first-fault time stays unset.
        let first = [("feature_flag_key", flag)];
        assert_eq!(
            scrape
                .samples("fault_first_injected_timestamp_seconds", &first)
                .count(),
            0,
            "{flag}"
        );
    }
    // The per-user sums see one user with N requests, all failed, beside N users with
    // one successful request each.
    let n = N as f64;
    let sum = |name: &str| scrape.sum(name, &flag_filter(CHECKOUT, "on"));
    assert_eq!(sum("sluice_user_requests_total"), 2.0 * n);
    assert_eq!(sum("sluice_user_requests_squared_total"), n * n + n);
    assert_eq!(sum("sluice_user_errors_total"), n);
    assert_eq!(sum("sluice_user_errors_squared_total"), n * n);
    assert_eq!(sum("sluice_user_requests_errors_total"), n * n);
    let sum = |name: &str| scrape.sum(name, &flag_filter(SEARCH, "off"));
    assert_eq!(sum("sluice_user_errors_squared_total"), n * n);
    let (status, log) = service.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("sticky bad users old-client:1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stage_counts_users_afresh_and_a_rollback_serves_only_the_baseline() {
    let Some(python) = python() else { return };
    const N: usize = 1_500;
    let service = Service::start(&python, &split(20), &split(50), &[]).await;
    let who = users("u-", N);
    let checkout_a = service.get_all("/checkout", &who).await;
    let search_a = service.get_all("/search", &who).await;
    let before = service.scrape().await;

    // The next stage: 60 %. Wait until the service has seen it, without evaluating.
    let written = unix_now();
    service.write_flags(&split(60), &split(50));
    let seen = service.wait_for_reload(CHECKOUT, written).await;
    println!(
        "stage change picked up {:.0} ms after the write (observed through /metrics {:.0} ms after)",
        1000.0 * (seen - written),
        1000.0 * (unix_now() - written)
    );

    let checkout_b = service.get_all("/checkout", &who).await;
    let search_b = service.get_all("/search", &who).await;
    let after = service.scrape().await;
    // Cohorts only grow: whoever had the candidate keeps it.
    for (a, b) in checkout_a.iter().zip(&checkout_b) {
        if a.variant.as_deref() == Some("on") {
            assert_eq!(b.variant.as_deref(), Some("on"));
        }
    }
    // Every user active in the new stage is counted once in it, on the variant served,
    // so the increase over the stage's window gives the stage's split of users. (Without
    // forgetting, users staying on the baseline would not be counted at all.)
    let distinct = distinct_by_variant(&who, &checkout_b);
    for variant in ["on", "off"] {
        let filter = flag_filter(CHECKOUT, variant);
        let increase = after.sum("feature_flag_users_total", &filter)
            - before.sum("feature_flag_users_total", &filter);
        assert_eq!(increase, distinct[variant] as f64, "{variant}");
    }
    println!(
        "users in the new stage: {} on the candidate, {} on the baseline",
        distinct["on"], distinct["off"]
    );
    // The other flag did not change: its users are not counted again.
    let search_users =
        |scrape: &Scrape| scrape.sum("feature_flag_users_total", &[("feature_flag_key", SEARCH)]);
    assert_eq!(search_users(&after), search_users(&before));
    assert_eq!(search_users(&after), N as f64);
    for (a, b) in search_a.iter().zip(&search_b) {
        assert_eq!(a.variant, b.variant);
    }

    // Roll back: the baseline only. Poll with the candidate's users until none gets it.
    let candidates: Vec<String> = who
        .iter()
        .zip(&checkout_b)
        .filter(|(_, s)| s.variant.as_deref() == Some("on"))
        .map(|(u, _)| u.clone())
        .take(20)
        .collect();
    let written = Instant::now();
    service.write_flags(&FlagState::Baseline, &split(50));
    let deadline = written + DEADLINE;
    loop {
        let served = service.get_all("/checkout", &candidates).await;
        if served.iter().all(|s| s.path == "baseline") {
            break;
        }
        assert!(Instant::now() < deadline, "the rollback was never served");
    }
    println!(
        "rollback served to every user {:.0} ms after the write",
        written.elapsed().as_secs_f64() * 1000.0
    );
    let everybody = service.get_all("/checkout", &who).await;
    for s in &everybody {
        assert_eq!(
            (s.variant.as_deref(), s.reason.as_str()),
            (Some("off"), "STATIC")
        );
    }

    let (status, log) = service.stop().await;
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// The load generator's summary (`--json`).
#[derive(Debug, Deserialize)]
struct Summary {
    sent: u64,
    statuses: BTreeMap<String, u64>,
    distinct_users: u64,
    top1pct_share: f64,
    rate: f64,
    lag_p99_ms: f64,
}

fn run_loadgen(python: &Path, base: &str, dir: &Path, args: &[&str]) -> (Summary, Vec<u64>) {
    let users_out = dir.join("users.json");
    let output = Command::new(python)
        .arg(example("loadgen.py"))
        .args(["--url", base, "--json", "--users-out"])
        .arg(&users_out)
        .args(args)
        .output()
        .expect("run the load generator");
    assert!(
        output.status.success(),
        "loadgen failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Summary = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    let per_user: Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(users_out).unwrap()).unwrap();
    let mut counts: Vec<u64> = per_user.values().map(|v| v.as_u64().unwrap()).collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    (summary, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_sends_a_heavy_tailed_mix() {
    let Some(python) = python() else { return };
    const SEED: &str = "7";
    const USERS: usize = 5_000;
    let service = Service::start(&python, &split(50), &split(50), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let common = ["--seed", SEED, "--users", "5000", "--rate", "200"];

    let (summary, counts) = tokio::task::block_in_place(|| {
        run_loadgen(
            &python,
            &service.base,
            dir.path(),
            &[&common[..], &["--duration", "3"]].concat(),
        )
    });
    println!("seed {SEED}: {summary:?}");
    assert_eq!(
        summary.statuses,
        BTreeMap::from([("200".to_owned(), summary.sent)])
    );
    assert_eq!(counts.iter().sum::<u64>(), summary.sent);
    assert_eq!(counts.len() as u64, summary.distinct_users);
    // What the service counted is what the load generator sent.
    let scrape = service.scrape_after(summary.sent as usize).await;
    assert_eq!(
        scrape.sum("http_requests_total", &[("code", "200")]),
        summary.sent as f64
    );
    // Heavy-tailed: the top 1 % of the crowd sends over 30 % of the requests (for a
    // uniform crowd it would be about 1 %), and many distinct users still show up.
    let top = USERS / 100;
    let share = counts.iter().take(top).sum::<u64>() as f64 / summary.sent as f64;
    println!(
        "top 1% ({top} users) sent {:.1}% of {} requests; {} distinct users; {} req/s achieved, send lag p99 {} ms",
        100.0 * share,
        summary.sent,
        summary.distinct_users,
        summary.rate,
        summary.lag_p99_ms
    );
    assert!((share - summary.top1pct_share).abs() < 1e-9);
    assert!(share > 0.30, "{share}");
    assert!(summary.distinct_users > 200, "{}", summary.distinct_users);

    // The same check tells a uniform crowd apart (a smaller one, so that 400 requests
    // say something about its top 1 %: 5 users).
    let (uniform, _) = tokio::task::block_in_place(|| {
        let args = [
            "--seed",
            SEED,
            "--users",
            "500",
            "--rate",
            "200",
            "--duration",
            "2",
        ];
        run_loadgen(
            &python,
            &service.base,
            dir.path(),
            &[&args[..], &["--zipf", "0"]].concat(),
        )
    });
    println!(
        "uniform crowd: top 1% sent {:.1}%",
        100.0 * uniform.top1pct_share
    );
    assert!(uniform.top1pct_share < 0.10, "{}", uniform.top1pct_share);
}
