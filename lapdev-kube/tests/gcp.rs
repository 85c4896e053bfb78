//! The GCP provider: the real `google-cloud-container-v1` client against the local
//! GKE stand-in (`provider::testing`), which verifies every self-signed JWT with the
//! test key's public half and serves the OAuth JWT-bearer grant.

use std::time::Duration;

use lapdev_common::status::K8sProviderKind;
use lapdev_kube::provider::testing::{CLIENT_EMAIL, GkeStandIn, PROJECT, TestKey};
use lapdev_kube::provider::token::TokenSource;
use lapdev_kube::provider::{
    ApiErrorKind, ClusterMode, EndpointPolicy, GcpConfig, GcpProvider, K8sProvider,
    NewProviderCluster, OperationState, ProviderClusterStatus, ProviderError, ServiceAccountKey,
    connect,
};

/// The stand-in listens on loopback http: allowed only by this explicit policy.
const STAND_INS: EndpointPolicy = EndpointPolicy::AllowTestStandIns;

async fn provider(stand_in: &GkeStandIn) -> GcpProvider {
    let config = GcpConfig::from_value(&stand_in.config_json(Some("europe-west1"))).unwrap();
    let key = ServiceAccountKey::parse(&stand_in.key_json()).unwrap();
    GcpProvider::new(config, key, STAND_INS).await.unwrap()
}

const FAST: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn lists_clusters_across_locations_with_a_verified_jwt() {
    let gke = GkeStandIn::start().await.unwrap();
    gke.add_cluster("us-central1-a", "beta", "1.32.9-gke.100", 2);
    gke.add_cluster("europe-west1", "alpha", "1.33.5-gke.200", 3);
    let p = provider(&gke).await;
    assert_eq!(p.kind(), K8sProviderKind::GCP);

    let clusters = p.list_clusters().await.unwrap();
    let names: Vec<_> = clusters
        .iter()
        .map(|c| (c.location.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [("europe-west1", "alpha"), ("us-central1-a", "beta")]
    );
    let alpha = &clusters[0];
    assert_eq!(alpha.status, ProviderClusterStatus::Running);
    assert_eq!(alpha.kubernetes_version.as_deref(), Some("1.33.5-gke.200"));
    assert_eq!(alpha.node_count, 3);
    assert_eq!(
        alpha.external_id,
        format!(
            "https://container.googleapis.com/v1/projects/{PROJECT}/locations/europe-west1/clusters/alpha"
        )
    );
    assert_eq!(alpha.node_pools.len(), 1);
    assert_eq!(
        alpha.node_pools[0].machine_type.as_deref(),
        Some("e2-standard-4")
    );
    // The client signed a JWT locally; the stand-in verified it with the public key.
    let claims = gke.last_auth_claims().expect("a verified JWT");
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    // Google APIs need no token endpoint call.
    assert_eq!(gke.api_calls("token"), 0);
    assert_eq!(gke.api_calls("list"), 1);
    p.validate_credentials().await.unwrap();
}

#[tokio::test]
async fn gets_one_cluster_and_reports_not_found_with_gkes_message() {
    let gke = GkeStandIn::start().await.unwrap();
    gke.add_cluster("europe-west1", "alpha", "1.33.5-gke.200", 3);
    gke.set_cluster_endpoint(
        "34.1.2.3",
        Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    );
    let p = provider(&gke).await;
    let c = p.get_cluster("europe-west1", "alpha").await.unwrap();
    assert_eq!(c.name, "alpha");
    assert_eq!(c.location, "europe-west1");
    assert_eq!(c.endpoint.as_deref(), Some("34.1.2.3"));
    assert!(!c.autopilot);

    let err = p.get_cluster("europe-west1", "missing").await.unwrap_err();
    let api = err.api_error().expect("an API error");
    assert_eq!(api.kind, ApiErrorKind::NotFound);
    assert!(
        api.message.contains("clusters/missing"),
        "GKE's message is kept: {api:?}"
    );
    assert!(matches!(err, ProviderError::GetCluster { .. }), "{err:?}");
}

#[tokio::test]
async fn creates_an_autopilot_cluster_and_polls_the_operation_to_done() {
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_operation_polls(3);
    gke.set_cluster_endpoint("35.4.5.6", None);
    let p = provider(&gke).await;
    let op = p
        .create_cluster(&NewProviderCluster {
            name: "auto-1".into(),
            location: None, // the provider's default location
            mode: ClusterMode::Autopilot,
        })
        .await
        .unwrap();
    assert_eq!(op.kind, "CREATE_CLUSTER");
    assert_eq!(op.state, OperationState::Running);
    assert!(
        op.name.starts_with(&format!(
            "projects/{PROJECT}/locations/europe-west1/operations/"
        )),
        "{}",
        op.name
    );
    let during = p.get_cluster("europe-west1", "auto-1").await.unwrap();
    assert_eq!(during.status, ProviderClusterStatus::Provisioning);

    let done = p.wait_operation(&op, DEADLINE, FAST).await.unwrap();
    assert!(done.is_done());
    assert_eq!(gke.api_calls("operation"), 3);
    let c = p.get_cluster("europe-west1", "auto-1").await.unwrap();
    assert_eq!(c.status, ProviderClusterStatus::Running);
    assert!(c.autopilot);
    assert_eq!(c.endpoint.as_deref(), Some("35.4.5.6"));
    assert_eq!(Some(c.external_id), done.target);
}

#[tokio::test]
async fn creates_a_standard_cluster_with_a_node_pool() {
    let gke = GkeStandIn::start().await.unwrap();
    let p = provider(&gke).await;
    let op = p
        .create_cluster(&NewProviderCluster {
            name: "std-1".into(),
            location: Some("us-central1-a".into()),
            mode: ClusterMode::Standard {
                machine_type: "n2-standard-8".into(),
                node_count: 4,
            },
        })
        .await
        .unwrap();
    p.wait_operation(&op, DEADLINE, FAST).await.unwrap();
    let sent = gke.cluster("us-central1-a", "std-1").unwrap();
    assert_eq!(
        sent["nodePools"][0]["config"]["machineType"],
        "n2-standard-8"
    );
    assert_eq!(sent["nodePools"][0]["initialNodeCount"], 4);
    assert!(sent.get("autopilot").is_none());
    let c = p.get_cluster("us-central1-a", "std-1").await.unwrap();
    assert_eq!(c.node_count, 4);
    assert_eq!(c.node_pools[0].status, "RUNNING");

    // A second create of the same name: GKE's ALREADY_EXISTS.
    let err = p
        .create_cluster(&NewProviderCluster {
            name: "std-1".into(),
            location: Some("us-central1-a".into()),
            mode: ClusterMode::Autopilot,
        })
        .await
        .unwrap_err();
    assert_eq!(err.api_error().unwrap().kind, ApiErrorKind::AlreadyExists);
}

#[tokio::test]
async fn deletes_a_cluster_and_it_is_gone() {
    let gke = GkeStandIn::start().await.unwrap();
    gke.add_cluster("europe-west1", "old", "1.33.5-gke.200", 1);
    gke.set_operation_polls(2);
    let p = provider(&gke).await;
    let op = p.delete_cluster("europe-west1", "old").await.unwrap();
    assert_eq!(op.kind, "DELETE_CLUSTER");
    let c = p.get_cluster("europe-west1", "old").await.unwrap();
    assert_eq!(c.status, ProviderClusterStatus::Stopping);
    p.wait_operation(&op, DEADLINE, FAST).await.unwrap();
    assert!(p.list_clusters().await.unwrap().is_empty());
    let err = p.delete_cluster("europe-west1", "old").await.unwrap_err();
    assert_eq!(err.api_error().unwrap().kind, ApiErrorKind::NotFound);
}

#[tokio::test]
async fn api_errors_keep_gkes_message() {
    let gke = GkeStandIn::start().await.unwrap();
    let p = provider(&gke).await;

    gke.fail_next(
        "list",
        403,
        "PERMISSION_DENIED",
        "Required 'container.clusters.list' permission for 'projects/lapdev-test'.",
    );
    let err = p.list_clusters().await.unwrap_err();
    let api = err.api_error().unwrap();
    assert_eq!(api.kind, ApiErrorKind::PermissionDenied);
    assert_eq!(
        api.message,
        "Required 'container.clusters.list' permission for 'projects/lapdev-test'."
    );
    assert!(err.to_string().starts_with("listing clusters: "), "{err}");

    gke.fail_next(
        "create",
        429,
        "RESOURCE_EXHAUSTED",
        "Insufficient regional quota to satisfy request: resource \"CPUS\": request requires '12.0' and is short '4.0'.",
    );
    let err = p
        .create_cluster(&NewProviderCluster {
            name: "big".into(),
            location: None,
            mode: ClusterMode::Standard {
                machine_type: "e2-standard-4".into(),
                node_count: 3,
            },
        })
        .await
        .unwrap_err();
    let api = err.api_error().unwrap();
    assert_eq!(api.kind, ApiErrorKind::ResourceExhausted);
    assert!(
        api.message.contains("Insufficient regional quota"),
        "{api:?}"
    );
    assert_eq!(gke.api_calls("create"), 1, "a quota error is not retried");

    // A project the account has no access to.
    let other = GcpConfig {
        project: "someone-elses".into(),
        ..GcpConfig::from_value(&gke.config_json(None)).unwrap()
    };
    let p2 = GcpProvider::new(
        other,
        ServiceAccountKey::parse(&gke.key_json()).unwrap(),
        STAND_INS,
    )
    .await
    .unwrap();
    let err = p2.validate_credentials().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::ValidateCredentials(_)),
        "{err:?}"
    );
    assert_eq!(
        err.api_error().unwrap().kind,
        ApiErrorKind::PermissionDenied
    );
    assert!(err.provider_message().contains("someone-elses"));
}

#[tokio::test]
async fn a_failed_operation_is_an_error_with_gkes_message() {
    let gke = GkeStandIn::start().await.unwrap();
    gke.fail_next_operation("Insufficient quota to create node pool in europe-west1-b.");
    let p = provider(&gke).await;
    let op = p
        .create_cluster(&NewProviderCluster {
            name: "doomed".into(),
            location: None,
            mode: ClusterMode::Autopilot,
        })
        .await
        .unwrap();
    let err = p.wait_operation(&op, DEADLINE, FAST).await.unwrap_err();
    match &err {
        ProviderError::OperationFailed { message, .. } => {
            assert_eq!(
                message,
                "Insufficient quota to create node pool in europe-west1-b."
            )
        }
        other => panic!("expected OperationFailed, got {other:?}"),
    }
    let c = p.get_cluster("europe-west1", "doomed").await.unwrap();
    assert_eq!(c.status, ProviderClusterStatus::Error);
    assert_eq!(
        c.status_message.as_deref(),
        Some("Insufficient quota to create node pool in europe-west1-b.")
    );
}

#[tokio::test]
async fn waiting_for_an_operation_stops_at_the_deadline() {
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_operation_polls(u32::MAX);
    let p = provider(&gke).await;
    let op = p
        .create_cluster(&NewProviderCluster {
            name: "slow".into(),
            location: None,
            mode: ClusterMode::Autopilot,
        })
        .await
        .unwrap();
    let err = p
        .wait_operation(&op, Duration::from_millis(200), FAST)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::OperationDeadline { .. }),
        "{err:?}"
    );
    assert!(gke.api_calls("operation") >= 1);
}

#[tokio::test]
async fn malformed_keys_are_rejected_before_any_call() {
    let gke = GkeStandIn::start().await.unwrap();
    let good: serde_json::Value = serde_json::from_slice(&gke.key_json()).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    };
    let without = |field: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"not json at all".to_vec()),
        ("array", b"[1,2]".to_vec()),
        ("wrong type", with("type", "authorized_user".into())),
        ("no email", without("client_email")),
        ("bad email", with("client_email", "nobody".into())),
        ("no key", without("private_key")),
        ("not pem", with("private_key", "hello".into())),
        (
            "bad base64",
            with(
                "private_key",
                "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n".into(),
            ),
        ),
        (
            "not rsa",
            with(
                "private_key",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
        ),
        (
            "bad token uri",
            with("token_uri", "file:///etc/passwd".into()),
        ),
        (
            "plain http token uri",
            with("token_uri", "http://oauth2.example.com/token".into()),
        ),
        ("number", with("project_id", 7.into())),
        ("huge", vec![b' '; 70 * 1024]),
    ];
    let pem = TestKey::shared().private_pem().to_owned();
    for (case, bytes) in cases {
        let err = ServiceAccountKey::parse(&bytes).unwrap_err();
        assert!(
            matches!(err, ProviderError::MalformedCredentials(_)),
            "{case}: {err:?}"
        );
        // The message never echoes the key material.
        assert!(!err.to_string().contains("PRIVATE KEY-----\nMII"), "{case}");
        assert!(!err.to_string().contains(&pem[40..80]), "{case}");
        let err = connect(
            K8sProviderKind::GCP,
            &gke.config_json(None),
            &bytes,
            STAND_INS,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ProviderError::MalformedCredentials(_)),
            "{case}: {err:?}"
        );
    }
    for method in ["list", "get", "create", "delete", "operation", "token"] {
        assert_eq!(gke.api_calls(method), 0, "{method} was called");
    }
    // Configs are checked too.
    for bad in [
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!({"project": ""}),
        serde_json::json!({"project": "a/b"}),
        serde_json::json!({"project": "p", "endpoint": "ftp://x"}),
        serde_json::json!({"project": "p", "endpoint": "http://container.example.com"}),
    ] {
        assert!(
            matches!(
                connect(K8sProviderKind::GCP, &bad, &gke.key_json(), STAND_INS)
                    .await
                    .unwrap_err(),
                ProviderError::InvalidConfig(_)
            ),
            "{bad}"
        );
    }
    // And the key's Debug hides the private key.
    let key = ServiceAccountKey::parse(&gke.key_json()).unwrap();
    assert!(!format!("{key:?}").contains("PRIVATE"));
}

#[tokio::test]
async fn bad_requests_are_rejected_before_any_call() {
    let gke = GkeStandIn::start().await.unwrap();
    let p = provider(&gke).await;
    for (name, mode) in [
        ("Upper", ClusterMode::Autopilot),
        ("1starts-with-digit", ClusterMode::Autopilot),
        (
            "a-name-that-is-far-too-long-for-gke-clusters",
            ClusterMode::Autopilot,
        ),
        (
            "zero-nodes",
            ClusterMode::Standard {
                machine_type: "e2-small".into(),
                node_count: 0,
            },
        ),
        (
            "bad-machine",
            ClusterMode::Standard {
                machine_type: "e2/small".into(),
                node_count: 1,
            },
        ),
    ] {
        let err = p
            .create_cluster(&NewProviderCluster {
                name: name.into(),
                location: None,
                mode,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidRequest(_)),
            "{name}: {err:?}"
        );
    }
    assert!(matches!(
        p.get_cluster("europe-west1", "../x").await.unwrap_err(),
        ProviderError::InvalidRequest(_)
    ));
    assert!(matches!(
        p.get_operation("projects/other/locations/x/operations/y")
            .await
            .unwrap_err(),
        ProviderError::InvalidRequest(_)
    ));
    assert_eq!(gke.api_calls("create"), 0);
    assert_eq!(gke.api_calls("get"), 0);
}

#[tokio::test(start_paused = true)]
async fn access_tokens_are_cached_and_refreshed_before_expiry() {
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_token_expires_in(3600);
    let key = ServiceAccountKey::parse(&gke.key_json()).unwrap();
    let tokens = TokenSource::new(key, "https://www.googleapis.com/auth/cloud-platform").unwrap();

    let first = tokens.access_token().await.unwrap();
    assert_eq!(first, "ya29.stand-in-1");
    assert_eq!(tokens.access_token().await.unwrap(), first);
    assert_eq!(gke.tokens_issued(), 1);

    // 50 minutes later the token still has ten minutes: cached.
    tokio::time::advance(Duration::from_secs(50 * 60)).await;
    assert_eq!(tokens.access_token().await.unwrap(), first);
    assert_eq!(gke.tokens_issued(), 1);

    // Within five minutes of expiry: refreshed before it runs out.
    tokio::time::advance(Duration::from_secs(5 * 60 + 1)).await;
    let second = tokens.access_token().await.unwrap();
    assert_eq!(second, "ya29.stand-in-2");
    assert_eq!(gke.tokens_issued(), 2);
    assert_eq!(tokens.clone().access_token().await.unwrap(), second);

    // A refused grant is an AccessToken error naming the endpoint's reason.
    tokio::time::advance(Duration::from_secs(3600)).await;
    gke.fail_next("token", 400, "invalid_grant", "Invalid JWT Signature.");
    let err = tokens.access_token().await.unwrap_err();
    assert!(matches!(err, ProviderError::AccessToken(_)), "{err:?}");
    // The registered OAuth code and the status, never the endpoint's own text.
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    assert!(err.to_string().contains("HTTP 400"), "{err}");
    assert!(!err.to_string().contains("Invalid JWT Signature."), "{err}");
    assert!(!format!("{tokens:?}").contains("ya29"));
}

#[tokio::test]
async fn a_key_the_stand_in_does_not_know_is_unauthenticated() {
    let gke = GkeStandIn::start().await.unwrap();
    let stranger = TestKey::generate();
    let config = GcpConfig::from_value(&gke.config_json(None)).unwrap();
    let key = ServiceAccountKey::parse(&stranger.service_account_json(&gke.token_uri())).unwrap();
    let p = GcpProvider::new(config, key.clone(), STAND_INS)
        .await
        .unwrap();
    let err = p.validate_credentials().await.unwrap_err();
    assert_eq!(err.api_error().unwrap().kind, ApiErrorKind::Unauthenticated);
    let err = TokenSource::new(key, "scope")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid_grant"), "{err}");
}

#[tokio::test]
async fn cluster_access_has_endpoint_ca_and_an_exchanged_token() {
    let gke = GkeStandIn::start().await.unwrap();
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    gke.set_cluster_endpoint("34.1.2.3", Some(ca));
    gke.add_cluster("europe-west1", "alpha", "1.33.5-gke.200", 3);
    let p = provider(&gke).await;
    let c = p.get_cluster("europe-west1", "alpha").await.unwrap();
    let access = p.cluster_access(&c).await.unwrap();
    assert_eq!(access.server_url, "https://34.1.2.3");
    assert_eq!(access.ca_pem.as_deref(), Some(ca));
    assert_eq!(access.access_token, "ya29.stand-in-1");
    assert!(!format!("{access:?}").contains("ya29"));
    assert_eq!(gke.tokens_issued(), 1);
}

#[tokio::test]
async fn by_default_only_googles_hosts_are_called() {
    let gke = GkeStandIn::start().await.unwrap();
    // The stand-in's own (loopback) endpoint is refused without the explicit
    // policy, before any call.
    let err = connect(
        K8sProviderKind::GCP,
        &gke.config_json(None),
        &gke.key_json(),
        EndpointPolicy::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err:?}");
    // A Google endpoint with a key whose token_uri points elsewhere: refused too.
    for token_uri in [
        gke.token_uri(),
        "https://internal.example.com/token".to_owned(),
        "https://169.254.169.254/token".to_owned(),
    ] {
        let key = TestKey::shared().service_account_json(&token_uri);
        let err = connect(
            K8sProviderKind::GCP,
            &serde_json::json!({"project": PROJECT}),
            &key,
            EndpointPolicy::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ProviderError::MalformedCredentials(_)),
            "{token_uri}: {err:?}"
        );
    }
    for method in ["list", "get", "create", "delete", "operation", "token"] {
        assert_eq!(gke.api_calls(method), 0, "{method} was called");
    }
}

#[tokio::test]
async fn the_token_client_follows_no_redirect() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let gke = GkeStandIn::start().await.unwrap();
    // A token endpoint that redirects to the stand-in's real one.
    let target = gke.token_uri();
    let hits = Arc::new(AtomicUsize::new(0));
    let router = {
        let hits = hits.clone();
        axum::Router::new().route(
            "/token",
            axum::routing::post(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                async move {
                    (
                        axum::http::StatusCode::TEMPORARY_REDIRECT,
                        [(axum::http::header::LOCATION, target)],
                        "upstream body that must not be quoted",
                    )
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let key = ServiceAccountKey::parse(
        &TestKey::shared().service_account_json(&format!("http://{addr}/token")),
    )
    .unwrap();
    let err = TokenSource::new(key, "scope")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::AccessToken(_)), "{err:?}");
    assert!(err.to_string().contains("HTTP 307"), "{err}");
    assert!(!err.to_string().contains("must not be quoted"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(gke.api_calls("token"), 0, "the redirect was followed");
}
