//! Hostile and slow clients against the real listener: metrics labels from a
//! closed set, `/metrics` access, and the connection timeouts.

mod common;

use std::time::Duration;

use common::TestServer;
use lapdev_server::config::LimitsConfig;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Sends one raw HTTP/1.1 request on a fresh connection and returns the
/// status and body.
async fn raw_get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn request_series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("lapdev_http_requests_total{"))
        .count()
}

/// Sends `count` requests with made-up methods and paths on one keep-alive
/// connection, reading each response head and body before the next.
async fn junk_requests(addr: std::net::SocketAddr, count: usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    for i in 0..count {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let method = format!("M{}", &random[..12]);
        let path = format!("/rpc/X{}/y{i}", &random[12..]);
        let path = if i % 3 == 0 {
            format!("/nope/{i}")
        } else {
            path
        };
        write
            .write_all(format!("{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await.unwrap();
    }
}

#[tokio::test]
async fn ten_thousand_random_methods_and_paths_leave_the_series_bounded() {
    let t = TestServer::embedded().await;
    // Warm up: every label combination these junk requests can produce.
    junk_requests(t.addr, 20).await;
    let (status, before) = raw_get(t.addr, "/metrics", "").await;
    assert_eq!(status, 200);
    junk_requests(t.addr, 10_000).await;
    let (_, after) = raw_get(t.addr, "/metrics", "").await;
    // Other tests in this process share the recorder; they add at most a few
    // series of their own, never thousands.
    let grown = request_series(&after).saturating_sub(request_series(&before));
    assert!(
        grown <= 10,
        "{grown} new series after 10,000 junk requests:\n{after}"
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("lapdev_http_requests_total{")
                && l.contains("method=\"other\"")
                && l.contains("route=\"other\"")),
        "{after}"
    );
    assert!(!after.contains("M1"), "an invented method became a label");
}

#[tokio::test]
async fn metrics_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me-please\n").unwrap();
    let t = TestServer::embedded_with(LimitsConfig {
        metrics_token_file: Some(token_file),
        ..LimitsConfig::default()
    })
    .await;
    assert_eq!(raw_get(t.addr, "/metrics", "").await.0, 401);
    assert_eq!(
        raw_get(t.addr, "/metrics", "authorization: Bearer wrong\r\n")
            .await
            .0,
        401
    );
    let (status, body) = raw_get(
        t.addr,
        "/metrics",
        "authorization: Bearer scrape-me-please\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("lapdev_connected_clusters"));
}

#[tokio::test]
async fn metrics_on_their_own_listener() {
    let t = TestServer::embedded_with(LimitsConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..LimitsConfig::default()
    })
    .await;
    let metrics = t.server.metrics_addr.expect("a metrics listener");
    // Not on the public port any more (an unknown path there).
    assert_eq!(raw_get(t.addr, "/metrics", "").await.0, 404);
    let (status, body) = raw_get(metrics, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("lapdev_connected_clusters"));
    // And only metrics there.
    assert_eq!(raw_get(metrics, "/healthz", "").await.0, 404);
}

#[tokio::test]
async fn a_half_sent_header_is_cut_off_while_others_are_served() {
    let t = TestServer::embedded_with(LimitsConfig {
        header_read_timeout_secs: 1,
        ..LimitsConfig::default()
    })
    .await;
    let mut slow = TcpStream::connect(t.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    // Meanwhile other clients are served.
    assert_eq!(raw_get(t.addr, "/healthz", "").await, (200, "ok".into()));
    // The server closes the slow connection; without a header read timeout
    // this read would wait for ever (bounded here by a generous limit).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the half-sent request was never cut off");
    assert_eq!(raw_get(t.addr, "/healthz", "").await.0, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let t = TestServer::embedded_with(LimitsConfig {
        idle_timeout_secs: 1,
        // So only the idle rule can close it.
        header_read_timeout_secs: 3600,
        ..LimitsConfig::default()
    })
    .await;
    let mut idle = TcpStream::connect(t.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle connection was kept open");
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn the_connection_cap_holds_further_clients_until_a_slot_frees() {
    let t = TestServer::embedded_with(LimitsConfig {
        max_connections: 1,
        ..LimitsConfig::default()
    })
    .await;
    let mut first = TcpStream::connect(t.addr).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // The second client is not served while the first holds the only slot
    // (without the cap it would be answered within milliseconds)...
    let mut second = tokio::spawn(raw_get(t.addr, "/healthz", ""));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "a second connection was served beyond the cap"
    );
    // ...and is once it is freed.
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("the second client was served once the slot freed")
        .unwrap();
    assert_eq!(served.0, 200);
}
