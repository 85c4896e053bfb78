//! Prometheus metrics: HTTP (and so HRPC, one path per method) request counters
//! and latencies, and the number of connected clusters, served at `/metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// axum middleware recording `lapdev_http_requests_total` and
/// `lapdev_http_request_duration_seconds` by method, matched route and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("lapdev_http_requests_total", &labels).increment(1);
    metrics::histogram!("lapdev_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
