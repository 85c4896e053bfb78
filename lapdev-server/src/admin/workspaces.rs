//! `WorkspaceRpc`: the workspace half of the admin API (organisation-scoped),
//! on top of the conductor. Workspaces are addressed by name.
//!
//! Members see and act on their own workspaces only: another user's workspace
//! is `not_found` to them, exactly like one that does not exist. Admins and
//! owners see every workspace of the organisation.

use chrono::{DateTime, Utc};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::{DesiredState, WorkspaceStatus};
use lapdev_conductor::{Conductor, ConductorError, CreateWorkspace};
use lapdev_db::{Db, DbError, Workspace, WorkspacePolicy, WorkspaceTimer};
use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube::db_error;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Caller;
use crate::idle::api::TimerView;
use crate::jwt::AdminIdentity;

mod page;
pub use page::{PAGE_SIZE, WorkspacePage, WorkspacePageRequest};

/// A workspace as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceView {
    pub id: Uuid,
    pub name: String,
    /// The cluster's name, once placed.
    pub cluster: Option<String>,
    pub status: WorkspaceStatus,
    pub desired_state: DesiredState,
    /// Why it is in its status (e.g. the last failure), if anything.
    pub message: Option<String>,
    pub image: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub storage_bytes: i64,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why it is in its status, machine-readable (`Evicted`, `ImagePullFailing`,
    /// `CreateRefused`, `ClusterGone`, …); see `lapdev_common::reason`.
    #[serde(default)]
    pub reason: Option<WorkspaceReason>,
    /// Set while a force-deleted workspace's objects still wait for its cluster's
    /// manager to reconnect.
    #[serde(default)]
    pub forgotten_at: Option<DateTime<Utc>>,
    /// Its idle and lifetime timers (when it will be stopped), once it ran.
    #[serde(default)]
    pub timer: Option<TimerView>,
    /// Deleted with its home volume kept: the volume is deleted at this time
    /// unless the workspace is restored before (`workspace restore`).
    #[serde(default)]
    pub volume_kept_until: Option<DateTime<Utc>>,
    /// When its kept home volume was deleted (the retention window ended).
    #[serde(default)]
    pub volume_deleted_at: Option<DateTime<Utc>>,
}

/// What `create_workspace` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewWorkspaceRequest {
    pub name: String,
    pub image: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub storage_bytes: i64,
    /// Only this cluster (by name).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Only clusters in this region.
    #[serde(default)]
    pub region: Option<String>,
}

/// Workspaces of the caller's organisation.
#[lapdev_hrpc::service]
pub trait WorkspaceRpc {
    /// Creates a workspace and places it on a cluster; it then starts in the
    /// background (watch `get_workspace`). Fails at once, saying why in numbers,
    /// when no cluster can take it.
    #[hrpc(role = "member")]
    async fn create_workspace(
        &self,
        ctx: Context,
        workspace: NewWorkspaceRequest,
    ) -> Result<WorkspaceView, HrpcError>;

    /// The organisation's workspaces, by name.
    #[hrpc(role = "member")]
    async fn list_workspaces(
        &self,
        ctx: Context,
        include_deleted: bool,
    ) -> Result<Vec<WorkspaceView>, HrpcError>;

    /// One page of the live workspaces, by name (the dashboard's list): at
    /// most `limit` (default and cap [`PAGE_SIZE`]) after or before a name,
    /// with the names that start the next and previous pages.
    #[hrpc(role = "member")]
    async fn list_workspaces_page(
        &self,
        ctx: Context,
        page: WorkspacePageRequest,
    ) -> Result<WorkspacePage, HrpcError>;

    /// One workspace by name (a deleted one too, so its end can be seen).
    #[hrpc(role = "member")]
    async fn get_workspace(&self, ctx: Context, name: String) -> Result<WorkspaceView, HrpcError>;

    /// Asks for the workspace to be stopped (its volume is kept).
    #[hrpc(role = "member")]
    async fn stop_workspace(&self, ctx: Context, name: String) -> Result<WorkspaceView, HrpcError>;

    /// Asks for a stopped workspace to run again.
    #[hrpc(role = "member")]
    async fn start_workspace(&self, ctx: Context, name: String)
    -> Result<WorkspaceView, HrpcError>;

    /// Asks for the workspace and everything it owns to be deleted.
    #[hrpc(role = "member")]
    async fn delete_workspace(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<WorkspaceView, HrpcError>;

    /// Brings a deleted workspace back, stopped, with the home volume kept
    /// for it (`workspace restore NAME [--as NEW_NAME]`); start it to run it on
    /// that volume. `not_found` when no deleted workspace has the name;
    /// `failed_precondition` saying why when its volume was not kept, its
    /// retention window ended, or a live workspace took the name (then
    /// `new_name` brings it back under another).
    #[hrpc(role = "member")]
    async fn restore_workspace(
        &self,
        ctx: Context,
        name: String,
        new_name: Option<String>,
    ) -> Result<WorkspaceView, HrpcError>;

    /// Forgets a workspace whose cluster is disconnected or deleted (`workspace
    /// delete --force`): it is deleted for its users at once, reason
    /// `ClusterGone`, and its objects are removed when the cluster's manager
    /// reconnects. Refused (`invalid_argument`) while the cluster is connected.
    #[hrpc(role = "member")]
    async fn forget_workspace(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<WorkspaceView, HrpcError>;
}

/// The implementation of [`WorkspaceRpc`].
#[derive(Clone)]
pub struct WorkspaceService {
    db: Db,
    conductor: Conductor,
}

impl std::fmt::Debug for WorkspaceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceService").finish_non_exhaustive()
    }
}

impl WorkspaceService {
    /// A service on the database and the conductor.
    pub fn new(db: Db, conductor: Conductor) -> Self {
        Self { db, conductor }
    }

    async fn view(&self, who: AdminIdentity, ws: Workspace) -> Result<WorkspaceView, HrpcError> {
        let timer = self
            .db
            .workspace_timer(who.organization_id, ws.id)
            .await
            .map_err(db_error)?;
        let policy = self
            .db
            .workspace_policy(who.organization_id)
            .await
            .map_err(db_error)?;
        self.view_with(who, ws, timer, &policy).await
    }

    /// The organisation's workspace timers (by workspace) and its policy.
    async fn timers_and_policy(
        &self,
        org: Uuid,
    ) -> Result<
        (
            std::collections::HashMap<Uuid, WorkspaceTimer>,
            WorkspacePolicy,
        ),
        HrpcError,
    > {
        let timers = self.db.workspace_timers(org).await.map_err(db_error)?;
        let policy = self.db.workspace_policy(org).await.map_err(db_error)?;
        Ok((timers, policy))
    }

    async fn view_with(
        &self,
        who: AdminIdentity,
        ws: Workspace,
        timer: Option<WorkspaceTimer>,
        policy: &WorkspacePolicy,
    ) -> Result<WorkspaceView, HrpcError> {
        let cluster = match ws.cluster_id {
            Some(id) => self
                .db
                .get_cluster(who.organization_id, id)
                .await
                .ok()
                .map(|c| c.name),
            None => None,
        };
        Ok(view_named(ws, timer, policy, cluster))
    }

    /// Why `name` cannot be restored when no deleted workspace has it: one
    /// being deleted is not deleted yet (its pod is still going), a live one
    /// is not deleted at all.
    async fn not_restorable(&self, ctx: &Context, organization_id: Uuid, name: &str) -> HrpcError {
        let live = self.db.get_workspace_by_name(organization_id, name).await;
        match live.ok().and_then(|ws| visible(ctx, ws, name).ok()) {
            Some(ws) if ws.desired_state == DesiredState::Deleted => {
                HrpcError::failed_precondition(format!(
                    "workspace {name:?} is still being deleted ({}): restore it once `lapdev workspace get {name}` says deleted",
                    ws.status
                ))
            }
            Some(ws) => HrpcError::failed_precondition(format!(
                "workspace {name:?} is not deleted (it is {})",
                ws.status
            )),
            None => HrpcError::not_found(format!("no deleted workspace is named {name:?}")),
        }
    }

    async fn desire(
        &self,
        ctx: &Context,
        name: &str,
        desired: DesiredState,
    ) -> Result<WorkspaceView, HrpcError> {
        let who = who(ctx)?;
        let ws = self
            .db
            .get_workspace_by_name(who.organization_id, name)
            .await
            .map_err(db_error)?;
        let ws = visible(ctx, ws, name)?;
        let ws = self
            .conductor
            .set_desired_state(who.organization_id, ws.id, desired)
            .await
            .inspect_err(count_quota_refusal)?;
        self.view(who, ws).await
    }
}

/// Checks what the conductor would refuse, naming the request field in
/// `details.field` (so a form can show the error beside its control).
fn check_request(w: &NewWorkspaceRequest) -> Result<(), HrpcError> {
    let bad = |field: &str, message: &str| {
        Err(HrpcError::invalid_argument(message)
            .with_details(serde_json::json!({ "field": field })))
    };
    if w.image.trim().is_empty() {
        return bad("workspace.image", "the image must not be empty");
    }
    if w.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("workspace.image", "the image must not contain whitespace");
    }
    for (field, value, what) in [
        ("workspace.cpu_millis", w.cpu_millis, "cpu"),
        ("workspace.memory_bytes", w.memory_bytes, "memory"),
        ("workspace.storage_bytes", w.storage_bytes, "storage"),
    ] {
        if value <= 0 {
            return bad(field, &format!("{what} must be more than 0"));
        }
    }
    Ok(())
}

/// A workspace's view once its cluster's name is known.
fn view_named(
    ws: Workspace,
    timer: Option<WorkspaceTimer>,
    policy: &WorkspacePolicy,
    cluster: Option<String>,
) -> WorkspaceView {
    // The server's own stop (idle, lifetime) is the latest word until the
    // workspace is started again or a cluster gives a reason of its own.
    let (mut reason, mut message) = (ws.status_reason, ws.status_message);
    if let Some(t) = &timer
        && let (Some(why), Some(at)) = (&t.stop_reason, t.stopped_at)
        && reason.is_none()
    {
        message = Some(format!(
            "{why}: stopped by the server at {}",
            lapdev_common::time::at(at)
        ));
        reason = Some(why.clone());
    }
    // The notice before a lifetime stop, while it still runs.
    if reason.is_none()
        && ws.status == WorkspaceStatus::Running
        && let Some(notice) = timer.as_ref().and_then(|t| t.lifetime_notice(policy))
    {
        message = Some(notice);
        reason = Some(WorkspaceReason::LifetimeEnding);
    }
    let kept = timer.as_ref().and_then(|t| t.volume_retained_until);
    let purged = timer.as_ref().and_then(|t| t.volume_deleted_at);
    if let (Some(until), None, Some(_)) = (kept, purged, ws.deleted_at) {
        message = Some(format!(
            "deleted; its home volume is kept until {} (`lapdev workspace restore {}`)",
            lapdev_common::time::at(until),
            ws.name
        ));
    }
    WorkspaceView {
        id: ws.id,
        name: ws.name,
        cluster,
        status: ws.status,
        desired_state: ws.desired_state,
        message,
        image: ws.image,
        cpu_millis: ws.cpu_millis,
        memory_bytes: ws.memory_bytes,
        storage_bytes: ws.storage_bytes,
        created_at: ws.created_at,
        pod_name: ws.pod_name,
        deleted_at: ws.deleted_at,
        reason,
        forgotten_at: ws.forgotten_at,
        timer: timer.map(|t| TimerView::new(&t, policy)),
        volume_kept_until: kept.filter(|_| purged.is_none()),
        volume_deleted_at: purged,
    }
}

/// The owner a caller is restricted to: `None` for admins and owners. Without a
/// [`Caller`] (the authorization layer did not run) the caller sees only their own.
fn only_owner(ctx: &Context) -> Result<Option<Uuid>, HrpcError> {
    match ctx.extension::<Caller>() {
        Some(c) if c.sees_all_workspaces() => Ok(None),
        Some(c) => Ok(Some(c.user_id)),
        None => Ok(Some(who(ctx)?.user_id)),
    }
}

fn count_quota_refusal(e: &ConductorError) {
    if let ConductorError::Db(DbError::QuotaExceeded(q)) = e {
        crate::quota::count_refusal(q);
    }
}

/// `ws` if the caller may see it, else `not_found` (never `permission_denied`,
/// which would confirm that the name exists).
pub(crate) fn visible(ctx: &Context, ws: Workspace, name: &str) -> Result<Workspace, HrpcError> {
    match only_owner(ctx)? {
        Some(owner) if ws.owner_id != owner => Err(HrpcError::not_found(format!(
            "workspace {name:?} not found"
        ))),
        _ => Ok(ws),
    }
}

pub(crate) fn who(ctx: &Context) -> Result<AdminIdentity, HrpcError> {
    ctx.extension::<AdminIdentity>()
        .copied()
        .ok_or_else(|| HrpcError::unauthenticated("no admin identity on this request"))
}

impl WorkspaceRpc for WorkspaceService {
    async fn create_workspace(
        &self,
        ctx: Context,
        workspace: NewWorkspaceRequest,
    ) -> Result<WorkspaceView, HrpcError> {
        let who = who(&ctx)?;
        crate::check_name(
            "workspace.name",
            lapdev_common::name::NameKind::Workspace,
            &workspace.name,
        )?;
        check_request(&workspace)?;
        let ws = self
            .conductor
            .create_workspace(
                who.organization_id,
                who.user_id,
                CreateWorkspace {
                    name: workspace.name,
                    image: workspace.image,
                    cpu_millis: workspace.cpu_millis,
                    memory_bytes: workspace.memory_bytes,
                    storage_bytes: workspace.storage_bytes,
                    cluster: workspace.cluster,
                    region: workspace.region,
                },
            )
            .await
            .inspect_err(count_quota_refusal)?;
        self.view(who, ws).await
    }

    async fn list_workspaces(
        &self,
        ctx: Context,
        include_deleted: bool,
    ) -> Result<Vec<WorkspaceView>, HrpcError> {
        let who = who(&ctx)?;
        let list = if include_deleted {
            self.db
                .list_workspaces_including_deleted(who.organization_id)
                .await
        } else {
            self.db.list_workspaces(who.organization_id).await
        }
        .map_err(db_error)?;
        let owner = only_owner(&ctx)?;
        let (mut timers, policy) = self.timers_and_policy(who.organization_id).await?;
        let mut views = Vec::with_capacity(list.len());
        for ws in list
            .into_iter()
            .filter(|w| owner.is_none_or(|o| w.owner_id == o))
        {
            let timer = timers.remove(&ws.id);
            views.push(self.view_with(who, ws, timer, &policy).await?);
        }
        Ok(views)
    }

    async fn list_workspaces_page(
        &self,
        ctx: Context,
        page: WorkspacePageRequest,
    ) -> Result<WorkspacePage, HrpcError> {
        self.page(&ctx, page).await
    }

    async fn get_workspace(&self, ctx: Context, name: String) -> Result<WorkspaceView, HrpcError> {
        let who = who(&ctx)?;
        let ws = self
            .db
            .find_workspace_by_name_including_deleted(who.organization_id, &name)
            .await
            .map_err(db_error)?;
        let ws = visible(&ctx, ws, &name)?;
        self.view(who, ws).await
    }

    async fn stop_workspace(&self, ctx: Context, name: String) -> Result<WorkspaceView, HrpcError> {
        self.desire(&ctx, &name, DesiredState::Stopped).await
    }

    async fn start_workspace(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<WorkspaceView, HrpcError> {
        self.desire(&ctx, &name, DesiredState::Running).await
    }

    async fn delete_workspace(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<WorkspaceView, HrpcError> {
        self.desire(&ctx, &name, DesiredState::Deleted).await
    }

    async fn restore_workspace(
        &self,
        ctx: Context,
        name: String,
        new_name: Option<String>,
    ) -> Result<WorkspaceView, HrpcError> {
        let who = who(&ctx)?;
        if let Some(n) = &new_name {
            crate::check_name("new_name", lapdev_common::name::NameKind::Workspace, n)?;
        }
        let ws = match self
            .db
            .find_deleted_workspace_by_name(who.organization_id, &name)
            .await
        {
            Ok(ws) => ws,
            Err(DbError::NotFound { .. }) => {
                return Err(self.not_restorable(&ctx, who.organization_id, &name).await);
            }
            Err(other) => return Err(db_error(other)),
        };
        let ws = visible(&ctx, ws, &name)?;
        let restored = self
            .db
            .restore_workspace(
                who.organization_id,
                ws.id,
                new_name.as_deref(),
                self.conductor.clock().now(),
            )
            .await
            .map_err(|e| {
                if let DbError::QuotaExceeded(q) = &e {
                    crate::quota::count_refusal(q);
                }
                db_error(e)
            })?;
        self.conductor.wake();
        self.view(who, restored).await
    }

    async fn forget_workspace(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<WorkspaceView, HrpcError> {
        let who = who(&ctx)?;
        let ws = self
            .db
            .get_workspace_by_name(who.organization_id, &name)
            .await
            .map_err(db_error)?;
        let ws = visible(&ctx, ws, &name)?;
        let tomb = self
            .conductor
            .forget_workspace(who.organization_id, ws.id)
            .await?;
        self.view(who, tomb).await
    }
}
