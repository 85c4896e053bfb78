//! The receiver's side: the internal router, served on its own listener
//! (`--internal-listen`), for the other replicas only.
//!
//! Routes (all `POST`, all signed, see [`super::auth`]; anything else is `404`):
//!
//! - `/internal/v1/clusters/{cluster_id}/KubeManagerRpc/{method}`: one unary
//!   `KubeManagerRpc` call (a method the service declares), body at most
//!   HRPC's 4 MiB, sent down this replica's tunnel of the cluster; the
//!   manager's answer (status, headers, body) is returned unchanged.
//! - `/internal/v1/clusters/{cluster_id}/stream/{exec|portforward}`: a stream
//!   open (`lapdev_kube_rpc::stream`), bridged to the tunnel's
//!   `send_streaming`; both bodies stream.
//!
//! Carried headers: `hrpc-timeout-ms` (the deadline, enforced here, at most
//! the server's request timeout), `x-request-id`, [`USER_HEADER`] (logged with
//! stream opens, for the audit of sessions), `x-lapdev-stream`.
//!
//! Answers besides the manager's: `401` with no body for a bad signature or a
//! stale time; `503` HRPC `unavailable` with [`NOT_OWNER_HEADER`] when this
//! replica does not hold the cluster's tunnel; `504` `deadline_exceeded`;
//! `413` for an oversized call body.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode};
use lapdev_hrpc::protocol::{DEFAULT_MAX_BODY_BYTES, REQUEST_ID_HEADER, TIMEOUT_HEADER};
use lapdev_hrpc::{CallError, HrpcError, Transport as _};
use lapdev_kube::server::KubeClusterServer;
use lapdev_kube_rpc::KubeManagerRpcClient;
use lapdev_kube_rpc::stream::{EXEC_PATH, PORTFORWARD_PATH};
use uuid::Uuid;

use super::auth::{
    AuthError, MAC_HEADER, ReplicaKey, SENDER_HEADER, Signed, TIME_HEADER, USER_HEADER,
};
use super::forward::{CARRIED_TO_MANAGER, NOT_OWNER_HEADER};

/// What this replica served for others (tests read it; `/metrics` has
/// `lapdev_internal_requests_total` too).
#[derive(Debug, Clone, Default)]
pub struct Served {
    calls: Arc<AtomicU64>,
    streams: Arc<AtomicU64>,
}

impl Served {
    /// Manager calls sent down a local tunnel for another replica.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Streams opened on a local tunnel for another replica.
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Internal {
    kube: KubeClusterServer,
    served: Served,
    max_deadline: Duration,
}

fn count(kind: &'static str, outcome: &'static str) {
    metrics::counter!("lapdev_internal_requests_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// The internal router of the replica `routing` belongs to; a call waits at
/// most `max_deadline` (the server's request timeout).
pub fn router(routing: &super::Routing, max_deadline: Duration) -> Router {
    let state = Internal {
        kube: routing.kube().clone(),
        served: routing.served().clone(),
        max_deadline,
    };
    Router::new()
        .route(
            "/internal/v1/clusters/{cluster_id}/KubeManagerRpc/{method}",
            post(call),
        )
        .route(
            "/internal/v1/clusters/{cluster_id}/stream/{kind}",
            post(stream),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            routing.key().clone(),
            authenticate,
        ))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
}

async fn authenticate(State(key): State<ReplicaKey>, request: Request, next: Next) -> Response {
    match check(&key, &request) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            tracing::debug!(error = %e, path = request.uri().path(), "refused an internal request");
            count("any", "refused");
            StatusCode::UNAUTHORIZED.into_response()
        }
    }
}

fn check(key: &ReplicaKey, request: &Request) -> Result<(), AuthError> {
    let h = request.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let sender = text(SENDER_HEADER)
        .and_then(|s| s.parse::<Uuid>().ok())
        .ok_or(AuthError::Malformed)?;
    let time = text(TIME_HEADER)
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(AuthError::Malformed)?;
    let mac = text(MAC_HEADER).ok_or(AuthError::Malformed)?;
    let user = match h.get(USER_HEADER) {
        Some(v) => Some(v.to_str().map_err(|_| AuthError::Malformed)?),
        None => None,
    };
    let signed = Signed {
        time,
        method: request.method().as_str(),
        path: request.uri().path(),
        sender,
        user,
    };
    key.verify(&signed, mac, super::auth::now_secs())
}

fn not_owner() -> Response {
    let mut response =
        HrpcError::unavailable("this replica does not hold the cluster's tunnel").into_response();
    response
        .headers_mut()
        .insert(NOT_OWNER_HEADER, HeaderValue::from_static("1"));
    response
}

fn deadline(headers: &HeaderMap, max: Duration) -> Duration {
    headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(max, |ms| Duration::from_millis(ms).min(max))
}

fn to_manager(from: &HeaderMap, into: &mut HeaderMap) {
    for name in CARRIED_TO_MANAGER {
        if let Some(v) = from.get(name) {
            into.insert(name, v.clone());
        }
    }
}

async fn call(
    State(s): State<Internal>,
    Path((cluster_id, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    let known = KubeManagerRpcClient::DESCRIPTOR
        .methods
        .iter()
        .any(|m| m.name == method);
    let Ok(cluster_id) = cluster_id.parse::<Uuid>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !known {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(tunnel) = s.kube.tunnel(cluster_id) else {
        count("call", "not_owner");
        return not_owner();
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, DEFAULT_MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            count("call", "error");
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                HrpcError::invalid_argument("the request body is too large"),
            )
                .into_response();
        }
    };
    let mut forwarded = http::Request::new(body);
    *forwarded.method_mut() = http::Method::POST;
    *forwarded.uri_mut() = match format!("http://manager.tunnel/KubeManagerRpc/{method}").parse() {
        Ok(u) => u,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    to_manager(&parts.headers, forwarded.headers_mut());
    let limit = deadline(&parts.headers, s.max_deadline);
    tracing::debug!(
        cluster = %cluster_id,
        method,
        request_id = parts.headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()),
        from = parts.headers.get(SENDER_HEADER).and_then(|v| v.to_str().ok()),
        "forwarded manager call"
    );
    match tokio::time::timeout(limit, tunnel.send(forwarded)).await {
        Ok(Ok(response)) => {
            s.served.calls.fetch_add(1, Ordering::Relaxed);
            count("call", "ok");
            response.map(Body::from)
        }
        Ok(Err(e)) => {
            count("call", "error");
            HrpcError::from(CallError::<HrpcError>::Transport(e)).into_response()
        }
        Err(_) => {
            count("call", "deadline");
            HrpcError::deadline_exceeded(format!(
                "the manager did not answer within {} ms",
                limit.as_millis()
            ))
            .into_response()
        }
    }
}

async fn stream(
    State(s): State<Internal>,
    Path((cluster_id, kind)): Path<(String, String)>,
    request: Request,
) -> Response {
    let path = match kind.as_str() {
        "exec" => EXEC_PATH,
        "portforward" => PORTFORWARD_PATH,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let Ok(cluster_id) = cluster_id.parse::<Uuid>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(tunnel) = s.kube.tunnel(cluster_id) else {
        count("stream", "not_owner");
        return not_owner();
    };
    let (parts, body) = request.into_parts();
    let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    tracing::info!(
        cluster = %cluster_id,
        kind,
        user = text(USER_HEADER),
        request_id = text(REQUEST_ID_HEADER),
        from = text(SENDER_HEADER),
        "opening a stream for another replica"
    );
    let mut forwarded = http::Request::new(body);
    *forwarded.method_mut() = http::Method::POST;
    *forwarded.uri_mut() = http::Uri::from_static(path);
    to_manager(&parts.headers, forwarded.headers_mut());
    let limit = deadline(&parts.headers, s.max_deadline);
    match tokio::time::timeout(limit, tunnel.send_streaming(forwarded)).await {
        Ok(Ok(response)) => {
            s.served.streams.fetch_add(1, Ordering::Relaxed);
            count("stream", "ok");
            response
        }
        Ok(Err(e)) => {
            count("stream", "error");
            HrpcError::unavailable(format!("the stream to the cluster's manager failed: {e}"))
                .into_response()
        }
        Err(_) => {
            count("stream", "deadline");
            HrpcError::deadline_exceeded("the manager did not answer the stream open in time")
                .into_response()
        }
    }
}
