//! HRPC's own cost: the four pairs of {HRPC client, plain hyper client} ×
//! {HRPC handler, hand-written axum JSON handler}, doing the same work over
//! loopback TCP, for a ~100-byte and a 64 KiB payload, with 1 and 64 callers.
//!
//! Two judges, both over the whole in-process run (client and server):
//!
//! - **Throughput** (default): 12 rounds; in each round every pair runs a fixed
//!   number of calls, the pairs in a rotating order so drift hits all alike. It
//!   prints each pair's median calls/s over the rounds and the ratio of the HRPC
//!   pair to the plain pair.
//! - **Instructions per call** (`-- --instructions`, needs `valgrind`): the
//!   bench re-runs itself under `valgrind --tool=callgrind` for each pair and
//!   cell, twice with different call counts, and divides the difference of the
//!   instruction counts by the difference of the calls (so start-up, runtime
//!   and connection set-up cancel out).
//!
//! Run: `cargo bench -p lapdev-hrpc --bench hrpc_vs_axum [-- --instructions]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapdev_hrpc::{Client, HrpcError, HttpTransport, HttpTransportConfig};
use serde::{Deserialize, Serialize};

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

struct BenchImpl;

/// The shared "work": a small transformation of the payload.
fn work(mut payload: Payload) -> Payload {
    payload.id = payload.id.wrapping_add(1);
    payload
}

impl Bench for BenchImpl {
    async fn work(&self, payload: Payload) -> Result<Payload, HrpcError> {
        Ok(work(payload))
    }
}

#[derive(Deserialize, Serialize)]
struct PlainArgs {
    payload: Payload,
}

async fn plain_work(Json(args): Json<PlainArgs>) -> Json<Payload> {
    Json(work(args.payload))
}

fn payload(size: usize) -> Payload {
    Payload {
        id: 7,
        name: "workspace-0123".to_owned(),
        data: "x".repeat(size.saturating_sub(50)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Hrpc,
    Plain,
}

/// One of the four pairs: who calls, who answers.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pair {
    client: Side,
    server: Side,
}

const PAIRS: [Pair; 4] = [
    Pair {
        client: Side::Hrpc,
        server: Side::Hrpc,
    },
    Pair {
        client: Side::Plain,
        server: Side::Plain,
    },
    Pair {
        client: Side::Hrpc,
        server: Side::Plain,
    },
    Pair {
        client: Side::Plain,
        server: Side::Hrpc,
    },
];

impl Pair {
    fn label(self) -> String {
        let side = |s| match s {
            Side::Hrpc => "hrpc",
            Side::Plain => "plain",
        };
        format!("{}→{}", side(self.client), side(self.server))
    }

    fn parse(text: &str) -> Option<Self> {
        PAIRS.into_iter().find(|p| p.label() == text)
    }
}

struct Setup {
    hrpc: Client,
    plain: HyperClient<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    _server: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = server.block_on(async {
        // Both at the root of one router, so neither pays for a `nest` the
        // other does not (the server's own `/rpc` mount is its choice, not
        // HRPC's cost).
        let app = lapdev_hrpc::RpcRouter::new()
            .service(BenchServer::new(BenchImpl))
            .merge(axum::Router::new().route("/plain/work", axum::routing::post(plain_work)))
            .into_router()
            // The same body limit as HRPC's default, so neither side has an edge.
            .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let transport = Arc::new(HttpTransport::new(HttpTransportConfig::default()).unwrap());
    let hrpc = Client::with_shared_transport(&format!("http://{addr}"), transport).unwrap();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let plain = HyperClient::builder(TokioExecutor::new()).build(connector);
    Setup {
        hrpc,
        plain,
        addr,
        _server: server,
    }
}

async fn one_call(setup: &Setup, pair: Pair, p: &Payload) {
    let out: Payload = match pair.client {
        Side::Hrpc => {
            let (service, method) = match pair.server {
                Side::Hrpc => ("Bench", "work"),
                Side::Plain => ("plain", "work"),
            };
            #[derive(Serialize)]
            struct Args<'a> {
                payload: &'a Payload,
            }
            // What the generated client does, with the path of either handler.
            setup
                .hrpc
                .call::<_, _, HrpcError>(service, method, &Args { payload: p })
                .await
                .unwrap()
        }
        Side::Plain => {
            let path = match pair.server {
                Side::Hrpc => "Bench/work",
                Side::Plain => "plain/work",
            };
            #[derive(Serialize)]
            struct Args<'a> {
                payload: &'a Payload,
            }
            let body = serde_json::to_vec(&Args { payload: p }).unwrap();
            let request = http::Request::post(format!("http://{}/{path}", setup.addr))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = setup.plain.request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&body).unwrap()
        }
    };
    assert_eq!(out.id, p.id + 1);
}

/// Runs `total` calls (rounded up to a multiple of `concurrency`) with
/// `concurrency` callers.
async fn run(setup: Arc<Setup>, pair: Pair, p: Arc<Payload>, concurrency: usize, total: u64) {
    let per_worker = total.div_ceil(concurrency as u64);
    let workers = (0..concurrency).map(|_| {
        let setup = setup.clone();
        let p = p.clone();
        tokio::spawn(async move {
            for _ in 0..per_worker {
                one_call(&setup, pair, &p).await;
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w.unwrap();
    }
}

const CASES: [(&str, usize); 2] = [("100B", 100), ("64KiB", 64 * 1024)];
const CONCURRENCY: [usize; 2] = [1, 64];
const ROUNDS: usize = 12;

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Calls per pair per round: about 0.1–0.3 s of work each on this machine.
fn calls_per_round(size: usize, concurrency: usize) -> u64 {
    let base: u64 = if size > 1024 { 400 } else { 2_000 };
    base.div_ceil(concurrency as u64) * concurrency as u64
}

fn throughput() {
    let setup = Arc::new(setup());
    let rt = client_runtime();
    println!(
        "median calls/s over {ROUNDS} interleaved rounds (whole run: client + server in this process)"
    );
    println!(
        "{:<7} {:>5} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "payload", "conc", "hrpc→hrpc", "plain→plain", "hrpc→plain", "plain→hrpc", "ratio"
    );
    for (label, size) in CASES {
        let p = Arc::new(payload(size));
        for concurrency in CONCURRENCY {
            let total = calls_per_round(size, concurrency);
            // Warm up every pair (connections, allocator, caches).
            for pair in PAIRS {
                rt.block_on(run(setup.clone(), pair, p.clone(), concurrency, total / 4));
            }
            let mut rates: [Vec<f64>; 4] = Default::default();
            for round in 0..ROUNDS {
                for k in 0..PAIRS.len() {
                    let i = (k + round) % PAIRS.len();
                    let start = Instant::now();
                    rt.block_on(run(setup.clone(), PAIRS[i], p.clone(), concurrency, total));
                    rates[i].push(total as f64 / start.elapsed().as_secs_f64());
                }
            }
            let medians = rates.map(|mut r| {
                r.sort_by(f64::total_cmp);
                (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0
            });
            println!(
                "{:<7} {:>5} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>8.3}",
                label,
                concurrency,
                medians[0],
                medians[1],
                medians[2],
                medians[3],
                medians[0] / medians[1]
            );
        }
    }
}

/// Calls for the two runs of an instruction count: (fewer, more).
fn instruction_calls(size: usize, concurrency: usize) -> (u64, u64) {
    let c = concurrency as u64;
    match (size > 1024, concurrency > 1) {
        (false, false) => (100, 600),
        (false, true) => (c, 9 * c),
        (true, false) => (20, 120),
        (true, true) => (c, 3 * c),
    }
}

/// The child of `--instructions`: one pair, one cell, `total` calls.
fn child(args: &[String]) {
    let pair = Pair::parse(&args[0]).expect("a pair label");
    let size: usize = args[1].parse().unwrap();
    let concurrency: usize = args[2].parse().unwrap();
    let total: u64 = args[3].parse().unwrap();
    let setup = Arc::new(setup());
    let rt = client_runtime();
    // A clone: the server's runtime must not be dropped inside the client's.
    rt.block_on(run(
        setup.clone(),
        pair,
        Arc::new(payload(size)),
        concurrency,
        total,
    ));
}

/// Instructions of one child run under callgrind.
fn callgrind(pair: Pair, size: usize, concurrency: usize, total: u64) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let out_file =
        std::env::temp_dir().join(format!("hrpc-bench-callgrind.{}", std::process::id()));
    let output = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(&exe)
        .arg("--child")
        .arg(pair.label())
        .arg(size.to_string())
        .arg(concurrency.to_string())
        .arg(total.to_string())
        .output()
        .expect("valgrind is installed (apt-get install valgrind)");
    let _ = std::fs::remove_file(&out_file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child failed: {stderr}");
    // "==123== Collected : 123456789"
    stderr
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no instruction count in: {stderr}"))
}

fn instructions() {
    println!("instructions per call under callgrind (whole run: client + server in one process)");
    println!(
        "{:<7} {:>5} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "payload", "conc", "hrpc→hrpc", "plain→plain", "hrpc→plain", "plain→hrpc", "ratio"
    );
    for (label, size) in CASES {
        for concurrency in CONCURRENCY {
            let (few, many) = instruction_calls(size, concurrency);
            let per_call = PAIRS.map(|pair| {
                let a = callgrind(pair, size, concurrency, few);
                let b = callgrind(pair, size, concurrency, many);
                b.saturating_sub(a) as f64 / (many - few) as f64
            });
            println!(
                "{:<7} {:>5} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>8.3}",
                label,
                concurrency,
                per_call[0],
                per_call[1],
                per_call[2],
                per_call[3],
                // Cost ratio turned into a speed ratio: plain / hrpc.
                per_call[1] / per_call[0]
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1..]);
    }
    if args.iter().any(|a| a == "--instructions") {
        return instructions();
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: there, a
    // smoke run of every pair is enough.
    if !args.iter().any(|a| a == "--bench") {
        let setup = Arc::new(setup());
        let rt = client_runtime();
        for pair in PAIRS {
            rt.block_on(run(setup.clone(), pair, Arc::new(payload(100)), 2, 4));
        }
        return;
    }
    throughput();
}
