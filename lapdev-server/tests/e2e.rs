//! End to end, with every real binary: `lapdev-server` on PostgreSQL, the
//! Kubernetes API test double, `lapdev-kube-manager` talking to both, and the
//! `lapdev` CLI driving it all as an admin would.
//!
//! The binaries of other packages are built with the same cargo first (a no-op
//! when `.ci/run` has built them already).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use lapdev_db::test_support::TestDatabase;
use lapdev_kube::manifest::{ManifestParams, manager_manifest};
use lapdev_kube_double::{KubeDouble, NodeSpec};
use serde_json::Value;

const NAMESPACE: &str = "lapdev-workspaces";

/// Builds (if needed, once per test process) and returns the path of a
/// workspace binary.
fn binary(package: &'static str, name: &'static str) -> PathBuf {
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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", package, "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "building {name} failed");
    let path = dir.join(name);
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

/// A child process killed on drop.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        eprintln!("stopped {}", self.name);
    }
}

struct Env {
    server_bin: PathBuf,
    manager_bin: PathBuf,
    database: TestDatabase,
    data_dir: tempfile::TempDir,
    double: KubeDouble,
    kubeconfig: PathBuf,
}

impl Env {
    async fn new() -> Env {
        let server_bin = binary("lapdev-server", "lapdev-server");
        let manager_bin = binary("lapdev-kube-manager", "lapdev-kube-manager");
        let database = TestDatabase::postgres().await;
        let data_dir = tempfile::tempdir().unwrap();
        let double = KubeDouble::start().await.unwrap();
        let h = double.handle();
        // The manager runs as the ServiceAccount of the manifest the server
        // renders, with RBAC enforced from the Role and ClusterRole it applies
        // and Pod Security from its namespace labels: a Kubernetes call the
        // manifest does not allow fails this test.
        let manifest = manager_manifest(&ManifestParams::new(
            "http://127.0.0.1:1",
            "lapdev_ct_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde",
            "e2e",
        ))
        .unwrap();
        h.create(&manifest.manager_namespace).unwrap();
        h.create(&manifest.workspace_namespace).unwrap();
        h.create(&manifest.service_account).unwrap();
        h.create(&manifest.cluster_role).unwrap();
        h.create(&manifest.cluster_role_binding).unwrap();
        h.create(&manifest.role).unwrap();
        h.create(&manifest.role_binding).unwrap();
        h.enable_rbac();
        for i in 0..3 {
            h.add_node(
                &format!("node-{i}"),
                NodeSpec {
                    cpu: "4".into(),
                    memory: "16Gi".into(),
                    ..NodeSpec::default()
                },
            )
            .unwrap();
        }
        let kubeconfig = double
            .service_account_kubeconfig("lapdev", "lapdev-kube-manager")
            .unwrap();
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
    fn server(&self, port: u16) -> (Proc, String) {
        let mut child = Command::new(&self.server_bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(self.data_dir.path().join("data"))
            .args(["--database-url", self.database.url()])
            // Short, so silence is noticed quickly, but not so short that a
            // scheduling stall of a loaded two-core machine (three missed
            // intervals) reads as a lost manager and flaps the status.
            .args(["--heartbeat-interval-secs", "2"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
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
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (
            Proc {
                child,
                name: "lapdev-server",
            },
            url,
        )
    }

    fn manager(&self, server: &str, token: &str) -> Proc {
        let child = Command::new(&self.manager_bin)
            .args(["--listen", "127.0.0.1:0"])
            .env("LAPDEV_SERVER_URL", server)
            .env("LAPDEV_KUBE_CLUSTER_TOKEN", token)
            .env("LAPDEV_WORKSPACE_NAMESPACE", NAMESPACE)
            .env("KUBECONFIG", &self.kubeconfig)
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

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("data/admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn lapdev(&self, server: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lapdev"))
            .args(args)
            .env("LAPDEV_SERVER", server)
            .env("LAPDEV_TOKEN", self.admin_token())
            .output()
            .unwrap()
    }

    fn json(&self, server: &str, args: &[&str]) -> Value {
        let out = self.lapdev(server, args);
        assert!(
            out.status.success(),
            "lapdev {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn pods(&self) -> Vec<Pod> {
        self.double.handle().list::<Pod>().unwrap()
    }

    fn pvcs(&self) -> Vec<PersistentVolumeClaim> {
        self.double
            .handle()
            .list::<PersistentVolumeClaim>()
            .unwrap()
    }
}

/// Polls `f` until it holds (bounded); the processes under test move on their own.
/// The bound is generous: on a loaded 2-core CI machine three of these tests run
/// real binaries side by side.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_from_create_to_delete_with_real_binaries() {
    let env = Env::new().await;
    let (_server, url) = env.server(0);

    let created = env.json(&url, &["cluster", "create", "e2e", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let _manager = env.manager(&url, &token);

    eventually("the cluster connected", || {
        env.json(&url, &["cluster", "get", "e2e", "-o", "json"])["status"] == "connected"
    })
    .await;
    let cluster = env.json(&url, &["cluster", "get", "e2e", "-o", "json"]);
    let version = reqwest_free_version(&env.double.url());
    assert_eq!(cluster["kubernetes_version"], version);
    assert_eq!(cluster["node_count"], 3);
    assert_eq!(cluster["cpu_allocatable_millis"], 12_000);

    let ws = env.json(
        &url,
        &[
            "workspace",
            "create",
            "w1",
            "--image",
            "ghcr.io/lapdev/ws:1",
            "--cpu",
            "500m",
            "--memory",
            "1Gi",
            "--storage",
            "5Gi",
            "-o",
            "json",
        ],
    );
    assert_eq!(ws["cluster"], "e2e");
    eventually("the pod and PVC exist", || {
        env.pods().len() == 1 && env.pvcs().len() == 1
    })
    .await;
    let pod = env.pods().remove(0);
    // The kubelet's part: the pod runs.
    env.double
        .handle()
        .set_pod_phase(NAMESPACE, &pod_name(&pod), "Running", vec![])
        .unwrap();
    eventually("running", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "running"
    })
    .await;

    env.json(&url, &["workspace", "stop", "w1", "-o", "json"]);
    eventually("the pod is being deleted", || {
        env.pods()
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    for p in env.pods() {
        env.double
            .handle()
            .terminate_pod(NAMESPACE, &pod_name(&p))
            .unwrap();
    }
    eventually("stopped", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "stopped"
    })
    .await;
    assert!(env.pods().is_empty(), "stop deletes the pod");
    assert_eq!(env.pvcs().len(), 1, "stop keeps the volume");

    env.json(&url, &["workspace", "start", "w1", "-o", "json"]);
    eventually("the pod is back", || env.pods().len() == 1).await;

    env.json(&url, &["workspace", "delete", "w1", "-o", "json"]);
    eventually("deleted", || {
        for p in env.pods() {
            if p.metadata.deletion_timestamp.is_some() {
                let _ = env.double.handle().terminate_pod(NAMESPACE, &pod_name(&p));
            }
        }
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "deleted"
    })
    .await;
    eventually("everything is gone", || {
        for p in env.pods() {
            let _ = env.double.handle().terminate_pod(NAMESPACE, &pod_name(&p));
        }
        env.pods().is_empty() && env.pvcs().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_create_still_ends_running() {
    let env = Env::new().await;
    let (mut server, url) = env.server(0);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let created = env.json(&url, &["cluster", "create", "e2e", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let _manager = env.manager(&url, &token);
    eventually("the cluster connected", || {
        env.json(&url, &["cluster", "get", "e2e", "-o", "json"])["status"] == "connected"
    })
    .await;

    // The Kubernetes API answers slowly, so the manager is still creating when
    // the server goes away.
    env.double.handle().set_latency(Duration::from_millis(300));
    env.json(
        &url,
        &[
            "workspace",
            "create",
            "w1",
            "--image",
            "ubuntu",
            "-o",
            "json",
        ],
    );
    server.kill();

    env.double.handle().set_latency(Duration::ZERO);
    let (_server, url) = env.server(port);
    eventually("the pod exists", || env.pods().len() == 1).await;
    let pod = env.pods().remove(0);
    env.double
        .handle()
        .set_pod_phase(NAMESPACE, &pod_name(&pod), "Running", vec![])
        .unwrap();
    eventually("running after the restart", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "running"
    })
    .await;
    assert_eq!(env.pods().len(), 1, "still exactly one pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_mid_create_converges_after_restart() {
    let env = Env::new().await;
    let (_server, url) = env.server(0);
    let created = env.json(&url, &["cluster", "create", "e2e", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let mut manager = env.manager(&url, &token);
    eventually("the cluster connected", || {
        env.json(&url, &["cluster", "get", "e2e", "-o", "json"])["status"] == "connected"
    })
    .await;

    env.double.handle().set_latency(Duration::from_millis(300));
    env.json(
        &url,
        &[
            "workspace",
            "create",
            "w1",
            "--image",
            "ubuntu",
            "-o",
            "json",
        ],
    );
    manager.kill();
    env.double.handle().set_latency(Duration::ZERO);
    let _manager = env.manager(&url, &token);
    eventually("the pod and PVC exist", || {
        env.pods().len() == 1 && env.pvcs().len() == 1
    })
    .await;
    let pod = env.pods().remove(0);
    env.double
        .handle()
        .set_pod_phase(NAMESPACE, &pod_name(&pod), "Running", vec![])
        .unwrap();
    eventually("running", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "running"
    })
    .await;
}

/// The double's `/version` gitVersion, read over plain HTTP.
fn reqwest_free_version(base: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /version HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    let v: Value = serde_json::from_str(&body[start..=end]).unwrap();
    v["gitVersion"].as_str().unwrap().to_owned()
}
