//! The home-volume grace period on the conductor's side (the rules and the
//! state are `lapdev_db`'s `retention.rs`).
//!
//! Deleting a workspace that has a volume deletes its pod through the
//! manager's `delete_workspace_keeping_volume` and soft-deletes the row with
//! the retention window recorded. [`VolumePurger::purge_once`] then deletes
//! the volumes whose window has ended (`purge_workspace_volume`) and records
//! it in the row.
//!
//! # Older managers
//!
//! Both methods came after the first release. A manager without them answers
//! `unimplemented`, and the conductor uses the method that leaves the same
//! objects: `stop_workspace` (pod gone, volume kept; its `stopped` answer
//! counts as done) and `delete_workspace` (both gone).

use chrono::{DateTime, Utc};
use lapdev_common::status::WorkspaceStatus;
use lapdev_db::{DbResult, DueVolumePurge, Workspace};
use lapdev_hrpc::{CallError, Code, HrpcError};
use lapdev_kube_rpc::{KeepVolume, KubeManagerRpcClient, WorkspaceObservation};

use crate::{Conductor, Failure, call_failure, describe};

fn unimplemented(e: &CallError<HrpcError>) -> bool {
    matches!(e, CallError::Service(h) if h.code == Code::Unimplemented)
}

/// Deletes the pod of `ws` and keeps its volume; the answer is `deleted` once
/// the pod is gone.
pub(crate) async fn delete_keeping_volume(
    conductor: &Conductor,
    manager: &KubeManagerRpcClient,
    ws: &Workspace,
) -> Result<WorkspaceObservation, Failure> {
    let retained_until = match conductor
        .inner
        .db
        .volume_retention_secs(ws.organization_id)
        .await
    {
        Ok(secs) => conductor
            .clock()
            .now()
            .checked_add_signed(chrono::Duration::seconds(secs)),
        Err(e) => return Err(Failure::new(e.to_string())),
    };
    let request = KeepVolume {
        workspace_id: ws.id,
        retained_until,
    };
    match manager.delete_workspace_keeping_volume(request).await {
        Err(e) if unimplemented(&e) => {
            tracing::debug!(workspace_id = %ws.id, "older manager: stopping instead (keeps the volume)");
            let mut obs = manager
                .stop_workspace(ws.id)
                .await
                .map_err(|e| call_failure(ws, e))?;
            if obs.status == WorkspaceStatus::Stopped {
                obs.status = WorkspaceStatus::Deleted;
            }
            Ok(obs)
        }
        other => other.map_err(|e| call_failure(ws, e)),
    }
}

/// What one [`VolumePurger::purge_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// Kept volumes deleted and recorded.
    pub purged: usize,
    /// Due volumes left for the next round: their cluster's manager is not
    /// connected, failed, or is still deleting.
    pub waiting: usize,
}

/// Deletes kept volumes whose retention window has ended. Cheap to clone.
#[derive(Clone)]
pub struct VolumePurger {
    conductor: Conductor,
    batch: u64,
}

impl std::fmt::Debug for VolumePurger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumePurger")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl VolumePurger {
    /// A purger of `conductor`'s kept volumes, reading `batch` due ones per
    /// round.
    pub fn new(conductor: Conductor, batch: u64) -> Self {
        Self {
            conductor,
            batch: batch.max(1),
        }
    }

    /// Deletes (at most one batch of) the due volumes.
    pub async fn purge_once(&self) -> DbResult<PurgeOutcome> {
        let db = &self.conductor.inner.db;
        let now = self.conductor.clock().now();
        let mut outcome = PurgeOutcome::default();
        for due in db.due_volume_purges(now, self.batch).await? {
            match self.purge(&due).await {
                Ok(at) => {
                    if db.mark_volume_purged(&due, at).await? {
                        outcome.purged += 1;
                        tracing::info!(workspace_id = %due.workspace_id, retained_until = %due.retained_until, "kept home volume deleted: its retention window ended");
                    }
                }
                Err(why) => {
                    outcome.waiting += 1;
                    tracing::debug!(workspace_id = %due.workspace_id, why, "kept home volume not deleted yet");
                }
            }
        }
        Ok(outcome)
    }

    /// Deletes one volume; `Ok(when)` once it is gone.
    async fn purge(&self, due: &DueVolumePurge) -> Result<DateTime<Utc>, String> {
        let Some(cluster) = due.cluster_id else {
            // Never placed: nothing of it exists anywhere.
            return Ok(self.conductor.clock().now());
        };
        let manager = self
            .conductor
            .manager(cluster)
            .map_err(|f| f.message.clone())?;
        let obs = match manager.purge_workspace_volume(due.workspace_id).await {
            Err(e) if unimplemented(&e) => manager.delete_workspace(due.workspace_id).await,
            other => other,
        }
        .map_err(describe)?;
        if obs.status == WorkspaceStatus::Deleted {
            Ok(self.conductor.clock().now())
        } else {
            Err(format!("the manager is still deleting ({})", obs.status))
        }
    }
}
