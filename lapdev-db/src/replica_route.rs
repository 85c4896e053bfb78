//! Where a cluster's calls go: its owner's internal address, while the owner
//! is live.
//!
//! A cluster's owner (`kube_cluster_owner`, see [`Db::claim_cluster`]) is a
//! route only while its replica holds the lease its claim was made under (the
//! same id and generation, not expired in the database's clock): a replica
//! that lost its lease, or left, is no route. PostgreSQL only.

use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
use uuid::Uuid;

use crate::db::Db;
use crate::error::{DbError, DbResult};

/// A cluster's live owner and where other replicas reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRoute {
    /// The cluster.
    pub cluster_id: Uuid,
    /// The owning replica.
    pub replica_id: Uuid,
    /// Its internal address (`host:port`), as registered.
    pub address: String,
}

const ROUTES: &str = "SELECT o.cluster_id, o.replica_id, r.address FROM kube_cluster_owner o \
     JOIN server_replica r ON r.id = o.replica_id AND r.generation = o.generation \
     WHERE r.lease_expires_at > now()";

impl Db {
    /// Every claimed cluster whose owner is live, with the owner's address.
    pub async fn cluster_routes(&self) -> DbResult<Vec<ClusterRoute>> {
        if !self.supports_replicas() {
            return Err(DbError::PostgresOnly("cluster routes"));
        }
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(DbBackend::Postgres, ROUTES))
            .await?;
        rows.iter().map(route).collect()
    }

    /// The cluster's live owner, if it has one.
    pub async fn cluster_route(&self, cluster_id: Uuid) -> DbResult<Option<ClusterRoute>> {
        if !self.supports_replicas() {
            return Err(DbError::PostgresOnly("cluster routes"));
        }
        let row = self
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!("{ROUTES} AND o.cluster_id = $1"),
                [cluster_id.into()],
            ))
            .await?;
        row.as_ref().map(route).transpose()
    }
}

fn route(row: &sea_orm::QueryResult) -> DbResult<ClusterRoute> {
    Ok(ClusterRoute {
        cluster_id: row.try_get_by_index(0)?,
        replica_id: row.try_get_by_index(1)?,
        address: row.try_get_by_index(2)?,
    })
}
