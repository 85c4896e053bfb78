//! Dialing out through an HTTP CONNECT proxy: HRPC calls and the tunnel's
//! WebSocket both go through the proxy the rules name, and `NO_PROXY` hosts
//! bypass it. The proxy is a few lines written for the test: it answers
//! `CONNECT host:port`, records the target, and splices bytes both ways.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use common::{EchoClient, EchoImpl};
use lapdev_hrpc::proxy::ProxyRules;
use lapdev_hrpc::tunnel::{self, TunnelClientConfig};
use lapdev_hrpc::{Client, HttpTransport, HttpTransportConfig, ServerConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

/// A CONNECT-only proxy; returns its URL and the targets it tunnelled to.
async fn connect_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                // Skip the rest of the request head.
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).await.unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                    let mut s = reader.into_inner();
                    let _ = s
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                };
                log.lock().unwrap().push(target.to_owned());
                let mut upstream = tokio::net::TcpStream::connect(target).await.unwrap();
                let mut client = reader.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn hrpc_calls_go_through_the_proxy_unless_no_proxy_says_otherwise() {
    let service = Arc::new(EchoImpl::default());
    let addr = common::serve(common::router(service, ServerConfig::default())).await;
    let (proxy, seen) = connect_proxy().await;

    let via_proxy = HttpTransport::new(HttpTransportConfig {
        proxy: Some(ProxyRules::new(None, Some(&proxy), "")),
        ..Default::default()
    })
    .unwrap();
    let c = EchoClient::new(Client::new(&format!("http://{addr}/rpc"), via_proxy).unwrap());
    assert_eq!(c.echo("through".into()).await.unwrap(), "through");
    assert_eq!(*seen.lock().unwrap(), [addr.to_string()]);

    let bypass = HttpTransport::new(HttpTransportConfig {
        proxy: Some(ProxyRules::new(None, Some(&proxy), "127.0.0.1")),
        ..Default::default()
    })
    .unwrap();
    let c = EchoClient::new(Client::new(&format!("http://{addr}/rpc"), bypass).unwrap());
    assert_eq!(c.echo("direct".into()).await.unwrap(), "direct");
    assert_eq!(seen.lock().unwrap().len(), 1, "NO_PROXY host went direct");
}

#[tokio::test]
async fn the_tunnel_websocket_is_opened_through_the_proxy() {
    // Served under /rpc by `common::serve`.
    let app = axum::Router::new().route(
        "/_tunnel",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            // Chooses the protocol version as the real server does, so the
            // client needs exactly one connection (an old server that chooses
            // none costs a second one).
            tunnel::TunnelConfig::default()
                .configure_upgrade(ws)
                .on_upgrade(|mut socket| async move {
                    // Hold the connection until the client goes away.
                    while let Some(Ok(_)) = socket.recv().await {}
                })
        }),
    );
    let addr = common::serve(app).await;
    let (proxy, seen) = connect_proxy().await;
    let session = tokio::time::timeout(
        Duration::from_secs(10),
        tunnel::connect(
            &format!("http://{addr}/rpc/_tunnel"),
            http::HeaderMap::new(),
            axum::Router::new(),
            TunnelClientConfig {
                proxy: Some(ProxyRules::new(None, Some(&proxy), "")),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the handshake finished")
    .expect("the tunnel opened through the proxy");
    assert_eq!(*seen.lock().unwrap(), [addr.to_string()]);
    drop(session);
}

#[tokio::test]
async fn a_proxy_that_refuses_fails_the_tunnel_with_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let result = tunnel::connect(
        "http://lapdev.invalid/rpc/_tunnel",
        http::HeaderMap::new(),
        axum::Router::new(),
        TunnelClientConfig {
            proxy: Some(ProxyRules::new(None, Some(&proxy), "")),
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .await;
    match result {
        Err(tunnel::TunnelConnectError::Connect(_)) => {}
        Err(other) => panic!("expected a connect error, got {other}"),
        Ok(_) => panic!("a refusing proxy must fail the tunnel"),
    }
}
