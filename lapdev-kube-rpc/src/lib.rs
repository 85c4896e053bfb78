//! The HRPC service traits spoken between the Lapdev server and its in-cluster
//! managers, and the messages they carry. Nothing else lives here: no I/O, no
//! implementations.
//!
//! - [`KubeClusterRpc`]: the server implements it, managers call it over HTTP
//!   (`POST {server}/rpc/KubeClusterRpc/{method}`) with their cluster token in the
//!   `x-lapdev-cluster-token` header. Which cluster is calling comes from that
//!   token only, never from a message.
//! - [`KubeManagerRpc`]: managers implement it; the server calls it down the
//!   reverse tunnel the manager opened (`lapdev_hrpc::tunnel`).
//! - [`stream`]: the streaming contract beside the RPCs (exec and port-forward
//!   sessions the server opens on a manager): requests, routes and the exec
//!   frame codec (pure: bytes in, frames out).
//!
//! # Compatibility
//!
//! Managers in the field and the server are upgraded at different times, so
//! messages only evolve compatibly: a new field always has a default
//! (`#[serde(default)]`, usually an `Option` or an empty collection), receivers
//! ignore fields they do not know, and fields are never renamed or removed within
//! a protocol version. A method that a peer lacks answers `404 unimplemented`,
//! which callers treat as "older peer".

pub mod stream;

use chrono::{DateTime, Utc};
use lapdev_common::kube::{KubeClusterInfo, WorkspaceSpec};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::WorkspaceStatus;
use lapdev_hrpc::{Context, HrpcError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How the manager is doing, carried by every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ManagerHealth {
    /// Everything works.
    Ok,
    /// The manager runs but something it needs does not (e.g. the Kubernetes API).
    Degraded {
        /// What is wrong, for people.
        reason: String,
    },
}

/// The server's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Seconds until the server expects the next heartbeat. The server marks the
    /// cluster disconnected after three missed intervals.
    pub interval_secs: u32,
}

/// A workspace as the manager observes it in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceObservation {
    /// Which workspace.
    pub workspace_id: Uuid,
    /// Its observed status.
    pub status: WorkspaceStatus,
    /// Why the workspace is in this status, machine-readable (e.g. `Evicted`);
    /// managers before reasons existed send none.
    #[serde(default)]
    pub reason: Option<WorkspaceReason>,
    /// What happened, for people. Normalised by the manager so that the kubelet's
    /// retries (growing back-off durations) do not make a new message.
    #[serde(default)]
    pub message: Option<String>,
    /// The pod's name, when a pod exists.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// The node the pod is bound to, when it is bound.
    #[serde(default)]
    pub node_name: Option<String>,
    /// When the manager saw this.
    pub observed_at: DateTime<Utc>,
}

/// Calls a manager makes to the server.
#[lapdev_hrpc::service]
pub trait KubeClusterRpc {
    /// Reports the cluster's version, nodes and capacity. Sent at connect and
    /// whenever it changes.
    async fn report_cluster_info(
        &self,
        ctx: Context,
        info: KubeClusterInfo,
    ) -> Result<(), HrpcError>;

    /// Says the manager is alive and how it is doing; the reply names the
    /// interval the server expects.
    async fn heartbeat(
        &self,
        ctx: Context,
        health: ManagerHealth,
    ) -> Result<HeartbeatReply, HrpcError>;

    /// Reports one workspace's observed status (a change the manager saw).
    async fn report_workspace_status(
        &self,
        ctx: Context,
        status: WorkspaceObservation,
    ) -> Result<(), HrpcError>;

    /// Reports every workspace the manager sees. Sent after every (re)connect, so
    /// nothing that changed while disconnected is lost.
    async fn report_workspace_snapshot(
        &self,
        ctx: Context,
        workspaces: Vec<WorkspaceObservation>,
    ) -> Result<(), HrpcError>;
}

/// Calls the server makes to a manager, down the manager's tunnel.
///
/// Every command is idempotent: repeating one after a lost reply is safe.
#[lapdev_hrpc::service]
pub trait KubeManagerRpc {
    /// Creates the workspace's volume and pod (or finds them already there).
    async fn create_workspace(
        &self,
        spec: WorkspaceSpec,
    ) -> Result<WorkspaceObservation, HrpcError>;

    /// Re-creates the pod of a stopped workspace; the volume is reused.
    async fn start_workspace(&self, spec: WorkspaceSpec)
    -> Result<WorkspaceObservation, HrpcError>;

    /// Deletes the pod and keeps the volume.
    async fn stop_workspace(&self, workspace_id: Uuid) -> Result<WorkspaceObservation, HrpcError>;

    /// Deletes everything the manager created for the workspace.
    async fn delete_workspace(&self, workspace_id: Uuid)
    -> Result<WorkspaceObservation, HrpcError>;

    /// The workspace's current status; `not_found` when the cluster has nothing
    /// of it.
    async fn get_workspace_status(
        &self,
        workspace_id: Uuid,
    ) -> Result<WorkspaceObservation, HrpcError>;

    /// Every workspace the manager sees.
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceObservation>, HrpcError>;

    /// The cluster's info, gathered now.
    async fn get_cluster_info(&self) -> Result<KubeClusterInfo, HrpcError>;

    /// Deletes the workspace's pod and keeps its volume for the retention
    /// window, marking the claim with when it ends (so the cluster's owner can
    /// see what is kept and why). Answers `deleted` once the pod is gone.
    ///
    /// Added after the first release: a manager without it answers
    /// `unimplemented`, and the server falls back to `stop_workspace`, which
    /// leaves the same objects.
    async fn delete_workspace_keeping_volume(
        &self,
        request: KeepVolume,
    ) -> Result<WorkspaceObservation, HrpcError>;

    /// Deletes the kept volume of a deleted workspace (and a pod, should one
    /// be left). Answers `deleted` once both are gone.
    ///
    /// Added after the first release: a manager without it answers
    /// `unimplemented`, and the server falls back to `delete_workspace`, which
    /// removes the same objects.
    async fn purge_workspace_volume(
        &self,
        workspace_id: Uuid,
    ) -> Result<WorkspaceObservation, HrpcError>;
}

/// What `delete_workspace_keeping_volume` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepVolume {
    /// Which workspace.
    pub workspace_id: Uuid,
    /// When the server will delete the volume unless the workspace is
    /// restored (shown on the claim).
    #[serde(default)]
    pub retained_until: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_tagged_by_state() {
        assert_eq!(
            serde_json::to_value(ManagerHealth::Ok).unwrap(),
            serde_json::json!({"state": "ok"})
        );
        let degraded = ManagerHealth::Degraded {
            reason: "kubernetes API unreachable".into(),
        };
        let json = serde_json::to_value(&degraded).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "degraded", "reason": "kubernetes API unreachable"})
        );
        assert_eq!(
            serde_json::from_value::<ManagerHealth>(json).unwrap(),
            degraded
        );
    }

    #[test]
    fn an_older_managers_cluster_info_still_decodes() {
        // A manager that predates the optional fields sends only the core ones.
        let info: KubeClusterInfo = serde_json::from_value(serde_json::json!({
            "kubernetes_version": "v1.30.2",
            "node_count": 3,
            "cpu_capacity_millis": 12000,
            "cpu_allocatable_millis": 11400,
            "memory_capacity_bytes": 50_000_000_000i64,
            "memory_allocatable_bytes": 48_000_000_000i64,
            "provider": "gcp",
            "some_future_field": true
        }))
        .unwrap();
        assert_eq!(info.region, None);
        assert_eq!(info.manager_version, "");
    }

    #[test]
    fn the_descriptors_name_every_method() {
        let cluster: Vec<_> = KubeClusterRpcClient::DESCRIPTOR
            .methods
            .iter()
            .map(|m| m.path)
            .collect();
        assert_eq!(
            cluster,
            [
                "/KubeClusterRpc/report_cluster_info",
                "/KubeClusterRpc/heartbeat",
                "/KubeClusterRpc/report_workspace_status",
                "/KubeClusterRpc/report_workspace_snapshot"
            ]
        );
        // New methods only ever go at the end (older peers answer
        // `unimplemented` for them).
        let manager: Vec<_> = KubeManagerRpcClient::DESCRIPTOR
            .methods
            .iter()
            .map(|m| m.path)
            .collect();
        assert_eq!(manager.len(), 9);
        assert_eq!(
            manager[7..],
            [
                "/KubeManagerRpc/delete_workspace_keeping_volume",
                "/KubeManagerRpc/purge_workspace_volume"
            ]
        );
    }
}
