//! Scale benchmark (issue 14, item 5): the release `sluice controller` against a real
//! kube-apiserver over etcd (the cluster tests' harness, `tests/support/apiserver.rs`),
//! with thousands of FeatureRollouts. Prints figures; asserts nothing about speed.
//!
//! ```text
//! cargo bench --bench scale -- --rollouts 1000
//! cargo bench --bench scale -- --rollouts 10000 --window 60
//! ```
//!
//! The rollouts are of three kinds, each on ConfigMaps of ten flags:
//! - `plain`: no metrics, a first stage of an hour (after its first write, idle);
//! - `down`: metrics from a Prometheus that refuses connections (a closed port);
//! - `data`: metrics from a real Prometheus (`prometheus` on PATH) loaded with traffic.
//!
//! The controller runs as a process of its own with a ServiceAccount token (bound to
//! `cluster-admin`), leader election on, so the audit log tells its requests apart. It
//! starts after every rollout exists. Figures: time until every rollout has a status,
//! the controller's resident memory (VmHWM, VmRSS), CPU per reconcile (process CPU time
//! over `sluice_reconciles_total`), API requests per reconcile (audit log), and over a
//! steady-state window once the `down` rollouts hold on their errors: CPU, reconciles
//! and API writes per second, by kind.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};
use sluice::crd::FeatureRollout;
use support::apiserver::{ApiServer, apply_all, create_namespace, install_feature_rollout_crd};
use support::openmetrics::OpenMetrics;
use support::server::{PrometheusServer, free_port};

const NAMESPACE: &str = "scale";
const ACCOUNT: &str = "sluice";
const FLAGS_PER_CONFIG_MAP: usize = 10;
/// The analysis interval of the rollouts with metrics.
const INTERVAL_S: u64 = 30;

struct Options {
    rollouts: usize,
    /// Shares of `down` and `data` rollouts (the rest are `plain`).
    down: f64,
    data: f64,
    /// The steady-state window, seconds.
    window: u64,
}

fn options() -> Options {
    let args = common::Args::parse(&[
        ("--rollouts", "N"),
        ("--down", "SHARE"),
        ("--data", "SHARE"),
        ("--window", "SECONDS"),
    ]);
    Options {
        rollouts: args.get("--rollouts", 1000),
        down: args.get("--down", 0.15),
        data: args.get("--data", 0.05),
        window: args.get("--window", 60),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Plain,
    Down,
    Data,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Down => "down",
            Kind::Data => "data",
        }
    }

    fn of(name: &str) -> Option<Kind> {
        [Kind::Plain, Kind::Down, Kind::Data]
            .into_iter()
            .find(|k| name.starts_with(&format!("{}-", k.name())))
    }
}

fn manifest(kind: Kind, index: usize, down: &str, data: &str) -> Value {
    let name = format!("{}-{index:05}", kind.name());
    let config_map = format!("{}-flags-{:04}", kind.name(), index / FLAGS_PER_CONFIG_MAP);
    let mut spec = json!({
        "flag": {
            "key": name,
            "variants": { "on": true, "off": false },
            "baseline": "off",
            "candidate": "on",
        },
        "target": { "configMap": { "name": config_map } },
        "stages": [
            { "weight": 5, "duration": "1h" },
            { "weight": 100 },
        ],
    });
    let address = match kind {
        Kind::Plain => None,
        Kind::Down => Some(down),
        Kind::Data => Some(data),
    };
    if let Some(address) = address {
        spec["analysis"] = json!({
            "interval": format!("{INTERVAL_S}s"),
            "prometheus": { "address": address, "timeout": "5s" },
            "metrics": [{
                "name": "error-rate",
                "ratio": {
                    "errors": "sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key=\"scale-data\",code=\"500\"}[{{ window }}]))",
                    "requests": "sum by (feature_flag_result_variant) (increase(http_requests_total{feature_flag_key=\"scale-data\"}[{{ window }}]))",
                },
                "maxIncrease": { "relative": "10%" },
            }],
        });
    }
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FeatureRollout",
        "metadata": { "name": name },
        "spec": spec,
    })
}

/// Traffic for flag `scale-data` from three hours ago to two hours ahead, 5 s apart: the
/// `data` rollouts' looks find both cohorts, whatever the window.
fn traffic() -> OpenMetrics {
    const STEP: i64 = 5;
    let start = Timestamp::now().as_second() - 3 * 3600;
    let points = (5 * 3600 / STEP) as usize;
    let mut data = OpenMetrics::default();
    for (variant, code, increment) in [
        ("off", "200", 99.0),
        ("off", "500", 1.0),
        ("on", "200", 9.9),
        ("on", "500", 0.1),
    ] {
        let labels = [
            ("feature_flag_key", "scale-data"),
            ("feature_flag_result_variant", variant),
            ("code", code),
        ];
        data.counter("http_requests", &labels, start, STEP, points, increment);
    }
    data
}

/// The controller process, killed when dropped.
struct Controller {
    child: Child,
    admin: String,
}

impl Controller {
    fn start(kubeconfig: &Path, log: &Path) -> Controller {
        let admin = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(log).expect("the controller's log");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["controller", "--namespace", NAMESPACE])
            .args(["--lease-namespace", NAMESPACE, "--admin-address", &admin])
            .args(["--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .env("POD_NAME", "sluice-scale")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("sluice controller starts");
        Controller { child, admin }
    }

    fn proc_status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory now and at its peak, MiB.
    fn memory(&self) -> (f64, f64) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        (
            mib(self.proc_status("VmRSS")),
            mib(self.proc_status("VmHWM")),
        )
    }

    /// User + system CPU time so far, seconds.
    fn cpu(&self) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/<pid>/stat");
        // After the command name in parentheses: field 14 (utime) and 15 (stime).
        let rest = &text[text.rfind(')').expect("stat") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // In clock ticks of USER_HZ, 100 a second on Linux.
        ticks as f64 / 100.0
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("the controller's /metrics answers")
            .text()
            .await
            .expect("metrics text")
    }

    async fn reconciles(&self) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| l.starts_with("sluice_reconciles_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn ready(&self) -> bool {
        reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller's requests in the audit log, with when the server received them.
/// Every audit file is read: the server rotates `audit.log` at 100 MB.
fn controller_requests(server: &ApiServer) -> Vec<(Timestamp, Value)> {
    let user = format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}");
    let mut files: Vec<_> = std::fs::read_dir(server.dir())
        .expect("the server's directory")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            text.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .collect::<Vec<_>>()
        })
        .filter(|e| e["user"]["username"] == user.as_str())
        .filter_map(|e| {
            let at: Timestamp = e["requestReceivedTimestamp"].as_str()?.parse().ok()?;
            Some((at, e))
        })
        .collect()
}

fn is_write(event: &Value) -> bool {
    matches!(
        event["verb"].as_str(),
        Some("create" | "update" | "patch" | "delete")
    )
}

/// `verb resource[/subresource]` of an audit event.
fn request_kind(event: &Value) -> String {
    let object = &event["objectRef"];
    let resource = object["resource"].as_str().unwrap_or("?");
    match object["subresource"].as_str() {
        Some(sub) => format!("{} {resource}/{sub}", event["verb"].as_str().unwrap_or("?")),
        None => format!("{} {resource}", event["verb"].as_str().unwrap_or("?")),
    }
}

fn main() {
    let options = options();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(run(options));
}

async fn run(options: Options) {
    let total = options.rollouts;
    let down_n = (total as f64 * options.down).round() as usize;
    let data_n = (total as f64 * options.data).round() as usize;
    let plain_n = total - down_n - data_n;
    println!(
        "scale: {total} FeatureRollouts ({plain_n} plain, {down_n} down, {data_n} data), analysis interval {INTERVAL_S}s, window {}s",
        options.window
    );

    let prometheus = PrometheusServer::start(&traffic()).await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let server = ApiServer::start().await;
    let admin = server.admin().await;
    install_feature_rollout_crd(&admin).await;
    create_namespace(&admin, NAMESPACE).await;
    let kubeconfig = server.service_account_kubeconfig(NAMESPACE, ACCOUNT).await;
    apply_all(
        &admin,
        &[json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": { "name": "sluice-scale" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
            "subjects": [{ "kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE }],
        })],
    )
    .await;

    let rollouts: Api<FeatureRollout> = Api::namespaced(admin.clone(), NAMESPACE);
    let manifests: Vec<Value> = (0..plain_n)
        .map(|i| (Kind::Plain, i))
        .chain((0..down_n).map(|i| (Kind::Down, i)))
        .chain((0..data_n).map(|i| (Kind::Data, i)))
        .map(|(kind, i)| manifest(kind, i, &down, &prometheus.base_url()))
        .collect();
    let began = Instant::now();
    futures::stream::iter(manifests)
        .for_each_concurrent(32, |manifest| {
            let rollouts = rollouts.clone();
            async move {
                let rollout: FeatureRollout =
                    serde_json::from_value(manifest).expect("a FeatureRollout");
                rollouts
                    .create(&PostParams::default(), &rollout)
                    .await
                    .expect("the rollout is created");
            }
        })
        .await;
    println!(
        "created {total} rollouts in {:.1}s",
        began.elapsed().as_secs_f64()
    );

    // Counts the rollouts with a status, from a watch of our own.
    let with_status = Arc::new(AtomicUsize::new(0));
    let counting = with_status.clone();
    let watch = tokio::spawn(async move {
        let stream = watcher(rollouts, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut seen = std::collections::HashSet::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r))
                    if r.status.is_some() =>
                {
                    seen.insert(r.metadata.name.unwrap_or_default());
                }
                Ok(watcher::Event::Delete(r)) => {
                    seen.remove(&r.metadata.name.unwrap_or_default());
                }
                _ => {}
            }
            counting.store(seen.len(), Ordering::SeqCst);
        }
    });

    let log = server.dir().join("controller.log");
    let controller = Controller::start(&kubeconfig, &log);
    let started = Instant::now();
    while !controller.ready().await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = started.elapsed();
    while with_status.load(Ordering::SeqCst) < total {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{} of {total} rollouts have a status after 15 minutes; log: {}",
            with_status.load(Ordering::SeqCst),
            log.display()
        );
    }
    let all_status_after = started.elapsed();
    watch.abort();
    let cpu_to_status = controller.cpu();
    let reconciles_to_status = controller.reconciles().await;
    let (rss_at_status, _) = controller.memory();
    println!(
        "controller ready (listed) after {:.1}s; every rollout has a status after {:.1}s ({reconciles_to_status} reconciles, {cpu_to_status:.1}s CPU, RSS {rss_at_status:.1} MiB)",
        ready_after.as_secs_f64(),
        all_status_after.as_secs_f64()
    );

    // The `down` rollouts reach their hold after three errored looks.
    let settle = Duration::from_secs(INTERVAL_S * 4);
    println!(
        "settling {}s (three looks of the `down` rollouts)",
        settle.as_secs()
    );
    tokio::time::sleep(settle).await;

    let window = Duration::from_secs(options.window);
    let from = Timestamp::now();
    let cpu_from = controller.cpu();
    let reconciles_from = controller.reconciles().await;
    tokio::time::sleep(window).await;
    let to = Timestamp::now();
    let cpu_to = controller.cpu();
    let reconciles_to = controller.reconciles().await;
    let (rss, hwm) = controller.memory();
    let metrics = controller.metrics().await;

    let requests = controller_requests(&server);
    let total_requests = requests.len();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (_, event) in &requests {
        *by_kind.entry(request_kind(event)).or_default() += 1;
    }
    let in_window: Vec<&Value> = requests
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, e)| e)
        .collect();
    let mut window_writes: BTreeMap<String, usize> = BTreeMap::new();
    for event in in_window.iter().filter(|e| is_write(e)) {
        let name = event["objectRef"]["name"].as_str().unwrap_or("");
        let who = match (event["objectRef"]["resource"].as_str(), Kind::of(name)) {
            (Some("featurerollouts"), Some(kind)) => kind.name().to_owned(),
            (Some("configmaps"), _) => "configmaps".to_owned(),
            (resource, _) => resource.unwrap_or("?").to_owned(),
        };
        *window_writes
            .entry(format!("{who}: {}", request_kind(event)))
            .or_default() += 1;
    }
    let seconds = window.as_secs_f64();
    let reconciles_all = reconciles_to;
    let cpu_all = cpu_to;

    println!();
    println!("## {total} FeatureRollouts ({plain_n} plain, {down_n} down, {data_n} data)");
    println!(
        "time until every rollout has a status: {:.1} s (controller listed after {:.1} s)",
        all_status_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    println!("resident memory: VmHWM {hwm:.1} MiB, VmRSS {rss:.1} MiB (end of the window)");
    println!(
        "CPU per reconcile, whole run: {:.3} ms ({cpu_all:.1} s CPU / {reconciles_all} reconciles)",
        1000.0 * cpu_all / reconciles_all.max(1.0)
    );
    println!(
        "API requests per reconcile, whole run: {:.2} ({total_requests} requests / {reconciles_all} reconciles)",
        total_requests as f64 / reconciles_all.max(1.0)
    );
    for (kind, n) in &by_kind {
        println!("  {kind}: {n}");
    }
    let window_reconciles = reconciles_to - reconciles_from;
    println!(
        "steady state over {seconds:.0} s: CPU {:.1} % of a core, {:.2} reconciles/s, CPU per reconcile {:.3} ms, {:.2} API requests/s, {:.2} writes/s",
        100.0 * (cpu_to - cpu_from) / seconds,
        window_reconciles / seconds,
        1000.0 * (cpu_to - cpu_from) / window_reconciles.max(1.0),
        in_window.len() as f64 / seconds,
        in_window.iter().filter(|e| is_write(e)).count() as f64 / seconds,
    );
    for (who, n) in &window_writes {
        println!("  {who}: {n} ({:.2}/s)", *n as f64 / seconds);
    }
    // One rollout of each kind, as its status says it.
    let rollouts: Api<FeatureRollout> = Api::namespaced(admin.clone(), NAMESPACE);
    for kind in [Kind::Plain, Kind::Down, Kind::Data] {
        let name = format!("{}-{:05}", kind.name(), 0);
        if let Ok(Some(rollout)) = rollouts.get_opt(&name).await
            && let Some(status) = rollout.status
        {
            let look = status.last_analysis.as_ref();
            println!(
                "  {name}: {:?}, consecutiveErrors {}, lastAnalysis {:?} {:?}: {}",
                status.phase,
                status.consecutive_errors,
                look.map(|a| a.at),
                look.map(|a| a.verdict),
                status.message.unwrap_or_default()
            );
        }
    }
    for prefix in ["sluice_decisions_total", "sluice_rollouts{"] {
        for line in metrics.lines().filter(|l| l.starts_with(prefix)) {
            println!("  {line}");
        }
    }
}
