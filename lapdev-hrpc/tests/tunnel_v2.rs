//! Tunnel protocol version 2 over real TCP: negotiation (and version 1 for
//! managers and servers of today's protocol), full-duplex streams beside RPCs,
//! and what a dropped tunnel does to a stream.
//!
//! No test sleeps to win a race: every wait is on an event under a generous
//! timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::{EchoClient, EchoImpl};
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Request};
use lapdev_hrpc::tunnel::{
    self, CloseReason, PROTOCOL_V1, StreamLimits, TunnelClientConfig, TunnelConfig,
    TunnelSessionHandle, TunnelTransport,
};
use lapdev_hrpc::{Client, ServerConfig, TransportError};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const PATIENCE: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------- the server

/// A server whose upgrade route offers the versions (`configure_upgrade`), or,
/// with `old`, an upgrade that chooses no subprotocol (a server of today).
async fn start_server(old: bool) -> (String, mpsc::UnboundedReceiver<TunnelTransport>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let route = move |State(tx): State<mpsc::UnboundedSender<TunnelTransport>>,
                      ws: WebSocketUpgrade| async move {
        let config = TunnelConfig::default();
        let ws = if old {
            ws.max_message_size(config.max_frame_bytes)
        } else {
            config.configure_upgrade(ws)
        };
        ws.on_upgrade(move |socket| async move {
            let (transport, task) = tunnel::accept(socket, config);
            let _ = tx.send(transport);
            task.run().await;
        })
        .into_response()
    };
    let router = axum::Router::new()
        .route("/rpc/_tunnel", axum::routing::get(route))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/rpc/_tunnel"), rx)
}

// --------------------------------------------------------------- the manager

/// Signals of the manager's stream routes.
#[derive(Default)]
struct Signals {
    /// `/stream/hang` requests whose handler started.
    hang_started: AtomicUsize,
    /// `/stream/hang` handlers dropped before they finished.
    hang_dropped: AtomicUsize,
}

struct Dropped(Arc<Signals>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.hang_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// The `Echo` service plus stream routes:
/// - `/stream/echo` streams the request body back as it arrives;
/// - `/stream/firehose` sends 64 KiB chunks until the caller goes away;
/// - `/stream/hang` never answers;
/// - `/stream/panic` panics as soon as it runs (the manager polls a
///   request's handler once inside its session before spawning it).
fn manager_router(signals: Arc<Signals>) -> axum::Router {
    let echo = axum::routing::post(|req: Request<Body>| async move {
        Response::new(Body::from_stream(req.into_body().into_data_stream()))
    });
    let firehose = axum::routing::post(|| async {
        let chunk = Bytes::from(vec![0xAB; 64 * 1024]);
        let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
        Response::new(Body::from_stream(stream))
    });
    let hang = axum::routing::post(|State(signals): State<Arc<Signals>>| async move {
        let _guard = Dropped(signals.clone());
        signals.hang_started.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
        "never"
    });
    let panics = axum::routing::post(|| async {
        if true {
            panic!("a handler bug");
        }
        "unreachable"
    });
    let streams = axum::Router::new()
        .route("/stream/panic", panics)
        .route("/stream/echo", echo)
        .route("/stream/firehose", firehose)
        .route("/stream/hang", hang)
        .with_state(signals);
    common::router(Arc::new(EchoImpl::default()), ServerConfig::default()).merge(streams)
}

struct Manager {
    version: u8,
    handle: TunnelSessionHandle,
    run: JoinHandle<CloseReason>,
}

async fn start_manager(url: &str, config: TunnelClientConfig, signals: Arc<Signals>) -> Manager {
    let mut headers = HeaderMap::new();
    headers.insert("x-lapdev-cluster-token", HeaderValue::from_static("good"));
    let session = tunnel::connect(url, headers, manager_router(signals), config)
        .await
        .expect("the tunnel connects");
    Manager {
        version: session.protocol_version(),
        handle: session.handle(),
        run: tokio::spawn(session.run()),
    }
}

async fn v2_pair() -> (Manager, TunnelTransport, Arc<Signals>) {
    let (url, mut registered) = start_server(false).await;
    let signals = Arc::new(Signals::default());
    let manager = start_manager(&url, TunnelClientConfig::default(), signals.clone()).await;
    let transport = within("the tunnel", registered.recv()).await.unwrap();
    assert_eq!(manager.version, 2);
    assert_eq!(transport.protocol_version(), 2);
    (manager, transport, signals)
}

fn echo_client(transport: &TunnelTransport) -> EchoClient {
    EchoClient::new(
        Client::with_shared_transport("http://tunnel", Arc::new(transport.clone())).unwrap(),
    )
}

fn post(path: &str, body: Body) -> Request<Body> {
    Request::post(path).body(body).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted or reordered
/// chunk changes the digest.
fn chunk(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A request body fed through a channel, so the test decides when each chunk
/// is sent.
fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (tx, Body::from_stream(stream))
}

// --------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_full_duplex_and_16_mib_arrive_intact() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 16 * 1024 * 1024;
    let (_manager, transport, _) = v2_pair().await;
    let (tx, body) = channel_body();
    let response = within(
        "the echo's response head",
        transport.send_streaming(post("/stream/echo", body)),
    );
    // The response head arrives before any request byte is sent: the stream
    // is open both ways at once.
    let response = response.await.expect("the stream opens");
    assert_eq!(response.status(), 200);
    let mut incoming = response.into_body().into_data_stream();

    let (first_back_tx, first_back_rx) = oneshot::channel::<()>();
    let sender = tokio::spawn(async move {
        let mut sent = Sha256::new();
        let first = chunk(0, CHUNK);
        sent.update(&first);
        tx.send(first).await.unwrap();
        // Lock-step for the first chunk: it must come back while the request
        // is still open (the rest has not been sent).
        within("the first chunk's echo", first_back_rx)
            .await
            .unwrap();
        for i in 1..TOTAL / CHUNK {
            let c = chunk(i as u64, CHUNK);
            sent.update(&c);
            tx.send(c).await.unwrap();
        }
        sent.finalize()
    });

    let mut received = Sha256::new();
    let mut count = 0usize;
    let mut first_back = Some(first_back_tx);
    within("16 MiB to come back", async {
        while let Some(data) = incoming.next().await {
            let data = data.expect("the echo body streams");
            count += data.len();
            received.update(&data);
            if count >= CHUNK
                && let Some(tx) = first_back.take()
            {
                let _ = tx.send(());
            }
        }
    })
    .await;
    let sent = within("the sender", sender).await.unwrap();
    assert_eq!(count, TOTAL);
    assert_eq!(received.finalize(), sent);
    assert_eq!(transport.in_flight(), 0);
}

/// The HTTP/2 frame size a manager announces is kept within the range
/// HTTP/2 allows (h2 panics outside it), and bodies larger than any frame
/// size arrive intact whichever size each end asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_configured_frame_size_works_and_bodies_arrive_intact() {
    for max_frame_bytes in [0, 16 * 1024, 64 * 1024, u32::MAX] {
        let (url, mut registered) = start_server(false).await;
        let config = TunnelClientConfig {
            streams: StreamLimits {
                max_frame_bytes,
                ..StreamLimits::default()
            },
            ..TunnelClientConfig::default()
        };
        let _manager = start_manager(&url, config, Arc::new(Signals::default())).await;
        let transport = within("the tunnel", registered.recv()).await.unwrap();
        let sent = chunk(u64::from(max_frame_bytes), 3 * 1024 * 1024 + 17);
        let response = within(
            "the echo",
            transport.send_streaming(post("/stream/echo", Body::from(sent.clone()))),
        )
        .await
        .expect("the stream opens");
        let back = within(
            "the echoed body",
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await
        .unwrap()
        .to_bytes();
        assert_eq!(
            Sha256::digest(&back),
            Sha256::digest(&sent),
            "max_frame_bytes {max_frame_bytes}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_complete_while_streams_are_saturated() {
    let (_manager, transport, _) = v2_pair().await;
    // Two firehoses drained as fast as possible, two never read (their
    // windows stay full).
    let mut drains = Vec::new();
    let drained = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let response = transport
            .send_streaming(post("/stream/firehose", Body::empty()))
            .await
            .unwrap();
        let drained = drained.clone();
        drains.push(tokio::spawn(async move {
            let mut body = response.into_body().into_data_stream();
            while let Some(Ok(d)) = body.next().await {
                drained.fetch_add(d.len(), Ordering::Relaxed);
            }
        }));
    }
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(
            transport
                .send_streaming(post("/stream/firehose", Body::empty()))
                .await
                .unwrap(),
        );
    }
    // Saturated: many megabytes flow before and during the calls.
    within("the firehoses to flow", async {
        while drained.load(Ordering::Relaxed) < 8 * 1024 * 1024 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let client = echo_client(&transport);
    let calls = (0..50).map(|i| {
        let client = client.clone();
        async move { client.add(i, 1).await }
    });
    let results = within(
        "50 calls beside the streams",
        futures::future::join_all(calls),
    )
    .await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i64 + 1);
    }
    let before = drained.load(Ordering::Relaxed);
    within("the firehoses to keep flowing", async {
        while drained.load(Ordering::Relaxed) < before + 1024 * 1024 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for d in drains {
        d.abort();
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_own_call_and_the_tunnel_lives_on() {
    let (manager, transport, _) = v2_pair().await;
    let client = echo_client(&transport);
    assert_eq!(within("a call", client.add(1, 2)).await.unwrap(), 3);
    let failed = within(
        "the panicking call",
        transport.send_streaming(post("/stream/panic", Body::empty())),
    )
    .await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(!transport.is_closed());
    assert!(!manager.handle.is_closed());
    assert_eq!(within("a later call", client.add(2, 3)).await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tunnel_ends_streaming_calls_with_an_error() {
    let (manager, transport, signals) = v2_pair().await;
    // A stream in mid-transfer, and a call still waiting for its response.
    let (tx, body) = channel_body();
    let response = transport
        .send_streaming(post("/stream/echo", body))
        .await
        .unwrap();
    tx.send(chunk(1, 1000)).await.unwrap();
    let mut incoming = response.into_body().into_data_stream();
    let first = within("the first echo", incoming.next()).await.unwrap();
    assert_eq!(first.unwrap(), chunk(1, 1000));
    let waiting = {
        let transport = transport.clone();
        tokio::spawn(async move {
            transport
                .send_streaming(post("/stream/hang", Body::empty()))
                .await
        })
    };
    within("the hanging handler to start", async {
        while signals.hang_started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // The manager process "dies".
    manager.run.abort();

    let end = within("the stream to end", async {
        loop {
            match incoming.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        }
    })
    .await;
    assert!(
        end.is_some(),
        "the stream must end with an error, not a clean end"
    );
    match within("the waiting call to fail", waiting).await.unwrap() {
        Err(TransportError::Unavailable(m)) => assert!(m.contains("tunnel closed"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    within("the manager's handler to be dropped", async {
        while signals.hang_dropped.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Later calls fail at once.
    match transport
        .send_streaming(post("/stream/echo", Body::empty()))
        .await
    {
        Err(TransportError::Unavailable(m)) => assert!(m.contains("tunnel closed"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(transport.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_tunnel_resets_streams_and_tells_the_manager_why() {
    let (manager, transport, _) = v2_pair().await;
    let response = transport
        .send_streaming(post("/stream/firehose", Body::empty()))
        .await
        .unwrap();
    let mut body = response.into_body().into_data_stream();
    assert!(within("data", body.next()).await.unwrap().is_ok());
    transport.close("the cluster token was revoked");
    let end = within("the stream to end", async {
        loop {
            match body.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        }
    })
    .await;
    assert!(matches!(end, Some(Err(_))), "{end:?}");
    let reason = within("the session to end", manager.run).await.unwrap();
    match reason {
        CloseReason::Peer { code, reason } => {
            assert_eq!(code, Some(1000));
            assert_eq!(reason, "the cluster token was revoked");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(manager.handle.is_closed());
}

#[tokio::test]
async fn a_manager_of_todays_protocol_gets_version_1() {
    let (url, mut registered) = start_server(false).await;
    let signals = Arc::new(Signals::default());
    let config = TunnelClientConfig {
        max_protocol_version: 1,
        ..Default::default()
    };
    let manager = start_manager(&url, config, signals).await;
    let transport = within("the tunnel", registered.recv()).await.unwrap();
    assert_eq!(manager.version, 1);
    assert_eq!(transport.protocol_version(), 1);
    assert_eq!(echo_client(&transport).add(2, 3).await.unwrap(), 5);
    match transport
        .send_streaming(post("/stream/echo", Body::from("x")))
        .await
    {
        Err(TransportError::Unavailable(m)) => {
            assert!(
                m.contains("version 1") && m.contains("upgrade the manager"),
                "{m}"
            )
        }
        other => panic!("expected a too-old error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_offering_only_v1_gets_v1_frames() {
    let (url, mut registered) = start_server(false).await;
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-lapdev-cluster-token", HeaderValue::from_static("good"));
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(PROTOCOL_V1),
    );
    let (mut peer, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL),
        Some(&HeaderValue::from_static(PROTOCOL_V1))
    );
    let transport = within("the tunnel", registered.recv()).await.unwrap();
    assert_eq!(transport.protocol_version(), 1);
    // A version 1 request frame arrives for a call.
    let call = tokio::spawn({
        let transport = transport.clone();
        async move { echo_client(&transport).add(1, 2).await }
    });
    let frame = within("a request frame", peer.next())
        .await
        .unwrap()
        .unwrap();
    let Message::Binary(frame) = frame else {
        panic!("expected a binary frame, got {frame:?}")
    };
    let header_len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&frame[4..4 + header_len]).unwrap();
    assert_eq!(header["type"], "request");
    assert_eq!(header["path"], "/Echo/add");
    let id = header["id"].as_u64().unwrap();
    let answer = format!(r#"{{"type":"response","id":{id},"status":200}}"#);
    let mut bytes = (answer.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(answer.as_bytes());
    bytes.extend_from_slice(b"3");
    peer.send(Message::binary(bytes)).await.unwrap();
    assert_eq!(within("the call", call).await.unwrap().unwrap(), 3);
}

#[tokio::test]
async fn a_new_manager_falls_back_to_version_1_with_an_old_server() {
    let (url, mut registered) = start_server(true).await;
    let signals = Arc::new(Signals::default());
    let manager = start_manager(&url, TunnelClientConfig::default(), signals).await;
    assert_eq!(manager.version, 1);
    // The first upgrade (offering version 2) was dropped by the manager; the
    // second one carries the tunnel.
    let a = within("a tunnel", registered.recv()).await.unwrap();
    let b = within("a second tunnel", registered.recv()).await.unwrap();
    let live = match within(
        "the dropped attempt to close",
        futures::future::select(Box::pin(a.closed()), Box::pin(b.closed())),
    )
    .await
    {
        futures::future::Either::Left(_) => b,
        futures::future::Either::Right(_) => a,
    };
    assert_eq!(live.protocol_version(), 1);
    assert_eq!(echo_client(&live).add(20, 22).await.unwrap(), 42);
    assert!(!live.is_closed());
}
