//! The server end: [`accept`] turns an upgraded WebSocket into a
//! [`TunnelTransport`] (an HRPC [`Transport`]) and the [`TunnelTask`] that drives
//! the connection, in the protocol version the upgrade negotiated.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ws::{self, WebSocket};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::client::conn::http2::SendRequest;
use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{self, Frame};
use super::link::{self, Control, LinkConfig, WsMsg};
use super::{CloseReason, PROTOCOL_V2, StreamLimits, TunnelConfig, v2};
use crate::client::{Transport, TransportError};
use crate::error::{Code, HrpcError};
use crate::server::error_response;

type Reply = Result<Response<Bytes>, TransportError>;

struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

struct Shared {
    control: Control,
    max_frame_bytes: usize,
    kind: Kind,
}

enum Kind {
    V1(V1),
    V2(V2),
}

/// Version 1: calls waiting for their response frame, by id.
struct V1 {
    state: Mutex<State>,
    outbound: mpsc::Sender<WsMsg>,
    next_id: AtomicU64,
}

/// Version 2: the HTTP/2 request handle, once the connection preface is out.
struct V2 {
    sender: watch::Sender<Option<SendRequest<Body>>>,
    in_flight: AtomicUsize,
    limits: StreamLimits,
}

impl Shared {
    fn v1(&self) -> Option<&V1> {
        match &self.kind {
            Kind::V1(v1) => Some(v1),
            Kind::V2(_) => None,
        }
    }

    /// Closes the tunnel for `reason` (first reason wins) and fails every call in
    /// flight at once.
    fn shut_down(&self, reason: CloseReason) {
        // The reason first, so that a call refused from here on can name it.
        self.control.close(reason);
        // Version 2's streams fail when the HTTP/2 connection is dropped and
        // its waiting calls watch `control`; version 1's calls are failed here.
        let Some(v1) = self.v1() else { return };
        let pending = {
            let mut state = v1.lock();
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

    fn on_frame(&self, v1: &V1, frame: Frame) -> link::FrameResult {
        match frame {
            Frame::Response {
                id,
                status,
                headers,
                body,
            } => {
                let tx = v1.lock().pending.remove(&id);
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
                if v1.outbound.try_send(WsMsg::Binary(bytes)).is_err() {
                    tracing::debug!(id, "dropping the answer to a request from the manager");
                }
            }
            Frame::Cancel { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }
}

impl V1 {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The lock is never held across a panic-prone section; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Number of calls waiting for their response (version 2: requests whose
    /// response has not arrived yet, streaming or not).
    pub fn in_flight(&self) -> usize {
        match &self.shared.kind {
            Kind::V1(v1) => v1.lock().pending.len(),
            Kind::V2(v2) => v2.in_flight.load(Ordering::Relaxed),
        }
    }

    /// The negotiated protocol version (1 or 2).
    pub fn protocol_version(&self) -> u8 {
        match self.shared.kind {
            Kind::V1(_) => 1,
            Kind::V2(_) => 2,
        }
    }

    /// Sends one streaming HTTP request to the manager (v2 tunnels only); request
    /// and response bodies stream both ways concurrently (HTTP/2 full duplex).
    ///
    /// The request's path (with its query) is what the manager's router sees; a
    /// URI without scheme and authority is sent as `http://tunnel{path}`. Each
    /// body is flow-controlled by its HTTP/2 stream window
    /// ([`StreamLimits`]). Dropping the response future or the response body
    /// resets the stream (the manager's handler is dropped). When the tunnel
    /// closes, a call waiting for its response fails with
    /// [`TransportError::Unavailable`] and a response body being read ends with
    /// an error.
    ///
    /// On a version 1 tunnel this fails at once with
    /// [`TransportError::Unavailable`]: the manager is too old for streams.
    pub async fn send_streaming(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Body>, TransportError> {
        let shared = self.shared.clone();
        let Kind::V2(v2) = &shared.kind else {
            return Err(TransportError::Unavailable(
                "the manager's tunnel speaks protocol version 1, which has no streams; \
                 upgrade the manager"
                    .to_owned(),
            ));
        };
        let _count = Count::new(&v2.in_flight);
        let response = send_v2(&shared, v2, req).await?;
        Ok(response.map(Body::new))
    }
}

/// Counts a request in flight for as long as it lives.
struct Count<'a>(&'a AtomicUsize);

impl<'a> Count<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The URI HTTP/2 needs (scheme and authority), keeping the path and query.
fn absolute(uri: &http::Uri) -> Result<http::Uri, TransportError> {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Ok(uri.clone());
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    http::Uri::builder()
        .scheme("http")
        .authority("tunnel")
        .path_and_query(path)
        .build()
        .map_err(|e| TransportError::Other(Box::new(e)))
}

/// Sends `req` on the HTTP/2 connection; fails with `unavailable` as soon as
/// the tunnel closes.
async fn send_v2(
    shared: &Shared,
    v2: &V2,
    mut req: Request<Body>,
) -> Result<Response<hyper::body::Incoming>, TransportError> {
    *req.uri_mut() = absolute(req.uri())?;
    let unavailable = || TransportError::Unavailable(shared.closed_error());
    let closed = shared.control.closed();
    tokio::pin!(closed);
    let mut sender = {
        let mut rx = v2.sender.subscribe();
        tokio::select! {
            biased;
            _ = &mut closed => return Err(unavailable()),
            s = rx.wait_for(Option::is_some) => match s {
                Ok(s) => s.clone(),
                Err(_) => None,
            },
        }
    }
    .ok_or_else(unavailable)?;
    let call = async move {
        sender.ready().await?;
        sender.send_request(req).await
    };
    tokio::select! {
        biased;
        _ = &mut closed => Err(unavailable()),
        r = call => r.map_err(|e| {
            if shared.control.reason().is_some() {
                unavailable()
            } else {
                TransportError::Closed(Box::new(e))
            }
        }),
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
        let Some(v1) = self.shared.v1() else { return };
        let was_pending = v1.lock().pending.remove(&self.id).is_some();
        if was_pending && self.queued {
            // Best effort: a full queue means the manager simply finishes the work
            // and its answer is dropped here.
            let _ = v1
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
            let v2 = match &shared.kind {
                Kind::V1(_) => return send_v1(shared.clone(), request).await,
                Kind::V2(v2) => v2,
            };
            let _count = Count::new(&v2.in_flight);
            let response = send_v2(&shared, v2, request.map(Body::from)).await?;
            let (parts, body) = response.into_parts();
            let limit = shared.max_frame_bytes;
            let closed = shared.control.closed();
            let collected = tokio::select! {
                biased;
                _ = closed => return Err(TransportError::Unavailable(shared.closed_error())),
                c = Limited::new(body, limit).collect() => c,
            };
            match collected {
                Ok(c) => Ok(Response::from_parts(parts, c.to_bytes())),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    Err(TransportError::ResponseTooLarge(limit))
                }
                Err(_) if shared.control.reason().is_some() => {
                    Err(TransportError::Unavailable(shared.closed_error()))
                }
                Err(e) => Err(TransportError::Closed(e)),
            }
        })
    }
}

/// One version 1 call: a request frame out, its response frame back.
async fn send_v1(
    shared: Arc<Shared>,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, TransportError> {
    let Some(v1) = shared.v1() else {
        return Err(TransportError::Unavailable("not a version 1 tunnel".into()));
    };
    let id = v1.next_id.fetch_add(1, Ordering::Relaxed);
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
        let mut state = v1.lock();
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
    let queue = v1.outbound.send(WsMsg::Binary(bytes));
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
}

/// Drives one accepted tunnel: run it (spawn it, or await it inside the
/// `on_upgrade` callback) for as long as the tunnel should live.
///
/// Dropping the task, or the future of [`TunnelTask::run`], closes the tunnel.
#[must_use = "the tunnel does nothing unless its task runs"]
pub struct TunnelTask {
    socket: WebSocket,
    /// Version 1's outbound frames (version 2 makes its own queue).
    outbound: Option<mpsc::Receiver<WsMsg>>,
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
        let (reason, closing) = match (&shared.kind, outbound) {
            (Kind::V2(v2), _) => {
                v2::drive(socket, &shared.control, config, map_axum_error, |io| {
                    v2::client(io, v2.limits, &v2.sender)
                })
                .await
            }
            (Kind::V1(v1), Some(outbound)) => {
                link::drive(
                    socket,
                    outbound,
                    &shared.control,
                    config,
                    map_axum_error,
                    link::Frames(|f| shared.on_frame(v1, f)),
                )
                .await
            }
            (Kind::V1(_), None) => {
                // `accept` always gives a version 1 task its queue.
                let reason = CloseReason::Dropped;
                shared.shut_down(reason.clone());
                return reason;
            }
        };
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
/// The protocol version is the subprotocol the upgrade chose (see
/// [`TunnelConfig::configure_upgrade`]): `lapdev-tunnel.v2` gives version 2,
/// anything else (no subprotocol: a manager not yet upgraded) version 1.
///
/// Returns the transport to call the manager through (register it, e.g. in a
/// [`TunnelRegistry`](super::TunnelRegistry)) and the task that drives the
/// connection, which must run for the tunnel to work. Authentication happens
/// before the upgrade and is the application's job; apply the frame limit and
/// the subprotocols to the upgrade with [`TunnelConfig::configure_upgrade`].
pub fn accept(socket: WebSocket, config: TunnelConfig) -> (TunnelTransport, TunnelTask) {
    let v2 = socket
        .protocol()
        .is_some_and(|p| p.as_bytes() == PROTOCOL_V2.as_bytes());
    let (kind, outbound) = if v2 {
        let kind = Kind::V2(V2 {
            sender: watch::Sender::new(None),
            in_flight: AtomicUsize::new(0),
            limits: config.streams,
        });
        (kind, None)
    } else {
        let (tx, rx) = mpsc::channel(link::OUTBOUND_QUEUE);
        let kind = Kind::V1(V1 {
            state: Mutex::new(State {
                pending: HashMap::new(),
                closed: false,
            }),
            outbound: tx,
            next_id: AtomicU64::new(1),
        });
        (kind, Some(rx))
    };
    let shared = Arc::new(Shared {
        control: Control::default(),
        max_frame_bytes: config.max_frame_bytes,
        kind,
    });
    let transport = TunnelTransport {
        shared: shared.clone(),
    };
    let task = TunnelTask {
        socket,
        outbound,
        guard: CloseOnDrop(shared.clone()),
        shared,
        config: LinkConfig {
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            max_frame_bytes: config.max_frame_bytes,
            coalesce_writes: v2,
            gate_parts: v2,
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
