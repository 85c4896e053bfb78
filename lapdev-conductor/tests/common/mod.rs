//! Shared by the conductor's tests: in-process manager stand-ins, a connector
//! that tests connect and disconnect, and a database with an organisation.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lapdev_common::kube::{KubeClusterInfo, WorkspaceSpec};
use lapdev_common::status::{CloudProvider, ClusterStatus, WorkspaceStatus};
use lapdev_conductor::{Conductor, ConductorConfig, CreateWorkspace, ManagerConnector};
use lapdev_db::test_support::TestDatabase;
use lapdev_db::{ClusterInfoUpdate, Db, NewCluster, NewUser};
use lapdev_hrpc::{Client, Code, HrpcError};
use lapdev_kube_rpc::{
    KubeManagerRpc, KubeManagerRpcClient, KubeManagerRpcServer, WorkspaceObservation,
};
use uuid::Uuid;

pub const GIB: i64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    Refuse,
    Hang,
}

/// A manager stand-in that keeps workspaces in memory.
pub struct FakeManager {
    pub mode: Mutex<Mode>,
    pub workspaces: Mutex<HashMap<Uuid, WorkspaceStatus>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeManager {
    pub fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(mode),
            workspaces: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    pub fn has(&self, id: Uuid) -> Option<WorkspaceStatus> {
        self.workspaces.lock().unwrap().get(&id).copied()
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    async fn gate(&self, call: &str) -> Result<(), HrpcError> {
        self.calls.lock().unwrap().push(call.to_owned());
        let mode = *self.mode.lock().unwrap();
        // A refusing cluster refuses new pods; it still deletes what it has.
        let refusable = matches!(call, "create" | "start");
        match mode {
            Mode::Normal => Ok(()),
            Mode::Refuse if !refusable => Ok(()),
            Mode::Refuse => Err(HrpcError::new(
                Code::ResourceExhausted,
                "exceeded quota: pods=10",
            )),
            Mode::Hang => std::future::pending().await,
        }
    }

    pub fn set(&self, id: Uuid, status: WorkspaceStatus) -> WorkspaceObservation {
        self.workspaces.lock().unwrap().insert(id, status);
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
}

fn gone(id: Uuid) -> WorkspaceObservation {
    WorkspaceObservation {
        workspace_id: id,
        status: WorkspaceStatus::Deleted,
        message: None,
        pod_name: None,
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
        self.gate("create").await?;
        Ok(self.set(spec.workspace_id, WorkspaceStatus::Creating))
    }
    async fn start_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError> {
        self.gate("start").await?;
        Ok(self.set(spec.workspace_id, WorkspaceStatus::Creating))
    }
    async fn stop_workspace(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        self.gate("stop").await?;
        Ok(self.set(id, WorkspaceStatus::Stopped))
    }
    async fn delete_workspace(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        self.gate("delete").await?;
        self.workspaces.lock().unwrap().remove(&id);
        Ok(gone(id))
    }
    async fn get_workspace_status(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        match self.has(id) {
            Some(s) => Ok(self.set(id, s)),
            None => Err(HrpcError::not_found("no such workspace")),
        }
    }
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceObservation>, HrpcError> {
        Ok(vec![])
    }
    async fn get_cluster_info(&self) -> Result<KubeClusterInfo, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "not in this stand-in"))
    }
    async fn delete_workspace_keeping_volume(
        &self,
        keep: lapdev_kube_rpc::KeepVolume,
    ) -> Result<WorkspaceObservation, HrpcError> {
        self.gate("delete").await?;
        self.workspaces.lock().unwrap().remove(&keep.workspace_id);
        Ok(gone(keep.workspace_id))
    }
    async fn purge_workspace_volume(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        self.gate("purge").await?;
        Ok(gone(id))
    }
}

/// A client whose calls reach `manager` in process.
fn in_process<M: KubeManagerRpc + Send + Sync + 'static>(manager: Arc<M>) -> KubeManagerRpcClient {
    let router = KubeManagerRpcServer::from_arc(manager).into_router();
    KubeManagerRpcClient::new(Client::in_process(router))
}

#[derive(Default)]
pub struct Connector {
    managers: Mutex<HashMap<Uuid, KubeManagerRpcClient>>,
    /// Clusters whose tunnel "another replica" holds.
    elsewhere: Mutex<std::collections::HashSet<Uuid>>,
    /// Managers another replica connected that this connector has not read
    /// yet: they become reachable at the next `refresh` naming them.
    unread: Mutex<HashMap<Uuid, KubeManagerRpcClient>>,
    /// How many clusters `refresh` was asked to read again, in all.
    pub refreshed: std::sync::atomic::AtomicUsize,
}

impl ManagerConnector for Connector {
    fn manager(&self, cluster_id: Uuid) -> Option<KubeManagerRpcClient> {
        self.managers.lock().unwrap().get(&cluster_id).cloned()
    }

    fn driven_elsewhere(&self, cluster_id: Uuid) -> bool {
        self.elsewhere.lock().unwrap().contains(&cluster_id)
    }

    fn refresh<'a>(
        &'a self,
        cluster_ids: &'a [Uuid],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        for id in cluster_ids {
            self.refreshed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(client) = self.unread.lock().unwrap().remove(id) {
                self.managers.lock().unwrap().insert(*id, client);
            }
        }
        Box::pin(async {})
    }
}

impl Connector {
    /// Says (or stops saying) that another replica holds `cluster_id`'s tunnel.
    #[allow(dead_code)]
    pub fn set_elsewhere(&self, cluster_id: Uuid, elsewhere: bool) {
        let mut set = self.elsewhere.lock().unwrap();
        if elsewhere {
            set.insert(cluster_id);
        } else {
            set.remove(&cluster_id);
        }
    }

    pub fn connect<M: KubeManagerRpc + Send + Sync + 'static>(
        &self,
        cluster_id: Uuid,
        manager: Arc<M>,
    ) {
        self.managers
            .lock()
            .unwrap()
            .insert(cluster_id, in_process(manager));
    }

    /// Connects `cluster_id` as another replica would: this connector sees
    /// it only after a `refresh` that names it.
    #[allow(dead_code)]
    pub fn connect_unread<M: KubeManagerRpc + Send + Sync + 'static>(
        &self,
        cluster_id: Uuid,
        manager: Arc<M>,
    ) {
        self.unread
            .lock()
            .unwrap()
            .insert(cluster_id, in_process(manager));
    }

    pub fn disconnect(&self, cluster_id: Uuid) {
        self.managers.lock().unwrap().remove(&cluster_id);
    }
}

pub struct Env {
    pub _test: TestDatabase,
    pub db: Db,
    pub org: Uuid,
    pub owner: Uuid,
    pub connector: Arc<Connector>,
    pub conductor: Conductor,
}

pub async fn env() -> Env {
    env_with(ConductorConfig {
        rpc_timeout: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        ..Default::default()
    })
    .await
}

/// An environment whose conductor runs with `config`.
pub async fn env_with(config: ConductorConfig) -> Env {
    env_on(TestDatabase::postgres().await, config).await
}

/// An environment on `test` (PostgreSQL or SQLite) whose conductor runs with
/// `config`.
pub async fn env_on(test: TestDatabase, config: ConductorConfig) -> Env {
    let db = test.db().clone();
    let org = db.create_organization("acme").await.unwrap().id;
    let owner = db
        .create_user(
            org,
            NewUser {
                name: "dev".into(),
                email: None,
            },
        )
        .await
        .unwrap()
        .id;
    let connector = Arc::new(Connector::default());
    let conductor = Conductor::new(db.clone(), connector.clone(), config);
    Env {
        _test: test,
        db,
        org,
        owner,
        connector,
        conductor,
    }
}

impl Env {
    /// A connected cluster with a manager stand-in.
    pub async fn cluster(
        &self,
        name: &str,
        cpu: i64,
        mem_gib: i64,
        region: &str,
        mode: Mode,
    ) -> (Uuid, Arc<FakeManager>) {
        self.cluster_in(self.org, name, cpu, mem_gib, region, mode)
            .await
    }

    /// A connected cluster of organisation `org` with a manager stand-in.
    pub async fn cluster_in(
        &self,
        org: Uuid,
        name: &str,
        cpu: i64,
        mem_gib: i64,
        region: &str,
        mode: Mode,
    ) -> (Uuid, Arc<FakeManager>) {
        let c = self
            .db
            .create_cluster(org, NewCluster::named(name))
            .await
            .unwrap();
        self.db
            .update_cluster_info(
                org,
                c.id,
                &ClusterInfoUpdate {
                    kubernetes_version: "v1.30.2".into(),
                    cloud_provider: CloudProvider::Gcp,
                    region: Some(region.into()),
                    node_count: 3,
                    cpu_capacity_millis: cpu,
                    cpu_allocatable_millis: cpu,
                    memory_capacity_bytes: mem_gib * GIB,
                    memory_allocatable_bytes: mem_gib * GIB,
                    manager_version: "test".into(),
                    manager_namespace: "lapdev".into(),
                    manifest_revision: None,
                    nodes: None,
                    detected_autoscaling: None,
                },
            )
            .await
            .unwrap();
        self.db
            .set_cluster_status(org, c.id, ClusterStatus::Connected)
            .await
            .unwrap();
        let manager = FakeManager::new(mode);
        self.connector.connect(c.id, manager.clone());
        (c.id, manager)
    }

    pub fn request(&self, name: &str, cpu: i64, mem_gib: i64) -> CreateWorkspace {
        CreateWorkspace {
            name: name.into(),
            image: "ghcr.io/lapdev/workspace:latest".into(),
            cpu_millis: cpu,
            memory_bytes: mem_gib * GIB,
            storage_bytes: 5 * GIB,
            cluster: None,
            region: None,
        }
    }

    /// A second organisation and its owner.
    pub async fn other_org(&self, name: &str) -> (Uuid, Uuid) {
        let org = self.db.create_organization(name).await.unwrap().id;
        let owner = self
            .db
            .create_user(
                org,
                NewUser {
                    name: "dev".into(),
                    email: None,
                },
            )
            .await
            .unwrap()
            .id;
        (org, owner)
    }

    pub async fn get(&self, id: Uuid) -> lapdev_db::Workspace {
        self.db.get_workspace(self.org, id).await.unwrap()
    }
}

/// Waits until `cond` holds, polling, for at most `bound`; false if it never did.
pub async fn wait_until(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
