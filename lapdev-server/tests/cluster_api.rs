//! The server over real TCP on PostgreSQL: cluster registration, tokens, manager
//! reports and heartbeats, status, and authentication of both APIs.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, admin_client, sample_info};
use lapdev_common::status::ClusterStatus;
use lapdev_hrpc::{CallError, Code};
use lapdev_kube_rpc::ManagerHealth;

#[tokio::test]
async fn a_manager_reports_and_the_admin_api_shows_it() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("prod-eu".into(), Some("europe-west4".into()), None, None)
        .await
        .unwrap();
    assert_eq!(created.cluster.status, ClusterStatus::Pending);
    assert!(created.token_secret.starts_with("lapdev_ct_"));
    assert!(created.manifest.contains(&created.token_secret));
    // Before any report the cluster has no numbers, only the declared region.
    assert_eq!(created.cluster.node_count, None);
    assert_eq!(created.cluster.region.as_deref(), Some("europe-west4"));

    let manager = t.cluster_client(&created.token_secret);
    manager.report_cluster_info(sample_info()).await.unwrap();
    let reply = manager.heartbeat(ManagerHealth::Ok).await.unwrap();
    assert_eq!(reply.interval_secs, 10);

    let shown = admin.get_cluster("prod-eu".into()).await.unwrap();
    assert_eq!(shown.kubernetes_version.as_deref(), Some("v1.30.2"));
    assert_eq!(shown.node_count, Some(3));
    assert_eq!(shown.cpu_allocatable_millis, Some(11_400));
    assert_eq!(shown.memory_capacity_bytes, Some(48 << 30));
    // The detected region wins over the declared one.
    assert_eq!(shown.region.as_deref(), Some("europe-west1"));
    assert_eq!(shown.manager_version.as_deref(), Some("0.1.0"));
    assert!(shown.last_reported_at.is_some());
    // Reported, but no tunnel yet: still pending.
    assert_eq!(shown.status, ClusterStatus::Pending);

    let listed = admin.list_clusters(false).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "prod-eu");
}

fn assert_unauthenticated<T: std::fmt::Debug>(
    result: Result<T, CallError<lapdev_hrpc::HrpcError>>,
    what: &str,
) {
    match result {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::Unauthenticated, "{what}: {e}"),
        other => panic!("{what}: expected 401 unauthenticated, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_cluster_tokens_are_401_with_an_hrpc_body() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("c1".into(), None, None, None)
        .await
        .unwrap();

    // Missing header: a raw request, so nothing adds one.
    let response = reqwest_free_post(&t.base(), "/rpc/KubeClusterRpc/heartbeat", &[]).await;
    assert_eq!(response.0, 401);
    let e: lapdev_hrpc::HrpcError = serde_json::from_slice(&response.1).unwrap();
    assert_eq!(e.code, Code::Unauthenticated);
    assert!(
        e.message.contains("x-lapdev-cluster-token"),
        "{}",
        e.message
    );

    assert_unauthenticated(
        t.cluster_client("not-a-token")
            .heartbeat(ManagerHealth::Ok)
            .await,
        "malformed",
    );
    let unknown = format!("lapdev_ct_{}", "A".repeat(43));
    assert_unauthenticated(
        t.cluster_client(&unknown)
            .heartbeat(ManagerHealth::Ok)
            .await,
        "unknown",
    );

    // Revoked: fails at once, even though it worked a moment ago (and is cached).
    let manager = t.cluster_client(&created.token_secret);
    manager.heartbeat(ManagerHealth::Ok).await.unwrap();
    admin
        .revoke_cluster_token("c1".into(), created.token.id)
        .await
        .unwrap();
    assert_unauthenticated(manager.heartbeat(ManagerHealth::Ok).await, "revoked");

    // Expired: a token whose expiry has passed (written directly, since the API
    // only mints tokens that expire in the future).
    let db = &t.server.state.db;
    let org = db.list_organizations().await.unwrap()[0].id;
    let expired = db
        .create_cluster_token(
            org,
            created.cluster.id,
            lapdev_db::NewClusterToken {
                name: "expired".into(),
                created_by: None,
                expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            },
        )
        .await
        .unwrap();
    assert_unauthenticated(
        t.cluster_client(expired.secret.expose())
            .heartbeat(ManagerHealth::Ok)
            .await,
        "expired",
    );
}

/// A POST with only a content type, as curl would send it.
async fn reqwest_free_post(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    use lapdev_hrpc::Transport as _;
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let mut builder =
        http::Request::post(format!("{base}{path}")).header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = transport
        .send(builder.body(bytes::Bytes::from_static(b"{}")).unwrap())
        .await
        .unwrap();
    (response.status().as_u16(), response.body().to_vec())
}

#[tokio::test]
async fn a_token_only_ever_writes_its_own_cluster() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let a = admin
        .create_cluster("a".into(), None, None, None)
        .await
        .unwrap();
    admin
        .create_cluster("b".into(), None, None, None)
        .await
        .unwrap();

    t.cluster_client(&a.token_secret)
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let b = admin.get_cluster("b".into()).await.unwrap();
    assert_eq!(b.kubernetes_version, None, "cluster b was not touched");
    assert_eq!(b.last_reported_at, None);
    let a_now = admin.get_cluster("a".into()).await.unwrap();
    assert_eq!(a_now.node_count, Some(3));
}

#[tokio::test]
async fn silent_clusters_become_disconnected() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("quiet".into(), None, None, None)
        .await
        .unwrap();
    let manager = t.cluster_client(&created.token_secret);
    manager.report_cluster_info(sample_info()).await.unwrap();
    manager.heartbeat(ManagerHealth::Ok).await.unwrap();

    let kube = &t.server.state.kube;
    // Force a known status: connected, as if the tunnel were up, is covered by the
    // tunnel tests; here the cluster is pending and has heartbeated.
    kube.sweep().await;
    let before = admin.get_cluster("quiet".into()).await.unwrap();
    assert_ne!(before.status, ClusterStatus::Disconnected);
    assert!(before.last_seen_at.is_some(), "the sweep flushed last-seen");

    // Three missed intervals (10 s each) later, as the sweeper would see it.
    kube.sweep_at(Instant::now() + Duration::from_secs(31))
        .await;
    let after = admin.get_cluster("quiet".into()).await.unwrap();
    assert_eq!(after.status, ClusterStatus::Disconnected);
}

#[tokio::test]
async fn admin_calls_need_a_valid_jwt() {
    let t = TestServer::postgres().await;
    let base = t.base();
    // No token at all.
    let (status, body) = reqwest_free_post(&base, "/rpc/AdminRpc/list_clusters", &[]).await;
    assert_eq!(status, 401);
    let e: lapdev_hrpc::HrpcError = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.code, Code::Unauthenticated);

    let keys = &t.server.state.jwt;
    let org = uuid::Uuid::new_v4();
    // Expired.
    let expired = {
        use jsonwebtoken::{EncodingKey, Header};
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "sub": uuid::Uuid::new_v4(), "org": org, "iss": "lapdev", "aud": "lapdev-admin",
            "exp": now - 3600, "iat": now - 7200,
        });
        let secret = std::fs::read_to_string(t.data_dir.path().join("data/jwt-secret")).unwrap();
        let secret = base64_decode(secret.trim());
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };
    assert_unauthenticated(
        admin_client(&base, &expired).list_clusters(false).await,
        "expired",
    );
    // Wrong audience.
    let wrong_audience = {
        use jsonwebtoken::{EncodingKey, Header};
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "sub": uuid::Uuid::new_v4(), "org": org, "iss": "lapdev", "aud": "someone-else",
            "exp": now + 3600, "iat": now,
        });
        let secret = std::fs::read_to_string(t.data_dir.path().join("data/jwt-secret")).unwrap();
        let secret = base64_decode(secret.trim());
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };
    assert_unauthenticated(
        admin_client(&base, &wrong_audience)
            .list_clusters(false)
            .await,
        "wrong audience",
    );
    // Garbage.
    assert_unauthenticated(
        admin_client(&base, "garbage").list_clusters(false).await,
        "garbage",
    );
    // A valid token of the server's own keys naming a user who does not exist is
    // refused: the role comes from the user's row, never from the token.
    let nobody = keys
        .mint(uuid::Uuid::new_v4(), org, Duration::from_secs(60))
        .unwrap();
    assert_unauthenticated(
        admin_client(&base, &nobody).list_clusters(false).await,
        "unknown user",
    );
    // One naming a real user works.
    let db = &t.server.state.db;
    let real_org = db.list_organizations().await.unwrap()[0].id;
    let owner = db.get_user_by_name(real_org, "admin").await.unwrap();
    let good = keys
        .mint(owner.id, real_org, Duration::from_secs(60))
        .unwrap();
    assert!(
        admin_client(&base, &good)
            .list_clusters(false)
            .await
            .unwrap()
            .is_empty()
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test]
async fn another_organisations_cluster_is_not_found() {
    let t = TestServer::postgres().await;
    t.admin()
        .create_cluster("mine".into(), None, None, None)
        .await
        .unwrap();

    let db = &t.server.state.db;
    let other = db.create_organization("other").await.unwrap();
    // An admin of her own organisation: she may call everything, and sees none
    // of ours.
    let user = db
        .create_user_with_role(
            other.id,
            lapdev_db::NewUser {
                name: "eve".into(),
                email: None,
            },
            lapdev_common::role::Role::Admin,
            lapdev_db::NewAuditEntry {
                organization_id: Some(other.id),
                action: "user.create".into(),
                outcome: "success".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = t
        .server
        .state
        .jwt
        .mint(user.id, other.id, Duration::from_secs(60))
        .unwrap();
    let eve = admin_client(&t.base(), &token);
    assert!(eve.list_clusters(true).await.unwrap().is_empty());
    for result in [
        eve.get_cluster("mine".into()).await.map(|_| ()),
        eve.delete_cluster("mine".into()).await,
        eve.set_cluster_cordoned("mine".into(), true)
            .await
            .map(|_| ()),
        eve.list_cluster_tokens("mine".into()).await.map(|_| ()),
    ] {
        match result {
            Err(CallError::Service(e)) => assert_eq!(e.code, Code::NotFound),
            other => panic!("expected not_found, got {other:?}"),
        }
    }
    // And the cluster is untouched for its owner.
    let mine = t.admin().get_cluster("mine".into()).await.unwrap();
    assert!(!mine.cordoned);
}

#[tokio::test]
async fn cluster_admin_lifecycle() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("life".into(), None, None, None)
        .await
        .unwrap();
    match admin.create_cluster("life".into(), None, None, None).await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::AlreadyExists),
        other => panic!("expected already_exists, got {other:?}"),
    }
    let cordoned = admin
        .set_cluster_cordoned("life".into(), true)
        .await
        .unwrap();
    assert!(cordoned.cordoned);
    let uncordoned = admin
        .set_cluster_cordoned("life".into(), false)
        .await
        .unwrap();
    assert!(!uncordoned.cordoned);

    // Two live tokens at most: the initial one plus one for rotation.
    let second = admin
        .create_cluster_token("life".into(), "rotation".into(), None)
        .await
        .unwrap();
    match admin
        .create_cluster_token("life".into(), "third".into(), None)
        .await
    {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::FailedPrecondition),
        other => panic!("expected failed_precondition, got {other:?}"),
    }
    let tokens = admin.list_cluster_tokens("life".into()).await.unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(
        tokens
            .iter()
            .all(|t| t.display_prefix.starts_with("lapdev_ct_"))
    );
    // Rotation: revoke the old one, the new one keeps working.
    admin
        .revoke_cluster_token("life".into(), created.token.id)
        .await
        .unwrap();
    t.cluster_client(&second.token_secret)
        .heartbeat(ManagerHealth::Ok)
        .await
        .unwrap();

    admin.delete_cluster("life".into()).await.unwrap();
    assert!(admin.list_clusters(false).await.unwrap().is_empty());
    let all = admin.list_clusters(true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].deleted_at.is_some());
    // A deleted cluster's token stops working at once.
    assert_unauthenticated(
        t.cluster_client(&second.token_secret)
            .heartbeat(ManagerHealth::Ok)
            .await,
        "deleted cluster",
    );
    // The name is free again.
    admin
        .create_cluster("life".into(), None, None, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_embedded_default_works_end_to_end() {
    let t = TestServer::embedded().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("local".into(), None, None, None)
        .await
        .unwrap();
    t.cluster_client(&created.token_secret)
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let shown = admin.get_cluster("local".into()).await.unwrap();
    assert_eq!(shown.node_count, Some(3));
    assert!(t.data_dir.path().join("data/lapdev.db").exists());
    let token_file = std::fs::read_to_string(t.data_dir.path().join("data/admin-token")).unwrap();
    assert_eq!(token_file.trim(), t.admin_token);
}

#[tokio::test]
async fn a_restart_forgets_connections_and_refuses_a_wrong_encryption_key() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("c".into(), None, None, None)
        .await
        .unwrap();
    let org = t.server.state.db.list_organizations().await.unwrap()[0].id;
    t.server
        .state
        .db
        .set_cluster_status(org, created.cluster.id, ClusterStatus::Connected)
        .await
        .unwrap();
    // A stored credential, encrypted with the server's generated key.
    let key_b64 = std::fs::read_to_string(t.data_dir.path().join("data/encryption-key")).unwrap();
    let key = lapdev_db::CredentialKey::from_bytes(&base64_decode(key_b64.trim())).unwrap();
    t.server
        .state
        .db
        .create_provider(
            org,
            lapdev_db::NewProvider {
                name: "gcp".into(),
                kind: lapdev_common::status::K8sProviderKind::GCP,
                config: serde_json::json!({"project": "p"}),
                credential: lapdev_db::ProviderCredential::new(b"secret".to_vec()),
                created_by: None,
            },
            &key,
        )
        .await
        .unwrap();
    let data_dir = t.data_dir.path().join("data");
    let url = t.database.as_ref().unwrap().url().to_owned();
    t.server.shutdown();
    let TestServer {
        server,
        database,
        data_dir: _keep,
        ..
    } = t;
    server.wait().await.unwrap();

    // Same data directory (same generated key): starts, and the cluster is no
    // longer shown connected.
    let again = lapdev_server::Server::start(common::config(data_dir.clone(), Some(url.clone())))
        .await
        .unwrap();
    let cluster = again
        .state
        .db
        .get_cluster(org, created.cluster.id)
        .await
        .unwrap();
    assert_eq!(cluster.status, ClusterStatus::Disconnected);
    again.shutdown();
    again.wait().await.unwrap();

    // A different encryption key than the database was written with: refused.
    let has_credentials = {
        let db = lapdev_db::connect(&url).await.unwrap();
        !db.list_providers(org).await.unwrap().is_empty()
    };
    if has_credentials {
        let mut config = common::config(data_dir, Some(url));
        config.encryption_key = Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
        let err = lapdev_server::Server::start(config)
            .await
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("encryption key does not match"),
            "{err:#}"
        );
    }
    drop(database);
}
