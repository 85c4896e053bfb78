//! Prometheus metrics: HTTP (and so HRPC, one path per method) request counters
//! and latencies, and the number of connected clusters, served at `/metrics`.
//!
//! Every label comes from a closed set, so no request can add a series: the
//! `route` label is one of the server's own routes (the HRPC paths listed by the
//! services' descriptors plus the fixed endpoints, see [`KnownRoutes`]), the
//! `method` label one of the standard HTTP methods, and the `status` label one
//! the server itself answered; anything else is `other`. The series count is
//! therefore bounded by routes × methods × statuses, whatever clients send.
//!
//! `/metrics` is served on the public listener unless `--metrics-listen` moves
//! it to a listener of its own; `--metrics-token-file` additionally requires
//! `authorization: Bearer <token>` on it (see [`MetricsAccess`]).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use lapdev_hrpc::ServiceDescriptor;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The label used for anything outside a closed set.
pub const OTHER: &str = "other";

/// The process-wide recorder's handle. The first call installs the recorder;
/// later calls (several servers in one test process) share it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .and_then(|b| {
                    // Workspace starts take seconds to minutes, not milliseconds.
                    b.set_buckets_for_metric(
                        Matcher::Full(crate::lifecycle_metrics::WORKSPACE_START_SECONDS.into()),
                        &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0],
                    )
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; then that one
            // collects and ours renders nothing, which the metrics test would show.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The routes that get a `route` label of their own; every other path is
/// counted as [`OTHER`].
#[derive(Debug, Clone, Default)]
pub struct KnownRoutes {
    routes: Arc<HashSet<String>>,
}

impl KnownRoutes {
    /// The fixed endpoints plus every method of `services`, mounted below
    /// `rpc_prefix` (e.g. `/rpc`).
    pub fn new<'a>(
        fixed: impl IntoIterator<Item = &'a str>,
        rpc_prefix: &str,
        services: &[ServiceDescriptor],
    ) -> Self {
        let mut routes: HashSet<String> = fixed.into_iter().map(str::to_owned).collect();
        for service in services {
            for method in service.methods {
                routes.insert(format!("{rpc_prefix}{}", method.path));
            }
        }
        Self {
            routes: Arc::new(routes),
        }
    }

    /// The label for a matched route (`None`: nothing matched).
    pub fn label<'a>(&'a self, matched: Option<&'a str>) -> &'a str {
        match matched {
            Some(path) if self.routes.contains(path) => path,
            _ => OTHER,
        }
    }
}

/// The label for an HTTP method: the nine standard methods by name, any
/// extension method (which a client may invent freely) as [`OTHER`].
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => OTHER,
    }
}

/// axum middleware recording `lapdev_http_requests_total` and
/// `lapdev_http_request_duration_seconds` by method, route and status, each
/// from a closed set.
pub async fn track(State(routes): State<KnownRoutes>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = routes
        .label(
            request
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str()),
        )
        .to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("lapdev_http_requests_total", &labels).increment(1);
    metrics::histogram!("lapdev_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccess {
    /// When set, `/metrics` requires `authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
}

impl MetricsAccess {
    /// Whether a request with these headers may read the metrics. The token is
    /// compared in constant time.
    pub fn allows(&self, headers: &http::HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let presented = crate::auth::layer::bearer(headers).unwrap_or("");
        constant_time_eq(presented.as_bytes(), expected.as_bytes())
    }

    /// The refusal for a request without the token.
    pub fn refusal() -> Response {
        (
            http::StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
            "metrics need `authorization: Bearer <token>`",
        )
            .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_methods_and_unknown_routes_are_other() {
        let routes = KnownRoutes::new(["/healthz"], "/rpc", &[]);
        assert_eq!(routes.label(Some("/healthz")), "/healthz");
        assert_eq!(routes.label(Some("/rpc/{*rest}")), OTHER);
        assert_eq!(routes.label(None), OTHER);
        let invented = http::Method::from_bytes(b"M12345").unwrap();
        assert_eq!(method_label(&invented), OTHER);
        assert_eq!(method_label(&http::Method::POST), "POST");
    }

    #[test]
    fn session_endpoints_are_labelled_by_their_templates() {
        let routes = crate::known_routes();
        for route in crate::access::ROUTES {
            assert_eq!(routes.label(Some(route)), route);
        }
        assert_eq!(routes.label(Some("/api/v1/workspaces/box/exec")), OTHER);
    }

    #[test]
    fn sign_in_endpoints_are_labelled_by_their_routes() {
        let routes = crate::known_routes();
        for route in crate::auth::web::ROUTES {
            assert_eq!(routes.label(Some(route)), route);
        }
        assert_eq!(routes.label(Some("/auth/other")), OTHER);
    }

    #[test]
    fn the_token_is_required_when_configured() {
        let access = MetricsAccess {
            token: Some("s3cret".into()),
        };
        let mut headers = http::HeaderMap::new();
        assert!(!access.allows(&headers));
        headers.insert("authorization", "Bearer wrong!".parse().unwrap());
        assert!(!access.allows(&headers));
        headers.insert("authorization", "bearer s3cret".parse().unwrap());
        assert!(access.allows(&headers));
        assert!(MetricsAccess::default().allows(&http::HeaderMap::new()));
    }
}
