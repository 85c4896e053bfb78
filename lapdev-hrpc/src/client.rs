//! The client half: a [`Client`] that encodes calls, sends them over any
//! [`Transport`], and tells server errors apart from transport failures.
//!
//! Transports shipped here: [`HttpTransport`] (HTTP/1.1 and HTTP/2 over TCP, with
//! TLS and connection reuse) and [`ServiceTransport`] (an in-process `tower`
//! service such as an `axum::Router`, for tests). The reverse tunnel
//! (server issue) is a third.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::error::{Code, HrpcError};
use crate::protocol::{
    CONTENT_TYPE_JSON, PROTOCOL_VERSION, REQUEST_ID_NAME, TIMEOUT_NAME, VERSION_HEADER,
    VERSION_NAME, VERSION_VALUE, new_request_id_header,
};

mod http_transport;
mod service_transport;

pub(crate) use http_transport::tls_config;
pub use http_transport::{HttpTransport, HttpTransportConfig, TlsConfigError};
pub use service_transport::ServiceTransport;

/// Boxed error source of a transport failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Something that carries one HTTP request to a server and brings the whole
/// response back.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` and returns the response with its body read in full.
    fn send(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Response<Bytes>, TransportError>>;
}

/// A call never got an answer from the server.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The connection could not be opened (refused, DNS, TLS handshake).
    #[error("could not connect to the server")]
    Connect(#[source] BoxError),
    /// No complete response arrived before the client's own deadline.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The connection broke before the response was complete.
    #[error("the connection closed before the response was complete")]
    Closed(#[source] BoxError),
    /// The response body was larger than the client accepts.
    #[error("the response body is larger than {0} bytes")]
    ResponseTooLarge(usize),
    /// The transport itself is gone (e.g. a tunnel that was shut down).
    #[error("the transport is not available: {0}")]
    Unavailable(String),
    /// Any other failure of the underlying client.
    #[error("the request failed")]
    Other(#[source] BoxError),
}

/// The server answered, but not with something this client understands.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unexpected response (HTTP {status}): {message}")]
pub struct ProtocolError {
    /// The HTTP status of the response.
    pub status: StatusCode,
    /// What was wrong with it.
    pub message: String,
}

/// Why a generated client's call failed.
///
/// `Service` is an error the server returned (the method's own error type);
/// `Transport` means no answer arrived; `Protocol` means an answer arrived that was
/// not an HRPC response (for example a proxy's HTML error page).
#[derive(Debug)]
pub enum CallError<E> {
    /// The server answered with an error.
    Service(E),
    /// The request never got an answer.
    Transport(TransportError),
    /// The answer was not a valid HRPC response.
    Protocol(ProtocolError),
}

impl<E> CallError<E> {
    /// Whether the failure happened before any server answered.
    pub fn is_transport(&self) -> bool {
        matches!(self, CallError::Transport(_))
    }

    /// The server's error, if this is one.
    pub fn service_error(&self) -> Option<&E> {
        match self {
            CallError::Service(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Service(e) => write!(f, "server error: {e}"),
            CallError::Transport(e) => write!(f, "transport error: {e}"),
            CallError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Service(e) => Some(e),
            CallError::Transport(e) => Some(e),
            CallError::Protocol(e) => Some(e),
        }
    }
}

impl<E: Into<HrpcError>> From<CallError<E>> for HrpcError {
    /// Folds a failed call into one error to pass on: transport failures become
    /// `unavailable` (or `deadline_exceeded` for a timeout).
    fn from(e: CallError<E>) -> Self {
        match e {
            CallError::Service(e) => e.into(),
            CallError::Transport(TransportError::Timeout(d)) => {
                HrpcError::deadline_exceeded(format!("no response within {d:?}"))
            }
            CallError::Transport(t) => HrpcError::unavailable(format!("{t}{}", source_suffix(&t))),
            CallError::Protocol(p) => {
                HrpcError::new(Code::from_http_status(p.status), p.to_string())
            }
        }
    }
}

fn source_suffix(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Per-call options: a deadline and extra headers.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The call's deadline, sent as `hrpc-timeout-ms` and enforced locally too.
    pub timeout: Option<Duration>,
    /// Extra request headers (e.g. `authorization`).
    pub headers: HeaderMap,
}

/// How much longer than the deadline the client waits for the server's own
/// `deadline_exceeded` answer before giving up on the connection.
const LOCAL_DEADLINE_GRACE: Duration = Duration::from_millis(200);

/// An untyped HRPC client: a base URL, a transport and default options. Generated
/// clients wrap one.
#[derive(Clone)]
pub struct Client {
    base: BaseUrl,
    transport: Arc<dyn Transport>,
    options: CallOptions,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.text)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base URL is not usable.
    #[error("invalid HRPC base URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TLS settings are not usable.
    #[error("invalid TLS settings")]
    Tls(#[from] TlsConfigError),
}

impl Client {
    /// A client for the services mounted at `base_url` (e.g.
    /// `https://lapdev.example.com/rpc`), sending through `transport`.
    pub fn new(base_url: &str, transport: impl Transport) -> Result<Self, BuildError> {
        Self::with_shared_transport(base_url, Arc::new(transport))
    }

    /// Like [`Client::new`] with a transport that other clients share.
    pub fn with_shared_transport(
        base_url: &str,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, BuildError> {
        let invalid = |reason: &'static str| BuildError::InvalidBaseUrl {
            url: base_url.to_owned(),
            reason,
        };
        let uri: http::Uri = base_url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(invalid("the scheme must be http or https")),
        }
        if uri.host().is_none() {
            return Err(invalid("the URL has no host"));
        }
        if uri.query().is_some() {
            return Err(invalid("the URL must not have a query"));
        }
        let base = BaseUrl::new(base_url, &uri).ok_or_else(|| invalid("the URL has no host"))?;
        Ok(Self {
            base,
            transport,
            options: CallOptions::default(),
        })
    }

    /// A client over plain HTTP(S) with the default [`HttpTransportConfig`].
    pub fn http(base_url: &str) -> Result<Self, BuildError> {
        Self::new(
            base_url,
            HttpTransport::new(HttpTransportConfig::default())?,
        )
    }

    /// A client that calls an in-process router (no sockets), for tests.
    pub fn in_process(router: axum::Router) -> Self {
        let uri = http::Uri::from_static("http://in-process");
        Self {
            base: BaseUrl::new("http://in-process", &uri).expect("a URL with scheme and host"),
            transport: Arc::new(ServiceTransport::new(router)),
            options: CallOptions::default(),
        }
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        &self.base.text
    }

    /// The options every call of this client uses.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// A copy of this client whose calls use `options`.
    pub fn with_options(&self, options: CallOptions) -> Self {
        Self {
            options,
            ..self.clone()
        }
    }

    /// A copy of this client whose calls have the deadline `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        c.options.timeout = Some(timeout);
        c
    }

    /// A copy of this client that sends `name: value` on every call.
    pub fn with_header(&self, name: HeaderName, value: HeaderValue) -> Self {
        let mut c = self.clone();
        c.options.headers.insert(name, value);
        c
    }

    /// Calls `{base}/{service}/{method}` with the JSON object `args` and decodes the
    /// answer. Generated clients call this; it is public for hand-written callers.
    pub async fn call<A, T, E>(
        &self,
        service: &'static str,
        method: &'static str,
        args: &A,
    ) -> Result<T, CallError<E>>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
        E: From<HrpcError>,
    {
        // The span records the request id; without anyone recording it, the
        // client sends none of its own and the server mints the one it logs and
        // echoes (one header less each way on every call).
        let span = tracing::debug_span!(
            "hrpc_call",
            service,
            method,
            request_id = tracing::field::Empty
        );
        let request_id = match self.options.headers.get(&REQUEST_ID_NAME) {
            Some(given) if given.to_str().is_ok() => Some(given.clone()),
            _ if span.is_disabled() => None,
            _ => Some(new_request_id_header()),
        };
        if let Some(id) = &request_id {
            span.record("request_id", id.to_str().unwrap_or_default());
        }
        let call = async move {
            let request = self.build_request(service, method, args, request_id)?;
            let send = self.transport.send(request);
            let response = match self.options.timeout {
                Some(t) => tokio::time::timeout(t + LOCAL_DEADLINE_GRACE, send)
                    .await
                    .map_err(|_| CallError::Transport(TransportError::Timeout(t)))?,
                None => send.await,
            };
            let response = response.map_err(|e| {
                tracing::debug!(error = %e, "hrpc transport failure");
                CallError::Transport(e)
            })?;
            decode_response(response)
        };
        // A span nobody records is not entered on every poll.
        if span.is_disabled() {
            call.await
        } else {
            call.instrument(span).await
        }
    }

    fn build_request<A: Serialize + ?Sized, E>(
        &self,
        service: &str,
        method: &str,
        args: &A,
        request_id: Option<HeaderValue>,
    ) -> Result<Request<Bytes>, CallError<E>> {
        let body = serde_json::to_vec(args).map_err(|e| {
            CallError::Transport(TransportError::Other(
                format!("could not encode the arguments: {e}").into(),
            ))
        })?;
        let uri = self.base.method_uri(service, method).map_err(|e| {
            CallError::Transport(TransportError::Other(
                format!("invalid method path /{service}/{method}: {e}").into(),
            ))
        })?;
        let mut request = Request::new(Bytes::from(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.reserve(4 + self.options.headers.len());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
        headers.insert(VERSION_NAME, VERSION_VALUE);
        if let Some(t) = self.options.timeout {
            // The header takes 1 to 10 digits: a sub-millisecond deadline is sent
            // as 1 ms and one beyond ten digits as the largest the header holds.
            let ms = t.as_millis().clamp(1, 9_999_999_999) as u64;
            headers.insert(TIMEOUT_NAME, HeaderValue::from(ms));
        }
        for (name, value) in &self.options.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(id) = request_id {
            headers.insert(REQUEST_ID_NAME, id);
        }
        Ok(request)
    }
}

/// A client's base URL, split once so that a call's URI is assembled from
/// parts instead of being formatted and parsed again.
#[derive(Debug, Clone)]
struct BaseUrl {
    /// As given, without a trailing `/`.
    text: Arc<str>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The path below which services live, without a trailing `/` (may be empty).
    path: Arc<str>,
}

impl BaseUrl {
    fn new(text: &str, uri: &http::Uri) -> Option<Self> {
        let text = text.trim_end_matches('/');
        Some(Self {
            text: Arc::from(text),
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            path: Arc::from(uri.path().trim_end_matches('/')),
        })
    }

    /// `{base}/{service}/{method}`.
    fn method_uri(&self, service: &str, method: &str) -> Result<http::Uri, http::Error> {
        let mut path = String::with_capacity(self.path.len() + service.len() + method.len() + 2);
        path.push_str(&self.path);
        path.push('/');
        path.push_str(service);
        path.push('/');
        path.push_str(method);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(Bytes::from(
            path,
        ))?);
        Ok(http::Uri::from_parts(parts)?)
    }
}

/// Turns a response into the method's result.
pub(crate) fn decode_response<T, E>(response: Response<Bytes>) -> Result<T, CallError<E>>
where
    T: DeserializeOwned,
    E: From<HrpcError>,
{
    let status = response.status();
    let version_ok = match response.headers().get(&VERSION_NAME) {
        None => true,
        Some(v) => {
            v.to_str()
                .ok()
                .and_then(|s| s.split('.').next())
                .and_then(|m| m.trim().parse::<u32>().ok())
                == Some(PROTOCOL_VERSION)
        }
    };
    if !version_ok {
        return Err(CallError::Protocol(ProtocolError {
            status,
            message: format!(
                "the server speaks HRPC version {:?}, this client speaks version {PROTOCOL_VERSION}",
                response.headers().get(VERSION_HEADER)
            ),
        }));
    }
    let body = response.into_body();
    if status == StatusCode::OK {
        return serde_json::from_slice(&body).map_err(|e| {
            CallError::Protocol(ProtocolError {
                status,
                message: format!("could not decode the response body: {e}"),
            })
        });
    }
    match serde_json::from_slice::<HrpcError>(&body) {
        Ok(error) if !status.is_success() => Err(CallError::Service(E::from(error))),
        _ => Err(CallError::Protocol(ProtocolError {
            status,
            message: format!(
                "not an HRPC error body: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        })),
    }
}
