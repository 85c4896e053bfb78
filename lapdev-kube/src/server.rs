//! `KubeClusterServer`: the server side of `KubeClusterRpc`, the registry of
//! connected managers, and the status of every cluster.
//!
//! # Cluster status
//!
//! A cluster is `pending` until its manager has both reported its info and holds
//! a tunnel; then `connected`. A heartbeat that says `degraded` makes it
//! `degraded` (and `ok` makes it `connected` again). A cluster whose manager
//! misses three heartbeat intervals, or whose tunnel closes, becomes
//! `disconnected`. Status is written to the database only when it changes;
//! heartbeats update an in-memory last-seen time that a background task flushes
//! every few seconds, so heartbeats cost no database write.
//!
//! # Several replicas
//!
//! On a shared PostgreSQL database ([`KubeClusterServer::replicated`]) a
//! cluster's status is written only by the replica holding its newest tunnel,
//! which claims the cluster in the database when the tunnel opens; a replica
//! holding an older tunnel is told and closes it. A replica that hears the
//! manager without holding its tunnel (heartbeats and reports are
//! load-balanced on their own) writes no status: its last-seen flush records
//! the time, and it signals the owner what else it heard. The owner reads the
//! stored last-seen time before it declares a cluster it has not heard
//! `disconnected`, so the status does not flap. See the `owner` module.
//!
//! # Tunnels and tokens
//!
//! A tunnel is usable only after its token id is recorded with the tunnel's
//! generation, and registration, revocation and expiry take one lock, so a
//! revocation can never slip between them (`tunnels.rs`). A tunnel closes when
//! its token is revoked through this server, when the token expires (a close is
//! scheduled at `expires_at`), or when its cluster is deleted.
//!
//! # Database outages
//!
//! Heartbeats need no database write, and verified tokens stay usable for a
//! bounded window when the database cannot answer
//! ([`KubeClusterServerConfig::token_stale_if_error`]), so an outage shorter
//! than that window neither drops tunnels nor changes any cluster's status.
//!
//! # Identity
//!
//! Which cluster is calling comes only from the verified token
//! ([`ClusterIdentity`], set by [`auth::require_cluster_token`]); nothing in a
//! request body can name another cluster.

pub mod auth;
mod owner;
mod tunnels;
mod turns;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use lapdev_common::kube::KubeClusterInfo;
use lapdev_common::status::ClusterStatus;
use lapdev_db::{ClusterInfoUpdate, Db};

use crate::db_error;
use lapdev_hrpc::tunnel::{TunnelConfig, TunnelRegistry};
use lapdev_hrpc::{Client, Context, HrpcError, IntoRoutes as _};
use lapdev_kube_rpc::{
    HeartbeatReply, KubeClusterRpc, KubeClusterRpcServer, KubeManagerRpcClient, ManagerHealth,
    WorkspaceObservation,
};
use uuid::Uuid;

pub use auth::{ClusterIdentity, TokenVerifier};
pub use owner::{LEASE_LOST, LeaseSource, SUPERSEDED};

/// Settings of a [`KubeClusterServer`].
#[derive(Debug, Clone)]
pub struct KubeClusterServerConfig {
    /// The heartbeat interval managers are told to keep. A cluster is
    /// `disconnected` after three missed intervals.
    pub heartbeat_interval: Duration,
    /// How long a verified token is trusted without asking the database again.
    pub token_cache_ttl: Duration,
    /// How much longer a verified token is still accepted while the database
    /// cannot answer (stale-if-error; see [`auth`]).
    pub token_stale_if_error: Duration,
    /// How often last-seen times are written to the database.
    pub seen_flush_interval: Duration,
    /// Settings of the tunnels managers open.
    pub tunnel: TunnelConfig,
}

impl Default for KubeClusterServerConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            token_cache_ttl: Duration::from_secs(5),
            token_stale_if_error: Duration::from_secs(5 * 60),
            seen_flush_interval: Duration::from_secs(5),
            tunnel: TunnelConfig::default(),
        }
    }
}

/// What the server knows about a cluster's manager, in memory.
#[derive(Debug, Clone)]
struct Presence {
    organization_id: Uuid,
    last_seen: Instant,
    last_seen_at: DateTime<Utc>,
    seen_dirty: bool,
    health: ManagerHealth,
    /// A heartbeat has told the health (not only the default).
    heard_health: bool,
    reported: bool,
    tunnel: bool,
    status: Option<ClusterStatus>,
}

impl Presence {
    fn new(organization_id: Uuid) -> Self {
        Self {
            organization_id,
            last_seen: Instant::now(),
            last_seen_at: Utc::now(),
            seen_dirty: true,
            health: ManagerHealth::Ok,
            heard_health: false,
            reported: false,
            tunnel: false,
            status: None,
        }
    }

    /// The status these facts imply.
    fn derived_status(&self, stale: bool) -> ClusterStatus {
        if stale {
            return ClusterStatus::Disconnected;
        }
        if !(self.reported && self.tunnel) {
            // Connected once and lost its tunnel: disconnected; never yet: pending.
            return match self.status {
                Some(ClusterStatus::Connected | ClusterStatus::Degraded)
                | Some(ClusterStatus::Disconnected) => ClusterStatus::Disconnected,
                _ => ClusterStatus::Pending,
            };
        }
        match self.health {
            ManagerHealth::Ok => ClusterStatus::Connected,
            ManagerHealth::Degraded { .. } => ClusterStatus::Degraded,
        }
    }
}

struct Inner {
    db: Db,
    config: KubeClusterServerConfig,
    verifier: TokenVerifier,
    tunnels: TunnelRegistry<Uuid>,
    // Which token opened each cluster's current tunnel, so revoking that token
    // closes it; the lock that orders registration against revocation.
    tunnel_tokens: tunnels::TunnelBook,
    presence: Mutex<HashMap<Uuid, Presence>>,
    // Set by `drain`: new tunnels are refused so managers dial another replica.
    draining: AtomicBool,
    // Which clusters this replica owns (writes the status of).
    ownership: owner::Ownership,
}

/// The server side of the manager protocol. Cheap to clone.
#[derive(Clone)]
pub struct KubeClusterServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeClusterServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClusterServer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// How many last-seen writes a sweep keeps in flight.
const SEEN_WRITERS: usize = 4;

/// The most workspaces one `report_workspace_snapshot` may carry; a larger one
/// is `invalid_argument`, refused before anything touches the database.
/// Managers send snapshots in chunks of 2,000, so this leaves them room; the
/// HRPC body limit (4 MiB) bounds the bytes independently.
pub const MAX_SNAPSHOT_WORKSPACES: usize = 5_000;

/// Why a draining server closed a tunnel (the manager sees it as the close
/// reason and dials again).
pub const DRAIN_REASON: &str = "server shutting down";

/// A status change the server made, for logs and metrics.
type StatusChange = (Uuid, Uuid, ClusterStatus);

impl KubeClusterServer {
    /// A server on `db` that is the only replica: it writes the status of
    /// every cluster it hears (see [`Self::replicated`] for several).
    pub fn new(db: Db, config: KubeClusterServerConfig) -> Self {
        Self::build(db, config, owner::Ownership::default())
    }

    fn build(db: Db, config: KubeClusterServerConfig, ownership: owner::Ownership) -> Self {
        let verifier = TokenVerifier::new(db.clone(), config.token_cache_ttl)
            .with_stale_if_error(config.token_stale_if_error);
        Self {
            inner: Arc::new(Inner {
                db,
                config,
                verifier,
                tunnels: TunnelRegistry::new(),
                tunnel_tokens: tunnels::TunnelBook::default(),
                presence: Mutex::default(),
                draining: AtomicBool::new(false),
                ownership,
            }),
        }
    }

    /// Drains this server before it stops: from now on a tunnel upgrade is
    /// refused (`503` with `Retry-After`, so the manager dials again and the
    /// load balancer sends it to another replica), and the open tunnels are
    /// closed with [`DRAIN_REASON`], one at a time, spread evenly over
    /// `over`, so their managers do not all redial in the same instant.
    /// Returns how many tunnels were closed.
    pub async fn drain(&self, over: Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner
            .tunnels
            .close_all_staggered(DRAIN_REASON, over)
            .await
    }

    /// The token verifier (the admin API tells it about revocations).
    pub fn verifier(&self) -> &TokenVerifier {
        &self.inner.verifier
    }

    /// The manager routes, to be mounted under `/rpc`: `KubeClusterRpc`'s methods
    /// and `GET /_tunnel`, all behind cluster-token authentication. No fallback,
    /// so they can be merged with other services.
    pub fn routes(&self) -> axum::Router {
        let rpc = KubeClusterRpcServer::new(self.clone()).into_routes();
        let tunnel = axum::Router::new()
            .route("/_tunnel", get(tunnel_upgrade))
            .with_state(self.clone());
        rpc.merge(tunnel)
            .route_layer(axum::middleware::from_fn_with_state(
                self.inner.verifier.clone(),
                auth::require_cluster_token,
            ))
    }

    /// A `KubeManagerRpc` client whose calls travel down the cluster's tunnel, or
    /// `None` when its manager is not connected.
    pub fn manager_client(&self, cluster_id: Uuid) -> Option<KubeManagerRpcClient> {
        let transport = self.inner.tunnels.get(&cluster_id)?;
        let client = Client::new("http://manager.tunnel", transport).ok()?;
        Some(KubeManagerRpcClient::new(client))
    }

    /// The cluster's status as this server last derived it (in memory), if
    /// its manager has called since the server started.
    pub fn cluster_status(&self, cluster_id: Uuid) -> Option<ClusterStatus> {
        lock(&self.inner.presence)
            .get(&cluster_id)
            .and_then(|p| p.status)
    }

    /// The cluster's tunnel now, if its manager holds one (for streams:
    /// `TunnelTransport::send_streaming`).
    pub fn tunnel(&self, cluster_id: Uuid) -> Option<lapdev_hrpc::tunnel::TunnelTransport> {
        self.inner.tunnels.get(&cluster_id)
    }

    /// When the cluster's manager was last heard from (a heartbeat, a report, its
    /// tunnel), as kept in memory; the database gets it from the sweeper.
    pub fn last_heard(&self, cluster_id: Uuid) -> Option<DateTime<Utc>> {
        lock(&self.inner.presence)
            .get(&cluster_id)
            .map(|p| p.last_seen_at)
    }

    /// Whether the cluster's manager holds a tunnel now.
    pub fn is_tunnel_up(&self, cluster_id: Uuid) -> bool {
        self.inner.tunnels.get(&cluster_id).is_some()
    }

    /// Ids of the clusters whose managers hold a tunnel now.
    pub fn connected_clusters(&self) -> Vec<Uuid> {
        self.inner.tunnels.keys()
    }

    /// A token was revoked: it stops working at once and its tunnel closes.
    pub fn token_revoked(&self, token_id: Uuid) {
        self.inner.verifier.forget_token(token_id);
        let tunnels = &self.inner.tunnels;
        self.inner.tunnel_tokens.revoke(token_id, |cluster_id| {
            tunnels.close(&cluster_id, "the cluster token was revoked");
        });
    }

    /// Revocations may have been missed (another replica's notifications were
    /// lost while this one's change listener reconnected): every verified
    /// token is confirmed again before its next use, every cached token and
    /// every tunnel's token is checked against the database now, and the
    /// revoked ones are forgotten and their tunnels closed. While the database
    /// cannot answer, the cached answers stay as the stale-if-error fallback
    /// (see [`auth::TokenVerifier::recheck_all`]). Returns how many tokens were
    /// found revoked.
    pub async fn recheck_tunnel_tokens(&self) -> Result<usize, lapdev_db::DbError> {
        let mut tokens = self.inner.verifier.recheck_all();
        tokens.extend(self.inner.tunnel_tokens.tokens());
        tokens.sort_unstable();
        tokens.dedup();
        let live = self.inner.db.live_cluster_token_ids(&tokens).await?;
        let gone: Vec<Uuid> = tokens.into_iter().filter(|t| !live.contains(t)).collect();
        for token_id in &gone {
            self.token_revoked(*token_id);
        }
        Ok(gone.len())
    }

    /// A cluster was deleted: its tokens stop working and its tunnel closes.
    pub fn cluster_deleted(&self, cluster_id: Uuid) {
        self.inner.verifier.forget_cluster(cluster_id);
        self.inner
            .tunnels
            .close(&cluster_id, "the cluster was deleted");
        lock(&self.inner.presence).remove(&cluster_id);
        self.inner.tunnel_tokens.forget_cluster(cluster_id);
        self.inner.ownership.forget(cluster_id);
    }

    /// Runs the sweeper until `shutdown` resolves: marks silent clusters
    /// `disconnected` and flushes last-seen times. Flushes once more on the way
    /// out.
    pub async fn run_sweeper(&self, shutdown: impl Future<Output = ()>) {
        let period = self
            .inner
            .config
            .seen_flush_interval
            .min(self.inner.config.heartbeat_interval);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {
                    self.sweep().await;
                }
            }
        }
        self.sweep().await;
    }

    /// One sweep: stale clusters become `disconnected`; dirty last-seen times are
    /// written. Returns how many last-seen times were written.
    pub async fn sweep(&self) -> usize {
        self.sweep_at(Instant::now()).await
    }

    /// [`Self::sweep`] as if the time were `now`; tests use it to look into the
    /// future without sleeping.
    pub async fn sweep_at(&self, now: Instant) -> usize {
        let stale_after = self.inner.config.heartbeat_interval * 3;
        // Another replica may have heard what this one did not.
        self.refresh_from_database(now).await;
        let mut changes = Vec::new();
        let mut seen = Vec::new();
        {
            let mut presence = lock(&self.inner.presence);
            for (cluster_id, p) in presence.iter_mut() {
                let stale = now.saturating_duration_since(p.last_seen) > stale_after;
                let status = p.derived_status(stale);
                if p.status != Some(status) && p.status.is_some() {
                    p.status = Some(status);
                    changes.push((*cluster_id, p.organization_id, status));
                }
                if p.seen_dirty {
                    p.seen_dirty = false;
                    seen.push((*cluster_id, p.organization_id, p.last_seen_at));
                }
            }
        }
        for change in changes {
            self.write_status(change).await;
        }
        let written = seen.len();
        // One autocommitted UPDATE per cluster: written one after another, each
        // waits for its commit, and a sweep of 1,000 clusters took seconds on a
        // busy machine. A few lanes overlap the round trips and let PostgreSQL
        // commit several at once, without taking much of the pool.
        let mut lanes: Vec<Vec<(Uuid, Uuid, DateTime<Utc>)>> =
            (0..SEEN_WRITERS.min(written)).map(|_| Vec::new()).collect();
        for (i, entry) in seen.into_iter().enumerate() {
            let n = lanes.len();
            lanes[i % n].push(entry);
        }
        let mut writers = tokio::task::JoinSet::new();
        for lane in lanes {
            let db = self.inner.db.clone();
            writers.spawn(async move {
                for (cluster_id, org_id, at) in lane {
                    if let Err(e) = db.touch_cluster_seen_at(org_id, cluster_id, at).await {
                        tracing::warn!(%cluster_id, error = %e, "could not record last-seen time");
                    }
                }
            });
        }
        while writers.join_next().await.is_some() {}
        written
    }

    /// Updates the in-memory facts of a cluster and returns the status change
    /// they imply, if any (on a replica that does not own the cluster, the
    /// change is written only while no replica owns it, and what it heard is
    /// told to the owner).
    fn update_presence(
        &self,
        identity: ClusterIdentity,
        f: impl FnOnce(&mut Presence),
    ) -> Option<StatusChange> {
        let owner = self.inner.ownership.writes_status(identity.cluster_id);
        let mut presence = lock(&self.inner.presence);
        let p = presence
            .entry(identity.cluster_id)
            .or_insert_with(|| Presence::new(identity.organization_id));
        f(p);
        let heard = (!owner).then(|| owner::Heard {
            reported: p.reported,
            health: p.heard_health.then(|| match &p.health {
                ManagerHealth::Ok => None,
                ManagerHealth::Degraded { reason } => Some(reason.clone()),
            }),
        });
        let status = p.derived_status(false);
        let change = (p.status != Some(status)).then(|| {
            p.status = Some(status);
            (identity.cluster_id, identity.organization_id, status)
        });
        drop(presence);
        if let Some(heard) = heard {
            self.relay_heard(identity.cluster_id, heard);
        }
        change
    }

    async fn seen(&self, identity: ClusterIdentity, health: Option<ManagerHealth>) {
        let change = self.update_presence(identity, |p| {
            p.last_seen = Instant::now();
            p.last_seen_at = Utc::now();
            p.seen_dirty = true;
            if let Some(h) = health {
                p.health = h;
                p.heard_health = true;
            }
        });
        if let Some(change) = change {
            self.write_status(change).await;
        }
    }

    async fn tunnel_opened(&self, identity: ClusterIdentity) {
        let change = self.update_presence(identity, |p| {
            p.tunnel = true;
            p.last_seen = Instant::now();
            p.last_seen_at = Utc::now();
            p.seen_dirty = true;
        });
        if let Some(change) = change {
            self.write_status(change).await;
        }
    }

    async fn tunnel_closed(&self, identity: ClusterIdentity, generation: u64) {
        self.inner
            .tunnel_tokens
            .closed(identity.cluster_id, generation);
        // A newer tunnel of the same cluster may already be registered; only the
        // current one's closing makes the cluster lose its tunnel.
        if self.inner.tunnels.get(&identity.cluster_id).is_some() {
            return;
        }
        let change = self.update_presence(identity, |p| p.tunnel = false);
        if let Some(change) = change {
            self.write_status(change).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn identity(ctx: &Context) -> Result<ClusterIdentity, HrpcError> {
    ctx.extension::<ClusterIdentity>().copied().ok_or_else(|| {
        // Only reachable if the routes were mounted without the auth layer.
        HrpcError::unauthenticated("no cluster identity on this request")
    })
}

async fn tunnel_upgrade(
    State(server): State<KubeClusterServer>,
    axum::Extension(identity): axum::Extension<ClusterIdentity>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if server.inner.draining.load(Ordering::SeqCst) {
        let mut refused =
            HrpcError::unavailable("this server is shutting down; dial again").into_response();
        refused.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return refused;
    }
    let config = server.inner.config.tunnel;
    // `configure_upgrade` chooses version 2 when the manager offers it and
    // version 1 otherwise (managers not yet upgraded); both register alike.
    config
        .configure_upgrade(upgrade)
        .on_upgrade(move |socket| async move {
            let (transport, task) = lapdev_hrpc::tunnel::accept(socket, config);
            let tunnels = &server.inner.tunnels;
            let registered = server.inner.tunnel_tokens.register(identity, || {
                tunnels.insert(identity.cluster_id, transport.clone());
            });
            let generation = match registered {
                Ok(generation) => generation,
                Err(refusal) => {
                    tracing::info!(cluster_id = %identity.cluster_id, reason = refusal.reason(), "manager tunnel refused");
                    transport.close(refusal.reason());
                    let _ = task.run().await;
                    return;
                }
            };
            // Several replicas: this one owns the cluster from here on, or
            // the tunnel closes (the manager dials again).
            let current = || {
                tunnels
                    .get(&identity.cluster_id)
                    .is_some_and(|t| t.same_tunnel(&transport))
            };
            if let Err(reason) = server.claim(identity, current).await {
                tracing::info!(cluster_id = %identity.cluster_id, reason, "manager tunnel not kept");
                transport.close(reason);
                let _ = task.run().await;
                server.tunnel_closed(identity, generation).await;
                return;
            }
            tracing::info!(
                cluster_id = %identity.cluster_id,
                protocol_version = transport.protocol_version(),
                "manager tunnel opened"
            );
            server.tunnel_opened(identity).await;
            let run = task.run();
            tokio::pin!(run);
            // Close at the token's expiry, unless the tunnel ends first.
            let reason = tokio::select! {
                reason = &mut run => reason,
                () = until(identity.expires_at) => {
                    server.inner.tunnel_tokens.expire(identity.cluster_id, generation, || {
                        tunnels.close(&identity.cluster_id, "the cluster token has expired");
                    });
                    run.await
                }
            };
            tracing::info!(cluster_id = %identity.cluster_id, %reason, "manager tunnel closed");
            server.tunnel_closed(identity, generation).await;
        })
        .into_response()
}

/// Resolves at `at` (never, for `None`).
async fn until(at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => {
            let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// The most nodes a report may list (Kubernetes supports 5,000 per cluster).
const MAX_REPORTED_NODES: usize = 20_000;

/// Refuses a per-node report that no real cluster sends: too many nodes, or
/// negative amounts.
fn check_nodes(
    nodes: Option<Vec<lapdev_common::scheduling::NodeCapacity>>,
) -> Result<Option<Vec<lapdev_common::scheduling::NodeCapacity>>, HrpcError> {
    let Some(nodes) = nodes else {
        return Ok(None);
    };
    if nodes.len() > MAX_REPORTED_NODES {
        return Err(HrpcError::invalid_argument(format!(
            "nodes: at most {MAX_REPORTED_NODES} nodes may be reported"
        )));
    }
    for n in &nodes {
        if [
            n.cpu_allocatable_millis,
            n.memory_allocatable_bytes,
            n.cpu_lapdev_millis,
            n.memory_lapdev_bytes,
            n.cpu_other_millis,
            n.memory_other_bytes,
        ]
        .iter()
        .any(|v| *v < 0)
        {
            return Err(HrpcError::invalid_argument(format!(
                "nodes: node {:?} reports a negative amount",
                n.name
            )));
        }
    }
    Ok(Some(nodes))
}

impl KubeClusterRpc for KubeClusterServer {
    async fn report_cluster_info(
        &self,
        ctx: Context,
        info: KubeClusterInfo,
    ) -> Result<(), HrpcError> {
        let identity = identity(&ctx)?;
        let node_count = i32::try_from(info.node_count)
            .map_err(|_| HrpcError::invalid_argument("node_count is out of range"))?;
        let update = ClusterInfoUpdate {
            kubernetes_version: info.kubernetes_version,
            cloud_provider: info.provider,
            region: info.region,
            node_count,
            cpu_capacity_millis: info.cpu_capacity_millis,
            cpu_allocatable_millis: info.cpu_allocatable_millis,
            memory_capacity_bytes: info.memory_capacity_bytes,
            memory_allocatable_bytes: info.memory_allocatable_bytes,
            manager_version: info.manager_version,
            manager_namespace: info.manager_namespace,
            manifest_revision: info.manifest_revision,
            nodes: check_nodes(info.nodes)?,
            detected_autoscaling: info.autoscaling,
        };
        self.inner
            .db
            .update_cluster_info(identity.organization_id, identity.cluster_id, &update)
            .await
            .map_err(db_error)?;
        let change = self.update_presence(identity, |p| {
            p.reported = true;
            p.last_seen = Instant::now();
            p.last_seen_at = Utc::now();
        });
        if let Some(change) = change {
            self.write_status(change).await;
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        ctx: Context,
        health: ManagerHealth,
    ) -> Result<HeartbeatReply, HrpcError> {
        let identity = identity(&ctx)?;
        self.seen(identity, Some(health)).await;
        Ok(HeartbeatReply {
            interval_secs: self.inner.config.heartbeat_interval.as_secs().max(1) as u32,
        })
    }

    async fn report_workspace_status(
        &self,
        ctx: Context,
        status: WorkspaceObservation,
    ) -> Result<(), HrpcError> {
        let identity = identity(&ctx)?;
        self.seen(identity, None).await;
        crate::workspace_reports::record(&self.inner.db, identity, &status)
            .await
            .map_err(db_error)
    }

    async fn report_workspace_snapshot(
        &self,
        ctx: Context,
        workspaces: Vec<WorkspaceObservation>,
    ) -> Result<(), HrpcError> {
        let identity = identity(&ctx)?;
        if workspaces.len() > MAX_SNAPSHOT_WORKSPACES {
            return Err(HrpcError::invalid_argument(format!(
                "a snapshot carries at most {MAX_SNAPSHOT_WORKSPACES} workspaces, got {}; send it in chunks",
                workspaces.len()
            ))
            .with_details(serde_json::json!({
                "field": "workspaces",
                "max_items": MAX_SNAPSHOT_WORKSPACES,
            })));
        }
        self.seen(identity, None).await;
        for status in &workspaces {
            // One stale or unknown workspace must not stop the rest of the snapshot.
            if let Err(e) = crate::workspace_reports::record(&self.inner.db, identity, status).await
            {
                tracing::warn!(workspace_id = %status.workspace_id, error = %e, "ignoring a workspace report");
            }
        }
        Ok(())
    }
}
