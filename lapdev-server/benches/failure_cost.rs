//! Benchmark: the cost of failure. `N` workspaces whose pods keep failing for `D`
//! seconds, with the real server (in process, on a throwaway PostgreSQL
//! database), the Kubernetes API double (with its stand-in kubelet) and the real
//! `lapdev-kube-manager` binary. It measures Kubernetes API requests per second
//! (the double's counters, all verbs and by verb), pod creates per second (one
//! per manager `start_workspace` that makes a pod), and database writes per
//! second (`pg_stat_user_tables`, the `kube_workspace` table and all tables), and
//! prints them beside the bound the design implies.
//!
//! Run with `cargo bench -p lapdev-server --bench failure_cost` (or with
//! `--profile dev` to skip the release build; the counts do not depend on it).
//! Tunables (environment): `LAPDEV_BENCH_WORKSPACES` (1000),
//! `LAPDEV_BENCH_SECONDS` (600, the failing window), `LAPDEV_BENCH_SETTLE_SECS`
//! (600, the longest wait for the workspaces to run first). The manager reads
//! `LAPDEV_KUBE_QPS`/`LAPDEV_KUBE_BURST` from the environment (20 and 40).
//!
//! What it does: creates the workspaces (10m CPU, 16Mi memory, 1Gi volume each)
//! on one cluster of 20 nodes (64 CPU, 256Gi), waits until most run (95 %, or
//! the settle time), then for `D` seconds evicts (as a kubelet under memory
//! pressure does) every workspace pod as soon as the double shows it `Running`,
//! looking every 200 ms. Counters are taken at the start and the end of that
//! window.
//!
//! The bound, with `q` the manager's QPS, `b` its burst, `W` the window, `N`
//! the workspaces, `i`/`m` the conductor's first/longest repair delay (10 s /
//! 600 s, plus 0–25 % jitter, see `lapdev-conductor/src/backoff.rs`):
//! - Kubernetes API requests/s ≤ `q + b / W` (the manager's token bucket; every
//!   request, watches included, takes a token): 20.1/s for 600 s, whatever fails.
//! - Repairs: a workspace whose pod keeps ending before it runs is repaired at
//!   most `R(W)` times in `W`, `R(W) = max n with Σ_{k=1..n} min(i·2^(k-1), m) ≤ W`
//!   (5 in 600 s), so `N·R(W)/W` repairs/s (8.3/s). A pod that reaches `Running`
//!   resets the attempt count (running is success), so a pod that fails *after*
//!   running is repaired up to every `i`: `N/i` repairs/s (100/s). Each repair
//!   costs about 4 requests (read the claim, read the pod, delete it, create
//!   the new one), so the rate limit is what caps that case: pod creates/s ≤
//!   `q / 4`.
//! - Database writes: at most about 5 `kube_workspace` writes per repair (the
//!   `failed` report, the announcement, the request, the manager's answer, the
//!   `running` report), so ≤ 5 × pod creates/s. That counts completed repairs
//!   only: when the rate limiter's queue is longer than the conductor's call
//!   deadline, calls that time out cost reads and writes without a new pod, so
//!   the output also shows requests and writes per pod create.
//!
//! Before issue 11 it was about 3 requests per workspace every 5 s (the
//! reconciler without backoff): 600 requests/s for 1,000 workspaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_db::test_support::TestDatabase;
use lapdev_hrpc::Client;
use lapdev_kube::manifest::{ManifestParams, manager_manifest};
use lapdev_kube_double::{DoubleHandle, KubeDouble, KubeletConfig, NodeSpec, Verb};
use lapdev_server::Server;
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::admin::workspaces::{NewWorkspaceRequest, WorkspaceRpcClient};
use lapdev_server::config::{LogFormat, ServerConfig};

const NAMESPACE: &str = "lapdev-workspaces";
const NODES: usize = 20;
const VERBS: [Verb; 8] = [
    Verb::Get,
    Verb::List,
    Verb::Watch,
    Verb::Create,
    Verb::Update,
    Verb::Patch,
    Verb::Delete,
    Verb::DeleteCollection,
];
/// The conductor's repair delays (`ConductorConfig::default`).
const INITIAL_BACKOFF_SECS: f64 = 10.0;
const MAX_BACKOFF_SECS: f64 = 600.0;
/// Kubernetes requests of one repair: read the claim, read the pod, delete it,
/// create the new one.
const REQUESTS_PER_REPAIR: f64 = 4.0;
/// `kube_workspace` writes of one repair cycle.
const WRITES_PER_REPAIR: f64 = 5.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds (if needed) a workspace binary with the cargo running this bench.
fn binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the bench runs from a target dir")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", package, "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    dir.join(name)
}

/// The manager process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_config(data_dir: PathBuf, database_url: String) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir,
        database_url: Some(database_url),
        public_url: None,
        public_ca_file: None,
        log_format: LogFormat::Text,
        tls_cert: None,
        tls_key: None,
        jwt_secret: None,
        jwt_secret_file: None,
        encryption_key: None,
        manager_image: "ghcr.io/lapdev/lapdev-kube-manager:bench".into(),
        heartbeat_interval_secs: 10,
        admin_token_days: 1,
        max_token_days: 365,
        trusted_proxies: Vec::new(),
    }
}

fn rpc_client(base: &str, token: &str) -> Client {
    Client::http(&format!("{base}/rpc"))
        .expect("a client")
        .with_timeout(Duration::from_secs(60))
        .with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header"),
        )
}

/// The double with the manager's namespaces, ServiceAccount and RBAC, and room
/// for every workspace pod.
fn prepare_double(double: &KubeDouble) -> PathBuf {
    let h = double.handle();
    let manifest = manager_manifest(&ManifestParams::new(
        "http://127.0.0.1:1",
        "lapdev_ct_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde",
        "bench",
    ))
    .expect("a manifest");
    h.create(&manifest.manager_namespace).expect("namespace");
    h.create(&manifest.workspace_namespace).expect("namespace");
    h.create(&manifest.service_account).expect("sa");
    h.create(&manifest.cluster_role).expect("clusterrole");
    h.create(&manifest.cluster_role_binding).expect("binding");
    h.create(&manifest.role).expect("role");
    h.create(&manifest.role_binding).expect("binding");
    h.enable_rbac();
    for i in 0..NODES {
        h.add_node(
            &format!("node-{i}"),
            NodeSpec {
                cpu: "64".into(),
                memory: "256Gi".into(),
                ..NodeSpec::default()
            },
        )
        .expect("a node");
    }
    double
        .service_account_kubeconfig("lapdev", "lapdev-kube-manager")
        .expect("a kubeconfig")
}

fn counts(h: &DoubleHandle) -> Vec<u64> {
    VERBS.iter().map(|v| h.request_count(*v)).collect()
}

/// `(kube_workspace inserts+updates, all tables' inserts+updates+deletes)`.
fn pg_writes(url: &str) -> (i64, i64) {
    let sql = "SELECT pg_stat_clear_snapshot(); \
        SELECT coalesce(sum(n_tup_ins + n_tup_upd) FILTER (WHERE relname = 'kube_workspace'), 0) \
        || ' ' || coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables";
    let out = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .expect("psql runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let mut it = line.split_whitespace().map(|s| s.parse().unwrap_or(-1));
    (it.next().unwrap_or(-1), it.next().unwrap_or(-1))
}

fn is_running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Repairs a workspace gets in `w` seconds when every attempt fails before
/// running: `max n with Σ_{k=1..n} min(i·2^(k-1), m) ≤ w`.
fn repairs_in(w: f64) -> u32 {
    let (mut n, mut total, mut delay) = (0, 0.0, INITIAL_BACKOFF_SECS);
    loop {
        total += delay;
        if total > w {
            return n;
        }
        n += 1;
        delay = (delay * 2.0).min(MAX_BACKOFF_SECS);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = env_or("LAPDEV_BENCH_WORKSPACES", 1000usize).max(1);
    let window = Duration::from_secs(env_or("LAPDEV_BENCH_SECONDS", 600u64).max(1));
    let settle = Duration::from_secs(env_or("LAPDEV_BENCH_SETTLE_SECS", 600u64));
    let qps: f64 = env_or("LAPDEV_KUBE_QPS", 20.0);
    let burst: f64 = env_or("LAPDEV_KUBE_BURST", 40.0);

    let manager_bin = binary("lapdev-kube-manager", "lapdev-kube-manager");
    let database = TestDatabase::postgres().await;
    let db_url = database.url().to_owned();
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let server = Server::start(server_config(data_dir.path().join("data"), db_url.clone()))
        .await
        .expect("the server starts");
    let base = format!("http://{}", server.local_addr);
    let admin_token = server.first_admin_token.clone().expect("an admin token");
    let admin = AdminRpcClient::new(rpc_client(&base, &admin_token));
    let workspaces = WorkspaceRpcClient::new(rpc_client(&base, &admin_token));

    let double = KubeDouble::start().await.expect("the double starts");
    let kubeconfig = prepare_double(&double);
    let h = double.handle();
    let kubelet = h.run_kubelet(KubeletConfig::default());

    let created = admin
        .create_cluster("bench".into(), None, None, None)
        .await
        .expect("a cluster");
    let manager = Proc(
        Command::new(&manager_bin)
            .args(["--listen", "127.0.0.1:0"])
            .env("LAPDEV_SERVER_URL", &base)
            .env("LAPDEV_KUBE_CLUSTER_TOKEN", &created.token_secret)
            .env("LAPDEV_WORKSPACE_NAMESPACE", NAMESPACE)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the manager starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = admin
            .get_cluster("bench".into())
            .await
            .expect("the cluster");
        if c.status == ClusterStatus::Connected && c.node_count == Some(NODES as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "the manager never connected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let started = Instant::now();
    for i in 0..n {
        workspaces
            .create_workspace(NewWorkspaceRequest {
                name: format!("w{i:04}"),
                image: "ubuntu".into(),
                cpu_millis: 10,
                memory_bytes: 16 << 20,
                storage_bytes: 1 << 30,
                cluster: Some("bench".into()),
                region: None,
            })
            .await
            .expect("a workspace");
    }
    eprintln!("created {n} workspaces in {:.0?}", started.elapsed());
    let settle_deadline = Instant::now() + settle;
    let running = loop {
        let list = workspaces
            .list_workspaces(false)
            .await
            .expect("the workspaces");
        let running = list
            .iter()
            .filter(|w| w.status == WorkspaceStatus::Running)
            .count();
        if running * 100 >= n * 95 || Instant::now() >= settle_deadline {
            break running;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    eprintln!(
        "{running}/{n} running after {:.0?}; failing every pod for {window:?}",
        started.elapsed()
    );

    // The window.
    h.reset_request_counts();
    let writes_before = pg_writes(&db_url);
    let creates_before = h.request_count_for(Verb::Create, "pods");
    let t0 = Instant::now();
    let mut evictions = 0u64;
    let mut per_pod: HashMap<String, u64> = HashMap::new();
    while t0.elapsed() < window {
        for pod in h.list::<Pod>().unwrap_or_default() {
            if !is_running(&pod) {
                continue;
            }
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            if h.kubelet_evict(
                NAMESPACE,
                &name,
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 20Mi.",
            )
            .is_ok()
            {
                evictions += 1;
                *per_pod.entry(name).or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = counts(&h);
    let pod_creates = h.request_count_for(Verb::Create, "pods") - creates_before;
    let writes_after = pg_writes(&db_url);
    let final_list = workspaces.list_workspaces(false).await.unwrap_or_default();
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for w in &final_list {
        *by_status.entry(w.status.to_string()).or_default() += 1;
    }

    let total: u64 = after.iter().sum();
    let ws_writes = (writes_after.0 - writes_before.0) as f64;
    let all_writes = (writes_after.1 - writes_before.1) as f64;
    let r = repairs_in(secs);
    let max_per_pod = per_pod.values().max().copied().unwrap_or(0);
    println!("failure_cost: {n} workspaces, {running} running at the start, {secs:.0} s window");
    println!(
        "  evictions: {evictions} ({:.2}/s), most of one workspace: {max_per_pod}",
        evictions as f64 / secs
    );
    println!(
        "  kubernetes API requests: {total} ({:.2}/s, {:.4}/s per workspace)",
        total as f64 / secs,
        total as f64 / secs / n as f64
    );
    for (v, c) in VERBS.iter().zip(&after) {
        if *c > 0 {
            println!("    {:<16} {c:>8} ({:.2}/s)", v.as_str(), *c as f64 / secs);
        }
    }
    println!(
        "  pod creates (manager start_workspace making a pod): {pod_creates} ({:.2}/s)",
        pod_creates as f64 / secs
    );
    println!(
        "  database writes: kube_workspace {ws_writes:.0} ({:.2}/s), all tables {all_writes:.0} ({:.2}/s)",
        ws_writes / secs,
        all_writes / secs
    );
    let per_create = pod_creates.max(1) as f64;
    println!(
        "  per pod create: {:.1} kubernetes requests, {:.1} kube_workspace writes",
        total as f64 / per_create,
        ws_writes / per_create
    );
    let mut statuses: Vec<_> = by_status.into_iter().collect();
    statuses.sort();
    println!("  statuses at the end: {statuses:?}");
    println!(
        "bound (q={qps}, b={burst}, i={INITIAL_BACKOFF_SECS} s, m={MAX_BACKOFF_SECS} s, W={secs:.0} s, N={n}):"
    );
    println!(
        "  kubernetes requests/s <= q + b/W = {:.2}",
        qps + burst / secs
    );
    println!(
        "  repairs/s if pods fail before running: N*R(W)/W = {n}*{r}/{secs:.0} = {:.2}",
        n as f64 * r as f64 / secs
    );
    println!(
        "  repairs/s if pods fail after running (attempts reset): N/i = {:.2}, capped by the rate limit at q/{REQUESTS_PER_REPAIR} = {:.2} pod creates/s",
        n as f64 / INITIAL_BACKOFF_SECS,
        qps / REQUESTS_PER_REPAIR
    );
    println!(
        "  kube_workspace writes/s <= {WRITES_PER_REPAIR} x pod creates/s = {:.2} (measured pod creates), <= {:.2} (rate-limit ceiling)",
        WRITES_PER_REPAIR * pod_creates as f64 / secs,
        WRITES_PER_REPAIR * qps / REQUESTS_PER_REPAIR
    );
    println!(
        "  before issue 11: ~3 requests per workspace every 5 s = {:.0}/s",
        3.0 * n as f64 / 5.0
    );

    drop(manager);
    kubelet.abort();
    server.shutdown();
    let _ = server.wait().await;
    drop(double);
    drop(database);
}
