//! `AdminRpc`: the admin API, an HRPC service under `/rpc` authenticated with a
//! JWT (`authorization: Bearer …`). The `lapdev` CLI is built on its generated
//! client.
//!
//! JSON conventions: timestamps are RFC 3339 or `null`; clusters and workspaces
//! are addressed by name, tokens by id; lists are arrays; soft-deleted rows
//! appear only when asked for (`include_deleted`). Messages evolve compatibly:
//! new fields get a default.

use chrono::{DateTime, Utc};
use lapdev_common::scheduling::{Autoscaling, NodeCapacity, SchedulingSettings};
use lapdev_common::status::{
    CapacityMode, CloudProvider, ClusterStatus, K8sProviderKind, SecurityProfile,
};
use lapdev_hrpc::{Context, HrpcError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::admin::paging::PageRequest;

/// A cluster as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: Uuid,
    pub name: String,
    pub status: ClusterStatus,
    pub kubernetes_version: Option<String>,
    pub node_count: Option<i32>,
    pub cpu_capacity_millis: Option<i64>,
    pub cpu_allocatable_millis: Option<i64>,
    pub memory_capacity_bytes: Option<i64>,
    pub memory_allocatable_bytes: Option<i64>,
    /// The detected cloud: `gcp`, `aws`, `azure` or `unknown`.
    pub provider: CloudProvider,
    /// The detected region when known, else the one declared at registration.
    pub region: Option<String>,
    pub manager_version: Option<String>,
    pub last_reported_at: Option<DateTime<Utc>>,
    pub cordoned: bool,
    #[serde(default)]
    pub declared_region: Option<String>,
    #[serde(default)]
    pub connected_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_seen_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
    /// The Pod Security profile its workspaces run under (what its manifest
    /// renders).
    #[serde(default)]
    pub security_profile: SecurityProfile,
    /// The manifest revision its manager says it was installed from (`None` for
    /// managers that predate revisions).
    #[serde(default)]
    pub manifest_revision: Option<String>,
    /// Capacity mode, scheduling settings and declared autoscaling.
    #[serde(default)]
    pub placement: ClusterPlacement,
    /// The autoscaler the manager detected (GKE Autopilot), if any.
    #[serde(default)]
    pub detected_autoscaling: Option<Autoscaling>,
    /// The schedulable nodes the manager last reported (`None` before the first
    /// report, or from managers that predate per-node reports).
    #[serde(default)]
    pub nodes: Option<Vec<NodeCapacity>>,
}

/// Where a cluster's workspaces go, set by the admin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlacement {
    /// `nodes` (allocatable minus Lapdev's requests) or `pods` (minus every
    /// pod's; the manifest adds a cluster-wide pod watch).
    #[serde(default)]
    pub capacity_mode: CapacityMode,
    /// Node selector, tolerations, architecture, image pull secrets, priority
    /// class; applied to every workspace pod of the cluster.
    #[serde(default)]
    pub scheduling: SchedulingSettings,
    /// The largest node the cluster's autoscaler can add, when declared.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
}

/// One page of clusters, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPage {
    pub clusters: Vec<ClusterView>,
    /// Ask with `after` set to this for the next page (none: this is the last).
    pub next: Option<String>,
    /// Ask with `before` set to this for the previous page (none: this is the
    /// first).
    pub previous: Option<String>,
}

/// A cluster token's metadata (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    /// The first characters of the token, to recognise it.
    pub display_prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new cluster, with its first token (shown this once) and install manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedCluster {
    pub cluster: ClusterView,
    pub token: TokenView,
    /// The token's plaintext. It is not stored and cannot be shown again.
    pub token_secret: String,
    /// The rendered install manifest (YAML) carrying the token.
    pub manifest: String,
    /// What the admin should know about the manifest before applying it (a
    /// plain-http or loopback server URL); empty when none.
    #[serde(default)]
    pub warnings: Vec<ManifestWarningView>,
}

/// One thing worth knowing about a rendered manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestWarningView {
    /// Stable, for scripts: `insecure_server_url` (plain http: the cluster
    /// token travels unencrypted) or `loopback_server_url` (the URL names the
    /// server's own machine, which a manager in a cluster cannot reach).
    pub code: String,
    /// One sentence for people; may be reworded.
    pub message: String,
}

/// A new token (shown this once) and a manifest that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: TokenView,
    pub token_secret: String,
    pub manifest: String,
    /// As [`CreatedCluster::warnings`].
    #[serde(default)]
    pub warnings: Vec<ManifestWarningView>,
}

/// A cloud provider as the admin API shows it; the credential never appears.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderView {
    pub id: Uuid,
    pub name: String,
    pub kind: K8sProviderKind,
    /// Non-secret settings (project, default location, ...).
    pub config: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The admin API. Every call is scoped to the caller's organisation: another
/// organisation's rows are `not_found`.
#[lapdev_hrpc::service]
pub trait AdminRpc {
    /// Registers a cluster; returns its first token and install manifest.
    /// `security_profile` defaults to `baseline` (absent for older clients).
    #[hrpc(role = "admin")]
    async fn create_cluster(
        &self,
        ctx: Context,
        name: String,
        region: Option<String>,
        security_profile: Option<SecurityProfile>,
        placement: Option<ClusterPlacement>,
    ) -> Result<CreatedCluster, HrpcError>;

    /// Replaces a cluster's placement settings (validated). Scheduling settings
    /// apply to each workspace at its next create or start; a new capacity mode
    /// needs a new manifest (`create_cluster_token` renders one).
    #[hrpc(role = "admin")]
    async fn set_cluster_placement(
        &self,
        ctx: Context,
        name: String,
        placement: ClusterPlacement,
    ) -> Result<ClusterView, HrpcError>;

    /// Changes the Pod Security profile of a cluster's workspaces. It takes effect
    /// when the admin applies a new manifest (`create_cluster_token` renders one)
    /// and, for each workspace, at its next start.
    #[hrpc(role = "admin")]
    async fn set_cluster_security_profile(
        &self,
        ctx: Context,
        name: String,
        security_profile: SecurityProfile,
    ) -> Result<ClusterView, HrpcError>;

    /// Forgets every workspace on a cluster (for `cluster delete --force`): each
    /// becomes a tombstone, deleted for its users at once. If the cluster's
    /// manager is connected its objects are removed now; otherwise when it
    /// reconnects. Returns the forgotten workspaces' names.
    #[hrpc(role = "admin")]
    async fn forget_cluster_workspaces(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<Vec<String>, HrpcError>;

    /// The organisation's clusters, by name.
    #[hrpc(role = "member")]
    async fn list_clusters(
        &self,
        ctx: Context,
        include_deleted: bool,
    ) -> Result<Vec<ClusterView>, HrpcError>;

    /// One page of the live clusters, by name (the dashboard's list): at most
    /// `page.limit` (default and cap [`PAGE_SIZE`](crate::admin::paging::PAGE_SIZE))
    /// after or before a name, with the names that start the next and
    /// previous pages.
    #[hrpc(role = "member")]
    async fn list_clusters_page(
        &self,
        ctx: Context,
        page: PageRequest,
    ) -> Result<ClusterPage, HrpcError>;

    /// One cluster by name.
    #[hrpc(role = "member")]
    async fn get_cluster(&self, ctx: Context, name: String) -> Result<ClusterView, HrpcError>;

    /// Soft-deletes a cluster: its tokens stop working and its manager is cut off.
    #[hrpc(role = "admin")]
    async fn delete_cluster(&self, ctx: Context, name: String) -> Result<(), HrpcError>;

    /// Stops (`true`) or resumes placing workspaces on a cluster.
    #[hrpc(role = "admin")]
    async fn set_cluster_cordoned(
        &self,
        ctx: Context,
        name: String,
        cordoned: bool,
    ) -> Result<ClusterView, HrpcError>;

    /// A new token for a cluster (at most two live ones, for rotation) and a
    /// manifest carrying it.
    #[hrpc(role = "admin")]
    async fn create_cluster_token(
        &self,
        ctx: Context,
        cluster: String,
        name: String,
        expires_in_secs: Option<u64>,
    ) -> Result<CreatedToken, HrpcError>;

    /// A cluster's tokens (metadata only).
    #[hrpc(role = "admin")]
    async fn list_cluster_tokens(
        &self,
        ctx: Context,
        cluster: String,
    ) -> Result<Vec<TokenView>, HrpcError>;

    /// Revokes a token at once; a tunnel it opened is closed.
    #[hrpc(role = "admin")]
    async fn revoke_cluster_token(
        &self,
        ctx: Context,
        cluster: String,
        token_id: Uuid,
    ) -> Result<(), HrpcError>;

    // Providers and provider-managed clusters: `ProviderRpc` (admin/providers.rs).
}
