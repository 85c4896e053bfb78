//! A command's reply against the manager's reports: the observation a
//! `create_workspace` reply carries can reach the conductor after a newer
//! report of the same workspace was applied; the older one must not undo it.

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{Mode, env};
use lapdev_common::kube::{KubeClusterInfo, WorkspaceSpec};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::WorkspaceStatus;
use lapdev_db::{Db, WorkspaceTransition};
use lapdev_hrpc::{Code, HrpcError};
use lapdev_kube_rpc::{KubeManagerRpc, WorkspaceObservation};
use uuid::Uuid;

/// A manager whose report of a workspace overtakes its reply to the create:
/// it answers `creating` as seen at `answered_at`, and before the reply
/// arrives the server has applied its later report (`failed`,
/// `InvalidImage`, seen `report_after` later).
struct Overtaken {
    db: Db,
    org: Uuid,
    report_after: Duration,
}

impl Overtaken {
    async fn answer(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let answered_at = Utc::now();
        let current = self.db.get_workspace(self.org, id).await.unwrap();
        // The report, applied as the server applies one (its time recorded).
        self.db
            .transition_workspace(
                self.org,
                id,
                current.version,
                WorkspaceTransition::to(WorkspaceStatus::Failed)
                    .message("invalid image reference")
                    .reason(Some(WorkspaceReason::InvalidImage))
                    .observed_at(answered_at + self.report_after),
            )
            .await
            .unwrap();
        Ok(observation(id, WorkspaceStatus::Creating, answered_at))
    }
}

fn observation(id: Uuid, status: WorkspaceStatus, at: DateTime<Utc>) -> WorkspaceObservation {
    WorkspaceObservation {
        workspace_id: id,
        status,
        reason: None,
        message: None,
        pod_name: Some(format!("ws-{id}")),
        node_name: None,
        observed_at: at,
    }
}

impl KubeManagerRpc for Overtaken {
    async fn create_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError> {
        self.answer(spec.workspace_id).await
    }
    async fn start_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError> {
        self.answer(spec.workspace_id).await
    }
    async fn stop_workspace(&self, _: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "not in this stand-in"))
    }
    async fn delete_workspace(&self, _: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "not in this stand-in"))
    }
    async fn get_workspace_status(&self, _: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "not in this stand-in"))
    }
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceObservation>, HrpcError> {
        Ok(vec![])
    }
    async fn get_cluster_info(&self) -> Result<KubeClusterInfo, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "not in this stand-in"))
    }
    async fn delete_workspace_keeping_volume(
        &self,
        _: lapdev_kube_rpc::KeepVolume,
    ) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "not in this stand-in"))
    }
    async fn purge_workspace_volume(&self, _: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "not in this stand-in"))
    }
}

/// Creates a workspace on a cluster served by an `Overtaken` manager and lets
/// the reconciler call `create_workspace` once.
async fn create_overtaken(report_after: Duration) -> (common::Env, lapdev_db::Workspace) {
    let e = env().await;
    let (cluster, _) = e.cluster("c", 8000, 32, "europe-west1", Mode::Normal).await;
    e.connector.connect(
        cluster,
        Arc::new(Overtaken {
            db: e.db.clone(),
            org: e.org,
            report_after,
        }),
    );
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w", 1000, 1))
        .await
        .unwrap();
    assert_eq!(ws.cluster_id, Some(cluster));
    e.conductor.reconcile_once().await;
    let after = e.get(ws.id).await;
    (e, after)
}

#[tokio::test]
async fn an_older_reply_does_not_undo_a_newer_report() {
    let (_e, ws) = create_overtaken(Duration::seconds(1)).await;
    assert_eq!(ws.status, WorkspaceStatus::Failed, "{ws:?}");
    assert_eq!(ws.status_reason, Some(WorkspaceReason::InvalidImage));
    assert_eq!(
        ws.status_message.as_deref(),
        Some("invalid image reference")
    );
    assert!(ws.observed_at.is_some());
    // What only the reply says still counts: the volume exists, so the
    // workspace is never placed on another cluster.
    assert!(ws.volume_created);
}

#[tokio::test]
async fn a_reply_as_new_as_the_report_is_applied() {
    // Ties apply: the reply's observation is as recent as the report's.
    let (_e, ws) = create_overtaken(Duration::zero()).await;
    assert_eq!(ws.status, WorkspaceStatus::Creating, "{ws:?}");
    assert_eq!(ws.status_reason, None);
    assert_eq!(ws.pod_name, Some(format!("ws-{}", ws.id)));
}
