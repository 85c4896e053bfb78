//! Provider endpoints through the real server without
//! `--allow-provider-test-endpoints`: only Google's hosts are accepted, and a
//! refused provider is neither stored nor called.

mod common;

use common::TestServer;
use lapdev_common::status::K8sProviderKind;
use lapdev_hrpc::{CallError, Client, Code};
use lapdev_kube::provider::testing::{GkeStandIn, PROJECT, TestKey};
use lapdev_server::admin::providers::ProviderRpcClient;

fn providers(t: &TestServer) -> ProviderRpcClient {
    ProviderRpcClient::new(
        Client::http(&format!("{}/rpc", t.base()))
            .unwrap()
            .with_header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {}", t.admin_token)).unwrap(),
            ),
    )
}

#[tokio::test]
async fn endpoints_and_token_uris_outside_googles_hosts_are_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gke = GkeStandIn::start().await.unwrap();
    let t = TestServer::embedded().await;
    let p = providers(&t);
    let cases = [
        // The stand-in's loopback endpoint.
        (
            gke.config_json(Some("europe-west1")),
            String::from_utf8(gke.key_json()).unwrap(),
        ),
        // Any https host that is not Google's.
        (
            serde_json::json!({"project": PROJECT, "endpoint": "https://metadata.internal.example"}),
            String::from_utf8(gke.key_json()).unwrap(),
        ),
        // Google's endpoint, but the key's token_uri elsewhere.
        (
            serde_json::json!({"project": PROJECT}),
            String::from_utf8(
                TestKey::shared().service_account_json("https://internal.example.com/token"),
            )
            .unwrap(),
        ),
    ];
    for (config, key) in cases {
        let err = p
            .create_provider(
                "gcp".into(),
                K8sProviderKind::GCP,
                config.clone(),
                key,
                true,
            )
            .await
            .unwrap_err();
        let CallError::Service(err) = err else {
            panic!("expected a service error, got {err:?}");
        };
        assert_eq!(err.code, Code::InvalidArgument, "{config}: {err:?}");
        assert!(
            err.message.contains("--allow-provider-test-endpoints"),
            "{err:?}"
        );
    }
    assert!(p.list_providers().await.unwrap().is_empty());
    for method in ["list", "get", "create", "delete", "operation", "token"] {
        assert_eq!(gke.api_calls(method), 0, "{method} was called");
    }
}
