//! Workspaces (`kube_workspace`): create, get, list, placement, status transitions and
//! soft-delete.
//!
//! Every change is guarded by optimistic concurrency: the caller passes the `version`
//! it read, the `UPDATE` matches only that version and bumps it, and a writer that lost
//! the race gets `Conflict` (re-read, decide again). Which observed status may follow
//! which is [`workspace_transition_allowed`].
//!
//! Besides status and message, a row carries its machine-readable reason, the
//! conductor's persisted retry backoff (`repair_attempts`, `next_attempt_at`: a restart
//! or another replica does not reset them; becoming `running` does), whether it has
//! had a volume on its cluster (`volume_created`: from then on it is never placed
//! elsewhere) and a tombstone (`forgotten_at`: force-deleted while its cluster was
//! unreachable). Every write publishes a [`crate::Change`].
//!
//! # Observation order
//!
//! A manager's observation carries the time the manager saw it. A write that
//! applies one ([`WorkspaceTransition::observed_at`]) stores that time in
//! `observed_at` and is refused with [`DbError::StaleObservation`] when the row
//! already holds a later one (an equal time is applied). So the observation a
//! create or start command's reply carries cannot overwrite a newer report that
//! arrived while the reply was on its way. Times are compared only with times of
//! the same manager (its clock, not the server's): the conductor's own status
//! writes neither carry nor change `observed_at`, and placing a workspace on a
//! cluster clears it.

use chrono::{DateTime, Utc};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::{DesiredState, WorkspaceStatus};
use sea_orm::sea_query::{Condition, Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::changes::{Change, WorkspaceChange};
use crate::db::{Db, now};
use crate::entities::kube_cluster;
use crate::entities::kube_workspace;
use crate::error::{DbError, DbResult, EntityKind, parse_stored, unique_violation};
use crate::util::{check_name, check_named, check_non_negative, tz, utc};
use crate::{quota, timers};

/// A developer workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Primary key.
    pub id: Uuid,
    /// Owning organisation.
    pub organization_id: Uuid,
    /// The user it belongs to.
    pub owner_id: Uuid,
    /// Unique among the organisation's live workspaces.
    pub name: String,
    /// Where it was placed; `None` until scheduled.
    pub cluster_id: Option<Uuid>,
    /// Kubernetes namespace of its objects, once placed.
    pub namespace: Option<String>,
    /// Container image.
    pub image: String,
    /// Requested CPU in millicores.
    pub cpu_millis: i64,
    /// Requested memory in bytes.
    pub memory_bytes: i64,
    /// Requested persistent storage in bytes.
    pub storage_bytes: i64,
    /// What the user asked for.
    pub desired_state: DesiredState,
    /// What was last observed.
    pub status: WorkspaceStatus,
    /// Human-readable detail of the status (e.g. why it failed).
    pub status_message: Option<String>,
    /// Name of its pod, once known.
    pub pod_name: Option<String>,
    /// Optimistic-concurrency version; every change increments it.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The cluster name the user asked for, if any.
    pub placement_cluster: Option<String>,
    /// The region the user asked for, if any.
    pub placement_region: Option<String>,
    /// When it was soft-deleted; `None` for a live workspace.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why it is in its status, machine-readable (beside `status_message`).
    pub status_reason: Option<WorkspaceReason>,
    /// Consecutive lifecycle attempts that did not settle it (the backoff exponent);
    /// 0 once it runs.
    pub repair_attempts: i32,
    /// The conductor does not touch it before this time (persisted backoff).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// It has had a volume on its cluster, so it is never placed elsewhere.
    pub volume_created: bool,
    /// Tombstone: force-deleted while its cluster was unreachable; its objects are
    /// removed when the cluster's manager reconnects, then this is cleared.
    pub forgotten_at: Option<DateTime<Utc>>,
    /// When the manager saw the status last applied from one of its
    /// observations (its clock); `None` until one has been applied.
    pub observed_at: Option<DateTime<Utc>>,
}

/// What [`Db::create_workspace`] needs.
#[derive(Debug, Clone)]
pub struct NewWorkspace {
    /// A user of the same organisation.
    pub owner_id: Uuid,
    /// Unique among the organisation's live workspaces.
    pub name: String,
    /// Container image.
    pub image: String,
    /// Requested CPU in millicores.
    pub cpu_millis: i64,
    /// Requested memory in bytes.
    pub memory_bytes: i64,
    /// Requested persistent storage in bytes.
    pub storage_bytes: i64,
    /// Usually `Running`.
    pub desired_state: DesiredState,
    /// Only place it on the cluster with this name.
    pub placement_cluster: Option<String>,
    /// Only place it on a cluster in this region.
    pub placement_region: Option<String>,
}

/// A status change for [`Db::transition_workspace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceTransition {
    /// The new observed status.
    pub status: WorkspaceStatus,
    /// The new status message (`None` clears it).
    pub status_message: Option<String>,
    /// A pod name to record; `None` leaves the stored one.
    pub pod_name: Option<String>,
    /// The new reason (`None` clears it).
    pub reason: Option<WorkspaceReason>,
    /// A new backoff; `None` keeps the stored one (becoming `running` resets it).
    pub backoff: Option<Backoff>,
    /// Record that the workspace now has a volume on its cluster (never un-set;
    /// becoming `running` sets it too).
    pub volume_created: bool,
    /// This write starts a self-repair (a new pod after the old one ended); it is
    /// published as such on the change feed.
    pub repair: bool,
    /// When the manager saw this (the observation's own time), for a change that
    /// applies a manager's observation; refused as stale when the row holds a
    /// later one. `None` for the conductor's own writes, which keep the stored
    /// time.
    pub observed_at: Option<DateTime<Utc>>,
}

/// The conductor's persisted retry state of one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Consecutive attempts so far.
    pub attempts: i32,
    /// Not before this time.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl WorkspaceTransition {
    /// A change to `status` with no message and no reason.
    pub fn to(status: WorkspaceStatus) -> Self {
        WorkspaceTransition {
            status,
            status_message: None,
            pod_name: None,
            reason: None,
            backoff: None,
            volume_created: false,
            repair: false,
            observed_at: None,
        }
    }

    /// The same change with a message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.status_message = Some(message.into());
        self
    }

    /// The same change with a reason.
    pub fn reason(mut self, reason: Option<WorkspaceReason>) -> Self {
        self.reason = reason;
        self
    }

    /// The same change, applying a manager's observation made at `at`.
    pub fn observed_at(mut self, at: DateTime<Utc>) -> Self {
        self.observed_at = Some(at);
        self
    }
}

impl Workspace {
    /// Whether an observation the manager made at `at` is older than the one
    /// the row already reflects (and so must not be applied). An equal time is
    /// not stale.
    pub fn is_stale_observation(&self, at: DateTime<Utc>) -> bool {
        self.observed_at.is_some_and(|stored| at < stored)
    }
}

/// Whether the observed status `to` may follow `from`.
///
/// Staying in the same status is allowed (it updates the message). `deleted` is final.
/// `failed` may be retried (rescheduled or recreated) or cleaned up, and becomes
/// `running` when its pod recovers by itself (an image that appeared, a node the
/// autoscaler added after declining once, a crash loop that ended): observation
/// order, not this table, keeps an older report from undoing a newer failure. A
/// stopped workspace starts again through `creating` on its cluster.
pub fn workspace_transition_allowed(from: WorkspaceStatus, to: WorkspaceStatus) -> bool {
    use WorkspaceStatus::*;
    if from == to {
        return true;
    }
    match from {
        Pending => matches!(to, Scheduling | Deleting | Deleted | Failed),
        Scheduling => matches!(to, Pending | Creating | Deleting | Deleted | Failed),
        Creating => matches!(to, Running | Stopping | Deleting | Failed),
        Running => matches!(to, Stopping | Deleting | Failed),
        Stopping => matches!(to, Stopped | Deleting | Failed),
        Stopped => matches!(to, Creating | Scheduling | Deleting | Deleted | Failed),
        Deleting => matches!(to, Deleted | Failed),
        Deleted => false,
        Failed => matches!(
            to,
            Pending | Scheduling | Creating | Running | Stopping | Deleting | Deleted
        ),
    }
}

pub(crate) fn workspace_from_model(m: kube_workspace::Model) -> DbResult<Workspace> {
    Ok(Workspace {
        desired_state: parse_stored("kube_workspace", "desired_state", &m.desired_state)?,
        status: parse_stored("kube_workspace", "status", &m.status)?,
        id: m.id,
        organization_id: m.organization_id,
        owner_id: m.owner_id,
        name: m.name,
        cluster_id: m.cluster_id,
        namespace: m.namespace,
        image: m.image,
        cpu_millis: m.cpu_millis,
        memory_bytes: m.memory_bytes,
        storage_bytes: m.storage_bytes,
        status_message: m.status_message,
        pod_name: m.pod_name,
        version: m.version,
        created_at: utc(m.created_at),
        updated_at: utc(m.updated_at),
        placement_cluster: m.placement_cluster,
        placement_region: m.placement_region,
        deleted_at: m.deleted_at.map(utc),
        status_reason: m.status_reason.as_deref().map(WorkspaceReason::parse),
        repair_attempts: m.repair_attempts,
        next_attempt_at: m.next_attempt_at.map(utc),
        volume_created: m.volume_created,
        forgotten_at: m.forgotten_at.map(utc),
        observed_at: m.observed_at.map(utc),
    })
}

impl Db {
    /// Creates a `pending` workspace (version 1) for a user of `org_id`, within
    /// the organisation's and the owner's quotas, with its timers armed from
    /// now (see [`Db::create_workspace_at`]).
    pub async fn create_workspace(&self, org_id: Uuid, new: NewWorkspace) -> DbResult<Workspace> {
        self.create_workspace_at(org_id, new, now()).await
    }

    /// Creates a `pending` workspace (version 1) for a user of `org_id`. In one
    /// transaction: the quotas admit it (`QuotaExceeded` says which limit
    /// refused, in numbers; see `quota.rs`), the row is written, and a workspace
    /// meant to run gets its idle and lifetime timers armed from `at` (the
    /// caller's clock).
    pub async fn create_workspace_at(
        &self,
        org_id: Uuid,
        new: NewWorkspace,
        at: DateTime<Utc>,
    ) -> DbResult<Workspace> {
        check_named(lapdev_common::name::NameKind::Workspace, &new.name)?;
        check_name("image", &new.image)?;
        check_non_negative("cpu_millis", new.cpu_millis)?;
        check_non_negative("memory_bytes", new.memory_bytes)?;
        check_non_negative("storage_bytes", new.storage_bytes)?;
        self.get_user(org_id, new.owner_id).await?;
        let created = tz(now());
        let model = kube_workspace::ActiveModel {
            id: Set(Uuid::new_v4()),
            organization_id: Set(org_id),
            owner_id: Set(new.owner_id),
            name: Set(new.name.clone()),
            cluster_id: Set(None),
            namespace: Set(None),
            image: Set(new.image),
            cpu_millis: Set(new.cpu_millis),
            memory_bytes: Set(new.memory_bytes),
            storage_bytes: Set(new.storage_bytes),
            desired_state: Set(new.desired_state.as_str().to_owned()),
            status: Set(WorkspaceStatus::Pending.as_str().to_owned()),
            status_message: Set(None),
            pod_name: Set(None),
            version: Set(1),
            created_at: Set(created),
            updated_at: Set(created),
            deleted_at: Set(None),
            placement_cluster: Set(new.placement_cluster),
            placement_region: Set(new.placement_region),
            status_reason: Set(None),
            repair_attempts: Set(0),
            next_attempt_at: Set(None),
            volume_created: Set(false),
            forgotten_at: Set(None),
            observed_at: Set(None),
        };
        let needs = quota::needs(
            new.desired_state,
            new.cpu_millis,
            new.memory_bytes,
            new.storage_bytes,
            true,
        );
        let txn = self.begin_write().await?;
        Db::admit(&txn, org_id, new.owner_id, &needs).await?;
        let model = model
            .insert(&txn)
            .await
            .map_err(unique_violation(EntityKind::Workspace, &new.name))?;
        if new.desired_state == DesiredState::Running {
            timers::arm(&txn, org_id, model.id, at).await?;
        }
        txn.commit().await?;
        let ws = workspace_from_model(model)?;
        self.publish_workspace(None, &ws, false);
        Ok(ws)
    }

    /// A live workspace of `org_id`.
    pub async fn get_workspace(&self, org_id: Uuid, id: Uuid) -> DbResult<Workspace> {
        kube_workspace::Entity::find_by_id(id)
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .filter(kube_workspace::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Workspace, id))
            .and_then(workspace_from_model)
    }

    /// The live workspace of `org_id` named `name`.
    pub async fn get_workspace_by_name(&self, org_id: Uuid, name: &str) -> DbResult<Workspace> {
        kube_workspace::Entity::find()
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .filter(kube_workspace::Column::Name.eq(name))
            .filter(kube_workspace::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Workspace, name))
            .and_then(workspace_from_model)
    }

    /// The workspace of `org_id` named `name`: the live one, else the most recently
    /// deleted one (so a user can see that it was deleted).
    pub async fn find_workspace_by_name_including_deleted(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> DbResult<Workspace> {
        kube_workspace::Entity::find()
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .filter(kube_workspace::Column::Name.eq(name))
            .order_by_desc(kube_workspace::Column::DeletedAt.is_null())
            .order_by_desc(kube_workspace::Column::CreatedAt)
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Workspace, name))
            .and_then(workspace_from_model)
    }

    /// Every workspace of `org_id`, soft-deleted ones included, by name.
    pub async fn list_workspaces_including_deleted(
        &self,
        org_id: Uuid,
    ) -> DbResult<Vec<Workspace>> {
        kube_workspace::Entity::find()
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .order_by_asc(kube_workspace::Column::Name)
            .order_by_asc(kube_workspace::Column::CreatedAt)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(workspace_from_model)
            .collect()
    }

    /// The live workspaces of `org_id`, by name.
    pub async fn list_workspaces(&self, org_id: Uuid) -> DbResult<Vec<Workspace>> {
        kube_workspace::Entity::find()
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .filter(kube_workspace::Column::DeletedAt.is_null())
            .order_by_asc(kube_workspace::Column::Name)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(workspace_from_model)
            .collect()
    }

    /// One page of the live workspaces of `org_id` (only `owner`'s, and only
    /// those placed on `cluster`, when given), in name order: at most `limit` names after `after`, or, with
    /// `before` instead, the last `limit` names before it (still returned in
    /// name order). Live names are unique in an organisation, so the order is
    /// stable and a page boundary is just a name.
    pub async fn list_workspaces_page(
        &self,
        org_id: Uuid,
        owner: Option<Uuid>,
        cluster: Option<Uuid>,
        cursor: PageCursor<'_>,
        limit: u64,
    ) -> DbResult<Vec<Workspace>> {
        let mut q = kube_workspace::Entity::find()
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .filter(kube_workspace::Column::DeletedAt.is_null());
        if let Some(o) = owner {
            q = q.filter(kube_workspace::Column::OwnerId.eq(o));
        }
        if let Some(c) = cluster {
            q = q.filter(kube_workspace::Column::ClusterId.eq(c));
        }
        let q = match cursor {
            PageCursor::First => q.order_by_asc(kube_workspace::Column::Name),
            PageCursor::After(n) => q
                .filter(kube_workspace::Column::Name.gt(n))
                .order_by_asc(kube_workspace::Column::Name),
            PageCursor::Before(n) => q
                .filter(kube_workspace::Column::Name.lt(n))
                .order_by_desc(kube_workspace::Column::Name),
        };
        let mut rows = q
            .limit(limit)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(workspace_from_model)
            .collect::<DbResult<Vec<_>>>()?;
        if matches!(cursor, PageCursor::Before(_)) {
            rows.reverse();
        }
        Ok(rows)
    }

    /// The live workspaces of `org_id` placed on `cluster_id`, by name.
    pub async fn list_cluster_workspaces(
        &self,
        org_id: Uuid,
        cluster_id: Uuid,
    ) -> DbResult<Vec<Workspace>> {
        kube_workspace::Entity::find()
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .filter(kube_workspace::Column::ClusterId.eq(cluster_id))
            .filter(kube_workspace::Column::DeletedAt.is_null())
            .order_by_asc(kube_workspace::Column::Name)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(workspace_from_model)
            .collect()
    }

    /// Live workspaces of every organisation whose observed status does not match
    /// their desired state (for the conductor's reconciler after a restart). `failed`
    /// workspaces are included; the reconciler decides whether to retry. A live
    /// `deleted` workspace is unsettled too: it still has to be soft-deleted.
    /// Workspaces whose persisted backoff (`next_attempt_at`) is later than `now` are
    /// left out: they are not due.
    pub async fn list_unsettled_workspaces(&self, now: DateTime<Utc>) -> DbResult<Vec<Workspace>> {
        use kube_workspace::Column as W;
        let settled = |desired: DesiredState, status: WorkspaceStatus| {
            Condition::all()
                .add(W::DesiredState.eq(desired.as_str()))
                .add(W::Status.eq(status.as_str()))
        };
        kube_workspace::Entity::find()
            .filter(W::DeletedAt.is_null())
            .filter(
                Condition::any()
                    .add(settled(DesiredState::Running, WorkspaceStatus::Running))
                    .add(settled(DesiredState::Stopped, WorkspaceStatus::Stopped))
                    .not(),
            )
            .filter(
                Condition::any()
                    .add(W::NextAttemptAt.is_null())
                    .add(W::NextAttemptAt.lte(tz(now))),
            )
            .order_by_asc(W::UpdatedAt)
            .order_by_asc(W::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(workspace_from_model)
            .collect()
    }

    /// Changes the observed status if `expected_version` is current and the change is
    /// allowed by [`workspace_transition_allowed`]. Of two writers holding the same
    /// version, exactly one wins; the other gets `Conflict`. A change applying a
    /// manager's observation older than the stored one is `StaleObservation` (see
    /// the module docs). A change whose backoff clears the next attempt time is
    /// published as `due` (the conductor looks at once).
    pub async fn transition_workspace(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        change: WorkspaceTransition,
    ) -> DbResult<Workspace> {
        let current = self.get_workspace(org_id, id).await?;
        check_version(&current, expected_version)?;
        check_transition(&current, change.status)?;
        if let Some(at) = change.observed_at
            && current.is_stale_observation(at)
        {
            return Err(DbError::StaleObservation {
                id,
                stored: current.observed_at.unwrap_or(at),
                observed: at,
            });
        }
        use kube_workspace::Column as W;
        let mut update = kube_workspace::Entity::update_many()
            .col_expr(W::Status, Expr::value(change.status.as_str()))
            .col_expr(W::StatusMessage, Expr::value(change.status_message))
            .col_expr(
                W::StatusReason,
                Expr::value(change.reason.as_ref().map(|r| r.as_str().to_owned())),
            );
        if let Some(pod_name) = change.pod_name {
            update = update.col_expr(W::PodName, Expr::value(Some(pod_name)));
        }
        if let Some(at) = change.observed_at {
            update = update.col_expr(W::ObservedAt, Expr::value(Some(tz(at))));
        }
        // Cleared explicitly (not the reset that comes with `running`): the
        // conductor is told to look now.
        let due = change.backoff.is_some_and(|b| b.next_attempt_at.is_none());
        let backoff = match change.backoff {
            Some(b) => Some(b),
            // Running is success: the next failure starts from the first delay.
            None if change.status == WorkspaceStatus::Running => Some(Backoff {
                attempts: 0,
                next_attempt_at: None,
            }),
            None => None,
        };
        let repair = change.repair;
        if let Some(b) = backoff {
            update = update
                .col_expr(W::RepairAttempts, Expr::value(b.attempts))
                .col_expr(W::NextAttemptAt, Expr::value(b.next_attempt_at.map(tz)));
        }
        if change.volume_created || change.status == WorkspaceStatus::Running {
            update = update.col_expr(W::VolumeCreated, Expr::value(true));
        }
        let ws = self
            .update_workspace_versioned(org_id, id, expected_version, update)
            .await?;
        self.publish_workspace_change(Some(current.status), &ws, repair, due);
        Ok(ws)
    }

    /// Sets the persisted backoff without changing anything else (a lifecycle
    /// call that did not settle the workspace, or an admin's "retry now").
    pub async fn set_workspace_backoff(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        backoff: Backoff,
    ) -> DbResult<Workspace> {
        use kube_workspace::Column as W;
        let update = kube_workspace::Entity::update_many()
            .col_expr(W::RepairAttempts, Expr::value(backoff.attempts))
            .col_expr(
                W::NextAttemptAt,
                Expr::value(backoff.next_attempt_at.map(tz)),
            );
        self.update_workspace_versioned(org_id, id, expected_version, update)
            .await
    }

    /// Records that the workspace has a volume on its cluster and changes
    /// nothing else (a command's reply too old to apply still proves this).
    pub async fn mark_workspace_volume_created(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
    ) -> DbResult<Workspace> {
        use kube_workspace::Column as W;
        let update =
            kube_workspace::Entity::update_many().col_expr(W::VolumeCreated, Expr::value(true));
        self.update_workspace_versioned(org_id, id, expected_version, update)
            .await
    }

    /// Makes every waiting workspace due now (keeping the attempt counts), for an
    /// admin's "retry now" and for tests. Returns how many rows changed.
    pub async fn clear_workspace_backoff(&self) -> DbResult<u64> {
        use kube_workspace::Column as W;
        let result = kube_workspace::Entity::update_many()
            .col_expr(
                W::NextAttemptAt,
                Expr::value(Option::<sea_orm::prelude::DateTimeWithTimeZone>::None),
            )
            .filter(W::NextAttemptAt.is_not_null())
            .filter(W::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// Records the scheduler's choice: the workspace goes to `creating` on `cluster_id`
    /// (a live cluster of the same organisation) in `namespace`.
    ///
    /// Exactly one placement wins: the `UPDATE` matches only the version the caller
    /// read, only a workspace that may be placed (`scheduling`, or `failed` and
    /// never given a volume) and only while the cluster row, locked for the
    /// statement's transaction, is live. A workspace that has had a volume is never
    /// placed again (`InvalidInput`); a lost race is `Conflict`.
    pub async fn place_workspace(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        cluster_id: Uuid,
        namespace: &str,
    ) -> DbResult<Workspace> {
        self.place_workspace_with(org_id, id, expected_version, cluster_id, namespace, false)
            .await
    }

    /// [`place_workspace`](Self::place_workspace) for a placer that decided
    /// from a cache (the conductor): under the organisation's placement lock
    /// (PostgreSQL's `pg_advisory_xact_lock`, so placements of one
    /// organisation on every replica write one at a time; on SQLite the
    /// write transaction already serialises them) it reads the requests
    /// already placed on the cluster again and refuses with
    /// [`DbError::NoLongerFits`] when the workspace does not fit its
    /// allocatable any more (another replica placed meanwhile). Clusters that
    /// scale themselves are not checked: their room grows on demand.
    pub async fn place_workspace_checked(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        cluster_id: Uuid,
        namespace: &str,
    ) -> DbResult<Workspace> {
        self.place_workspace_with(org_id, id, expected_version, cluster_id, namespace, true)
            .await
    }

    async fn place_workspace_with(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        cluster_id: Uuid,
        namespace: &str,
        check_fit: bool,
    ) -> DbResult<Workspace> {
        check_name("namespace", namespace)?;
        let current = self.get_workspace(org_id, id).await?;
        check_version(&current, expected_version)?;
        check_placeable(&current)?;
        use kube_workspace::Column as W;
        let txn = self.begin_write().await?;
        if check_fit {
            crate::cluster_placement::lock_org_placement(&txn, org_id).await?;
        }
        // Shared lock: placements onto one cluster run side by side, but a cluster
        // deletion (which locks the row exclusively) waits for them, and they for it.
        let cluster = kube_cluster::Entity::find_by_id(cluster_id)
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .lock_shared()
            .one(&txn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Cluster, cluster_id))?;
        if check_fit {
            crate::cluster_placement::check_still_fits(&txn, cluster, &current).await?;
        }
        let result = kube_workspace::Entity::update_many()
            .col_expr(W::ClusterId, Expr::value(Some(cluster_id)))
            .col_expr(W::Namespace, Expr::value(Some(namespace.to_owned())))
            .col_expr(W::Status, Expr::value(WorkspaceStatus::Creating.as_str()))
            .col_expr(W::StatusMessage, Expr::value(Option::<String>::None))
            .col_expr(W::StatusReason, Expr::value(Option::<String>::None))
            // Another cluster's manager, another clock: its first observation
            // is not compared with the last cluster's.
            .col_expr(
                W::ObservedAt,
                Expr::value(Option::<sea_orm::prelude::DateTimeWithTimeZone>::None),
            )
            .col_expr(W::Version, Expr::col(W::Version).add(1))
            .col_expr(W::UpdatedAt, Expr::value(tz(now())))
            .filter(W::Id.eq(id))
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Version.eq(expected_version))
            .filter(W::DeletedAt.is_null())
            .filter(W::VolumeCreated.eq(false))
            .filter(W::Status.is_in([
                WorkspaceStatus::Scheduling.as_str(),
                WorkspaceStatus::Failed.as_str(),
            ]))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            drop(txn);
            return Err(self.lost_race(org_id, id, expected_version).await);
        }
        txn.commit().await?;
        let ws = self.get_workspace(org_id, id).await?;
        self.publish_workspace(Some(current.status), &ws, false);
        Ok(ws)
    }

    /// Sets what the user wants (see [`Db::set_workspace_desired_state_at`]).
    pub async fn set_workspace_desired_state(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        desired: DesiredState,
    ) -> DbResult<Workspace> {
        self.set_workspace_desired_state_at(org_id, id, expected_version, desired, now())
            .await
    }

    /// Sets what the user wants. Once `deleted` is asked for, it cannot be taken
    /// back. Starting a workspace that was not meant to run is admitted by the
    /// quotas and arms its timers from `at`; stopping or deleting clears them;
    /// all in the transaction that writes the wish.
    pub async fn set_workspace_desired_state_at(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        desired: DesiredState,
        at: DateTime<Utc>,
    ) -> DbResult<Workspace> {
        let current = self.get_workspace(org_id, id).await?;
        check_version(&current, expected_version)?;
        if current.desired_state == DesiredState::Deleted && desired != DesiredState::Deleted {
            return Err(DbError::InvalidInput {
                field: "desired_state",
                reason: "a workspace being deleted cannot be revived",
            });
        }
        use kube_workspace::Column as W;
        // A new wish is acted on at once: the backoff of the old one does not apply.
        let update = kube_workspace::Entity::update_many()
            .col_expr(W::DesiredState, Expr::value(desired.as_str()))
            .col_expr(W::RepairAttempts, Expr::value(0))
            .col_expr(
                W::NextAttemptAt,
                Expr::value(Option::<sea_orm::prelude::DateTimeWithTimeZone>::None),
            );
        let starting =
            desired == DesiredState::Running && current.desired_state != DesiredState::Running;
        let txn = self.begin_write().await?;
        if starting {
            let needs = quota::needs(
                desired,
                current.cpu_millis,
                current.memory_bytes,
                current.storage_bytes,
                false,
            );
            Db::admit(&txn, org_id, current.owner_id, &needs).await?;
            timers::arm(&txn, org_id, id, at).await?;
        } else if desired != DesiredState::Running {
            timers::disarm(&txn, id).await?;
        }
        let result = update
            .col_expr(W::Version, Expr::col(W::Version).add(1))
            .col_expr(W::UpdatedAt, Expr::value(tz(now())))
            .filter(W::Id.eq(id))
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Version.eq(expected_version))
            .filter(W::DeletedAt.is_null())
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            drop(txn);
            return Err(self.lost_race(org_id, id, expected_version).await);
        }
        txn.commit().await?;
        let ws = self.read_version(org_id, id, expected_version + 1).await?;
        self.publish_workspace(Some(current.status), &ws, false);
        Ok(ws)
    }

    /// Marks the workspace `deleted` and soft-deletes it, freeing its name. Allowed from
    /// any status that may become `deleted` (e.g. after the manager removed its objects,
    /// or before it was ever placed). Nothing of it is kept: see
    /// [`Db::delete_workspace_keeping_volume`] for the retention window.
    pub async fn delete_workspace(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
    ) -> DbResult<()> {
        self.soft_delete(org_id, id, expected_version, None).await
    }

    /// [`Db::delete_workspace`]; with `kept_until`, its home volume is kept on
    /// its cluster until then (recorded in `workspace_timer`, same transaction).
    pub(crate) async fn soft_delete(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        kept_until: Option<DateTime<Utc>>,
    ) -> DbResult<()> {
        let current = self.get_workspace(org_id, id).await?;
        check_version(&current, expected_version)?;
        if current.status != WorkspaceStatus::Deleted {
            check_transition(&current, WorkspaceStatus::Deleted)?;
        }
        use kube_workspace::Column as W;
        let at = tz(now());
        let txn = self.begin_write().await?;
        let result = kube_workspace::Entity::update_many()
            .col_expr(W::Status, Expr::value(WorkspaceStatus::Deleted.as_str()))
            .col_expr(W::DesiredState, Expr::value(DesiredState::Deleted.as_str()))
            // What was said on the way (e.g. "still deleting; retry in …") is
            // over once the workspace is gone.
            .col_expr(W::StatusReason, Expr::value(Option::<String>::None))
            .col_expr(W::StatusMessage, Expr::value(Option::<String>::None))
            .col_expr(W::DeletedAt, Expr::value(Some(at)))
            .col_expr(W::UpdatedAt, Expr::value(at))
            .col_expr(W::Version, Expr::col(W::Version).add(1))
            .filter(W::Id.eq(id))
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Version.eq(expected_version))
            .filter(W::DeletedAt.is_null())
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            drop(txn);
            return Err(self.lost_race(org_id, id, expected_version).await);
        }
        timers::disarm(&txn, id).await?;
        if let Some(until) = kept_until {
            crate::retention::keep_volume(&txn, org_id, id, until).await?;
        }
        txn.commit().await?;
        self.publish_deleted(&current, None);
        Ok(())
    }

    /// Forgets a workspace whose cluster is unreachable or gone: it becomes
    /// `deleted` (reason `ClusterGone`) and soft-deleted at once, freeing its name,
    /// and keeps a tombstone (`forgotten_at`) so that its objects are removed when
    /// the cluster's manager reconnects. Returns the tombstone.
    pub async fn forget_workspace(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
    ) -> DbResult<Workspace> {
        let current = self.get_workspace(org_id, id).await?;
        check_version(&current, expected_version)?;
        use kube_workspace::Column as W;
        let at = tz(now());
        // Only a placed workspace can have objects somewhere; an unplaced one is
        // simply deleted.
        let tombstone = current.cluster_id.map(|_| at);
        let result = kube_workspace::Entity::update_many()
            .col_expr(W::Status, Expr::value(WorkspaceStatus::Deleted.as_str()))
            .col_expr(W::DesiredState, Expr::value(DesiredState::Deleted.as_str()))
            .col_expr(
                W::StatusReason,
                Expr::value(Some(WorkspaceReason::ClusterGone.as_str())),
            )
            .col_expr(
                W::StatusMessage,
                Expr::value(Some(
                    "forgotten (--force): its objects are removed by the cluster's manager, \
                     at once if it is connected, else when it reconnects"
                        .to_owned(),
                )),
            )
            .col_expr(W::ForgottenAt, Expr::value(tombstone))
            .col_expr(W::DeletedAt, Expr::value(Some(at)))
            .col_expr(W::UpdatedAt, Expr::value(at))
            .col_expr(W::Version, Expr::col(W::Version).add(1))
            .filter(W::Id.eq(id))
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Version.eq(expected_version))
            .filter(W::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        if result.rows_affected == 0 {
            return Err(self.lost_race(org_id, id, expected_version).await);
        }
        timers::disarm(&self.conn, id).await?;
        let ws = kube_workspace::Entity::find_by_id(id)
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Workspace, id))
            .and_then(workspace_from_model)?;
        self.publish_deleted(&current, Some(WorkspaceReason::ClusterGone));
        Ok(ws)
    }

    /// Tombstones of `cluster_id` (any organisation): workspaces forgotten while
    /// the cluster was unreachable whose objects are still to be removed.
    pub async fn list_forgotten_workspaces(&self, cluster_id: Uuid) -> DbResult<Vec<Workspace>> {
        use kube_workspace::Column as W;
        kube_workspace::Entity::find()
            .filter(W::ClusterId.eq(cluster_id))
            .filter(W::ForgottenAt.is_not_null())
            .order_by_asc(W::ForgottenAt)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(workspace_from_model)
            .collect()
    }

    /// The clusters that have tombstones, for the conductor's cleanup round.
    pub async fn clusters_with_forgotten_workspaces(&self) -> DbResult<Vec<Uuid>> {
        use kube_workspace::Column as W;
        let ids: Vec<Option<Uuid>> = kube_workspace::Entity::find()
            .select_only()
            .column(W::ClusterId)
            .distinct()
            .filter(W::ForgottenAt.is_not_null())
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(ids.into_iter().flatten().collect())
    }

    /// Clears a tombstone once the cluster's manager removed the objects.
    pub async fn clear_forgotten(&self, id: Uuid) -> DbResult<()> {
        use kube_workspace::Column as W;
        kube_workspace::Entity::update_many()
            .col_expr(
                W::ForgottenAt,
                Expr::value(Option::<sea_orm::prelude::DateTimeWithTimeZone>::None),
            )
            .col_expr(
                W::StatusMessage,
                Expr::value(Some(
                    "forgotten (--force); its objects were removed from the cluster".to_owned(),
                )),
            )
            .filter(W::Id.eq(id))
            .exec(&self.conn)
            .await?;
        Ok(())
    }

    pub(crate) fn publish_workspace(
        &self,
        previous: Option<WorkspaceStatus>,
        ws: &Workspace,
        repair: bool,
    ) {
        self.publish_workspace_change(previous, ws, repair, false);
    }

    /// [`Db::publish_workspace`] saying whether the write made it due now.
    fn publish_workspace_change(
        &self,
        previous: Option<WorkspaceStatus>,
        ws: &Workspace,
        repair: bool,
        due: bool,
    ) {
        self.changes.publish(Change::Workspace(WorkspaceChange {
            organization_id: ws.organization_id,
            workspace_id: ws.id,
            cluster_id: ws.cluster_id,
            previous_status: previous,
            status: ws.status,
            reason: ws.status_reason.clone(),
            repair,
            due,
        }));
    }

    fn publish_deleted(&self, before: &Workspace, reason: Option<WorkspaceReason>) {
        self.changes.publish(Change::Workspace(WorkspaceChange {
            organization_id: before.organization_id,
            workspace_id: before.id,
            cluster_id: before.cluster_id,
            previous_status: Some(before.status),
            status: WorkspaceStatus::Deleted,
            reason,
            repair: false,
            due: false,
        }));
    }

    /// Applies `update` to the live workspace if its version is still `expected_version`,
    /// bumping the version and `updated_at`; returns the row as written.
    async fn update_workspace_versioned(
        &self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        update: sea_orm::UpdateMany<kube_workspace::Entity>,
    ) -> DbResult<Workspace> {
        use kube_workspace::Column as W;
        let result = update
            .col_expr(W::Version, Expr::col(W::Version).add(1))
            .col_expr(W::UpdatedAt, Expr::value(tz(now())))
            .filter(W::Id.eq(id))
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Version.eq(expected_version))
            .filter(W::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        if result.rows_affected == 0 {
            return Err(self.lost_race(org_id, id, expected_version).await);
        }
        self.read_version(org_id, id, expected_version + 1).await
    }

    /// The row as a write that produced `version` left it. Read back by that
    /// version, so a later writer's row is never mistaken for ours.
    async fn read_version(&self, org_id: Uuid, id: Uuid, version: i64) -> DbResult<Workspace> {
        use kube_workspace::Column as W;
        kube_workspace::Entity::find_by_id(id)
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::Version.eq(version))
            .one(&self.conn)
            .await?
            .map(workspace_from_model)
            .unwrap_or(Err(DbError::Conflict {
                entity: EntityKind::Workspace,
                id,
                expected_version: version,
            }))
    }

    /// Why a guarded update matched no row: the workspace is gone, or someone else
    /// changed it first.
    pub(crate) async fn lost_race(&self, org_id: Uuid, id: Uuid, expected_version: i64) -> DbError {
        match self.get_workspace(org_id, id).await {
            Ok(_) => DbError::Conflict {
                entity: EntityKind::Workspace,
                id,
                expected_version,
            },
            Err(err) => err,
        }
    }
}

fn check_version(current: &Workspace, expected_version: i64) -> DbResult<()> {
    if current.version != expected_version {
        return Err(DbError::Conflict {
            entity: EntityKind::Workspace,
            id: current.id,
            expected_version,
        });
    }
    Ok(())
}

/// Whether placement may (re)choose a cluster for `current`.
fn check_placeable(current: &Workspace) -> DbResult<()> {
    if current.volume_created {
        return Err(DbError::InvalidInput {
            field: "cluster_id",
            reason: "the workspace has a volume on its cluster and never moves",
        });
    }
    if !matches!(
        current.status,
        WorkspaceStatus::Scheduling | WorkspaceStatus::Failed
    ) {
        return Err(DbError::InvalidTransition {
            id: current.id,
            from: current.status,
            to: WorkspaceStatus::Creating,
        });
    }
    Ok(())
}

fn check_transition(current: &Workspace, to: WorkspaceStatus) -> DbResult<()> {
    if !workspace_transition_allowed(current.status, to) {
        return Err(DbError::InvalidTransition {
            id: current.id,
            from: current.status,
            to,
        });
    }
    Ok(())
}

/// Where a page of a name-ordered list starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCursor<'a> {
    /// The first page.
    First,
    /// The names after this one.
    After(&'a str),
    /// The names before this one.
    Before(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_is_final_and_identity_is_allowed() {
        for &to in WorkspaceStatus::ALL {
            assert_eq!(
                workspace_transition_allowed(WorkspaceStatus::Deleted, to),
                to == WorkspaceStatus::Deleted
            );
            assert!(workspace_transition_allowed(to, to));
        }
    }

    #[test]
    fn the_happy_paths_are_allowed() {
        use WorkspaceStatus::*;
        let life = [
            Pending, Scheduling, Creating, Running, Stopping, Stopped, Creating, Running, Deleting,
            Deleted,
        ];
        for pair in life.windows(2) {
            assert!(
                workspace_transition_allowed(pair[0], pair[1]),
                "{} -> {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn skipping_steps_is_refused() {
        use WorkspaceStatus::*;
        for (from, to) in [
            (Pending, Running),
            (Running, Stopped),
            (Running, Deleted),
            (Running, Pending),
            (Stopped, Running),
            (Creating, Deleted),
        ] {
            assert!(!workspace_transition_allowed(from, to), "{from} -> {to}");
        }
    }

    #[test]
    fn a_failed_workspace_whose_pod_recovers_becomes_running() {
        use WorkspaceStatus::*;
        // e.g. the autoscaler declined (`ScaleUpDeclined`), then a node appeared.
        assert!(workspace_transition_allowed(Failed, Running));
        // Stopping still goes through `stopping`.
        assert!(!workspace_transition_allowed(Failed, Stopped));
    }

    #[test]
    fn every_status_can_reach_deleted() {
        // Nothing gets stuck: from every status there is a path to `deleted`.
        for &start in WorkspaceStatus::ALL {
            let mut seen = vec![start];
            let mut frontier = vec![start];
            while let Some(s) = frontier.pop() {
                for &next in WorkspaceStatus::ALL {
                    if workspace_transition_allowed(s, next) && !seen.contains(&next) {
                        seen.push(next);
                        frontier.push(next);
                    }
                }
            }
            assert!(seen.contains(&WorkspaceStatus::Deleted), "{start}");
        }
    }
}
