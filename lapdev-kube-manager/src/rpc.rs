//! The `KubeManagerRpc` implementation: the server's commands, served down the
//! reverse tunnel by the generated router
//! (`KubeManagerRpcServer::from_arc(rpc).into_router()`).

use std::sync::Arc;
use std::time::Instant;

use lapdev_common::kube::{KubeClusterInfo, WorkspaceSpec};
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::{KeepVolume, KubeManagerRpc, WorkspaceObservation};
use uuid::Uuid;

use crate::tracker::Tracker;
use crate::workspace::Workspaces;

/// Runs commands with [`Workspaces`] and answers reads from the [`Tracker`].
#[derive(Clone)]
pub struct ManagerRpc {
    workspaces: Workspaces,
    tracker: Arc<Tracker>,
}

impl ManagerRpc {
    /// The implementation over `workspaces` and `tracker`.
    pub fn new(workspaces: Workspaces, tracker: Arc<Tracker>) -> Self {
        Self {
            workspaces,
            tracker,
        }
    }

    /// Routes for the tunnel.
    pub fn into_router(self) -> axum::Router {
        lapdev_kube_rpc::KubeManagerRpcServer::new(self).into_router()
    }
}

/// Logs and counts a command's outcome.
fn record<T>(
    method: &'static str,
    id: Option<Uuid>,
    started: Instant,
    result: Result<T, HrpcError>,
) -> Result<T, HrpcError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    metrics::counter!("lapdev_manager_commands_total", "method" => method, "outcome" => outcome)
        .increment(1);
    match &result {
        Ok(_) => {
            tracing::info!(method, workspace_id = ?id, elapsed_ms = started.elapsed().as_millis() as u64, "command done")
        }
        Err(e) => {
            tracing::warn!(method, workspace_id = ?id, code = e.code.as_str(), error = %e.message, "command failed")
        }
    }
    result
}

impl KubeManagerRpc for ManagerRpc {
    async fn create_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError> {
        let started = Instant::now();
        let id = spec.workspace_id;
        record(
            "create_workspace",
            Some(id),
            started,
            self.workspaces.apply(&spec).await,
        )
    }

    async fn start_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError> {
        let started = Instant::now();
        let id = spec.workspace_id;
        record(
            "start_workspace",
            Some(id),
            started,
            self.workspaces.apply(&spec).await,
        )
    }

    async fn stop_workspace(&self, workspace_id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let started = Instant::now();
        record(
            "stop_workspace",
            Some(workspace_id),
            started,
            self.workspaces.stop(workspace_id).await,
        )
    }

    async fn delete_workspace(
        &self,
        workspace_id: Uuid,
    ) -> Result<WorkspaceObservation, HrpcError> {
        let started = Instant::now();
        record(
            "delete_workspace",
            Some(workspace_id),
            started,
            self.workspaces.delete(workspace_id).await,
        )
    }

    async fn delete_workspace_keeping_volume(
        &self,
        request: KeepVolume,
    ) -> Result<WorkspaceObservation, HrpcError> {
        let started = Instant::now();
        let id = request.workspace_id;
        tracing::info!(workspace_id = %id, retained_until = ?request.retained_until, "deleting the pod; the home volume is kept");
        record(
            "delete_workspace_keeping_volume",
            Some(id),
            started,
            self.workspaces.delete_keeping_volume(id).await,
        )
    }

    async fn purge_workspace_volume(
        &self,
        workspace_id: Uuid,
    ) -> Result<WorkspaceObservation, HrpcError> {
        let started = Instant::now();
        record(
            "purge_workspace_volume",
            Some(workspace_id),
            started,
            self.workspaces.delete(workspace_id).await,
        )
    }

    async fn get_workspace_status(
        &self,
        workspace_id: Uuid,
    ) -> Result<WorkspaceObservation, HrpcError> {
        self.workspaces.status(workspace_id).await
    }

    async fn list_workspaces(&self) -> Result<Vec<WorkspaceObservation>, HrpcError> {
        if !*self.tracker.synced().borrow() {
            return Err(HrpcError::unavailable(
                "the manager has not listed the workspaces yet (is the Kubernetes API reachable?)",
            ));
        }
        Ok(self.tracker.list())
    }

    async fn get_cluster_info(&self) -> Result<KubeClusterInfo, HrpcError> {
        self.tracker.info().borrow().clone().ok_or_else(|| {
            HrpcError::unavailable(
                "the manager has not read the nodes yet (is the Kubernetes API reachable?)",
            )
        })
    }
}
