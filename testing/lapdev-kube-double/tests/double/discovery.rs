//! `/version` and discovery, as kube's client and `Discovery` use them.

use kube::discovery::{Discovery, Scope};

use crate::start;

#[tokio::test]
async fn version_is_served() {
    let (_double, client) = start().await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(
        (v.major.as_str(), v.minor.as_str(), v.git_version.as_str()),
        ("1", "33", "v1.33.0")
    );
}

#[tokio::test]
async fn discovery_finds_core_and_grouped_resources() {
    let (_double, client) = start().await;
    let discovery = Discovery::new(client).run().await.unwrap();
    let (pods, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.plural == "pods")
        .expect("pods discovered");
    assert_eq!(
        (pods.kind.as_str(), pods.api_version.as_str()),
        ("Pod", "v1")
    );
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "pods/status" || s.plural == "status")
    );
    assert!(discovery.has_group("coordination.k8s.io"));
    let nodes = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.plural == "nodes")
        .unwrap();
    assert_eq!(nodes.1.scope, Scope::Cluster);
}

#[tokio::test]
async fn the_router_serves_in_process_without_a_socket() {
    use tower::ServiceExt;
    let (double, _client) = start().await;
    let req = http::Request::get("/api/v1/namespaces/default/pods/nope")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = double.router().oneshot(req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str()),
        (Some("Status"), Some("NotFound"))
    );
}
