//! Shared by the tests that run every real binary (`e2e`, `placement`):
//! `lapdev-server` on PostgreSQL, the Kubernetes API test double,
//! `lapdev-kube-manager` talking to both as the ServiceAccount of the rendered
//! manifest (RBAC enforced), and the `lapdev` CLI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use lapdev_common::status::CapacityMode;
use lapdev_db::test_support::TestDatabase;
use lapdev_kube::manifest::{ManifestParams, manager_manifest};
use lapdev_kube_double::{KubeDouble, KubeletConfig, NodeSpec};
use serde_json::Value;
use uuid::Uuid;

pub const NAMESPACE: &str = "lapdev-workspaces";

/// Builds (if needed, once per test process) and returns the path of a
/// workspace binary. This package's server is the one cargo built for the
/// test: building it again with the binary's own feature set would replace
/// it, and the next `cargo test` would build it back (minutes each time).
pub fn binary(package: &'static str, name: &'static str) -> PathBuf {
    if (package, name) == ("lapdev-server", "lapdev-server") {
        return PathBuf::from(env!("CARGO_BIN_EXE_lapdev-server"));
    }
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<&'static str, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap();
    built
        .entry(name)
        .or_insert_with(|| build(package, name))
        .clone()
}

fn build(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let mut cmd = cargo();
    cmd.args(["build", "-q", "-p", package, "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // Where this test binary was built, whatever configured it.
        .env("CARGO_TARGET_DIR", dir.parent().unwrap());
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "building {name} failed");
    let path = dir.join(name);
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

/// A `cargo` command without the environment cargo set for this test
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `OUT_DIR`, …): cargo would see
/// those as changed inputs of crates that read them at build time (ring)
/// and rebuild them, with everything above them, on every run.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Only what cargo sets for a test process; the user's own `CARGO_*`
    // configuration (profiles, registries, offline, …) stays.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_for_tests = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            );
        if set_for_tests {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (what Kubernetes sends a pod it stops) and waits, at
    /// most a minute, for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {}", self.name);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still running a minute after SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        eprintln!("stopped {}", self.name);
    }
}

pub struct Env {
    pub server_bin: PathBuf,
    pub manager_bin: PathBuf,
    pub database: TestDatabase,
    pub data_dir: tempfile::TempDir,
    pub double: KubeDouble,
    pub kubeconfig: PathBuf,
}

impl Env {
    pub async fn new() -> Env {
        let nodes = (0..3)
            .map(|i| {
                let spec = NodeSpec {
                    cpu: "4".into(),
                    memory: "16Gi".into(),
                    ..NodeSpec::default()
                };
                (format!("node-{i}"), spec)
            })
            .collect();
        Env::with(CapacityMode::Nodes, nodes).await
    }

    /// An environment whose double has `nodes`, and whose manager's rights
    /// are those of the manifest rendered for `capacity`.
    pub async fn with(capacity: CapacityMode, nodes: Vec<(String, NodeSpec)>) -> Env {
        let server_bin = binary("lapdev-server", "lapdev-server");
        let manager_bin = binary("lapdev-kube-manager", "lapdev-kube-manager");
        let database = TestDatabase::postgres().await;
        let data_dir = tempfile::tempdir().unwrap();
        let (double, kubeconfig) = cluster_double(capacity, nodes).await;
        Env {
            server_bin,
            manager_bin,
            database,
            data_dir,
            double,
            kubeconfig,
        }
    }

    /// Starts the server (on `port`, 0 for any) and returns it with its base URL.
    pub fn server(&self, port: u16) -> (Proc, String) {
        self.server_in(port, &self.data_dir.path().join("data"), &[])
    }

    /// Starts a server on `port` with its own data directory and `extra`
    /// flags (e.g. another replica of the same database).
    pub fn server_in(&self, port: u16, data_dir: &Path, extra: &[&str]) -> (Proc, String) {
        self.server_of(&self.server_bin, port, data_dir, extra)
    }

    /// [`Env::server_in`] with another `lapdev-server` binary (e.g. the
    /// previous release's).
    pub fn server_of(
        &self,
        bin: &Path,
        port: u16,
        data_dir: &Path,
        extra: &[&str],
    ) -> (Proc, String) {
        let mut child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--database-url", self.database.url()])
            // Short, so silence is noticed quickly, but not so short that a
            // scheduling stall of a loaded two-core machine (three missed
            // intervals) reads as a lost manager and flaps the status.
            .args(["--heartbeat-interval-secs", "2"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the server printed its address")
                .unwrap();
            if let Some(url) = line.strip_prefix("lapdev-server listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stdout and stderr (the log, at `warn` here) so the
        // server never blocks on a full pipe, and pass them on, marked with
        // the port: the threads inherit the test's output capture, so a
        // failing test shows its servers' logs.
        let port = url.rsplit(':').next().unwrap_or("?").to_owned();
        let log_port = port.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("[lapdev-server :{port}] {line}");
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[lapdev-server :{log_port}] {line}");
            }
        });
        (
            Proc {
                child,
                name: "lapdev-server",
            },
            url,
        )
    }

    pub fn manager(&self, server: &str, token: &str) -> Proc {
        self.manager_with(server, token, &[])
    }

    /// The manager with extra environment (e.g. `LAPDEV_CAPACITY`).
    pub fn manager_with(&self, server: &str, token: &str, env: &[(&str, &str)]) -> Proc {
        self.manager_of(&self.kubeconfig, server, token, env)
    }

    /// A manager of the cluster whose Kubernetes API `kubeconfig` reaches
    /// (another [`cluster_double`]).
    pub fn manager_of(
        &self,
        kubeconfig: &Path,
        server: &str,
        token: &str,
        env: &[(&str, &str)],
    ) -> Proc {
        let child = Command::new(&self.manager_bin)
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0"])
            .env("LAPDEV_SERVER_URL", server)
            .env("LAPDEV_KUBE_CLUSTER_TOKEN", token)
            .env("LAPDEV_WORKSPACE_NAMESPACE", NAMESPACE)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Proc {
            child,
            name: "lapdev-kube-manager",
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("data/admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn lapdev(&self, server: &str, args: &[&str]) -> Output {
        self.lapdev_as(server, &self.admin_token(), args)
    }

    /// The CLI with another token.
    pub fn lapdev_as(&self, server: &str, token: &str, args: &[&str]) -> Output {
        Command::new(lapdev_bin())
            .args(args)
            .env("LAPDEV_SERVER", server)
            .env("LAPDEV_TOKEN", token)
            .output()
            .unwrap()
    }

    pub fn json(&self, server: &str, args: &[&str]) -> Value {
        let out = self.lapdev(server, args);
        assert!(
            out.status.success(),
            "lapdev {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn pods(&self) -> Vec<Pod> {
        pods_of(&self.double)
    }

    pub fn pvcs(&self) -> Vec<PersistentVolumeClaim> {
        pvcs_of(&self.double)
    }
}

/// A Kubernetes API double with `nodes`, set up as the manifest rendered
/// for `capacity` installs it (namespaces, ServiceAccount, RBAC enforced),
/// and the kubeconfig of the manager's ServiceAccount. One per cluster: two
/// managers must never share a workspace namespace.
pub async fn cluster_double(
    capacity: CapacityMode,
    nodes: Vec<(String, NodeSpec)>,
) -> (KubeDouble, PathBuf) {
    let double = KubeDouble::start().await.unwrap();
    let h = double.handle();
    // The manager runs as the ServiceAccount of the manifest the server
    // renders, with RBAC enforced from the Role and ClusterRole it applies
    // and Pod Security from its namespace labels: a Kubernetes call the
    // manifest does not allow fails the test.
    let mut params = ManifestParams::new(
        "http://127.0.0.1:1",
        "lapdev_ct_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde",
        "e2e",
    );
    params.capacity_mode = capacity;
    let manifest = manager_manifest(&params).unwrap();
    h.create(&manifest.manager_namespace).unwrap();
    h.create(&manifest.workspace_namespace).unwrap();
    h.create(&manifest.service_account).unwrap();
    h.create(&manifest.cluster_role).unwrap();
    h.create(&manifest.cluster_role_binding).unwrap();
    h.create(&manifest.role).unwrap();
    h.create(&manifest.role_binding).unwrap();
    h.enable_rbac();
    for (name, spec) in nodes {
        h.add_node(&name, spec).unwrap();
    }
    let kubeconfig = double
        .service_account_kubeconfig("lapdev", "lapdev-kube-manager")
        .unwrap();
    (double, kubeconfig)
}

/// A cluster of its own: a Kubernetes API double with a kubelet, registered
/// with a server (`lapdev cluster create`), its manager not started yet.
pub struct Cluster {
    pub name: String,
    pub id: Uuid,
    pub token: String,
    pub double: KubeDouble,
    pub kubeconfig: PathBuf,
    pub manager: Option<Proc>,
    _kubelet: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Registers cluster `name` through the server at `url`; its double has
    /// `nodes` and a kubelet that starts pods after 10 ms.
    pub async fn register(
        env: &Env,
        url: &str,
        name: &str,
        nodes: Vec<(String, NodeSpec)>,
    ) -> Cluster {
        let created = env.json(url, &["cluster", "create", name, "-o", "json"]);
        let (double, kubeconfig) = cluster_double(CapacityMode::Nodes, nodes).await;
        let kubelet = double.handle().run_kubelet(KubeletConfig {
            delay: Duration::from_millis(10),
            ..KubeletConfig::default()
        });
        Cluster {
            name: name.to_owned(),
            id: created["id"].as_str().unwrap().parse().unwrap(),
            token: created["token"].as_str().unwrap().to_owned(),
            double,
            kubeconfig,
            manager: None,
            _kubelet: kubelet,
        }
    }

    pub fn pods(&self) -> Vec<Pod> {
        pods_of(&self.double)
    }

    pub fn pvcs(&self) -> Vec<PersistentVolumeClaim> {
        pvcs_of(&self.double)
    }

    /// The pods and the PVCs of workspace `id`.
    pub fn objects_of(&self, id: &str) -> (Vec<Pod>, Vec<PersistentVolumeClaim>) {
        let of = |labels: &Option<std::collections::BTreeMap<String, String>>| {
            labels
                .as_ref()
                .is_some_and(|l| l.get("lapdev.dev/workspace-id").is_some_and(|v| v == id))
        };
        let pods = self
            .pods()
            .into_iter()
            .filter(|p| of(&p.metadata.labels))
            .collect();
        let pvcs = self
            .pvcs()
            .into_iter()
            .filter(|p| of(&p.metadata.labels))
            .collect();
        (pods, pvcs)
    }
}

/// One node with `cpu` and 16 GiB.
pub fn one_node(cpu: &str) -> Vec<(String, NodeSpec)> {
    vec![(
        "node-0".to_owned(),
        NodeSpec {
            cpu: cpu.into(),
            memory: "16Gi".into(),
            ..NodeSpec::default()
        },
    )]
}

/// `lapdev workspace create NAME` with `cpu`, `memory` and 1 GiB of
/// storage, answering JSON.
pub fn workspace_args<'a>(name: &'a str, cpu: &'a str, memory: &'a str) -> Vec<&'a str> {
    vec![
        "workspace",
        "create",
        name,
        "--image",
        "ghcr.io/lapdev/ws:1",
        "--cpu",
        cpu,
        "--memory",
        memory,
        "--storage",
        "1Gi",
        "-o",
        "json",
    ]
}

/// [`workspace_args`] with 1 GiB of memory, on `cluster`.
pub fn create_args<'a>(name: &'a str, cluster: &'a str, cpu: &'a str) -> Vec<&'a str> {
    let mut args = workspace_args(name, cpu, "1Gi");
    args.extend(["--cluster", cluster]);
    args
}

/// What every replica of one deployment is given alike (the same
/// encryption key and JWT secret, one public URL), before its own flags.
pub const REPLICA_ARGS: [&str; 6] = [
    "--encryption-key",
    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "--jwt-secret",
    "a shared jwt secret of enough length!",
    "--public-url",
    "https://lapdev.example.com",
];

/// Every pod the double holds.
pub fn pods_of(double: &KubeDouble) -> Vec<Pod> {
    double.handle().list::<Pod>().unwrap()
}

/// Every PersistentVolumeClaim the double holds.
pub fn pvcs_of(double: &KubeDouble) -> Vec<PersistentVolumeClaim> {
    double.handle().list::<PersistentVolumeClaim>().unwrap()
}

/// Polls `f` until it holds (bounded); the processes under test move on their own.
/// The bound is generous: on a loaded 2-core CI machine three of these tests run
/// real binaries side by side.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap()
}

/// The `lapdev` CLI of the package under test.
fn lapdev_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lapdev"))
}
