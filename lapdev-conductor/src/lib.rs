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
//! | running | pending, scheduling, failed (unplaced, or never given a volume) | place it, then create |
//! | running | failed, reason says the pod ended (`Evicted`, `OOMKilled`, `PodEnded`) | self-repair: announce the retry, then `start_workspace` when it is due |
//! | running | failed, terminal reason (`InvalidImage`, `StartDeadlineExceeded`, `ScaleUpDeclined`) | nothing until the user starts it again (a manager's report that the pod runs still makes it `running`: the autoscaler may add the node after declining) |
//! | running | creating, failed (placed) | `create_workspace` (idempotent) |
//! | running | stopped | `start_workspace` |
//! | stopped | creating, running, stopping, failed (placed) | `stop_workspace` |
//! | deleted | placed, had a volume | `delete_workspace_keeping_volume`, then mark deleted with the volume kept ([`retention`]) |
//! | deleted | placed, never had a volume | `delete_workspace`, then mark deleted |
//! | deleted | never placed | mark deleted |
//!
//! Every call has a deadline. The reconciler lists unsettled workspaces from the
//! database, so anything left mid-way by a crash, a restart or a manager outage is
//! driven again. Status reports from managers (`running`, pod failures, …) arrive
//! through the server's `KubeClusterRpc` and are applied by the database layer's
//! transition rules.
//!
//! # Backoff
//!
//! A step that fails, and a call that leaves the workspace unsettled, schedules the
//! next look at the workspace with capped exponential backoff and jitter
//! ([`backoff`]). Attempt count and next attempt time are stored in the workspace
//! row, and the reconciler only lists workspaces that are due, so a restart resets
//! nothing and lifecycle failures are never retried faster than the backoff allows.
//! Becoming `running` resets it; so does a new wish of the user. A manager's
//! report can make a workspace due before its time (a pod that ended, the pod of
//! a deletion that keeps the volume gone): the write clears the next attempt
//! time and is published as `due`, which wakes the reconciler at once. The
//! delays are the server's `--workspace-retry-initial-secs` and
//! `--workspace-retry-max-secs` ([`ConductorConfig::initial_backoff`],
//! [`ConductorConfig::max_backoff`]).
//!
//! # Volumes and placement
//!
//! A workspace is placed once. Only a workspace that never had a volume may be
//! placed again (on another cluster) after its first cluster refused it, and what
//! the refusing cluster made is deleted first. After the first successful create,
//! refusals and throttling are retried on the same cluster with backoff (reason
//! `CreateRefused`): its data lives there. Placement writes through a conditional
//! update (version, placeable status, no volume, live cluster row locked), so of
//! the API path and the reconciler, or of two replicas, exactly one places it.
//!
//! # Tombstones
//!
//! A workspace forgotten while its cluster was unreachable (`workspace delete
//! --force`) leaves a tombstone; every reconcile round the conductor asks each
//! connected cluster with tombstones to delete those workspaces' objects, then
//! clears them ([`Conductor::forget_workspace`]).
//!
//! # Placement cache
//!
//! Placement works from a per-organisation snapshot of clusters and summed
//! requests. It reads the database's change feed ([`lapdev_db::changes`]) before
//! every use: a cluster created, changed or deleted anywhere in the process drops
//! that organisation's snapshot, so nobody has to remember to invalidate it. A
//! decision charges its choice to the snapshot under the placement lock and
//! writes it after releasing the lock, so concurrent creates commit side by side
//! (the `snapshot` module says how in-flight choices survive a fresh read).
//! The snapshot and the in-flight charges are per process; with several
//! replicas the write itself is checked: it re-reads the chosen cluster's
//! placed requests under the organisation's database lock
//! (`Db::place_workspace_checked`), and a choice another replica made stale
//! is decided again from a fresh read. A refusal is never decided from the
//! cache alone: before refusing, placement reads the snapshot again and asks
//! the connector to re-read the clusters the database says are connected but
//! it does not ([`ManagerConnector::refresh`]); another replica's change
//! reaches this one's cache only as fast as its notification.
//!
//! The conductor reaches managers only through [`ManagerConnector`], which the
//! server implements with its tunnel registry and, with several replicas, by
//! forwarding to the replica that holds a cluster's tunnel (so every
//! replica's conductor reaches every connected cluster). Still, a replica's
//! reconciler leaves the workspaces of clusters whose tunnel another replica
//! holds to that replica ([`ManagerConnector::driven_elsewhere`]), so each
//! workspace is driven from one replica at a time.

pub mod backoff;
mod dispatch;
pub mod idle;
pub mod placement;
pub mod retention;
mod snapshot;
mod tombstones;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapdev_common::kube::WorkspaceSpec;
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::{ClusterStatus, DesiredState, WorkspaceStatus};
use lapdev_db::{Backoff, Change, Db, DbError, NewWorkspace, Workspace, WorkspaceTransition};
use lapdev_hrpc::{CallError, Code, HrpcError};
use lapdev_kube_rpc::{KubeManagerRpcClient, WorkspaceObservation};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::backoff::Clock;
use crate::placement::{Candidate, PlacementError, PlacementRequest};
use crate::snapshot::{Snapshot, Snapshots};

/// How many times a user action reads and writes a workspace before a version
/// conflict reaches the user (each conflict means someone else's write landed,
/// so five in a row means the row is hot, not that the action is wrong).
const USER_ACTION_TRIES: u32 = 5;

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

    /// Whether another server replica holds the cluster's tunnel: that
    /// replica's reconciler drives the cluster's workspaces, so this one
    /// leaves them alone (each workspace is driven from one replica at a
    /// time; calls made here on a user's behalf are still forwarded). A
    /// single replica never has one elsewhere.
    fn driven_elsewhere(&self, _cluster_id: Uuid) -> bool {
        false
    }

    /// Placement is about to refuse while the database says these clusters
    /// are connected and [`ManagerConnector::is_connected`] says they are not:
    /// re-reads whatever that answer comes from. With several replicas it may
    /// lag another replica's claim of the cluster by the notification's
    /// latency, and a refusal must not be decided from a lagging view. A
    /// single replica answers from its own tunnels, so the default does
    /// nothing.
    fn refresh<'a>(
        &'a self,
        _cluster_ids: &'a [Uuid],
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

/// Settings of the conductor.
#[derive(Debug, Clone)]
pub struct ConductorConfig {
    /// Deadline of every manager call.
    pub rpc_timeout: Duration,
    /// How often unsettled workspaces are looked at without being woken.
    pub reconcile_interval: Duration,
    /// First retry delay after a failure (and first self-repair delay); doubles
    /// up to `max_backoff`. Persisted in the workspace row.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Where the time comes from (tests move it forward instead of sleeping).
    pub clock: Clock,
    /// Namespace workspaces are created in.
    pub workspace_namespace: String,
    /// How long placement reuses an organisation's clusters and their summed
    /// requests before reading them again. Placements made meanwhile are added
    /// to the cached sums, and every cluster change published on the database's
    /// change feed drops the snapshot at once, so this only bounds how late
    /// placement sees workspaces stopped or deleted by their managers.
    pub placement_cache_ttl: Duration,
    /// Most workspace steps (each at most one manager call) running at once.
    pub max_concurrent_steps: usize,
    /// Most steps running at once for one organisation, so a slow cluster holds
    /// only its own organisation's slots (see the `dispatch` module).
    pub max_concurrent_steps_per_org: usize,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        Self {
            rpc_timeout: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            clock: Clock::default(),
            workspace_namespace: "lapdev-workspaces".to_owned(),
            placement_cache_ttl: Duration::from_secs(5),
            max_concurrent_steps: 64,
            max_concurrent_steps_per_org: 16,
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
        DbError::InvalidTransition { .. }
        | DbError::InUse { .. }
        | DbError::NotRestorable { .. } => HrpcError::failed_precondition(e.to_string()),
        DbError::Conflict { .. } => HrpcError::new(Code::Aborted, e.to_string()),
        DbError::QuotaExceeded(q) => HrpcError::new(Code::ResourceExhausted, q.to_string())
            .with_details(serde_json::json!({ "quota": q })),
        other => {
            tracing::error!(error = %other, "database error");
            HrpcError::unavailable("the database is not available")
        }
    }
}

/// An organisation's clusters and their summed requests, as placement last read
/// them, plus the placements made since.
/// One cluster in a placement decision, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedCluster {
    /// The cluster.
    pub cluster_id: Uuid,
    /// Its name.
    pub name: String,
}

/// A placement charged to the snapshot and being written: settled when the
/// write ends, or (when the caller gave up mid-write) when dropped, which then
/// counts as not written.
struct InFlight<'a> {
    conductor: &'a Conductor,
    workspace_id: Uuid,
    written: Option<bool>,
}

impl InFlight<'_> {
    async fn settle(mut self, written: bool) {
        let mut snapshots = self.conductor.inner.placement.lock().await;
        snapshots.settle(self.workspace_id, written);
        self.conductor.inner.settled.notify_waiters();
        self.written = Some(written);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.written.is_none() {
            let inner = self.conductor.inner.clone();
            let id = self.workspace_id;
            tokio::spawn(async move {
                inner.placement.lock().await.settle(id, false);
                inner.settled.notify_waiters();
            });
        }
    }
}

/// How often a placement decides again after another replica's placement took
/// the room it chose, before giving up for now.
const MAX_REFITS: u32 = 8;

/// Pauses a placement between its decision and its write (a test seam: it lets a
/// test interleave two placers deterministically).
pub type PlacementHook =
    Arc<dyn Fn(Uuid) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Inner {
    db: Db,
    connector: Arc<dyn ManagerConnector>,
    config: ConductorConfig,
    // Guards the per-organisation snapshots placement decides from: a decision
    // and the charge of its choice happen under it, so concurrent creates never
    // over-commit a cluster; the choice is written after it is released (see
    // the `snapshot` module).
    placement: tokio::sync::Mutex<Snapshots>,
    // Notified whenever an in-flight placement settles.
    settled: Notify,
    // The database's change feed, drained before the snapshot is used.
    changes: Mutex<broadcast::Receiver<Change>>,
    placement_hook: Mutex<Option<PlacementHook>>,
    action_hook: Mutex<Option<PlacementHook>>,
    wake: Notify,
    dispatch: dispatch::Dispatcher,
    // A tombstone clean-up is running (the run loop starts at most one).
    cleaning: AtomicBool,
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

impl Conductor {
    /// A conductor on `db`, reaching managers through `connector`.
    pub fn new(db: Db, connector: Arc<dyn ManagerConnector>, config: ConductorConfig) -> Self {
        let changes = Mutex::new(db.subscribe());
        Self {
            inner: Arc::new(Inner {
                db,
                connector,
                config,
                changes,
                placement_hook: Mutex::new(None),
                placement: tokio::sync::Mutex::new(Snapshots::default()),
                settled: Notify::new(),
                action_hook: Mutex::new(None),
                wake: Notify::new(),
                dispatch: dispatch::Dispatcher::default(),
                cleaning: AtomicBool::new(false),
                refused: Mutex::default(),
            }),
        }
    }

    /// Wakes the reconciler now, for a change written elsewhere (e.g. a
    /// disabled user's workspaces set to stop) that it would otherwise find at
    /// its next round.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
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
            .create_workspace_at(
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
                self.inner.config.clock.now(),
            )
            .await?;
        let placed = match self.place(&ws).await {
            Ok(placed) => placed,
            Err(e) => {
                // Capacity went between the check and the placement; the user is
                // told now and the reconciler keeps trying.
                self.retry_later(&ws, Failure::new(e.to_string())).await;
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
    ) -> Result<Vec<RankedCluster>, ConductorError> {
        let mut snapshots = self.inner.placement.lock().await;
        self.rank(&mut snapshots, org_id, req).await
    }

    /// The organisation's clusters ranked for `req`, best first. A refusal is
    /// decided from fresh reads only: the cached snapshot and the connector's
    /// view of which clusters are connected may both lag a change another
    /// replica made (a cluster that just connected there), so before refusing,
    /// the snapshot is read again and the connector re-reads the clusters the
    /// database says are connected.
    async fn rank(
        &self,
        snapshots: &mut Snapshots,
        org_id: Uuid,
        req: &PlacementRequest,
    ) -> Result<Vec<RankedCluster>, ConductorError> {
        let owned = |ranked: Vec<&Candidate>| {
            ranked
                .into_iter()
                .map(|c| RankedCluster {
                    cluster_id: c.cluster_id,
                    name: c.name.clone(),
                })
                .collect()
        };
        let candidates = self.candidates(snapshots, org_id).await?;
        let refusal = match placement::rank(req, candidates) {
            Ok(ranked) => return Ok(owned(ranked)),
            Err(e) => e,
        };
        snapshots.remove(org_id);
        let Ok(candidates) = self.candidates(snapshots, org_id).await else {
            // The database cannot say more now: the refusal stands.
            return Err(refusal.into());
        };
        let lagging: Vec<Uuid> = candidates
            .iter()
            .filter(|c| c.status == ClusterStatus::Connected && !c.tunnel_up)
            .map(|c| c.cluster_id)
            .collect();
        if lagging.is_empty() {
            return Ok(owned(placement::rank(req, candidates)?));
        }
        self.inner.connector.refresh(&lagging).await;
        // The snapshot is fresh; this only asks the connector again.
        let candidates = self.candidates(snapshots, org_id).await?;
        Ok(owned(placement::rank(req, candidates)?))
    }

    /// Forgets what placement knows about `org_id`'s clusters. Cluster changes
    /// written through [`Db`] do this by themselves (the change feed); this is for
    /// changes the database does not see.
    pub async fn invalidate(&self, org_id: Uuid) {
        self.inner.placement.lock().await.remove(org_id);
    }

    /// Installs a [`PlacementHook`], awaited after a placement chose a cluster and
    /// before it writes the choice.
    pub fn set_placement_hook(&self, hook: PlacementHook) {
        *lock(&self.inner.placement_hook) = Some(hook);
    }

    /// The clock the conductor schedules retries by.
    pub fn clock(&self) -> &Clock {
        &self.inner.config.clock
    }

    /// Installs a hook awaited by user actions ([`Conductor::set_desired_state`])
    /// between reading the workspace and writing it (a test seam: it lets a test
    /// write the row in between, as the reconciler might).
    pub fn set_action_hook(&self, hook: PlacementHook) {
        *lock(&self.inner.action_hook) = Some(hook);
    }

    /// Sets what the user wants (`running`, `stopped`, `deleted`) and wakes the
    /// reconciler. A version conflict (the reconciler or a manager's report wrote
    /// the row between the read and the write) is retried here with the row read
    /// again, so the user never sees it.
    pub async fn set_desired_state(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
        desired: DesiredState,
    ) -> Result<Workspace, ConductorError> {
        let mut attempt = 0;
        let ws = loop {
            attempt += 1;
            match self
                .try_set_desired_state(org_id, workspace_id, desired)
                .await
            {
                Err(ConductorError::Db(DbError::Conflict { .. }))
                    if attempt < USER_ACTION_TRIES =>
                {
                    tracing::debug!(workspace_id = %workspace_id, attempt, "workspace written meanwhile; trying again");
                }
                other => break other?,
            }
        };
        self.inner.wake.notify_one();
        Ok(ws)
    }

    async fn try_set_desired_state(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
        desired: DesiredState,
    ) -> Result<Workspace, ConductorError> {
        let ws = self.inner.db.get_workspace(org_id, workspace_id).await?;
        let hook = lock(&self.inner.action_hook).clone();
        if let Some(hook) = hook {
            hook(workspace_id).await;
        }
        let mut ws = self
            .inner
            .db
            .set_workspace_desired_state_at(
                org_id,
                workspace_id,
                ws.version,
                desired,
                self.inner.config.clock.now(),
            )
            .await?;
        // Starting a workspace that failed for good is the user's "try again":
        // the terminal reason no longer holds it back.
        if desired == DesiredState::Running
            && ws.status == WorkspaceStatus::Failed
            && ws
                .status_reason
                .as_ref()
                .is_some_and(WorkspaceReason::is_terminal)
        {
            ws = self
                .inner
                .db
                .transition_workspace(
                    org_id,
                    workspace_id,
                    ws.version,
                    WorkspaceTransition::to(WorkspaceStatus::Failed)
                        .message("starting again as asked"),
                )
                .await?;
        }
        Ok(ws)
    }

    /// Runs the reconciler until `shutdown` resolves. Each round queues the
    /// workspaces that are due and returns to waiting at once: steps run in the
    /// background under the caps of [`ConductorConfig::max_concurrent_steps`]
    /// and [`ConductorConfig::max_concurrent_steps_per_org`], so no round waits
    /// for a slow manager. Steps still running at shutdown are dropped with the
    /// runtime; the database says what is left, and the next start resumes it.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // A cluster that connects may have tombstones to clean up, and a
        // workspace that newly failed may need a repair announced: look at once.
        let mut changes = self.inner.db.subscribe();
        loop {
            self.spawn_tombstone_cleanup();
            self.queue_due().await;
            let next_round = tokio::time::Instant::now() + self.inner.config.reconcile_interval;
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = self.inner.wake.notified() => break,
                    _ = tokio::time::sleep_until(next_round) => break,
                    change = changes.recv() => match change {
                        Ok(change) if wakes(&change) => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            changes = self.inner.db.subscribe();
                            continue;
                        }
                    },
                }
            }
        }
    }

    /// Drives every unsettled workspace that is due one step (under the same
    /// caps as [`Conductor::run`]), skipping those already queued or being
    /// driven, and cleans up tombstones on connected clusters; returns when the
    /// steps it queued are done, with how many it queued.
    pub async fn reconcile_once(&self) -> usize {
        self.clean_tombstones().await;
        let queued = self.queue_due().await;
        self.wait_finished(&queued).await;
        queued.len()
    }

    /// Queues every unsettled workspace that is due; returns the ids queued.
    async fn queue_due(&self) -> Vec<Uuid> {
        let now = self.inner.config.clock.now();
        match self.inner.db.list_unsettled_workspaces(now).await {
            Ok(mut unsettled) => {
                // Placed on a cluster whose tunnel another replica holds:
                // that replica drives it. Unplaced ones are placed by any
                // (placement is checked under the organisation's lock).
                unsettled.retain(|ws| {
                    !ws.cluster_id
                        .is_some_and(|c| self.inner.connector.driven_elsewhere(c))
                });
                self.enqueue(unsettled)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list unsettled workspaces");
                Vec::new()
            }
        }
    }

    /// Starts a tombstone clean-up in the background unless one is running.
    fn spawn_tombstone_cleanup(&self) {
        if self.inner.cleaning.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.clean_tombstones().await;
            this.inner.cleaning.store(false, Ordering::Release);
        });
    }

    /// Makes every waiting workspace due now (an admin's "retry now", and tests).
    pub async fn clear_backoff(&self) {
        if let Err(e) = self.inner.db.clear_workspace_backoff().await {
            tracing::warn!(error = %e, "cannot clear workspace backoff");
        }
    }

    /// The persisted backoff for the attempt after `ws`'s last one.
    fn next_backoff(&self, ws: &Workspace) -> (Backoff, Duration) {
        self.backoff_for(ws.repair_attempts.saturating_add(1))
    }

    /// The persisted backoff of attempt number `attempts`.
    fn backoff_for(&self, attempts: i32) -> (Backoff, Duration) {
        let delay = backoff::jittered(backoff::delay(
            self.inner.config.initial_backoff,
            self.inner.config.max_backoff,
            attempts,
        ));
        let at = self.inner.config.clock.now()
            + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        (
            Backoff {
                attempts,
                next_attempt_at: Some(at),
            },
            delay,
        )
    }

    /// Drops the snapshots of organisations whose clusters changed since the
    /// last look (or all of them, if the feed overflowed).
    fn apply_changes(&self, snapshots: &mut Snapshots) {
        let mut changes = lock(&self.inner.changes);
        loop {
            match changes.try_recv() {
                Ok(Change::ClusterChanged {
                    organization_id, ..
                })
                | Ok(Change::ClusterDeleted {
                    organization_id, ..
                }) => {
                    snapshots.remove(organization_id);
                }
                // Another replica's changes may have been missed.
                Ok(Change::Resync) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    snapshots.clear()
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// The organisation's clusters as placement sees them, from the snapshot
    /// (read again when older than the TTL), with whose tunnel is up now.
    async fn candidates<'a>(
        &self,
        snapshots: &'a mut Snapshots,
        org_id: Uuid,
    ) -> Result<&'a [Candidate], ConductorError> {
        self.apply_changes(snapshots);
        let ttl = self.inner.config.placement_cache_ttl;
        if snapshots.fresh(org_id, ttl).is_none() {
            let snapshot = Snapshot::read(&self.inner.db, org_id).await?;
            snapshots.insert(org_id, snapshot);
        }
        let Some(snapshot) = snapshots.fresh(org_id, Duration::MAX) else {
            unreachable!("inserted above");
        };
        for c in &mut snapshot.candidates {
            c.tunnel_up = self.inner.connector.is_connected(c.cluster_id);
        }
        Ok(&snapshot.candidates)
    }

    /// The workspace's spec with its cluster's scheduling settings.
    async fn spec(&self, ws: &Workspace, cluster: Uuid) -> Result<WorkspaceSpec, Failure> {
        let c = self
            .inner
            .db
            .get_cluster(ws.organization_id, cluster)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        Ok(spec(ws, c.placement.scheduling))
    }

    /// Chooses a cluster and records the choice (status `creating`). A
    /// workspace someone else placed meanwhile is returned as it is.
    ///
    /// The decision comes from this process's snapshot (in-flight choices of
    /// this process charged to it); the write re-reads the chosen cluster's
    /// placed requests under the organisation's placement lock, which every
    /// replica's placements take, and refuses when another replica's
    /// placement took the room meanwhile. Then the snapshot is read afresh
    /// and the decision made again. A write that finds the row changed by
    /// another placer (without it being placed) reads it and decides again,
    /// within the same bound.
    async fn place(&self, ws: &Workspace) -> Result<Workspace, ConductorError> {
        let mut attempt = 0;
        loop {
            match self.place_once(ws).await {
                Err(ConductorError::Db(DbError::NoLongerFits { cluster_id }))
                    if attempt < MAX_REFITS =>
                {
                    attempt += 1;
                    tracing::debug!(workspace_id = %ws.id, %cluster_id, "the chosen cluster filled up meanwhile; deciding again");
                    self.inner.placement.lock().await.remove(ws.organization_id);
                }
                Err(ConductorError::Db(DbError::Conflict { .. })) if attempt < MAX_REFITS => {
                    // Another placer (another replica's reconciler, woken by
                    // the new row) wrote the row first without placing it:
                    // look again; one that placed it is returned as it is.
                    attempt += 1;
                    tracing::debug!(workspace_id = %ws.id, "the workspace changed while being placed; looking again");
                }
                Err(ConductorError::Db(DbError::NoLongerFits { .. })) => {
                    // Still racing after many fresh reads: let the caller
                    // (or the reconciler's next round) try again later.
                    return Err(DbError::Conflict {
                        entity: lapdev_db::EntityKind::Workspace,
                        id: ws.id,
                        expected_version: ws.version,
                    }
                    .into());
                }
                other => return other,
            }
        }
    }

    async fn place_once(&self, ws: &Workspace) -> Result<Workspace, ConductorError> {
        let req = PlacementRequest {
            cpu_millis: ws.cpu_millis,
            memory_bytes: ws.memory_bytes,
            cluster: ws.placement_cluster.clone(),
            region: ws.placement_region.clone(),
        };
        let (current, chosen) = loop {
            // Registered before looking, so a settle in between is not missed.
            let settled = self.inner.settled.notified();
            let current = self
                .inner
                .db
                .get_workspace(ws.organization_id, ws.id)
                .await?;
            if !placeable(&current) {
                return Ok(current);
            }
            let mut snapshots = self.inner.placement.lock().await;
            if snapshots.is_in_flight(ws.id) {
                // This process is placing it already (the API path and the
                // reconciler): wait for that write, then look again.
                drop(snapshots);
                settled.await;
                continue;
            }
            let ranked = self.rank(&mut snapshots, ws.organization_id, &req).await?;
            let refused = lock(&self.inner.refused);
            let refused = refused.get(&ws.id);
            // Clusters that refused this workspace go last, keeping their order.
            let best = ranked
                .iter()
                .find(|c| refused.is_none_or(|r| !r.contains(&c.cluster_id)))
                .unwrap_or(&ranked[0]);
            let chosen = RankedCluster {
                cluster_id: best.cluster_id,
                name: best.name.clone(),
            };
            // Counted from now on, before the write, by every decision.
            snapshots.charge(
                ws.organization_id,
                ws.id,
                chosen.cluster_id,
                ws.cpu_millis,
                ws.memory_bytes,
            );
            break (current, chosen);
        };
        let in_flight = InFlight {
            conductor: self,
            workspace_id: ws.id,
            written: None,
        };
        let result = self.write_placement(ws, current, &chosen).await;
        // Placed by someone else or not at all: the charge was not ours to keep.
        let ours = matches!(&result, Ok(p) if p.cluster_id == Some(chosen.cluster_id));
        in_flight.settle(ours).await;
        if ours {
            tracing::info!(workspace_id = %ws.id, cluster = %chosen.name, "workspace placed");
        }
        result
    }

    /// Writes a placement decision (status `scheduling`, then `creating` on the
    /// chosen cluster). A workspace someone else placed meanwhile is returned as
    /// it is.
    async fn write_placement(
        &self,
        ws: &Workspace,
        current: Workspace,
        chosen: &RankedCluster,
    ) -> Result<Workspace, ConductorError> {
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
        let hook = lock(&self.inner.placement_hook).clone();
        if let Some(hook) = hook {
            hook(ws.id).await;
        }
        match self
            .inner
            .db
            .place_workspace_checked(
                ws.organization_id,
                ws.id,
                current.version,
                chosen.cluster_id,
                &self.inner.config.workspace_namespace,
            )
            .await
        {
            Ok(placed) => Ok(placed),
            Err(e @ (DbError::Conflict { .. } | DbError::InvalidTransition { .. })) => {
                // Another placer (the API path, the reconciler, another replica)
                // won: its choice stands.
                let now = self
                    .inner
                    .db
                    .get_workspace(ws.organization_id, ws.id)
                    .await?;
                if placeable(&now) {
                    return Err(e.into());
                }
                tracing::debug!(workspace_id = %ws.id, "placed by someone else");
                Ok(now)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One step towards the desired state; a failure is recorded in the row with
    /// the next attempt's time.
    async fn drive(&self, ws: Workspace) {
        use DesiredState as D;
        use WorkspaceStatus as S;
        let reason = ws.status_reason.clone();
        let result = match (ws.desired_state, ws.status, ws.cluster_id) {
            // Reported deleted (or never placed): only the row is left.
            (D::Deleted, S::Deleted, _) | (D::Deleted, _, None) => {
                self.finish_delete(&ws, false).await
            }
            (D::Deleted, _, Some(cluster)) => self.delete(&ws, cluster).await,
            (D::Running, S::Running, _) => Ok(()),
            (D::Running, S::Failed, Some(_))
                if reason.as_ref().is_some_and(WorkspaceReason::is_terminal) =>
            {
                // Retrying the same spec cannot help; the user starts it again.
                Ok(())
            }
            (D::Running, S::Failed, Some(cluster))
                if reason.as_ref().is_some_and(WorkspaceReason::pod_ended) =>
            {
                self.repair(&ws, cluster).await
            }
            (D::Running, S::Pending | S::Scheduling, _) | (D::Running, S::Failed, None) => {
                self.place_and_create(&ws).await
            }
            (D::Running, S::Failed, Some(_))
                if placeable(&ws) && ws.status_reason == Some(WorkspaceReason::CreateRefused) =>
            {
                self.place_and_create(&ws).await
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
        if let Err(failure) = result {
            tracing::warn!(workspace_id = %ws.id, message = %failure.message, "workspace step failed; will retry");
            self.retry_later(&ws, failure).await;
        }
    }

    async fn place_and_create(&self, ws: &Workspace) -> Result<(), Failure> {
        let placed = self
            .place(ws)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        match placed.cluster_id {
            Some(cluster) if placed.status == WorkspaceStatus::Creating => {
                self.create(&placed, cluster).await
            }
            _ => Ok(()),
        }
    }

    fn manager(&self, cluster: Uuid) -> Result<KubeManagerRpcClient, Failure> {
        self.inner
            .connector
            .manager(cluster)
            .map(|m| m.with_timeout(self.inner.config.rpc_timeout))
            .ok_or_else(|| Failure {
                message: "the cluster's manager is not connected".to_owned(),
                reason: None,
                disconnected: true,
            })
    }

    async fn create(&self, ws: &Workspace, cluster: Uuid) -> Result<(), Failure> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Creating).await?;
        let manager = self.manager(cluster)?;
        let spec = self.spec(&ws, cluster).await?;
        match manager.create_workspace(spec).await {
            Ok(obs) => {
                lock(&self.inner.refused).remove(&ws.id);
                // From here on the workspace has a volume on this cluster and
                // never moves.
                self.observe(&ws, &obs, true).await;
                self.recheck_later(&ws).await;
                Ok(())
            }
            Err(CallError::Service(e)) if refuses(&e) && !ws.volume_created => {
                // A first create the cluster will not take: remove whatever it
                // made (a volume, say), then let placement try another cluster.
                if let Err(cleanup) = manager.delete_workspace(ws.id).await {
                    return Err(Failure::refused(format!(
                        "the cluster refused the workspace ({}), and removing what it made failed: {}; will retry",
                        e.message,
                        describe(cleanup)
                    )));
                }
                lock(&self.inner.refused)
                    .entry(ws.id)
                    .or_default()
                    .insert(cluster);
                let message = format!("the cluster refused the workspace: {}", e.message);
                self.set_status(
                    &ws,
                    WorkspaceStatus::Failed,
                    Some(message.clone()),
                    Some(WorkspaceReason::CreateRefused),
                )
                .await;
                // The message stays on the workspace (now placed elsewhere, or
                // failed if nothing else fits) until the next cluster answers.
                if let Ok(current) = self.inner.db.get_workspace(ws.organization_id, ws.id).await
                    && let Err(e) = self.place(&current).await
                {
                    return Err(Failure::new(format!("{message}; {e}")));
                }
                Err(Failure::new(message))
            }
            Err(e) => Err(call_failure(&ws, e)),
        }
    }

    async fn start(&self, ws: &Workspace, cluster: Uuid) -> Result<(), Failure> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Creating).await?;
        let manager = self.manager(cluster)?;
        let obs = manager
            .start_workspace(self.spec(&ws, cluster).await?)
            .await
            .map_err(|e| call_failure(&ws, e))?;
        self.observe(&ws, &obs, true).await;
        self.recheck_later(&ws).await;
        Ok(())
    }

    /// Self-repair: the pod of a workspace that should run has ended. The first
    /// look announces when a new pod comes (and schedules it); the look after
    /// that, when it is due, asks the manager for the new pod.
    async fn repair(&self, ws: &Workspace, cluster: Uuid) -> Result<(), Failure> {
        let what = ws.status_reason.as_ref().map_or("pod ended", |r| match r {
            WorkspaceReason::Evicted => "pod evicted",
            WorkspaceReason::OOMKilled => "out of memory",
            _ => "pod ended",
        });
        let head = repair_head(what, ws.status_message.as_deref());
        if ws.next_attempt_at.is_none() {
            let (next, _) = self.next_backoff(ws);
            let change = WorkspaceTransition {
                backoff: Some(next),
                ..WorkspaceTransition::to(WorkspaceStatus::Failed)
                    .message(format!(
                        "{head}; new pod at {} (attempt {})",
                        backoff::at(next.next_attempt_at),
                        next.attempts
                    ))
                    .reason(ws.status_reason.clone())
            };
            self.inner
                .db
                .transition_workspace(ws.organization_id, ws.id, ws.version, change)
                .await
                .map_err(|e| Failure::new(e.to_string()))?;
            return Ok(());
        }
        // Due: a new pod now. The next look waits for this attempt's delay again,
        // so a pod that ends again is not replaced any faster.
        let (next, _) = self.backoff_for(ws.repair_attempts.max(1));
        let change = WorkspaceTransition {
            backoff: Some(next),
            repair: true,
            ..WorkspaceTransition::to(WorkspaceStatus::Creating)
                .message(format!(
                    "{head}; new pod requested (attempt {})",
                    ws.repair_attempts.max(1)
                ))
                .reason(ws.status_reason.clone())
        };
        let ws = self
            .inner
            .db
            .transition_workspace(ws.organization_id, ws.id, ws.version, change)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let manager = self.manager(cluster)?;
        let obs = manager
            .start_workspace(self.spec(&ws, cluster).await?)
            .await
            .map_err(|e| call_failure(&ws, e))?;
        self.observe(&ws, &obs, true).await;
        tracing::info!(workspace_id = %ws.id, attempt = ws.repair_attempts, "workspace repaired with a new pod");
        Ok(())
    }

    async fn stop(&self, ws: &Workspace, cluster: Uuid) -> Result<(), Failure> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Stopping).await?;
        let manager = self.manager(cluster)?;
        let obs = manager
            .stop_workspace(ws.id)
            .await
            .map_err(|e| call_failure(&ws, e))?;
        self.observe(&ws, &obs, false).await;
        if obs.status != WorkspaceStatus::Stopped {
            self.recheck_later(&ws).await;
        }
        Ok(())
    }

    async fn delete(&self, ws: &Workspace, cluster: Uuid) -> Result<(), Failure> {
        let ws = self.ensure_status(ws, WorkspaceStatus::Deleting).await?;
        let manager = self.manager(cluster)?;
        if ws.volume_created {
            // The grace period: the pod goes, the volume stays (see `retention`).
            let obs = retention::delete_keeping_volume(self, &manager, &ws).await?;
            return if obs.status == WorkspaceStatus::Deleted {
                self.finish_delete(&ws, true).await
            } else {
                Err(Failure::new(format!(
                    "the manager is still deleting the pod ({})",
                    obs.status
                )))
            };
        }
        let obs = manager
            .delete_workspace(ws.id)
            .await
            .map_err(|e| call_failure(&ws, e))?;
        if obs.status == WorkspaceStatus::Deleted {
            self.finish_delete(&ws, false).await
        } else {
            Err(Failure::new(format!(
                "the manager is still deleting ({})",
                obs.status
            )))
        }
    }

    /// Soft-deletes the row; with `keep_volume`, its volume's retention window
    /// starts now. A write that lost to another (the manager's report that the
    /// pod is gone lands at the same moment) is retried from a fresh read, so
    /// the deletion does not wait out a backoff for it.
    async fn finish_delete(&self, ws: &Workspace, keep_volume: bool) -> Result<(), Failure> {
        let db = &self.inner.db;
        let (org, id) = (ws.organization_id, ws.id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let version = db
                .get_workspace(org, id)
                .await
                .map_err(|e| Failure::new(e.to_string()))?
                .version;
            let written = if keep_volume {
                db.delete_workspace_keeping_volume(org, id, version, self.inner.config.clock.now())
                    .await
                    .map(Some)
            } else {
                db.delete_workspace(org, id, version).await.map(|_| None)
            };
            match written {
                Ok(Some(until)) => {
                    tracing::info!(workspace_id = %ws.id, volume_kept_until = %until, "workspace deleted; its home volume is kept");
                }
                Ok(None) => tracing::info!(workspace_id = %ws.id, "workspace deleted"),
                Err(DbError::Conflict { .. }) if attempt < 3 => continue,
                Err(e) => return Err(Failure::new(e.to_string())),
            }
            lock(&self.inner.refused).remove(&ws.id);
            return Ok(());
        }
    }

    /// Moves the workspace to `status` unless it is there already.
    async fn ensure_status(
        &self,
        ws: &Workspace,
        status: WorkspaceStatus,
    ) -> Result<Workspace, Failure> {
        let current = self
            .inner
            .db
            .get_workspace(ws.organization_id, ws.id)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
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
            .map_err(|e| Failure::new(e.to_string()))
    }

    /// Applies what a manager answered, by the database's transition rules; a
    /// report that raced and lost is ignored (the newer one stands), and so is
    /// an answer older than the observation the row already reflects (a report
    /// the manager sent after it answered can arrive first). Nothing is written
    /// when status, reason and message are what is stored.
    async fn observe(&self, ws: &Workspace, obs: &WorkspaceObservation, volume_created: bool) {
        self.apply(ws, obs, volume_created, Some(obs.observed_at))
            .await;
    }

    /// Writes `obs` unless it says nothing new; `observed_at` is the manager's
    /// time of it, `None` for the conductor's own statuses (not ordered against
    /// the manager's observations, and not changing the stored time).
    async fn apply(
        &self,
        ws: &Workspace,
        obs: &WorkspaceObservation,
        volume_created: bool,
        observed_at: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        for _ in 0..3 {
            let Ok(current) = self.inner.db.get_workspace(ws.organization_id, ws.id).await else {
                return;
            };
            if let Some(at) = observed_at
                && current.is_stale_observation(at)
            {
                tracing::debug!(workspace_id = %ws.id, observed_at = %at, "ignoring an answer older than the stored observation");
                // Its status is old news, but the volume it made is real: the
                // workspace must never be placed elsewhere.
                if volume_created && !current.volume_created {
                    match self
                        .inner
                        .db
                        .mark_workspace_volume_created(ws.organization_id, ws.id, current.version)
                        .await
                    {
                        Err(DbError::Conflict { .. }) => continue,
                        Err(e) => {
                            tracing::warn!(workspace_id = %ws.id, error = %e, "cannot record the volume");
                        }
                        Ok(_) => {}
                    }
                }
                return;
            }
            if current.status == obs.status
                && current.status_message == obs.message
                && current.status_reason == obs.reason
                && (current.volume_created || !volume_created)
            {
                return;
            }
            let change = WorkspaceTransition {
                pod_name: obs.pod_name.clone(),
                volume_created,
                status_message: obs.message.clone(),
                observed_at,
                ..WorkspaceTransition::to(obs.status).reason(obs.reason.clone())
            };
            match self
                .inner
                .db
                .transition_workspace(ws.organization_id, ws.id, current.version, change)
                .await
            {
                Ok(_)
                | Err(DbError::InvalidTransition { .. } | DbError::StaleObservation { .. }) => {
                    return;
                }
                Err(DbError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(workspace_id = %ws.id, error = %e, "cannot record observation");
                    return;
                }
            }
        }
    }

    async fn set_status(
        &self,
        ws: &Workspace,
        status: WorkspaceStatus,
        message: Option<String>,
        reason: Option<WorkspaceReason>,
    ) {
        let obs = WorkspaceObservation {
            workspace_id: ws.id,
            status,
            message,
            pod_name: None,
            node_name: None,
            reason,
            observed_at: chrono::Utc::now(),
        };
        self.apply(ws, &obs, false, None).await;
    }

    /// A call went through but the workspace is not settled yet: look again
    /// after the next backoff delay rather than every round (the manager's
    /// reports move it on meanwhile).
    async fn recheck_later(&self, ws: &Workspace) {
        let Ok(current) = self.inner.db.get_workspace(ws.organization_id, ws.id).await else {
            return;
        };
        let settled = matches!(
            (current.desired_state, current.status),
            (DesiredState::Running, WorkspaceStatus::Running)
                | (DesiredState::Stopped, WorkspaceStatus::Stopped)
        );
        // A pod that ended while this step's call was answering was reported
        // after it: the repair path owns that schedule and announces it.
        let ended = current.status == WorkspaceStatus::Failed
            && current
                .status_reason
                .as_ref()
                .is_some_and(WorkspaceReason::pod_ended);
        if settled || ended {
            return;
        }
        let (next, _) = self.next_backoff(&current);
        let _ = self
            .inner
            .db
            .set_workspace_backoff(ws.organization_id, ws.id, current.version, next)
            .await;
    }

    /// Records why the last step failed and when it is tried again, keeping the
    /// status (or moving to `failed` for a refusal of a workspace that stays).
    async fn retry_later(&self, ws: &Workspace, failure: Failure) {
        let Ok(current) = self.inner.db.get_workspace(ws.organization_id, ws.id).await else {
            return;
        };
        if failure.disconnected {
            // No call was made, so nothing to back off from: say so (once) and
            // try again when the manager connects.
            let message = format!("{}; waiting for it to connect", failure.message);
            if current.status_message.as_deref() != Some(message.as_str()) {
                let change = WorkspaceTransition::to(current.status)
                    .message(message)
                    .reason(current.status_reason.clone());
                let _ = self
                    .inner
                    .db
                    .transition_workspace(ws.organization_id, ws.id, current.version, change)
                    .await;
            }
            return;
        }
        let (next, _) = self.next_backoff(&current);
        let status = if failure.reason == Some(WorkspaceReason::CreateRefused)
            && workspace_transition_ok(current.status, WorkspaceStatus::Failed)
        {
            WorkspaceStatus::Failed
        } else {
            current.status
        };
        let reason = failure.reason.clone().or(current.status_reason.clone());
        let change = WorkspaceTransition {
            backoff: Some(next),
            ..WorkspaceTransition::to(status)
                .message(format!(
                    "{}; retry at {} (attempt {})",
                    failure.message,
                    backoff::at(next.next_attempt_at),
                    next.attempts
                ))
                .reason(reason)
        };
        let _ = self
            .inner
            .db
            .transition_workspace(ws.organization_id, ws.id, current.version, change)
            .await;
    }
}

/// What a repair message starts with: the manager's own account of the ended
/// pod when it gives one (it already says "the pod was evicted: …"), else the
/// short `what` with whatever detail was stored; never the plan of an earlier
/// announcement.
fn repair_head(what: &str, stored: Option<&str>) -> String {
    let detail = stored
        .and_then(|m| m.split("; new pod").next())
        .map(str::trim)
        .filter(|m| !m.is_empty());
    match detail {
        None => what.to_owned(),
        Some(d) if MANAGER_HEADS.iter().any(|h| d.starts_with(h)) || d.starts_with(what) => {
            d.to_owned()
        }
        Some(d) => format!("{what}: {d}"),
    }
}

/// How the manager begins the message of a pod that ended
/// (`lapdev-kube-manager/src/observe.rs`).
const MANAGER_HEADS: [&str; 3] = [
    "the pod was evicted",
    "the container was killed",
    "the pod ended",
];

fn workspace_transition_ok(from: WorkspaceStatus, to: WorkspaceStatus) -> bool {
    lapdev_db::workspace_transition_allowed(from, to)
}

/// Whether a change needs the reconciler now rather than at its next round.
fn wakes(change: &Change) -> bool {
    match change {
        Change::ClusterChanged { .. } | Change::Resync => true,
        // A report that made it due (a pod that ended, or the pod of a
        // deletion gone); an older replica's newly failed one says so only by
        // its statuses.
        Change::Workspace(w) => {
            w.due
                || (w.status == WorkspaceStatus::Failed
                    && w.previous_status != Some(WorkspaceStatus::Failed))
        }
        _ => false,
    }
}

/// Whether placement may (re)choose a cluster for `ws`: it was never placed, or
/// its cluster refused it before it ever had a volume.
fn placeable(ws: &Workspace) -> bool {
    !ws.volume_created
        && match ws.status {
            WorkspaceStatus::Pending | WorkspaceStatus::Scheduling => true,
            WorkspaceStatus::Failed => {
                ws.cluster_id.is_none() || ws.status_reason == Some(WorkspaceReason::CreateRefused)
            }
            _ => false,
        }
}

/// Why a step failed, for the workspace's message (and reason, when it has one).
#[derive(Debug)]
struct Failure {
    message: String,
    reason: Option<WorkspaceReason>,
    /// Nothing was called: the manager is not connected. Retried when it
    /// connects (the reconciler wakes on cluster changes), not after a backoff.
    disconnected: bool,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            reason: None,
            disconnected: false,
        }
    }

    fn refused(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            reason: Some(WorkspaceReason::CreateRefused),
            disconnected: false,
        }
    }
}

/// A failed lifecycle call. For a workspace that already has its volume, a
/// refusal or throttling by the cluster is shown as `CreateRefused` and retried
/// there, never elsewhere.
fn call_failure(ws: &Workspace, e: CallError<HrpcError>) -> Failure {
    let refused = matches!(&e, CallError::Service(h) if refuses(h) || retryable_refusal(h));
    let message = describe(e);
    if refused && ws.volume_created {
        Failure::refused(format!("the cluster refused the new pod: {message}"))
    } else {
        Failure::new(message)
    }
}

/// Throttling and server errors of the cluster, as a manager reports them.
fn retryable_refusal(e: &HrpcError) -> bool {
    matches!(e.code, Code::Unavailable | Code::Internal | Code::Aborted)
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

fn spec(
    ws: &Workspace,
    scheduling: lapdev_common::scheduling::SchedulingSettings,
) -> WorkspaceSpec {
    WorkspaceSpec {
        scheduling,
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

/// Whether a cluster status lets workspaces be placed (for callers that show
/// why a cluster is skipped).
pub fn status_is_placeable(status: ClusterStatus) -> bool {
    status == ClusterStatus::Connected
}

#[cfg(test)]
mod tests {
    use super::{Change, Uuid, WorkspaceStatus, repair_head, wakes};

    #[test]
    fn a_due_change_or_a_newly_failed_workspace_wakes_the_reconciler() {
        let change = |previous, status, due| {
            Change::Workspace(lapdev_db::WorkspaceChange {
                organization_id: Uuid::nil(),
                workspace_id: Uuid::nil(),
                cluster_id: None,
                previous_status: Some(previous),
                status,
                reason: None,
                repair: false,
                due,
            })
        };
        use WorkspaceStatus::{Deleting, Failed, Running};
        assert!(wakes(&change(Deleting, Deleting, true)));
        assert!(!wakes(&change(Deleting, Deleting, false)));
        assert!(wakes(&change(Running, Failed, false)), "an older replica's");
        assert!(!wakes(&change(Failed, Failed, false)));
        // What an older replica relays has no `due`.
        let relayed: lapdev_db::WorkspaceChange = serde_json::from_value(serde_json::json!({
            "organization_id": Uuid::nil(),
            "workspace_id": Uuid::nil(),
            "cluster_id": null,
            "previous_status": "deleting",
            "status": "deleting",
            "reason": null,
            "repair": false,
        }))
        .unwrap();
        assert!(!relayed.due);
    }

    #[test]
    fn a_repair_message_names_what_happened_once() {
        // The manager's own account is kept as it is, not prefixed again.
        let manager = "the pod was evicted: The node was low on resource: memory";
        assert_eq!(repair_head("pod evicted", Some(manager)), manager);
        let oom = "the container was killed for exceeding its memory limit (exit code 137)";
        assert_eq!(repair_head("out of memory", Some(oom)), oom);
        // A bare detail gets the short head; an earlier plan is dropped.
        assert_eq!(
            repair_head(
                "pod evicted",
                Some("low memory; new pod at 2026-11-30T03:15:42Z (attempt 1)")
            ),
            "pod evicted: low memory"
        );
        assert_eq!(
            repair_head(
                "pod evicted",
                Some("pod evicted: low memory; new pod requested (attempt 1)")
            ),
            "pod evicted: low memory"
        );
        assert_eq!(repair_head("pod ended", None), "pod ended");
        assert_eq!(repair_head("pod ended", Some("")), "pod ended");
    }
}
