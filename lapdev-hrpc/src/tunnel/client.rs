//! The manager end: [`connect`] opens the tunnel to the server and
//! [`TunnelSession::run`] serves the server's requests with an in-process
//! router until the connection ends.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tower::ServiceExt as _;

use super::frame::{self, Frame};
use super::link::{self, Control, LinkConfig, WsMsg};
use super::{
    CloseReason, DEFAULT_MAX_FRAME_BYTES, DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT,
    DEFAULT_WS_READ_BUFFER_BYTES, PROTOCOL_V2, StreamLimits, v2,
};
use crate::client::{BoxError, TlsConfigError};
use crate::error::{Code, HrpcError};
use crate::protocol::REQUEST_ID_HEADER;
use crate::server::error_response;

/// Settings of the manager end.
#[derive(Debug, Clone)]
pub struct TunnelClientConfig {
    /// Extra PEM certificate authorities trusted besides the system's, for
    /// `wss://` URLs (e.g. a private CA in front of the Lapdev server).
    pub extra_root_certificates_pem: Option<Vec<u8>>,
    /// How long the TCP connection, TLS and WebSocket handshakes may take.
    pub connect_timeout: Duration,
    /// How often the server is pinged.
    pub ping_interval: Duration,
    /// The session ends if nothing (pong or frame) arrives from the server for
    /// this long.
    pub ping_timeout: Duration,
    /// Largest frame sent or accepted. A response that would not fit is replaced
    /// by a `resource_exhausted` error response (version 1).
    pub max_frame_bytes: usize,
    /// The newest protocol version offered: 2 offers `lapdev-tunnel.v2` (and
    /// falls back to version 1 with a server that chooses none); 1 offers no
    /// subprotocol at all, exactly as managers before version 2 did.
    pub max_protocol_version: u8,
    /// HTTP/2 limits of version 2 tunnels (this end is the HTTP/2 server).
    pub streams: StreamLimits,
    /// Proxy rules (`HTTPS_PROXY`/`NO_PROXY`): the WebSocket is opened through
    /// an HTTP `CONNECT` tunnel when they name a proxy for the URL.
    pub proxy: Option<crate::proxy::ProxyRules>,
    /// Most bytes the WebSocket library reads from the socket at once
    /// ([`DEFAULT_WS_READ_BUFFER_BYTES`]).
    pub ws_read_buffer_bytes: usize,
}

impl Default for TunnelClientConfig {
    fn default() -> Self {
        Self {
            extra_root_certificates_pem: None,
            connect_timeout: Duration::from_secs(10),
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_protocol_version: 2,
            streams: StreamLimits::default(),
            proxy: None,
            ws_read_buffer_bytes: DEFAULT_WS_READ_BUFFER_BYTES,
        }
    }
}

/// The tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelConnectError {
    /// The URL is not a usable `ws`, `wss`, `http` or `https` URL.
    #[error("invalid tunnel URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The extra CA could not be used.
    #[error("invalid TLS settings")]
    Tls(#[from] TlsConfigError),
    /// The server answered the upgrade with something other than `101`, e.g.
    /// `401` for a wrong cluster token. `error` is the HRPC error of the body, when
    /// the body is one.
    #[error("the server refused the tunnel (HTTP {status}): {message}")]
    Rejected {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The HRPC error in the body, if it held one.
        error: Option<HrpcError>,
        /// The HRPC error's message, or the start of the body otherwise.
        message: String,
    },
    /// The handshakes did not finish within [`TunnelClientConfig::connect_timeout`].
    #[error("no tunnel connection within {0:?}")]
    Timeout(Duration),
    /// TCP, TLS or the WebSocket handshake failed.
    #[error("could not connect the tunnel")]
    Connect(#[source] BoxError),
}

impl TunnelConnectError {
    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            TunnelConnectError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The HRPC code of a refused upgrade (from its body, else from its status).
    pub fn code(&self) -> Option<Code> {
        match self {
            TunnelConnectError::Rejected { status, error, .. } => Some(
                error
                    .as_ref()
                    .map_or_else(|| Code::from_http_status(*status), |e| e.code),
            ),
            _ => None,
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open tunnel on the manager's side; [`run`](Self::run) serves it.
pub struct TunnelSession {
    socket: Socket,
    version: u8,
    streams: StreamLimits,
    router: axum::Router,
    response_headers: HeaderMap,
    handle: TunnelSessionHandle,
    outbound_tx: mpsc::Sender<WsMsg>,
    outbound_rx: mpsc::Receiver<WsMsg>,
    config: LinkConfig,
    guard: MarkDropped,
}

/// Marks the session ended when it is dropped, whether it ran or not.
struct MarkDropped(Arc<Control>);

impl Drop for MarkDropped {
    fn drop(&mut self) {
        self.0.close(CloseReason::Dropped);
    }
}

impl fmt::Debug for TunnelSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelSession")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Closes a [`TunnelSession`] from elsewhere (e.g. on shutdown) and watches it.
#[derive(Clone)]
pub struct TunnelSessionHandle {
    control: Arc<Control>,
}

impl fmt::Debug for TunnelSessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelSessionHandle")
            .field("closed", &self.control.reason())
            .finish()
    }
}

impl TunnelSessionHandle {
    /// Closes the session: requests being served are dropped and the server gets
    /// a close frame with `reason`.
    pub fn close(&self, reason: impl Into<String>) {
        self.control.close(CloseReason::Local(reason.into()));
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.control.reason().is_some()
    }

    /// Resolves when the session ends, with the reason.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        self.control.closed()
    }
}

/// Requests being served, by id.
type InFlight = Arc<Mutex<HashMap<u64, AbortHandle>>>;

fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, HashMap<u64, AbortHandle>> {
    in_flight.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts every request still being served when the session ends or is dropped.
struct AbortAll(InFlight);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for (_, handle) in lock(&self.0).drain() {
            handle.abort();
        }
    }
}

impl TunnelSession {
    /// The headers of the server's `101` answer.
    pub fn response_headers(&self) -> &HeaderMap {
        &self.response_headers
    }

    /// The negotiated protocol version (1 or 2).
    pub fn protocol_version(&self) -> u8 {
        self.version
    }

    /// A handle to close or watch the session.
    pub fn handle(&self) -> TunnelSessionHandle {
        self.handle.clone()
    }

    /// Serves the server's requests until the tunnel ends, and returns why: the
    /// server closed it ([`CloseReason::Peer`] with the server's reason), a ping
    /// timeout, a protocol violation, an I/O error, or a local
    /// [`TunnelSessionHandle::close`]. Reconnecting (with backoff) is the
    /// caller's job.
    ///
    /// Each request is served concurrently on its own task by a clone of the
    /// router; a `cancel` frame (version 1) or a reset stream (version 2) from
    /// the server drops it. Requests still being served when the tunnel ends
    /// are dropped.
    pub async fn run(self) -> CloseReason {
        if self.version == 2 {
            return self.run_v2().await;
        }
        let TunnelSession {
            socket,
            version: _,
            streams: _,
            router,
            response_headers: _,
            handle,
            outbound_tx,
            outbound_rx,
            config,
            guard: _guard,
        } = self;
        let in_flight: InFlight = Arc::default();
        let _abort = AbortAll(in_flight.clone());
        let socket = socket.map(|m| m.map(from_tungstenite)).with(|m: WsMsg| {
            futures::future::ready(Ok::<_, tungstenite::Error>(into_tungstenite(m)))
        });
        let socket = Box::pin(socket);
        let max_frame_bytes = config.max_frame_bytes;
        let on_frame = |f: Frame| -> link::FrameResult {
            match f {
                Frame::Request {
                    id,
                    method,
                    path,
                    headers,
                    body,
                } => {
                    let mut map = lock(&in_flight);
                    if map.contains_key(&id) {
                        return Err(CloseReason::Protocol(format!(
                            "request id {id} is already in flight"
                        )));
                    }
                    let task = serve(
                        router.clone(),
                        id,
                        method,
                        path,
                        headers,
                        body,
                        max_frame_bytes,
                        outbound_tx.clone(),
                        in_flight.clone(),
                    );
                    // The map stays locked until the handle is in it, so the task
                    // cannot remove its entry before it exists.
                    let join = tokio::spawn(task);
                    map.insert(id, join.abort_handle());
                }
                Frame::Cancel { id } => {
                    if let Some(h) = lock(&in_flight).remove(&id) {
                        tracing::debug!(id, "tunnel request cancelled by the server");
                        h.abort();
                    }
                }
                Frame::Response { id, .. } => {
                    tracing::debug!(
                        id,
                        "ignoring a response frame: the manager sends no requests"
                    );
                }
                Frame::Unknown { .. } => {}
            }
            Ok(())
        };
        let (reason, closing) = link::drive(
            socket,
            outbound_rx,
            &handle.control,
            config,
            map_tungstenite_error,
            link::Frames(on_frame),
        )
        .await;
        for (_, h) in lock(&in_flight).drain() {
            h.abort();
        }
        tracing::info!(reason = %reason, "tunnel session ended");
        closing.finish(&reason).await;
        reason
    }
}

impl TunnelSession {
    /// Version 2: an HTTP/2 server on the byte stream, serving every stream
    /// with the router.
    async fn run_v2(self) -> CloseReason {
        let TunnelSession {
            socket,
            streams,
            router,
            handle,
            config,
            ..
        } = self;
        let socket = socket.map(|m| m.map(from_tungstenite)).with(|m: WsMsg| {
            futures::future::ready(Ok::<_, tungstenite::Error>(into_tungstenite(m)))
        });
        let socket = Box::pin(socket);
        let (reason, closing) = v2::drive(
            socket,
            &handle.control,
            config,
            map_tungstenite_error,
            |io| v2::server(io, streams, router),
        )
        .await;
        tracing::info!(reason = %reason, "tunnel session ended");
        closing.finish(&reason).await;
        reason
    }
}

/// Serves one request with the router and queues the response frame.
#[allow(clippy::too_many_arguments)]
async fn serve(
    router: axum::Router,
    id: u64,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    max_frame_bytes: usize,
    outbound: mpsc::Sender<WsMsg>,
    in_flight: InFlight,
) {
    let request_id = headers.get(REQUEST_ID_HEADER).cloned();
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = method;
    *request.headers_mut() = headers;
    match path.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            // `frame::decode` only lets valid paths through.
            tracing::debug!(path, "unparseable request path");
        }
    }
    let bytes = match router.oneshot(request).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            match Limited::new(body, max_frame_bytes).collect().await {
                Ok(collected) => {
                    let bytes = frame::encode_response(
                        id,
                        parts.status,
                        &parts.headers,
                        &collected.to_bytes(),
                    );
                    if bytes.len() <= max_frame_bytes {
                        bytes
                    } else {
                        too_large(id, max_frame_bytes, request_id.as_ref())
                    }
                }
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    too_large(id, max_frame_bytes, request_id.as_ref())
                }
                Err(e) => error_frame(
                    id,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &HrpcError::internal(format!("could not read the response body: {e}")),
                    request_id.as_ref(),
                ),
            }
        }
        Err(never) => match never {},
    };
    let _ = outbound.send(WsMsg::Binary(bytes)).await;
    lock(&in_flight).remove(&id);
}

fn too_large(id: u64, limit: usize, request_id: Option<&HeaderValue>) -> Bytes {
    let error = HrpcError::new(
        Code::ResourceExhausted,
        format!("the response does not fit in a tunnel frame of at most {limit} bytes"),
    );
    error_frame(id, error.http_status(), &error, request_id)
}

fn error_frame(
    id: u64,
    status: StatusCode,
    error: &HrpcError,
    request_id: Option<&HeaderValue>,
) -> Bytes {
    let response = error_response(status, error);
    let mut headers = response.headers().clone();
    if let Some(v) = request_id {
        headers.insert(REQUEST_ID_HEADER, v.clone());
    }
    let body = serde_json::to_vec(error).unwrap_or_default();
    frame::encode_response(id, status, &headers, &body)
}

/// Opens the tunnel: a WebSocket upgrade (`GET`, HTTP/1.1) to `url` with
/// `headers` (e.g. the cluster token). `url` is `ws://` or `wss://`; `http://` and
/// `https://` are mapped to them. `wss://` uses rustls with the ring provider,
/// the system's roots and [`TunnelClientConfig::extra_root_certificates_pem`].
///
/// A refused upgrade is [`TunnelConnectError::Rejected`] with the status and the
/// server's HRPC error. On success, serve the tunnel with
/// [`TunnelSession::run`].
pub async fn connect(
    url: &str,
    headers: HeaderMap,
    router: axum::Router,
    config: TunnelClientConfig,
) -> Result<TunnelSession, TunnelConnectError> {
    let invalid = |reason: &'static str| TunnelConnectError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let (ws_url, tls) = if let Some(rest) = url.strip_prefix("https://") {
        (format!("wss://{rest}"), true)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (format!("ws://{rest}"), false)
    } else if url.starts_with("wss://") {
        (url.to_owned(), true)
    } else if url.starts_with("ws://") {
        (url.to_owned(), false)
    } else {
        return Err(invalid("the scheme must be ws, wss, http or https"));
    };
    let uri: http::Uri = ws_url.parse().map_err(|_| invalid("not a URL"))?;
    let proxied = config
        .proxy
        .as_ref()
        .is_some_and(|r| r.proxy_for(&uri).is_some());
    let dial = uri.clone();
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .unwrap_or_default();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let mut request = uri
        .into_client_request()
        .map_err(|_| invalid("not a WebSocket URL"))?;
    for (name, value) in &headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let connector = if tls {
        Connector::Rustls(Arc::new(tls_config(
            config.extra_root_certificates_pem.as_deref(),
        )?))
    } else {
        Connector::Plain
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    // Through an egress proxy when the rules name one for this URL.
    let via = if proxied {
        config.proxy.clone().map(|rules| (rules, dial))
    } else {
        None
    };
    let offer_v2 = config.max_protocol_version >= 2;
    let opened = tokio::time::timeout(config.connect_timeout, async {
        if offer_v2 {
            let mut offer = request.clone();
            offer.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(OFFER),
            );
            match open(offer, &host, port, &via, ws_config, connector.clone()).await {
                Err(TunnelConnectError::Connect(e)) if chose_no_subprotocol(&e) => {
                    // A server from before version 2 accepts the upgrade but
                    // chooses no subprotocol; ask again without offering one.
                    tracing::info!("the server chose no tunnel protocol version; using version 1");
                }
                other => return other,
            }
        }
        open(request, &host, port, &via, ws_config, connector).await
    })
    .await;
    let (socket, response) = match opened {
        Err(_) => return Err(TunnelConnectError::Timeout(config.connect_timeout)),
        Ok(r) => r?,
    };
    let version = match response.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL) {
        Some(p) if p.as_bytes() == PROTOCOL_V2.as_bytes() => 2,
        _ => 1,
    };
    let (outbound_tx, outbound_rx) = mpsc::channel(link::OUTBOUND_QUEUE);
    let control = Arc::new(Control::default());
    Ok(TunnelSession {
        socket,
        version,
        streams: config.streams,
        router,
        response_headers: response.headers().clone(),
        handle: TunnelSessionHandle {
            control: control.clone(),
        },
        guard: MarkDropped(control),
        outbound_tx,
        outbound_rx,
        config: LinkConfig {
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            max_frame_bytes: config.max_frame_bytes,
            coalesce_writes: version == 2,
            gate_parts: version == 2,
        },
    })
}

/// What a manager offers: version 2, else version 1.
const OFFER: &str = "lapdev-tunnel.v2, lapdev-tunnel.v1";

/// Opens the TCP connection (tuned with [`super::tune_tcp`]), TLS if asked,
/// and the WebSocket.
async fn open(
    request: tungstenite::handshake::client::Request,
    host: &str,
    port: u16,
    via: &Option<(crate::proxy::ProxyRules, http::Uri)>,
    ws_config: WebSocketConfig,
    connector: Connector,
) -> Result<(Socket, tungstenite::handshake::client::Response), TunnelConnectError> {
    let tcp = match via {
        None => TcpStream::connect((host, port))
            .await
            .map_err(|e| TunnelConnectError::Connect(Box::new(e)))?,
        // A CONNECT tunnel through the proxy, then TLS and the WebSocket
        // handshake inside it.
        Some((rules, dial)) => {
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.set_nodelay(true);
            crate::proxy::ProxyConnector::new(http, Some(rules.clone()))
                .connect_stream(dial)
                .await
                .map_err(TunnelConnectError::Connect)?
        }
    };
    super::tune_tcp(&tcp);
    match tokio_tungstenite::client_async_tls_with_config(
        request,
        tcp,
        Some(ws_config),
        Some(connector),
    )
    .await
    {
        Err(tungstenite::Error::Http(response)) => Err(rejected(&response)),
        Err(e) => Err(TunnelConnectError::Connect(Box::new(e))),
        Ok(ok) => Ok(ok),
    }
}

fn chose_no_subprotocol(e: &BoxError) -> bool {
    use tungstenite::error::{ProtocolError, SubProtocolError};
    matches!(
        e.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Protocol(
            ProtocolError::SecWebSocketSubProtocolError(SubProtocolError::NoSubProtocol)
        ))
    )
}

fn rejected(response: &http::Response<Option<Vec<u8>>>) -> TunnelConnectError {
    let status = response.status();
    let body = response.body().as_deref().unwrap_or_default();
    let error = serde_json::from_slice::<HrpcError>(body).ok();
    let message = match &error {
        Some(e) => e.message.clone(),
        None if body.is_empty() => status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    TunnelConnectError::Rejected {
        status,
        error,
        message,
    }
}

/// rustls with the ring provider, the system's roots and an optional extra CA.
fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, TlsConfigError> {
    let mut config = crate::client::tls_config(extra_ca_pem)?;
    // The upgrade is an HTTP/1.1 request; never let a server pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn from_tungstenite(m: Message) -> WsMsg {
    match m {
        Message::Binary(b) => WsMsg::Binary(b),
        Message::Text(_) => WsMsg::Text,
        Message::Ping(b) => WsMsg::Ping(b),
        Message::Pong(b) => WsMsg::Pong(b),
        // Raw frames are never produced when reading; treat one as a sign of life.
        Message::Frame(_) => WsMsg::Pong(Bytes::new()),
        Message::Close(c) => {
            WsMsg::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())))
        }
    }
}

fn into_tungstenite(m: WsMsg) -> Message {
    match m {
        WsMsg::Binary(b) => Message::Binary(b),
        WsMsg::Text => Message::Text(Default::default()),
        WsMsg::Ping(b) => Message::Ping(b),
        WsMsg::Pong(b) => Message::Pong(b),
        WsMsg::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame {
            code: code.into(),
            reason: reason.into(),
        })),
    }
}

fn map_tungstenite_error(e: tungstenite::Error) -> CloseReason {
    super::io_reason(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_names_both_versions_newest_first() {
        use super::super::PROTOCOL_V1;
        assert_eq!(OFFER, format!("{PROTOCOL_V2}, {PROTOCOL_V1}"));
    }

    #[tokio::test]
    async fn urls_are_checked() {
        for url in ["ftp://x/rpc/_tunnel", "nonsense", "ws://"] {
            let e = connect(
                url,
                HeaderMap::new(),
                axum::Router::new(),
                Default::default(),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(e, TunnelConnectError::InvalidUrl { .. }),
                "{url}: {e:?}"
            );
        }
    }
}
