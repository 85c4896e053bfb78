//! Idle auto-stop and lifetimes: the organisation's [`WorkspacePolicy`]
//! (`workspace_policy`) and each workspace's timers (`workspace_timer`).
//!
//! Creating or starting a workspace arms its timers in the same transaction
//! that admits it ([`arm`]): the idle deadline is the start time plus its
//! idle timeout (the workspace's own override, else the organisation's
//! default), the lifetime deadline the start time plus the organisation's
//! maximum lifetime. Use pushes the idle deadline ([`Db::touch_workspace`],
//! [`Db::keep_alive_workspace`]); stopping, deleting or a timer's stop clears
//! both. So a non-`NULL` deadline always belongs to a workspace that should
//! run, and a sweep reads only the due rows through the deadline indexes
//! ([`Db::due_workspace_timers`]).
//!
//! Due timers stop their workspaces through [`Db::stop_for_timers`]: one
//! transaction per sweep batch that clears each deadline only if it still
//! holds the value the sweep read, records why, and sets the desired state to
//! `stopped`. Two sweepers (or a sweep racing a keep-alive) cannot both win,
//! so a workspace is never stopped twice, and a deadline pushed meanwhile is
//! not acted on.

use chrono::{DateTime, SubsecRound, Utc};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::DesiredState;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::db::{Db, now};
use crate::entities::{kube_workspace, workspace_policy, workspace_timer};
use crate::error::{DbError, DbResult, EntityKind};
use crate::util::{tz, utc};
use crate::workspace::Workspace;

/// Home volumes of deleted workspaces are kept this long unless the
/// organisation says otherwise.
pub const DEFAULT_VOLUME_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// A workspace gets its notice this long before its lifetime stop unless the
/// organisation says otherwise.
pub const DEFAULT_LIFETIME_NOTICE_SECS: i64 = 15 * 60;

/// An organisation's idle, lifetime and retention settings (seconds; `None`
/// is the built-in default: no idle stop, no override cap, no lifetime, 7 days
/// of retention).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkspacePolicy {
    /// Idle timeout of workspaces without their own.
    #[serde(default)]
    pub idle_timeout_secs: Option<i64>,
    /// The longest idle timeout a workspace may set for itself.
    #[serde(default)]
    pub max_idle_timeout_secs: Option<i64>,
    /// The longest a workspace runs per start.
    #[serde(default)]
    pub max_lifetime_secs: Option<i64>,
    /// How long a deleted workspace's home volume is kept.
    #[serde(default)]
    pub volume_retention_secs: Option<i64>,
    /// How long before a lifetime stop the workspace gets its notice.
    #[serde(default)]
    pub lifetime_notice_secs: Option<i64>,
}

impl WorkspacePolicy {
    /// When a workspace started at `start` whose lifetime ends at `deadline`
    /// gets its notice (at once when the notice is longer than the lifetime).
    pub fn notice_at(&self, start: DateTime<Utc>, deadline: DateTime<Utc>) -> DateTime<Utc> {
        let notice = self
            .lifetime_notice_secs
            .unwrap_or(DEFAULT_LIFETIME_NOTICE_SECS);
        deadline
            .checked_sub_signed(secs(notice))
            .map_or(start, |at| Ord::max(at, start))
    }

    /// The idle timeout of a workspace whose own override is `own`.
    pub fn idle_timeout(&self, own: Option<i64>) -> Option<i64> {
        own.or(self.idle_timeout_secs)
    }

    fn check(&self) -> DbResult<()> {
        for (field, v) in [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_idle_timeout_secs", self.max_idle_timeout_secs),
            ("max_lifetime_secs", self.max_lifetime_secs),
            ("volume_retention_secs", self.volume_retention_secs),
            ("lifetime_notice_secs", self.lifetime_notice_secs),
        ] {
            if v.is_some_and(|v| v <= 0) {
                return Err(DbError::InvalidInput {
                    field,
                    reason: "must be a positive number of seconds",
                });
            }
        }
        if let (Some(d), Some(max)) = (self.idle_timeout_secs, self.max_idle_timeout_secs)
            && d > max
        {
            return Err(DbError::InvalidInput {
                field: "idle_timeout_secs",
                reason: "the default idle timeout is longer than the maximum",
            });
        }
        Ok(())
    }
}

/// A workspace's timers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceTimer {
    /// Its own idle timeout (replaces the organisation's default).
    pub idle_timeout_secs: Option<i64>,
    /// When it was last started or used.
    pub last_active_at: Option<DateTime<Utc>>,
    /// It is stopped as idle at this time unless used before.
    pub idle_deadline: Option<DateTime<Utc>>,
    /// It is stopped at this time whatever happens.
    pub lifetime_deadline: Option<DateTime<Utc>>,
    /// Why the server stopped it last (`IdleStopped`, `LifetimeExpired`).
    pub stop_reason: Option<WorkspaceReason>,
    /// When the server stopped it.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Deleted with its home volume kept: the volume is deleted at this time
    /// unless the workspace is restored before (`lapdev workspace restore`).
    pub volume_retained_until: Option<DateTime<Utc>>,
    /// When the kept volume was deleted (the retention window ended).
    pub volume_deleted_at: Option<DateTime<Utc>>,
    /// When it got the notice that its lifetime ends soon (this start).
    pub lifetime_noticed_at: Option<DateTime<Utc>>,
}

impl WorkspaceTimer {
    /// When it will be stopped if nothing changes, and why.
    pub fn next_stop(&self) -> Option<(DateTime<Utc>, WorkspaceReason)> {
        match (self.idle_deadline, self.lifetime_deadline) {
            (Some(i), Some(l)) if l <= i => Some((l, WorkspaceReason::LifetimeExpired)),
            (Some(i), _) => Some((i, WorkspaceReason::IdleStopped)),
            (None, Some(l)) => Some((l, WorkspaceReason::LifetimeExpired)),
            (None, None) => None,
        }
    }
}

/// Which timer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// The idle deadline.
    Idle,
    /// The lifetime deadline.
    Lifetime,
}

impl TimerKind {
    /// The reason a stop by this timer records.
    pub fn reason(&self) -> WorkspaceReason {
        match self {
            TimerKind::Idle => WorkspaceReason::IdleStopped,
            TimerKind::Lifetime => WorkspaceReason::LifetimeExpired,
        }
    }

    /// The label used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            TimerKind::Idle => "idle",
            TimerKind::Lifetime => "lifetime",
        }
    }
}

/// A deadline that has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueTimer {
    /// The workspace.
    pub workspace_id: Uuid,
    /// Its organisation.
    pub organization_id: Uuid,
    /// Which deadline.
    pub kind: TimerKind,
    /// The deadline as read (the stop applies only while it is unchanged).
    pub deadline: DateTime<Utc>,
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::try_seconds(n).unwrap_or(chrono::Duration::MAX)
}

pub(crate) fn plus(at: DateTime<Utc>, n: Option<i64>) -> Option<DateTime<Utc>> {
    n.map(|n| {
        at.checked_add_signed(secs(n))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    })
}

pub(crate) fn timer_from_model(m: workspace_timer::Model) -> WorkspaceTimer {
    WorkspaceTimer {
        idle_timeout_secs: m.idle_timeout_secs,
        last_active_at: m.last_active_at.map(utc),
        idle_deadline: m.idle_deadline.map(utc),
        lifetime_deadline: m.lifetime_deadline.map(utc),
        stop_reason: m.stop_reason.as_deref().map(WorkspaceReason::parse),
        stopped_at: m.stopped_at.map(utc),
        volume_retained_until: m.volume_retained_until.map(utc),
        volume_deleted_at: m.volume_deleted_at.map(utc),
        lifetime_noticed_at: m.lifetime_noticed_at.map(utc),
    }
}

pub(crate) async fn read_policy(
    conn: &impl ConnectionTrait,
    org_id: Uuid,
) -> DbResult<WorkspacePolicy> {
    Ok(workspace_policy::Entity::find_by_id(org_id)
        .one(conn)
        .await?
        .map(|m| WorkspacePolicy {
            idle_timeout_secs: m.idle_timeout_secs,
            max_idle_timeout_secs: m.max_idle_timeout_secs,
            max_lifetime_secs: m.max_lifetime_secs,
            volume_retention_secs: m.volume_retention_secs,
            lifetime_notice_secs: m.lifetime_notice_secs,
        })
        .unwrap_or_default())
}

pub(crate) async fn read_timer(
    conn: &impl ConnectionTrait,
    workspace_id: Uuid,
) -> DbResult<Option<workspace_timer::Model>> {
    Ok(workspace_timer::Entity::find_by_id(workspace_id)
        .one(conn)
        .await?)
}

/// Arms the timers of a workspace (being) created or started at `at`, inside
/// the caller's transaction.
pub(crate) async fn arm(
    txn: &impl ConnectionTrait,
    org_id: Uuid,
    workspace_id: Uuid,
    at: DateTime<Utc>,
) -> DbResult<()> {
    let at = at.trunc_subsecs(6);
    let policy = read_policy(txn, org_id).await?;
    let own = read_timer(txn, workspace_id)
        .await?
        .and_then(|t| t.idle_timeout_secs);
    use workspace_timer::Column as T;
    let lifetime = plus(at, policy.max_lifetime_secs);
    workspace_timer::Entity::insert(workspace_timer::ActiveModel {
        workspace_id: Set(workspace_id),
        organization_id: Set(org_id),
        idle_timeout_secs: Set(own),
        last_active_at: Set(Some(tz(at))),
        idle_deadline: Set(plus(at, policy.idle_timeout(own)).map(tz)),
        lifetime_deadline: Set(lifetime.map(tz)),
        stop_reason: Set(None),
        stopped_at: Set(None),
        volume_retained_until: Set(None),
        volume_deleted_at: Set(None),
        lifetime_notice_at: Set(lifetime.map(|l| tz(policy.notice_at(at, l)))),
        lifetime_noticed_at: Set(None),
    })
    .on_conflict(
        OnConflict::column(T::WorkspaceId)
            .update_columns([
                T::LastActiveAt,
                T::IdleDeadline,
                T::LifetimeDeadline,
                T::StopReason,
                T::StoppedAt,
                T::LifetimeNoticeAt,
                T::LifetimeNoticedAt,
            ])
            .to_owned(),
    )
    .exec(txn)
    .await?;
    Ok(())
}

/// Clears a workspace's deadlines (the user stopped or deleted it), and the
/// reason of the server's last stop with them.
pub(crate) async fn disarm(txn: &impl ConnectionTrait, workspace_id: Uuid) -> DbResult<()> {
    disarm_many(txn, &[workspace_id]).await
}

/// [`disarm`] for many workspaces at once (a disabled user's).
pub(crate) async fn disarm_many(
    txn: &impl ConnectionTrait,
    workspace_ids: &[Uuid],
) -> DbResult<()> {
    use workspace_timer::Column as T;
    for chunk in workspace_ids.chunks(1000) {
        workspace_timer::Entity::update_many()
            .col_expr(T::IdleDeadline, Expr::value(none_at()))
            .col_expr(T::LifetimeDeadline, Expr::value(none_at()))
            .col_expr(T::StopReason, Expr::value(Option::<String>::None))
            .col_expr(T::StoppedAt, Expr::value(none_at()))
            .col_expr(T::LifetimeNoticeAt, Expr::value(none_at()))
            .col_expr(T::LifetimeNoticedAt, Expr::value(none_at()))
            .filter(T::WorkspaceId.is_in(chunk.iter().copied()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

pub(crate) fn none_at() -> Option<sea_orm::prelude::DateTimeWithTimeZone> {
    None
}

impl Db {
    /// `org_id`'s idle, lifetime and retention settings.
    pub async fn workspace_policy(&self, org_id: Uuid) -> DbResult<WorkspacePolicy> {
        read_policy(&self.conn, org_id).await
    }

    /// Sets `org_id`'s idle, lifetime and retention settings. Applies to
    /// timers armed from now on (the next start).
    pub async fn set_workspace_policy(
        &self,
        org_id: Uuid,
        policy: WorkspacePolicy,
    ) -> DbResult<()> {
        policy.check()?;
        self.get_organization(org_id).await?;
        use workspace_policy::Column as P;
        workspace_policy::Entity::insert(workspace_policy::ActiveModel {
            organization_id: Set(org_id),
            idle_timeout_secs: Set(policy.idle_timeout_secs),
            max_idle_timeout_secs: Set(policy.max_idle_timeout_secs),
            max_lifetime_secs: Set(policy.max_lifetime_secs),
            volume_retention_secs: Set(policy.volume_retention_secs),
            lifetime_notice_secs: Set(policy.lifetime_notice_secs),
            updated_at: Set(tz(now())),
        })
        .on_conflict(
            OnConflict::column(P::OrganizationId)
                .update_columns([
                    P::IdleTimeoutSecs,
                    P::MaxIdleTimeoutSecs,
                    P::MaxLifetimeSecs,
                    P::VolumeRetentionSecs,
                    P::LifetimeNoticeSecs,
                    P::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(&self.conn)
        .await?;
        Ok(())
    }

    /// The timers of a workspace of `org_id` (`None`: it never ran).
    pub async fn workspace_timer(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
    ) -> DbResult<Option<WorkspaceTimer>> {
        Ok(workspace_timer::Entity::find_by_id(workspace_id)
            .filter(workspace_timer::Column::OrganizationId.eq(org_id))
            .one(&self.conn)
            .await?
            .map(timer_from_model))
    }

    /// The timers of every workspace of `org_id` that ever ran, by workspace.
    pub async fn workspace_timers(
        &self,
        org_id: Uuid,
    ) -> DbResult<std::collections::HashMap<Uuid, WorkspaceTimer>> {
        Ok(workspace_timer::Entity::find()
            .filter(workspace_timer::Column::OrganizationId.eq(org_id))
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|m| (m.workspace_id, timer_from_model(m)))
            .collect())
    }

    /// The timers of these workspaces of `org_id` (a page's worth: one
    /// query, however many workspaces the organisation holds).
    pub async fn workspace_timers_of(
        &self,
        org_id: Uuid,
        workspace_ids: &[Uuid],
    ) -> DbResult<std::collections::HashMap<Uuid, WorkspaceTimer>> {
        if workspace_ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        Ok(workspace_timer::Entity::find()
            .filter(workspace_timer::Column::OrganizationId.eq(org_id))
            .filter(workspace_timer::Column::WorkspaceId.is_in(workspace_ids.iter().copied()))
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|m| (m.workspace_id, timer_from_model(m)))
            .collect())
    }

    /// Records use of a running workspace at `at`: its idle deadline moves to
    /// `at` plus its idle timeout (never earlier than it was). Does nothing to
    /// a workspace whose timers are not armed (stopped, or no idle timeout).
    pub async fn touch_workspace(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
        at: DateTime<Utc>,
    ) -> DbResult<()> {
        let at = at.trunc_subsecs(6);
        let txn = self.begin_write().await?;
        let Some(timer) = read_timer(&txn, workspace_id).await? else {
            return Ok(());
        };
        let Some(current) = timer.idle_deadline.map(utc) else {
            return Ok(());
        };
        let policy = read_policy(&txn, org_id).await?;
        let Some(next) = plus(at, policy.idle_timeout(timer.idle_timeout_secs)) else {
            return Ok(());
        };
        use workspace_timer::Column as T;
        workspace_timer::Entity::update_many()
            .col_expr(T::LastActiveAt, Expr::value(Some(tz(at))))
            .col_expr(
                T::IdleDeadline,
                Expr::value(Some(tz(Ord::max(next, current)))),
            )
            .filter(T::WorkspaceId.eq(workspace_id))
            .filter(T::OrganizationId.eq(org_id))
            .filter(T::IdleDeadline.is_not_null())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// `lapdev workspace keep-alive`: optionally sets the workspace's own idle
    /// timeout (at most the organisation's maximum), and restarts its idle
    /// deadline from `at`. Refused for a workspace that is not meant to run.
    pub async fn keep_alive_workspace(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
        idle_timeout_secs: Option<i64>,
        at: DateTime<Utc>,
    ) -> DbResult<WorkspaceTimer> {
        let at = at.trunc_subsecs(6);
        let txn = self.begin_write().await?;
        let ws = kube_workspace::Entity::find_by_id(workspace_id)
            .filter(kube_workspace::Column::OrganizationId.eq(org_id))
            .filter(kube_workspace::Column::DeletedAt.is_null())
            .one(&txn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Workspace, workspace_id))?;
        if ws.desired_state != DesiredState::Running.as_str() {
            return Err(DbError::InvalidInput {
                field: "workspace",
                reason: "only a running workspace can be kept alive; start it instead",
            });
        }
        let policy = read_policy(&txn, org_id).await?;
        if let Some(own) = idle_timeout_secs {
            if own <= 0 {
                return Err(DbError::InvalidInput {
                    field: "idle_timeout_secs",
                    reason: "must be a positive number of seconds",
                });
            }
            if policy.max_idle_timeout_secs.is_some_and(|max| own > max) {
                return Err(DbError::InvalidInput {
                    field: "idle_timeout_secs",
                    reason: "longer than the organisation's maximum idle timeout",
                });
            }
        }
        let existing = read_timer(&txn, workspace_id).await?;
        let own = idle_timeout_secs.or(existing.as_ref().and_then(|t| t.idle_timeout_secs));
        let idle_deadline = plus(at, policy.idle_timeout(own)).map(tz);
        use workspace_timer::Column as T;
        workspace_timer::Entity::insert(workspace_timer::ActiveModel {
            workspace_id: Set(workspace_id),
            organization_id: Set(org_id),
            idle_timeout_secs: Set(own),
            last_active_at: Set(Some(tz(at))),
            idle_deadline: Set(idle_deadline),
            lifetime_deadline: Set(existing.as_ref().and_then(|t| t.lifetime_deadline)),
            stop_reason: Set(None),
            stopped_at: Set(None),
            volume_retained_until: Set(None),
            volume_deleted_at: Set(None),
            lifetime_notice_at: Set(None),
            lifetime_noticed_at: Set(None),
        })
        .on_conflict(
            OnConflict::column(T::WorkspaceId)
                .update_columns([T::IdleTimeoutSecs, T::LastActiveAt, T::IdleDeadline])
                .to_owned(),
        )
        .exec(&txn)
        .await?;
        let timer = read_timer(&txn, workspace_id)
            .await?
            .map(timer_from_model)
            .unwrap_or_default();
        txn.commit().await?;
        Ok(timer)
    }

    /// Deadlines at or before `now`, earliest first, at most `limit` of each
    /// kind (lifetime first: a workspace due for both stops for its lifetime).
    pub async fn due_workspace_timers(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> DbResult<Vec<DueTimer>> {
        use workspace_timer::Column as T;
        let mut due = Vec::new();
        for (kind, column) in [
            (TimerKind::Lifetime, T::LifetimeDeadline),
            (TimerKind::Idle, T::IdleDeadline),
        ] {
            let rows: Vec<(Uuid, Uuid, Option<sea_orm::prelude::DateTimeWithTimeZone>)> =
                workspace_timer::Entity::find()
                    .select_only()
                    .column(T::WorkspaceId)
                    .column(T::OrganizationId)
                    .column(column)
                    .filter(column.lte(tz(now)))
                    .order_by_asc(column)
                    .limit(limit)
                    .into_tuple()
                    .all(&self.conn)
                    .await?;
            for (workspace_id, organization_id, deadline) in rows {
                let Some(deadline) = deadline else { continue };
                if kind == TimerKind::Idle
                    && due
                        .iter()
                        .any(|d: &DueTimer| d.workspace_id == workspace_id)
                {
                    continue;
                }
                due.push(DueTimer {
                    workspace_id,
                    organization_id,
                    kind,
                    deadline: utc(deadline),
                });
            }
        }
        Ok(due)
    }

    /// Moves a due idle deadline to `next` (the workspace is in use), only if
    /// it is still the one the sweep read. Returns whether it moved.
    pub async fn postpone_idle_deadline(
        &self,
        due: &DueTimer,
        next: DateTime<Utc>,
    ) -> DbResult<bool> {
        use workspace_timer::Column as T;
        let result = workspace_timer::Entity::update_many()
            .col_expr(
                T::IdleDeadline,
                Expr::value(Some(tz(next.trunc_subsecs(6)))),
            )
            .filter(T::WorkspaceId.eq(due.workspace_id))
            .filter(T::IdleDeadline.eq(tz(due.deadline)))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// The idle timeout that applies to a workspace now.
    pub async fn effective_idle_timeout(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
    ) -> DbResult<Option<i64>> {
        let policy = read_policy(&self.conn, org_id).await?;
        let own = read_timer(&self.conn, workspace_id)
            .await?
            .and_then(|t| t.idle_timeout_secs);
        Ok(policy.idle_timeout(own))
    }

    /// Stops the workspaces of due timers, all in one transaction (one
    /// commit for a sweep's batch): for each, clears its deadlines only if
    /// the due one is unchanged, records the reason, and sets the desired
    /// state to `stopped` if it was `running`. Returns the workspaces stopped,
    /// each with the timer that stopped it; a timer someone else acted on
    /// first (another sweep, a keep-alive, the user) stops nothing, so nothing
    /// is stopped twice.
    pub async fn stop_for_timers(
        &self,
        due: &[DueTimer],
        at: DateTime<Utc>,
    ) -> DbResult<Vec<(DueTimer, Workspace)>> {
        use kube_workspace::Column as W;
        use workspace_timer::Column as T;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let at = tz(at.trunc_subsecs(6));
        let txn = self.begin_write().await?;
        // The claim stays one conditional statement per timer (its deadline as
        // read), so rows_affected says which ones this sweep won.
        // In workspace order, so concurrent sweeps lock rows in one order
        // (no deadlock between them).
        let mut order: Vec<&DueTimer> = due.iter().collect();
        order.sort_by_key(|t| t.workspace_id);
        let mut claimed = Vec::with_capacity(due.len());
        for timer in order {
            let column = match timer.kind {
                TimerKind::Idle => T::IdleDeadline,
                TimerKind::Lifetime => T::LifetimeDeadline,
            };
            let won = workspace_timer::Entity::update_many()
                .col_expr(T::IdleDeadline, Expr::value(none_at()))
                .col_expr(T::LifetimeDeadline, Expr::value(none_at()))
                .col_expr(
                    T::StopReason,
                    Expr::value(Some(timer.kind.reason().as_str().to_owned())),
                )
                .col_expr(T::StoppedAt, Expr::value(Some(at)))
                .col_expr(T::LifetimeNoticeAt, Expr::value(none_at()))
                .col_expr(T::LifetimeNoticedAt, Expr::value(none_at()))
                .filter(T::WorkspaceId.eq(timer.workspace_id))
                .filter(column.eq(tz(timer.deadline)))
                .exec(&txn)
                .await?;
            if won.rows_affected == 1 {
                claimed.push(*timer);
            }
        }
        // Of those, the ones still meant to run (locked until the commit).
        let mut running = std::collections::HashSet::new();
        for chunk in claimed.chunks(1000) {
            let ids: Vec<Uuid> = kube_workspace::Entity::find()
                .select_only()
                .column(W::Id)
                .filter(W::Id.is_in(chunk.iter().map(|t| t.workspace_id)))
                .filter(W::DesiredState.eq(DesiredState::Running.as_str()))
                .filter(W::DeletedAt.is_null())
                .lock_exclusive()
                .into_tuple()
                .all(&txn)
                .await?;
            running.extend(ids);
        }
        let stopping: Vec<Uuid> = running.iter().copied().collect();
        for chunk in stopping.chunks(1000) {
            kube_workspace::Entity::update_many()
                .col_expr(W::DesiredState, Expr::value(DesiredState::Stopped.as_str()))
                .col_expr(W::RepairAttempts, Expr::value(0))
                .col_expr(W::NextAttemptAt, Expr::value(none_at()))
                .col_expr(W::Version, Expr::col(W::Version).add(1))
                .col_expr(W::UpdatedAt, Expr::value(tz(now())))
                .filter(W::Id.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        // Stale deadlines (not meant to run any more) were only cleared.
        let mut stopped = std::collections::HashMap::new();
        for chunk in stopping.chunks(1000) {
            for m in kube_workspace::Entity::find()
                .filter(W::Id.is_in(chunk.iter().copied()))
                .all(&self.conn)
                .await?
            {
                let ws = crate::workspace::workspace_from_model(m)?;
                self.publish_workspace(Some(ws.status), &ws, false);
                stopped.insert(ws.id, ws);
            }
        }
        Ok(claimed
            .into_iter()
            .filter_map(|t| stopped.remove(&t.workspace_id).map(|ws| (t, ws)))
            .collect())
    }
}
