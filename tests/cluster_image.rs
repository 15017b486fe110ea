//! The shipped artefact is what runs: the OCI archive `make image` writes
//! (`target/image/sluice-<version>.oci.tar`, `scripts/build-image.py`) is read by
//! independent tools, Debian's `skopeo` (labels, config, digest) and `umoci` (unpacks the
//! layer into a root filesystem), and the image's own binary runs inside that root
//! (`chroot`, as the user the chart's pod runs as, root filesystem read-only, `/tmp` the
//! chart's emptyDir) as the controller of a real kube-apiserver, with the command,
//! arguments and environment of the chart's rendered Deployment, the ServiceAccount token
//! and CA mounted where kubelet mounts them, and the chart's own RBAC. One whole rollout
//! with a ConfigMap target completes that way, and the probes of the Deployment pass.
//!
//! So a flag the chart passes that the binary lacks, a library or file missing from the
//! image, or a user that cannot read what it needs fails here; the tests below show the
//! first and the last. `make test` installs skopeo and umoci
//! (`scripts/install-image-tools.sh`) and builds the image first (`make image`). The test
//! process must be root (chroot and a private mount namespace need it); CI is.

mod support;

use std::os::unix::fs::{PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sluice::crd::{Phase, Verdict};
use support::apiserver::{
    ApiServer, ControllerProcess, WAIT_LIMIT, config_map_rollout, served_flag, status_of,
};
use support::chart_release::ChartRelease;
use support::openmetrics::OpenMetrics;
use support::server::{PrometheusServer, ServerOptions, free_port};
use support::tls::TestPki;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the image keeps its CA certificates (Debian's bundle).
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// Where kubelet mounts the ServiceAccount's token, CA and namespace.
const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// The target directory of this build (`target/`, or `$CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    let debug_binary = Path::new(env!("CARGO_BIN_EXE_sluice"));
    debug_binary
        .parent()
        .and_then(Path::parent)
        .expect("the binary is in <target>/<profile>/")
        .to_path_buf()
}

/// The archive `make image` writes.
fn archive() -> PathBuf {
    let path = target_dir().join(format!("image/sluice-{VERSION}.oci.tar"));
    assert!(
        path.is_file(),
        "no image archive at {}: run `make image` (`make test` does)",
        path.display()
    );
    path
}

/// The absolute path of a command on PATH, or a failure naming how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: run `scripts/install-image-tools.sh` (`make test` \
                 does) for skopeo and umoci; chroot, unshare and mount come with Debian"
            )
        })
}

/// Runs a command to completion; its stdout, or a failure with its stderr.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(tool(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn assert_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_owned();
    assert_eq!(
        uid, "0",
        "the image test runs the image's binary by chroot as another user in a private \
         mount namespace: run it as root (CI does)"
    );
}

/// The image, unpacked: its config (as skopeo reads it) and its root (as umoci unpacks it).
struct Image {
    /// Holds the layout and the root; removed when the test ends.
    dir: tempfile::TempDir,
    /// The image's config (`skopeo inspect --config`).
    config: Value,
    /// The manifest's digest (`skopeo inspect`).
    digest: String,
    /// The name containerd gives the image on import (`kind load image-archive`).
    name: String,
}

impl Image {
    fn unpack() -> Image {
        assert_root();
        let archive = archive();
        let reference = format!("oci-archive:{}:{VERSION}", archive.display());
        let config: Value =
            serde_json::from_str(&run("skopeo", &["inspect", "--config", &reference]))
                .expect("the image config is JSON");
        let inspect: Value = serde_json::from_str(&run("skopeo", &["inspect", &reference]))
            .expect("skopeo inspect gives JSON");
        let digest = inspect["Digest"].as_str().expect("a digest").to_owned();

        let dir = tempfile::Builder::new()
            .prefix("sluice-image-")
            .tempdir()
            .expect("a temporary directory");
        let layout = dir.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        run(
            "tar",
            &[
                "-xf",
                archive.to_str().unwrap(),
                "-C",
                layout.to_str().unwrap(),
            ],
        );
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap())
                .expect("index.json");
        let name = index["manifests"][0]["annotations"]["io.containerd.image.name"]
            .as_str()
            .expect("the image's containerd name")
            .to_owned();
        let bundle = dir.path().join("bundle");
        run(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:{VERSION}", layout.display()),
                bundle.to_str().unwrap(),
            ],
        );
        Image {
            dir,
            config,
            digest,
            name,
        }
    }

    /// The unpacked root filesystem.
    fn root(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }

    fn label(&self, name: &str) -> &str {
        self.config["config"]["Labels"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no label {name}: {:#}", self.config["config"]))
    }

    fn strings(&self, field: &str) -> Vec<String> {
        serde_json::from_value(self.config["config"][field].clone()).unwrap_or_default()
    }
}

/// The chart rendered for one test, its RBAC applied (this file's own methods of it).
type Release = ChartRelease;

impl Release {
    /// Renders the chart (cluster-wide; this run's rollouts only, through `selector`; the
    /// admin server on a free port) and applies its RBAC.
    async fn install() -> Release {
        let mut release = ChartRelease::new().await;
        let values = json!({ "selector": release.selector(), "adminPort": free_port() });
        release.apply_rbac(values, |_| {}).await;
        release
    }

    /// The Deployment the chart rendered.
    fn deployment(&self) -> Deployment {
        self.documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .map(|d| serde_json::from_value(d.clone()).expect("the Deployment parses"))
            .expect("the chart renders a Deployment")
    }

    fn pod_spec(&self) -> PodSpec {
        self.deployment()
            .spec
            .template
            .spec
            .clone()
            .expect("a pod template")
    }

    /// The controller container.
    fn container(&self) -> Container {
        let spec = self.pod_spec();
        assert_eq!(spec.containers.len(), 1, "one container");
        spec.containers[0].clone()
    }

    async fn apply_rollout(&self, name: &str, analysis: Option<Value>) {
        let mut manifest = config_map_rollout(name, name, "shop-flags", &[10, 50, 100], "3s");
        if let Some(analysis) = analysis {
            manifest["spec"]["analysis"] = analysis;
        }
        self.apply_manifest(name, manifest).await;
    }

    /// Waits for rollout `name` to be promoted by `pod`, and checks its stages were each
    /// entered once, in order.
    async fn promoted(&self, pod: &mut Pod, name: &str) {
        let waited = pod
            .try_wait_while_running(&format!("{name} promoted"), async |_| {
                status_of(&self.rollouts(), name)
                    .await
                    .is_some_and(|s| s.phase == Phase::Promoted)
            })
            .await;
        if let Err(failure) = waited {
            let status = status_of(&self.rollouts(), name).await;
            panic!("{failure}\nthe rollout's status: {status:#?}");
        }
        self.assert_every_stage_once(name, &pod.controller).await;
    }

    /// A token of the chart's ServiceAccount from the TokenRequest API.
    async fn token(&self) -> String {
        let kubeconfig = self
            .server
            .service_account_kubeconfig(&self.namespace, &self.fullname)
            .await;
        let text = std::fs::read_to_string(&kubeconfig).expect("the kubeconfig");
        let config: Value = serde_yaml_ng::from_str(&text).expect("the kubeconfig parses");
        config["users"][0]["user"]["token"]
            .as_str()
            .expect("a token in the kubeconfig")
            .to_owned()
    }
}

/// How the test lays out what kubelet would mount.
struct Mounts {
    /// The mode of the ServiceAccount's files (kubelet: readable by the pod's fsGroup).
    token_mode: u32,
    /// A private CA appended to the image's bundle (as a user adds their own).
    extra_ca: Option<String>,
}

impl Default for Mounts {
    fn default() -> Self {
        Mounts {
            token_mode: 0o440,
            extra_ca: None,
        }
    }
}

/// The `/etc/hosts` kubelet mounts into every pod (the image has none).
const KUBELET_HOSTS: &str = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The user, group and supplementary group the container runs as: the Deployment's
/// security contexts (the container's over the pod's), else the image's `User`.
fn identity(image: &Image, pod: &PodSpec, container: &Container) -> (i64, i64, Option<i64>) {
    let pod_context = pod.security_context.clone().unwrap_or_default();
    let context = container.security_context.clone().unwrap_or_default();
    let image_user = image.config["config"]["User"].as_str().unwrap_or("0:0");
    let (image_uid, image_gid) = image_user.split_once(':').unwrap_or((image_user, "0"));
    let uid = context
        .run_as_user
        .or(pod_context.run_as_user)
        .unwrap_or_else(|| image_uid.parse().expect("a numeric image user"));
    let gid = context
        .run_as_group
        .or(pod_context.run_as_group)
        .unwrap_or_else(|| image_gid.parse().expect("a numeric image group"));
    if context.run_as_non_root.or(pod_context.run_as_non_root) == Some(true) {
        assert_ne!(uid, 0, "runAsNonRoot: kubelet would refuse to start user 0");
    }
    (uid, gid, pod_context.fs_group)
}

/// The container's environment as kubelet builds it: the image's, then the Deployment's
/// (values, and the downward API fields the chart uses), then the API server's Service.
fn environment(
    image: &Image,
    container: &Container,
    pod_name: &str,
    namespace: &str,
    server: &ApiServer,
) -> Vec<String> {
    let mut env = image.strings("Env");
    for var in container.env.clone().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod_name.to_owned(),
                Some("metadata.namespace") => namespace.to_owned(),
                other => panic!(
                    "env {}: the test does not know what kubelet puts in {other:?}",
                    var.name
                ),
            },
            (None, None) => String::new(),
            (Some(_), Some(_)) => panic!("env {}: both value and valueFrom", var.name),
        };
        env.push(format!("{}={value}", var.name));
    }
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    env.push(format!("HOSTNAME={pod_name}"));
    env.push("KUBERNETES_SERVICE_HOST=127.0.0.1".into());
    env.push(format!("KUBERNETES_SERVICE_PORT={port}"));
    env
}

/// The image's binary running as the chart's container, in its own root.
struct Pod {
    controller: ControllerProcess,
    /// The admin port (the container port the probes name).
    admin_port: u16,
    root: PathBuf,
}

impl Pod {
    /// Lays out the mounts kubelet would make, then starts the container's command with
    /// its arguments and environment through `chroot` in a private mount namespace
    /// (root read-only as the chart asks, `/tmp` an emptyDir).
    async fn start(image: &Image, release: &Release, container: &Container, mounts: Mounts) -> Pod {
        let pod = release.pod_spec();
        let pod_name = format!("{}-0", release.fullname);
        let (uid, gid, fs_group) = identity(image, &pod, container);
        let root = image.root();

        let hosts = root.join("etc/hosts");
        assert!(
            !hosts.exists(),
            "the image leaves /etc/hosts to the runtime"
        );
        std::fs::write(&hosts, KUBELET_HOSTS).unwrap();
        let bundle = root.join(CA_BUNDLE);
        if let Some(ca) = &mounts.extra_ca {
            let mut text = std::fs::read_to_string(&bundle).expect("the image has a CA bundle");
            text.push_str(ca);
            std::fs::write(&bundle, text).unwrap();
        }

        assert_ne!(
            pod.automount_service_account_token,
            Some(false),
            "the controller needs its ServiceAccount token mounted"
        );
        let account = root.join(SERVICE_ACCOUNT_DIR);
        std::fs::create_dir_all(&account).unwrap();
        let ca = std::fs::read(release.server.dir().join("ca.crt")).unwrap();
        let token = release.token().await;
        for (name, data) in [
            ("token", token.as_bytes()),
            ("ca.crt", &ca),
            ("namespace", release.namespace.as_bytes()),
        ] {
            let path = account.join(name);
            std::fs::write(&path, data).unwrap();
            chown(&path, Some(0), fs_group.map(|g| g as u32)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mounts.token_mode))
                .unwrap();
        }

        // $1 is the root; the container's command follows.
        let mut mount_script = String::from("set -e\n");
        let read_only = container
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem);
        if read_only == Some(true) {
            mount_script.push_str("mount --bind \"$1\" \"$1\"\nmount -o remount,bind,ro \"$1\"\n");
        }
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .expect("a volume for each mount");
            assert!(
                volume.empty_dir.is_some(),
                "volume {}: the test mounts only emptyDirs",
                volume.name
            );
            let dir = image.dir.path().join(format!("volume-{}", volume.name));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
            let target = mount.mount_path.trim_start_matches('/');
            mount_script.push_str(&format!(
                "mount --bind '{}' \"$1/{target}\"\n",
                dir.display()
            ));
        }
        mount_script.push_str("shift\nexec \"$@\"\n");

        let command = container
            .command
            .clone()
            .unwrap_or_else(|| image.strings("Entrypoint"));
        let arguments = match (&container.command, &container.args) {
            (_, Some(args)) => args.clone(),
            (None, None) => image.strings("Cmd"),
            (Some(_), None) => Vec::new(),
        };
        assert!(!command.is_empty(), "the image has an entrypoint");

        let mut args: Vec<String> = vec![
            "--mount".into(),
            "--".into(),
            tool("sh").display().to_string(),
            "-c".into(),
            mount_script,
            "sh".into(),
            root.display().to_string(),
            tool("env").display().to_string(),
            "-i".into(),
        ];
        args.extend(environment(
            image,
            container,
            &pod_name,
            &release.namespace,
            release.server,
        ));
        args.push(tool("chroot").display().to_string());
        args.push(format!("--userspec={uid}:{gid}"));
        if let Some(group) = fs_group {
            args.push(format!("--groups={group}"));
        }
        args.push(root.display().to_string());
        args.extend(command);
        args.extend(arguments);

        let admin_port = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("admin"))
            .map(|p| u16::try_from(p.container_port).unwrap())
            .expect("an admin port");
        let log = release
            .server
            .dir()
            .join(format!("image-controller-{}.log", release.id));
        let controller = ControllerProcess::start_program(&tool("unshare"), &args, log);
        Pod {
            controller,
            admin_port,
            root,
        }
    }

    /// The `/proc` directory of the process whose root is the image's root (the
    /// controller itself), once it is there.
    fn process(&self) -> Option<PathBuf> {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .find(|dir| std::fs::read_link(dir.join("root")).ok().as_ref() == Some(&self.root))
    }

    /// The process's `(uid, gid, groups)` as `/proc/<pid>/status` has them.
    fn credentials(&self) -> Option<(String, String, String)> {
        let status = std::fs::read_to_string(self.process()?.join("status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        Some((field("Uid:"), field("Gid:"), field("Groups:")))
    }

    /// The options of the process's mount at `path` (seen from inside its root), from
    /// `/proc/<pid>/mountinfo`.
    fn mount_options(&self, path: &str) -> Option<String> {
        let info = std::fs::read_to_string(self.process()?.join("mountinfo")).ok()?;
        info.lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .rfind(|fields| fields.get(4) == Some(&path))
            .and_then(|fields| fields.get(5).map(|o| (*o).to_owned()))
    }

    /// Waits until `condition` holds, checking every 100 ms; fails naming `what`, with the
    /// container's log, if the container exits first or after [`WAIT_LIMIT`].
    async fn wait_while_running(&mut self, what: &str, condition: impl AsyncFnMut(&Pod) -> bool) {
        if let Err(failure) = self.try_wait_while_running(what, condition).await {
            panic!("{failure}");
        }
    }

    /// [`Pod::wait_while_running`], the failure returned.
    async fn try_wait_while_running(
        &mut self,
        what: &str,
        mut condition: impl AsyncFnMut(&Pod) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + WAIT_LIMIT;
        while !condition(self).await {
            if let Some(status) = self.controller.exited() {
                return Err(format!(
                    "the container exited ({status}) while waiting for {what}:\n{}",
                    self.controller.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {what}:\n{}",
                    self.controller.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits for the container to exit (failing after [`WAIT_LIMIT`]); its status.
    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(status) = self.controller.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the container still runs after {WAIT_LIMIT:?}:\n{}",
                self.controller.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `GET http://127.0.0.1:<admin port><path>` of the probe answers 200.
    async fn probe_passes(&self, container: &Container, liveness: bool) -> bool {
        let probe = if liveness {
            &container.liveness_probe
        } else {
            &container.readiness_probe
        };
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an httpGet probe");
        assert_eq!(get.port, IntOrString::String("admin".into()));
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        match reqwest::get(&url).await {
            Ok(response) => response.status() == reqwest::StatusCode::OK,
            Err(_) => false,
        }
    }
}

#[tokio::test]
async fn the_image_runs_a_whole_rollout_as_the_chart_deploys_it() {
    let image = Image::unpack();
    let release = Release::install().await;
    let container = release.container();
    assert_eq!(
        normalized(container.image.as_deref().expect("an image")),
        image.name,
        "the Deployment runs the image that was built (as `kind load image-archive` names it)"
    );
    let mut pod = Pod::start(&image, &release, &container, Mounts::default()).await;

    pod.wait_while_running("the controller to run in the image's root", async |pod| {
        pod.credentials().is_some()
    })
    .await;
    let (uid, gid, groups) = pod.credentials().unwrap();
    assert_eq!(uid, "65532 65532 65532 65532", "the chart's user");
    assert_eq!(gid, "65532 65532 65532 65532", "the chart's group");
    assert_eq!(groups, "65532", "the pod's fsGroup");
    let root_options = pod.mount_options("/").expect("the root is a mount");
    assert!(
        root_options.split(',').any(|o| o == "ro"),
        "the root is read-only: {root_options}"
    );
    let tmp_options = pod.mount_options("/tmp").expect("/tmp is a mount");
    assert!(
        tmp_options.split(',').any(|o| o == "rw"),
        "/tmp is writable: {tmp_options}"
    );

    pod.wait_while_running("the liveness and readiness probes to pass", async |pod| {
        pod.probe_passes(&container, true).await && pod.probe_passes(&container, false).await
    })
    .await;
    release.apply_rollout("checkout", None).await;
    release.promoted(&mut pod, "checkout").await;
    let controller = &pod.controller;
    let flag = served_flag(&release.config_maps(), "shop-flags", "checkout")
        .await
        .expect("the flag is served");
    assert_eq!(flag["defaultVariant"], "on");
    release.assert_nothing_forbidden(controller);
    assert!(
        controller.log().contains("became the leader"),
        "the chart's leader election ran:\n{}",
        controller.log()
    );
}

/// The check above can fail on the arguments: a flag the chart would pass that the binary
/// does not know stops the container with the binary's usage error.
#[tokio::test]
async fn a_flag_the_binary_does_not_know_stops_the_container() {
    let image = Image::unpack();
    let release = Release::install().await;
    let mut container = release.container();
    container
        .args
        .as_mut()
        .expect("the chart passes arguments")
        .push("--no-such-flag=1".into());
    let mut pod = Pod::start(&image, &release, &container, Mounts::default()).await;
    let status = pod.exit_status();
    assert_eq!(
        status.code(),
        Some(2),
        "a usage error\n{}",
        pod.controller.log()
    );
    assert!(
        pod.controller.log().contains("--no-such-flag"),
        "the error names the flag:\n{}",
        pod.controller.log()
    );
}

/// And on the user: a token only root may read stops the container, naming the file.
#[tokio::test]
async fn a_token_the_user_cannot_read_stops_the_container() {
    let image = Image::unpack();
    let release = Release::install().await;
    let container = release.container();
    let mounts = Mounts {
        token_mode: 0o400,
        ..Mounts::default()
    };
    let mut pod = Pod::start(&image, &release, &container, mounts).await;
    let status = pod.exit_status();
    assert!(!status.success(), "{}", pod.controller.log());
    assert!(
        pod.controller.log().contains("ermission denied"),
        "the error says why:\n{}",
        pod.controller.log()
    );
}

/// A Prometheus serving https with a certificate of a private CA for `localhost`, and
/// an analysis that asks it a guard query at every look (`vector(1)`, always healthy).
async fn tls_prometheus() -> (PrometheusServer, TestPki, Value) {
    let pki = TestPki::generate();
    sluice::prometheus::ensure_crypto_provider();
    let ready_client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let server = PrometheusServer::start_with(
        &OpenMetrics::default(),
        ServerOptions {
            web_config: Some(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n".into(),
            ),
            files: vec![
                ("server.crt".into(), pki.server_cert_pem.clone()),
                ("server.key".into(), pki.server_key_pem.clone()),
            ],
            https: true,
            ready_client: Some(ready_client),
            ready_basic_auth: None,
        },
    )
    .await;
    let analysis = json!({
        "interval": "1s",
        "prometheus": { "address": server.localhost_url(), "timeout": "5s" },
        "metrics": [{ "name": "alive", "guard": { "query": "vector(1)", "max": 2 } }],
    });
    (server, pki, analysis)
}

/// The image's controller running rollout `checkout`, whose looks ask [`tls_prometheus`],
/// with the private CA appended to the image's bundle when `trusted`; the image, the
/// Prometheus, the release and the pod (each must live as long as the test).
async fn looking_at_tls_prometheus(trusted: bool) -> (Image, PrometheusServer, Release, Pod) {
    let image = Image::unpack();
    let (prometheus, pki, analysis) = tls_prometheus().await;
    let release = Release::install().await;
    let container = release.container();
    let mounts = Mounts {
        extra_ca: trusted.then(|| pki.ca_pem.clone()),
        ..Mounts::default()
    };
    let pod = Pod::start(&image, &release, &container, mounts).await;
    release.apply_rollout("checkout", Some(analysis)).await;
    (image, prometheus, release, pod)
}

/// The controller in the image resolves Prometheus's name (glibc's resolver through the
/// image's `nsswitch.conf`, over the `/etc/hosts` kubelet mounts) and verifies its
/// certificate against the image's CA bundle (here with the private CA appended, as an
/// operator adds theirs): every stage's look passes and the rollout is promoted.
#[tokio::test]
async fn the_image_resolves_and_trusts_prometheus_through_its_own_files() {
    let (_image, _prometheus, release, mut pod) = looking_at_tls_prometheus(true).await;
    release.promoted(&mut pod, "checkout").await;
    let status = status_of(&release.rollouts(), "checkout").await.unwrap();
    let look = status.last_analysis.expect("a look was made");
    assert_eq!(look.verdict, Verdict::Pass, "{look:#?}");
    assert_eq!(
        look.metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["alive"],
        "the look asked Prometheus the guard"
    );
}

/// The check above can fail on the bundle: without the private CA in it, the image's
/// controller refuses Prometheus's certificate and the rollout waits, saying why.
#[tokio::test]
async fn without_the_ca_in_the_image_bundle_the_looks_fail_on_the_certificate() {
    let (_image, _prometheus, release, mut pod) = looking_at_tls_prometheus(false).await;
    pod.wait_while_running("a look refused on the certificate", async |_| {
        status_of(&release.rollouts(), "checkout")
            .await
            .is_some_and(|s| {
                serde_json::to_string(&s)
                    .unwrap()
                    .contains("invalid peer certificate")
            })
    })
    .await;
    let status = status_of(&release.rollouts(), "checkout").await.unwrap();
    assert_ne!(status.phase, Phase::Promoted, "{}", pod.controller.log());
}

/// `repository:tag` as containerd names it (`docker.io/library/` for a bare name).
fn normalized(image: &str) -> String {
    let first = image.split('/').next().unwrap_or_default();
    if !image.contains('/') {
        format!("docker.io/library/{image}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        image.to_owned()
    } else {
        format!("docker.io/{image}")
    }
}

/// The archive is labelled, non-root, this version's, and what `make image` builds from
/// this tree's release binary: rebuilding it gives the same digest.
#[test]
fn the_archive_is_the_labelled_reproducible_image_of_this_tree() {
    let image = Image::unpack();
    assert_eq!(image.label("org.opencontainers.image.version"), VERSION);
    assert_eq!(
        image.label("org.opencontainers.image.licenses"),
        env!("CARGO_PKG_LICENSE")
    );
    let head = run(
        "git",
        &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"],
    );
    assert!(
        image
            .label("org.opencontainers.image.revision")
            .starts_with(head.trim()),
        "the image was built from {}, the tree is at {head}: run `make image`",
        image.label("org.opencontainers.image.revision")
    );
    let repository = env!("CARGO_PKG_REPOSITORY");
    if !repository.is_empty() {
        assert_eq!(image.label("org.opencontainers.image.source"), repository);
    }
    assert_eq!(image.config["config"]["User"], "65532:65532", "non-root");
    assert_eq!(
        image.strings("Entrypoint"),
        ["/usr/local/bin/sluice"],
        "the binary is the entrypoint"
    );

    // The root holds the release binary `make image` built, and Debian's CA bundle
    // without this machine's local CAs.
    let root = image.root();
    let binary = std::fs::read(root.join("usr/local/bin/sluice")).unwrap();
    let release = std::fs::read(target_dir().join("release/sluice")).unwrap();
    assert!(
        binary == release,
        "the image's binary is not target/release/sluice: run `make image`"
    );
    let bundle = std::fs::read_to_string(root.join(CA_BUNDLE)).expect("a CA bundle");
    let count = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(count > 100, "Debian's bundle has over 100 CAs, not {count}");
    for local in std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(local.path()).unwrap_or_default();
        let body = text.trim();
        assert!(
            body.is_empty() || !bundle.contains(body),
            "the image carries this machine's local CA {}",
            local.path().display()
        );
    }
    assert!(
        root.join("etc/nsswitch.conf").is_file() && root.join("etc/passwd").is_file(),
        "name resolution and the user database are in the image"
    );

    // The same tree and binary give the same image, byte for byte.
    let again = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image.py");
    run(
        "python3",
        &[
            script.to_str().unwrap(),
            "--binary",
            target_dir().join("release/sluice").to_str().unwrap(),
            "--out",
            again.path().to_str().unwrap(),
        ],
    );
    let digest =
        std::fs::read_to_string(again.path().join(format!("sluice-{VERSION}.digest"))).unwrap();
    assert_eq!(
        digest.trim(),
        image.digest,
        "a rebuild gives another digest (or the image is stale: run `make image`)"
    );
    let written =
        std::fs::read_to_string(archive().with_file_name(format!("sluice-{VERSION}.digest")))
            .expect("make image writes the digest next to the archive");
    assert_eq!(written.trim(), image.digest);
    let archived = std::fs::read(archive()).unwrap();
    let rebuilt = std::fs::read(again.path().join(format!("sluice-{VERSION}.oci.tar"))).unwrap();
    assert!(archived == rebuilt, "the archives differ byte for byte");
}
