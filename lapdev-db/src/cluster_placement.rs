//! A cluster's placement settings (capacity mode, scheduling settings, declared
//! autoscaling) and its per-node capacity report, stored as JSON columns of
//! `kube_cluster` so any server replica can place from them.

use std::collections::HashMap;

use lapdev_common::scheduling::{Autoscaling, SchedulingSettings};
use lapdev_common::status::{CapacityMode, WorkspaceStatus};
use sea_orm::sea_query::{Alias, Expr, Func};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use crate::cluster::ResourceRequests;
use crate::db::{Db, now};
use crate::entities::{kube_cluster, kube_workspace};
use crate::error::{DbError, DbResult};
use crate::util::tz;

/// What the admin decides about where a cluster's workspaces go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementSettings {
    /// What the nodes' free room counts (the manifest follows it).
    pub capacity_mode: CapacityMode,
    /// Node selector, tolerations, architecture, pull secrets, priority class.
    pub scheduling: SchedulingSettings,
    /// The largest node the cluster's autoscaler can add, when declared.
    pub autoscaling: Option<Autoscaling>,
}

/// Workspace statuses whose pod may not be bound to a node yet: placement
/// charges them itself, because the manager's node report does not show them.
const UNBOUND_STATUSES: [WorkspaceStatus; 3] = [
    WorkspaceStatus::Pending,
    WorkspaceStatus::Scheduling,
    WorkspaceStatus::Creating,
];

pub(crate) fn to_json<T: serde::Serialize>(
    column: &'static str,
    value: &T,
) -> DbResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|source| DbError::CorruptJson {
        table: "kube_cluster",
        column,
        source,
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    column: &'static str,
    value: Option<serde_json::Value>,
) -> DbResult<Option<T>> {
    value
        .filter(|v| !v.is_null())
        .map(|v| {
            serde_json::from_value(v).map_err(|source| DbError::CorruptJson {
                table: "kube_cluster",
                column,
                source,
            })
        })
        .transpose()
}

/// The scheduling column's value: `NULL` for no settings.
pub(crate) fn scheduling_json(s: &SchedulingSettings) -> DbResult<Option<serde_json::Value>> {
    if *s == SchedulingSettings::default() {
        Ok(None)
    } else {
        to_json("scheduling", s).map(Some)
    }
}

impl Db {
    /// Sets a cluster's placement settings; the scheduling settings are
    /// validated first (`InvalidArgument`).
    pub async fn set_cluster_placement(
        &self,
        org_id: Uuid,
        id: Uuid,
        settings: &PlacementSettings,
    ) -> DbResult<()> {
        settings
            .scheduling
            .validate()
            .map_err(|_| DbError::InvalidInput {
                field: "scheduling",
                reason: "is not valid (check it with SchedulingSettings::validate)",
            })?;
        use kube_cluster::Column as C;
        let autoscaling = settings
            .autoscaling
            .as_ref()
            .map(|a| to_json("autoscaling", a))
            .transpose()?;
        let result = kube_cluster::Entity::update_many()
            .col_expr(
                C::CapacityMode,
                Expr::value(settings.capacity_mode.as_str()),
            )
            .col_expr(
                C::Scheduling,
                Expr::value(scheduling_json(&settings.scheduling)?),
            )
            .col_expr(C::Autoscaling, Expr::value(autoscaling))
            .col_expr(C::UpdatedAt, Expr::value(tz(now())))
            .filter(C::Id.eq(id))
            .filter(C::OrganizationId.eq(org_id))
            .filter(C::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        if result.rows_affected == 0 {
            return Err(DbError::not_found(crate::error::EntityKind::Cluster, id));
        }
        self.changes
            .publish(crate::changes::Change::ClusterChanged {
                organization_id: org_id,
                cluster_id: id,
            });
        Ok(())
    }

    /// The summed requests of `org_id`'s workspaces placed but possibly not yet
    /// bound to a node (`pending`, `scheduling`, `creating`), per cluster.
    pub async fn cluster_unbound_requests(
        &self,
        org_id: Uuid,
    ) -> DbResult<HashMap<Uuid, ResourceRequests>> {
        use kube_workspace::Column as W;
        let sum = |col: W| {
            Expr::from(Func::cast_as(
                Func::sum(Expr::col(col)),
                Alias::new("BIGINT"),
            ))
        };
        let rows: Vec<(Uuid, i64, i64, i64)> = kube_workspace::Entity::find()
            .select_only()
            .column(W::ClusterId)
            .column_as(sum(W::CpuMillis), "cpu_millis")
            .column_as(sum(W::MemoryBytes), "memory_bytes")
            .column_as(
                Expr::from(Func::cast_as(
                    Func::count(Expr::col(W::Id)),
                    Alias::new("BIGINT"),
                )),
                "workspaces",
            )
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::DeletedAt.is_null())
            .filter(W::ClusterId.is_not_null())
            .filter(W::Status.is_in(UNBOUND_STATUSES.map(WorkspaceStatus::as_str)))
            .group_by(W::ClusterId)
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(cluster_id, cpu_millis, memory_bytes, workspaces)| {
                (
                    cluster_id,
                    ResourceRequests {
                        cpu_millis,
                        memory_bytes,
                        storage_bytes: 0,
                        workspaces,
                    },
                )
            })
            .collect())
    }
}

/// Takes the organisation's placement lock for the rest of `txn` (PostgreSQL:
/// a transaction-scoped advisory lock keyed by the organisation, released at
/// commit or rollback; SQLite: nothing, its write transaction is exclusive
/// already).
pub(crate) async fn lock_org_placement(
    txn: &sea_orm::DatabaseTransaction,
    org_id: Uuid,
) -> DbResult<()> {
    use sea_orm::ConnectionTrait as _;
    if txn.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock(hashtext('lapdev.placement'), hashtext($1))",
        [org_id.to_string().into()],
    ))
    .await?;
    Ok(())
}

/// Refuses with [`DbError::NoLongerFits`] when `workspace` does not fit
/// `cluster`'s allocatable CPU and memory beside the requests already placed
/// there (read in `txn`, under the placement lock). Autoscaling clusters pass.
pub(crate) async fn check_still_fits(
    txn: &sea_orm::DatabaseTransaction,
    cluster: kube_cluster::Model,
    workspace: &crate::Workspace,
) -> DbResult<()> {
    use kube_workspace::Column as W;
    let cluster = crate::cluster::cluster_from_model(cluster)?;
    if cluster.autoscaling().is_some() {
        return Ok(());
    }
    let sum = |col: W| {
        Expr::from(Func::coalesce([
            Expr::from(Func::cast_as(
                Func::sum(Expr::col(col)),
                Alias::new("BIGINT"),
            )),
            Expr::val(0i64),
        ]))
    };
    let (cpu, memory): (i64, i64) = kube_workspace::Entity::find()
        .select_only()
        .column_as(sum(W::CpuMillis), "cpu_millis")
        .column_as(sum(W::MemoryBytes), "memory_bytes")
        .filter(W::ClusterId.eq(cluster.id))
        .filter(W::Id.ne(workspace.id))
        .filter(W::DeletedAt.is_null())
        .filter(W::Status.is_in(crate::cluster::COUNTED_STATUSES.map(WorkspaceStatus::as_str)))
        .into_tuple()
        .one(txn)
        .await?
        .unwrap_or((0, 0));
    let fits = cpu.saturating_add(workspace.cpu_millis) <= cluster.cpu_allocatable_millis
        && memory.saturating_add(workspace.memory_bytes) <= cluster.memory_allocatable_bytes;
    if fits {
        Ok(())
    } else {
        Err(DbError::NoLongerFits {
            cluster_id: cluster.id,
        })
    }
}
