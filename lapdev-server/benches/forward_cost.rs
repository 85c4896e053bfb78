//! Benchmark: what forwarding a manager call to the replica holding the
//! cluster's tunnel adds (issue 18, routing). Two replicas (in process, on one
//! throwaway PostgreSQL database, the same encryption key and JWT secret); a
//! simulated manager holds its tunnel on replica A and answers
//! `KubeManagerRpc/list_workspaces` with an empty list at once. The same call
//! is made through each replica's conductor connector
//! (`lapdev_server::routing::RoutedConnector`, what the conductor and the
//! workspace commands use): on A it takes the local tunnel, on B it is
//! forwarded over A's internal endpoint (signed, HTTP/2) and then the tunnel.
//! Calls alternate between A and B, one at a time, so both see the same
//! machine.
//!
//! Run with `cargo bench -p lapdev-server --profile dev --bench forward_cost`
//! (the dev profile skips the very slow release build; rerun in release on a
//! quiet machine for the closing figures). Needs the PostgreSQL of
//! `LAPDEV_TEST_DATABASE_URL`.
//!
//! Tunables (environment): `LAPDEV_BENCH_CALLS` (1000 on each replica, after
//! 50 of warm-up each).
//!
//! Prints p50/p90/p99/max of the local and the forwarded call and the added
//! latency (forwarded minus local, per percentile). No floor: the issue asks
//! for the figure; the bench fails only if a call fails.

use std::time::{Duration, Instant};

use axum::Json;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use lapdev_common::headers::KUBE_CLUSTER_TOKEN_HEADER;
use lapdev_conductor::ManagerConnector as _;
use lapdev_db::test_support::TestDatabase;
use lapdev_hrpc::tunnel::{self, TunnelClientConfig};
use lapdev_kube_rpc::WorkspaceObservation;
use lapdev_server::Server;
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::config::{LogFormat, ServerConfig};
use lapdev_server::routing::RoutedConnector;
use uuid::Uuid;

const SHARED_ENCRYPTION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const SHARED_JWT_SECRET: &str = "a shared jwt secret of enough length for the bench";
const WARMUP: usize = 50;

fn config(data_dir: std::path::PathBuf, url: &str) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        database_url: Some(url.to_owned()),
        public_url: Some("https://lapdev.example.com".into()),
        public_ca_file: None,
        log_format: LogFormat::Text,
        tls_cert: None,
        tls_key: None,
        jwt_secret: Some(SHARED_JWT_SECRET.into()),
        jwt_secret_file: None,
        encryption_key: Some(SHARED_ENCRYPTION_KEY.into()),
        manager_image: "ghcr.io/lapdev/lapdev-kube-manager:bench".into(),
        heartbeat_interval_secs: 10,
        admin_token_days: 1,
        max_token_days: 365,
        trusted_proxies: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// One call through `connector`; its latency.
async fn call(connector: &RoutedConnector, cluster: Uuid) -> Result<Duration, String> {
    let started = Instant::now();
    let client = connector
        .manager(cluster)
        .ok_or_else(|| "no route to the manager".to_owned())?;
    client
        .list_workspaces()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(started.elapsed())
}

async fn run() -> Result<(), String> {
    let calls: usize = std::env::var("LAPDEV_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000usize)
        .max(1);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before the run: {}; build: {}",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        if cfg!(debug_assertions) {
            "dev profile (unoptimised)"
        } else {
            "optimised"
        }
    );
    let database = TestDatabase::postgres().await;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let a = Server::start(config(dir.path().join("a"), database.url()))
        .await
        .map_err(|e| format!("replica A: {e:#}"))?;
    let b = Server::start(config(dir.path().join("b"), database.url()))
        .await
        .map_err(|e| format!("replica B: {e:#}"))?;
    let token = match &a.first_admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(dir.path().join("a").join("admin-token"))
            .map_err(|e| format!("admin token: {e}"))?
            .trim()
            .to_owned(),
    };
    let admin = AdminRpcClient::new(
        lapdev_hrpc::Client::http(&format!("http://{}/rpc", a.local_addr))
            .map_err(|e| e.to_string())?,
    )
    .with_header(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?,
    );
    let created = admin
        .create_cluster("bench-forward".into(), None, None, None)
        .await
        .map_err(|e| format!("create_cluster: {e}"))?;
    let cluster = created.cluster.id;

    // The simulated manager, tunnel on A.
    let router = axum::Router::new().route(
        "/KubeManagerRpc/list_workspaces",
        axum::routing::post(|| async { Json(Vec::<WorkspaceObservation>::new()) }),
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static(KUBE_CLUSTER_TOKEN_HEADER),
        HeaderValue::from_str(&created.token_secret).map_err(|e| e.to_string())?,
    );
    let session = tunnel::connect(
        &format!("http://{}/rpc/_tunnel", a.local_addr),
        headers,
        router,
        TunnelClientConfig::default(),
    )
    .await
    .map_err(|e| format!("tunnel: {e}"))?;
    let handle = session.handle();
    tokio::spawn(session.run());

    let local = RoutedConnector(a.state.routing.clone().ok_or("A has no routing")?);
    let remote = RoutedConnector(b.state.routing.clone().ok_or("B has no routing")?);
    // Until both routes answer (B learns the owner from the database).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = call(&local, cluster).await.is_ok() && call(&remote, cluster).await.is_ok();
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the calls did not get through within 60 s: local {:?}, forwarded {:?}",
                call(&local, cluster).await,
                call(&remote, cluster).await
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut on_owner = Vec::with_capacity(calls);
    let mut forwarded = Vec::with_capacity(calls);
    for i in 0..WARMUP + calls {
        let l = call(&local, cluster)
            .await
            .map_err(|e| format!("local: {e}"))?;
        let f = call(&remote, cluster)
            .await
            .map_err(|e| format!("forwarded: {e}"))?;
        if i >= WARMUP {
            on_owner.push(l);
            forwarded.push(f);
        }
    }
    on_owner.sort_unstable();
    forwarded.sort_unstable();
    println!(
        "KubeManagerRpc/list_workspaces, {calls} calls on each replica, one at a time, \
         alternating (2 replicas in process on one PostgreSQL database):"
    );
    let qs = [0.50, 0.90, 0.99, 1.0];
    let row = |what: &str, v: &[Duration]| {
        let p = qs.map(|q| percentile(v, q));
        println!(
            "  {what}: p50 {}  p90 {}  p99 {}  max {}",
            ms(p[0]),
            ms(p[1]),
            ms(p[2]),
            ms(p[3])
        );
    };
    row("on the owner (local tunnel)        ", &on_owner);
    row("on the other replica (forwarded)   ", &forwarded);
    let added =
        |q: f64| percentile(&forwarded, q).as_secs_f64() - percentile(&on_owner, q).as_secs_f64();
    println!(
        "  added by forwarding: p50 {:+.3} ms  p99 {:+.3} ms",
        added(0.50) * 1000.0,
        added(0.99) * 1000.0
    );
    handle.close("bench over");
    for s in [b, a] {
        s.shutdown();
        let _ = s.wait().await;
    }
    drop(database);
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(run());
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = result {
        println!("FAILED: {e}");
        std::process::exit(1);
    }
}
