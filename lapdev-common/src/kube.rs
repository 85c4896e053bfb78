//! What a cluster is and what a workspace asks for: the data the manager reports
//! and the server stores, shared by every side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::scheduling::{Autoscaling, NodeCapacity, SchedulingSettings};
use crate::status::{CapacityMode, CloudProvider};

/// A cluster as its manager sees it: sent at connect and whenever it changes.
///
/// Fields added later must have a default (`#[serde(default)]`), so managers and
/// servers of different versions keep talking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeClusterInfo {
    /// The API server's `gitVersion`, e.g. `v1.30.2`.
    pub kubernetes_version: String,
    /// Number of nodes.
    pub node_count: u32,
    /// Sum of the nodes' CPU capacity, in millicores.
    pub cpu_capacity_millis: i64,
    /// Sum of the nodes' allocatable CPU, in millicores.
    pub cpu_allocatable_millis: i64,
    /// Sum of the nodes' memory capacity, in bytes.
    pub memory_capacity_bytes: i64,
    /// Sum of the nodes' allocatable memory, in bytes.
    pub memory_allocatable_bytes: i64,
    /// The cloud the nodes run on, detected from provider ids and labels.
    pub provider: CloudProvider,
    /// The region from `topology.kubernetes.io/region`, when the nodes say.
    #[serde(default)]
    pub region: Option<String>,
    /// The manager's own version.
    #[serde(default)]
    pub manager_version: String,
    /// The namespace the manager runs in.
    #[serde(default)]
    pub manager_namespace: String,
    /// The namespace workspaces are created in.
    #[serde(default)]
    pub workspace_namespace: String,
    /// The revision of the install manifest the manager was deployed from
    /// (`LAPDEV_MANIFEST_REVISION`), so an admin can tell an out-of-date install.
    #[serde(default)]
    pub manifest_revision: Option<String>,
    /// The nodes a workspace could be scheduled on (Ready, not cordoned, Linux),
    /// each with its allocatable room and the requests already bound to it.
    /// `None` from managers that predate per-node reports.
    #[serde(default)]
    pub nodes: Option<Vec<NodeCapacity>>,
    /// What the manager counts in the nodes' requests (`LAPDEV_CAPACITY`):
    /// `pods` only when its manifest grants the cluster-wide pod watch.
    #[serde(default)]
    pub capacity_mode: Option<CapacityMode>,
    /// An autoscaler the manager detected from node labels (GKE Autopilot), with
    /// the largest node it can add.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
}

/// Everything a manager needs to create (or re-create) a workspace's objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSpec {
    /// The workspace's id; object names are derived from it.
    pub workspace_id: Uuid,
    /// The user-facing name (a label value, not an object name).
    pub name: String,
    /// Container image.
    pub image: String,
    /// CPU request (and limit), in millicores.
    pub cpu_millis: i64,
    /// Memory request (and limit), in bytes.
    pub memory_bytes: i64,
    /// Size of the home volume, in bytes.
    pub storage_bytes: i64,
    /// Extra environment variables for the workspace container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The cluster's scheduling settings (node selector, tolerations,
    /// architecture, image pull secrets, priority class), applied to the pod.
    #[serde(default)]
    pub scheduling: SchedulingSettings,
}
