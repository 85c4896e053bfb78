//! `/healthz`, `/readyz`, `/metrics`, and the HRPC fallback through the whole app.

mod common;

use common::TestServer;
use lapdev_hrpc::Transport as _;

async fn get(base: &str, path: &str) -> (u16, String) {
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let response = transport
        .send(
            http::Request::get(format!("{base}{path}"))
                .body(bytes::Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    (
        response.status().as_u16(),
        String::from_utf8_lossy(response.body()).into_owned(),
    )
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let t = TestServer::postgres().await;
    assert_eq!(get(&t.base(), "/healthz").await, (200, "ok".to_owned()));
    assert_eq!(get(&t.base(), "/readyz").await.0, 200);

    t.admin().list_clusters(false).await.unwrap();
    // A sign-in endpoint (refused: no code) is labelled by its route, not `other`.
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let exchange = transport
        .send(
            http::Request::post(format!("{}/auth/cli/exchange", t.base()))
                .header("content-type", "application/json")
                .body(bytes::Bytes::from_static(b"{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(exchange.status().is_client_error(), "{exchange:?}");
    let (status, body) = get(&t.base(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("lapdev_connected_clusters"),
        "metrics body: {body:?}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("lapdev_http_requests_total")
                && l.contains("route=\"/rpc/AdminRpc/list_clusters\"")
                && l.contains("status=\"200\"")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("lapdev_http_requests_total")
                && l.contains("route=\"/auth/cli/exchange\"")),
        "{body}"
    );
    assert!(body.contains("lapdev_http_request_duration_seconds"));
}

#[tokio::test]
async fn unknown_rpc_paths_are_hrpc_404s_and_get_on_a_method_is_405() {
    let t = TestServer::postgres().await;
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    // An authenticated GET on a method: 405 (an unauthenticated one is 401 first).
    let response = transport
        .send(
            http::Request::get(format!("{}/rpc/AdminRpc/list_clusters", t.base()))
                .header("authorization", format!("Bearer {}", t.admin_token))
                .body(bytes::Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(get(&t.base(), "/rpc/AdminRpc/list_clusters").await.0, 401);
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let response = transport
        .send(
            http::Request::post(format!("{}/rpc/AdminRpc/nope", t.base()))
                .header("content-type", "application/json")
                .body(bytes::Bytes::from_static(b"{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    // Unknown methods are 404 before authentication is asked for.
    assert_eq!(response.status().as_u16(), 404);
    let e: lapdev_hrpc::HrpcError = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(e.code, lapdev_hrpc::Code::Unimplemented);
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let mut t = TestServer::postgres().await;
    // Dropping the test database (WITH FORCE) ends the server's connections.
    drop(t.database.take());
    let (status, _) = get(&t.base(), "/readyz").await;
    assert_eq!(status, 503);
    // Liveness is unaffected.
    assert_eq!(get(&t.base(), "/healthz").await.0, 200);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let t = TestServer::postgres().await;
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = transport
            .send(
                http::Request::post(format!("{}/rpc/AdminRpc/list_clusters", t.base()))
                    .header("content-type", "application/json")
                    .header("authorization", format!("{scheme} {}", t.admin_token))
                    .body(bytes::Bytes::from_static(br#"{"include_deleted": false}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
    }
    // Another scheme is still refused.
    let response = transport
        .send(
            http::Request::post(format!("{}/rpc/AdminRpc/list_clusters", t.base()))
                .header("content-type", "application/json")
                .header("authorization", format!("Basic {}", t.admin_token))
                .body(bytes::Bytes::from_static(b"{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
