//! Benchmark: the dashboard under load (issue 16).
//!
//! Run with `cargo bench -p lapdev-server --bench dashboard_load` (a fresh
//! PostgreSQL database on `LAPDEV_TEST_DATABASE_URL`'s server, default
//! 127.0.0.1:5432; the server in process, real TCP on loopback).
//!
//! 1. The workspaces page with 1,000 workspaces in the organisation (an
//!    admin's view, so all of them are the viewer's to list): the time from
//!    request to the last byte of the gzip-compressed page, p50 and p99 over
//!    `LAPDEV_BENCH_PAGES` (300) loads of the first and a middle page, and the
//!    page's bytes compressed and not. Floors: p99 <= 30 ms, compressed
//!    <= 150 KB.
//! 2. `LAPDEV_BENCH_STREAMS` (500) open event streams: the process's RSS
//!    growth from opening them (server and the bench's own client side of
//!    each connection: an upper bound of the server's), and the delay from a
//!    change (an admin cordons or uncordons a cluster) to its event on every
//!    stream, over `LAPDEV_BENCH_ROUNDS` (20) changes. Floor: p99 <= 200 ms.
//! 3. First load of the workspaces page: every request a browser makes (the
//!    page, what it links, the shared worker and its event stream) and their
//!    compressed bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapdev_common::role::Role;
use lapdev_db::test_support::{SeedWorkspace, TestDatabase, seed_placed_workspaces};
use lapdev_server::Server;
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::auth::api::PeopleRpcClient;
use lapdev_server::config::{LimitsConfig, LogFormat, ServerConfig};
use tokio::sync::{Mutex, Notify};

const ORIGIN: &str = "https://lapdev.example.com";
const WORKSPACES: usize = 1000;
const P99_PAGE_MS: f64 = 30.0;
const PAGE_BYTES: usize = 150 * 1000;
const P99_EVENT_MS: f64 = 200.0;

type Http = HyperClient<HttpConnector, Full<Bytes>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(data_dir: std::path::PathBuf, url: String) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir,
        database_url: Some(url),
        public_url: Some(ORIGIN.into()),
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

fn get(url: &str, cookie: &str, gzip: bool) -> Request<Full<Bytes>> {
    let mut r = Request::get(url).header("cookie", cookie);
    if gzip {
        r = r.header("accept-encoding", "gzip");
    }
    r.body(Full::default()).expect("a request")
}

/// Status and body bytes (as sent: compressed when gzip was asked for).
async fn fetch(http: &Http, url: &str, cookie: &str, gzip: bool) -> (StatusCode, Bytes) {
    let r = http
        .request(get(url, cookie, gzip))
        .await
        .expect("an answer");
    let status = r.status();
    (
        status,
        r.into_body().collect().await.expect("a body").to_bytes(),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn asset_urls(html: &str) -> Vec<String> {
    html.split("\"/assets/")
        .skip(1)
        .map(|rest| format!("/assets/{}", rest.split('"').next().unwrap_or_default()))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database = TestDatabase::empty_postgres().await;
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(
        config(dir.path().join("data"), database.url().to_owned()),
        LimitsConfig::default(),
    )
    .await?;
    let base = format!("http://{}", server.local_addr);
    let token = server
        .first_admin_token
        .clone()
        .expect("a first admin token");
    let rpc = lapdev_hrpc::Client::http(&format!("{base}/rpc"))?.with_header(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    PeopleRpcClient::new(rpc.clone())
        .create_user(
            "ada".into(),
            None,
            Role::Admin,
            Some("a long enough password".into()),
        )
        .await?;
    let http: Http = HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let sign_in = Request::post(format!("{base}/auth/session"))
        .header("content-type", "application/json")
        .header("x-lapdev-csrf", "1")
        .header("origin", ORIGIN)
        .body(Full::new(Bytes::from_static(
            br#"{"user":"ada","password":"a long enough password"}"#,
        )))?;
    let r = http.request(sign_in).await?;
    let cookie = r
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .find(|kv| kv.starts_with("__Host-lapdev_session"))
        .expect("a session cookie")
        .to_owned();

    // 1. The workspaces page with 1,000 workspaces.
    let db = &server.state.db;
    let org = db.list_organizations().await?[0].id;
    let owner = db.get_user_by_name(org, "ada").await?.id;
    let admin = AdminRpcClient::new(rpc.clone());
    let cluster = admin
        .create_cluster("bench".into(), None, None, None)
        .await?
        .cluster;
    let seed = vec![
        SeedWorkspace {
            cluster_id: cluster.id,
            cpu_millis: 500,
            memory_bytes: 1 << 30,
        };
        WORKSPACES
    ];
    seed_placed_workspaces(db, org, owner, &seed).await?;
    let (_, first) = fetch(&http, &format!("{base}/"), &cookie, false).await;
    let first = String::from_utf8_lossy(&first).into_owned();
    let middle = first
        .split("id=\"page-next\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a next page")
        .to_owned();
    println!(
        "workspaces page, {WORKSPACES} workspaces in the organisation ({} a page):",
        lapdev_server::admin::workspaces::PAGE_SIZE
    );
    let loads = env_usize("LAPDEV_BENCH_PAGES", 300);
    let mut worst_p99: f64 = 0.0;
    let mut worst_bytes = 0;
    for (label, path) in [("first page", "/".to_owned()), ("second page", middle)] {
        let url = format!("{base}{path}");
        let (status, plain) = fetch(&http, &url, &cookie, false).await;
        assert_eq!(status, StatusCode::OK);
        let (_, gz) = fetch(&http, &url, &cookie, true).await;
        let mut times = Vec::with_capacity(loads);
        for _ in 0..loads {
            let started = Instant::now();
            let (status, _) = fetch(&http, &url, &cookie, true).await;
            assert_eq!(status, StatusCode::OK);
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let p99 = percentile(&times, 0.99);
        worst_p99 = worst_p99.max(p99);
        worst_bytes = worst_bytes.max(gz.len());
        println!(
            "  {label}: p50 {:.2} ms, p99 {p99:.2} ms over {loads} loads; {} bytes gzip ({} plain)",
            percentile(&times, 0.5),
            gz.len(),
            plain.len()
        );
    }
    println!(
        "  floors: p99 <= {P99_PAGE_MS} ms: {}; compressed <= {} KB: {}",
        if worst_p99 <= P99_PAGE_MS {
            "met"
        } else {
            "MISSED"
        },
        PAGE_BYTES / 1000,
        if worst_bytes <= PAGE_BYTES {
            "met"
        } else {
            "MISSED"
        },
    );

    // 3. First load (before the streams, so the process is quiet).
    let mut requests = 1;
    let (_, page) = fetch(&http, &format!("{base}/"), &cookie, true).await;
    let mut bytes = page.len();
    for url in asset_urls(&first) {
        let (status, body) = fetch(&http, &format!("{base}{url}"), &cookie, true).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        requests += 1;
        bytes += body.len();
    }
    // The event stream the shared worker opens (its headers only, here).
    requests += 1;
    println!(
        "first load of the workspaces page: {requests} requests (page, stylesheet, script, \
         shared worker, event stream), {bytes} bytes gzip"
    );

    // 2. Open event streams.
    let streams = env_usize("LAPDEV_BENCH_STREAMS", 500);
    let rounds = env_usize("LAPDEV_BENCH_ROUNDS", 20);
    let before = rss_kib();
    let seen = Arc::new(AtomicUsize::new(0));
    let all_seen = Arc::new(Notify::new());
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    for _ in 0..streams {
        let mut request = get(&format!("{base}/events"), &cookie, false);
        request.headers_mut().insert(
            "accept",
            http::HeaderValue::from_static("text/event-stream"),
        );
        let response = http.request(request).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let (seen, all_seen, arrivals) = (seen.clone(), all_seen.clone(), arrivals.clone());
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let events = data.windows(13).filter(|w| w == b"event: change").count();
                for _ in 0..events {
                    arrivals.lock().await.push(Instant::now());
                    if seen.fetch_add(1, Ordering::SeqCst) + 1 == streams {
                        all_seen.notify_one();
                    }
                }
            }
        });
    }
    // Every stream's response head has arrived: all are open.
    let after = rss_kib();
    let mut delays = Vec::with_capacity(streams * rounds);
    for round in 0..rounds {
        seen.store(0, Ordering::SeqCst);
        arrivals.lock().await.clear();
        let waiting = all_seen.notified();
        let started = Instant::now();
        admin
            .set_cluster_cordoned("bench".into(), round % 2 == 0)
            .await?;
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("every stream got the event in 30 s");
        delays.extend(
            arrivals
                .lock()
                .await
                .iter()
                .map(|at| at.duration_since(started).as_secs_f64() * 1000.0),
        );
    }
    delays.sort_by(f64::total_cmp);
    let p99 = percentile(&delays, 0.99);
    println!(
        "{streams} open event streams: RSS {} -> {} KiB (+{} KiB, {:.1} KiB a stream, \
         server and client side)",
        before,
        after,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / streams as f64
    );
    println!(
        "  change -> event on every stream, {rounds} changes: p50 {:.1} ms, p99 {p99:.1} ms, \
         max {:.1} ms; floor p99 <= {P99_EVENT_MS} ms: {}",
        percentile(&delays, 0.5),
        delays.last().copied().unwrap_or_default(),
        if p99 <= P99_EVENT_MS { "met" } else { "MISSED" },
    );
    server.shutdown();
    Ok(())
}
