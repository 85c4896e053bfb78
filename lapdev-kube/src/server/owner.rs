//! Cluster ownership across replicas: the replica holding a cluster's newest
//! tunnel owns its status.
//!
//! On a shared PostgreSQL database (a server built with
//! [`KubeClusterServer::replicated`]) a replica that accepts a manager's
//! tunnel claims the cluster in the database (`Db::claim_cluster`, fenced by
//! the replica's lease) before the tunnel counts, and tells the other replicas
//! ([`ReplicaSignal::ClusterClaimed`]). A replica holding an older tunnel of
//! the cluster (a lower epoch) closes it, so the newest tunnel wins across
//! replicas as it does within one. A claim that the database refuses (the
//! lease is lost) or cannot record closes the new tunnel: the manager dials
//! again, through the load balancer.
//!
//! Only the owner writes the status of a claimed cluster (a cluster no
//! replica ever claimed, whose manager never held a tunnel, is written by
//! whichever replica hears it: `pending` or `disconnected`, never
//! `connected`), and each owner's write is fenced by
//! its claim (`Db::set_cluster_status_as_owner`); a write that finds the claim
//! superseded or the lease lost gives the cluster up and closes the tunnel. A
//! replica that hears the manager without holding its tunnel (heartbeats and
//! reports are separate HTTP requests, load-balanced on their own) writes no
//! status: it records the time in `kube_cluster.last_seen_at` (the sweeper's
//! last-seen flush), and tells the owner what else it heard
//! ([`ReplicaSignal::ManagerHeard`]: reported info, health) when that changed
//! or a new owner claimed. The owner consults `last_seen_at` before it
//! declares a cluster that it has not heard itself `disconnected`.
//!
//! Timestamps compared across replicas are each replica's clock
//! (`last_seen_at` is written as heard); replicas of one deployment are
//! expected to keep their clocks within a small part of a heartbeat interval.
//!
//! A server built with [`KubeClusterServer::new`] (SQLite: one replica) owns
//! every cluster it hears and writes status as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use lapdev_db::{ClusterClaim, DbError, ReplicaLease, ReplicaSignal};
use lapdev_kube_rpc::ManagerHealth;
use uuid::Uuid;

use super::turns::Turns;
use super::{ClusterIdentity, KubeClusterServer, KubeClusterServerConfig, StatusChange, lock};

/// This replica's lease now (`None` while it holds none).
pub type LeaseSource = Arc<dyn Fn() -> Option<ReplicaLease> + Send + Sync>;

/// The close reason of a tunnel superseded by a newer one on another replica.
pub const SUPERSEDED: &str = "a newer tunnel of this cluster opened on another replica";

/// The close reason of a tunnel whose claim was made under a lease this
/// replica lost (it was paused or cut off from the database past its lease).
pub const LEASE_LOST: &str = "this server replica lost its lease; dial again";

/// Which clusters this replica owns, and what it told owners elsewhere.
#[derive(Default)]
pub(super) struct Ownership {
    /// `None`: the only replica (owns everything it hears).
    lease: Option<LeaseSource>,
    clusters: Mutex<HashMap<Uuid, Local>>,
    /// One claim at a time per cluster on this replica, so claims are made in
    /// the order the tunnels registered: a replaced tunnel's claim can never
    /// land after (and outrank) its replacement's.
    claiming: Turns<Uuid>,
    /// One status write at a time per cluster, each writing the status as it
    /// is when its turn comes: two writes racing to the database (a tunnel's
    /// `pending` and the report's `connected` just after) could otherwise
    /// commit in the wrong order and leave the older status stored.
    writing: Turns<Uuid>,
}

#[derive(Debug, Default)]
struct Local {
    /// This replica's claim, while it stands.
    mine: Option<ClusterClaim>,
    /// The highest epoch another replica claimed that this one heard of.
    newest_elsewhere: i64,
    /// What this replica last told the owner it heard (as a non-owner).
    relayed: Option<Heard>,
}

/// What a non-owner heard from a manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Heard {
    pub(super) reported: bool,
    pub(super) health: Option<Option<String>>,
}

impl Ownership {
    pub(super) fn replicated(lease: LeaseSource) -> Self {
        Self {
            lease: Some(lease),
            clusters: Mutex::default(),
            claiming: Turns::default(),
            writing: Turns::default(),
        }
    }

    fn is_replicated(&self) -> bool {
        self.lease.is_some()
    }

    /// Whether this replica writes the cluster's status.
    pub(super) fn writes_status(&self, cluster_id: Uuid) -> bool {
        !self.is_replicated()
            || lock(&self.clusters)
                .get(&cluster_id)
                .is_some_and(|l| l.mine.is_some())
    }

    /// The clusters this replica owns (`None`: all it hears).
    pub(super) fn owned(&self) -> Option<Vec<Uuid>> {
        self.is_replicated().then(|| {
            lock(&self.clusters)
                .iter()
                .filter(|(_, l)| l.mine.is_some())
                .map(|(id, _)| *id)
                .collect()
        })
    }

    fn claim_of(&self, cluster_id: Uuid) -> Option<ClusterClaim> {
        lock(&self.clusters).get(&cluster_id).and_then(|l| l.mine)
    }

    /// Drops this replica's claim if it is still `claim`; true if it was.
    fn give_up(&self, claim: &ClusterClaim) -> bool {
        let mut clusters = lock(&self.clusters);
        match clusters.get_mut(&claim.cluster_id) {
            Some(l) if l.mine == Some(*claim) => {
                l.mine = None;
                true
            }
            _ => false,
        }
    }

    pub(super) fn forget(&self, cluster_id: Uuid) {
        lock(&self.clusters).remove(&cluster_id);
    }

    /// Whether `heard` is news for the owner (and remembers it as told).
    pub(super) fn should_relay(&self, cluster_id: Uuid, heard: &Heard) -> bool {
        if !self.is_replicated() {
            return false;
        }
        let mut clusters = lock(&self.clusters);
        let l = clusters.entry(cluster_id).or_default();
        if l.mine.is_some() || l.relayed.as_ref() == Some(heard) {
            return false;
        }
        l.relayed = Some(heard.clone());
        true
    }
}

impl KubeClusterServer {
    /// A server that is one replica among several on a shared PostgreSQL
    /// database: it owns (writes the status of) only the clusters whose newest
    /// tunnel it holds, claimed under the lease `lease` returns (see the
    /// `owner` module).
    pub fn replicated(
        db: lapdev_db::Db,
        config: KubeClusterServerConfig,
        lease: LeaseSource,
    ) -> Self {
        Self::build(db, config, Ownership::replicated(lease))
    }

    /// This replica's claim on the cluster, if it owns it (always `None` on a
    /// single-replica server).
    pub fn owner_claim(&self, cluster_id: Uuid) -> Option<ClusterClaim> {
        self.inner.ownership.claim_of(cluster_id)
    }

    /// Claims the cluster whose tunnel just registered. `Err` with the close
    /// reason when the tunnel must not stay (the claim was refused, could not
    /// be recorded, or a newer claim elsewhere was already heard of).
    ///
    /// Claims of one cluster on this replica run one at a time, and a tunnel
    /// that `still_current` says was replaced meanwhile claims nothing, so the
    /// newest tunnel always holds the newest epoch.
    pub(super) async fn claim(
        &self,
        identity: ClusterIdentity,
        still_current: impl Fn() -> bool,
    ) -> Result<(), &'static str> {
        let ownership = &self.inner.ownership;
        let Some(source) = &ownership.lease else {
            return Ok(());
        };
        let _turn = ownership.claiming.take(identity.cluster_id).await;
        if still_current() {
            self.claim_in_turn(identity, source).await
        } else {
            Err(lapdev_hrpc::tunnel::REPLACED_REASON)
        }
    }

    async fn claim_in_turn(
        &self,
        identity: ClusterIdentity,
        source: &LeaseSource,
    ) -> Result<(), &'static str> {
        let ownership = &self.inner.ownership;
        let Some(lease) = source() else {
            return Err("this server replica is not registered; dial again");
        };
        let claim = match self
            .inner
            .db
            .claim_cluster(identity.cluster_id, &lease)
            .await
        {
            Ok(claim) => claim,
            Err(DbError::LeaseLost { .. }) => return Err(LEASE_LOST),
            Err(e) => {
                tracing::warn!(cluster_id = %identity.cluster_id, error = %e, "could not claim the cluster");
                return Err("this server replica could not record the tunnel; dial again");
            }
        };
        {
            let mut clusters = lock(&ownership.clusters);
            let l = clusters.entry(identity.cluster_id).or_default();
            if l.newest_elsewhere > claim.epoch {
                return Err(SUPERSEDED);
            }
            l.mine = Some(claim);
            l.relayed = None;
        }
        tracing::info!(cluster_id = %identity.cluster_id, epoch = claim.epoch, "claimed the cluster");
        self.inner
            .db
            .signal_replicas(ReplicaSignal::ClusterClaimed {
                cluster_id: identity.cluster_id,
                replica_id: claim.replica_id,
                epoch: claim.epoch,
            });
        // Reports that reached another replica before this claim are stored.
        if let Ok(cluster) = self
            .inner
            .db
            .get_cluster(identity.organization_id, identity.cluster_id)
            .await
            && cluster.last_reported_at.is_some()
        {
            self.update_presence(identity, |p| p.reported = true);
        }
        Ok(())
    }

    /// Another replica's signal.
    pub async fn apply_signal(&self, signal: ReplicaSignal) {
        match signal {
            ReplicaSignal::ClusterClaimed {
                cluster_id, epoch, ..
            } => self.claimed_elsewhere(cluster_id, epoch),
            ReplicaSignal::ManagerHeard {
                cluster_id,
                reported,
                health,
            } => self.heard_elsewhere(cluster_id, reported, health).await,
        }
    }

    /// Another replica claimed the cluster under `epoch`: an older tunnel here
    /// closes; what this replica relays goes to the new owner afresh.
    fn claimed_elsewhere(&self, cluster_id: Uuid, epoch: i64) {
        let superseded = {
            let mut clusters = lock(&self.inner.ownership.clusters);
            let l = clusters.entry(cluster_id).or_default();
            l.newest_elsewhere = l.newest_elsewhere.max(epoch);
            l.relayed = None;
            match l.mine {
                Some(mine) if mine.epoch < epoch => {
                    l.mine = None;
                    true
                }
                _ => false,
            }
        };
        if superseded {
            self.superseded(cluster_id, SUPERSEDED);
        }
    }

    /// This replica lost the lease of `generation` (the replica keeper found
    /// it expired and registers again under a new one): every claim made
    /// under it is void, since another replica may own those clusters now, so
    /// this replica gives them all up and closes their tunnels at once; the
    /// managers dial again through the load balancer and claim afresh.
    /// Claims made under a newer generation stay. Returns how many tunnels
    /// closed. Without this, a claim would be found void only at its next
    /// status write, one cluster at a time.
    pub fn lease_lost(&self, generation: i64) -> usize {
        let void: Vec<Uuid> = lock(&self.inner.ownership.clusters)
            .iter_mut()
            .filter_map(|(id, l)| match l.mine {
                Some(claim) if claim.generation == generation => {
                    l.mine = None;
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        if !void.is_empty() {
            tracing::warn!(
                clusters = void.len(),
                generation,
                "this replica lost its lease: closing the tunnels it claimed under it"
            );
        }
        for cluster_id in &void {
            self.superseded(*cluster_id, LEASE_LOST);
        }
        void.len()
    }

    /// This replica no longer owns the cluster: it forgets the status it
    /// derived (it writes none from now on) and closes its tunnel with
    /// `reason`.
    fn superseded(&self, cluster_id: Uuid, reason: &str) {
        if let Some(p) = lock(&self.inner.presence).get_mut(&cluster_id) {
            p.status = None;
        }
        tracing::info!(%cluster_id, reason, "this replica gives up the cluster");
        self.inner.tunnels.close(&cluster_id, reason);
    }

    /// A non-owner heard the manager: the owner folds it in.
    async fn heard_elsewhere(
        &self,
        cluster_id: Uuid,
        reported: bool,
        health: Option<Option<String>>,
    ) {
        if self.owner_claim(cluster_id).is_none() {
            return;
        }
        let Some(organization_id) = lock(&self.inner.presence)
            .get(&cluster_id)
            .map(|p| p.organization_id)
        else {
            return;
        };
        let identity = ClusterIdentity {
            cluster_id,
            organization_id,
            token_id: Uuid::nil(),
            expires_at: None,
        };
        let change = self.update_presence(identity, |p| {
            p.reported |= reported;
            p.last_seen = Instant::now();
            if let Some(health) = health {
                p.health = match health {
                    None => ManagerHealth::Ok,
                    Some(reason) => ManagerHealth::Degraded { reason },
                };
            }
        });
        if let Some(change) = change {
            self.write_status(change).await;
        }
    }

    /// Tells the owner what this non-owner heard, when it is news.
    pub(super) fn relay_heard(&self, cluster_id: Uuid, heard: Heard) {
        if self.inner.ownership.should_relay(cluster_id, &heard) {
            self.inner.db.signal_replicas(ReplicaSignal::ManagerHeard {
                cluster_id,
                reported: heard.reported,
                health: heard.health,
            });
        }
    }

    /// Signals may have been missed (the change listener reconnected): checks
    /// every claim of this replica against the database and gives up those
    /// another replica superseded. Returns how many.
    pub async fn recheck_ownership(&self) -> Result<usize, DbError> {
        let Some(owned) = self.inner.ownership.owned() else {
            return Ok(0);
        };
        let mut lost = 0;
        for cluster_id in owned {
            let Some(mine) = self.owner_claim(cluster_id) else {
                continue;
            };
            match self.inner.db.cluster_owner(cluster_id).await? {
                Some(current) if current.epoch > mine.epoch => {
                    self.claimed_elsewhere(cluster_id, current.epoch);
                    lost += 1;
                }
                _ => {}
            }
        }
        Ok(lost)
    }

    /// Writes a status change: on a replicated server only as the cluster's
    /// owner, fenced by the claim.
    ///
    /// Writes of one cluster take turns, and each writes the status derived
    /// now (`status` is what its caller derived, possibly overtaken since), so
    /// the last write to commit is always the newest status.
    pub(super) async fn write_status(&self, (cluster_id, org_id, _derived): StatusChange) {
        let _turn = self.inner.ownership.writing.take(cluster_id).await;
        // `None`: this replica gave the cluster up meanwhile (it writes no
        // status now).
        let Some(status) = lock(&self.inner.presence)
            .get(&cluster_id)
            .and_then(|p| p.status)
        else {
            return;
        };
        let db = &self.inner.db;
        let written = if self.inner.ownership.is_replicated() {
            let Some(claim) = self.owner_claim(cluster_id) else {
                // Written only while no replica owns the cluster.
                match db
                    .set_unowned_cluster_status(org_id, cluster_id, status)
                    .await
                {
                    Ok(true) => {
                        tracing::info!(%cluster_id, status = status.as_str(), "cluster status changed")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(%cluster_id, error = %e, "could not record cluster status")
                    }
                }
                return;
            };
            match db.set_cluster_status_as_owner(org_id, &claim, status).await {
                Ok(true) => Ok(()),
                Ok(false) if self.newer_claim_is_mine(&claim).await => {
                    // A newer tunnel of this cluster, here, claimed it and has
                    // not recorded its claim yet: it writes the status next.
                    return;
                }
                Ok(false) => {
                    if self.inner.ownership.give_up(&claim) {
                        self.superseded(cluster_id, SUPERSEDED);
                    }
                    return;
                }
                Err(DbError::LeaseLost { .. }) => {
                    if self.inner.ownership.give_up(&claim) {
                        self.superseded(cluster_id, LEASE_LOST);
                    }
                    return;
                }
                Err(e) => Err(e),
            }
        } else {
            db.set_cluster_status(org_id, cluster_id, status).await
        };
        match written {
            Ok(()) => {
                tracing::info!(%cluster_id, status = status.as_str(), "cluster status changed")
            }
            Err(e) => tracing::warn!(%cluster_id, error = %e, "could not record cluster status"),
        }
    }

    /// Whether the claim that outranks `claim` in the database is this
    /// replica's own (same lease generation): a newer tunnel here claimed the
    /// cluster between `claim` being read and its status write.
    async fn newer_claim_is_mine(&self, claim: &ClusterClaim) -> bool {
        match self.inner.db.cluster_owner(claim.cluster_id).await {
            Ok(Some(owner)) => {
                owner.epoch > claim.epoch
                    && owner.replica_id == claim.replica_id
                    && owner.generation == claim.generation
            }
            _ => false,
        }
    }

    /// Before the sweep declares owned clusters it has not heard itself
    /// stale: takes the newer time another replica recorded for them.
    pub(super) async fn refresh_from_database(&self, now: Instant) {
        let stale_after = self.inner.config.heartbeat_interval * 3;
        let Some(owned) = self.inner.ownership.owned() else {
            return;
        };
        let candidates: Vec<Uuid> = {
            let presence = lock(&self.inner.presence);
            owned
                .into_iter()
                .filter(|id| {
                    presence
                        .get(id)
                        .is_some_and(|p| now.saturating_duration_since(p.last_seen) > stale_after)
                })
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let seen = match self.inner.db.clusters_last_seen(&candidates).await {
            Ok(seen) => seen,
            Err(e) => {
                // Not heard here and not readable: the sweep goes by what
                // this replica heard.
                tracing::warn!(error = %e, "could not read when other replicas heard clusters");
                return;
            }
        };
        let utc_now = Utc::now()
            + chrono::Duration::from_std(now.saturating_duration_since(Instant::now()))
                .unwrap_or_default();
        let mut presence = lock(&self.inner.presence);
        for (cluster_id, at) in seen {
            let Ok(age) = (utc_now - at).to_std() else {
                // Recorded "in the future" by a replica whose clock is ahead:
                // heard just now.
                if let Some(p) = presence.get_mut(&cluster_id) {
                    p.last_seen = now;
                }
                continue;
            };
            if let Some(p) = presence.get_mut(&cluster_id)
                && age < now.saturating_duration_since(p.last_seen)
                && let Some(heard) = now.checked_sub(age)
            {
                p.last_seen = heard;
            }
        }
    }
}
