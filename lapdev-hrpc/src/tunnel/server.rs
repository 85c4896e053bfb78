//! The server end: [`accept`] turns an upgraded WebSocket into a
//! [`TunnelTransport`] (an HRPC [`Transport`]) and the [`TunnelTask`] that drives
//! the connection.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{self, WebSocket};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, Frame};
use super::link::{self, Control, LinkConfig, WsMsg};
use super::{CloseReason, TunnelConfig};
use crate::client::{Transport, TransportError};
use crate::error::{Code, HrpcError};
use crate::server::error_response;

type Reply = Result<Response<Bytes>, TransportError>;

struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    control: Control,
    outbound: mpsc::Sender<WsMsg>,
    next_id: AtomicU64,
    max_frame_bytes: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The lock is never held across a panic-prone section; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the tunnel for `reason` (first reason wins) and fails every call in
    /// flight at once.
    fn shut_down(&self, reason: CloseReason) {
        // The reason first, so that a call refused from here on can name it.
        self.control.close(reason);
        let pending = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.pending)
        };
        let error = self.closed_error();
        for (_, tx) in pending {
            let _ = tx.send(Err(TransportError::Unavailable(error.clone())));
        }
    }

    fn closed_error(&self) -> String {
        match self.control.reason() {
            Some(r) => format!("the tunnel closed: {r}"),
            None => "the tunnel closed".to_owned(),
        }
    }

    fn on_frame(&self, frame: Frame) -> link::FrameResult {
        match frame {
            Frame::Response {
                id,
                status,
                headers,
                body,
            } => {
                let tx = self.lock().pending.remove(&id);
                match tx {
                    Some(tx) => {
                        let mut response = Response::new(body);
                        *response.status_mut() = status;
                        *response.headers_mut() = headers;
                        let _ = tx.send(Ok(response));
                    }
                    None => tracing::debug!(id, "tunnel response for a call no longer waiting"),
                }
            }
            Frame::Request { id, path, .. } => {
                // This end serves nothing; answer so that the peer does not wait.
                let error = HrpcError::new(
                    Code::Unimplemented,
                    format!("the server end of the tunnel serves no requests ({path})"),
                );
                let body = serde_json::to_vec(&error).unwrap_or_default();
                let headers = error_response(StatusCode::NOT_FOUND, &error)
                    .headers()
                    .clone();
                let bytes = frame::encode_response(id, StatusCode::NOT_FOUND, &headers, &body);
                if self.outbound.try_send(WsMsg::Binary(bytes)).is_err() {
                    tracing::debug!(id, "dropping the answer to a request from the manager");
                }
            }
            Frame::Cancel { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }
}

/// The server's handle on one tunnel: an HRPC [`Transport`] whose calls go down
/// the tunnel. Cheap to clone; all clones share the connection.
///
/// Build a client with `Client::with_shared_transport("http://tunnel",
/// Arc::new(transport))`: the path of each request's URI (with its query) is what
/// the manager's router sees, so the base URL must have no path.
#[derive(Clone)]
pub struct TunnelTransport {
    shared: Arc<Shared>,
}

impl fmt::Debug for TunnelTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelTransport")
            .field("closed", &self.close_reason())
            .finish_non_exhaustive()
    }
}

impl TunnelTransport {
    /// Closes the tunnel: calls in flight and later calls fail at once with
    /// [`TransportError::Unavailable`], and the peer gets a close frame carrying
    /// `reason`. Closing a closed tunnel does nothing.
    pub fn close(&self, reason: impl Into<String>) {
        self.shared.shut_down(CloseReason::Local(reason.into()));
    }

    /// Whether the tunnel is closed (for any reason).
    pub fn is_closed(&self) -> bool {
        self.shared.control.reason().is_some()
    }

    /// Why the tunnel closed, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.control.reason()
    }

    /// Resolves when the tunnel closes, with the reason. Does not keep the
    /// transport alive.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        self.shared.control.closed()
    }

    /// Whether `self` and `other` are handles on the same connection.
    pub fn same_tunnel(&self, other: &TunnelTransport) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Number of calls waiting for their response.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().pending.len()
    }
}

/// Removes a call's pending entry when its future is dropped before the answer
/// (the client's deadline passed, or the caller gave up) and tells the manager.
struct PendingGuard {
    shared: Arc<Shared>,
    id: u64,
    queued: bool,
    done: bool,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_pending = self.shared.lock().pending.remove(&self.id).is_some();
        if was_pending && self.queued {
            // Best effort: a full queue means the manager simply finishes the work
            // and its answer is dropped here.
            let _ = self
                .shared
                .outbound
                .try_send(WsMsg::Binary(frame::encode_cancel(self.id)));
        }
    }
}

impl Transport for TunnelTransport {
    fn send(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Response<Bytes>, TransportError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (parts, body) = request.into_parts();
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let bytes = frame::encode_request(id, &parts.method, &path, &parts.headers, &body);
            if bytes.len() > shared.max_frame_bytes {
                return Err(TransportError::Other(
                    format!(
                        "the request frame of {} bytes exceeds the tunnel's limit of {} bytes",
                        bytes.len(),
                        shared.max_frame_bytes
                    )
                    .into(),
                ));
            }
            let (tx, mut rx) = oneshot::channel();
            {
                let mut state = shared.lock();
                if state.closed {
                    drop(state);
                    return Err(TransportError::Unavailable(shared.closed_error()));
                }
                state.pending.insert(id, tx);
            }
            let mut guard = PendingGuard {
                shared: shared.clone(),
                id,
                queued: false,
                done: false,
            };
            let queue = shared.outbound.send(WsMsg::Binary(bytes));
            tokio::pin!(queue);
            let reply = loop {
                tokio::select! {
                    r = &mut rx => break r,
                    sent = &mut queue, if !guard.queued => {
                        if sent.is_err() {
                            // The connection loop is gone.
                            shared.shut_down(CloseReason::Dropped);
                            break Ok(Err(TransportError::Unavailable(shared.closed_error())));
                        }
                        guard.queued = true;
                    }
                }
            };
            guard.done = true;
            match reply {
                Ok(r) => r,
                // The sender was dropped without an answer: only when shutting down.
                Err(_) => Err(TransportError::Unavailable(shared.closed_error())),
            }
        })
    }
}

/// Drives one accepted tunnel: run it (spawn it, or await it inside the
/// `on_upgrade` callback) for as long as the tunnel should live.
///
/// Dropping the task, or the future of [`TunnelTask::run`], closes the tunnel.
#[must_use = "the tunnel does nothing unless its task runs"]
pub struct TunnelTask {
    socket: WebSocket,
    outbound: mpsc::Receiver<WsMsg>,
    shared: Arc<Shared>,
    config: LinkConfig,
    guard: CloseOnDrop,
}

impl fmt::Debug for TunnelTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelTask")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Closes the tunnel when the task is dropped, whether it ran or not.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.shut_down(CloseReason::Dropped);
    }
}

impl TunnelTask {
    /// Serves the tunnel until it closes, and returns why: closed here
    /// ([`TunnelTransport::close`], e.g. replaced by a newer connection), by the
    /// manager, for a ping timeout, a protocol violation or an I/O error.
    pub async fn run(self) -> CloseReason {
        let TunnelTask {
            socket,
            outbound,
            shared,
            config,
            guard: _guard,
        } = self;
        let socket = socket
            .map(|m| m.map(from_axum))
            .with(|m: WsMsg| futures::future::ready(Ok::<_, axum::Error>(into_axum(m))));
        let socket = Box::pin(socket);
        let (reason, closing) = link::drive(
            socket,
            outbound,
            &shared.control,
            config,
            map_axum_error,
            |f| shared.on_frame(f),
        )
        .await;
        shared.shut_down(reason.clone());
        match &reason {
            CloseReason::Local(_) | CloseReason::Peer { .. } => {
                tracing::info!(reason = %reason, "tunnel closed");
            }
            _ => tracing::warn!(reason = %reason, "tunnel closed"),
        }
        closing.finish(&reason).await;
        reason
    }
}

/// Takes over an upgraded WebSocket as the server end of a tunnel.
///
/// Returns the transport to call the manager through (register it, e.g. in a
/// [`TunnelRegistry`](super::TunnelRegistry)) and the task that drives the
/// connection, which must run for the tunnel to work. Authentication happens
/// before the upgrade and is the application's job; apply the frame limit to the
/// upgrade with [`TunnelConfig::configure_upgrade`].
pub fn accept(socket: WebSocket, config: TunnelConfig) -> (TunnelTransport, TunnelTask) {
    let (tx, rx) = mpsc::channel(link::OUTBOUND_QUEUE);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            pending: HashMap::new(),
            closed: false,
        }),
        control: Control::default(),
        outbound: tx,
        next_id: AtomicU64::new(1),
        max_frame_bytes: config.max_frame_bytes,
    });
    let transport = TunnelTransport {
        shared: shared.clone(),
    };
    let task = TunnelTask {
        socket,
        outbound: rx,
        guard: CloseOnDrop(shared.clone()),
        shared,
        config: LinkConfig {
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            max_frame_bytes: config.max_frame_bytes,
        },
    };
    (transport, task)
}

fn from_axum(m: ws::Message) -> WsMsg {
    match m {
        ws::Message::Binary(b) => WsMsg::Binary(b),
        ws::Message::Text(_) => WsMsg::Text,
        ws::Message::Ping(b) => WsMsg::Ping(b),
        ws::Message::Pong(b) => WsMsg::Pong(b),
        ws::Message::Close(c) => WsMsg::Close(c.map(|c| (c.code, c.reason.as_str().to_owned()))),
    }
}

fn into_axum(m: WsMsg) -> ws::Message {
    match m {
        WsMsg::Binary(b) => ws::Message::Binary(b),
        WsMsg::Text => ws::Message::Text(ws::Utf8Bytes::default()),
        WsMsg::Ping(b) => ws::Message::Ping(b),
        WsMsg::Pong(b) => ws::Message::Pong(b),
        WsMsg::Close(c) => ws::Message::Close(c.map(|(code, reason)| ws::CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

fn map_axum_error(e: axum::Error) -> CloseReason {
    super::io_reason(e.into_inner())
}
