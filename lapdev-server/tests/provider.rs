//! Providers through the real server: `ProviderRpc` over HTTP against the GKE
//! stand-in (the real `google-cloud-container-v1` client inside the server) and the
//! Kubernetes API test double as the provider cluster's API server.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use lapdev_common::status::{ClusterStatus, K8sProviderKind};
use lapdev_hrpc::{CallError, Client, Code, HrpcError};
use lapdev_kube::provider::ClusterMode;
use lapdev_kube::provider::testing::GkeStandIn;
use lapdev_kube_double::KubeDouble;
use lapdev_server::Server;
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::admin::providers::ProviderRpcClient;
use lapdev_server::config::{LogFormat, ServerConfig};

struct Setup {
    server: Server,
    _data: tempfile::TempDir,
    providers: ProviderRpcClient,
    admin: AdminRpcClient,
}

async fn start() -> Setup {
    let data = tempfile::tempdir().unwrap();
    let (server, providers, admin) = start_in(&data.path().join("data")).await;
    Setup {
        server,
        _data: data,
        providers,
        admin,
    }
}

/// A server on the embedded database in `data_dir` (a second start reuses it).
async fn start_in(data_dir: &std::path::Path) -> (Server, ProviderRpcClient, AdminRpcClient) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Server::start_with(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.to_owned(),
            database_url: None,
            public_url: Some("https://lapdev.example.com".into()),
            public_ca_file: None,
            log_format: LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            jwt_secret: None,
            jwt_secret_file: None,
            encryption_key: None,
            manager_image: "ghcr.io/lapdev/lapdev-kube-manager:test".into(),
            heartbeat_interval_secs: 10,
            admin_token_days: 1,
            max_token_days: 365,
            trusted_proxies: Vec::new(),
        },
        // The GKE stand-in listens on loopback http.
        lapdev_server::config::LimitsConfig {
            allow_provider_test_endpoints: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let token = match server.first_admin_token.clone() {
        Some(t) => t,
        None => std::fs::read_to_string(data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned(),
    };
    let client = Client::http(&format!("http://{}/rpc", server.local_addr))
        .unwrap()
        .with_timeout(Duration::from_secs(30))
        .with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    (
        server,
        ProviderRpcClient::new(client.clone()),
        AdminRpcClient::new(client),
    )
}

fn service_error(e: CallError<HrpcError>) -> HrpcError {
    match e {
        CallError::Service(e) => e,
        other => panic!("expected a service error, got {other:?}"),
    }
}

async fn wait_for_status(admin: &AdminRpcClient, name: &str, want: ClusterStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = admin.get_cluster(name.to_owned()).await.unwrap();
        if c.status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed {:?}, wanted {want:?}",
            c.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_gone(admin: &AdminRpcClient, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match admin.get_cluster(name.to_owned()).await {
            Err(CallError::Service(e)) if e.code == Code::NotFound => return,
            Ok(c) => assert!(
                tokio::time::Instant::now() < deadline,
                "{name} is still {:?}",
                c.status
            ),
            Err(e) => panic!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn provider_lifecycle_through_the_server() {
    let double = KubeDouble::start().await.unwrap();
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_cluster_endpoint(&double.url(), None);
    gke.add_cluster("us-central1-a", "existing", "1.32.9-gke.100", 2);
    let s = start().await;
    let p = &s.providers;

    // A malformed key is refused before anything is stored or called.
    let err = service_error(
        p.create_provider(
            "gcp".into(),
            K8sProviderKind::GCP,
            gke.config_json(Some("europe-west1")),
            "{\"type\": \"service_account\"}".into(),
            true,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, Code::InvalidArgument, "{err:?}");
    assert!(err.message.contains("malformed credentials"), "{err:?}");
    assert!(p.list_providers().await.unwrap().is_empty());
    assert_eq!(gke.api_calls("list"), 0);

    // The real key: checked against the API, stored, never returned.
    let key = String::from_utf8(gke.key_json()).unwrap();
    let created = p
        .create_provider(
            "gcp".into(),
            K8sProviderKind::GCP,
            gke.config_json(Some("europe-west1")),
            key.clone(),
            true,
        )
        .await
        .unwrap();
    assert!(created.credentials_checked);
    assert_eq!(created.warning, None);
    let listed = p.list_providers().await.unwrap();
    assert_eq!(listed.len(), 1);
    let shown = serde_json::to_string(&listed).unwrap()
        + &serde_json::to_string(&p.get_provider("gcp".into()).await.unwrap()).unwrap();
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains("private_key"), "{shown}");

    // What GKE has; importing one installs the manager into it.
    let remote = p.list_provider_clusters("gcp".into()).await.unwrap();
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0].name, "existing");
    assert_eq!(remote[0].imported_as, None);
    let imported = p
        .import_cluster("gcp".into(), "existing".into(), None, None, true)
        .await
        .unwrap();
    assert_eq!(
        imported.cluster.status,
        ClusterStatus::Pending,
        "{imported:?}"
    );
    assert_eq!(imported.message, None);
    assert_eq!(
        imported.external_id.as_deref(),
        Some(remote[0].external_id.as_str())
    );
    let detected = imported.provider_cluster.as_ref().unwrap();
    assert_eq!(
        detected.kubernetes_version.as_deref(),
        Some("1.32.9-gke.100")
    );
    assert_eq!(detected.node_count, 2);
    assert_eq!(detected.location, "us-central1-a");
    assert_eq!(imported.cluster.region.as_deref(), Some("us-central1-a"));
    let handle = double.handle();
    let _: Namespace = handle.get("", "lapdev").unwrap();
    let _: Deployment = handle.get("lapdev", "lapdev-kube-manager").unwrap();
    let secret: Secret = handle.get("lapdev", "lapdev-kube-manager").unwrap();
    let secret_json = serde_json::to_string(&secret).unwrap();
    assert!(secret_json.contains("lapdev_ct_") || secret.data.is_some());
    assert_eq!(
        gke.tokens_issued(),
        1,
        "an access token for the cluster's API"
    );
    let remote = p.list_provider_clusters("gcp".into()).await.unwrap();
    assert_eq!(remote[0].imported_as.as_deref(), Some("existing"));
    // Importing it twice is refused.
    let err = service_error(
        p.import_cluster(
            "gcp".into(),
            "existing".into(),
            None,
            Some("again".into()),
            false,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, Code::AlreadyExists, "{err:?}");

    // Create through the provider: provisioning -> pending, manager installed.
    gke.set_operation_polls(3);
    let made = p
        .create_cluster(
            "gcp".into(),
            "fresh".into(),
            None,
            ClusterMode::Standard {
                machine_type: "e2-standard-4".into(),
                node_count: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(made.cluster.status, ClusterStatus::Provisioning);
    wait_for_status(&s.admin, "fresh", ClusterStatus::Pending).await;
    let fresh = p.get_managed_cluster("fresh".into()).await.unwrap();
    assert_eq!(fresh.message, None, "{fresh:?}");
    assert_eq!(
        fresh.provider_cluster.as_ref().unwrap().node_count,
        2,
        "{fresh:?}"
    );
    assert!(gke.cluster("europe-west1", "fresh").is_some());

    // A failed GKE operation: error, with GKE's message.
    gke.set_operation_polls(1);
    gke.fail_next_operation("Insufficient regional quota to satisfy request: CPUS.");
    p.create_cluster("gcp".into(), "doomed".into(), None, ClusterMode::Autopilot)
        .await
        .unwrap();
    wait_for_status(&s.admin, "doomed", ClusterStatus::Error).await;
    let doomed = p.get_managed_cluster("doomed".into()).await.unwrap();
    assert!(
        doomed
            .message
            .as_deref()
            .unwrap()
            .contains("Insufficient regional quota"),
        "{doomed:?}"
    );
    // A quota error on the create call itself comes back at once.
    gke.fail_next(
        "create",
        429,
        "RESOURCE_EXHAUSTED",
        "Quota 'CPUS' exceeded.",
    );
    let err = service_error(
        p.create_cluster("gcp".into(), "big".into(), None, ClusterMode::Autopilot)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, Code::ResourceExhausted);
    assert!(err.message.contains("Quota 'CPUS' exceeded."), "{err:?}");
    assert!(s.admin.get_cluster("big".into()).await.is_err());

    // Deleting a provider-managed cluster needs confirmation, then it goes in GKE too.
    let err = service_error(
        p.delete_cluster("fresh".into(), false, false)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, Code::FailedPrecondition);
    let deleting = p
        .delete_cluster("fresh".into(), true, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleting.cluster.status, ClusterStatus::Deleting);
    wait_gone(&s.admin, "fresh").await;
    assert!(gke.cluster("europe-west1", "fresh").is_none());

    // Forgetting one keeps it in GKE.
    assert!(
        p.delete_cluster("existing".into(), false, true)
            .await
            .unwrap()
            .is_none()
    );
    wait_gone(&s.admin, "existing").await;
    assert!(gke.cluster("us-central1-a", "existing").is_some());

    // The provider cannot go while a cluster refers to it.
    let err = service_error(p.delete_provider("gcp".into()).await.unwrap_err());
    assert_eq!(err.code, Code::FailedPrecondition, "{err:?}");
    p.delete_cluster("doomed".into(), true, false)
        .await
        .unwrap();
    wait_gone(&s.admin, "doomed").await;
    p.delete_provider("gcp".into()).await.unwrap();
    assert!(p.list_providers().await.unwrap().is_empty());

    s.server.shutdown();
}

#[tokio::test]
async fn unreachable_api_still_adds_with_a_warning_and_bad_credentials_are_refused() {
    let gke = GkeStandIn::start().await.unwrap();
    let s = start().await;
    let key = String::from_utf8(gke.key_json()).unwrap();

    // Another project: GKE says permission denied, nothing is stored.
    let mut config = gke.config_json(None);
    config["project"] = "someone-elses".into();
    let err = service_error(
        s.providers
            .create_provider(
                "other".into(),
                K8sProviderKind::GCP,
                config,
                key.clone(),
                true,
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, Code::PermissionDenied, "{err:?}");
    assert!(err.message.contains("someone-elses"), "{err:?}");

    // Nothing listens at this endpoint: added, unchecked, with a warning.
    let mut config = gke.config_json(None);
    config["endpoint"] = "http://127.0.0.1:9".into();
    let created = s
        .providers
        .create_provider(
            "offline".into(),
            K8sProviderKind::GCP,
            config,
            key.clone(),
            true,
        )
        .await
        .unwrap();
    assert!(!created.credentials_checked);
    assert!(created.warning.is_some());
    assert_eq!(s.providers.list_providers().await.unwrap().len(), 1);
    s.server.shutdown();
}

#[tokio::test]
async fn a_restart_resumes_provisioning_and_deleting_clusters() {
    let double = KubeDouble::start().await.unwrap();
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_cluster_endpoint(&double.url(), None);
    gke.add_cluster("us-central1-a", "old", "1.32.9-gke.100", 1);
    // Operations never finish while the first server runs.
    gke.set_operation_polls(u32::MAX);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    let (first, p, _) = start_in(&dir).await;
    p.create_provider(
        "gcp".into(),
        K8sProviderKind::GCP,
        gke.config_json(Some("europe-west1")),
        String::from_utf8(gke.key_json()).unwrap(),
        false,
    )
    .await
    .unwrap();
    let growing = p
        .create_cluster("gcp".into(), "growing".into(), None, ClusterMode::Autopilot)
        .await
        .unwrap();
    assert_eq!(growing.cluster.status, ClusterStatus::Provisioning);
    p.import_cluster("gcp".into(), "old".into(), None, None, false)
        .await
        .unwrap();
    let old = p
        .delete_cluster("old".into(), true, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.cluster.status, ClusterStatus::Deleting);
    first.shutdown();
    first.wait().await.unwrap();

    // GKE finishes both while Lapdev is down.
    gke.set_cluster_status("europe-west1", "growing", "RUNNING", "");
    gke.remove_cluster("us-central1-a", "old");

    let (second, _, admin) = start_in(&dir).await;
    wait_for_status(&admin, "growing", ClusterStatus::Pending).await;
    wait_gone(&admin, "old").await;
    // And the manager was installed into the new cluster.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while double
        .handle()
        .get::<Deployment>("lapdev", "lapdev-kube-manager")
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no manager installed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.shutdown();
}

#[tokio::test]
async fn a_refused_create_leaves_no_row_and_nothing_in_the_provider() {
    let gke = GkeStandIn::start().await.unwrap();
    let s = start().await;
    s.providers
        .create_provider(
            "gcp".into(),
            K8sProviderKind::GCP,
            gke.config_json(Some("europe-west1")),
            String::from_utf8(gke.key_json()).unwrap(),
            false,
        )
        .await
        .unwrap();
    gke.fail_next(
        "create",
        403,
        "PERMISSION_DENIED",
        "no container.clusters.create",
    );
    let e = service_error(
        s.providers
            .create_cluster("gcp".into(), "denied".into(), None, ClusterMode::Autopilot)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, Code::PermissionDenied, "{e:?}");
    assert_eq!(gke.api_calls("create"), 1);
    assert!(gke.cluster("europe-west1", "denied").is_none());
    let e = service_error(s.admin.get_cluster("denied".into()).await.unwrap_err());
    assert_eq!(e.code, Code::NotFound, "the intent row was removed");
    // The name is free again.
    let ok = s
        .providers
        .create_cluster("gcp".into(), "denied".into(), None, ClusterMode::Autopilot)
        .await
        .unwrap();
    assert_eq!(ok.cluster.status, ClusterStatus::Provisioning);
    s.server.shutdown();
}

#[tokio::test]
async fn a_create_interrupted_after_the_provider_accepted_it_is_resumed() {
    let double = KubeDouble::start().await.unwrap();
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_cluster_endpoint(&double.url(), None);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    let (first, p, _) = start_in(&dir).await;
    p.create_provider(
        "gcp".into(),
        K8sProviderKind::GCP,
        gke.config_json(Some("europe-west1")),
        String::from_utf8(gke.key_json()).unwrap(),
        false,
    )
    .await
    .unwrap();
    // The server wrote its intent and the provider accepted the create; then
    // the server stopped before anything else was recorded.
    let db = first.state.db.clone();
    let org = db.list_organizations().await.unwrap()[0].id;
    let provider = db.list_providers(org).await.unwrap()[0].id;
    db.create_cluster(
        org,
        lapdev_db::NewCluster {
            name: "half".into(),
            status: ClusterStatus::Provisioning,
            provider_id: Some(provider),
            external_id: Some(lapdev_server::admin::providers::intent_link(
                "europe-west1",
                "half",
            )),
            declared_region: Some("europe-west1".into()),
            labels: Default::default(),
            security_profile: Default::default(),
            placement: Default::default(),
        },
    )
    .await
    .unwrap();
    gke.add_cluster("europe-west1", "half", "1.32.9-gke.100", 1);
    first.shutdown();
    first.wait().await.unwrap();

    // The next start follows the intent by name: tracked, and the manager is
    // installed.
    let (second, _, admin) = start_in(&dir).await;
    wait_for_status(&admin, "half", ClusterStatus::Pending).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while double
        .handle()
        .get::<Deployment>("lapdev", "lapdev-kube-manager")
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no manager installed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.shutdown();
}

#[tokio::test]
async fn a_create_whose_intent_cannot_be_written_never_reaches_the_provider() {
    use sea_orm::ConnectionTrait;
    let gke = GkeStandIn::start().await.unwrap();
    let s = start().await;
    s.providers
        .create_provider(
            "gcp".into(),
            K8sProviderKind::GCP,
            gke.config_json(Some("europe-west1")),
            String::from_utf8(gke.key_json()).unwrap(),
            false,
        )
        .await
        .unwrap();
    // A database fault exactly at the intent's insert (the name check before
    // it passes): with the provider called first, this is the billable cluster
    // nothing tracks.
    let conn = s.server.state.db.connection();
    conn.execute_unprepared(
        "CREATE TRIGGER refuse_cluster_rows BEFORE INSERT ON kube_cluster \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    )
    .await
    .unwrap();
    let e = service_error(
        s.providers
            .create_cluster("gcp".into(), "orphan".into(), None, ClusterMode::Autopilot)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, Code::Unavailable, "{e:?}");
    assert_eq!(
        gke.api_calls("create"),
        0,
        "Google was asked before the row"
    );
    assert!(gke.cluster("europe-west1", "orphan").is_none());
    let e = service_error(s.admin.get_cluster("orphan".into()).await.unwrap_err());
    assert_eq!(e.code, Code::NotFound);

    // With the fault gone the same create goes through, and the stand-in
    // counts it (so the zero above is not a blind counter).
    conn.execute_unprepared("DROP TRIGGER refuse_cluster_rows")
        .await
        .unwrap();
    let ok = s
        .providers
        .create_cluster("gcp".into(), "orphan".into(), None, ClusterMode::Autopilot)
        .await
        .unwrap();
    assert_eq!(ok.cluster.status, ClusterStatus::Provisioning);
    assert_eq!(gke.api_calls("create"), 1);
    assert!(gke.cluster("europe-west1", "orphan").is_some());
    s.server.shutdown();
}

/// GKE Autopilot is known from the GKE API's `autopilot.enabled` (import) or
/// the mode asked for (create), not guessed from node labels; a manager's
/// report (which guesses from labels) does not override it.
#[tokio::test]
async fn autopilot_clusters_are_known_from_the_gke_api() {
    use lapdev_common::scheduling::Autoscaling;
    let gke = GkeStandIn::start().await.unwrap();
    gke.add_autopilot_cluster("europe-west1", "ap", "1.33.5-gke.100");
    gke.add_cluster("europe-west1", "std", "1.33.5-gke.100", 1);
    let s = start().await;
    s.providers
        .create_provider(
            "gcp".into(),
            K8sProviderKind::GCP,
            gke.config_json(Some("europe-west1")),
            String::from_utf8(gke.key_json()).unwrap(),
            false,
        )
        .await
        .unwrap();
    for name in ["ap", "std"] {
        s.providers
            .import_cluster("gcp".into(), name.into(), None, None, false)
            .await
            .unwrap();
    }
    let ap = s.admin.get_cluster("ap".into()).await.unwrap();
    assert_eq!(ap.detected_autoscaling, Some(Autoscaling::GKE_AUTOPILOT));
    let std = s.admin.get_cluster("std".into()).await.unwrap();
    assert_eq!(std.detected_autoscaling, None);

    // The manager reports no autoscaler (its nodes carry no Autopilot label
    // yet): the API's answer stays.
    let token = s
        .admin
        .create_cluster_token("ap".into(), "t1".into(), None)
        .await
        .unwrap()
        .token_secret;
    let manager = lapdev_kube_rpc::KubeClusterRpcClient::new(
        Client::http(&format!("http://{}/rpc", s.server.local_addr)).unwrap(),
    )
    .with_header(
        http::HeaderName::from_static("x-lapdev-cluster-token"),
        http::HeaderValue::from_str(&token).unwrap(),
    );
    let info = lapdev_common::kube::KubeClusterInfo {
        kubernetes_version: "v1.33.5-gke.100".into(),
        node_count: 0,
        cpu_capacity_millis: 0,
        cpu_allocatable_millis: 0,
        memory_capacity_bytes: 0,
        memory_allocatable_bytes: 0,
        provider: lapdev_common::status::CloudProvider::Gcp,
        region: Some("europe-west1".into()),
        manager_version: "0.1.0".into(),
        manager_namespace: "lapdev".into(),
        workspace_namespace: "lapdev-workspaces".into(),
        manifest_revision: None,
        nodes: Some(Vec::new()),
        capacity_mode: None,
        autoscaling: None,
    };
    manager.report_cluster_info(info).await.unwrap();
    let ap = s.admin.get_cluster("ap".into()).await.unwrap();
    assert_eq!(ap.kubernetes_version.as_deref(), Some("v1.33.5-gke.100"));
    assert_eq!(ap.detected_autoscaling, Some(Autoscaling::GKE_AUTOPILOT));

    // A cluster created as Autopilot is known as one from the start.
    s.providers
        .create_cluster("gcp".into(), "fresh".into(), None, ClusterMode::Autopilot)
        .await
        .unwrap();
    let fresh = s.admin.get_cluster("fresh".into()).await.unwrap();
    assert_eq!(fresh.detected_autoscaling, Some(Autoscaling::GKE_AUTOPILOT));
    s.server.shutdown();
}
