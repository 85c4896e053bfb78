//! Workspace quotas (`workspace_quota`): the limits an organisation's owners
//! set, what is requested now, and the admission check that runs inside the
//! transaction creating or starting a workspace.
//!
//! # Atomicity
//!
//! [`Db::admit`] locks the organisation's row (`SELECT … FOR UPDATE` on
//! PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds the one write lock),
//! then sums the requests and writes the workspace in the same transaction. So
//! of concurrent creates and starts in one organisation (on any replica) each
//! sees the ones committed before it, and together they never exceed a limit.
//! The rules themselves are pure, in [`lapdev_common::quota`].

use std::collections::HashMap;

use lapdev_common::quota::{QuotaHolder, QuotaLimits, QuotaScope, QuotaUsage, check};
use lapdev_common::status::DesiredState;
use sea_orm::sea_query::{Alias, Expr, Func, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
};
use uuid::Uuid;

use crate::db::{Db, now};
use crate::entities::{kube_workspace, organization, workspace_quota};
use crate::error::{DbError, DbResult, EntityKind};
use crate::util::tz;

/// Every quota of one organisation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgQuotas {
    /// The organisation's total.
    pub organization: QuotaLimits,
    /// The default of every member without their own.
    pub each_member: QuotaLimits,
    /// Members' own limits, by user id.
    pub members: HashMap<Uuid, QuotaLimits>,
}

impl OrgQuotas {
    /// The limits that apply to `user_id`: their own, else the default.
    pub fn member(&self, user_id: Uuid) -> QuotaLimits {
        self.members
            .get(&user_id)
            .copied()
            .unwrap_or(self.each_member)
    }
}

/// What one workspace adds when it is created or started.
pub(crate) fn needs(
    desired: DesiredState,
    cpu_millis: i64,
    memory_bytes: i64,
    storage_bytes: i64,
    new_volume: bool,
) -> QuotaUsage {
    let running = desired == DesiredState::Running;
    QuotaUsage {
        running_workspaces: i64::from(running),
        cpu_millis: if running { cpu_millis } else { 0 },
        memory_bytes: if running { memory_bytes } else { 0 },
        storage_bytes: if new_volume { storage_bytes } else { 0 },
    }
}

impl Db {
    /// Sets (or, with every limit `None`, removes) the quota of `scope`.
    pub async fn set_quota(
        &self,
        org_id: Uuid,
        scope: QuotaScope,
        limits: QuotaLimits,
    ) -> DbResult<()> {
        if let Some(field) = limits.negative_field() {
            return Err(DbError::InvalidInput {
                field,
                reason: "a limit cannot be negative",
            });
        }
        let user_id = match scope {
            QuotaScope::Member(user_id) => {
                self.get_user(org_id, user_id).await?;
                Some(user_id)
            }
            _ => None,
        };
        use workspace_quota::Column as Q;
        let subject = scope.subject();
        if limits.is_unlimited() {
            workspace_quota::Entity::delete_many()
                .filter(Q::OrganizationId.eq(org_id))
                .filter(Q::Subject.eq(subject))
                .exec(&self.conn)
                .await?;
            return Ok(());
        }
        workspace_quota::Entity::insert(workspace_quota::ActiveModel {
            organization_id: Set(org_id),
            subject: Set(subject),
            user_id: Set(user_id),
            max_running_workspaces: Set(limits.running_workspaces),
            max_cpu_millis: Set(limits.cpu_millis),
            max_memory_bytes: Set(limits.memory_bytes),
            max_storage_bytes: Set(limits.storage_bytes),
            updated_at: Set(tz(now())),
        })
        .on_conflict(
            OnConflict::columns([Q::OrganizationId, Q::Subject])
                .update_columns([
                    Q::MaxRunningWorkspaces,
                    Q::MaxCpuMillis,
                    Q::MaxMemoryBytes,
                    Q::MaxStorageBytes,
                    Q::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(&self.conn)
        .await?;
        Ok(())
    }

    /// Every quota of `org_id`.
    pub async fn quotas(&self, org_id: Uuid) -> DbResult<OrgQuotas> {
        read_quotas(&self.conn, org_id).await
    }

    /// What `org_id`'s workspaces request now; with `owner`, only theirs.
    pub async fn quota_usage(&self, org_id: Uuid, owner: Option<Uuid>) -> DbResult<QuotaUsage> {
        usage(&self.conn, org_id, owner).await
    }

    /// What every organisation's running workspaces request (for metrics).
    pub async fn usage_by_organization(&self) -> DbResult<HashMap<Uuid, QuotaUsage>> {
        use kube_workspace::Column as W;
        let rows: Vec<(Uuid, i64, i64, i64)> = kube_workspace::Entity::find()
            .select_only()
            .column(W::OrganizationId)
            .column_as(count(), "running")
            .column_as(sum(W::CpuMillis), "cpu_millis")
            .column_as(sum(W::MemoryBytes), "memory_bytes")
            .filter(W::DeletedAt.is_null())
            .filter(W::DesiredState.eq(DesiredState::Running.as_str()))
            .group_by(W::OrganizationId)
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(org, running, cpu, mem)| {
                (
                    org,
                    QuotaUsage {
                        running_workspaces: running,
                        cpu_millis: cpu,
                        memory_bytes: mem,
                        storage_bytes: 0,
                    },
                )
            })
            .collect())
    }

    /// Locks `org_id` for the rest of `txn` and checks that `needs` on top of
    /// what is requested now fits the organisation's quota and `owner`'s.
    /// Called by the transactions that create and start workspaces.
    pub(crate) async fn admit(
        txn: &impl ConnectionTrait,
        org_id: Uuid,
        owner: Uuid,
        needs: &QuotaUsage,
    ) -> DbResult<()> {
        // Serialises admissions per organisation (a no-op clause on SQLite,
        // whose IMMEDIATE transaction already holds the write lock).
        organization::Entity::find_by_id(org_id)
            .lock_exclusive()
            .one(txn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Organization, org_id))?;
        if *needs == QuotaUsage::default() {
            return Ok(());
        }
        let quotas = read_quotas(txn, org_id).await?;
        let member = quotas.member(owner);
        if !member.is_unlimited() {
            let used = usage(txn, org_id, Some(owner)).await?;
            check(QuotaHolder::Member, &member, &used, needs)?;
        }
        if !quotas.organization.is_unlimited() {
            let used = usage(txn, org_id, None).await?;
            check(
                QuotaHolder::Organization,
                &quotas.organization,
                &used,
                needs,
            )?;
        }
        Ok(())
    }
}

async fn read_quotas(conn: &impl ConnectionTrait, org_id: Uuid) -> DbResult<OrgQuotas> {
    let rows = workspace_quota::Entity::find()
        .filter(workspace_quota::Column::OrganizationId.eq(org_id))
        .all(conn)
        .await?;
    let mut quotas = OrgQuotas::default();
    for row in rows {
        let limits = QuotaLimits {
            running_workspaces: row.max_running_workspaces,
            cpu_millis: row.max_cpu_millis,
            memory_bytes: row.max_memory_bytes,
            storage_bytes: row.max_storage_bytes,
        };
        match QuotaScope::from_subject(&row.subject) {
            Some(QuotaScope::Organization) => quotas.organization = limits,
            Some(QuotaScope::EachMember) => quotas.each_member = limits,
            Some(QuotaScope::Member(id)) => {
                quotas.members.insert(id, limits);
            }
            None => {
                return Err(DbError::CorruptValue {
                    table: "workspace_quota",
                    column: "subject",
                    source: lapdev_common::status::ParseEnumError {
                        type_name: "QuotaScope",
                        value: row.subject,
                    },
                });
            }
        }
    }
    Ok(quotas)
}

fn sum(col: kube_workspace::Column) -> Expr {
    Expr::from(Func::coalesce([
        Expr::from(Func::cast_as(
            Func::sum(Expr::col(col)),
            Alias::new("BIGINT"),
        )),
        Expr::value(0i64),
    ]))
}

fn count() -> Expr {
    Expr::from(Func::cast_as(
        Func::count(Expr::col(kube_workspace::Column::Id)),
        Alias::new("BIGINT"),
    ))
}

/// Requests of live workspaces, grouped by desired state.
async fn usage(
    conn: &impl ConnectionTrait,
    org_id: Uuid,
    owner: Option<Uuid>,
) -> DbResult<QuotaUsage> {
    use kube_workspace::Column as W;
    let mut query = kube_workspace::Entity::find()
        .select_only()
        .column(W::DesiredState)
        .column_as(count(), "workspaces")
        .column_as(sum(W::CpuMillis), "cpu_millis")
        .column_as(sum(W::MemoryBytes), "memory_bytes")
        .column_as(sum(W::StorageBytes), "storage_bytes")
        .filter(W::OrganizationId.eq(org_id))
        .filter(W::DeletedAt.is_null());
    if let Some(owner) = owner {
        query = query.filter(W::OwnerId.eq(owner));
    }
    let rows: Vec<(String, i64, i64, i64, i64)> = query
        .group_by(W::DesiredState)
        .into_tuple()
        .all(conn)
        .await?;
    let mut used = QuotaUsage::default();
    for (desired, workspaces, cpu, mem, storage) in rows {
        used.storage_bytes += storage;
        if desired == DesiredState::Running.as_str() {
            used.running_workspaces += workspaces;
            used.cpu_millis += cpu;
            used.memory_bytes += mem;
        }
    }
    Ok(used)
}
