//! The reverse tunnel: HRPC calls from the server to a manager that cannot be
//! reached directly (it runs inside a cluster), over one long-lived WebSocket
//! connection that the manager opened.
//!
//! # Roles
//!
//! - The **manager** (client end) opens the connection: `GET /rpc/_tunnel` with
//!   a WebSocket upgrade over HTTP/1.1 and its cluster token header
//!   ([`connect`]), then serves the requests that arrive with its generated router
//!   ([`TunnelSession::run`]) until the connection ends, and reconnects (with
//!   backoff, the manager's job).
//! - The **server** (server end) authenticates the upgrade request (the
//!   application's job, before upgrading), takes the socket over with [`accept`]
//!   and registers the resulting [`TunnelTransport`] in a [`TunnelRegistry`]. The
//!   transport is an HRPC [`Transport`](crate::Transport): any generated client
//!   built on it calls the manager, with the same error model as HTTP HRPC. When
//!   the tunnel goes away, calls in flight and later calls fail at once with
//!   [`TransportError::Unavailable`](crate::TransportError::Unavailable), which
//!   folds into the `unavailable` code.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::extract::{State, ws::WebSocketUpgrade};
//! use axum::response::{IntoResponse, Response};
//! use lapdev_hrpc::tunnel::{self, TunnelConfig, TunnelRegistry};
//!
//! // Server: the upgrade route, after the application checked the token.
//! async fn tunnel_route(State(registry): State<TunnelRegistry<String>>, ws: WebSocketUpgrade) -> Response {
//!     let cluster = "cluster-1".to_owned(); // from the verified token
//!     let config = TunnelConfig::default();
//!     config.configure_upgrade(ws).on_upgrade(move |socket| async move {
//!         let (transport, task) = tunnel::accept(socket, config);
//!         registry.insert(cluster, transport);
//!         task.run().await;
//!     })
//! }
//!
//! // Server: calling the manager.
//! # async fn call(registry: TunnelRegistry<String>) {
//! if let Some(transport) = registry.get(&"cluster-1".to_owned()) {
//!     let client = lapdev_hrpc::Client::with_shared_transport("http://tunnel", Arc::new(transport)).unwrap();
//!     // SomeServiceClient::new(client).method(...).await
//! }
//! # }
//!
//! // Manager: connect and serve until the connection ends.
//! # async fn manager(router: axum::Router) {
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-lapdev-cluster-token", "lapdev_ct_...".parse().unwrap());
//! match tunnel::connect("https://lapdev.example.com/rpc/_tunnel", headers, router, Default::default()).await {
//!     Ok(session) => eprintln!("tunnel ended: {}", session.run().await),
//!     Err(e) => eprintln!("could not open the tunnel: {e}"), // e.g. Rejected { status: 401, .. }
//! }
//! # }
//! ```
//!
//! # Versions and negotiation
//!
//! The protocol version is a WebSocket subprotocol chosen during the upgrade:
//!
//! - A manager of version 2 offers `Sec-WebSocket-Protocol: lapdev-tunnel.v2,
//!   lapdev-tunnel.v1` ([`PROTOCOL_V2`], [`PROTOCOL_V1`];
//!   [`TunnelClientConfig::max_protocol_version`]).
//! - The server ([`TunnelConfig::configure_upgrade`]) chooses `lapdev-tunnel.v2`
//!   when offered, else `lapdev-tunnel.v1`, else none; [`accept`] speaks
//!   version 2 only when `lapdev-tunnel.v2` was chosen. A manager from before
//!   version 2 offers nothing and gets version 1, unchanged.
//! - A server from before version 2 chooses no subprotocol. The WebSocket
//!   client then must fail the connection (RFC 6455 §4.1), so the manager drops
//!   it and opens the tunnel again offering nothing: version 1. That costs one
//!   extra upgrade per connect, against old servers only.
//!
//! Both ends report the outcome ([`TunnelTransport::protocol_version`],
//! [`TunnelSession::protocol_version`]). Version 1's frames are below; version
//! 2 follows them.
//!
//! # Frame format (version 1)
//!
//! Every frame is one **binary** WebSocket message:
//!
//! ```text
//! +----------------------+----------------------------+------------------+
//! | header length N      | header: N bytes of JSON    | body: the rest   |
//! | u32, big-endian      | (UTF-8 object)             | of the message   |
//! +----------------------+----------------------------+------------------+
//! ```
//!
//! The header is a JSON object with a string `type`. The body is raw bytes (for
//! HRPC, the JSON request or response body) and may be empty. Frame types:
//!
//! | `type` | direction | fields | body |
//! |---|---|---|---|
//! | `request` | server → manager | `id` (u64), `path` (string), `headers` (object, optional), `method` (string, optional, default `POST`) | request body |
//! | `response` | manager → server | `id` (u64), `status` (u16, 100–999), `headers` (object, optional) | response body |
//! | `cancel` | server → manager | `id` (u64) | empty |
//!
//! - `id` is chosen by the sender of the request, unique among its requests in
//!   flight (this implementation counts up from 1); the response carries the same
//!   id. Responses may come in any order; requests are served concurrently.
//! - `path` is the request target: an absolute path with optional query, e.g.
//!   `/KubeManagerRpc/heartbeat`. It is dispatched to the manager's router as-is
//!   (the router's routes start at the service name, no `/rpc` prefix).
//! - `headers` maps lower-case header names to a string, or to an array of
//!   strings when a header repeats: `{"content-type": "application/json",
//!   "hrpc-version": "1", "hrpc-timeout-ms": "5000", "x-request-id": "..."}`. The
//!   request headers are those of an HTTP HRPC call (the manager's router enforces
//!   `hrpc-timeout-ms` as usual); the response headers are the router's.
//! - `status` and the response body follow the HTTP wire protocol of the crate
//!   docs: `200` with the JSON result, or an error status with an HRPC error body.
//! - `cancel`: the server gave up on request `id` (its caller's deadline passed
//!   or it went away); the manager drops the work and sends no response. A
//!   cancel for an unknown id is ignored, as is a response to a request no longer
//!   waiting.
//! - A `request` sent to the server end is answered with `404 unimplemented`; a
//!   `response` sent to the manager end is ignored.
//!
//! Example: a request frame for `Echo::add(1, 2)` (with only these two headers)
//! is the 4 bytes `00 00 00 6d`, then the 109-byte header
//! `{"type":"request","id":1,"path":"/Echo/add","headers":{"content-type":"application/json","hrpc-version":"1"}}`,
//! then the body `{"a":1,"b":2}`; its answer is
//! `{"type":"response","id":1,"status":200,"headers":{...}}` with the body `3`.
//!
//! **Forward compatibility:** a frame with an unknown `type` is ignored, and
//! unknown header fields are ignored.
//!
//! **Errors:** anything else that is not a valid frame (shorter than 4 bytes, a
//! header length past the end, a header that is not JSON, a known type with
//! missing or invalid fields, a text message) is a protocol violation: the
//! receiver closes the tunnel with close code `1002` and the reason. A message
//! larger than the frame limit (default 16 MiB, both ends) closes it with `1009`;
//! a sender never sends one (a request that would not fit fails alone, a response
//! that would not fit is replaced by a `resource_exhausted` error).
//!
//! **Liveness:** both ends send WebSocket pings every `ping_interval` (default
//! 15 s) and close the tunnel when nothing at all (pong, ping or frame) arrived
//! from the peer for `ping_timeout` (default 45 s). WebSocket implementations
//! answer pings on their own.
//!
//! **Closing:** an end that closes the tunnel on purpose sends a close frame
//! (`1000`, with a reason such as "replaced by a newer tunnel connection"); the
//! other end's calls in flight fail at once.
//!
//! # Version 2: HTTP/2 over the WebSocket
//!
//! **Framing.** The binary messages of the WebSocket, in order, form one byte
//! stream each way; message boundaries mean nothing (a message is at most
//! 64 KiB when sent, and at most the frame limit when received). On that
//! stream runs HTTP/2 (RFC 9113) with prior knowledge (no `Upgrade`, no ALPN):
//! the **manager is the HTTP/2 server** (its router serves every stream,
//! exactly as it serves version 1's requests) and the **server end is the
//! HTTP/2 client**, which sends the connection preface first. Text messages
//! are a protocol violation (close `1002`), as in version 1.
//!
//! **Requests.** An HRPC call is an ordinary HTTP/2 request: `POST` with the
//! path, headers and JSON body of the HTTP wire protocol (`:authority` is
//! `tunnel`), answered with the router's status, headers and body; the manager
//! reads no frame format of its own. Streams ([`TunnelTransport::send_streaming`])
//! are requests whose bodies flow both ways at once for as long as either
//! side keeps them open (a shell, a port-forward). Giving up on a call or a
//! stream resets it (`RST_STREAM` `CANCEL`); the manager drops its handler.
//!
//! **Flow control and limits** ([`StreamLimits`], set on each end for what it
//! receives): every stream has a window of 256 KiB and the connection 2 MiB
//! (HTTP/2's own flow control, with no adaptive growth), so one stream whose
//! reader is slow holds at most its window in the receiver, and a sender
//! queues at most a window per stream; the manager serves at most 256 streams
//! at once (more wait on the server end); header lists are at most 64 KiB;
//! `DATA` frames carry at most 64 KiB (a frame is written whole, so this bounds
//! how long a small call waits behind one stream's frame).
//! HTTP/2's control frames (`SETTINGS`, `PING`, `WINDOW_UPDATE`, resets) go out
//! ahead of queued data, so a saturated stream does not delay other calls
//! beyond its window. Inside each end at most 8 messages (of 64 KiB) wait
//! between HTTP/2 and the socket. An HRPC response read by
//! [`TunnelTransport`]'s [`Transport`](crate::Transport) is still capped at
//! the frame limit; streams have no size limit.
//!
//! **Writing.** Bytes HTTP/2 writes are gathered and sent as one message when
//! it flushes (when it has nothing more to write) or at 64 KiB; the connection
//! loop writes queued messages back to back and flushes the socket only when its
//! queue is empty, never on a timer. Every TCP hop sets `TCP_NODELAY` and,
//! on Linux, `TCP_NOTSENT_LOWAT` ([`tune_tcp`]), so bytes wait in these
//! prioritised queues rather than in the kernel's send buffer.
//!
//! **One task per end.** Each end's session runs in one task: the connection
//! loop, HTTP/2's connection and (server end) hyper's per-request client
//! tasks. A wake that one part of the session gives another while the task
//! runs is absorbed, and the part is polled again within the same run, instead
//! of rescheduling the task (which in tokio wakes an idle worker thread each
//! time); each part is polled only when it was woken, so the WebSocket is not
//! read again just because HTTP/2 queued a frame (tungstenite zero-fills its
//! read buffer, [`DEFAULT_WS_READ_BUFFER_BYTES`], before every read). On the
//! manager, the router's task for a request is polled once right away inside
//! the session: a handler that answers without waiting is done there, and
//! one that waits (a Kubernetes call, a stream) is spawned, so waiting
//! handlers run in parallel and are aborted with the session.
//!
//! **Liveness and closing** are version 1's: WebSocket pings every
//! `ping_interval` (15 s by default, under the 60 s after which proxies cut idle
//! connections), the tunnel closes when nothing arrives for `ping_timeout`,
//! and a deliberate close sends a close frame with the reason. Closing the
//! tunnel (replaced by a newer connection, token revoked or expired, a ping
//! timeout) ends the HTTP/2 connection: calls waiting for a response fail with
//! `unavailable`, and streams being read end with an error. An HTTP/2
//! connection error (e.g. a malformed frame) closes the tunnel with `1002`
//! and the reason; an error confined to one stream resets that stream only.
//!
//! **Why HTTP/2 and not yamux:** hyper's HTTP/2 is already a dependency,
//! carries the HRPC calls unchanged (the router sees ordinary HTTP requests),
//! and gives per-stream flow control, resets and prioritised control frames;
//! yamux would need a second framing for the calls and was not measured.
//! `benches/tunnel.rs` measures version 2 against version 1 (also as
//! shipped before version 2, with tungstenite's 128 KiB read buffer), HRPC
//! over plain HTTP and tarpc over TCP, in interleaved rounds, and counts
//! instructions, task polls and context switches per call (`-- --instructions`,
//! `-- --counts`). Latest run (release, one process, 2 worker threads, on a
//! shared 2-core machine at load 17, so calls/s mostly reflect CPU per call):
//! calls/s for 100 B with 1 / 64 callers: v1 15386 / 37928, **v2 10304 /
//! 40229**, HRPC over HTTP 16243 / 13096, tarpc 16141 / 45930; for 64 KiB: v1
//! 2866 / 1783, **v2 2214 / 1417**, HTTP 3296 / 2329, tarpc 412 / 397. So
//! version 2's calls cost more than version 1's (0.67–1.06×), although they
//! no longer cross threads or re-read the socket per hop: under callgrind a
//! 100 B call costs v2 ~160 000 instructions against v1's ~150 000 (its
//! 128 KiB buffer: ~476 000) and HTTP's ~71 000, most of the difference being
//! HTTP/2 itself (HPACK, stream state, hyper's client and server glue, ~70 000
//! on the two ends together) and the WebSocket under it (framing, masking,
//! two more copies of every byte each way). Streams, version 2's reason to
//! exist, ran at 913 MB/s (1 stream) and 662 MB/s (8 streams) for 64 MiB
//! each, against 1635 and 505 MB/s for the same route over plain HTTP/2 on
//! TCP.

use std::time::Duration;

use crate::client::BoxError;

mod client;
mod coalesce;
mod frame;
mod link;
mod registry;
mod server;
mod stream;
mod tcp;
mod v2;

pub use client::{
    TunnelClientConfig, TunnelConnectError, TunnelSession, TunnelSessionHandle, connect,
};
pub use registry::{REPLACED_REASON, TunnelRegistry};

/// Decodes one tunnel message as the receiving end does and says whether it
/// was a valid frame. Only for the fuzz targets and their corpus replay (the
/// decoder itself stays private); it must never panic, whatever `message`
/// holds.
#[doc(hidden)]
pub fn decode_frame_for_fuzzing(message: &[u8]) -> bool {
    frame::decode(bytes::Bytes::copy_from_slice(message)).is_ok()
}
pub use server::{TunnelTask, TunnelTransport, accept};
pub use tcp::{NOTSENT_LOWAT_BYTES, tune_tcp};

/// The WebSocket subprotocol of version 1 (today's frames). A manager that
/// offers no subprotocol gets version 1 too.
pub const PROTOCOL_V1: &str = "lapdev-tunnel.v1";

/// The WebSocket subprotocol of version 2 (HTTP/2 over the byte stream).
pub const PROTOCOL_V2: &str = "lapdev-tunnel.v2";

/// HTTP/2 limits of a version 2 tunnel; each end applies its own to what it
/// receives (windows) and serves (streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Initial HTTP/2 window of each stream, in bytes: the most one stream's
    /// receiver buffers, and the most a sender queues for one stream.
    pub stream_window_bytes: u32,
    /// Initial HTTP/2 window of the whole connection, in bytes: the most all
    /// streams together have in flight towards this end.
    pub connection_window_bytes: u32,
    /// Most concurrent streams (calls and streams) the manager serves; more wait
    /// on the server end until one ends.
    pub max_concurrent_streams: u32,
    /// Largest header list accepted, in bytes.
    pub max_header_list_bytes: u32,
    /// Largest HTTP/2 frame payload this end accepts (`SETTINGS_MAX_FRAME_SIZE`,
    /// 16 KiB to 16 MiB − 1), in bytes: the peer cuts its `DATA` into frames of
    /// at most this. A frame goes out whole, so a control frame or another
    /// call waits behind at most one such frame per stream being written
    /// (64 KiB is 3.3 ms at 20 MB/s); fewer, larger frames cost less per byte
    /// (HTTP/2's 16 KiB default cost 64 KiB calls 9–17% of their rate).
    pub max_frame_bytes: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            stream_window_bytes: 256 * 1024,
            connection_window_bytes: 2 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_header_list_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
        }
    }
}

/// The path of the tunnel endpoint below the HRPC mount point (`/rpc/_tunnel`).
pub const TUNNEL_PATH: &str = "/_tunnel";

/// Default interval between pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(15);

/// Default time without any sign of life after which the peer is considered dead.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(45);

/// Default largest frame (one WebSocket message): 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Default of how many bytes the WebSocket library (tungstenite, on both
/// ends) reads from the socket at once: 16 KiB. The library zero-fills this
/// much of its buffer before *every* read attempt, including the one that
/// finds the socket empty; at its own default of 128 KiB that was about 80%
/// of a small call's instructions (4 such reads per call, ~70 000
/// instructions each). Messages larger than this take several reads.
pub const DEFAULT_WS_READ_BUFFER_BYTES: usize = 16 * 1024;

/// Settings of the server end.
#[derive(Debug, Clone, Copy)]
pub struct TunnelConfig {
    /// How often the manager is pinged.
    pub ping_interval: Duration,
    /// The tunnel closes if nothing (pong or frame) arrives from the manager for
    /// this long.
    pub ping_timeout: Duration,
    /// Largest frame sent or accepted; a larger incoming message closes the
    /// tunnel, a larger request fails alone. In version 2, also the largest
    /// response body [`TunnelTransport`]'s HRPC calls read (streams have no
    /// such limit).
    pub max_frame_bytes: usize,
    /// HTTP/2 limits of version 2 tunnels.
    pub streams: StreamLimits,
    /// Most bytes the WebSocket library reads from the socket at once
    /// ([`DEFAULT_WS_READ_BUFFER_BYTES`]).
    pub ws_read_buffer_bytes: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            streams: StreamLimits::default(),
            ws_read_buffer_bytes: DEFAULT_WS_READ_BUFFER_BYTES,
        }
    }
}

impl TunnelConfig {
    /// Applies the frame limit to the WebSocket upgrade, so that oversized
    /// messages are refused before they are buffered in full, and offers the
    /// protocol versions: version 2 if the manager offers it, else version 1.
    pub fn configure_upgrade<F>(
        &self,
        upgrade: axum::extract::ws::WebSocketUpgrade<F>,
    ) -> axum::extract::ws::WebSocketUpgrade<F> {
        upgrade
            .read_buffer_size(self.ws_read_buffer_bytes)
            .max_message_size(self.max_frame_bytes)
            .max_frame_size(self.max_frame_bytes)
            .protocols([PROTOCOL_V2, PROTOCOL_V1])
    }
}

/// Why a tunnel closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// Closed by this end (e.g. [`TunnelTransport::close`],
    /// [`TunnelRegistry::close`], replaced by a newer connection).
    #[error("closed: {0}")]
    Local(String),
    /// The peer closed the connection with a close frame.
    #[error("closed by the peer (code {}): {reason}", code.map_or_else(|| "none".to_owned(), |c| c.to_string()))]
    Peer {
        /// The WebSocket close code, if the close frame had one.
        code: Option<u16>,
        /// The close frame's reason.
        reason: String,
    },
    /// Nothing arrived from the peer for this long.
    #[error("the peer did not answer pings for {0:?}")]
    PingTimeout(Duration),
    /// The peer sent something that is not a valid frame.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer sent a message larger than the frame limit.
    #[error("a frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The message's size (as far as known).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection failed (reset, broken pipe, ended without a close frame).
    #[error("connection error: {0}")]
    Io(String),
    /// The task driving the tunnel was dropped.
    #[error("the tunnel task was dropped")]
    Dropped,
}

/// Maps a WebSocket library error to a close reason.
pub(crate) fn io_reason(e: BoxError) -> CloseReason {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

    if let Some(ws) = e.downcast_ref::<WsError>() {
        match ws {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                return CloseReason::FrameTooLarge {
                    size: *size,
                    limit: *max_size,
                };
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                return CloseReason::Io("the connection was reset without a close frame".into());
            }
            WsError::Protocol(p) => return CloseReason::Protocol(p.to_string()),
            _ => {}
        }
    }
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    CloseReason::Io(message)
}
