//! The reverse tunnel's RPC rate, side by side in one run: tunnel protocol
//! version 1 (today's frames), version 2 (HTTP/2 over the WebSocket byte
//! stream), HRPC over plain HTTP on loopback TCP, and tarpc over TCP (JSON
//! codec, the reference), for a ~100-byte and a 64 KiB payload, with 1 and 64
//! concurrent callers. Then a port-forward-like throughput: 64 MiB streamed
//! from the manager through version 2 streams (1 and 8 at once), against the
//! same route over plain HTTP/2 on loopback TCP.
//!
//! Every case runs for a fixed time after a short warm-up and prints calls/s
//! (or MB/s) and the ratios the floors are stated in (v2 ≥ 1.3× v1, v2 ≥ 0.9×
//! HRPC over HTTP).
//!
//! Run: `cargo bench -p lapdev-hrpc --bench tunnel` (`BENCH_SECS` sets the
//! seconds per case, default 2).

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

/// A server end plus a manager of the given version; returns the transport.
async fn tunnel_pair(version: u8) -> TunnelTransport {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let route = |State(tx): State<mpsc::UnboundedSender<TunnelTransport>>, ws: WebSocketUpgrade| async move {
        let config = TunnelConfig::default();
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
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let v1 = tunnel_pair(1).await;
        let v2 = tunnel_pair(2).await;
        let http_addr = serve(manager_router()).await;
        let callers: Vec<(&str, Arc<Caller>)> = vec![
            (
                "tunnel v1",
                Arc::new(Caller::Hrpc(BenchClient::new(
                    Client::with_shared_transport("http://tunnel", Arc::new(v1.clone())).unwrap(),
                ))),
            ),
            (
                "tunnel v2",
                Arc::new(Caller::Hrpc(BenchClient::new(
                    Client::with_shared_transport("http://tunnel", Arc::new(v2.clone())).unwrap(),
                ))),
            ),
            (
                "HRPC over HTTP",
                Arc::new(Caller::Hrpc(
                    BenchClient::new(
                        Client::new(
                            &format!("http://{http_addr}"),
                            lapdev_hrpc::HttpTransport::new(
                                lapdev_hrpc::HttpTransportConfig::default(),
                            )
                            .unwrap(),
                        )
                        .unwrap(),
                    ),
                )),
            ),
            (
                "tarpc over TCP",
                Arc::new(Caller::Tarpc(tarpc_client().await)),
            ),
        ];

        println!("RPC calls/s ({secs} s per case, release build, one process, 2 worker threads)");
        println!(
            "{:<16} {:>8} {:>8} {:>12} {:>8} {:>9} {:>9}",
            "transport", "payload", "callers", "calls/s", "÷ v1", "÷ HTTP", "÷ tarpc"
        );
        for size in [100usize, 64 * 1024] {
            for n in [1usize, 64] {
                let mut rates = Vec::new();
                for (_, caller) in &callers {
                    rates.push(rate(caller.clone(), size, n, secs).await);
                }
                for ((name, _), r) in callers.iter().zip(&rates) {
                    println!(
                        "{:<16} {:>8} {:>8} {:>12.0} {:>8.2} {:>9.2} {:>9.2}",
                        name,
                        if size == 100 { "100 B" } else { "64 KiB" },
                        n,
                        r,
                        r / rates[0],
                        r / rates[2],
                        r / rates[3],
                    );
                }
            }
        }

        // Port-forward-like throughput: a raw streaming route.
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
