//! The home-volume grace period: a deleted workspace's volume is kept for the
//! organisation's retention window (`workspace_policy.volume_retention_secs`,
//! default [`DEFAULT_VOLUME_RETENTION_SECS`]), and the workspace can be
//! brought back, stopped, until then.
//!
//! The state lives beside the timers in `workspace_timer`:
//! `volume_retained_until` is set in the transaction that soft-deletes the row
//! ([`Db::delete_workspace_keeping_volume`]), cleared by a restore
//! ([`Db::restore_workspace`]), and once it has passed the conductor deletes
//! the volume and records `volume_deleted_at` ([`Db::due_volume_purges`],
//! [`Db::mark_volume_purged`]). A restore is allowed only before
//! `volume_retained_until` and a purge only after it, so the two never meet.
//!
//! # Names
//!
//! A deleted workspace frees its name at once, as it always did (Coder and
//! Gitpod users expect to delete `api` and create a fresh `api` right away;
//! a name held for a week by a workspace they threw away would surprise them
//! more than a restore that asks for another name). So a restore finds the
//! name taken when a new workspace took it meanwhile: it is then refused
//! with [`RestoreRefusal::NameTaken`], and `restore NAME --as OTHER` brings
//! the old one back under another name.

use chrono::{DateTime, SubsecRound, Utc};
use lapdev_common::status::{DesiredState, WorkspaceStatus};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::db::{Db, now};
use crate::entities::{kube_cluster, kube_workspace, workspace_timer};
use crate::error::{DbError, DbResult, EntityKind, unique_violation};
use crate::timers::{DEFAULT_VOLUME_RETENTION_SECS, none_at, plus, read_policy, read_timer};
use crate::util::{check_named, tz, utc};
use crate::workspace::{Workspace, workspace_from_model};
use crate::{quota, timers};

/// Why `workspace restore` refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreRefusal {
    /// A live workspace holds the name (created after this one was deleted).
    NameTaken,
    /// Its volume was not kept: it was deleted before it ever had one, or
    /// forgotten with `--force` (its cluster was unreachable).
    VolumeNotKept,
    /// The retention window has ended; `deleted_at` is when the volume was
    /// deleted (`None`: it is being deleted now).
    WindowEnded {
        /// The end of the window.
        retained_until: DateTime<Utc>,
        /// When the volume was deleted.
        deleted_at: Option<DateTime<Utc>>,
    },
    /// Its cluster was deleted from Lapdev; the volume, if still there, is the
    /// cluster owner's.
    ClusterDeleted {
        /// The cluster's name.
        cluster: String,
    },
}

impl std::fmt::Display for RestoreRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreRefusal::NameTaken => f.write_str(
                "a live workspace has that name now; restore it under another name with --as NEW_NAME",
            ),
            RestoreRefusal::VolumeNotKept => f.write_str(
                "its home volume was not kept (it never had one, or it was force-deleted while its cluster was unreachable)",
            ),
            RestoreRefusal::WindowEnded {
                retained_until,
                deleted_at: Some(at),
            } => write!(
                f,
                "its retention window ended at {}; its home volume was deleted at {}",
                lapdev_common::time::at(*retained_until),
                lapdev_common::time::at(*at)
            ),
            RestoreRefusal::WindowEnded {
                retained_until,
                deleted_at: None,
            } => write!(
                f,
                "its retention window ended at {}; its home volume is being deleted",
                lapdev_common::time::at(*retained_until)
            ),
            RestoreRefusal::ClusterDeleted { cluster } => write!(
                f,
                "its cluster {cluster:?} was deleted from Lapdev; a volume left there is the cluster owner's"
            ),
        }
    }
}

/// A kept volume whose retention window has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueVolumePurge {
    /// The deleted workspace.
    pub workspace_id: Uuid,
    /// Its organisation.
    pub organization_id: Uuid,
    /// The cluster the volume is on (`None`: never placed; nothing to delete).
    pub cluster_id: Option<Uuid>,
    /// The end of the window as read (the purge is recorded only while it is
    /// unchanged).
    pub retained_until: DateTime<Utc>,
}

/// Records, inside the caller's transaction, that `workspace_id`'s volume is
/// kept until `until`.
pub(crate) async fn keep_volume(
    txn: &impl ConnectionTrait,
    org_id: Uuid,
    workspace_id: Uuid,
    until: DateTime<Utc>,
) -> DbResult<()> {
    use workspace_timer::Column as T;
    workspace_timer::Entity::insert(workspace_timer::ActiveModel {
        workspace_id: Set(workspace_id),
        organization_id: Set(org_id),
        idle_timeout_secs: Set(None),
        last_active_at: Set(None),
        idle_deadline: Set(None),
        lifetime_deadline: Set(None),
        stop_reason: Set(None),
        stopped_at: Set(None),
        volume_retained_until: Set(Some(tz(until.trunc_subsecs(6)))),
        volume_deleted_at: Set(None),
        lifetime_notice_at: Set(None),
        lifetime_noticed_at: Set(None),
    })
    .on_conflict(
        OnConflict::column(T::WorkspaceId)
            .update_columns([T::VolumeRetainedUntil, T::VolumeDeletedAt])
            .to_owned(),
    )
    .exec(txn)
    .await?;
    Ok(())
}

/// Inside the transaction that deletes `cluster_id`: the volumes kept there
/// are left to the cluster's owner (no manager will be reachable to delete
/// them); their rows say so, and the purge never looks for them.
pub(crate) async fn abandon_volumes(
    txn: &impl ConnectionTrait,
    cluster_id: Uuid,
    cluster_name: &str,
) -> DbResult<u64> {
    use kube_workspace::Column as W;
    use workspace_timer::Column as T;
    let deleted: Vec<Uuid> = kube_workspace::Entity::find()
        .select_only()
        .column(W::Id)
        .filter(W::ClusterId.eq(cluster_id))
        .filter(W::DeletedAt.is_not_null())
        .into_tuple()
        .all(txn)
        .await?;
    let mut left = 0;
    for chunk in deleted.chunks(1000) {
        let kept: Vec<Uuid> = workspace_timer::Entity::find()
            .select_only()
            .column(T::WorkspaceId)
            .filter(T::WorkspaceId.is_in(chunk.iter().copied()))
            .filter(T::VolumeRetainedUntil.is_not_null())
            .filter(T::VolumeDeletedAt.is_null())
            .into_tuple()
            .all(txn)
            .await?;
        if kept.is_empty() {
            continue;
        }
        left += kept.len() as u64;
        workspace_timer::Entity::update_many()
            .col_expr(T::VolumeRetainedUntil, Expr::value(none_at()))
            .filter(T::WorkspaceId.is_in(kept.iter().copied()))
            .exec(txn)
            .await?;
        kube_workspace::Entity::update_many()
            .col_expr(
                W::StatusMessage,
                Expr::value(Some(format!(
                    "its kept home volume was left on cluster {cluster_name:?}, deleted from Lapdev; \
                     deleting it is up to the cluster's owner"
                ))),
            )
            .filter(W::Id.is_in(kept))
            .exec(txn)
            .await?;
    }
    Ok(left)
}

impl Db {
    /// How long `org_id` keeps a deleted workspace's home volume, in seconds.
    pub async fn volume_retention_secs(&self, org_id: Uuid) -> DbResult<i64> {
        Ok(read_policy(&self.conn, org_id)
            .await?
            .volume_retention_secs
            .unwrap_or(DEFAULT_VOLUME_RETENTION_SECS))
    }

    /// Soft-deletes the workspace like [`Db::delete_workspace`] (its pod is
    /// gone, its name is free) and records in the same transaction that its
    /// home volume is kept until `at` plus the organisation's retention.
    /// Returns the end of the window.
    pub async fn delete_workspace_keeping_volume(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        at: DateTime<Utc>,
    ) -> DbResult<DateTime<Utc>> {
        let retention = self.volume_retention_secs(org_id).await?;
        let until = plus(at.trunc_subsecs(6), Some(retention)).unwrap_or(at);
        self.soft_delete(org_id, id, expected_version, Some(until))
            .await?;
        Ok(until)
    }

    /// The most recently deleted workspace of `org_id` named `name` (live
    /// ones are not looked at).
    pub async fn find_deleted_workspace_by_name(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> DbResult<Workspace> {
        use kube_workspace::Column as W;
        kube_workspace::Entity::find()
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Name.eq(name))
            .filter(W::DeletedAt.is_not_null())
            .order_by_desc(W::DeletedAt)
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Workspace, name))
            .and_then(workspace_from_model)
    }

    /// `lapdev workspace restore`: brings the deleted workspace `id` back,
    /// stopped, with the volume it kept (start it to run it on that volume),
    /// named `new_name` or its old name. Refused with
    /// [`DbError::NotRestorable`] when its volume is not kept or its window
    /// ended at or before `at`, or when a live workspace holds the name; the
    /// quotas admit its storage again. One transaction.
    pub async fn restore_workspace(
        &self,
        org_id: Uuid,
        id: Uuid,
        new_name: Option<&str>,
        at: DateTime<Utc>,
    ) -> DbResult<Workspace> {
        use kube_workspace::Column as W;
        let txn = self.begin_write().await?;
        let ws = kube_workspace::Entity::find_by_id(id)
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::DeletedAt.is_not_null())
            .one(&txn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Workspace, id))
            .and_then(workspace_from_model)?;
        let refuse = |why| DbError::NotRestorable {
            name: ws.name.clone(),
            why,
        };
        if let Some(cluster) = ws.cluster_id {
            let c = kube_cluster::Entity::find_by_id(cluster).one(&txn).await?;
            if let Some(c) = c.filter(|c| c.deleted_at.is_some()) {
                return Err(refuse(RestoreRefusal::ClusterDeleted { cluster: c.name }));
            }
        }
        let timer = read_timer(&txn, id).await?;
        let kept = timer.as_ref().and_then(|t| t.volume_retained_until);
        let purged = timer.as_ref().and_then(|t| t.volume_deleted_at);
        match (kept.map(utc), purged.map(utc)) {
            _ if ws.forgotten_at.is_some() || ws.cluster_id.is_none() => {
                return Err(refuse(RestoreRefusal::VolumeNotKept));
            }
            (Some(until), None) if until > at => {}
            (Some(until), deleted_at) => {
                return Err(refuse(RestoreRefusal::WindowEnded {
                    retained_until: until,
                    deleted_at,
                }));
            }
            (None, _) => return Err(refuse(RestoreRefusal::VolumeNotKept)),
        }
        let name = new_name.unwrap_or(&ws.name).to_owned();
        check_named(lapdev_common::name::NameKind::Workspace, &name)?;
        let taken = kube_workspace::Entity::find()
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Name.eq(name.as_str()))
            .filter(W::DeletedAt.is_null())
            .one(&txn)
            .await?
            .is_some();
        if taken {
            return Err(refuse(RestoreRefusal::NameTaken));
        }
        let needs = quota::needs(
            DesiredState::Stopped,
            ws.cpu_millis,
            ws.memory_bytes,
            ws.storage_bytes,
            true,
        );
        Db::admit(&txn, org_id, ws.owner_id, &needs).await?;
        let stamp = tz(now());
        let message = format!(
            "restored with its kept home volume; start it with `lapdev workspace start {name}`"
        );
        let result = kube_workspace::Entity::update_many()
            .col_expr(W::Name, Expr::value(name.as_str()))
            .col_expr(W::DeletedAt, Expr::value(none_at()))
            .col_expr(W::Status, Expr::value(WorkspaceStatus::Stopped.as_str()))
            .col_expr(W::DesiredState, Expr::value(DesiredState::Stopped.as_str()))
            .col_expr(W::StatusReason, Expr::value(Option::<String>::None))
            .col_expr(W::StatusMessage, Expr::value(Some(message)))
            .col_expr(W::RepairAttempts, Expr::value(0))
            .col_expr(W::NextAttemptAt, Expr::value(none_at()))
            .col_expr(W::UpdatedAt, Expr::value(stamp))
            .col_expr(W::Version, Expr::col(W::Version).add(1))
            .filter(W::Id.eq(id))
            .filter(W::Version.eq(ws.version))
            .filter(W::DeletedAt.is_not_null())
            .exec(&txn)
            .await
            // Taken by a create that committed after the check above.
            .map_err(
                |e| match unique_violation(EntityKind::Workspace, &name)(e) {
                    DbError::AlreadyExists { .. } => refuse(RestoreRefusal::NameTaken),
                    other => other,
                },
            )?;
        if result.rows_affected == 0 {
            return Err(DbError::Conflict {
                entity: EntityKind::Workspace,
                id,
                expected_version: ws.version,
            });
        }
        use workspace_timer::Column as T;
        workspace_timer::Entity::update_many()
            .col_expr(T::VolumeRetainedUntil, Expr::value(none_at()))
            .filter(T::WorkspaceId.eq(id))
            .exec(&txn)
            .await?;
        timers::disarm(&txn, id).await?;
        txn.commit().await?;
        let restored = self.get_workspace(org_id, id).await?;
        self.publish_workspace(Some(WorkspaceStatus::Deleted), &restored, false);
        Ok(restored)
    }

    /// Kept volumes whose window ended at or before `now`, earliest first, at
    /// most `limit`.
    pub async fn due_volume_purges(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> DbResult<Vec<DueVolumePurge>> {
        use workspace_timer::Column as T;
        let rows: Vec<(Uuid, Uuid, Option<sea_orm::prelude::DateTimeWithTimeZone>)> =
            workspace_timer::Entity::find()
                .select_only()
                .column(T::WorkspaceId)
                .column(T::OrganizationId)
                .column(T::VolumeRetainedUntil)
                .filter(T::VolumeRetainedUntil.lte(tz(now)))
                .filter(T::VolumeDeletedAt.is_null())
                .order_by_asc(T::VolumeRetainedUntil)
                .limit(limit)
                .into_tuple()
                .all(&self.conn)
                .await?;
        let clusters: std::collections::HashMap<Uuid, Option<Uuid>> =
            kube_workspace::Entity::find()
                .select_only()
                .column(kube_workspace::Column::Id)
                .column(kube_workspace::Column::ClusterId)
                .filter(kube_workspace::Column::Id.is_in(rows.iter().map(|r| r.0)))
                .into_tuple::<(Uuid, Option<Uuid>)>()
                .all(&self.conn)
                .await?
                .into_iter()
                .collect();
        Ok(rows
            .into_iter()
            .filter_map(|(workspace_id, organization_id, until)| {
                Some(DueVolumePurge {
                    workspace_id,
                    organization_id,
                    cluster_id: clusters.get(&workspace_id).copied().flatten(),
                    retained_until: utc(until?),
                })
            })
            .collect())
    }

    /// Records that the kept volume of `due` was deleted at `at`, only if its
    /// window is still the one read; the workspace's row says so. Returns
    /// whether it was recorded.
    pub async fn mark_volume_purged(
        &self,
        due: &DueVolumePurge,
        at: DateTime<Utc>,
    ) -> DbResult<bool> {
        use workspace_timer::Column as T;
        let at = at.trunc_subsecs(6);
        let txn = self.begin_write().await?;
        let result = workspace_timer::Entity::update_many()
            .col_expr(T::VolumeDeletedAt, Expr::value(Some(tz(at))))
            .filter(T::WorkspaceId.eq(due.workspace_id))
            .filter(T::VolumeRetainedUntil.eq(tz(due.retained_until)))
            .filter(T::VolumeDeletedAt.is_null())
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            return Ok(false);
        }
        use kube_workspace::Column as W;
        kube_workspace::Entity::update_many()
            .col_expr(
                W::StatusMessage,
                Expr::value(Some(format!(
                    "its home volume was deleted at {}: the retention window ended",
                    lapdev_common::time::at(at)
                ))),
            )
            .filter(W::Id.eq(due.workspace_id))
            .filter(W::DeletedAt.is_not_null())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }
}
