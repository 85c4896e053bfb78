//! Two reference rows of the tunnel bench, each testing one explanation of
//! version 2's cost; neither is a transport the crate ships.
//!
//! - [`Spread`]: calls spread round-robin over several version 2 tunnels
//!   (several TCP connections and HTTP/2 sessions), against the explanation
//!   "one connection carries everything".
//! - [`Http2Tcp`]: HRPC over one plain HTTP/2 connection on loopback TCP
//!   (hyper on both ends, axum serving), with no WebSocket, against the
//!   explanation "the WebSocket layer's copies".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::client::conn::http2::SendRequest;
use lapdev_hrpc::tunnel::{self, TunnelTransport};
use lapdev_hrpc::{Transport, TransportError};

/// Calls spread round-robin over several tunnels.
pub struct Spread {
    tunnels: Vec<TunnelTransport>,
    next: AtomicUsize,
}

impl Spread {
    pub fn new(tunnels: Vec<TunnelTransport>) -> Self {
        assert!(!tunnels.is_empty());
        Self {
            tunnels,
            next: AtomicUsize::new(0),
        }
    }
}

impl Transport for Spread {
    fn send(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Response<Bytes>, TransportError>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.tunnels.len();
        self.tunnels[i].send(request)
    }
}

/// HRPC over one HTTP/2 connection on TCP, both ends with version 2's HTTP/2
/// settings (`limits`: windows, frame size, no adaptive window) and hyper's
/// own task per stream.
pub struct Http2Tcp(SendRequest<Body>);

impl Http2Tcp {
    /// Serves `router` over HTTP/2 (prior knowledge) with `limits`, and
    /// connects to it.
    pub async fn start(router: axum::Router, limits: tunnel::StreamLimits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tunnel::tune_tcp(&tcp);
                let mut builder =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                builder
                    .adaptive_window(false)
                    .initial_stream_window_size(limits.stream_window_bytes)
                    .initial_connection_window_size(limits.connection_window_bytes)
                    .max_send_buf_size(limits.stream_window_bytes as usize)
                    .max_concurrent_streams(limits.max_concurrent_streams)
                    .max_frame_size(limits.max_frame_bytes);
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let connection =
                    builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        Self::connect(addr, limits).await
    }

    async fn connect(addr: SocketAddr, limits: tunnel::StreamLimits) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tunnel::tune_tcp(&tcp);
        let (send, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .adaptive_window(false)
                .initial_stream_window_size(limits.stream_window_bytes)
                .initial_connection_window_size(limits.connection_window_bytes)
                .max_send_buf_size(limits.stream_window_bytes as usize)
                .max_frame_size(limits.max_frame_bytes)
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        Self(send)
    }
}

impl Transport for Http2Tcp {
    fn send(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Response<Bytes>, TransportError>> {
        let mut send = self.0.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("http://bench{path}")
                .parse()
                .map_err(|e| TransportError::Other(Box::new(e)))?;
            let response = send
                .send_request(Request::from_parts(parts, Body::from(body)))
                .await
                .map_err(|e| TransportError::Closed(Box::new(e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| TransportError::Closed(Box::new(e)))?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        })
    }
}
