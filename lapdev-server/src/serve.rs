//! The accept loop: HTTP/1.1 and HTTP/2 (by ALPN or preface) over TCP or TLS,
//! with the limits that keep hostile and slow clients from holding sockets.
//!
//! - **Connection cap**: at most `max_connections` open connections; the loop
//!   stops accepting while the cap is reached (the kernel backlog holds the
//!   rest). A connection's slot is held by its socket, so an upgraded manager
//!   tunnel keeps its slot for as long as it is open.
//! - **Budgets per class** ([`crate::conn_class`]): a connection's first request
//!   classes it (tunnel, api, unauthenticated); each class has its own cap below
//!   the total, so a flood of one cannot take the tunnels' connections.
//! - **TLS handshakes**: at most `max_tls_handshakes` in progress, each given
//!   `tls_handshake_timeout`; handshakes run off the accept loop.
//! - **Header read timeout** (HTTP/1.1): a client must send a request's headers
//!   within `header_read_timeout`, which also bounds an idle keep-alive
//!   connection waiting for its next request.
//! - **Idle timeout** (both protocols): a connection that moved no bytes for
//!   `idle_timeout` while no request was in flight is shut down gracefully.
//!   A request is in flight until its response body has been sent, so a long
//!   stream is never idle by this rule. Once a connection is upgraded (the
//!   tunnel), it leaves hyper and this loop; the tunnel's own pings watch it.
//!
//! Unary request timeouts are a router layer, not a connection rule: see
//! [`crate::unary_timeout`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::auth::layer::ClientAddr;
use crate::conn_class::{Admission, ClassBudgets, ClassSlot, ConnClass};

/// The connection rules; see the module docs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// HTTP/1.1 header read timeout.
    pub header_read_timeout: Duration,
    /// Close a connection idle for this long.
    pub idle_timeout: Duration,
    /// TLS handshake timeout.
    pub tls_handshake_timeout: Duration,
    /// Handshakes in progress at once.
    pub max_tls_handshakes: usize,
    /// Open connections at once.
    pub max_connections: usize,
    /// The budgets of the connection classes.
    pub classes: ClassBudgets,
    /// Terminate TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let limits = crate::config::LimitsConfig::default();
        ServeConfig::from_limits(&limits, None)
    }
}

impl ServeConfig {
    /// The rules set by the server's flags.
    pub fn from_limits(
        limits: &crate::config::LimitsConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Self {
            header_read_timeout: limits.header_read_timeout(),
            idle_timeout: limits.idle_timeout(),
            tls_handshake_timeout: limits.tls_handshake_timeout(),
            max_tls_handshakes: usize::try_from(limits.max_tls_handshakes).unwrap_or(usize::MAX),
            max_connections: usize::try_from(limits.max_connections).unwrap_or(usize::MAX),
            classes: ClassBudgets::new(
                usize::try_from(limits.max_tunnel_connections).unwrap_or(usize::MAX),
                usize::try_from(limits.max_api_connections).unwrap_or(usize::MAX),
                usize::try_from(limits.max_unauthenticated_connections).unwrap_or(usize::MAX),
            ),
            tls,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish and returns when every connection
/// this loop still owns has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let handshakes = Arc::new(Semaphore::new(config.max_tls_handshakes.max(1)));
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; all dropped means all done.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let config = Arc::new(config);
    tokio::pin!(shutdown);
    loop {
        let Some(slot) = wait_or_stop(connections.clone().acquire_owned(), &mut shutdown).await
        else {
            break;
        };
        let Ok(slot) = slot else { break };
        let handshake = match &tls {
            Some(_) => {
                let Some(Ok(p)) =
                    wait_or_stop(handshakes.clone().acquire_owned(), &mut shutdown).await
                else {
                    break;
                };
                Some(p)
            }
            None => None,
        };
        let Some(accepted) = wait_or_stop(listener.accept(), &mut shutdown).await else {
            break;
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // TCP_NODELAY and TCP_NOTSENT_LOWAT: the tunnel's hop (and any other
        // HTTP/2 traffic) keeps its queues in user space, where they are
        // prioritised and flow-controlled.
        lapdev_hrpc::tunnel::tune_tcp(&tcp);
        let router = router.clone();
        let config = config.clone();
        let tls = tls.clone();
        let stop = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let activity = Arc::new(Activity::new());
            let class = Arc::new(ClassSlot::default());
            let tcp = Tracked {
                inner: tcp,
                activity: activity.clone(),
                _slot: slot,
                _class: class.clone(),
            };
            match tls {
                Some(acceptor) => {
                    let handshake_result =
                        tokio::time::timeout(config.tls_handshake_timeout, acceptor.accept(tcp))
                            .await;
                    drop(handshake);
                    match handshake_result {
                        Ok(Ok(io)) => {
                            serve_connection(io, peer, router, &config, activity, class, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(tcp, peer, router, &config, activity, class, stop).await,
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
}

async fn wait_or_stop<T>(
    work: impl Future<Output = T>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => None,
        v = work => Some(v),
    }
}

async fn serve_connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    router: Router,
    config: &ServeConfig,
    activity: Arc<Activity>,
    class: Arc<ClassSlot>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let service = {
        let activity = activity.clone();
        let budgets = config.classes.clone();
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let guard = InFlight::start(activity.clone());
            let router = router.clone();
            let admission = class.admit(&budgets, &request);
            let class = class.clone();
            async move {
                if let Admission::Full(full) = admission {
                    tracing::debug!(%peer, class = full.as_str(), "connection class full; refused");
                    let mut response = axum::response::IntoResponse::into_response(
                        lapdev_hrpc::HrpcError::unavailable(format!(
                            "the server holds as many {} connections as it allows; try again later",
                            full.as_str()
                        )),
                    );
                    close_after(&mut response);
                    return Ok::<_, std::convert::Infallible>(response);
                }
                let mut request = request.map(Body::new);
                // The socket's peer, for the audit log and sign-in slow-down
                // (`x-forwarded-for` is believed only from trusted proxies).
                request
                    .extensions_mut()
                    .insert(ConnectInfo(ClientAddr(peer)));
                let mut response = router
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {});
                if class.class() == Some(ConnClass::Tunnel)
                    && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    // A refused upgrade holds no tunnel slot.
                    class.release();
                    close_after(&mut response);
                }
                // In flight until the body is sent: streams are never idle.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(GuardedBody {
                        body,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let idle_check = activity.idle_deadline(config.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(idle_check), if !closing => {
                if activity.is_idle(config.idle_timeout) {
                    tracing::debug!("closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Makes the connection close after `response` (HTTP/1.1).
fn close_after(response: &mut http::Response<Body>) {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
}

/// When a connection last moved bytes, and how many requests are in flight.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When the connection would become idle if nothing happens until then.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let from_last = self.last() + idle;
        // With requests in flight, look again a full period later.
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            from_last.max(Instant::now() + idle)
        } else {
            from_last
        }
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.last().elapsed() >= idle
    }
}

/// Counts one request as in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct GuardedBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that records activity and holds its connection slot.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
    /// The connection's class slot, held as long as the socket (also after an
    /// upgrade).
    _class: Arc<ClassSlot>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
