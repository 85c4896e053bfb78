//! The real `lapdev-kube-manager` binary against the real `lapdev-server`
//! (in-process, real TCP, PostgreSQL) and the Kubernetes API double: the
//! cluster registered with the admin API becomes `connected` with the numbers
//! the manager read from the nodes, and the server's calls down the tunnel
//! create real objects.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ManagerProcess, NAMESPACE, double, eventually, spec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use lapdev_common::status::{CloudProvider, ClusterStatus, WorkspaceStatus};
use lapdev_db::test_support::TestDatabase;
use lapdev_hrpc::Client;
use lapdev_kube_double::NodeSpec;
use lapdev_server::Server;
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::config::{LogFormat, ServerConfig};
use uuid::Uuid;

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
        heartbeat_interval_secs: 1,
        admin_token_days: 1,
        max_token_days: 365,
        trusted_proxies: Vec::new(),
    }
}

#[tokio::test]
async fn the_manager_connects_to_the_real_server_and_serves_its_calls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let database = TestDatabase::postgres().await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_config(
        data_dir.path().join("data"),
        database.url().to_owned(),
    ))
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
        .create_cluster("double".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = created.cluster.id;

    let double = double().await;
    double
        .handle()
        .add_node(
            "eks-1",
            NodeSpec {
                cpu: "3800m".into(),
                memory: "15963568Ki".into(),
                provider_id: Some("aws:///us-east-1a/i-0123".into()),
                labels: BTreeMap::from([(
                    "topology.kubernetes.io/region".into(),
                    "us-east-1".into(),
                )]),
                ..NodeSpec::default()
            },
        )
        .unwrap();
    double.handle().remove_node("node-1").unwrap();
    let manager = ManagerProcess::spawn(&double, &base, &created.token_secret);

    let a = &admin;
    eventually(
        "the cluster is connected with its numbers",
        Duration::from_secs(20),
        || async move {
            let c = a.get_cluster("double".into()).await.unwrap();
            c.status == ClusterStatus::Connected && c.node_count == Some(1)
        },
    )
    .await;
    let c = admin.get_cluster("double".into()).await.unwrap();
    assert_eq!(c.cpu_capacity_millis, Some(3800));
    assert_eq!(c.memory_capacity_bytes, Some(15_963_568 * 1024));
    assert_eq!(c.provider, CloudProvider::Aws);
    assert_eq!(c.region.as_deref(), Some("us-east-1"));
    assert_eq!(c.kubernetes_version.as_deref(), Some("v1.33.0"));

    // The server calls the manager down the tunnel.
    let kube = server.state.kube.clone();
    let client = kube
        .manager_client(cluster_id)
        .expect("a client for a connected cluster");
    let info = client.get_cluster_info().await.unwrap();
    assert_eq!(info.node_count, 1);
    let id = Uuid::new_v4();
    let obs = client.create_workspace(spec(id)).await.unwrap();
    assert_eq!(obs.status, WorkspaceStatus::Creating);
    let pods: Vec<Pod> = double.handle().list().unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].metadata.namespace.as_deref(), Some(NAMESPACE));
    let deleted = client.delete_workspace(id).await.unwrap();
    assert_eq!(deleted.status, WorkspaceStatus::Deleted);
    assert!(
        double
            .handle()
            .list::<PersistentVolumeClaim>()
            .unwrap()
            .is_empty()
    );

    // The manager goes away: the server sees the tunnel close.
    drop(manager);
    let k = &kube;
    eventually("tunnel gone", Duration::from_secs(10), || async move {
        !k.is_tunnel_up(cluster_id)
    })
    .await;
    server.shutdown();
}
