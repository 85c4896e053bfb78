//! Which replica owns a cluster: the one holding its manager's newest tunnel.
//!
//! A replica that accepts a manager's tunnel claims the cluster
//! ([`Db::claim_cluster`]): in one transaction it checks its own lease
//! ([`Db::check_replica_lease`]) and records itself in `kube_cluster_owner`
//! under a new `epoch` (the previous epoch + 1), so a replica that lost its
//! lease cannot claim, and the newest claim is the one with the highest
//! epoch. Only the owner writes the cluster's status
//! ([`Db::set_cluster_status_as_owner`], fenced by the claim in the same
//! transaction), so heartbeats that a load balancer sends to another replica
//! cannot make the status flap; those replicas record the time they heard the
//! manager in `kube_cluster.last_seen_at`, which the owner reads
//! ([`Db::clusters_last_seen`]) before it declares the cluster
//! `disconnected`.
//!
//! PostgreSQL only ([`DbError::PostgresOnly`] on SQLite, which serves one
//! replica: there the single server writes status as before).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lapdev_common::status::ClusterStatus;
use sea_orm::{ConnectionTrait as _, DbBackend, Statement, TransactionTrait as _};
use uuid::Uuid;

use crate::db::Db;
use crate::error::{DbError, DbResult};
use crate::replica::ReplicaLease;

/// A replica's claim on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterClaim {
    /// The cluster.
    pub cluster_id: Uuid,
    /// The claiming replica.
    pub replica_id: Uuid,
    /// The replica's generation when it claimed; the claim is void once the
    /// replica's lease under it is lost.
    pub generation: i64,
    /// Bumped by every claim of the cluster: the highest is the newest tunnel.
    pub epoch: i64,
}

impl ClusterClaim {
    fn lease(&self) -> ReplicaLease {
        ReplicaLease {
            id: self.replica_id,
            generation: self.generation,
            // Not read by the check: it compares with the stored lease.
            expires_at: DateTime::<Utc>::MIN_UTC,
        }
    }
}

impl Db {
    /// Claims `cluster_id` for the replica holding `lease` (its manager's tunnel
    /// just opened there), under the next epoch. [`DbError::LeaseLost`] when
    /// the lease is no longer held; [`DbError::NotFound`] when the cluster does
    /// not exist (or is deleted).
    pub async fn claim_cluster(
        &self,
        cluster_id: Uuid,
        lease: &ReplicaLease,
    ) -> DbResult<ClusterClaim> {
        self.require_replicas("cluster ownership")?;
        let txn = self.conn.begin().await?;
        Self::check_replica_lease(&txn, lease).await?;
        let live = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM kube_cluster WHERE id = $1 AND deleted_at IS NULL",
                [cluster_id.into()],
            ))
            .await?;
        if live.is_none() {
            return Err(DbError::not_found(crate::EntityKind::Cluster, cluster_id));
        }
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO kube_cluster_owner \
                   (cluster_id, replica_id, generation, epoch, claimed_at) \
                 VALUES ($1, $2, $3, 1, now()) \
                 ON CONFLICT (cluster_id) DO UPDATE SET \
                   replica_id = EXCLUDED.replica_id, generation = EXCLUDED.generation, \
                   epoch = kube_cluster_owner.epoch + 1, claimed_at = EXCLUDED.claimed_at \
                 RETURNING epoch",
                [cluster_id.into(), lease.id.into(), lease.generation.into()],
            ))
            .await?
            .ok_or_else(|| DbError::Query(sea_orm::DbErr::RecordNotInserted))?;
        let epoch: i64 = row.try_get_by_index(0)?;
        txn.commit().await?;
        Ok(ClusterClaim {
            cluster_id,
            replica_id: lease.id,
            generation: lease.generation,
            epoch,
        })
    }

    /// The cluster's current owner, if any replica ever claimed it.
    pub async fn cluster_owner(&self, cluster_id: Uuid) -> DbResult<Option<ClusterClaim>> {
        self.require_replicas("cluster ownership")?;
        let row = self
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT replica_id, generation, epoch FROM kube_cluster_owner \
                 WHERE cluster_id = $1",
                [cluster_id.into()],
            ))
            .await?;
        row.map(|row| {
            Ok(ClusterClaim {
                cluster_id,
                replica_id: row.try_get_by_index(0)?,
                generation: row.try_get_by_index(1)?,
                epoch: row.try_get_by_index(2)?,
            })
        })
        .transpose()
    }

    /// Writes the cluster's status as its owner: only while `claim` is still
    /// the cluster's newest claim and its replica's lease is held, checked in
    /// the same transaction (the claim's row is locked, so a newer claim
    /// waits for this write or this write sees it). `Ok(false)` when the
    /// claim was superseded; [`DbError::LeaseLost`] when the lease is gone;
    /// [`DbError::NotFound`] for a missing or deleted cluster. Publishes
    /// [`Change::ClusterChanged`](crate::Change) like
    /// [`set_cluster_status`](Self::set_cluster_status).
    pub async fn set_cluster_status_as_owner(
        &self,
        org_id: Uuid,
        claim: &ClusterClaim,
        status: ClusterStatus,
    ) -> DbResult<bool> {
        self.require_replicas("cluster ownership")?;
        let txn = self.conn.begin().await?;
        Self::check_replica_lease(&txn, &claim.lease()).await?;
        let current = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM kube_cluster_owner \
                 WHERE cluster_id = $1 AND replica_id = $2 AND epoch = $3 FOR SHARE",
                [
                    claim.cluster_id.into(),
                    claim.replica_id.into(),
                    claim.epoch.into(),
                ],
            ))
            .await?;
        if current.is_none() {
            return Ok(false);
        }
        // As `set_cluster_status`: `connected` also stamps when it connected
        // and when it was last heard.
        let updated = txn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE kube_cluster SET status = $3, updated_at = now(), \
                   connected_at = CASE WHEN $4 THEN now() ELSE connected_at END, \
                   last_seen_at = CASE WHEN $4 THEN now() ELSE last_seen_at END \
                 WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL",
                [
                    claim.cluster_id.into(),
                    org_id.into(),
                    status.as_str().into(),
                    (status == ClusterStatus::Connected).into(),
                ],
            ))
            .await?;
        if updated.rows_affected() == 0 {
            return Err(DbError::not_found(
                crate::EntityKind::Cluster,
                claim.cluster_id,
            ));
        }
        txn.commit().await?;
        self.changes.publish(crate::Change::ClusterChanged {
            organization_id: org_id,
            cluster_id: claim.cluster_id,
        });
        Ok(true)
    }

    /// Writes the status of a cluster no replica ever claimed (its manager
    /// never held a tunnel: `pending` or `disconnected`), as any replica that
    /// hears it may. `Ok(false)` when a replica owns it (only the owner
    /// writes then) or it does not exist. Publishes
    /// [`Change::ClusterChanged`](crate::Change) when written.
    pub async fn set_unowned_cluster_status(
        &self,
        org_id: Uuid,
        cluster_id: Uuid,
        status: ClusterStatus,
    ) -> DbResult<bool> {
        self.require_replicas("cluster ownership")?;
        let updated = self
            .conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE kube_cluster SET status = $3, updated_at = now() \
                 WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM kube_cluster_owner WHERE cluster_id = $1)",
                [cluster_id.into(), org_id.into(), status.as_str().into()],
            ))
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        self.changes.publish(crate::Change::ClusterChanged {
            organization_id: org_id,
            cluster_id,
        });
        Ok(true)
    }

    /// When each of `cluster_ids` was last heard from, as any replica recorded
    /// it (`kube_cluster.last_seen_at`); clusters never heard are absent.
    pub async fn clusters_last_seen(
        &self,
        cluster_ids: &[Uuid],
    ) -> DbResult<HashMap<Uuid, DateTime<Utc>>> {
        self.require_replicas("cluster ownership")?;
        if cluster_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let placeholders: Vec<String> = (1..=cluster_ids.len()).map(|i| format!("${i}")).collect();
        let rows = self
            .conn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT id, last_seen_at FROM kube_cluster \
                     WHERE id IN ({}) AND last_seen_at IS NOT NULL",
                    placeholders.join(", ")
                ),
                cluster_ids.iter().map(|id| (*id).into()),
            ))
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
            .collect()
    }

    fn require_replicas(&self, what: &'static str) -> DbResult<()> {
        if self.supports_replicas() {
            Ok(())
        } else {
            Err(DbError::PostgresOnly(what))
        }
    }
}
