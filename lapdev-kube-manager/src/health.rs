//! The manager's own HTTP port: `/healthz` (the process is alive), `/readyz`
//! (connected to the server and the Kubernetes API answers) and Prometheus
//! `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::manager::Connection;
use crate::tracker::KubeHealth;

/// What the endpoints read.
#[derive(Clone)]
pub struct HealthState {
    /// The server connection.
    pub connection: Arc<Connection>,
    /// The Kubernetes side's health.
    pub kube: watch::Receiver<KubeHealth>,
    /// The metrics recorder's handle; `/metrics` is empty without one.
    pub metrics: Option<PrometheusHandle>,
}

/// The routes.
pub fn app(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HealthState>) -> Response {
    let mut problems = Vec::new();
    if !state.connection.is_connected() {
        problems.push("not connected to the Lapdev server".to_owned());
    }
    if let Some(reason) = state.kube.borrow().clone() {
        problems.push(format!("Kubernetes API: {reason}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<HealthState>) -> Response {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_only_when_connected_and_kubernetes_answers() {
        let connection = Arc::new(Connection::default());
        let (kube_tx, kube) = watch::channel(Some("no answer".to_owned()));
        let app = app(HealthState {
            connection: connection.clone(),
            kube,
            metrics: None,
        });
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("not connected") && body.contains("no answer"),
            "{body}"
        );
        connection.set_for_tests(true);
        kube_tx.send(None).unwrap();
        assert_eq!(
            get(&app, "/readyz").await,
            (StatusCode::OK, "ready\n".into())
        );
        assert_eq!(get(&app, "/metrics").await.0, StatusCode::OK);
    }
}
