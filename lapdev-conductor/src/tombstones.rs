//! Forgetting workspaces whose cluster is unreachable or gone, and removing their
//! objects once the cluster's manager is back.
//!
//! `workspace delete --force` (and `cluster delete --force`, for every workspace of
//! the cluster) turns a workspace into a tombstone: deleted for its users at once
//! (name freed, reason `ClusterGone`), with `forgotten_at` set while its objects may
//! still exist in the cluster. Every reconcile round looks for clusters with
//! tombstones whose manager is connected and asks it to delete each tombstoned
//! workspace (`delete_workspace` is idempotent); a tombstone is cleared when the
//! manager answers `deleted`. A cluster that is itself deleted never connects
//! again (its tokens stop verifying), so its tombstones stay as a record of what
//! was left behind.

use lapdev_common::status::WorkspaceStatus;
use lapdev_db::Workspace;
use uuid::Uuid;

use crate::{Conductor, ConductorError};

impl Conductor {
    /// Forgets a workspace without its cluster's help. Refused (`InvalidArgument`)
    /// while the workspace's cluster is connected: then a normal delete works.
    pub async fn forget_workspace(
        &self,
        org_id: Uuid,
        workspace_id: Uuid,
    ) -> Result<Workspace, ConductorError> {
        let ws = self.inner.db.get_workspace(org_id, workspace_id).await?;
        if let Some(cluster) = ws.cluster_id {
            let cluster_live = self.inner.db.get_cluster(org_id, cluster).await.is_ok();
            if cluster_live && self.inner.connector.is_connected(cluster) {
                return Err(ConductorError::InvalidArgument(format!(
                    "the cluster of workspace {} is connected; delete it without --force",
                    ws.name
                )));
            }
        }
        let tomb = self
            .inner
            .db
            .forget_workspace(org_id, workspace_id, ws.version)
            .await?;
        tracing::info!(workspace_id = %ws.id, cluster_id = ?ws.cluster_id, "workspace forgotten");
        self.inner.wake.notify_one();
        Ok(tomb)
    }

    /// Forgets every live workspace on `cluster_id` (for `cluster delete
    /// --force`), whether or not the cluster is connected. Returns them.
    pub async fn forget_cluster_workspaces(
        &self,
        org_id: Uuid,
        cluster_id: Uuid,
    ) -> Result<Vec<Workspace>, ConductorError> {
        let mut forgotten = Vec::new();
        for ws in self
            .inner
            .db
            .list_cluster_workspaces(org_id, cluster_id)
            .await?
        {
            forgotten.push(
                self.inner
                    .db
                    .forget_workspace(org_id, ws.id, ws.version)
                    .await?,
            );
        }
        self.inner.wake.notify_one();
        Ok(forgotten)
    }

    /// Asks each connected cluster that has tombstones to delete their objects,
    /// and clears the tombstones it confirms. Returns how many were cleared.
    pub async fn clean_tombstones(&self) -> usize {
        let clusters = match self.inner.db.clusters_with_forgotten_workspaces().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list tombstones");
                return 0;
            }
        };
        let mut cleared = 0;
        for cluster in clusters {
            let Ok(manager) = self.manager(cluster) else {
                continue;
            };
            let Ok(tombs) = self.inner.db.list_forgotten_workspaces(cluster).await else {
                continue;
            };
            for tomb in tombs {
                match manager.delete_workspace(tomb.id).await {
                    Ok(obs) if obs.status == WorkspaceStatus::Deleted => {
                        if self.inner.db.clear_forgotten(tomb.id).await.is_ok() {
                            cleared += 1;
                            tracing::info!(workspace_id = %tomb.id, %cluster, "objects of a forgotten workspace removed");
                        }
                    }
                    Ok(obs) => {
                        tracing::debug!(workspace_id = %tomb.id, status = %obs.status, "still deleting a forgotten workspace");
                    }
                    Err(e) => {
                        tracing::warn!(workspace_id = %tomb.id, error = %e, "cannot delete a forgotten workspace's objects");
                    }
                }
            }
        }
        cleared
    }
}
