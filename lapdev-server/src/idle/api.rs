//! `WorkspaceTimerRpc`: the organisation's idle, lifetime and retention policy
//! (owners set it, everyone reads it) and `lapdev workspace keep-alive`.

use chrono::{DateTime, Utc};
use lapdev_common::reason::WorkspaceReason;
use lapdev_conductor::backoff::Clock;
use lapdev_db::{Db, WorkspacePolicy, WorkspaceTimer};
use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube::db_error;
use serde::{Deserialize, Serialize};

use crate::admin::workspaces::{visible, who};

/// A workspace's timers as the API shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerView {
    /// Its own idle timeout, if it set one.
    pub idle_timeout_secs: Option<i64>,
    /// The idle timeout that applies (its own, else the organisation's).
    pub effective_idle_timeout_secs: Option<i64>,
    /// When it was last started or used.
    pub last_active_at: Option<DateTime<Utc>>,
    /// When it will be stopped if nothing changes.
    pub stops_at: Option<DateTime<Utc>>,
    /// Why it will be stopped then (`IdleStopped`, `LifetimeExpired`).
    pub stops_for: Option<WorkspaceReason>,
}

impl TimerView {
    /// The view of `timer` under `policy`.
    pub fn new(timer: &WorkspaceTimer, policy: &WorkspacePolicy) -> Self {
        let next = timer.next_stop();
        TimerView {
            idle_timeout_secs: timer.idle_timeout_secs,
            effective_idle_timeout_secs: policy.idle_timeout(timer.idle_timeout_secs),
            last_active_at: timer.last_active_at,
            stops_at: next.as_ref().map(|(at, _)| *at),
            stops_for: next.map(|(_, why)| why),
        }
    }
}

/// Idle auto-stop, lifetimes and volume retention.
#[lapdev_hrpc::service]
pub trait WorkspaceTimerRpc {
    /// The organisation's policy (`null`: the built-in default).
    #[hrpc(role = "member")]
    async fn get_workspace_policy(&self, ctx: Context) -> Result<WorkspacePolicy, HrpcError>;

    /// Sets the organisation's policy; applies from each workspace's next start.
    #[hrpc(role = "owner")]
    async fn set_workspace_policy(
        &self,
        ctx: Context,
        policy: WorkspacePolicy,
    ) -> Result<WorkspacePolicy, HrpcError>;

    /// Restarts a running workspace's idle timeout from now, optionally
    /// setting its own timeout first (at most the organisation's maximum).
    /// The lifetime is not extended.
    #[hrpc(role = "member")]
    async fn keep_alive_workspace(
        &self,
        ctx: Context,
        name: String,
        idle_timeout_secs: Option<i64>,
    ) -> Result<TimerView, HrpcError>;
}

/// The implementation of [`WorkspaceTimerRpc`].
#[derive(Debug, Clone)]
pub struct WorkspaceTimerService {
    db: Db,
    clock: Clock,
}

impl WorkspaceTimerService {
    /// A service on `db`, reading the time from `clock`.
    pub fn new(db: Db, clock: Clock) -> Self {
        Self { db, clock }
    }
}

impl WorkspaceTimerRpc for WorkspaceTimerService {
    async fn get_workspace_policy(&self, ctx: Context) -> Result<WorkspacePolicy, HrpcError> {
        let who = who(&ctx)?;
        self.db
            .workspace_policy(who.organization_id)
            .await
            .map_err(db_error)
    }

    async fn set_workspace_policy(
        &self,
        ctx: Context,
        policy: WorkspacePolicy,
    ) -> Result<WorkspacePolicy, HrpcError> {
        let who = who(&ctx)?;
        self.db
            .set_workspace_policy(who.organization_id, policy)
            .await
            .map_err(db_error)?;
        Ok(policy)
    }

    async fn keep_alive_workspace(
        &self,
        ctx: Context,
        name: String,
        idle_timeout_secs: Option<i64>,
    ) -> Result<TimerView, HrpcError> {
        let who = who(&ctx)?;
        let org = who.organization_id;
        let ws = self
            .db
            .get_workspace_by_name(org, &name)
            .await
            .map_err(db_error)?;
        let ws = visible(&ctx, ws, &name)?;
        let timer = self
            .db
            .keep_alive_workspace(org, ws.id, idle_timeout_secs, self.clock.now())
            .await
            .map_err(db_error)?;
        let policy = self.db.workspace_policy(org).await.map_err(db_error)?;
        Ok(TimerView::new(&timer, &policy))
    }
}
