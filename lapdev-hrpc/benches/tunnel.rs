//! The reverse tunnel's RPC rate, side by side in one run: tunnel protocol
//! version 1 (today's frames), version 2 (HTTP/2 over the WebSocket byte
//! stream), HRPC over plain HTTP on loopback TCP, and tarpc over TCP (JSON
//! codec, the reference), for a ~100-byte and a 64 KiB payload, with 1 and 64
//! concurrent callers. Then a port-forward-like throughput: 64 MiB streamed
//! from the manager through version 2 streams (1 and 8 at once), against the
//! same route over plain HTTP/2 on loopback TCP.
//!
//! One more row is a prototype, not a transport the crate ships:
//! "yamux+h1 on TCP" is HRPC as HTTP/1.1 on yamux streams (pooled keep-alive
//! connections, one per stream) over one TCP connection, without the WebSocket
//! (`support/yamux_h1.rs`): the alternative to HTTP/2 the issue allows,
//! measured at its best before building it into the tunnel.
//!
//! Two more rows test explanations of version 2's cost
//! (`support/references.rs`): "v2 on 2 conns" spreads the calls over two
//! version 2 tunnels (is it the one connection?), and "HTTP/2 on TCP" is HRPC
//! over one plain HTTP/2 connection with no WebSocket (is it the WebSocket
//! layer?), with version 2's HTTP/2 settings on both ends. `BENCH_CONN_WINDOW`
//! and `BENCH_STREAM_WINDOW` (bytes) change the HTTP/2 windows of the tunnel
//! rows and of "HTTP/2 on TCP".
//!
//! Three judges:
//!
//! - **Calls/s** (default): for each cell, `BENCH_ROUNDS` rounds (default 5);
//!   in each round every transport runs for `BENCH_SECS / BENCH_ROUNDS`
//!   seconds (default 2 s in all), in a rotating order so that the machine's
//!   drift hits all alike. It prints each transport's median calls/s and the
//!   ratios the floors are stated in (v2 ≥ 1.3× v1, v2 ≥ 0.9× HRPC over
//!   HTTP).
//! - **Wake-ups per call** (`-- --counts`): each transport and cell runs in a
//!   child process (2 worker threads, as above); the child counts its threads'
//!   context switches (`/proc/self/task/*/status`: voluntary ones are a thread
//!   going to sleep, i.e. one wake-up each) over a fixed number of calls.
//! - **Instructions per call** (`-- --instructions`, needs `valgrind`): each
//!   transport and cell runs twice under `valgrind --tool=callgrind` with
//!   different call counts; the difference of the instruction counts over the
//!   difference of the calls cancels start-up and set-up. Also the tokio task
//!   polls per call (calls of tokio's `raw::poll`), counted the same way.
//!
//! "v1 as shipped" is version 1 with tungstenite's default 128 KiB WebSocket
//! read buffer, as the tunnel was before version 2; the other tunnel rows use
//! the crate's default ([`tunnel::DEFAULT_WS_READ_BUFFER_BYTES`]) or
//! `BENCH_WS_READ_BUFFER` bytes. A tracing dispatcher that records nothing
//! is set, as the binaries set one.
//!
//! Run: `cargo bench -p lapdev-hrpc --bench tunnel [-- --counts | --instructions]`.

#[path = "support/references.rs"]
mod references;
#[path = "support/yamux_h1.rs"]
mod yamux_h1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use lapdev_hrpc::tunnel::{self, TunnelClientConfig, TunnelConfig, TunnelTransport};
use lapdev_hrpc::{Client, HrpcError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    id: u64,
    name: String,
    data: String,
}

#[lapdev_hrpc::service]
pub trait Bench {
    async fn work(&self, payload: Payload) -> Result<Payload, HrpcError>;
}

#[tarpc::service]
pub trait Reference {
    async fn work(payload: Payload) -> Payload;
}

fn work(mut payload: Payload) -> Payload {
    payload.id = payload.id.wrapping_add(1);
    payload
}

struct BenchImpl;

impl Bench for BenchImpl {
    async fn work(&self, payload: Payload) -> Result<Payload, HrpcError> {
        Ok(work(payload))
    }
}

#[derive(Clone)]
struct ReferenceImpl;

impl Reference for ReferenceImpl {
    async fn work(self, _: tarpc::context::Context, payload: Payload) -> Payload {
        work(payload)
    }
}

fn payload(size: usize) -> Payload {
    Payload {
        id: 7,
        name: "workspace-0123".to_owned(),
        data: "x".repeat(size.saturating_sub(50)),
    }
}

#[derive(Deserialize)]
struct SourceArgs {
    bytes: u64,
}

/// The manager's router: the HRPC service plus a raw streaming source.
fn manager_router() -> axum::Router {
    let source = axum::routing::get(|Query(args): Query<SourceArgs>| async move {
        let chunk = Bytes::from(vec![0x5A; 64 * 1024]);
        let chunks = args.bytes.div_ceil(chunk.len() as u64);
        let stream =
            futures::stream::iter(0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        Response::new(Body::from_stream(stream))
    });
    lapdev_hrpc::RpcRouter::new()
        .service(BenchServer::new(BenchImpl))
        .into_router()
        .route("/stream/source", source)
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| tunnel::tune_tcp(tcp));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// The WebSocket read buffer of both ends: `BENCH_WS_READ_BUFFER` bytes, else
/// the crate's default.
fn ws_read_buffer() -> usize {
    std::env::var("BENCH_WS_READ_BUFFER")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(tunnel::DEFAULT_WS_READ_BUFFER_BYTES)
}

/// The HTTP/2 limits of both tunnel ends: the crate's defaults, with the
/// windows from `BENCH_CONN_WINDOW` and `BENCH_STREAM_WINDOW` (bytes) if set.
fn limits() -> tunnel::StreamLimits {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
    let mut limits = tunnel::StreamLimits::default();
    if let Some(bytes) = var("BENCH_CONN_WINDOW") {
        limits.connection_window_bytes = bytes;
    }
    if let Some(bytes) = var("BENCH_STREAM_WINDOW") {
        limits.stream_window_bytes = bytes;
    }
    limits
}

/// A server end plus a manager of the given version, with `ws_read_buffer`
/// bytes of WebSocket read buffer on both ends; returns the transport.
async fn tunnel_pair(version: u8, ws_read_buffer: usize) -> TunnelTransport {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let route = move |State(tx): State<mpsc::UnboundedSender<TunnelTransport>>,
                      ws: WebSocketUpgrade| async move {
        let config = TunnelConfig {
            ws_read_buffer_bytes: ws_read_buffer,
            streams: limits(),
            ..Default::default()
        };
        config
            .configure_upgrade(ws)
            .on_upgrade(move |socket| async move {
                let (transport, task) = tunnel::accept(socket, config);
                let _ = tx.send(transport);
                task.run().await;
            })
            .into_response()
    };
    let addr = serve(
        axum::Router::new()
            .route("/rpc/_tunnel", axum::routing::get(route))
            .with_state(tx),
    )
    .await;
    let config = TunnelClientConfig {
        max_protocol_version: version,
        ws_read_buffer_bytes: ws_read_buffer,
        streams: limits(),
        ..Default::default()
    };
    let session = tunnel::connect(
        &format!("ws://{addr}/rpc/_tunnel"),
        http::HeaderMap::new(),
        manager_router(),
        config,
    )
    .await
    .unwrap();
    tokio::spawn(session.run());
    let transport = rx.recv().await.unwrap();
    assert_eq!(transport.protocol_version(), version);
    transport
}

enum Caller {
    Hrpc(BenchClient),
    Tarpc(ReferenceClient),
}

impl Caller {
    async fn call(&self, p: Payload) {
        match self {
            Caller::Hrpc(c) => {
                c.work(p).await.unwrap();
            }
            Caller::Tarpc(c) => {
                let mut ctx = tarpc::context::current();
                ctx.deadline = Instant::now() + Duration::from_secs(60);
                c.work(ctx, p).await.unwrap();
            }
        }
    }
}

async fn tarpc_client() -> ReferenceClient {
    use tarpc::server::incoming::Incoming as _;
    use tarpc::tokio_serde::formats::Json;
    let mut listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Json::default)
        .await
        .unwrap();
    listener.config_mut().max_frame_length(usize::MAX);
    let addr = listener.local_addr();
    let incoming = listener
        .filter_map(|r| futures::future::ready(r.ok()))
        .map(|t| {
            let _ = t.get_ref().set_nodelay(true);
            tarpc::server::BaseChannel::with_defaults(t)
        })
        .execute(ReferenceImpl.serve());
    tokio::spawn(tarpc::server::incoming::spawn_incoming(incoming));
    let mut transport = tarpc::serde_transport::tcp::connect(addr, Json::default);
    transport.config_mut().max_frame_length(usize::MAX);
    let transport = transport.await.unwrap();
    let _ = transport.get_ref().set_nodelay(true);
    let mut config = tarpc::client::Config::default();
    config.max_in_flight_requests = 1024;
    config.pending_request_buffer = 1024;
    ReferenceClient::new(config, transport).spawn()
}

/// The transports compared, in the order of the table. "v1 as shipped" is
/// version 1 with the WebSocket read buffer it had before this bench's last
/// changes (tungstenite's default, 128 KiB): today's tunnel, which the floors
/// are stated against.
const TRANSPORTS: [&str; 8] = [
    "v1 as shipped",
    "tunnel v1",
    "tunnel v2",
    "HRPC over HTTP",
    "tarpc over TCP",
    "yamux+h1 on TCP",
    "v2 on 2 conns",
    "HTTP/2 on TCP",
];

/// Column indexes in [`TRANSPORTS`].
const SHIPPED: usize = 0;
const V1: usize = 1;
const HTTP: usize = 3;
const TARPC: usize = 4;

/// Payload sizes and caller counts of the cells.
const CELLS: [(usize, usize); 4] = [(100, 1), (100, 64), (64 * 1024, 1), (64 * 1024, 64)];

fn size_label(size: usize) -> &'static str {
    if size <= 1024 { "100 B" } else { "64 KiB" }
}

/// A caller of the named transport, with whatever serves it running on the
/// current runtime.
async fn caller(name: &str) -> Arc<Caller> {
    let hrpc = |transport: Client| Arc::new(Caller::Hrpc(BenchClient::new(transport)));
    match name {
        "v1 as shipped" | "tunnel v1" | "tunnel v2" => {
            let version = if name == "tunnel v2" { 2 } else { 1 };
            let buffer = if name == "v1 as shipped" {
                128 * 1024
            } else {
                ws_read_buffer()
            };
            let t = tunnel_pair(version, buffer).await;
            hrpc(Client::with_shared_transport("http://tunnel", Arc::new(t)).unwrap())
        }
        "HRPC over HTTP" => {
            let addr = serve(manager_router()).await;
            let transport =
                lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default())
                    .unwrap();
            hrpc(Client::new(&format!("http://{addr}"), transport).unwrap())
        }
        "tarpc over TCP" => Arc::new(Caller::Tarpc(tarpc_client().await)),
        "v2 on 2 conns" => {
            let mut tunnels = Vec::new();
            for _ in 0..2 {
                tunnels.push(tunnel_pair(2, ws_read_buffer()).await);
            }
            let spread = references::Spread::new(tunnels);
            hrpc(Client::with_shared_transport("http://tunnel", Arc::new(spread)).unwrap())
        }
        "HTTP/2 on TCP" => {
            let h2 = references::Http2Tcp::start(manager_router(), limits()).await;
            hrpc(Client::with_shared_transport("http://tunnel", Arc::new(h2)).unwrap())
        }
        "yamux+h1 on TCP" => {
            let addr = yamux_h1::serve(manager_router()).await;
            let t = yamux_h1::YamuxTransport::connect(addr).await;
            hrpc(Client::with_shared_transport("http://tunnel", Arc::new(t)).unwrap())
        }
        other => panic!("unknown transport {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Calls/s of `callers` concurrent loops for `secs` (after a warm-up).
async fn rate(caller: Arc<Caller>, size: usize, callers: usize, secs: f64) -> f64 {
    let p = payload(size);
    for _ in 0..20 {
        caller.call(p.clone()).await;
    }
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let caller = caller.clone();
            let count = count.clone();
            let p = p.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    caller.call(p.clone()).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Exactly `total` calls shared by `callers` concurrent loops.
async fn calls(caller: Arc<Caller>, size: usize, callers: usize, total: u64) {
    let p = payload(size);
    let left = Arc::new(AtomicU64::new(total));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let caller = caller.clone();
            let left = left.clone();
            let p = p.clone();
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    caller.call(p.clone()).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (voluntary context switches, involuntary ones, CPU nanoseconds) of all this
/// process's threads.
fn context_switches() -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let (Ok(status), Ok(schedstat)) = (
            std::fs::read_to_string(task.join("status")),
            std::fs::read_to_string(task.join("schedstat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // "<ns on the CPU> <ns waiting to run> <slices>"
        total.2 += schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        for line in status.lines() {
            let number = |l: &str| l.split_whitespace().last().unwrap().parse::<u64>().unwrap();
            if line.starts_with("voluntary_ctxt_switches") {
                total.0 += number(line);
            } else if line.starts_with("nonvoluntary_ctxt_switches") {
                total.1 += number(line);
            }
        }
    }
    total
}

/// The child of `--counts` and `--instructions`: one transport, one cell,
/// `total` calls after a warm-up; prints the context switches of the calls.
fn child(args: &[String]) {
    let name = args[0].clone();
    let size: usize = args[1].parse().unwrap();
    let callers: usize = args[2].parse().unwrap();
    let total: u64 = args[3].parse().unwrap();
    runtime().block_on(async move {
        let caller = caller(&name).await;
        calls(caller.clone(), size, callers, 2 * callers as u64).await;
        let before = context_switches();
        calls(caller, size, callers, total).await;
        let after = context_switches();
        println!(
            "switches {} {} {}",
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2
        );
    });
}

/// Calls for the two runs of an instruction count: (fewer, more).
fn instruction_calls(size: usize, callers: usize) -> (u64, u64) {
    let c = callers as u64;
    match (size > 1024, callers > 1) {
        (false, false) => (100, 600),
        (false, true) => (c, 9 * c),
        (true, false) => (20, 120),
        (true, true) => (c, 3 * c),
    }
}

fn child_command(name: &str, size: usize, callers: usize, total: u64) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .arg("--child")
        .arg(name)
        .arg(size.to_string())
        .arg(callers.to_string())
        .arg(total.to_string());
    command
}

/// Context switches per call, natively: (voluntary, involuntary).
fn counts() {
    println!(
        "per call, natively (2 worker threads): context switches (voluntary = a thread \
         slept and was woken) and CPU time of all threads"
    );
    println!(
        "{:<16} {:>8} {:>8} {:>10} {:>12} {:>10}",
        "transport", "payload", "callers", "voluntary", "involuntary", "CPU µs"
    );
    for (size, callers) in CELLS {
        let total = if size > 1024 { 2000 } else { 20000 };
        for name in TRANSPORTS {
            let output = child_command(name, size, callers, total).output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            let line = stdout.lines().find(|l| l.starts_with("switches ")).unwrap();
            let n: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            println!(
                "{:<16} {:>8} {:>8} {:>10.2} {:>12.2} {:>10.1}",
                name,
                size_label(size),
                callers,
                n[0] / total as f64,
                n[1] / total as f64,
                n[2] / total as f64 / 1000.0
            );
        }
    }
}

/// (instructions, tokio task polls) of one child run under callgrind.
fn callgrind(name: &str, size: usize, callers: usize, total: u64) -> (u64, u64) {
    let out_file =
        std::env::temp_dir().join(format!("tunnel-bench-callgrind.{}", std::process::id()));
    let child = child_command(name, size, callers, total);
    let output = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(child.get_program())
        .args(child.get_args())
        .output()
        .expect("valgrind is installed (apt-get install valgrind)");
    let profile = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child failed: {stderr}");
    // "==123== Collected : 123456789"
    let instructions = stderr
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no instruction count in: {stderr}"));
    (
        instructions,
        calls_of(&profile, "tokio::runtime::task::raw::poll"),
    )
}

/// How often functions whose name starts with `prefix` were called, from a
/// callgrind profile (`cfn=(id) name` names a callee, `calls=N ...` counts
/// the calls of the last one named).
fn calls_of(profile: &str, prefix: &str) -> u64 {
    let mut names = std::collections::HashMap::<&str, &str>::new();
    let mut callee_matches = false;
    let mut total = 0;
    for line in profile.lines() {
        if let Some(rest) = line
            .strip_prefix("cfn=")
            .or_else(|| line.strip_prefix("fn="))
        {
            let name = match rest.split_once(' ') {
                Some((id, name)) => {
                    names.insert(id, name);
                    name
                }
                None => names.get(rest).copied().unwrap_or(rest),
            };
            if line.starts_with("cfn=") {
                callee_matches = name.starts_with(prefix);
            }
        } else if let Some(rest) = line.strip_prefix("calls=")
            && callee_matches
        {
            total += rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn instructions() {
    println!("per call under callgrind (whole process: caller, both tunnel ends, handler)");
    println!(
        "{:<16} {:>8} {:>8} {:>14} {:>12}",
        "transport", "payload", "callers", "instructions", "task polls"
    );
    for (size, callers) in CELLS {
        let (few, many) = instruction_calls(size, callers);
        for name in TRANSPORTS {
            let a = callgrind(name, size, callers, few);
            let b = callgrind(name, size, callers, many);
            let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / (many - few) as f64;
            println!(
                "{:<16} {:>8} {:>8} {:>14.0} {:>12.2}",
                name,
                size_label(size),
                callers,
                per(a.0, b.0),
                per(a.1, b.1)
            );
        }
    }
}

/// MB/s of `streams` concurrent downloads of `bytes` each from the source route.
async fn throughput<F, Fut>(fetch: F, streams: usize, bytes: u64) -> f64
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = http::Response<Body>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let response = fetch(format!("/stream/source?bytes={bytes}"));
            tokio::spawn(async move {
                let mut body = response.await.into_body();
                let mut got = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        got += data.len() as u64;
                    }
                }
                got
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, bytes.div_ceil(65536) * 65536 * streams as u64);
    total as f64 / 1e6 / start.elapsed().as_secs_f64()
}

fn main() {
    // As in the binaries, a tracing dispatcher is set (one that records
    // nothing): without any, every disabled span of hyper and h2 is still
    // offered to the `log` crate (tracing's `log` feature, which axum turns on).
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1..]);
    }
    if args.iter().any(|a| a == "--counts") {
        return counts();
    }
    if args.iter().any(|a| a == "--instructions") {
        return instructions();
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: there, a
    // few calls through every transport are enough.
    if !args.iter().any(|a| a == "--bench") {
        runtime().block_on(async {
            for name in TRANSPORTS {
                calls(caller(name).await, 100, 2, 4).await;
            }
        });
        return;
    }
    let env = |name: &str, default: f64| -> f64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let secs = env("BENCH_SECS", 2.0);
    let rounds = env("BENCH_ROUNDS", 5.0).max(1.0) as usize;
    runtime().block_on(async move {
        let mut callers = Vec::new();
        for name in TRANSPORTS {
            callers.push(caller(name).await);
        }
        println!(
            "RPC calls/s (median of {rounds} interleaved rounds, {secs} s per transport and cell, \
             release build, one process, 2 worker threads)"
        );
        println!(
            "{:<16} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "transport", "payload", "callers", "calls/s", "÷ shipped", "÷ v1", "÷ HTTP", "÷ tarpc"
        );
        for (size, n) in CELLS {
            let mut samples = vec![Vec::new(); TRANSPORTS.len()];
            for round in 0..rounds {
                for k in 0..TRANSPORTS.len() {
                    let i = (round + k) % TRANSPORTS.len();
                    let r = rate(callers[i].clone(), size, n, secs / rounds as f64).await;
                    samples[i].push(r);
                }
            }
            let rates: Vec<f64> = samples.into_iter().map(median).collect();
            for (name, r) in TRANSPORTS.iter().zip(&rates) {
                println!(
                    "{:<16} {:>8} {:>8} {:>10.0} {:>10.2} {:>8.2} {:>8.2} {:>8.2}",
                    name,
                    size_label(size),
                    n,
                    r,
                    r / rates[SHIPPED],
                    r / rates[V1],
                    r / rates[HTTP],
                    r / rates[TARPC],
                );
            }
        }

        // Port-forward-like throughput: a raw streaming route.
        drop(callers);
        let v2 = tunnel_pair(2, ws_read_buffer()).await;
        let http_addr = serve(manager_router()).await;
        const BYTES: u64 = 64 * 1024 * 1024;
        let (h2, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new({
                    let tcp = tokio::net::TcpStream::connect(http_addr).await.unwrap();
                    tunnel::tune_tcp(&tcp);
                    tcp
                }))
                .await
                .unwrap();
        tokio::spawn(conn);
        println!();
        println!("Streaming 64 MiB per stream from the manager (MB/s, all streams together)");
        println!("{:<22} {:>8} {:>10}", "path", "streams", "MB/s");
        for streams in [1usize, 8] {
            let tunnel_v2 = {
                let v2 = v2.clone();
                throughput(
                    move |path| {
                        let v2 = v2.clone();
                        async move {
                            let req = http::Request::get(path).body(Body::empty()).unwrap();
                            v2.send_streaming(req).await.unwrap()
                        }
                    },
                    streams,
                    BYTES,
                )
                .await
            };
            let plain = {
                let h2 = h2.clone();
                throughput(
                    move |path| {
                        let mut h2 = h2.clone();
                        async move {
                            let req = http::Request::get(format!("http://bench{path}"))
                                .body(Body::empty())
                                .unwrap();
                            h2.send_request(req).await.unwrap().map(Body::new)
                        }
                    },
                    streams,
                    BYTES,
                )
                .await
            };
            println!(
                "{:<22} {:>8} {:>10.0}",
                "tunnel v2 stream", streams, tunnel_v2
            );
            println!(
                "{:<22} {:>8} {:>10.0}",
                "plain HTTP/2 (TCP)", streams, plain
            );
        }
    });
}
