//! How much memory the manager needs and how fast it reports, idle and at scale.
//!
//! The Kubernetes API double runs in its own process (its dev binary), the
//! manager is the real binary (another process), and the server is the
//! recording stand-in of the tests (in this process). Two runs:
//!
//! - **idle**: 1 node, no pods;
//! - **scale**: 2,000 nodes, 20,000 pods that are not workspaces, and 1,000
//!   workspaces (1,000 pods and 1,000 claims, made with the manager's own
//!   object builders);
//! - **pods**: the same cluster with `capacity: pods` (the manager also
//!   watches every pod, trimmed, to count other workloads' requests);
//! - **churn**: the same, `capacity: pods`, while 50 pods a second are created
//!   (each bound to a node, 500m / 512 MiB, deleted 5 s later): how many
//!   capacity reports reach the server per second, which the coalescing bounds
//!   (at most one per `LAPDEV_CAPACITY_REPORT_SECS`, default 5 s).
//!
//! For each: the manager's peak RSS (`VmHWM` in `/proc/<pid>/status`) after it
//! reported and idled for a while, and the time from the tunnel opening (and
//! from process start) to the first full report (cluster info with every node
//! and the snapshot with every workspace). Floors: idle ≤ 30 MiB, scale ≤
//! 150 MiB, pods ≤ 80 MiB, first report ≤ 2 s; the run fails if one is missed.
//!
//! ```sh
//! cargo build --release -p lapdev-kube-manager -p lapdev-kube-double --bins
//! LAPDEV_BENCH_BIN_DIR=target/release cargo bench --profile dev -p lapdev-kube-manager --bench manager_scale
//! # one run: ... --bench manager_scale -- pods   (or idle, scale, churn)
//! ```
//!
//! `LAPDEV_BENCH_BIN_DIR` names where both binaries are, relative to the
//! workspace root or absolute (default: next to this bench's own executable, i.e.
//! the profile it was built with). The bench driver itself may be a debug build:
//! what is measured are the two release binaries.

#[path = "../tests/common/fake_server.rs"]
mod fake_server;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_server::{FakeServer, TOKEN};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use lapdev_common::kube::WorkspaceSpec;
use lapdev_kube_manager::workspace::{
    FIELD_MANAGER, WorkspaceSettings, home_pvc, pod_name, pvc_name, workspace_pod,
};
use uuid::Uuid;

const NAMESPACE: &str = "lapdev-workspaces";
const IDLE_FLOOR_MIB: f64 = 30.0;
const SCALE_FLOOR_MIB: f64 = 150.0;
const PODS_FLOOR_MIB: f64 = 80.0;
/// Pods created per second in the churn run (each deleted 5 s later).
const CHURN_PER_SEC: u64 = 50;
const CHURN_LIFETIME: Duration = Duration::from_secs(5);
const CHURN_SECS: u64 = 30;
const FIRST_REPORT_FLOOR: Duration = Duration::from_secs(2);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAPDEV_BENCH_BIN_DIR") {
        // Relative to the workspace root (cargo runs benches in the package's directory).
        return Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    }
    // target/<profile>/deps/manager_scale-… → target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn start_double(dir: &Path, nodes: usize, pods: usize) -> (Killed, PathBuf) {
    let port = free_port();
    let kubeconfig = dir.join(format!("double-{port}.kubeconfig"));
    let exe = bin_dir().join("lapdev-kube-double");
    assert!(
        exe.exists(),
        "{} is missing: cargo build --release -p lapdev-kube-double (and set LAPDEV_BENCH_BIN_DIR)",
        exe.display()
    );
    let child = Command::new(exe)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kubeconfig-out",
            kubeconfig.to_str().unwrap(),
            "--nodes",
            &nodes.to_string(),
            "--pods",
            &pods.to_string(),
            "--kubelet-delay-ms",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the double");
    let child = Killed(child);
    // Ready once it wrote the kubeconfig (after seeding) and answers.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if kubeconfig.exists()
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the double did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, kubeconfig)
}

async fn client(kubeconfig: &Path) -> Client {
    let yaml = std::fs::read_to_string(kubeconfig).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn seed_workspaces(client: &Client, count: usize) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).unwrap();
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let settings = WorkspaceSettings {
        namespace: NAMESPACE.into(),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    futures::stream::iter(0..count)
        .map(|i| {
            let spec = WorkspaceSpec {
                workspace_id: Uuid::new_v4(),
                name: format!("bench-{i}"),
                image: "ghcr.io/lapdev/workspace:latest".into(),
                cpu_millis: 500,
                memory_bytes: 1 << 30,
                storage_bytes: 5 << 30,
                env: Default::default(),
                scheduling: Default::default(),
            };
            let (pods, pvcs, params, settings) =
                (pods.clone(), pvcs.clone(), params.clone(), settings.clone());
            async move {
                let id = spec.workspace_id;
                pvcs.patch(
                    &pvc_name(id),
                    &params,
                    &Patch::Apply(&home_pvc(&spec, &settings)),
                )
                .await
                .unwrap();
                pods.patch(
                    &pod_name(id),
                    &params,
                    &Patch::Apply(&workspace_pod(&spec, &settings)),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

struct Outcome {
    peak_rss_kib: u64,
    rss_kib: u64,
    tunnel_to_report: Duration,
    start_to_report: Duration,
}

/// Whether a report counts other workloads' pods (`capacity: pods` has seen
/// the cluster's pods).
fn counts_other_pods(info: &lapdev_common::kube::KubeClusterInfo) -> bool {
    info.nodes
        .as_ref()
        .is_some_and(|n| n.iter().any(|n| n.cpu_other_millis > 0))
}

async fn measure(
    kubeconfig: &Path,
    nodes: u32,
    workspaces: usize,
    env: &[(&str, &str)],
    churn: Option<&Client>,
) -> Outcome {
    let pods_mode = env.contains(&("LAPDEV_CAPACITY", "pods"));
    let server = FakeServer::start_with("127.0.0.1:0".parse().unwrap(), 10).await;
    let exe = bin_dir().join("lapdev-kube-manager");
    let started = Instant::now();
    let child = Command::new(&exe)
        .env_clear()
        .envs(env.iter().copied())
        .env("KUBECONFIG", kubeconfig)
        .env("LAPDEV_SERVER_URL", server.url())
        .env("LAPDEV_KUBE_CLUSTER_TOKEN", TOKEN)
        .env("LAPDEV_WORKSPACE_NAMESPACE", NAMESPACE)
        .env("LAPDEV_MANAGER_NAMESPACE", "lapdev")
        .env("RUST_LOG", "warn")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", exe.display()));
    let pid = child.id();
    let _child = Killed(child);
    let r = server
        .wait_for("the first full report", Duration::from_secs(60), |r| {
            r.infos
                .iter()
                .any(|i| i.node_count == nodes && (!pods_mode || counts_other_pods(i)))
                && r.snapshots.iter().map(Vec::len).sum::<usize>() >= workspaces
                && !r.snapshots.is_empty()
        })
        .await;
    let tunnel_at = r.first_tunnel_at.unwrap();
    let done_at = r.first_snapshot_at.unwrap().max(r.first_info_at.unwrap());
    // Let it settle (watch bookmarks, heartbeats, probes) before reading the peak.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Some(c) = churn {
        let (reports, secs) = churn_pods(&server, c).await;
        println!(
            "churn: {CHURN_PER_SEC} pods/s created and deleted {} s later for {CHURN_SECS} s: \
             {reports} capacity reports in the last {secs:.0} s = {:.2} reports/s \
             (coalescing bound: 1 per {} s = {:.2}/s)",
            CHURN_LIFETIME.as_secs(),
            reports as f64 / secs,
            report_secs(env),
            1.0 / report_secs(env),
        );
    }
    let out = Outcome {
        peak_rss_kib: status_kib(pid, "VmHWM:"),
        rss_kib: status_kib(pid, "VmRSS:"),
        tunnel_to_report: done_at.saturating_duration_since(tunnel_at),
        start_to_report: done_at.saturating_duration_since(started),
    };
    server.stop().await;
    out
}

fn report_secs(env: &[(&str, &str)]) -> f64 {
    env.iter()
        .find(|(k, _)| *k == "LAPDEV_CAPACITY_REPORT_SECS")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(5.0)
}

/// Creates [`CHURN_PER_SEC`] pods a second for [`CHURN_SECS`] (each bound to
/// a node and deleted [`CHURN_LIFETIME`] later) and counts the cluster-info
/// reports the server receives once the churn is steady (after the first
/// lifetime). Returns (reports, seconds counted).
async fn churn_pods(server: &FakeServer, client: &Client) -> (usize, f64) {
    use kube::api::DeleteParams;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "churn"}})).unwrap();
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "churn");
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / CHURN_PER_SEC));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lifetime_ticks = CHURN_LIFETIME.as_secs() * CHURN_PER_SEC;
    let started = Instant::now();
    let mut counted_from: Option<(Instant, usize)> = None;
    let mut calls = Vec::new();
    for n in 0..CHURN_SECS * CHURN_PER_SEC {
        tick.tick().await;
        if n == lifetime_ticks {
            counted_from = Some((Instant::now(), server.recorded().infos.len()));
        }
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("churn-{n}")},
            "spec": {"nodeName": format!("double-node-{}", n % 2_000), "containers": [{
                "name": "main", "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]},
        }))
        .unwrap();
        let pods = pods.clone();
        calls.push(tokio::spawn(async move {
            pods.create(&PostParams::default(), &pod).await.unwrap();
            if n >= lifetime_ticks {
                let old = format!("churn-{}", n - lifetime_ticks);
                let _ = pods
                    .delete(&old, &DeleteParams::default().grace_period(0))
                    .await;
            }
        }));
    }
    for c in calls {
        let _ = c.await;
    }
    let (from, before) = counted_from.unwrap_or((started, 0));
    let reports = server.recorded().infos.len() - before;
    (reports, from.elapsed().as_secs_f64())
}

fn report(name: &str, o: &Outcome, floor_mib: f64) -> bool {
    let ok = mib(o.peak_rss_kib) <= floor_mib && o.tunnel_to_report <= FIRST_REPORT_FLOOR;
    println!(
        "{name:>5}: peak RSS (VmHWM) {:6.1} MiB (floor {floor_mib} MiB), RSS now {:6.1} MiB, \
         tunnel open → first full report {:7.1} ms, process start → first full report {:7.1} ms (floor {} ms) {}",
        mib(o.peak_rss_kib),
        mib(o.rss_kib),
        o.tunnel_to_report.as_secs_f64() * 1000.0,
        o.start_to_report.as_secs_f64() * 1000.0,
        FIRST_REPORT_FLOOR.as_millis(),
        if ok { "ok" } else { "MISSED" }
    );
    ok
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `cargo bench` passes `--bench`; a filter argument selects a run.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let dir = tempfile::tempdir().unwrap();
    let mut ok = true;

    if wanted("idle") {
        let (_double, kubeconfig) = start_double(dir.path(), 1, 0).await;
        let o = measure(&kubeconfig, 1, 0, &[], None).await;
        ok &= report("idle", &o, IDLE_FLOOR_MIB);
    }

    if wanted("scale") || wanted("pods") || wanted("churn") {
        let seeding = Instant::now();
        let (_double, kubeconfig) = start_double(dir.path(), 2_000, 20_000).await;
        let c = client(&kubeconfig).await;
        seed_workspaces(&c, 1_000).await;
        println!(
            "scale: seeded 2,000 nodes, 20,000 other pods, 1,000 workspaces in {:.1} s",
            seeding.elapsed().as_secs_f64()
        );
        if wanted("scale") {
            let o = measure(&kubeconfig, 2_000, 1_000, &[], None).await;
            ok &= report("scale", &o, SCALE_FLOOR_MIB);
        }
        if wanted("pods") {
            let pods = [("LAPDEV_CAPACITY", "pods")];
            let o = measure(&kubeconfig, 2_000, 1_000, &pods, None).await;
            ok &= report("pods", &o, PODS_FLOOR_MIB);
        }
        if wanted("churn") {
            let pods = [("LAPDEV_CAPACITY", "pods")];
            let o = measure(&kubeconfig, 2_000, 1_000, &pods, Some(&c)).await;
            ok &= report("churn", &o, PODS_FLOOR_MIB);
        }
    }
    assert!(ok, "a floor was missed");
}
