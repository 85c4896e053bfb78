//! The notice before a lifetime stop: some time before a workspace's lifetime
//! deadline (`workspace_policy.lifetime_notice_secs`, default
//! [`DEFAULT_LIFETIME_NOTICE_SECS`](crate::timers::DEFAULT_LIFETIME_NOTICE_SECS))
//! it is told when it will stop, and that keep-alive cannot help.
//!
//! When the notice is due is armed with the lifetime deadline
//! (`workspace_timer.lifetime_notice_at`, see `timers.rs`) and cleared with
//! it. The sweep reads due notices through their index
//! ([`Db::due_lifetime_notices`]) and gives each once
//! ([`Db::give_lifetime_notice`]: conditional on the time it read, like the
//! stops), which records `lifetime_noticed_at` (what `workspace get` shows)
//! and publishes the workspace on the change feed with reason
//! `LifetimeEnding` (what the dashboard's live updates carry).

use chrono::{DateTime, SubsecRound, Utc};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::DesiredState;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use crate::changes::{Change, WorkspaceChange};
use crate::db::Db;
use crate::entities::workspace_timer;
use crate::error::DbResult;
use crate::timers::{WorkspacePolicy, WorkspaceTimer, none_at};
use crate::util::{tz, utc};
use crate::workspace::Workspace;

/// A notice that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueNotice {
    /// The workspace.
    pub workspace_id: Uuid,
    /// Its organisation.
    pub organization_id: Uuid,
    /// When the notice was due, as read (it is given only while unchanged).
    pub notice_at: DateTime<Utc>,
}

/// The notice a workspace whose lifetime ends at `deadline` gets, e.g.
/// "stops at 17:45 UTC (lifetime 8 h); …".
pub fn lifetime_notice(deadline: DateTime<Utc>, max_lifetime_secs: Option<i64>) -> String {
    let lifetime = match max_lifetime_secs {
        Some(s) if s % 3600 == 0 => format!(" (lifetime {} h)", s / 3600),
        Some(s) if s % 60 == 0 => format!(" (lifetime {} min)", s / 60),
        Some(s) => format!(" (lifetime {s} s)"),
        None => String::new(),
    };
    format!(
        "stops at {} UTC{lifetime}; `lapdev workspace keep-alive` cannot extend a lifetime: \
         stop and start it for a new one",
        deadline.format("%H:%M")
    )
}

impl WorkspaceTimer {
    /// The notice it was given before its lifetime stop, if it was.
    pub fn lifetime_notice(&self, policy: &WorkspacePolicy) -> Option<String> {
        self.lifetime_noticed_at?;
        Some(lifetime_notice(
            self.lifetime_deadline?,
            policy.max_lifetime_secs,
        ))
    }
}

impl Db {
    /// Notices due at or before `now`, earliest first, at most `limit`.
    pub async fn due_lifetime_notices(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> DbResult<Vec<DueNotice>> {
        use workspace_timer::Column as T;
        let rows: Vec<(Uuid, Uuid, Option<sea_orm::prelude::DateTimeWithTimeZone>)> =
            workspace_timer::Entity::find()
                .select_only()
                .column(T::WorkspaceId)
                .column(T::OrganizationId)
                .column(T::LifetimeNoticeAt)
                .filter(T::LifetimeNoticeAt.lte(tz(now)))
                .order_by_asc(T::LifetimeNoticeAt)
                .limit(limit)
                .into_tuple()
                .all(&self.conn)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(workspace_id, organization_id, at)| {
                Some(DueNotice {
                    workspace_id,
                    organization_id,
                    notice_at: utc(at?),
                })
            })
            .collect())
    }

    /// Gives the due notice once: records it at `at` (only if it is still
    /// due as read) and publishes the workspace with reason `LifetimeEnding`.
    /// Returns the workspace and its lifetime deadline, or `None` when
    /// someone else gave it, or the workspace stopped meanwhile.
    pub async fn give_lifetime_notice(
        &self,
        due: &DueNotice,
        at: DateTime<Utc>,
    ) -> DbResult<Option<(Workspace, DateTime<Utc>)>> {
        use workspace_timer::Column as T;
        let given = workspace_timer::Entity::update_many()
            .col_expr(T::LifetimeNoticeAt, Expr::value(none_at()))
            .col_expr(
                T::LifetimeNoticedAt,
                Expr::value(Some(tz(at.trunc_subsecs(6)))),
            )
            .filter(T::WorkspaceId.eq(due.workspace_id))
            .filter(T::LifetimeNoticeAt.eq(tz(due.notice_at)))
            .filter(T::LifetimeDeadline.is_not_null())
            .exec(&self.conn)
            .await?;
        if given.rows_affected == 0 {
            return Ok(None);
        }
        let Some(timer) = self
            .workspace_timer(due.organization_id, due.workspace_id)
            .await?
        else {
            return Ok(None);
        };
        let (Some(deadline), Ok(ws)) = (
            timer.lifetime_deadline,
            self.get_workspace(due.organization_id, due.workspace_id)
                .await,
        ) else {
            return Ok(None);
        };
        if ws.desired_state != DesiredState::Running {
            return Ok(None);
        }
        self.changes.publish(Change::Workspace(WorkspaceChange {
            organization_id: ws.organization_id,
            workspace_id: ws.id,
            cluster_id: ws.cluster_id,
            previous_status: Some(ws.status),
            status: ws.status,
            reason: Some(WorkspaceReason::LifetimeEnding),
            repair: false,
            due: false,
        }));
        Ok(Some((ws, deadline)))
    }
}
