//! HRPC against a hand-written axum JSON handler doing the same work, over
//! loopback TCP, called with the same HTTP client (`HttpTransport`, which HRPC's
//! client uses too), for a ~100-byte and a 64 KiB payload, sequential and with 64
//! concurrent callers.
//!
//! Criterion measures time per call (and so calls/s). After it, a summary pass
//! runs each case for a fixed time, recording every call's latency, and prints
//! calls/s, p50/p99 latency and the HRPC/axum ratio.
//!
//! Run: `cargo bench -p lapdev-hrpc --bench hrpc_vs_axum`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use lapdev_hrpc::{Client, HrpcError, HttpTransport, HttpTransportConfig, Transport as _};
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

struct Setup {
    client: Arc<Client>,
    transport: Arc<HttpTransport>,
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
    let client =
        Client::with_shared_transport(&format!("http://{addr}"), transport.clone()).unwrap();
    Setup {
        client: Arc::new(client),
        transport,
        addr,
        _server: server,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Hrpc,
    Axum,
}

async fn one_call(setup: &Setup, kind: Kind, p: &Payload) {
    match kind {
        Kind::Hrpc => {
            let client = BenchClient::new((*setup.client).clone());
            let out = client.work(p.clone()).await.unwrap();
            assert_eq!(out.id, p.id + 1);
        }
        Kind::Axum => {
            let body = serde_json::to_vec(&PlainArgs { payload: p.clone() }).unwrap();
            let request = http::Request::post(format!("http://{}/plain/work", setup.addr))
                .header("content-type", "application/json")
                .body(Bytes::from(body))
                .unwrap();
            let response = setup.transport.send(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let out: Payload = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(out.id, p.id + 1);
        }
    }
}

/// Runs `total` calls with `concurrency` callers; returns each call's latency.
async fn run(
    setup: Arc<Setup>,
    kind: Kind,
    p: Arc<Payload>,
    concurrency: usize,
    total: u64,
) -> Vec<Duration> {
    let per_worker = total.div_ceil(concurrency as u64);
    let workers = (0..concurrency).map(|_| {
        let setup = setup.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_worker as usize);
            for _ in 0..per_worker {
                let start = Instant::now();
                one_call(&setup, kind, &p).await;
                lat.push(start.elapsed());
            }
            lat
        })
    });
    let mut all = Vec::new();
    for w in futures::future::join_all(workers).await {
        all.extend(w.unwrap());
    }
    all
}

const CASES: [(&str, usize); 2] = [("100B", 100), ("64KiB", 64 * 1024)];
const CONCURRENCY: [usize; 2] = [1, 64];

fn bench(c: &mut Criterion) {
    let setup = Arc::new(setup());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (label, size) in CASES {
        let p = Arc::new(payload(size));
        for concurrency in CONCURRENCY {
            let mut group = c.benchmark_group(format!("{label}/concurrency-{concurrency}"));
            group.throughput(Throughput::Elements(1));
            for kind in [Kind::Hrpc, Kind::Axum] {
                group.bench_function(format!("{kind:?}"), |b| {
                    b.to_async(&rt).iter_custom(|iters| {
                        let setup = setup.clone();
                        let p = p.clone();
                        async move {
                            let start = Instant::now();
                            run(setup, kind, p, concurrency, iters.max(concurrency as u64)).await;
                            start
                                .elapsed()
                                .mul_f64(iters as f64 / iters.max(concurrency as u64) as f64)
                        }
                    })
                });
            }
            group.finish();
        }
    }
    summary(&rt, &setup);
}

/// Fixed-length runs, alternating HRPC and axum so drift hits both alike.
fn summary(rt: &tokio::runtime::Runtime, setup: &Arc<Setup>) {
    println!("\nsummary: calls/s and latency per call (3 alternating rounds of 1.5 s each)");
    println!(
        "{:<8} {:>5} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "payload",
        "conc",
        "hrpc c/s",
        "axum c/s",
        "hrpc p50",
        "axum p50",
        "hrpc p99",
        "axum p99",
        "ratio"
    );
    for (label, size) in CASES {
        let p = Arc::new(payload(size));
        for concurrency in CONCURRENCY {
            let mut lat = [Vec::new(), Vec::new()];
            let mut wall = [Duration::ZERO; 2];
            for _round in 0..3 {
                for (i, kind) in [Kind::Hrpc, Kind::Axum].into_iter().enumerate() {
                    let deadline = Instant::now() + Duration::from_millis(1500);
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        let l = rt.block_on(run(
                            setup.clone(),
                            kind,
                            p.clone(),
                            concurrency,
                            concurrency as u64 * 50,
                        ));
                        wall[i] += start.elapsed();
                        lat[i].extend(l);
                    }
                }
            }
            let rate = |i: usize| lat[i].len() as f64 / wall[i].as_secs_f64();
            let pct = |i: usize, q: f64| {
                let mut v = lat[i].clone();
                v.sort();
                v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
            };
            println!(
                "{:<8} {:>5} {:>12.0} {:>12.0} {:>10.3?} {:>10.3?} {:>10.3?} {:>10.3?} {:>7.3}",
                label,
                concurrency,
                rate(0),
                rate(1),
                pct(0, 0.50),
                pct(1, 0.50),
                pct(0, 0.99),
                pct(1, 0.99),
                rate(0) / rate(1)
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
