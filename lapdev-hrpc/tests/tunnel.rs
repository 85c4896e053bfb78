//! The reverse tunnel over real TCP: a server exposing `GET /rpc/_tunnel` that
//! registers tunnels by cluster token, managers serving the `Echo` service
//! through `tunnel::connect`, and the server calling them with `EchoClient`.
//!
//! No test sleeps to win a race: every wait is on an event (a channel, the
//! `closed()` future, a session's end) under a generous timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::{EchoClient, EchoImpl, Point, TestError};
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue};
use lapdev_hrpc::tunnel::{
    self, CloseReason, TunnelClientConfig, TunnelConfig, TunnelConnectError, TunnelRegistry,
    TunnelSessionHandle, TunnelTransport,
};
use lapdev_hrpc::{
    CallError, Client, Code, HrpcError, ServerConfig, Transport as _, TransportError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const TOKEN_HEADER: &str = "x-lapdev-cluster-token";
/// Upper bound for anything that should happen "at once"; only reached on failure.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls a condition that an event on another task makes true.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------- the server

#[derive(Clone)]
struct App {
    registry: TunnelRegistry<String>,
    config: TunnelConfig,
    registered: mpsc::UnboundedSender<(String, TunnelTransport)>,
    ended: mpsc::UnboundedSender<(String, CloseReason)>,
}

struct TestServer {
    addr: std::net::SocketAddr,
    registry: TunnelRegistry<String>,
    registered: mpsc::UnboundedReceiver<(String, TunnelTransport)>,
    ended: mpsc::UnboundedReceiver<(String, CloseReason)>,
}

impl TestServer {
    fn url(&self) -> String {
        format!("http://{}/rpc/_tunnel", self.addr)
    }

    /// Waits for the next tunnel registration.
    async fn next_tunnel(&mut self) -> (String, TunnelTransport) {
        within("a tunnel registration", self.registered.recv())
            .await
            .unwrap()
    }

    /// Waits for the next tunnel task to end.
    async fn next_end(&mut self) -> (String, CloseReason) {
        within("a tunnel task to end", self.ended.recv())
            .await
            .unwrap()
    }
}

/// The application's upgrade route: checks the token (the application's job),
/// then hands the socket to the tunnel module and registers it under the token.
async fn tunnel_route(
    State(app): State<App>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !token.starts_with("good-") {
        return HrpcError::unauthenticated("invalid cluster token").into_response();
    }
    app.config
        .configure_upgrade(ws)
        .on_upgrade(move |socket| async move {
            let (transport, task) = tunnel::accept(socket, app.config);
            app.registry.insert(token.clone(), transport.clone());
            let _ = app.registered.send((token.clone(), transport));
            if token.starts_with("good-never-run") {
                // An application bug: the task is dropped instead of run.
                drop(task);
                return;
            }
            let reason = task.run().await;
            let _ = app.ended.send((token, reason));
        })
}

async fn start_server(config: TunnelConfig) -> TestServer {
    let (reg_tx, reg_rx) = mpsc::unbounded_channel();
    let (end_tx, end_rx) = mpsc::unbounded_channel();
    let registry = TunnelRegistry::new();
    let app = App {
        registry: registry.clone(),
        config,
        registered: reg_tx,
        ended: end_tx,
    };
    let router = axum::Router::new()
        .route("/rpc/_tunnel", axum::routing::get(tunnel_route))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    TestServer {
        addr,
        registry,
        registered: reg_rx,
        ended: end_rx,
    }
}

fn echo_client(transport: TunnelTransport) -> EchoClient {
    EchoClient::new(Client::with_shared_transport("http://tunnel", Arc::new(transport)).unwrap())
}

// --------------------------------------------------------------- the manager

struct Manager {
    echo: Arc<EchoImpl>,
    /// Paths of requests as they reach the manager's router.
    arrivals: mpsc::UnboundedReceiver<String>,
    run: JoinHandle<CloseReason>,
    handle: TunnelSessionHandle,
}

impl Manager {
    async fn next_arrival(&mut self) -> String {
        within("a request to reach the manager", self.arrivals.recv())
            .await
            .unwrap()
    }

    async fn ended(self) -> CloseReason {
        within("the manager session to end", self.run)
            .await
            .unwrap()
    }
}

fn token_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(TOKEN_HEADER, HeaderValue::from_str(token).unwrap());
    headers
}

fn manager_router(echo: Arc<EchoImpl>, arrivals: mpsc::UnboundedSender<String>) -> axum::Router {
    common::router(echo, ServerConfig::default()).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let _ = arrivals.send(req.uri().path().to_owned());
            next.run(req)
        },
    ))
}

async fn start_manager_with(
    url: &str,
    token: &str,
    router_extra: Option<axum::Router>,
    config: TunnelClientConfig,
) -> Manager {
    let echo = Arc::new(EchoImpl::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let mut router = manager_router(echo.clone(), tx);
    if let Some(extra) = router_extra {
        router = router.merge(extra);
    }
    let session = tunnel::connect(url, token_headers(token), router, config)
        .await
        .expect("the tunnel connects");
    let handle = session.handle();
    let run = tokio::spawn(session.run());
    Manager {
        echo,
        arrivals: rx,
        run,
        handle,
    }
}

/// A manager of today's protocol (version 1: offers no subprotocol), for the
/// tests of version 1's frames.
fn v1_client() -> TunnelClientConfig {
    TunnelClientConfig {
        max_protocol_version: 1,
        ..Default::default()
    }
}

async fn start_manager(url: &str, token: &str) -> Manager {
    start_manager_with(url, token, None, TunnelClientConfig::default()).await
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, CallError<HrpcError>>, needle: &str) {
    match result {
        Err(CallError::Transport(TransportError::Unavailable(message))) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            let folded = HrpcError::from(CallError::<HrpcError>::Transport(
                TransportError::Unavailable(message),
            ));
            assert_eq!(folded.code, Code::Unavailable);
        }
        other => panic!("expected a tunnel-closed failure, got {other:?}"),
    }
}

// --------------------------------------------------------------------- tests

#[tokio::test]
async fn calls_succeed_and_service_errors_keep_code_and_message() {
    let mut server = start_server(TunnelConfig::default()).await;
    let _manager = start_manager(&server.url(), "good-a").await;
    let (key, transport) = server.next_tunnel().await;
    assert_eq!(key, "good-a");
    assert!(server.registry.get(&key).unwrap().same_tunnel(&transport));
    assert_eq!(server.registry.len(), 1);
    assert_eq!(server.registry.keys(), vec!["good-a".to_owned()]);

    let c = echo_client(transport);
    assert_eq!(
        c.echo("through the tunnel".into()).await.unwrap(),
        "through the tunnel"
    );
    assert_eq!(c.add(2, 40).await.unwrap(), 42);
    let p = Point {
        x: 1,
        y: -2,
        label: Some("p".into()),
    };
    assert_eq!(
        c.mirror(p).await.unwrap(),
        Point {
            x: -1,
            y: 2,
            label: Some("p".into())
        }
    );
    c.nothing().await.unwrap();

    // Service errors: code and message preserved, typed errors convert back.
    match c.fail(Code::PermissionDenied, "no way".into()).await {
        Err(CallError::Service(e)) => {
            assert_eq!(e.code, Code::PermissionDenied);
            assert_eq!(e.message, "no way");
        }
        other => panic!("unexpected {other:?}"),
    }
    match c.lookup("zebra".into()).await {
        Err(CallError::Service(TestError::NoSuchThing(m))) => assert_eq!(m, "nothing called zebra"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.lookup("one".into()).await.unwrap(), 1);
    match c.add(i64::MAX, 1).await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::OutOfRange),
        other => panic!("unexpected {other:?}"),
    }
    // A panic in the manager's method is an internal error, not a dead tunnel.
    match c.explode().await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::Internal),
        other => panic!("unexpected {other:?}"),
    }

    // Headers travel both ways: the caller's identity and the request id.
    let named = echo_client(server.registry.get(&key).unwrap());
    let client = Client::with_shared_transport(
        "http://tunnel",
        Arc::new(server.registry.get(&key).unwrap()),
    )
    .unwrap()
    .with_header(
        http::HeaderName::from_static("x-caller"),
        HeaderValue::from_static("ada"),
    )
    .with_header(
        http::HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("req-123"),
    );
    let c2 = EchoClient::new(client);
    assert_eq!(c2.whoami().await.unwrap().as_deref(), Some("ada"));
    assert_eq!(c2.request_id().await.unwrap(), "req-123");
    assert_eq!(named.whoami().await.unwrap(), None);

    // An unknown method answers like HTTP HRPC: 404 unimplemented.
    let raw = server.registry.get(&key).unwrap();
    let response = raw
        .send(
            http::Request::post("http://tunnel/Echo/nope")
                .header("content-type", "application/json")
                .body(Bytes::from_static(b"{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
    let e: HrpcError = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(e.code, Code::Unimplemented);
    assert_eq!(raw.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_are_matched_by_id() {
    let mut server = start_server(TunnelConfig::default()).await;
    let _manager = start_manager(&server.url(), "good-many").await;
    let (_, transport) = server.next_tunnel().await;
    let c = echo_client(transport.clone());
    let calls = (0..200i64).map(|i| {
        let c = c.clone();
        async move {
            // Mixed latencies so that answers come back out of order.
            if i % 3 == 0 {
                c.slow((i % 7) as u64).await.unwrap();
            }
            let sum = c.add(i, 1000).await.unwrap();
            let text = c.echo(format!("message {i}")).await.unwrap();
            (sum, text)
        }
    });
    let results = futures::future::join_all(calls).await;
    for (i, (sum, text)) in results.into_iter().enumerate() {
        assert_eq!(sum, i as i64 + 1000);
        assert_eq!(text, format!("message {i}"));
    }
    assert_eq!(transport.in_flight(), 0);
}

#[tokio::test]
async fn one_mebibyte_bodies_cross_both_ways() {
    let mut server = start_server(TunnelConfig::default()).await;
    let _manager = start_manager(&server.url(), "good-big").await;
    let (_, transport) = server.next_tunnel().await;
    let c = echo_client(transport);
    let big: String = (0..1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let back = c.echo(big.clone()).await.unwrap();
    assert_eq!(back.len(), big.len());
    assert_eq!(back, big);
}

#[tokio::test]
async fn manager_going_away_fails_calls_in_flight_at_once() {
    // Version 1: the body travels with the request frame, so the handler is in
    // `slow` when its arrival is seen (tunnel_v2.rs has version 2's test).
    let mut server = start_server(TunnelConfig::default()).await;
    let mut manager = start_manager_with(&server.url(), "good-gone", None, v1_client()).await;
    let (key, transport) = server.next_tunnel().await;
    let c = echo_client(transport.clone());

    let call = tokio::spawn(async move { c.slow(10_000).await });
    assert_eq!(manager.next_arrival().await, "/Echo/slow");
    assert_eq!(transport.in_flight(), 1);

    // The manager process "dies": its session is dropped mid-call.
    let started = std::time::Instant::now();
    manager.run.abort();
    let result = within("the in-flight call to fail", call).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_unavailable(result, "tunnel closed");

    let reason = within("the tunnel to close", transport.closed()).await;
    assert!(matches!(reason, CloseReason::Io(_)), "{reason:?}");
    assert!(transport.is_closed());
    assert!(server.registry.get(&key).is_none());
    assert_eq!(server.registry.len(), 0);
    assert!(server.registry.keys().is_empty());

    // Later calls fail at once too.
    assert_unavailable(
        echo_client(transport).echo("x".into()).await,
        "tunnel closed",
    );
    // The manager's handler was dropped along with its session.
    let echo = manager.echo.clone();
    eventually("the manager's handler to be dropped", || {
        echo.slow_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(echo.slow_finished.load(Ordering::SeqCst), 0);
    let (ended_key, _) = server.next_end().await;
    assert_eq!(ended_key, key);
}

#[tokio::test]
async fn the_newest_connection_of_a_key_wins() {
    let mut server = start_server(TunnelConfig::default()).await;
    let mut first = start_manager(&server.url(), "good-dup").await;
    let (key, t1) = server.next_tunnel().await;
    let c1 = echo_client(t1.clone());
    let in_flight = tokio::spawn(async move { c1.slow(10_000).await });
    assert_eq!(first.next_arrival().await, "/Echo/slow");

    let second = start_manager(&server.url(), "good-dup").await;
    let (key2, t2) = server.next_tunnel().await;
    assert_eq!(key2, key);
    assert!(!t1.same_tunnel(&t2));

    // The first connection is closed: its call fails, its manager is told why.
    assert_unavailable(
        within("the replaced call", in_flight).await.unwrap(),
        tunnel::REPLACED_REASON,
    );
    assert_eq!(
        t1.close_reason(),
        Some(CloseReason::Local(tunnel::REPLACED_REASON.into()))
    );
    let echo1 = first.echo.clone();
    match first.ended().await {
        CloseReason::Peer { code, reason } => {
            assert_eq!(code, Some(1000));
            assert_eq!(reason, tunnel::REPLACED_REASON);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The old task has ended; its close did not remove the new tunnel.
    let (ended_key, _) = server.next_end().await;
    assert_eq!(ended_key, key);
    let current = server.registry.get(&key).expect("the new tunnel stays");
    assert!(current.same_tunnel(&t2));
    assert_eq!(server.registry.len(), 1);

    // Calls go to the second manager.
    echo_client(current).slow(1).await.unwrap();
    assert_eq!(second.echo.slow_finished.load(Ordering::SeqCst), 1);
    assert_eq!(echo1.slow_finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn closing_through_the_registry_ends_the_manager_session() {
    let mut server = start_server(TunnelConfig::default()).await;
    let manager = start_manager(&server.url(), "good-revoked").await;
    let (key, transport) = server.next_tunnel().await;
    assert!(server.registry.close(&key, "cluster token revoked"));
    assert!(!server.registry.close(&key, "again"));
    assert!(server.registry.get(&key).is_none());
    assert!(transport.is_closed());
    assert_unavailable(
        echo_client(transport).echo("x".into()).await,
        "cluster token revoked",
    );
    match manager.ended().await {
        CloseReason::Peer { code, reason } => {
            assert_eq!(code, Some(1000));
            assert_eq!(reason, "cluster token revoked");
        }
        other => panic!("unexpected {other:?}"),
    }
    let (_, reason) = server.next_end().await;
    assert_eq!(reason, CloseReason::Local("cluster token revoked".into()));
}

#[tokio::test]
async fn a_staggered_close_ends_every_session_one_after_another() {
    let mut server = start_server(TunnelConfig::default()).await;
    let mut managers = Vec::new();
    for token in ["good-drain-1", "good-drain-2", "good-drain-3"] {
        managers.push(start_manager(&server.url(), token).await);
        server.next_tunnel().await;
    }
    assert_eq!(server.registry.len(), 3);
    let closed = within(
        "the staggered close",
        server
            .registry
            .close_all_staggered("server shutting down", Duration::from_millis(300)),
    )
    .await;
    assert_eq!(closed, 3);
    assert!(server.registry.is_empty());
    for manager in managers {
        match manager.ended().await {
            CloseReason::Peer { code, reason } => {
                assert_eq!(code, Some(1000));
                assert_eq!(reason, "server shutting down");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Nothing left to close.
    assert_eq!(
        server
            .registry
            .close_all_staggered("again", Duration::from_secs(10))
            .await,
        0
    );
}

#[tokio::test]
async fn the_manager_can_close_its_session() {
    let mut server = start_server(TunnelConfig::default()).await;
    let manager = start_manager(&server.url(), "good-bye").await;
    let (_, transport) = server.next_tunnel().await;
    manager.handle.close("manager shutting down");
    assert!(manager.handle.is_closed());
    match within("the server to see the close", transport.closed()).await {
        CloseReason::Peer { code, reason } => {
            assert_eq!(code, Some(1000));
            assert_eq!(reason, "manager shutting down");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        manager.ended().await,
        CloseReason::Local("manager shutting down".into())
    );
}

#[tokio::test]
async fn a_refused_upgrade_is_a_typed_error() {
    let server = start_server(TunnelConfig::default()).await;
    let echo = Arc::new(EchoImpl::default());
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = tunnel::connect(
        &server.url(),
        token_headers("bad-token"),
        manager_router(echo, tx),
        TunnelClientConfig::default(),
    )
    .await
    .unwrap_err();
    match &err {
        TunnelConnectError::Rejected {
            status,
            error,
            message,
        } => {
            assert_eq!(*status, http::StatusCode::UNAUTHORIZED);
            assert_eq!(error.as_ref().unwrap().code, Code::Unauthenticated);
            assert_eq!(message, "invalid cluster token");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED));
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert!(err.to_string().contains("401"), "{err}");
    assert!(server.registry.is_empty());

    // Nobody listening: a connect error, not a rejection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = listener.local_addr().unwrap();
    drop(listener);
    let err = tunnel::connect(
        &format!("ws://{closed_port}/rpc/_tunnel"),
        HeaderMap::new(),
        axum::Router::new(),
        TunnelClientConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TunnelConnectError::Connect(_)), "{err:?}");
}

fn short_pings() -> TunnelConfig {
    TunnelConfig {
        ping_interval: Duration::from_millis(50),
        ping_timeout: Duration::from_millis(200),
        ..TunnelConfig::default()
    }
}

/// A raw WebSocket client on the tunnel endpoint; it reads only when told to.
async fn raw_peer(
    server: &mut TestServer,
    token: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    TunnelTransport,
) {
    let mut request = format!("ws://{}/rpc/_tunnel", server.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert(TOKEN_HEADER, HeaderValue::from_str(token).unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let (key, transport) = server.next_tunnel().await;
    assert_eq!(key, token);
    (socket, transport)
}

#[tokio::test]
async fn a_manager_that_stops_answering_pings_is_detected() {
    let mut server = start_server(short_pings()).await;
    // Connected, then silent: it never reads, so it never answers a ping.
    let (_silent, transport) = raw_peer(&mut server, "good-silent").await;
    let reason = within("the ping timeout", transport.closed()).await;
    assert_eq!(reason, CloseReason::PingTimeout(Duration::from_millis(200)));
    assert!(server.registry.get(&"good-silent".to_owned()).is_none());
    assert_unavailable(echo_client(transport).echo("x".into()).await, "ping");
}

#[tokio::test]
async fn a_live_manager_survives_many_ping_intervals() {
    let mut server = start_server(short_pings()).await;
    let manager = start_manager_with(
        &server.url(),
        "good-alive",
        None,
        TunnelClientConfig {
            ping_interval: Duration::from_millis(50),
            ping_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await;
    let (_, transport) = server.next_tunnel().await;
    // A call that lasts five ping timeouts: pings keep both ends alive, and
    // neither end's frames are needed for that.
    echo_client(transport.clone()).slow(1000).await.unwrap();
    assert!(!transport.is_closed());
    assert!(!manager.handle.is_closed());
}

/// A raw WebSocket server for the manager end to connect to; hands out the
/// accepted socket.
async fn raw_server() -> (
    String,
    mpsc::UnboundedReceiver<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                let _ = tx.send(ws);
            }
        }
    });
    (format!("ws://{addr}/rpc/_tunnel"), rx)
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_detected_by_the_manager() {
    let (url, mut accepted) = raw_server().await;
    let manager = start_manager_with(
        &url,
        "good-x",
        None,
        TunnelClientConfig {
            ping_interval: Duration::from_millis(50),
            ping_timeout: Duration::from_millis(200),
            // The raw server chooses no subprotocol: today's protocol.
            max_protocol_version: 1,
            ..Default::default()
        },
    )
    .await;
    let _silent = within("the raw server to accept", accepted.recv())
        .await
        .unwrap();
    assert_eq!(
        manager.ended().await,
        CloseReason::PingTimeout(Duration::from_millis(200))
    );
}

fn raw_frame(header: &str, body: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(body);
    v
}

/// Reads until the peer's close frame and finishes the close handshake; returns
/// the frame's code and reason.
async fn read_close<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("a close frame", async {
        let mut close = None;
        while let Some(msg) = socket.next().await {
            match msg {
                Ok(Message::Close(frame)) => {
                    close = Some(frame.map_or((0, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    }));
                }
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        }
        close.expect("the connection ended without a close frame")
    })
    .await
}

#[tokio::test]
async fn malformed_frames_close_the_tunnel_with_a_reason() {
    let mut server = start_server(TunnelConfig::default()).await;
    let cases: Vec<(&str, Message, &str)> = vec![
        ("good-m1", Message::binary(vec![0u8, 1]), "shorter than"),
        (
            "good-m2",
            Message::binary(vec![0, 0, 1, 0, b'{', b'}']),
            "exceeds",
        ),
        (
            "good-m3",
            Message::binary(raw_frame("not json", b"")),
            "JSON",
        ),
        ("good-m4", Message::binary(raw_frame("[1]", b"")), "JSON"),
        (
            "good-m5",
            Message::binary(raw_frame(r#"{"type":"response","status":200}"#, b"")),
            "response",
        ),
        (
            "good-m6",
            Message::binary(raw_frame(
                r#"{"type":"response","id":1,"status":1000}"#,
                b"",
            )),
            "status",
        ),
        ("good-m7", Message::text("hello"), "text message"),
    ];
    for (token, message, needle) in cases {
        let (mut peer, transport) = raw_peer(&mut server, token).await;
        peer.send(message).await.unwrap();
        let reason = within("the tunnel to close", transport.closed()).await;
        match &reason {
            CloseReason::Protocol(m) => assert!(m.contains(needle), "{token}: {m:?}"),
            other => panic!("{token}: unexpected {other:?}"),
        }
        let (code, text) = read_close(&mut peer).await;
        assert_eq!(code, 1002, "{token}");
        assert!(text.contains(needle), "{token}: {text:?}");
        let (key, ended) = server.next_end().await;
        assert_eq!(key, token);
        assert_eq!(ended, reason);
        assert!(server.registry.get(&key).is_none());
    }

    // The manager end treats a malformed frame from the server the same way.
    let (url, mut accepted) = raw_server().await;
    let manager = start_manager_with(&url, "good-x", None, v1_client()).await;
    let mut raw = within("accept", accepted.recv()).await.unwrap();
    raw.send(Message::binary(raw_frame(
        r#"{"type":"request","id":1}"#,
        b"",
    )))
    .await
    .unwrap();
    match manager.ended().await {
        CloseReason::Protocol(m) => assert!(m.contains("path"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    let (code, _) = read_close(&mut raw).await;
    assert_eq!(code, 1002);
}

/// A hand-written peer speaking the documented frame format: unknown frame
/// types are ignored, requests arrive as documented and hand-built responses
/// are matched by id.
#[tokio::test]
async fn a_hand_written_peer_speaks_the_documented_format() {
    let mut server = start_server(TunnelConfig::default()).await;
    let (mut peer, transport) = raw_peer(&mut server, "good-hand").await;
    peer.send(Message::binary(raw_frame(
        r#"{"type":"hello-from-the-future","x":[1,2,3]}"#,
        b"ignored",
    )))
    .await
    .unwrap();
    let c = echo_client(transport.clone());
    let call = tokio::spawn(async move { c.add(1, 2).await });

    let request = within("a request frame", async {
        loop {
            match peer.next().await.unwrap().unwrap() {
                Message::Binary(b) => break b,
                _ => continue,
            }
        }
    })
    .await;
    let header_len = u32::from_be_bytes(request[..4].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&request[4..4 + header_len]).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request[4 + header_len..]).unwrap();
    assert_eq!(header["type"], "request");
    assert_eq!(header["path"], "/Echo/add");
    assert_eq!(header["headers"]["content-type"], "application/json");
    assert_eq!(header["headers"]["hrpc-version"], "1");
    assert!(header.get("method").is_none(), "POST is implied");
    assert_eq!(body, serde_json::json!({"a": 1, "b": 2}));
    let id = header["id"].as_u64().unwrap();

    // A response for an id nobody waits for is ignored; then the real one.
    let stray = format!(r#"{{"type":"response","id":{},"status":200}}"#, id + 1000);
    peer.send(Message::binary(raw_frame(&stray, b"99")))
        .await
        .unwrap();
    let answer = format!(
        r#"{{"type":"response","id":{id},"status":200,"headers":{{"content-type":"application/json","x-multi":["a","b"]}},"future-field":true}}"#
    );
    peer.send(Message::binary(raw_frame(&answer, b"3")))
        .await
        .unwrap();
    assert_eq!(within("the answer", call).await.unwrap().unwrap(), 3);

    // A request sent to the server end is answered with 404 unimplemented.
    peer.send(Message::binary(raw_frame(
        r#"{"type":"request","id":5,"path":"/Nope/nope"}"#,
        b"{}",
    )))
    .await
    .unwrap();
    let reply = within("the server's answer", async {
        loop {
            if let Message::Binary(b) = peer.next().await.unwrap().unwrap() {
                break b;
            }
        }
    })
    .await;
    let header_len = u32::from_be_bytes(reply[..4].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&reply[4..4 + header_len]).unwrap();
    assert_eq!(header["type"], "response");
    assert_eq!(header["id"], 5);
    assert_eq!(header["status"], 404);
    assert_eq!(header["headers"]["content-type"], "application/json");
    let e: HrpcError = serde_json::from_slice(&reply[4 + header_len..]).unwrap();
    assert_eq!(e.code, Code::Unimplemented);
    assert!(!transport.is_closed());
}

#[tokio::test]
async fn a_dropped_call_cancels_the_managers_work() {
    let mut server = start_server(TunnelConfig::default()).await;
    let mut manager = start_manager(&server.url(), "good-cancel").await;
    let (_, transport) = server.next_tunnel().await;
    let c = echo_client(transport.clone());
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.slow(10_000).await }
    });
    assert_eq!(manager.next_arrival().await, "/Echo/slow");
    call.abort();
    let echo = manager.echo.clone();
    eventually("the cancel to drop the manager's handler", || {
        echo.slow_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(transport.in_flight(), 0);
    // The tunnel is unaffected.
    assert_eq!(c.echo("still here".into()).await.unwrap(), "still here");

    // The client's own deadline drops the call the same way.
    let err = c
        .with_timeout(Duration::from_millis(50))
        .slow(10_000)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Service(HrpcError {
                code: Code::DeadlineExceeded,
                ..
            }) | CallError::Transport(TransportError::Timeout(_))
        ),
        "{err:?}"
    );
    eventually("the deadline to drop the handler", || {
        echo.slow_dropped.load(Ordering::SeqCst) == 2
    })
    .await;
    eventually("the pending entry to go", || transport.in_flight() == 0).await;
}

#[tokio::test]
async fn oversized_frames_are_refused_cleanly() {
    const LIMIT: usize = 64 * 1024;
    let config = TunnelConfig {
        max_frame_bytes: LIMIT,
        ..TunnelConfig::default()
    };
    let mut server = start_server(config).await;
    let big_route = axum::Router::new().route(
        "/Big/get",
        axum::routing::post(|| async { "x".repeat(100 * 1024) }),
    );
    let _manager = start_manager_with(
        &server.url(),
        "good-limits",
        Some(big_route),
        TunnelClientConfig {
            max_frame_bytes: LIMIT,
            max_protocol_version: 1,
            ..Default::default()
        },
    )
    .await;
    let (_, transport) = server.next_tunnel().await;
    let c = echo_client(transport.clone());

    // A request that does not fit fails alone.
    match c.echo("y".repeat(100 * 1024)).await {
        Err(CallError::Transport(TransportError::Other(e))) => {
            assert!(e.to_string().contains("exceeds"), "{e}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // A response that does not fit becomes resource_exhausted.
    let response = transport
        .send(
            http::Request::post("http://tunnel/Big/get")
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let e: HrpcError = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(e.code, Code::ResourceExhausted);
    assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
    // The tunnel still works.
    assert_eq!(c.echo("small".into()).await.unwrap(), "small");
    assert!(!transport.is_closed());

    // A peer sending an oversized message gets the tunnel closed.
    let (mut peer, raw_transport) = raw_peer(&mut server, "good-huge").await;
    peer.send(Message::binary(vec![0u8; LIMIT + 1]))
        .await
        .unwrap();
    match within("the tunnel to close", raw_transport.closed()).await {
        CloseReason::FrameTooLarge { limit, .. } => assert_eq!(limit, LIMIT),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_task_that_never_runs_or_a_dropped_session_reports_closed() {
    let mut server = start_server(TunnelConfig::default()).await;
    let echo = Arc::new(EchoImpl::default());
    let (tx, _rx) = mpsc::unbounded_channel();
    let session = tunnel::connect(
        &server.url(),
        token_headers("good-never-run"),
        manager_router(echo, tx),
        TunnelClientConfig::default(),
    )
    .await
    .unwrap();
    let (key, transport) = server.next_tunnel().await;
    // The server dropped the task: the transport is closed, calls fail at once.
    assert_eq!(
        within("the closed tunnel", transport.closed()).await,
        CloseReason::Dropped
    );
    assert_unavailable(echo_client(transport).echo("x".into()).await, "dropped");
    assert!(server.registry.get(&key).is_none());

    // A session dropped without running reports that to its handle.
    let handle = session.handle();
    assert!(!handle.is_closed());
    drop(session);
    assert_eq!(
        within("the session handle", handle.closed()).await,
        CloseReason::Dropped
    );
}
