//! A real Prometheus server on a free loopback port, loaded with known data, killed on
//! drop.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::openmetrics::OpenMetrics;

/// How long Prometheus may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often readiness is checked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Extra settings for [`PrometheusServer::start_with`].
#[derive(Default)]
pub struct ServerOptions {
    /// Content of a `--web.config.file` (TLS, basic auth).
    pub web_config: Option<String>,
    /// Files to write next to the web config (name, content), e.g. certificates.
    pub files: Vec<(String, String)>,
    /// Serve https (the web config must configure TLS).
    pub https: bool,
    /// The client used to poll `/-/ready` (one that trusts the CA and knows the
    /// password, for a TLS server with basic auth).
    pub ready_client: Option<reqwest::Client>,
    /// Basic auth credentials for polling `/-/ready`.
    pub ready_basic_auth: Option<(String, String)>,
}

/// A running Prometheus; killed when dropped.
pub struct PrometheusServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    scheme: &'static str,
}

impl PrometheusServer {
    /// Starts Prometheus over `data` (loaded with promtool before start) on plain http.
    pub async fn start(data: &OpenMetrics) -> Self {
        Self::start_with(data, ServerOptions::default()).await
    }

    /// Starts Prometheus over `data` with extra options.
    pub async fn start_with(data: &OpenMetrics, options: ServerOptions) -> Self {
        let prometheus = binary("prometheus");
        let promtool = binary("promtool");
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        load(&promtool, &data.render(), dir.path(), &data_dir);

        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1h\n").expect("write config");
        for (name, content) in &options.files {
            std::fs::write(dir.path().join(name), content).expect("write file");
        }
        let web_config = options.web_config.as_ref().map(|yaml| {
            let path = dir.path().join("web.yml");
            std::fs::write(&path, yaml).expect("write web config");
            path
        });

        sluice::prometheus::ensure_crypto_provider();
        let ready_client = options.ready_client.clone().unwrap_or_default();
        let scheme = if options.https { "https" } else { "http" };

        // A free port can be taken between our check and Prometheus's bind: try again.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log_path = dir.path().join(format!("prometheus-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut command = Command::new(&prometheus);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data_dir.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--storage.tsdb.retention.time=100y")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log);
            if let Some(web_config) = &web_config {
                command.arg(format!("--web.config.file={}", web_config.display()));
            }
            let mut child = command.spawn().expect("spawn prometheus");
            let url = format!("{scheme}://127.0.0.1:{port}/-/ready");
            match wait_ready(&mut child, &ready_client, &options, &url, &log_path).await {
                Ok(()) => {
                    return PrometheusServer {
                        child: Some(child),
                        dir,
                        port,
                        scheme,
                    };
                }
                Err(log) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if !log.contains("address already in use") {
                        panic!("prometheus did not become ready:\n{log}");
                    }
                    last_log = log;
                }
            }
        }
        panic!("prometheus could not bind a free port:\n{last_log}");
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The base URL with the host name `localhost` (for TLS host name checks).
    pub fn localhost_url(&self) -> String {
        format!("{}://localhost:{}", self.scheme, self.port)
    }

    /// The server's directory (web config, certificates, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server and waits until it is gone, so its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `url` (`/-/ready`) until it answers 200, the process exits or time runs out;
/// on failure returns what to show (the server's log).
async fn wait_ready(
    child: &mut Child,
    client: &reqwest::Client,
    options: &ServerOptions,
    url: &str,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Err(format!("exited with {status}:\n{}", read(log)));
        }
        let mut request = client.get(url).timeout(Duration::from_secs(2));
        if let Some((user, password)) = &options.ready_basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        if let Ok(response) = request.send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {READY_TIMEOUT:?}:\n{}", read(log)));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The path of `name` on PATH; panics with what to do when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: the Prometheus integration tests need a real \
                 Prometheus (Debian package `prometheus`). Run `make test`, or \
                 `scripts/install-prometheus.sh` and then `cargo test`."
            )
        })
}

/// Writes `text` to `<dir>/data.om` and turns it into TSDB blocks in `data_dir`.
fn load(promtool: &Path, text: &str, dir: &Path, data_dir: &Path) {
    let input = dir.join("data.om");
    std::fs::write(&input, text).expect("write OpenMetrics data");
    let output = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(data_dir)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool could not load the data: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}
