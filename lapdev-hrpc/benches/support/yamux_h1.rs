//! Prototype for the tunnel bench only (issue 14's alternative to HTTP/2):
//! HRPC as HTTP/1.1 on yamux streams (the `yamux` crate) over one TCP
//! connection, the manager end serving each inbound stream with its router,
//! the server end keeping a pool of keep-alive HTTP/1.1 connections, one per
//! yamux stream. It runs on TCP directly, without the WebSocket the real
//! tunnel rides on, so it measures the best such a design could do.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use lapdev_hrpc::tunnel::tune_tcp;
use lapdev_hrpc::{Transport, TransportError};
use tokio::sync::{mpsc, oneshot};

/// A tokio socket as the `futures::io` socket yamux wants.
struct FuturesIo<T>(T);

impl<T: tokio::io::AsyncRead + Unpin> futures::io::AsyncRead for FuturesIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut b = tokio::io::ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut b) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(b.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> futures::io::AsyncWrite for FuturesIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A yamux stream as the tokio socket hyper's `TokioIo` wants.
struct TokioStream(yamux::Stream);

impl tokio::io::AsyncRead for TokioStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let slice = buf.initialize_unfilled();
        match futures::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, slice) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for TokioStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

/// The manager end: every yamux stream of every accepted connection is an
/// HTTP/1.1 connection served by `router`.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tune_tcp(&tcp);
            let router = router.clone();
            tokio::spawn(async move {
                let mut conn = yamux::Connection::new(
                    FuturesIo(tcp),
                    yamux::Config::default(),
                    yamux::Mode::Server,
                );
                while let Some(Ok(stream)) =
                    futures::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await
                {
                    let service = TowerToHyperService::new(router.clone());
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(TokioStream(stream)), service),
                    );
                }
            });
        }
    });
    addr
}

type Opened = oneshot::Sender<yamux::Stream>;

/// The server end: a pool of HTTP/1.1 connections, each on its own yamux
/// stream of one TCP connection.
pub struct YamuxTransport {
    open: mpsc::UnboundedSender<Opened>,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl YamuxTransport {
    /// Connects to [`serve`]'s `addr` and drives the yamux connection in a task.
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tune_tcp(&tcp);
        let mut conn = yamux::Connection::new(
            FuturesIo(tcp),
            yamux::Config::default(),
            yamux::Mode::Client,
        );
        let (open, mut requests) = mpsc::unbounded_channel::<Opened>();
        tokio::spawn(async move {
            let mut waiting: VecDeque<Opened> = VecDeque::new();
            futures::future::poll_fn(move |cx| {
                loop {
                    while let Poll::Ready(Some(reply)) = requests.poll_recv(cx) {
                        waiting.push_back(reply);
                    }
                    while !waiting.is_empty() {
                        match conn.poll_new_outbound(cx) {
                            Poll::Ready(Ok(stream)) => {
                                if let Some(reply) = waiting.pop_front() {
                                    let _ = reply.send(stream);
                                }
                            }
                            Poll::Ready(Err(_)) => return Poll::Ready(()),
                            Poll::Pending => break,
                        }
                    }
                    // Polling for inbound streams drives the connection's I/O.
                    match conn.poll_next_inbound(cx) {
                        Poll::Ready(Some(Ok(_))) => continue,
                        Poll::Ready(_) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await
        });
        YamuxTransport {
            open,
            idle: Arc::default(),
        }
    }
}

fn closed(e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
    TransportError::Closed(Box::new(e))
}

impl Transport for YamuxTransport {
    fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        let open = self.open.clone();
        let idle = self.idle.clone();
        Box::pin(async move {
            let pooled = idle.lock().unwrap().pop();
            let mut sender = match pooled {
                Some(s) => s,
                None => {
                    let (tx, rx) = oneshot::channel();
                    open.send(tx)
                        .map_err(|_| TransportError::Unavailable("yamux ended".into()))?;
                    let stream = rx
                        .await
                        .map_err(|_| TransportError::Unavailable("yamux ended".into()))?;
                    let (sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(TokioStream(stream)))
                            .await
                            .map_err(closed)?;
                    tokio::spawn(conn);
                    sender
                }
            };
            let (mut parts, body) = request.into_parts();
            parts.uri = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .unwrap();
            parts
                .headers
                .insert(http::header::HOST, http::HeaderValue::from_static("tunnel"));
            sender.ready().await.map_err(closed)?;
            let response = sender
                .send_request(http::Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(closed)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(closed)?.to_bytes();
            idle.lock().unwrap().push(sender);
            Ok(http::Response::from_parts(parts, body))
        })
    }
}
