//! The server half: how a generated router turns an HTTP request into a method
//! call and the method's result into an HTTP response.
//!
//! Everything that can go wrong with a request before the method runs (method,
//! version, content type, deadline header, body size, JSON) is answered here with
//! an HRPC error body; the method's own errors go through [`HrpcError`]'s status
//! table. Nothing here panics on any input, and a panic inside a method becomes an
//! `internal` error instead of a dropped connection.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use bytes::Bytes;
use futures::FutureExt as _;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::context::Context;
use crate::error::{Code, HrpcError};
use crate::protocol::{
    CONTENT_TYPE_JSON, DEFAULT_MAX_BODY_BYTES, PROTOCOL_VERSION, REQUEST_ID_NAME, TIMEOUT_HEADER,
    TIMEOUT_NAME, VERSION_NAME, VERSION_VALUE, request_id_header,
};

/// Limits a generated router applies to every call.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted; larger bodies get `413 resource_exhausted`.
    pub max_body_bytes: usize,
    /// Upper bound on any call's deadline, and the deadline of calls that name
    /// none. `None` lets calls without a deadline run unbounded.
    pub max_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_timeout: None,
        }
    }
}

impl IntoResponse for HrpcError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        error_response(status, &self)
    }
}

/// The response for an error, with an explicit status (413 and 405 differ from the
/// code's usual status).
pub fn error_response(status: StatusCode, error: &HrpcError) -> Response {
    // Serialising an `HrpcError` cannot fail: it is strings and a JSON value.
    let body = serde_json::to_vec(error).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_JSON),
    );
    headers.insert(VERSION_NAME, VERSION_VALUE);
    response
}

/// Router fallback for paths that name no method: `404 unimplemented`.
pub async fn unimplemented_fallback(req: Request<Body>) -> Response {
    let request_id = request_id_header(req.headers().get(&REQUEST_ID_NAME));
    // Behind `Router::nest` the URI is stripped of the mount point; name the path
    // the caller actually sent.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_owned(), |u| u.path().to_owned());
    let error = HrpcError::new(Code::Unimplemented, format!("no HRPC method at {path}"));
    with_request_id(error.into_response(), request_id)
}

/// Answer for a method path called with anything but `POST`.
async fn method_not_allowed(req: Request<Body>) -> Response {
    let request_id = request_id_header(req.headers().get(&REQUEST_ID_NAME));
    let error = HrpcError::invalid_argument(format!(
        "HRPC methods are called with POST, not {}",
        req.method()
    ));
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, &error);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    with_request_id(response, request_id)
}

/// A `MethodRouter` for one HRPC method: `POST` goes to `handler`, any other HTTP
/// method gets `405` with an HRPC error body.
pub fn method_route<F, Fut>(handler: F) -> MethodRouter
where
    F: Fn(Request<Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    post(move |req: Request<Body>| handler(req)).fallback(method_not_allowed)
}

/// Serves one call: validates the request, decodes the arguments `A`, runs `call`
/// under the deadline and encodes its `Result<T, E>`.
pub async fn handle<A, T, E, F, Fut>(
    req: Request<Body>,
    config: &ServerConfig,
    service: &'static str,
    method: &'static str,
    call: F,
) -> Response
where
    A: DeserializeOwned,
    T: Serialize,
    E: Into<HrpcError>,
    F: FnOnce(Context, A) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let request_id = request_id_header(req.headers().get(&REQUEST_ID_NAME));
    let started = Instant::now();
    let span = tracing::info_span!(
        "hrpc",
        service,
        method,
        request_id = request_id.to_str().unwrap_or_default()
    );
    // A span nobody records is not entered on every poll.
    let mut response = if span.is_disabled() {
        serve(req, config, request_id.clone(), started, call).await
    } else {
        serve(req, config, request_id.clone(), started, call)
            .instrument(span.clone())
            .await
    };
    let status = response.status();
    if status.is_server_error() {
        span.in_scope(|| {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "hrpc call failed"
            )
        });
    } else if tracing::enabled!(tracing::Level::DEBUG) {
        span.in_scope(|| {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "hrpc call served"
            )
        });
    }
    response.headers_mut().insert(REQUEST_ID_NAME, request_id);
    response
}

async fn serve<A, T, E, F, Fut>(
    req: Request<Body>,
    config: &ServerConfig,
    request_id: HeaderValue,
    received: Instant,
    call: F,
) -> Response
where
    A: DeserializeOwned,
    T: Serialize,
    E: Into<HrpcError>,
    F: FnOnce(Context, A) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let (parts, body) = req.into_parts();

    if let Err(e) = check_version(&parts.headers) {
        return e.into_response();
    }
    if let Err(e) = check_content_type(&parts.headers) {
        return error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, &e);
    }
    let timeout = match requested_timeout(&parts.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let timeout = match (timeout, config.max_timeout) {
        (Some(t), Some(max)) => Some(t.min(max)),
        (t, max) => t.or(max),
    };
    let deadline = timeout.map(|t| received + t);

    let body = match read_body(body, config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let e = HrpcError::new(
                Code::ResourceExhausted,
                format!(
                    "request body is larger than the limit of {} bytes",
                    config.max_body_bytes
                ),
            );
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, &e);
        }
        Err(BodyError::Read(msg)) => {
            return HrpcError::invalid_argument(format!("could not read request body: {msg}"))
                .into_response();
        }
    };
    let args: A = match decode_args(&body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    // Replies are often about as large as requests (echoes, updates): start the
    // reply's buffer there instead of growing it from nothing.
    let reply_hint = body.len();
    drop(body);

    let ctx = Context::from_request(request_id, deadline, parts.headers, parts.extensions);
    let fut = AssertUnwindSafe(call(ctx, args)).catch_unwind();
    let outcome = match timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(done) => done,
            Err(_) => {
                return HrpcError::deadline_exceeded(format!(
                    "the call did not finish within its deadline of {} ms",
                    t.as_millis()
                ))
                .into_response();
            }
        },
        None => fut.await,
    };
    match outcome {
        Ok(Ok(value)) => json_response_sized(&value, reply_hint),
        Ok(Err(e)) => e.into().into_response(),
        Err(_panic) => {
            tracing::error!("hrpc method panicked");
            HrpcError::internal("the method failed unexpectedly").into_response()
        }
    }
}

/// Encodes a success value as a `200` JSON response.
pub fn json_response<T: Serialize>(value: &T) -> Response {
    json_response_sized(value, 0)
}

/// Smallest and largest starting size of a reply's buffer.
const REPLY_BUFFER_MIN: usize = 128;
const REPLY_BUFFER_MAX: usize = 1024 * 1024;

/// [`json_response`] into a buffer that starts at `size_hint` bytes (within
/// bounds), so a large reply is not copied while the buffer doubles.
fn json_response_sized<T: Serialize>(value: &T, size_hint: usize) -> Response {
    let mut buf = Vec::with_capacity(size_hint.clamp(REPLY_BUFFER_MIN, REPLY_BUFFER_MAX));
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => {
            let body = buf;
            let mut response = Response::new(Body::from(body));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_JSON),
            );
            headers.insert(VERSION_NAME, VERSION_VALUE);
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "could not encode hrpc response");
            HrpcError::internal("could not encode the response").into_response()
        }
    }
}

fn with_request_id(mut response: Response, request_id: HeaderValue) -> Response {
    response.headers_mut().insert(REQUEST_ID_NAME, request_id);
    response
}

/// Refuses a request that names a protocol major other than ours.
pub(crate) fn check_version(headers: &http::HeaderMap) -> Result<(), HrpcError> {
    let Some(value) = headers.get(&VERSION_NAME) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("").trim();
    // A `major.minor` value is accepted; only the major has to match.
    let major = text.split('.').next().unwrap_or("");
    if major.parse::<u32>().ok() == Some(PROTOCOL_VERSION) {
        return Ok(());
    }
    Err(HrpcError::failed_precondition(format!(
        "incompatible HRPC protocol version: the client speaks version {:?}, this server speaks version {PROTOCOL_VERSION}",
        String::from_utf8_lossy(value.as_bytes())
    )))
}

fn check_content_type(headers: &http::HeaderMap) -> Result<(), HrpcError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(HrpcError::invalid_argument(
            "missing content-type: HRPC requests are application/json",
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if essence.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
        Ok(())
    } else {
        Err(HrpcError::invalid_argument(format!(
            "unsupported content-type {:?}: HRPC requests are application/json",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

/// Parses `hrpc-timeout-ms`: 1 to 10 ASCII digits and not zero. Signs, spaces
/// inside, longer values and `0` are refused (a zero deadline could never be
/// met, and eleven digits are more than three years).
fn requested_timeout(headers: &http::HeaderMap) -> Result<Option<Duration>, HrpcError> {
    let Some(value) = headers.get(&TIMEOUT_NAME) else {
        return Ok(None);
    };
    parse_timeout_ms(value.as_bytes())
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            HrpcError::invalid_argument(format!(
                "{TIMEOUT_HEADER} must be 1 to 10 digits of milliseconds, above zero, got {:?}",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

/// The value of an `hrpc-timeout-ms` header, if it is 1–10 ASCII digits and
/// positive.
pub(crate) fn parse_timeout_ms(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most ten digits always fit a u64.
    let ms = value
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    (ms > 0).then_some(ms)
}

enum BodyError {
    TooLarge,
    Read(String),
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(e) => {
            // axum wraps the length error of an inner limit layer in its own type.
            let text = e.to_string();
            if text.contains("length limit") {
                Err(BodyError::TooLarge)
            } else {
                Err(BodyError::Read(text))
            }
        }
    }
}

/// Decodes the JSON object of named arguments. An empty body counts as `{}`;
/// unknown fields are ignored so newer clients can talk to older servers.
pub(crate) fn decode_args<A: DeserializeOwned>(body: &[u8]) -> Result<A, HrpcError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    // Serde would also take a struct from a JSON array; the protocol names
    // arguments, so only an object is accepted.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(HrpcError::invalid_argument(
            "invalid request body at `.`: expected a JSON object of named arguments",
        )
        .with_details(serde_json::json!({ "path": "." })));
    }
    // The fast path is plain serde_json; only a failed decode is decoded again
    // with path tracking, to say where it failed.
    if let Ok(args) = serde_json::from_slice(body) {
        return Ok(args);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let args = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // `?` is how serde_path_to_error names a position it could not track; at
        // the top level that is the body itself.
        let path = match e.path().to_string() {
            p if p == "?" => ".".to_owned(),
            p => p,
        };
        let inner = e.into_inner();
        HrpcError::invalid_argument(format!("invalid request body at `{path}`: {inner}"))
            .with_details(serde_json::json!({ "path": path }))
    })?;
    // Trailing garbage after the object is malformed JSON too.
    de.end().map_err(|e| {
        HrpcError::invalid_argument(format!("invalid request body: {e}"))
            .with_details(serde_json::json!({ "path": "." }))
    })?;
    Ok(args)
}
