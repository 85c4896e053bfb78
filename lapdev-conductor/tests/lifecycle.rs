//! The conductor on real PostgreSQL with in-process stand-in managers: placement,
//! the lifecycle state machine, refusals, timeouts, crash recovery and
//! concurrent creates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lapdev_common::kube::{KubeClusterInfo, WorkspaceSpec};
use lapdev_common::status::{CloudProvider, ClusterStatus, DesiredState, WorkspaceStatus};
use lapdev_conductor::{
    Conductor, ConductorConfig, ConductorError, CreateWorkspace, ManagerConnector,
};
use lapdev_db::test_support::TestDatabase;
use lapdev_db::{ClusterInfoUpdate, Db, NewCluster, NewUser};
use lapdev_hrpc::{Client, Code, HrpcError};
use lapdev_kube_rpc::{
    KubeManagerRpc, KubeManagerRpcClient, KubeManagerRpcServer, WorkspaceObservation,
};
use uuid::Uuid;

const GIB: i64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Refuse,
    Hang,
}

/// A manager stand-in that keeps workspaces in memory.
struct FakeManager {
    mode: Mutex<Mode>,
    workspaces: Mutex<HashMap<Uuid, WorkspaceStatus>>,
    calls: Mutex<Vec<String>>,
}

impl FakeManager {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(mode),
            workspaces: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    fn has(&self, id: Uuid) -> Option<WorkspaceStatus> {
        self.workspaces.lock().unwrap().get(&id).copied()
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    async fn gate(&self, call: &str) -> Result<(), HrpcError> {
        self.calls.lock().unwrap().push(call.to_owned());
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Normal => Ok(()),
            Mode::Refuse => Err(HrpcError::new(
                Code::ResourceExhausted,
                "exceeded quota: pods=10",
            )),
            Mode::Hang => std::future::pending().await,
        }
    }

    fn set(&self, id: Uuid, status: WorkspaceStatus) -> WorkspaceObservation {
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
        Ok(WorkspaceObservation {
            workspace_id: id,
            status: WorkspaceStatus::Deleted,
            message: None,
            pod_name: None,
            node_name: None,
            reason: None,
            observed_at: Utc::now(),
        })
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
}

#[derive(Default)]
struct Connector {
    managers: Mutex<HashMap<Uuid, KubeManagerRpcClient>>,
}

impl ManagerConnector for Connector {
    fn manager(&self, cluster_id: Uuid) -> Option<KubeManagerRpcClient> {
        self.managers.lock().unwrap().get(&cluster_id).cloned()
    }
}

impl Connector {
    fn connect(&self, cluster_id: Uuid, manager: Arc<FakeManager>) {
        let router = KubeManagerRpcServer::from_arc(manager).into_router();
        self.managers.lock().unwrap().insert(
            cluster_id,
            KubeManagerRpcClient::new(Client::in_process(router)),
        );
    }

    fn disconnect(&self, cluster_id: Uuid) {
        self.managers.lock().unwrap().remove(&cluster_id);
    }
}

struct Env {
    _test: TestDatabase,
    db: Db,
    org: Uuid,
    owner: Uuid,
    connector: Arc<Connector>,
    conductor: Conductor,
}

async fn env() -> Env {
    let test = TestDatabase::postgres().await;
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
    let conductor = Conductor::new(
        db.clone(),
        connector.clone(),
        ConductorConfig {
            rpc_timeout: Duration::from_millis(300),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..Default::default()
        },
    );
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
    async fn cluster(
        &self,
        name: &str,
        cpu: i64,
        mem_gib: i64,
        region: &str,
        mode: Mode,
    ) -> (Uuid, Arc<FakeManager>) {
        let c = self
            .db
            .create_cluster(self.org, NewCluster::named(name))
            .await
            .unwrap();
        self.db
            .update_cluster_info(
                self.org,
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
                },
            )
            .await
            .unwrap();
        self.db
            .set_cluster_status(self.org, c.id, ClusterStatus::Connected)
            .await
            .unwrap();
        let manager = FakeManager::new(mode);
        self.connector.connect(c.id, manager.clone());
        (c.id, manager)
    }

    fn request(&self, name: &str, cpu: i64, mem_gib: i64) -> CreateWorkspace {
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

    async fn get(&self, id: Uuid) -> lapdev_db::Workspace {
        self.db.get_workspace(self.org, id).await.unwrap()
    }
}

#[tokio::test]
async fn a_workspace_goes_through_its_whole_lifecycle() {
    let e = env().await;
    let (small, _) = e
        .cluster("small", 2000, 8, "europe-west1", Mode::Normal)
        .await;
    let (big, manager) = e
        .cluster("big", 16000, 64, "europe-west1", Mode::Normal)
        .await;

    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w1", 1000, 2))
        .await
        .unwrap();
    assert_eq!(ws.cluster_id, Some(big), "the emptiest cluster wins");
    assert_ne!(ws.cluster_id, Some(small));
    assert_eq!(ws.status, WorkspaceStatus::Creating);

    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
    // The manager's watch reports the pod running (as the server would record it).
    let current = e.get(ws.id).await;
    e.db.transition_workspace(
        e.org,
        ws.id,
        current.version,
        lapdev_db::WorkspaceTransition::to(WorkspaceStatus::Running),
    )
    .await
    .unwrap();
    assert_eq!(
        e.conductor.reconcile_once().await,
        0,
        "running as desired: settled"
    );

    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Stopped)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(e.get(ws.id).await.status, WorkspaceStatus::Stopped);
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Stopped));

    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Running)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(e.get(ws.id).await.status, WorkspaceStatus::Creating);
    assert!(manager.calls().contains(&"start".to_owned()));

    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Deleted)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), None, "the manager removed everything");
    let gone =
        e.db.find_workspace_by_name_including_deleted(e.org, "w1")
            .await
            .unwrap();
    assert_eq!(gone.status, WorkspaceStatus::Deleted);
    assert!(gone.deleted_at.is_some());
    assert_eq!(e.conductor.reconcile_once().await, 0);
}

#[tokio::test]
async fn placement_respects_constraints_and_says_why_nothing_fits() {
    let e = env().await;
    let (eu, _) = e
        .cluster("prod-eu", 4000, 16, "europe-west1", Mode::Normal)
        .await;
    let (us, _) = e
        .cluster("prod-us", 8000, 32, "us-central1", Mode::Normal)
        .await;
    let (cordoned, _) = e
        .cluster("cordoned", 64000, 256, "europe-west1", Mode::Normal)
        .await;
    e.db.set_cluster_cordoned(e.org, cordoned, true)
        .await
        .unwrap();
    let (offline, _) = e
        .cluster("offline", 64000, 256, "europe-west1", Mode::Normal)
        .await;
    e.connector.disconnect(offline);

    let mut r = e.request("in-eu", 1000, 1);
    r.region = Some("europe-west1".into());
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, r)
        .await
        .unwrap();
    assert_eq!(ws.cluster_id, Some(eu));

    let mut r = e.request("named", 1000, 1);
    r.cluster = Some("prod-us".into());
    assert_eq!(
        e.conductor
            .create_workspace(e.org, e.owner, r)
            .await
            .unwrap()
            .cluster_id,
        Some(us)
    );

    let err = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("huge", 32000, 128))
        .await
        .unwrap_err();
    assert!(matches!(err, ConductorError::Placement(_)));
    assert_eq!(
        err.to_string(),
        "no connected cluster can fit 32 CPU / 128 GiB; largest free: 7 CPU / 31 GiB on prod-us"
    );
    // Nothing was recorded for a request that fits nowhere.
    assert!(e.db.get_workspace_by_name(e.org, "huge").await.is_err());
}

#[tokio::test]
async fn concurrent_creates_never_overcommit() {
    let e = env().await;
    // Room for exactly 5 + 3 workspaces of 1 CPU.
    let (a, _) = e.cluster("a", 5000, 64, "r", Mode::Normal).await;
    let (b, _) = e.cluster("b", 3000, 64, "r", Mode::Normal).await;
    let creates = (0..20).map(|i| {
        let conductor = e.conductor.clone();
        let req = e.request(&format!("w{i}"), 1000, 1);
        let (org, owner) = (e.org, e.owner);
        tokio::spawn(async move { conductor.create_workspace(org, owner, req).await })
    });
    let results: Vec<_> = futures_join(creates).await;
    let placed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(placed.len(), 8, "exactly the room there is");
    let on = |c| placed.iter().filter(|w| w.cluster_id == Some(c)).count();
    assert_eq!((on(a), on(b)), (5, 3));
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            r.to_string()
                .starts_with("no connected cluster can fit 1 CPU"),
            "{r}"
        );
    }
    let requested = e.db.cluster_requested_resources(e.org).await.unwrap();
    assert!(requested[&a].cpu_millis <= 5000 && requested[&b].cpu_millis <= 3000);
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_refusing_cluster_hands_the_workspace_to_the_next() {
    let e = env().await;
    let (refusing, refuser) = e.cluster("a-refusing", 16000, 64, "r", Mode::Refuse).await;
    let (willing, manager) = e.cluster("b-willing", 8000, 32, "r", Mode::Normal).await;
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w", 1000, 1))
        .await
        .unwrap();
    assert_eq!(
        ws.cluster_id,
        Some(refusing),
        "the emptier cluster is tried first"
    );

    e.conductor.reconcile_once().await;
    assert_eq!(refuser.calls(), ["create"]);
    let after = e.get(ws.id).await;
    assert_eq!(
        after.cluster_id,
        Some(willing),
        "re-placed on the next cluster"
    );
    assert!(
        after
            .status_message
            .unwrap_or_default()
            .contains("exceeded quota")
    );

    // The refusal put the workspace into backoff; the next round goes now.
    e.conductor.clear_backoff();
    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
}

#[tokio::test]
async fn a_manager_that_never_answers_times_out_and_is_retried() {
    let e = env().await;
    let (_, manager) = e.cluster("slow", 8000, 32, "r", Mode::Hang).await;
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w", 1000, 1))
        .await
        .unwrap();

    e.conductor.reconcile_once().await;
    let after = e.get(ws.id).await;
    assert_eq!(
        after.status,
        WorkspaceStatus::Creating,
        "still wanted, still creating"
    );
    let message = after.status_message.unwrap_or_default();
    assert!(
        message.contains("cannot reach the manager") || message.contains("deadline"),
        "{message}"
    );

    // The manager recovers; the next round (backoff passed) converges.
    *manager.mode.lock().unwrap() = Mode::Normal;
    e.conductor.clear_backoff();
    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
    assert_eq!(manager.calls().len(), 2, "the call was retried");
}

#[tokio::test]
async fn a_new_conductor_finishes_what_a_crashed_one_left() {
    let e = env().await;
    let (cluster, manager) = e.cluster("c", 8000, 32, "r", Mode::Normal).await;
    // The first conductor placed the workspace and "crashed" before calling the
    // manager.
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w", 1000, 1))
        .await
        .unwrap();
    assert_eq!(manager.calls(), Vec::<String>::new());

    let restarted = Conductor::new(
        e.db.clone(),
        e.connector.clone(),
        ConductorConfig::default(),
    );
    restarted.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
    assert_eq!(e.get(ws.id).await.cluster_id, Some(cluster));

    // A deletion interrupted half-way (status `deleting`) is finished too.
    restarted
        .set_desired_state(e.org, ws.id, DesiredState::Deleted)
        .await
        .unwrap();
    let current = e.get(ws.id).await;
    e.db.transition_workspace(
        e.org,
        ws.id,
        current.version,
        lapdev_db::WorkspaceTransition::to(WorkspaceStatus::Deleting),
    )
    .await
    .unwrap();
    let again = Conductor::new(
        e.db.clone(),
        e.connector.clone(),
        ConductorConfig::default(),
    );
    again.reconcile_once().await;
    assert_eq!(manager.has(ws.id), None);
    assert!(
        e.db.get_workspace(e.org, ws.id).await.is_err(),
        "soft-deleted"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_written() {
    let e = env().await;
    e.cluster("c", 8000, 32, "r", Mode::Normal).await;
    for (req, what) in [
        (
            CreateWorkspace {
                image: "".into(),
                ..e.request("x", 1000, 1)
            },
            "image",
        ),
        (
            CreateWorkspace {
                cpu_millis: 0,
                ..e.request("x", 1000, 1)
            },
            "cpu",
        ),
        (
            CreateWorkspace {
                memory_bytes: -1,
                ..e.request("x", 1000, 1)
            },
            "memory",
        ),
    ] {
        let err = e
            .conductor
            .create_workspace(e.org, e.owner, req)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConductorError::InvalidArgument(_)),
            "{what}: {err}"
        );
    }
    let mut r = e.request("x", 1000, 1);
    r.cluster = Some("nope".into());
    let err: HrpcError = e
        .conductor
        .create_workspace(e.org, e.owner, r)
        .await
        .unwrap_err()
        .into();
    assert_eq!(err.code, Code::NotFound);
    assert!(e.db.list_workspaces(e.org).await.unwrap().is_empty());
}

#[tokio::test]
async fn invalidating_makes_placement_see_a_cordon_at_once() {
    let e = env().await;
    let (a, _) = e.cluster("a", 8000, 32, "r", Mode::Normal).await;
    let req = lapdev_conductor::placement::PlacementRequest {
        cpu_millis: 1000,
        memory_bytes: GIB,
        cluster: None,
        region: None,
    };
    assert_eq!(
        e.conductor.plan(e.org, &req).await.unwrap()[0].cluster_id,
        a
    );
    e.db.set_cluster_cordoned(e.org, a, true).await.unwrap();
    e.conductor.invalidate(e.org).await;
    assert!(e.conductor.plan(e.org, &req).await.is_err());
}
