//! A real kube-apiserver over a real etcd on free loopback ports, for the cluster tests.
//!
//! The binaries are the ones `scripts/install-kube.sh` builds from source and caches
//! (`make test` runs it); `$SLUICE_KUBE_BIN` names another directory holding `etcd` and
//! `kube-apiserver`. Each server gets a temporary directory with a fresh CA, a serving
//! certificate, an admin client certificate (group `system:masters`), a service-account
//! signing key (so the TokenRequest API mints tokens) and an audit log of every request
//! (so a test can prove no request was refused). Authorization is RBAC only.
//!
//! Every server process runs under a small `sh` guard that holds a pipe from the test
//! process: when the test process ends, however it ends (even SIGKILL), the pipe closes and
//! the guard stops the server, so no etcd or kube-apiserver outlives its tests.
//! [`ApiServer::shared`] starts one server per test binary (tests use their own
//! namespaces); [`ApiServer::start`] one owned server, stopped when dropped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use super::server::free_port;
use super::tls::TestCa;

/// How long etcd and kube-apiserver may take to become ready (about 4 s here).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How often readiness is checked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The field manager of everything the harness applies.
pub const HARNESS_MANAGER: &str = "sluice-test-harness";

/// The guard around each process the harness starts (servers and controllers): the
/// process runs in the background; a reader of the pipe on file descriptor 3 (the test
/// process's end of stdin) sends it each signal named on the pipe (a line "KILL"), and
/// when the pipe closes SIGTERM, then SIGKILL 5 s later if it is still there (a
/// kube-apiserver whose etcd is gone does not finish its graceful shutdown); the guard
/// exits with the process, then removes `$SLUICE_CLEANUP` if set.
const GUARD: &str = r#"exec 3<&0
"$@" 3<&- </dev/null &
pid=$!
{
    while read -r signal <&3; do kill -s "$signal" "$pid" 2>/dev/null; done
    kill -s TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null
} &
wait "$pid"
status=$?
if [ -n "${SLUICE_CLEANUP:-}" ]; then rm -rf "$SLUICE_CLEANUP"; fi
exit "$status""#;

/// One server process under its guard.
struct Guarded {
    name: &'static str,
    child: Child,
    pipe: Option<ChildStdin>,
    log: PathBuf,
}

impl Guarded {
    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        cleanup: Option<&Path>,
    ) -> Guarded {
        Self::spawn_with(name, program, args, log, cleanup, &[])
    }

    fn spawn_with(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        cleanup: Option<&Path>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Guarded {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(GUARD)
            .arg("sluice-guard")
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            // The Lease's namespace is always passed as an argument.
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("log file handle"))
            .stderr(out);
        if let Some(dir) = cleanup {
            command.env("SLUICE_CLEANUP", dir);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let pipe = child.stdin.take();
        Guarded {
            name,
            child,
            pipe,
            log,
        }
    }

    /// Whether the server has exited (and with what).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends the process `signal` (`TERM`, `KILL`, `STOP`, ...) through the guard.
    fn send(&mut self, signal: &str) {
        if let Some(pipe) = self.pipe.as_mut() {
            let _ = writeln!(pipe, "{signal}");
            let _ = pipe.flush();
        }
    }

    /// Stops the process (SIGTERM, SIGKILL if it lingers) and waits until it has exited.
    fn stop(&mut self) {
        drop(self.pipe.take());
        let _ = self.child.wait();
    }

    /// SIGKILL, and wait until the process has exited.
    fn kill(&mut self) {
        self.send("KILL");
        self.stop();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        format!(
            "{} log ({}):\n{}",
            self.name,
            self.log.display(),
            &text[start..]
        )
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running kube-apiserver and etcd; both stopped when dropped.
pub struct ApiServer {
    // Field order is drop order: the API server stops before etcd, etcd's guard removes
    // the directory.
    apiserver: Option<Guarded>,
    etcd: Guarded,
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    etcd_port: u16,
    admin_kubeconfig: PathBuf,
}

/// Writes a fresh CA, the serving certificate, the admin's client certificate, the
/// service-account signing key and the audit policy into `dir`.
fn write_credentials(dir: &Path) {
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    };
    let ca = TestCa::generate();
    write("ca.crt", &ca.pem());
    let (cert, key) = ca.server_certificate();
    write("apiserver.crt", &cert);
    write("apiserver.key", &key);
    let (cert, key) = ca.client_certificate("sluice-test-admin", Some("system:masters"));
    write("admin.crt", &cert);
    write("admin.key", &key);
    let signing = rcgen::KeyPair::generate().expect("service-account key");
    write("service-account.key", &signing.serialize_pem());
    write("service-account.pub", &signing.public_key_pem());
    write(
        "audit-policy.yaml",
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
    );
}

/// The directory holding `etcd` and `kube-apiserver`: `$SLUICE_KUBE_BIN`, or the cache
/// directory `scripts/install-kube.sh` builds into.
pub fn binaries() -> PathBuf {
    let dir = match std::env::var_os("SLUICE_KUBE_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-kube.sh");
            let output = Command::new(&script)
                .arg("--dir")
                .output()
                .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
            assert!(output.status.success(), "{} --dir failed", script.display());
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        }
    };
    for binary in ["etcd", "kube-apiserver"] {
        assert!(
            dir.join(binary).is_file(),
            "no {binary} in {}: run `scripts/install-kube.sh` (`make test` does; it builds \
             kube-apiserver and etcd from source with Go once), or set SLUICE_KUBE_BIN to a \
             directory holding etcd and kube-apiserver",
            dir.display()
        );
    }
    dir
}

impl ApiServer {
    /// The server shared by every test of this test binary, started on first use. Tests
    /// sharing it work in namespaces of their own ([`ApiServer::namespace`]). It stops when
    /// the test binary exits.
    pub fn shared() -> &'static ApiServer {
        static SHARED: OnceLock<ApiServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Started on a runtime of its own: each test has its own runtime, and the
            // server must outlive the test that happened to start it.
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(ApiServer::start())
            })
            .join()
            .expect("the API server starts")
        })
    }

    /// Starts etcd and kube-apiserver in a new temporary directory and waits for `/readyz`.
    pub async fn start() -> ApiServer {
        sluice::prometheus::ensure_crypto_provider();
        let bin = binaries();
        let mut last_logs = String::new();
        // A free port can be taken between our check and the server's bind: try again.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("sluice-apiserver-")
                .tempdir()
                .expect("temp dir")
                .keep();
            write_credentials(&dir);
            let etcd_port = free_port();
            let peer_port = free_port();
            let etcd_url = format!("http://127.0.0.1:{etcd_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let args: Vec<String> = vec![
                "--name=sluice-test".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=sluice-test={peer_url}"),
                // Test data: a crash may lose it, and fsync is most of etcd's latency.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ];
            // etcd's guard removes the directory once etcd has stopped.
            let etcd = Guarded::spawn(
                "etcd",
                &bin.join("etcd"),
                &args,
                dir.join("etcd.log"),
                Some(&dir),
            );
            let mut server = ApiServer {
                apiserver: None,
                etcd,
                admin_kubeconfig: dir.join("admin.kubeconfig"),
                dir,
                bin: bin.clone(),
                port: free_port(),
                etcd_port,
            };
            server.write_kubeconfig(
                "admin.kubeconfig",
                &format!(
                    "client-certificate: {}\n    client-key: {}",
                    server.dir.join("admin.crt").display(),
                    server.dir.join("admin.key").display()
                ),
                "default",
            );
            match server.start_apiserver().await {
                Ok(()) => return server,
                Err(logs) => last_logs = logs,
            }
        }
        panic!("the API server did not start:\n{last_logs}");
    }

    /// Starts kube-apiserver on `self.port` and waits for `/readyz`; on failure the logs.
    async fn start_apiserver(&mut self) -> Result<(), String> {
        let dir = &self.dir;
        let file = |name: &str| dir.join(name).display().to_string();
        let args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            format!("--tls-cert-file={}", file("apiserver.crt")),
            format!("--tls-private-key-file={}", file("apiserver.key")),
            format!("--cert-dir={}", file("certs")),
            format!("--client-ca-file={}", file("ca.crt")),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", file("service-account.pub")),
            format!(
                "--service-account-signing-key-file={}",
                file("service-account.key")
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // No nodes and no kube-controller-manager: nothing to reconcile the
            // `kubernetes` Service's endpoints against (they cannot be loopback).
            "--endpoint-reconciler-type=none".into(),
            format!("--audit-policy-file={}", file("audit-policy.yaml")),
            format!("--audit-log-path={}", file("audit.log")),
            "--audit-log-mode=blocking".into(),
            "--v=1".into(),
        ];
        let log = dir.join(format!("kube-apiserver-{}.log", self.port));
        self.apiserver = Some(Guarded::spawn(
            "kube-apiserver",
            &self.bin.join("kube-apiserver"),
            &args,
            log,
            None,
        ));
        let client = self.admin().await;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a request");
            if let Ok(text) = client.request_text(request).await
                && text.trim() == "ok"
            {
                return Ok(());
            }
            let etcd_exited = self.etcd.exited();
            let apiserver = self.apiserver.as_mut().expect("started");
            let apiserver_exited = apiserver.exited();
            if etcd_exited.is_some() || apiserver_exited.is_some() || Instant::now() > deadline {
                return Err(format!(
                    "etcd exited: {etcd_exited:?}, kube-apiserver exited: {apiserver_exited:?}\n{}\n{}",
                    self.etcd.log_tail(),
                    apiserver.log_tail()
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops kube-apiserver and starts it again on the same port over the same etcd (its
    /// data kept), waiting for `/readyz`. Clients keep working once it is back.
    pub async fn restart_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop();
        }
        if let Err(logs) = self.start_apiserver().await {
            panic!("the API server did not come back:\n{logs}");
        }
    }

    /// Stops kube-apiserver (etcd keeps running), until [`ApiServer::restart_apiserver`].
    pub fn stop_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop();
        }
    }

    /// The server's address, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The temporary directory (certificates, kubeconfigs, logs, etcd's data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for the admin (client certificate, group `system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A client for the admin.
    pub async fn admin(&self) -> Client {
        client_for(&self.admin_kubeconfig).await
    }

    /// A client for the admin, once the committed FeatureRollout CRD is installed.
    pub async fn admin_with_crd(&self) -> Client {
        let admin = self.admin().await;
        install_feature_rollout_crd(&admin).await;
        admin
    }

    /// Writes a kubeconfig `name` in the server's directory whose user is `user` (YAML
    /// fields of a kubeconfig user, indented for the `user:` map) and whose context's
    /// namespace is `namespace`; returns its path.
    fn write_kubeconfig(&self, name: &str, user: &str, namespace: &str) -> PathBuf {
        let path = self.dir.join(name);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sluice-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: user\n  user:\n    {user}\ncontexts:\n- name: sluice-test\n  context:\n    cluster: sluice-test\n    user: user\n    namespace: {namespace}\ncurrent-context: sluice-test\n",
            server = self.url(),
            ca = self.dir.join("ca.crt").display(),
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates the ServiceAccount `namespace/name` if missing, mints a token for it with
    /// the TokenRequest API (valid one hour) and writes a kubeconfig using it; returns the
    /// kubeconfig's path. The context's namespace is `namespace`.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let admin = self.admin().await;
        let accounts: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        if accounts
            .get_opt(name)
            .await
            .expect("read the ServiceAccount")
            .is_none()
        {
            accounts
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap(),
                )
                .await
                .expect("create the ServiceAccount");
        }
        let request: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": { "expirationSeconds": 3600 },
        }))
        .unwrap();
        let token: TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .expect("the TokenRequest API mints a token");
        let token = token
            .status
            .and_then(|s| s.token)
            .expect("the TokenRequest's status holds a token");
        self.write_kubeconfig(
            &format!("{namespace}-{name}.kubeconfig"),
            &format!("token: {token}"),
            namespace,
        )
    }

    /// A fresh namespace `<prefix>-<random>`, created by the admin. (There is no
    /// kube-controller-manager: a deleted namespace would never finish terminating, so
    /// tests leave theirs.)
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        create_namespace(&self.admin().await, &name).await;
        name
    }

    /// Every audit event the server has written so far (one JSON object a line).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The audit events of requests by `user` that the server refused with 403.
    pub fn forbidden_for(&self, user: &str) -> Vec<String> {
        self.audit_events()
            .into_iter()
            .filter(|e| e["user"]["username"] == user && e["responseStatus"]["code"] == 403)
            .map(|e| {
                format!(
                    "{} {} ({})",
                    e["verb"].as_str().unwrap_or("?"),
                    e["requestURI"].as_str().unwrap_or("?"),
                    e["responseStatus"]["message"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Client {
    sluice::prometheus::ensure_crypto_provider();
    let file = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig parses");
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

/// Creates namespace `name` (if it does not exist).
pub async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            name,
            &PatchParams::apply(HARNESS_MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name },
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Installs (server-side applies) a CRD and waits until it is Established.
pub async fn install_crd(client: &Client, crd: &Value) {
    try_install_crd(client, crd)
        .await
        .unwrap_or_else(|e| panic!("the CRD installs: {e}"));
}

/// [`install_crd`], or the server's refusal.
pub async fn try_install_crd(client: &Client, crd: &Value) -> Result<(), kube::Error> {
    let name = crd["metadata"]["name"].as_str().expect("a CRD name");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        name,
        &PatchParams::apply(HARNESS_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await?;
    wait_until(&format!("the CRD {name} to be Established"), || {
        let crds = crds.clone();
        async move {
            crds.get(name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        }
    })
    .await;
    Ok(())
}

/// The committed CRD (`crds/featurerollout.yaml`) as JSON.
pub fn committed_crd() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/featurerollout.yaml"),
    )
    .expect("crds/featurerollout.yaml");
    serde_yaml_ng::from_str(&text).expect("the committed CRD parses")
}

/// For the controller's tests: installs the committed CRD as it is.
pub async fn install_feature_rollout_crd(client: &Client) {
    install_crd(client, &committed_crd()).await;
}

/// Server-side applies each document (any kind the server serves) as the harness.
pub async fn apply_all(client: &Client, documents: &[Value]) {
    for document in documents {
        let gvk = GroupVersionKind::try_from(&kube::api::TypeMeta {
            api_version: document["apiVersion"].as_str().expect("apiVersion").into(),
            kind: document["kind"].as_str().expect("kind").into(),
        })
        .expect("a group, version and kind");
        let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the server serves {gvk:?}: {e}"));
        let name = document["metadata"]["name"].as_str().expect("a name");
        let api: Api<DynamicObject> = match (
            capabilities.scope,
            document["metadata"]["namespace"].as_str(),
        ) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            (kube::discovery::Scope::Namespaced, None) => {
                Api::default_namespaced_with(client.clone(), &resource)
            }
            (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            name,
            &PatchParams::apply(HARNESS_MANAGER).force(),
            &Patch::Apply(document),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {name}: {e}", gvk.kind));
    }
}

/// How long [`wait_until`] waits before failing the test.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Waits until `condition` holds, checking every 100 ms; fails the test after
/// [`WAIT_LIMIT`] naming `what`.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT_LIMIT;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A `sluice controller` process (the binary under test) using `kubeconfig`, under the
/// guard (it ends with the test process however that ends); SIGKILLed when dropped. Its
/// JSON log lines go to a file.
pub struct ControllerProcess {
    process: Guarded,
}

impl ControllerProcess {
    /// Starts `sluice controller` with these extra arguments (`--namespace`,
    /// `--lease-namespace`, ...) and `POD_NAME` (its Lease identity); the admin server
    /// binds a free port.
    pub fn start(
        kubeconfig: &Path,
        pod_name: &str,
        log: PathBuf,
        args: &[&str],
    ) -> ControllerProcess {
        let mut all: Vec<String> = ["controller", "--admin-address", "127.0.0.1:0"]
            .into_iter()
            .chain(["--log-format", "json"])
            .map(String::from)
            .collect();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let env: [(&str, &std::ffi::OsStr); 3] = [
            ("KUBECONFIG", kubeconfig.as_os_str()),
            ("RUST_LOG", "info".as_ref()),
            ("POD_NAME", pod_name.as_ref()),
        ];
        let process = Guarded::spawn_with(
            "sluice controller",
            Path::new(env!("CARGO_BIN_EXE_sluice")),
            &all,
            log,
            None,
            &env,
        );
        ControllerProcess { process }
    }

    /// Starts `program` with exactly these arguments as a controller (the image test runs
    /// the image's own binary through `chroot`; the arguments say everything, the
    /// environment included); its output goes to `log`.
    pub fn start_program(program: &Path, args: &[String], log: PathBuf) -> ControllerProcess {
        let process = Guarded::spawn("sluice controller", program, args, log, None);
        ControllerProcess { process }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends a signal (`TERM`, `STOP`, `CONT`, ...) and returns at once (see
    /// [`ControllerProcess::exited`]).
    pub fn send(&mut self, signal: &str) {
        self.process.send(signal);
    }

    /// Sends SIGTERM and waits for the process to exit, checking every 100 ms; fails after
    /// [`WAIT_LIMIT`] naming `who`, with the log.
    pub async fn terminate(&mut self, who: &str) {
        self.send("TERM");
        let deadline = Instant::now() + WAIT_LIMIT;
        while self.exited().is_none() {
            assert!(
                Instant::now() < deadline,
                "{who} ignored SIGTERM for {WAIT_LIMIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The port of the sync server (`--sync-address`) its JSON log announced, once it has.
    pub fn sync_port(&self) -> Option<u16> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("sync server listening"))
            })
            .and_then(|l| l["address"].as_str()?.rsplit(':').next()?.parse().ok())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A FeatureRollout of flag `flag` (variants on/off) written to ConfigMap `config_map`,
/// with one stage per weight; every stage but the last lasts `duration`.
pub fn config_map_rollout(
    name: &str,
    flag: &str,
    config_map: &str,
    weights: &[u32],
    duration: &str,
) -> Value {
    let stages: Vec<Value> = weights
        .iter()
        .map(|w| {
            if *w == 100 {
                json!({ "weight": w })
            } else {
                json!({ "weight": w, "duration": duration })
            }
        })
        .collect();
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FeatureRollout",
        "metadata": { "name": name },
        "spec": {
            "flag": {
                "key": flag,
                "variants": { "on": true, "off": false },
                "baseline": "off",
                "candidate": "on",
            },
            "target": { "configMap": { "name": config_map } },
            "stages": stages,
        },
    })
}

/// Server-side applies `manifest` as rollout `name` (field manager `sluice-test`).
pub async fn apply_rollout(
    rollouts: &Api<sluice::crd::FeatureRollout>,
    name: &str,
    manifest: Value,
) {
    rollouts
        .patch(
            name,
            &PatchParams::apply("sluice-test"),
            &Patch::Apply(manifest),
        )
        .await
        .expect("the rollout applies");
}

/// Waits (as [`wait_until`], naming `what`) until rollout `name` has a status for which
/// `done` holds.
pub async fn wait_for_status(
    rollouts: &Api<sluice::crd::FeatureRollout>,
    name: &str,
    what: &str,
    done: impl Fn(&sluice::crd::FeatureRolloutStatus) -> bool,
) {
    wait_until(what, || async {
        status_of(rollouts, name).await.is_some_and(|s| done(&s))
    })
    .await;
}

/// The rollout's status, if it has one.
pub async fn status_of(
    rollouts: &Api<sluice::crd::FeatureRollout>,
    name: &str,
) -> Option<sluice::crd::FeatureRolloutStatus> {
    rollouts
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.status)
}

/// The flag `key` as ConfigMap `config_map` serves it (its `flags.json`).
pub async fn served_flag(
    config_maps: &Api<k8s_openapi::api::core::v1::ConfigMap>,
    config_map: &str,
    key: &str,
) -> Option<Value> {
    let cm = config_maps.get_opt(config_map).await.ok()??;
    let document = cm.data?.remove("flags.json")?;
    sluice::flagd::flag_in_document(&document, key).ok()?
}
