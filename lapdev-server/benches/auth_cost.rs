//! Benchmark: what authentication costs.
//!
//! Run with `cargo bench -p lapdev-server --bench auth_cost` (embedded SQLite
//! in a temporary directory; no PostgreSQL needed).
//!
//! 1. Authenticated RPC calls/s: `PeopleRpc/whoami` through the whole router
//!    in-process (no socket: the server's own cost) with a personal access
//!    token (verified once, then cached) against the legacy admin JWT (an
//!    HS256 check per call). Both run in alternating rounds in one process so
//!    drift hits both alike. Floor: PAT >= 0.9 x JWT.
//! 2. Password verification: the argon2id parameters and the milliseconds per
//!    verification on this machine (median and worst of 20). Floor: <= 100 ms.
//! 3. Sign-ins under load: 8 clients calling `whoami` as fast as they can,
//!    first alone, then while 4 clients sign in with a password without pause;
//!    prints sign-ins/s and the whoami p50/p99 of both phases. Bound: the
//!    loaded whoami p99 stays within [`P99_BOUND_FACTOR`] x its p99 alone (or
//!    within [`P99_BOUND_FLOOR_MS`], whichever is larger, so a sub-millisecond
//!    p99 alone does not make scheduler noise a miss).
//!
//! Tunables (environment): `LAPDEV_BENCH_CALLS` (calls per round, 3000),
//! `LAPDEV_BENCH_ROUNDS` (rounds per credential, 5), `LAPDEV_BENCH_SECS`
//! (seconds per load phase, 5).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use lapdev_common::role::Role;
use lapdev_server::Server;
use lapdev_server::auth::password::{
    ARGON2_ITERATIONS, ARGON2_LANES, ARGON2_MEMORY_KIB, hash_blocking, verify_blocking,
};
use lapdev_server::config::{LogFormat, ServerConfig};
use tower::ServiceExt as _;

/// The loaded whoami p99 may be at most this many times its p99 alone.
const P99_BOUND_FACTOR: f64 = 2.0;
/// ... or at most this many milliseconds, whichever is larger.
const P99_BOUND_FLOOR_MS: f64 = 5.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn server_config(data_dir: PathBuf) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir,
        database_url: None,
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

fn request(path: &str, token: Option<&str>, body: String) -> Request<Body> {
    let mut r = Request::post(format!("/rpc/PeopleRpc/{path}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        r = r.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    r.body(Body::from(body)).expect("a request")
}

async fn call(router: &axum::Router, path: &str, token: Option<&str>, body: String) -> bool {
    match router.clone().oneshot(request(path, token, body)).await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn load_phase(
    router: &axum::Router,
    token: &str,
    secs: u64,
    sign_ins: bool,
) -> (Vec<Duration>, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (router, token, stop, failed) = (
            router.clone(),
            token.to_owned(),
            stop.clone(),
            failed.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if !call(&router, "whoami", Some(&token), "{}".into()).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut writers = Vec::new();
    if sign_ins {
        for _ in 0..4 {
            let (router, stop, signed, failed) =
                (router.clone(), stop.clone(), signed.clone(), failed.clone());
            writers.push(tokio::spawn(async move {
                let body = r#"{"user":"bench","password":"bench-password-1"}"#;
                while !stop.load(Ordering::Relaxed) {
                    if call(&router, "sign_in", None, body.into()).await {
                        signed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.await.expect("a reader"));
    }
    for w in writers {
        w.await.expect("a writer");
    }
    lat.sort();
    (
        lat,
        signed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let calls = env_u64("LAPDEV_BENCH_CALLS", 3000);
    let rounds = env_u64("LAPDEV_BENCH_ROUNDS", 5);
    let secs = env_u64("LAPDEV_BENCH_SECS", 5);
    let dir = tempfile::tempdir()?;
    let server = Server::start(server_config(dir.path().join("data"))).await?;
    let pat = server
        .first_admin_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no first admin token"))?;
    let db = &server.state.db;
    let org = db.list_organizations().await?[0].id;
    let owner = db.first_owner(org).await?;
    let jwt = server
        .state
        .jwt
        .mint(owner.id, org, Duration::from_secs(3600))?;
    let router = lapdev_server::app(server.state.clone());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("auth_cost: {cores} cores, embedded SQLite, in-process router");

    // 1. PAT (cached) vs legacy JWT.
    for t in [&pat, &jwt] {
        assert!(
            call(&router, "whoami", Some(t), "{}".into()).await,
            "warm-up"
        );
    }
    let (mut pat_total, mut jwt_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        for (token, total) in [(&pat, &mut pat_total), (&jwt, &mut jwt_total)] {
            let t = Instant::now();
            for _ in 0..calls {
                assert!(call(&router, "whoami", Some(token), "{}".into()).await);
            }
            *total += t.elapsed();
        }
    }
    let n = (calls * rounds) as f64;
    let pat_rate = n / pat_total.as_secs_f64();
    let jwt_rate = n / jwt_total.as_secs_f64();
    let ratio = pat_rate / jwt_rate;
    println!(
        "authenticated whoami, one caller: PAT (cached) {pat_rate:.0} calls/s, legacy JWT {jwt_rate:.0} calls/s, ratio {ratio:.2}x (floor 0.90x): {}",
        if ratio >= 0.9 { "ok" } else { "MISSED" }
    );

    // 2. argon2id per verification.
    let hash = hash_blocking("bench-password-1")?;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert!(verify_blocking("bench-password-1", &hash));
        times.push(t.elapsed());
    }
    times.sort();
    let median = percentile(&times, 0.5).as_secs_f64() * 1000.0;
    let worst = times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0;
    println!(
        "argon2id m={ARGON2_MEMORY_KIB} KiB, t={ARGON2_ITERATIONS}, p={ARGON2_LANES}: {median:.1} ms median, {worst:.1} ms worst per verification (floor 100 ms): {}",
        if worst <= 100.0 { "ok" } else { "MISSED" }
    );

    // 3. Sign-ins while other RPCs keep their p99.
    let bench = db
        .create_user(
            org,
            lapdev_db::NewUser {
                name: "bench".into(),
                email: None,
            },
        )
        .await?;
    db.change_user(
        org,
        bench.id,
        lapdev_db::UserChange::SetRole(Role::Member),
        lapdev_db::NewAuditEntry {
            action: "bench".into(),
            outcome: "success".into(),
            ..Default::default()
        },
    )
    .await?;
    db.set_password_hash(org, bench.id, Some(hash)).await?;
    let (alone, _, failed_alone) = load_phase(&router, &pat, secs, false).await;
    let (loaded, signed, failed_loaded) = load_phase(&router, &pat, secs, true).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "whoami x8 alone: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms ({failed_alone} failed)",
        alone.len() as f64 / secs as f64,
        ms(percentile(&alone, 0.5)),
        ms(percentile(&alone, 0.99)),
    );
    println!(
        "whoami x8 with 4 password sign-in loops: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms; sign-ins {:.1}/s ({failed_loaded} failed)",
        loaded.len() as f64 / secs as f64,
        ms(percentile(&loaded, 0.5)),
        ms(percentile(&loaded, 0.99)),
        signed as f64 / secs as f64,
    );
    let (p99_alone, p99_loaded) = (ms(percentile(&alone, 0.99)), ms(percentile(&loaded, 0.99)));
    let bound = (p99_alone * P99_BOUND_FACTOR).max(P99_BOUND_FLOOR_MS);
    println!(
        "sign-ins sustained: {:.1}/s with whoami p99 {p99_loaded:.2} ms against a bound of {bound:.2} ms (max({P99_BOUND_FACTOR}x p99 alone, {P99_BOUND_FLOOR_MS} ms)): {}",
        signed as f64 / secs as f64,
        if p99_loaded <= bound && signed > 0 {
            "ok"
        } else {
            "MISSED"
        }
    );
    server.shutdown();
    Ok(())
}
