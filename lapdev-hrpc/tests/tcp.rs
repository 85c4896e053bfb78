//! The generated client over real TCP: HTTP/1.1 and HTTP/2, deadlines, request
//! ids, and transport failures told apart from server errors.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{EchoClient, EchoImpl};
use lapdev_hrpc::{
    CallError, Client, Code, HttpTransport, HttpTransportConfig, ServerConfig, Transport as _,
    TransportError,
};

async fn served(config: ServerConfig) -> (std::net::SocketAddr, Arc<EchoImpl>) {
    let service = Arc::new(EchoImpl::default());
    let addr = common::serve(common::router(service.clone(), config)).await;
    (addr, service)
}

#[tokio::test]
async fn calls_over_http1_with_a_path_prefix() {
    let (addr, _) = served(ServerConfig::default()).await;
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc/")).unwrap());
    assert_eq!(c.echo("over tcp".into()).await.unwrap(), "over tcp");
    // The pooled connection is reused for many calls.
    for i in 0..50 {
        assert_eq!(c.add(i, 1).await.unwrap(), i + 1);
    }
}

#[tokio::test]
async fn calls_over_http2_prior_knowledge() {
    let (addr, _) = served(ServerConfig::default()).await;
    let transport = HttpTransport::new(HttpTransportConfig {
        http2_prior_knowledge: true,
        ..Default::default()
    })
    .unwrap();
    // The transport really speaks HTTP/2.
    let request = http::Request::post(format!("http://{addr}/rpc/Echo/add"))
        .header("content-type", "application/json")
        .body(bytes::Bytes::from_static(br#"{"a":1,"b":2}"#))
        .unwrap();
    let response = transport.send(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(&response.body()[..], b"3");

    let c = EchoClient::new(Client::new(&format!("http://{addr}/rpc"), transport).unwrap());
    let calls = (0..32).map(|i| {
        let c = c.clone();
        async move { c.add(i, i).await.unwrap() }
    });
    let sums = futures::future::join_all(calls).await;
    assert_eq!(sums, (0..32).map(|i| i * 2).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_passed_deadline_drops_the_handler_and_says_deadline_exceeded() {
    let (addr, service) = served(ServerConfig::default()).await;
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap())
        .with_timeout(Duration::from_millis(100));
    match c.slow(10_000).await {
        // The server's own answer, not a client-side timeout.
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::DeadlineExceeded),
        other => panic!("expected deadline_exceeded from the server, got {other:?}"),
    }
    assert_eq!(service.slow_finished.load(Ordering::SeqCst), 0);
    assert_eq!(
        service.slow_dropped.load(Ordering::SeqCst),
        1,
        "the handler future was dropped when the deadline passed"
    );
    // A call that fits its deadline still works.
    c.slow(1).await.unwrap();
    assert_eq!(service.slow_finished.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_server_caps_deadlines() {
    let (addr, _) = served(ServerConfig {
        max_timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await;
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap());
    match c.slow(10_000).await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::DeadlineExceeded),
        other => panic!("expected deadline_exceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_id_reaches_the_method_and_is_echoed() {
    let (addr, _) = served(ServerConfig::default()).await;
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap());
    let named = c.with_header(
        http::HeaderName::from_static("x-request-id"),
        http::HeaderValue::from_static("req-123"),
    );
    assert_eq!(named.request_id().await.unwrap(), "req-123");
    // Without one the client generates a fresh id per call.
    let a = c.request_id().await.unwrap();
    let b = c.request_id().await.unwrap();
    assert!(!a.is_empty() && a != b);
}

#[tokio::test]
async fn connection_refused_is_a_transport_error() {
    // Bind and drop to get a port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap());
    match c.add(1, 2).await {
        Err(CallError::Transport(TransportError::Connect(_))) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
    let folded: lapdev_hrpc::HrpcError = c.add(1, 2).await.unwrap_err().into();
    assert_eq!(folded.code, Code::Unavailable);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_on_the_client() {
    // Accepts connections and reads, but never writes a response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap())
        .with_timeout(Duration::from_millis(100));
    match c.add(1, 2).await {
        Err(CallError::Transport(TransportError::Timeout(d))) => {
            assert_eq!(d, Duration::from_millis(100))
        }
        other => panic!("expected a client timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reset_connection_is_a_transport_error() {
    // Reads the request, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap());
    match c.add(1, 2).await {
        Err(CallError::Transport(TransportError::Closed(_))) => {}
        other => panic!("expected a closed connection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_non_hrpc_answer_is_a_protocol_error() {
    // A proxy answering with its own HTML error page.
    let proxy = axum::Router::new().fallback(|| async {
        (
            http::StatusCode::BAD_GATEWAY,
            [("content-type", "text/html")],
            "<html>bad gateway</html>",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, proxy).await.unwrap() });
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap());
    match c.add(1, 2).await {
        Err(CallError::Protocol(p)) => {
            assert_eq!(p.status, http::StatusCode::BAD_GATEWAY);
            assert!(p.message.contains("bad gateway"), "{}", p.message);
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_of_another_major_version_is_a_protocol_error() {
    let other = axum::Router::new().fallback(|| async {
        (
            [("content-type", "application/json"), ("hrpc-version", "2")],
            "3",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, other).await.unwrap() });
    let c = EchoClient::new(Client::http(&format!("http://{addr}/rpc")).unwrap());
    match c.add(1, 2).await {
        Err(CallError::Protocol(p)) => assert!(p.message.contains("version"), "{}", p.message),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn bad_base_urls_are_refused() {
    for url in [
        "not a url",
        "ftp://host/rpc",
        "http://host/rpc?x=1",
        "/just/a/path",
    ] {
        assert!(Client::http(url).is_err(), "{url} was accepted");
    }
}

#[test]
fn an_unusable_extra_ca_is_refused() {
    let result = HttpTransport::new(HttpTransportConfig {
        extra_root_certificates_pem: Some(b"not pem at all".to_vec()),
        ..Default::default()
    });
    assert!(result.is_err());
}
