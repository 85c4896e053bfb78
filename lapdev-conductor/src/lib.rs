//! Workspace scheduling and lifecycle: picks a cluster for each workspace
//! ([`placement`]) and drives it to the state its user asked for by calling the
//! cluster's manager over RPC ([`Conductor`]).
//!
//! # Lifecycle
//!
//! Each workspace has a desired state (`running`, `stopped`, `deleted`) and an
//! observed status, both in the database. User actions only change the desired
//! state and wake the reconciler; the reconciler ([`Conductor::reconcile_once`],
//! looped by [`Conductor::run`]) compares the two for every unsettled workspace
//! and takes the next step:
//!
//! | desired | observed | step |
//! |---|---|---|
//! | running | pending, scheduling, failed (unplaced) | place it, then create |
//! | running | creating, failed (placed) | `create_workspace` (idempotent) |
//! | running | stopped | `start_workspace` |
//! | stopped | creating, running, stopping, failed (placed) | `stop_workspace` |
//! | deleted | anything placed | `delete_workspace`, then mark deleted |
//! | deleted | never placed | mark deleted |
//!
//! Every call has a deadline. A failure is recorded in the workspace's status
//! message and retried with capped exponential backoff; the reconciler lists
//! unsettled workspaces from the database, so anything left mid-way by a crash,
//! a restart or a manager outage is driven again. Status reports from managers
//! (`running`, pod failures, …) arrive through the server's `KubeClusterRpc` and
//! are applied by the database layer's transition rules.
//!
//! The conductor reaches managers only through [`ManagerConnector`], which the
//! server implements with its tunnel registry.

pub mod placement;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapdev_common::kube::WorkspaceSpec;
use lapdev_common::status::{ClusterStatus, DesiredState, WorkspaceStatus};
use lapdev_db::{Db, DbError, NewWorkspace, Workspace, WorkspaceTransition};
use lapdev_hrpc::{CallError, Code, HrpcError};
use lapdev_kube_rpc::{KubeManagerRpcClient, WorkspaceObservation};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::placement::{Candidate, PlacementError, PlacementRequest};

/// How the conductor reaches a cluster's manager.
pub trait ManagerConnector: Send + Sync + 'static {
    /// A client whose calls reach the cluster's manager, or `None` when the
    /// manager is not connected.
    fn manager(&self, cluster_id: Uuid) -> Option<KubeManagerRpcClient>;

    /// Whether the cluster's manager is connected (placement asks this for
    /// every cluster, so implementations should answer without building a
    /// client).
    fn is_connected(&self, cluster_id: Uuid) -> bool {
        self.manager(cluster_id).is_some()
    }
}

/// Settings of the conductor.
#[derive(Debug, Clone)]
pub struct ConductorConfig {
    /// Deadline of every manager call.
    pub rpc_timeout: Duration,
    /// How often unsettled workspaces are looked at without being woken.
    pub reconcile_interval: Duration,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Namespace workspaces are created in.
    pub workspace_namespace: String,
    /// How long placement reuses an organisation's clusters and their summed
    /// requests before reading them again. Placements made meanwhile are added
    /// to the cached sums, and cluster changes made through the admin API
    /// invalidate the cache at once ([`Conductor::invalidate`]), so this only
    /// bounds how late placement sees changes made elsewhere (a manager's new
    /// capacity, a workspace stopped by its manager).
    pub placement_cache_ttl: Duration,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        Self {
            rpc_timeout: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            workspace_namespace: "lapdev-workspaces".to_owned(),
            placement_cache_ttl: Duration::from_secs(5),
        }
    }
}

/// What a user asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateWorkspace {
    /// Unique among the organisation's live workspaces.
    pub name: String,
    /// Container image.
    pub image: String,
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Home volume size in bytes.
    pub storage_bytes: i64,
    /// Only this cluster (by name).
    pub cluster: Option<String>,
    /// Only clusters in this region.
    pub region: Option<String>,
}

/// Why a conductor call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConductorError {
    /// The request is not valid.
    #[error("{0}")]
    InvalidArgument(String),
    /// No cluster can take the workspace.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The database refused or failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<ConductorError> for HrpcError {
    fn from(e: ConductorError) -> Self {
        match e {
            ConductorError::InvalidArgument(m) => HrpcError::invalid_argument(m),
            ConductorError::Placement(p) => match p {
                PlacementError::UnknownCluster(_) => HrpcError::not_found(p.to_string()),
                _ => HrpcError::new(Code::ResourceExhausted, p.to_string()),
            },
            ConductorError::Db(d) => lapdev_db_error(d),
        }
    }
}

fn lapdev_db_error(e: DbError) -> HrpcError {
    match e {
        DbError::NotFound { .. } => HrpcError::not_found(e.to_string()),
        DbError::AlreadyExists { .. } => HrpcError::already_exists(e.to_string()),
        DbError::InvalidInput { .. } => HrpcError::invalid_argument(e.to_string()),
        DbError::InvalidTransition { .. } | DbError::InUse { .. } => {
            HrpcError::failed_precondition(e.to_string())
        }
        DbError::Conflict { .. } => HrpcError::new(Code::Aborted, e.to_string()),
        other => {
            tracing::error!(error = %other, "database error");
            HrpcError::unavailable("the database is not available")
        }
    }
}

/// An organisation's clusters and their summed requests, as placement last read
/// them, plus the placements made since.
struct Snapshot {
    read_at: Instant,
    clusters: Vec<lapdev_db::Cluster>,
    requested: HashMap<Uuid, lapdev_db::ResourceRequests>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    next_attempt: Instant,
    delay: Duration,
}

struct Inner {
    db: Db,
    connector: Arc<dyn ManagerConnector>,
    config: ConductorConfig,
    // Placement reads free capacity and writes the choice; holding this across
    // both keeps concurrent creates from over-committing a cluster. It also
    // guards the per-organisation snapshot placement works from.
    placement: tokio::sync::Mutex<HashMap<Uuid, Snapshot>>,
    wake: Notify,
    backoff: Mutex<HashMap<Uuid, Backoff>>,
    in_flight: Mutex<HashSet<Uuid>>,
    // Clusters that refused a workspace, tried last (or not at all) next time.
    refused: Mutex<HashMap<Uuid, HashSet<Uuid>>>,
}

/// Places workspaces and drives their lifecycle. Cheap to clone.
#[derive(Clone)]
pub struct Conductor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Conductor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conductor")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one drive step achieved.
enum Step {
    /// Nothing more to do now.
    Done,
    /// It failed; retry after backoff.
    Failed,
}

impl Conductor {
    /// A conductor on `db`, reaching managers through `connector`.
    pub fn new(db: Db, connector: Arc<dyn ManagerConnector>, config: ConductorConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                connector,
                config,
                placement: tokio::sync::Mutex::new(HashMap::new()),
                wake: Notify::new(),
                backoff: Mutex::default(),
                in_flight: Mutex::default(),
                refused: Mutex::default(),
            }),
        }
    }

    /// Records a new workspace (desired `running`) and places it on a cluster.
    /// The manager is called by the reconciler, which this wakes.
    pub async fn create_workspace(
        &self,
        org_id: Uuid,
        owner_id: Uuid,
        req: CreateWorkspace,
    ) -> Result<Workspace, ConductorError> {
        validate(&req)?;
        let placement = PlacementRequest {
            cpu_millis: req.cpu_millis,
            memory_bytes: req.memory_bytes,
            cluster: req.cluster.clone(),
            region: req.region.clone(),
        };
        // Refuse at once when nothing can take it, before a row exists.
        self.plan(org_id, &placement).await?;
        let ws = self
            .inner
            .db
            .create_workspace(
                org_id,
                NewWorkspace {
                    owner_id,
                    name: req.name,
                    image: req.image,
                    cpu_millis: req.cpu_millis,
                    memory_bytes: req.memory_bytes,
                    storage_bytes: req.storage_bytes,
                    desired_state: DesiredState::Running,
                    placement_cluster: req.cluster,
                    placement_region: req.region,
                },
            )
            .await?;
        let placed = match self.place(&ws).await {
            Ok(placed) => placed,
            Err(e) => {
                // Capacity went between the check and the placement; the user is
                // told now and the reconciler keeps trying.
                self.note(&ws, &e.to_string()).await;
                self.inner.wake.notify_one();
                return Err(e);
            }
        };
        self.inner.wake.notify_one();
        Ok(placed)
    }

    /// The placement decision for `req` in `org_id` right now, best cluster
    /// first, without recording anything.
    pub async fn plan(
        &self,
        org_id: Uuid,
        req: &PlacementRequest,
    ) -> Result<Vec<Candidate>, ConductorError> {
        let mut snapshots = self.inner.placement.lock().await;
        let candidates = self.candidates(&mut snapshots, org_id).await?;
        Ok(placement::rank(req, &candidates)?)
    }

    /// Forgets what placement knows about `org_id`'s clusters (call after a
    /// cluster is created, cordoned, uncordoned or deleted).
    pub async fn invalidate(&self, org_id: Uuid) {
        self.inner.placement.lock().await.remove(&org_id);
    }

    /// Sets what the user wants (`running`, `stopped`, `deleted`) and wakes the
    /// reconciler.
    pub async fn set_desired_state(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
        desired: DesiredState,
    ) -> Result<Workspace, ConductorError> {
        let ws = self.inner.db.get_workspace(org_id, workspace_id).await?;
        let ws = self
            .inner
            .db
            .set_workspace_desired_state(org_id, workspace_id, ws.version, desired)
            .await?;
        lock(&self.inner.backoff).remove(&workspace_id);
        self.inner.wake.notify_one();
        Ok(ws)
    }

    /// Runs the reconciler until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.reconcile_once().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.config.reconcile_interval) => {}
            }
        }
    }

    /// Drives every unsettled workspace one step (concurrently), skipping those
    /// waiting out a backoff or already being driven. Returns how many were
    /// driven.
    pub async fn reconcile_once(&self) -> usize {
        let unsettled = match self.inner.db.list_unsettled_workspaces().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list unsettled workspaces");
                return 0;
            }
        };
        let now = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for ws in unsettled {
            if lock(&self.inner.backoff)
                .get(&ws.id)
                .is_some_and(|b| b.next_attempt > now)
            {
                continue;
            }
            if !lock(&self.inner.in_flight).insert(ws.id) {
                continue;
            }
            let this = self.clone();
            tasks.spawn(async move {
                let id = ws.id;
                let step = this.drive(ws).await;
                lock(&this.inner.in_flight).remove(&id);
                this.after(id, step);
            });
        }
        let driven = tasks.len();
        while tasks.join_next().await.is_some() {}
        driven
    }

    fn after(&self, id: Uuid, step: Step) {
        let mut backoff = lock(&self.inner.backoff);
        match step {
            Step::Done => {
                backoff.remove(&id);
            }
            Step::Failed => {
                let delay = backoff
                    .get(&id)
                    .map_or(self.inner.config.initial_backoff, |b| {
                        (b.delay * 2).min(self.inner.config.max_backoff)
                    });
                // Jitter of up to a quarter keeps retries of many workspaces apart.
                let jitter = delay.mul_f64(rand_fraction() * 0.25);
                backoff.insert(
                    id,
                    Backoff {
                        next_attempt: Instant::now() + delay + jitter,
                        delay,
                    },
                );
            }
        }
    }

    /// Forgets backoff timers so the next round retries everything now (for
    /// tests and admin "retry now").
    pub fn clear_backoff(&self) {
        lock(&self.inner.backoff).clear();
    }

    /// The organisation's clusters as placement sees them, from the snapshot
    /// (read again when older than the TTL).
    async fn candidates(
        &self,
        snapshots: &mut HashMap<Uuid, Snapshot>,
        org_id: Uuid,
    ) -> Result<Vec<Candidate>, ConductorError> {
        let fresh = snapshots
            .get(&org_id)
            .is_some_and(|s| s.read_at.elapsed() < self.inner.config.placement_cache_ttl);
        if !fresh {
            let read_at = Instant::now();
            let clusters = self.inner.db.list_clusters(org_id).await?;
            let requested = self.inner.db.cluster_requested_resources(org_id).await?;
            snapshots.insert(
                org_id,
                Snapshot {
                    read_at,
                    clusters,
                    requested,
                },
            );
        }
        let snapshot = &snapshots[&org_id];
        Ok(snapshot
            .clusters
            .iter()
            .map(|c| {
                let used = snapshot.requested.get(&c.id).copied().unwrap_or_default();
                Candidate {
                    tunnel_up: self.inner.connector.is_connected(c.id),
                    region: c.effective_region().map(str::to_owned),
                    cluster_id: c.id,
                    name: c.name.clone(),
                    status: c.status,
                    cordoned: c.cordoned,
                    cpu_allocatable_millis: c.cpu_allocatable_millis,
                    memory_allocatable_bytes: c.memory_allocatable_bytes,
                    cpu_requested_millis: used.cpu_millis,
                    memory_requested_bytes: used.memory_bytes,
                }
            })
            .collect())
    }

    /// Chooses a cluster and records the choice (status `creating`).
    async fn place(&self, ws: &Workspace) -> Result<Workspace, ConductorError> {
        let mut snapshots = self.inner.placement.lock().await;
        let req = PlacementRequest {
            cpu_millis: ws.cpu_millis,
            memory_bytes: ws.memory_bytes,
            cluster: ws.placement_cluster.clone(),
            region: ws.placement_region.clone(),
        };
        let candidates = self.candidates(&mut snapshots, ws.organization_id).await?;
        let mut ranked = placement::rank(&req, &candidates)?;
        let refused = lock(&self.inner.refused)
            .get(&ws.id)
            .cloned()
            .unwrap_or_default();
        if !refused.is_empty() {
            // Clusters that refused this workspace go last, keeping their order.
            ranked.sort_by_key(|c| refused.contains(&c.cluster_id));
        }
        let chosen = &ranked[0];
        let current = self
            .inner
            .db
            .get_workspace(ws.organization_id, ws.id)
            .await?;
        let current = if current.status == WorkspaceStatus::Pending {
            self.inner
                .db
                .transition_workspace(
                    ws.organization_id,
                    ws.id,
                    current.version,
                    WorkspaceTransition::to(WorkspaceStatus::Scheduling),
                )
                .await?
        } else {
            current
        };
        let placed = self
            .inner
            .db
            .place_workspace(
                ws.organization_id,
                ws.id,
                current.version,
                chosen.cluster_id,
                &self.inner.config.workspace_namespace,
            )
            .await?;
        // The snapshot counts this placement from now on.
        if let Some(snapshot) = snapshots.get_mut(&ws.organization_id) {
            let used = snapshot.requested.entry(chosen.cluster_id).or_default();
            used.cpu_millis += placed.cpu_millis;
            used.memory_bytes += placed.memory_bytes;
            used.storage_bytes += placed.storage_bytes;
            used.workspaces += 1;
        }
        tracing::info!(workspace_id = %ws.id, cluster = %chosen.name, "workspace placed");
        Ok(placed)
    }

    /// One step towards the desired state.
    async fn drive(&self, ws: Workspace) -> Step {
        use DesiredState as D;
        use WorkspaceStatus as S;
        let result = match (ws.desired_state, ws.status, ws.cluster_id) {
            // Reported deleted (or never placed): only the row is left.
            (D::Deleted, S::Deleted, _) | (D::Deleted, _, None) => self.finish_delete(&ws).await,
            (D::Deleted, _, Some(cluster)) => self.delete(&ws, cluster).await,
            (D::Running, S::Running, _) => Ok(()),
            (D::Running, S::Pending | S::Scheduling, _) | (D::Running, S::Failed, None) => {
                match self.place(&ws).await {
                    Ok(placed) => match placed.cluster_id {
                        Some(cluster) => self.create(&placed, cluster).await,
                        None => Ok(()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
            (D::Running, S::Creating | S::Failed, Some(cluster)) => self.create(&ws, cluster).await,
            (D::Running, S::Stopped, Some(cluster)) => self.start(&ws, cluster).await,
            (D::Running, S::Stopping, Some(cluster)) => self.stop(&ws, cluster).await,
            (D::Stopped, S::Stopped, _) => Ok(()),
            (D::Stopped, S::Creating | S::Running | S::Stopping | S::Failed, Some(cluster)) => {
                self.stop(&ws, cluster).await
            }
            // Unplaced and asked to stop: nothing runs, nothing to do.
            (D::Stopped, _, None) => Ok(()),
            (desired, status, cluster) => {
                tracing::debug!(workspace_id = %ws.id, ?desired, ?status, ?cluster, "nothing to do");
                Ok(())
            }
        };
        match result {
            Ok(()) => Step::Done,
            Err(message) => {
                tracing::warn!(workspace_id = %ws.id, %message, "workspace step failed; will retry");
                self.note(&ws, &message).await;
                Step::Failed
            }
        }
    }

    fn manager(&self, cluster: Uuid) -> Result<KubeManagerRpcClient, String> {
        self.inner
            .connector
            .manager(cluster)
            .map(|m| m.with_timeout(self.inner.config.rpc_timeout))
            .ok_or_else(|| "the cluster's manager is not connected; will retry".to_owned())
    }

    async fn create(&self, ws: &Workspace, cluster: Uuid) -> Result<(), String> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Creating).await?;
        let manager = self.manager(cluster)?;
        match manager.create_workspace(spec(&ws)).await {
            Ok(obs) => {
                lock(&self.inner.refused).remove(&ws.id);
                self.observe(&ws, &obs).await;
                Ok(())
            }
            Err(CallError::Service(e)) if refuses(&e) => {
                // The cluster will not take it: mark it failed there and let the
                // next round place it on another cluster.
                lock(&self.inner.refused)
                    .entry(ws.id)
                    .or_default()
                    .insert(cluster);
                let message = format!("the cluster refused the workspace: {}", e.message);
                self.set_status(&ws, WorkspaceStatus::Failed, Some(message.clone()))
                    .await;
                if let Ok(current) = self.inner.db.get_workspace(ws.organization_id, ws.id).await
                    && let Err(e) = self.place(&current).await
                {
                    return Err(format!("{message}; {e}"));
                }
                Err(message)
            }
            Err(e) => Err(describe(e)),
        }
    }

    async fn start(&self, ws: &Workspace, cluster: Uuid) -> Result<(), String> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Creating).await?;
        let manager = self.manager(cluster)?;
        let obs = manager.start_workspace(spec(&ws)).await.map_err(describe)?;
        self.observe(&ws, &obs).await;
        Ok(())
    }

    async fn stop(&self, ws: &Workspace, cluster: Uuid) -> Result<(), String> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Stopping).await?;
        let manager = self.manager(cluster)?;
        let obs = manager.stop_workspace(ws.id).await.map_err(describe)?;
        self.observe(&ws, &obs).await;
        Ok(())
    }

    async fn delete(&self, ws: &Workspace, cluster: Uuid) -> Result<(), String> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Deleting).await?;
        let manager = self.manager(cluster)?;
        let obs = manager.delete_workspace(ws.id).await.map_err(describe)?;
        if obs.status == WorkspaceStatus::Deleted {
            self.finish_delete(&ws).await
        } else {
            Err(format!("the manager is still deleting ({})", obs.status))
        }
    }

    async fn finish_delete(&self, ws: &Workspace) -> Result<(), String> {
        let current = self
            .inner
            .db
            .get_workspace(ws.organization_id, ws.id)
            .await
            .map_err(|e| e.to_string())?;
        self.inner
            .db
            .delete_workspace(ws.organization_id, ws.id, current.version)
            .await
            .map_err(|e| e.to_string())?;
        lock(&self.inner.refused).remove(&ws.id);
        tracing::info!(workspace_id = %ws.id, "workspace deleted");
        Ok(())
    }

    /// Moves the workspace to `status` unless it is there already.
    async fn ensure_status(
        &self,
        ws: &Workspace,
        status: WorkspaceStatus,
    ) -> Result<Workspace, String> {
        let current = self
            .inner
            .db
            .get_workspace(ws.organization_id, ws.id)
            .await
            .map_err(|e| e.to_string())?;
        if current.status == status {
            return Ok(current);
        }
        self.inner
            .db
            .transition_workspace(
                ws.organization_id,
                ws.id,
                current.version,
                WorkspaceTransition::to(status),
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Applies what a manager answered, by the database's transition rules; a
    /// report that raced and lost is ignored (the newer one stands).
    async fn observe(&self, ws: &Workspace, obs: &WorkspaceObservation) {
        for _ in 0..3 {
            let Ok(current) = self.inner.db.get_workspace(ws.organization_id, ws.id).await else {
                return;
            };
            if current.status == obs.status && current.status_message == obs.message {
                return;
            }
            let change = WorkspaceTransition {
                status: obs.status,
                status_message: obs.message.clone(),
                pod_name: obs.pod_name.clone(),
            };
            match self
                .inner
                .db
                .transition_workspace(ws.organization_id, ws.id, current.version, change)
                .await
            {
                Ok(_) | Err(DbError::InvalidTransition { .. }) => return,
                Err(DbError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(workspace_id = %ws.id, error = %e, "cannot record observation");
                    return;
                }
            }
        }
    }

    async fn set_status(&self, ws: &Workspace, status: WorkspaceStatus, message: Option<String>) {
        let obs = WorkspaceObservation {
            workspace_id: ws.id,
            status,
            message,
            pod_name: None,
            node_name: None,
            reason: None,
            observed_at: chrono::Utc::now(),
        };
        self.observe(ws, &obs).await;
    }

    /// Records why the last step failed, keeping the status.
    async fn note(&self, ws: &Workspace, message: &str) {
        let Ok(current) = self.inner.db.get_workspace(ws.organization_id, ws.id).await else {
            return;
        };
        if current.status_message.as_deref() == Some(message) {
            return;
        }
        let change = WorkspaceTransition {
            status: current.status,
            status_message: Some(message.to_owned()),
            pod_name: None,
        };
        let _ = self
            .inner
            .db
            .transition_workspace(ws.organization_id, ws.id, current.version, change)
            .await;
    }
}

/// Whether the manager's error means "this cluster will not take it" (try
/// another) rather than "try again later".
fn refuses(e: &HrpcError) -> bool {
    matches!(
        e.code,
        Code::ResourceExhausted | Code::PermissionDenied | Code::FailedPrecondition
    )
}

fn describe(e: CallError<HrpcError>) -> String {
    match e {
        CallError::Service(e) => format!("the manager answered {}: {}", e.code, e.message),
        CallError::Transport(t) => {
            let e: HrpcError = CallError::<HrpcError>::Transport(t).into();
            format!("cannot reach the manager: {}", e.message)
        }
        CallError::Protocol(p) => format!("unexpected answer from the manager: {p}"),
    }
}

fn spec(ws: &Workspace) -> WorkspaceSpec {
    WorkspaceSpec {
        workspace_id: ws.id,
        name: ws.name.clone(),
        image: ws.image.clone(),
        cpu_millis: ws.cpu_millis,
        memory_bytes: ws.memory_bytes,
        storage_bytes: ws.storage_bytes,
        env: Default::default(),
    }
}

fn validate(req: &CreateWorkspace) -> Result<(), ConductorError> {
    let bad = |m: &str| Err(ConductorError::InvalidArgument(m.to_owned()));
    if req.image.trim().is_empty() {
        return bad("the image must not be empty");
    }
    if req
        .image
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return bad("the image must not contain whitespace");
    }
    if req.cpu_millis <= 0 {
        return bad("cpu must be more than 0");
    }
    if req.memory_bytes <= 0 {
        return bad("memory must be more than 0");
    }
    if req.storage_bytes <= 0 {
        return bad("storage must be more than 0");
    }
    Ok(())
}

/// A number in `[0, 1)` for jitter; not for anything secret.
fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    (h.finish() % 10_000) as f64 / 10_000.0
}

/// Whether a cluster status lets workspaces be placed (for callers that show
/// why a cluster is skipped).
pub fn status_is_placeable(status: ClusterStatus) -> bool {
    status == ClusterStatus::Connected
}
