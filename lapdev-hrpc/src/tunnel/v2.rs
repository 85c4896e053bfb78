//! Version 2's HTTP/2 over the tunnel's byte stream ([`super::stream`]): the
//! manager is the HTTP/2 server (its router serves every request), the server
//! end is the HTTP/2 client. See the crate docs of [`super`] for the protocol.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use axum::body::Body;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Sink, Stream, StreamExt as _};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::coalesce::{Coalesced, Gated};
use super::link::{self, Closing, Control, LinkConfig, WsMsg};
use super::stream::{self, WsIo};
use super::{CloseReason, StreamLimits};

/// Runs the connection loop with HTTP/2 on its byte stream (`http`) until one of
/// them ends, and returns why; the HTTP/2 side is dropped (failing every stream
/// still open) before this returns.
pub(crate) async fn drive<S, E, F, Fut>(
    socket: S,
    control: &Control,
    config: LinkConfig,
    map_err: fn(E) -> CloseReason,
    http: F,
) -> (
    CloseReason,
    Closing<futures::stream::SplitSink<S, WsMsg>, futures::stream::SplitStream<S>>,
)
where
    S: Stream<Item = Result<WsMsg, E>> + Sink<WsMsg, Error = E> + Send + Unpin,
    E: Send,
    F: FnOnce(WsIo) -> Fut,
    Fut: Future<Output = CloseReason>,
{
    let (io, to_stream, outbound) = stream::pair();
    // Every part of the session runs in this one task; their wakes of each
    // other are absorbed (see `coalesce`).
    Coalesced::new(async move {
        let link = link::drive(socket, outbound, control, config, map_err, to_stream);
        tokio::pin!(link);
        {
            // HTTP/2 is polled only when something it waits for woke it.
            let http = pin!(http(io));
            tokio::select! {
                biased;
                done = &mut link => return done,
                reason = Gated::new(http, true) => {
                    control.close(reason);
                }
            }
        }
        link.await
    })
    .await
}

/// Runs hyper's per-stream tasks (the router serving one request and sending
/// its response) for the manager end.
///
/// A stream's task is first polled once right away, inside the session task:
/// an HRPC handler that answers without waiting (most do) is done then, its
/// response already queued on the connection, with no task spawned and no
/// hand-off between tasks each way. A task that has to wait (a Kubernetes
/// call, a stream's body) is spawned into a [`JoinSet`] owned by the session,
/// so handlers that wait run in parallel, and when the session ends (or its
/// future is dropped) every one of them is aborted with it, rather than
/// waiting for a wake-up that a vanished connection never sends.
#[derive(Clone, Default)]
pub(crate) struct SessionExecutor(Arc<Mutex<JoinSet<()>>>);

impl<F> hyper::rt::Executor<F> for SessionExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut fut = Box::pin(fut);
        // No waker is kept from this poll: if the task waits, the spawned
        // task polls it again at once and registers its own. A panic stays in
        // the request (its stream is reset), as it would in a spawned task.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fut.as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        }));
        match polled {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(())) => return,
            Err(_) => {
                tracing::error!("a tunnel request's handler panicked");
                return;
            }
        }
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished tasks so the set holds only live ones.
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }
}

impl SessionExecutor {
    /// Aborts every task still running.
    pub(crate) fn abort_all(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
    }
}

/// Runs hyper's client-side tasks (the HTTP/2 connection, and per request the
/// task that waits for the response and the one that sends the request body)
/// inside the session's own task instead of spawning them: they only move
/// frames between the caller and the byte stream, and keeping them beside the
/// connection loop saves a cross-task wake-up (and on a multi-threaded
/// runtime, a thread wake-up) each way per call. Dropping the session drops
/// them all.
#[derive(Clone)]
pub(crate) struct InlineExecutor(mpsc::UnboundedSender<BoxFuture<'static, ()>>);

impl<F> hyper::rt::Executor<F> for InlineExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // A closed receiver means the session ended: the task is dropped with it.
        let _ = self.0.send(Box::pin(fut));
    }
}

/// Polls `main` and every task given to the returned executor, all in the
/// calling task, until `main` completes (the remaining tasks are dropped).
async fn run_inline<T, Fut>(main: impl FnOnce(InlineExecutor) -> Fut) -> T
where
    Fut: Future<Output = T>,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut main = pin!(main(InlineExecutor(tx)));
    let mut tasks = FuturesUnordered::new();
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = main.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        while let Poll::Ready(Some(task)) = rx.poll_recv(cx) {
            tasks.push(task);
        }
        while let Poll::Ready(Some(())) = tasks.poll_next_unpin(cx) {}
        Poll::Pending
    })
    .await
}

/// The server end: an HTTP/2 client on `io`. The request handle is published
/// in `sender` once the connection preface is written.
pub(crate) async fn client(
    io: WsIo,
    limits: StreamLimits,
    sender: &watch::Sender<Option<SendRequest<Body>>>,
) -> CloseReason {
    run_inline(|executor| client_on(io, limits, sender, executor)).await
}

async fn client_on(
    io: WsIo,
    limits: StreamLimits,
    sender: &watch::Sender<Option<SendRequest<Body>>>,
    executor: InlineExecutor,
) -> CloseReason {
    let mut builder = hyper::client::conn::http2::Builder::new(executor);
    builder
        .adaptive_window(false)
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .max_send_buf_size(limits.stream_window_bytes as usize)
        .max_header_list_size(limits.max_header_list_bytes)
        .max_frame_size(frame_size(&limits));
    match builder.handshake(TokioIo::new(io)).await {
        Err(e) => CloseReason::Protocol(format!("HTTP/2 handshake failed: {}", chain(&e))),
        Ok((send, connection)) => {
            sender.send_replace(Some(send));
            match connection.await {
                Ok(()) => CloseReason::Io("the HTTP/2 connection ended".into()),
                Err(e) => http_reason(&e),
            }
        }
    }
}

/// The manager end: an HTTP/2 server on `io` that serves every stream with
/// `router`.
pub(crate) async fn server(io: WsIo, limits: StreamLimits, router: axum::Router) -> CloseReason {
    let executor = SessionExecutor::default();
    let _abort = AbortOnDrop(executor.clone());
    let mut builder = hyper::server::conn::http2::Builder::new(executor);
    builder
        .adaptive_window(false)
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .max_send_buf_size(limits.stream_window_bytes as usize)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        .max_frame_size(frame_size(&limits))
        // Version 1's responses carried no `Date` either; it changes every
        // second, so HPACK cannot index it and it costs every response.
        .auto_date_header(false);
    let service = TowerToHyperService::new(router);
    match builder.serve_connection(TokioIo::new(io), service).await {
        Ok(()) => CloseReason::Io("the HTTP/2 connection ended".into()),
        Err(e) => http_reason(&e),
    }
}

/// The frame size to announce: `max_frame_bytes` within the range HTTP/2
/// allows (RFC 9113 §6.5.2; h2 panics outside it).
fn frame_size(limits: &StreamLimits) -> u32 {
    limits.max_frame_bytes.clamp(16 * 1024, (1 << 24) - 1)
}

/// Aborts a session's stream tasks when the HTTP/2 side ends or is dropped.
struct AbortOnDrop(SessionExecutor);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}

fn http_reason(e: &hyper::Error) -> CloseReason {
    if e.is_parse() || e.is_user() {
        CloseReason::Protocol(format!("HTTP/2: {}", chain(e)))
    } else {
        CloseReason::Io(format!("HTTP/2: {}", chain(e)))
    }
}

/// An error with its sources, one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
