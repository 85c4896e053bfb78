//! Starts a real `lapdev-server` (in-process, real TCP, real PostgreSQL) and
//! gives tests typed clients for its two APIs.

#![allow(dead_code)]

pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use chrono::Utc;
use lapdev_common::kube::{KubeClusterInfo, WorkspaceSpec};
use lapdev_common::status::WorkspaceStatus;
use lapdev_db::test_support::TestDatabase;
use lapdev_hrpc::Client;
use lapdev_hrpc::HrpcError;
use lapdev_hrpc::tunnel::{TunnelClientConfig, TunnelConnectError, TunnelSession};
use lapdev_kube_rpc::KubeClusterRpcClient;
use lapdev_kube_rpc::{KubeManagerRpc, KubeManagerRpcServer, WorkspaceObservation};
use lapdev_server::Server;
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::config::{LogFormat, ServerConfig};
use tokio::sync::Notify;
use uuid::Uuid;

pub struct TestServer {
    pub server: Server,
    pub addr: SocketAddr,
    pub admin_token: String,
    pub data_dir: tempfile::TempDir,
    // Dropped last: the server's pool must close before the database is dropped.
    pub database: Option<TestDatabase>,
}

pub fn config(data_dir: PathBuf, database_url: Option<String>) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        database_url,
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
    }
}

impl TestServer {
    /// A server on a fresh PostgreSQL database.
    pub async fn postgres() -> TestServer {
        let database = TestDatabase::postgres().await;
        let data_dir = tempfile::tempdir().unwrap();
        let server = Server::start(config(
            data_dir.path().join("data"),
            Some(database.url().to_owned()),
        ))
        .await
        .unwrap();
        Self::from(server, data_dir, Some(database))
    }

    /// A server on a fresh PostgreSQL database whose exec and port-forward
    /// streams reach managers through `streams`.
    pub async fn postgres_with_streams(
        streams: std::sync::Arc<dyn lapdev_server::access::StreamOpener>,
    ) -> TestServer {
        let database = TestDatabase::postgres().await;
        let data_dir = tempfile::tempdir().unwrap();
        let server = Server::start_with_streams(
            config(
                data_dir.path().join("data"),
                Some(database.url().to_owned()),
            ),
            lapdev_server::config::LimitsConfig::default(),
            Some(streams),
        )
        .await
        .unwrap();
        Self::from(server, data_dir, Some(database))
    }

    /// A server on a fresh PostgreSQL database with these limits and policies.
    pub async fn postgres_with(limits: lapdev_server::config::LimitsConfig) -> TestServer {
        let database = TestDatabase::postgres().await;
        let data_dir = tempfile::tempdir().unwrap();
        let server = Server::start_with(
            config(
                data_dir.path().join("data"),
                Some(database.url().to_owned()),
            ),
            limits,
        )
        .await
        .unwrap();
        Self::from(server, data_dir, Some(database))
    }

    /// A server on its embedded default with these limits and policies.
    pub async fn embedded_with(limits: lapdev_server::config::LimitsConfig) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let server = Server::start_with(config(data_dir.path().join("data"), None), limits)
            .await
            .unwrap();
        Self::from(server, data_dir, None)
    }

    /// A server on its embedded default (SQLite in the data directory).
    pub async fn embedded() -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let server = Server::start(config(data_dir.path().join("data"), None))
            .await
            .unwrap();
        Self::from(server, data_dir, None)
    }

    /// Stops this server and starts another on the same data directory and
    /// database (a restart), on a new port; the owner's token stays valid.
    pub async fn restart_with(self, limits: lapdev_server::config::LimitsConfig) -> TestServer {
        self.server.shutdown();
        let _ = self.server.wait().await;
        let url = self.database.as_ref().map(|d| d.url().to_owned());
        let server = Server::start_with(config(self.data_dir.path().join("data"), url), limits)
            .await
            .unwrap();
        TestServer {
            addr: server.local_addr,
            server,
            admin_token: self.admin_token,
            data_dir: self.data_dir,
            database: self.database,
        }
    }

    fn from(server: Server, data_dir: tempfile::TempDir, database: Option<TestDatabase>) -> Self {
        let admin_token = server
            .first_admin_token
            .clone()
            .expect("a first start mints an admin token");
        TestServer {
            addr: server.local_addr,
            server,
            admin_token,
            data_dir,
            database,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin(&self) -> AdminRpcClient {
        admin_client(&self.base(), &self.admin_token)
    }

    pub fn cluster_client(&self, token: &str) -> KubeClusterRpcClient {
        cluster_client(&self.base(), token)
    }
}

pub fn admin_client(base: &str, token: &str) -> AdminRpcClient {
    AdminRpcClient::new(Client::http(&format!("{base}/rpc")).unwrap()).with_header(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    )
}

pub fn cluster_client(base: &str, token: &str) -> KubeClusterRpcClient {
    KubeClusterRpcClient::new(
        Client::http(&format!("{base}/rpc"))
            .unwrap()
            .with_timeout(Duration::from_secs(10)),
    )
    .with_header(
        http::HeaderName::from_static("x-lapdev-cluster-token"),
        http::HeaderValue::from_str(token).unwrap(),
    )
}

pub fn sample_info() -> lapdev_common::kube::KubeClusterInfo {
    lapdev_common::kube::KubeClusterInfo {
        kubernetes_version: "v1.30.2".into(),
        node_count: 3,
        cpu_capacity_millis: 12_000,
        cpu_allocatable_millis: 11_400,
        memory_capacity_bytes: 48 << 30,
        memory_allocatable_bytes: 45 << 30,
        provider: lapdev_common::status::CloudProvider::Gcp,
        region: Some("europe-west1".into()),
        manager_version: "0.1.0".into(),
        manager_namespace: "lapdev".into(),
        workspace_namespace: "lapdev-workspaces".into(),
        manifest_revision: None,
        nodes: None,
        capacity_mode: None,
        autoscaling: None,
    }
}

/// A manager stand-in: answers from fixed data; `stop_workspace` blocks until
/// released, to have a call in flight.
#[derive(Default)]
pub struct FakeManager {
    /// Releases a blocked `stop_workspace`.
    pub release: Notify,
    /// Notified when `stop_workspace` is entered.
    pub entered: Notify,
    /// When set, `stop_workspace` blocks until `release`.
    pub block_stop: std::sync::atomic::AtomicBool,
    /// What the manager holds, by workspace.
    pub workspaces: Mutex<std::collections::HashMap<Uuid, WorkspaceStatus>>,
}

impl FakeManager {
    /// A manager whose `stop_workspace` blocks until released.
    pub fn blocking_stop() -> Arc<Self> {
        let m = Self::default();
        m.block_stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Arc::new(m)
    }

    pub fn has(&self, id: Uuid) -> Option<WorkspaceStatus> {
        self.workspaces.lock().unwrap().get(&id).copied()
    }

    fn record(&self, id: Uuid, status: WorkspaceStatus) -> WorkspaceObservation {
        // Observed before it becomes visible, as a real manager observes and
        // then replies: a test that sees `has(id)` and then reports stamps a
        // later time than this reply, whatever order they arrive in.
        let seen = observation(id, status);
        if status == WorkspaceStatus::Deleted {
            self.workspaces.lock().unwrap().remove(&id);
        } else {
            self.workspaces.lock().unwrap().insert(id, status);
        }
        seen
    }
}

pub fn observation(id: Uuid, status: WorkspaceStatus) -> WorkspaceObservation {
    WorkspaceObservation {
        workspace_id: id,
        status,
        message: None,
        pod_name: Some(format!("ws-{id}")),
        node_name: None,
        reason: None,
        observed_at: Utc::now(),
    }
}

impl KubeManagerRpc for FakeManager {
    async fn create_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError> {
        Ok(self.record(spec.workspace_id, WorkspaceStatus::Creating))
    }
    async fn start_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError> {
        Ok(self.record(spec.workspace_id, WorkspaceStatus::Creating))
    }
    async fn stop_workspace(&self, workspace_id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        if self.block_stop.load(std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(self.record(workspace_id, WorkspaceStatus::Stopped))
    }
    async fn delete_workspace(
        &self,
        workspace_id: Uuid,
    ) -> Result<WorkspaceObservation, HrpcError> {
        Ok(self.record(workspace_id, WorkspaceStatus::Deleted))
    }
    async fn get_workspace_status(
        &self,
        workspace_id: Uuid,
    ) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::not_found(format!("no workspace {workspace_id}")))
    }
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceObservation>, HrpcError> {
        Ok(vec![])
    }
    async fn get_cluster_info(&self) -> Result<KubeClusterInfo, HrpcError> {
        Ok(sample_info())
    }
    // A manager from before the volume grace period: the server falls back
    // to stop_workspace and delete_workspace.
    async fn delete_workspace_keeping_volume(
        &self,
        _: lapdev_kube_rpc::KeepVolume,
    ) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(
            lapdev_hrpc::Code::Unimplemented,
            "an older manager",
        ))
    }
    async fn purge_workspace_volume(&self, _: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(
            lapdev_hrpc::Code::Unimplemented,
            "an older manager",
        ))
    }
}

pub async fn dial(
    t: &TestServer,
    token: &str,
    manager: Arc<FakeManager>,
) -> Result<TunnelSession, TunnelConnectError> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-lapdev-cluster-token",
        http::HeaderValue::from_str(token).unwrap(),
    );
    lapdev_hrpc::tunnel::connect(
        &format!("{}/rpc/_tunnel", t.base()),
        headers,
        KubeManagerRpcServer::from_arc(manager).into_router(),
        TunnelClientConfig::default(),
    )
    .await
}

/// Waits (bounded) until `f` holds, checking after each tunnel event.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
