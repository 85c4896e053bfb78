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

#[tokio::test]
async fn installs_keep_the_two_live_tokens_rule_and_revoke_the_previous_install_token() {
    use lapdev_server::admin::providers::{INSTALL_TOKEN_NAME, ProviderService, ProviderSettings};
    let t = TestServer::embedded().await;
    let state = &t.server.state;
    let service = ProviderService::new(
        state.db.clone(),
        state.kube.clone(),
        state.admin.manifest_defaults().clone(),
        state.admin.credential_key().clone(),
        ProviderSettings::default(),
    );
    let admin = t.admin();
    let created = admin
        .create_cluster("gke".into(), None, None, None)
        .await
        .unwrap();
    let org = state.db.list_organizations().await.unwrap()[0].id;
    let cluster = state.db.get_cluster(org, created.cluster.id).await.unwrap();
    let live = || async {
        admin
            .list_cluster_tokens("gke".into())
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.revoked_at.is_none())
            .collect::<Vec<_>>()
    };

    // The initial token plus a first install: two live.
    let (first, previous) = service.install_token(org, None, &cluster).await.unwrap();
    assert!(previous.is_empty());
    assert_eq!(live().await.len(), 2);
    // A second install at the limit revokes the first install's token
    // instead of minting a third.
    let (second, _) = service.install_token(org, None, &cluster).await.unwrap();
    let now_live = live().await;
    assert_eq!(now_live.len(), 2, "{now_live:?}");
    assert!(now_live.iter().all(|t| t.id != first.token.id));
    assert!(now_live.iter().any(|t| t.id == second.token.id));
    // The revoked install token no longer authenticates.
    assert!(
        t.cluster_client(first.secret.expose())
            .heartbeat(lapdev_kube_rpc::ManagerHealth::Ok)
            .await
            .is_err()
    );

    // Two live tokens, neither an install's: the install is refused.
    admin
        .revoke_cluster_token("gke".into(), second.token.id)
        .await
        .unwrap();
    admin
        .create_cluster_token("gke".into(), "manual".into(), None)
        .await
        .unwrap();
    let err = service
        .install_token(org, None, &cluster)
        .await
        .unwrap_err();
    assert!(err.contains("live tokens"), "{err}");
    assert_eq!(live().await.len(), 2);
    assert!(live().await.iter().all(|t| t.name != INSTALL_TOKEN_NAME));
}
