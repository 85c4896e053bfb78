//! A database outage with heartbeats flowing, end to end: the real manager
//! binary against the real server on PostgreSQL, the database made unavailable
//! (connections refused and the open ones ended) for longer than the token
//! cache's lifetime and than the three heartbeat intervals after which a
//! silent cluster counts as disconnected. Neither side drops the tunnel, the
//! cluster's status does not flip, and a workspace report the server could not
//! take meanwhile is sent again afterwards.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ManagerProcess, double, eventually, spec};
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_db::test_support::TestDatabase;
use lapdev_hrpc::Client;
use lapdev_kube_double::NodeSpec;
use lapdev_server::Server;
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::config::{LimitsConfig, LogFormat, ServerConfig};
use uuid::Uuid;

/// The manager is told to heartbeat every second; a cluster silent for three
/// intervals is marked disconnected.
const HEARTBEAT_SECS: u64 = 1;
/// The token cache's lifetime: every heartbeat after this into the outage is
/// accepted only by the stale-if-error window.
const TOKEN_TTL_SECS: u64 = 1;
/// How much of the outage is proved by heartbeats the server accepted: past
/// the token TTL and past the disconnect threshold, with margin.
const OUTAGE_HEARD: Duration = Duration::from_secs(5);

fn server_config(data_dir: std::path::PathBuf, database_url: String) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        database_url: Some(database_url),
        public_url: Some("https://lapdev.example.com".into()),
        public_ca_file: None,
        log_format: LogFormat::Text,
        tls_cert: None,
        tls_key: None,
        jwt_secret: None,
        jwt_secret_file: None,
        encryption_key: None,
        manager_image: "ghcr.io/lapdev/lapdev-kube-manager:test".into(),
        heartbeat_interval_secs: HEARTBEAT_SECS,
        admin_token_days: 1,
        max_token_days: 365,
        trusted_proxies: Vec::new(),
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_drops_no_tunnel_and_flips_no_status() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The server's log (RUST_LOG), shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let database = TestDatabase::postgres().await;
    let data_dir = tempfile::tempdir().unwrap();
    let limits = LimitsConfig {
        token_cache_ttl_secs: TOKEN_TTL_SECS,
        token_stale_if_error_secs: 300,
        ..LimitsConfig::default()
    };
    let server = Server::start_with(
        server_config(data_dir.path().join("data"), database.url().to_owned()),
        limits,
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr);
    let admin = AdminRpcClient::new(Client::http(&format!("{base}/rpc")).unwrap()).with_header(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!(
            "Bearer {}",
            server.first_admin_token.as_ref().unwrap()
        ))
        .unwrap(),
    );
    let created = admin
        .create_cluster("steady".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = created.cluster.id;
    let double = double().await;
    double
        .handle()
        .add_node(
            "n1",
            NodeSpec {
                cpu: "4".into(),
                memory: "16Gi".into(),
                labels: BTreeMap::new(),
                ..NodeSpec::default()
            },
        )
        .unwrap();
    let manager = ManagerProcess::spawn(&double, &base, &created.token_secret);
    let a = &admin;
    eventually("connected", Duration::from_secs(20), || async move {
        a.get_cluster("steady".into()).await.unwrap().status == ClusterStatus::Connected
    })
    .await;
    let kube = server.state.kube.clone();
    let client = kube.manager_client(cluster_id).unwrap();
    let id = Uuid::new_v4();
    client.create_workspace(spec(id)).await.unwrap();
    let m = &manager;
    eventually(
        "snapshot reported",
        Duration::from_secs(20),
        || async move { m.log().contains("workspace snapshot reported") },
    )
    .await;

    // The outage.
    database.set_available(false).await;
    assert!(
        server.state.db.create_organization("probe").await.is_err(),
        "the database is really away"
    );
    let outage_start = chrono::Utc::now();
    // A change in the cluster during the outage: the manager reports it and
    // the server cannot record it.
    let stopped = client.stop_workspace(id).await.unwrap();
    assert_eq!(stopped.status, WorkspaceStatus::Stopped);
    let k = &kube;
    eventually(
        "heartbeats accepted deep into the outage",
        Duration::from_secs(30),
        || async move {
            k.last_heard(cluster_id).is_some_and(|t| {
                t - outage_start > chrono::Duration::from_std(OUTAGE_HEARD).unwrap()
            })
        },
    )
    .await;
    eventually(
        "the refused report is seen",
        Duration::from_secs(20),
        || async move { m.log().contains("the server cannot take it now") },
    )
    .await;
    assert!(kube.is_tunnel_up(cluster_id), "the tunnel is up");
    assert_eq!(
        kube.cluster_status(cluster_id),
        Some(ClusterStatus::Connected)
    );
    // The sweeper decides staleness in memory: run it now, mid-outage.
    kube.sweep().await;
    assert_eq!(
        kube.cluster_status(cluster_id),
        Some(ClusterStatus::Connected)
    );

    // The database returns: the held report goes through, on the same tunnel.
    database.set_available(true).await;
    eventually(
        "reports taken again",
        Duration::from_secs(60),
        || async move { m.log().contains("the server takes reports again") },
    )
    .await;
    let log = manager.log();
    assert_eq!(
        count(&log, "tunnel open"),
        1,
        "one tunnel all along:\n{log}"
    );
    assert_eq!(count(&log, "reconnecting"), 0, "no redial:\n{log}");
    assert!(kube.is_tunnel_up(cluster_id));
    assert_eq!(
        admin.get_cluster("steady".into()).await.unwrap().status,
        ClusterStatus::Connected
    );
    server.shutdown();
}
