//! Connection budgets per class and the unary request timeout, through real
//! HTTP: a flood of unauthenticated clients cannot take the tunnels'
//! connections, forged tunnel upgrades hold no tunnel slot, and a slow unary
//! handler is cut at the timeout while a streamed body and a tunnel are not.

mod common;

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use common::{FakeManager, TestServer, dial};
use lapdev_server::config::LimitsConfig;
use lapdev_server::serve::{ServeConfig, serve};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `request` on a fresh connection and reads the whole answer (the
/// server closes it).
async fn once(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Opens a keep-alive connection and has one request answered on it.
async fn keep_alive(addr: std::net::SocketAddr, path: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    (stream, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_clients_cannot_starve_the_tunnels() {
    let t = TestServer::embedded_with(LimitsConfig {
        max_connections: 8,
        max_tunnel_connections: 2,
        max_api_connections: 2,
        max_unauthenticated_connections: 2,
        ..LimitsConfig::default()
    })
    .await;
    let created = t
        .admin()
        .create_cluster("steady".into(), None, None, None)
        .await
        .unwrap();

    // Two unauthenticated keep-alive connections fill their class...
    let (_a, first) = keep_alive(t.addr, "/healthz").await;
    let (_b, second) = keep_alive(t.addr, "/healthz").await;
    assert!(first.starts_with("HTTP/1.1 200") && second.starts_with("HTTP/1.1 200"));
    // ...and every further one is refused and closed at once, so the flood
    // does not pile up against the total.
    for _ in 0..20 {
        let answer = once(t.addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("unauthenticated connections"), "{answer}");
    }
    // Forged tunnel upgrades are refused and give their tunnel slot back.
    for _ in 0..4 {
        assert!(dial(&t, "lapdev_ct_forged", Arc::default()).await.is_err());
    }
    // The manager's tunnel still connects and works.
    let fake = Arc::new(FakeManager::default());
    let session = dial(&t, &created.token_secret, fake).await.unwrap();
    let run = tokio::spawn(session.run());
    common::eventually("tunnel registered", || async {
        t.server.state.kube.is_tunnel_up(created.cluster.id)
    })
    .await;
    let client = t
        .server
        .state
        .kube
        .manager_client(created.cluster.id)
        .unwrap();
    client.get_cluster_info().await.unwrap();
    run.abort();
}

/// A response body that sends `left` chunks, one every `every`.
struct Ticking {
    every: Duration,
    left: usize,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Ticking {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.left -= 1;
        let next = tokio::time::Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            b"tick\n",
        )))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_unary_handler_is_cut_at_the_timeout_but_a_stream_is_not() {
    let timeout = Duration::from_secs(1);
    let router = Router::new()
        .route(
            "/rpc/Slow/call",
            post(|| async {
                std::future::pending::<()>().await;
                "never"
            }),
        )
        .route(
            "/rpc/Stream/ticks",
            post(|| async {
                // Six chunks over 2.4 s: longer than the timeout.
                Body::new(Ticking {
                    every: Duration::from_millis(400),
                    left: 6,
                    sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                })
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            lapdev_server::unary_timeout,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router, ServeConfig::default(), async {
        let _ = stop_rx.await;
    }));
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )
    };

    let started = tokio::time::Instant::now();
    let slow = tokio::time::timeout(Duration::from_secs(30), once(addr, &post("/rpc/Slow/call")))
        .await
        .expect("the slow handler was never cut");
    assert!(slow.starts_with("HTTP/1.1 504"), "{slow}");
    assert!(slow.contains("deadline_exceeded"), "{slow}");
    assert!(started.elapsed() >= timeout);

    let started = tokio::time::Instant::now();
    let stream = once(addr, &post("/rpc/Stream/ticks")).await;
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    assert_eq!(
        stream.matches("tick").count(),
        6,
        "the stream was cut: {stream}"
    );
    assert!(
        started.elapsed() > timeout,
        "the stream outlived the timeout"
    );

    stop_tx.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_outlives_the_request_timeout() {
    let t = TestServer::embedded_with(LimitsConfig {
        request_timeout_secs: 1,
        ..LimitsConfig::default()
    })
    .await;
    let created = t
        .admin()
        .create_cluster("long".into(), None, None, None)
        .await
        .unwrap();
    let session = dial(&t, &created.token_secret, Arc::default())
        .await
        .unwrap();
    let run = tokio::spawn(session.run());
    let kube = t.server.state.kube.clone();
    let id = created.cluster.id;
    common::eventually("tunnel registered", || {
        let kube = kube.clone();
        async move { kube.is_tunnel_up(id) }
    })
    .await;
    // Three request timeouts later the tunnel is the same one and answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!run.is_finished(), "the tunnel was cut");
    assert!(kube.is_tunnel_up(id));
    kube.manager_client(id)
        .unwrap()
        .get_cluster_info()
        .await
        .unwrap();
    run.abort();
}
