//! The internal change feed: typed events about workspaces, clusters and tokens,
//! published once, in process, by the repository method that wrote the change.
//!
//! It lives here because every writer goes through [`Db`](crate::Db): publishing at
//! the write means no caller can forget to, and both `lapdev-kube` (manager reports,
//! token checks) and `lapdev-conductor` (placement cache) already depend on this
//! crate, so no new dependency edge is needed.
//!
//! The feed is a [`tokio::sync::broadcast`] channel: publishing never blocks a writer
//! and costs nothing without subscribers. A subscriber that falls behind by more
//! than [`CHANGE_FEED_CAPACITY`] events gets `Lagged` and must treat everything it
//! derived from earlier events as stale (the placement cache drops all snapshots).
//! Events say what changed, not the whole row: a subscriber that needs the row reads
//! it. Heartbeat bookkeeping (`last_seen_at`) and token `last_used_at` are not
//! published; they change nothing a subscriber derives.

use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::WorkspaceStatus;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many events a slow subscriber may fall behind before it lags.
pub const CHANGE_FEED_CAPACITY: usize = 4096;

/// One change, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A workspace row was created or changed (status, placement, desired state,
    /// repair backoff, tombstone).
    Workspace(WorkspaceChange),
    /// A cluster was created or changed in a way placement cares about (status,
    /// cordon, reported capacity, security profile).
    ClusterChanged {
        /// Owning organisation.
        organization_id: Uuid,
        /// The cluster.
        cluster_id: Uuid,
    },
    /// A cluster was soft-deleted.
    ClusterDeleted {
        /// Owning organisation.
        organization_id: Uuid,
        /// The cluster.
        cluster_id: Uuid,
    },
    /// A cluster token was revoked.
    TokenRevoked {
        /// Owning organisation.
        organization_id: Uuid,
        /// The token's cluster.
        cluster_id: Uuid,
        /// The token.
        token_id: Uuid,
    },
}

impl Change {
    /// The organisation the change belongs to.
    pub fn organization_id(&self) -> Uuid {
        match self {
            Change::Workspace(w) => w.organization_id,
            Change::ClusterChanged {
                organization_id, ..
            }
            | Change::ClusterDeleted {
                organization_id, ..
            }
            | Change::TokenRevoked {
                organization_id, ..
            } => *organization_id,
        }
    }
}

/// What changed about one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceChange {
    /// Owning organisation.
    pub organization_id: Uuid,
    /// The workspace.
    pub workspace_id: Uuid,
    /// Where it is placed, if it is.
    pub cluster_id: Option<Uuid>,
    /// Its status before the write (`None` for a new row).
    pub previous_status: Option<WorkspaceStatus>,
    /// Its status after the write.
    pub status: WorkspaceStatus,
    /// Its reason after the write.
    pub reason: Option<WorkspaceReason>,
    /// True when this write started a self-repair (a new pod after the old one
    /// ended).
    pub repair: bool,
}

/// The sending side, owned by [`Db`](crate::Db).
#[derive(Debug, Clone)]
pub(crate) struct ChangeFeed {
    sender: broadcast::Sender<Change>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        ChangeFeed { sender }
    }
}

impl ChangeFeed {
    pub(crate) fn publish(&self, change: Change) {
        // No subscriber is not an error: nobody needs to know.
        let _ = self.sender.send(change);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }
}
