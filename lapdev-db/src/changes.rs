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
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many events a slow subscriber may fall behind before it lags.
pub const CHANGE_FEED_CAPACITY: usize = 4096;

/// One change, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
    /// Authority over people was taken away (a user disabled or deleted, a
    /// personal access token or browser session revoked, …). Announced to the
    /// other replicas ([`Db::announce`](crate::Db::announce)), which end what
    /// it covers as the revoking replica did.
    Revoked(Revocation),
    /// Changes may have been missed (the cross-replica listener reconnected,
    /// and notifications sent while it was away are lost): treat everything
    /// derived from earlier changes as stale, as after `Lagged`.
    Resync,
}

impl Change {
    /// The organisation the change belongs to, when it belongs to one.
    pub fn organization_id(&self) -> Option<Uuid> {
        match self {
            Change::Workspace(w) => Some(w.organization_id),
            Change::ClusterChanged {
                organization_id, ..
            }
            | Change::ClusterDeleted {
                organization_id, ..
            }
            | Change::TokenRevoked {
                organization_id, ..
            } => Some(*organization_id),
            Change::Revoked(Revocation::AdminSessionsDisallowed { organization_id }) => {
                Some(*organization_id)
            }
            Change::Revoked(_) | Change::Resync => None,
        }
    }
}

/// Authority taken away. Each ends the sessions it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "revocation", rename_all = "snake_case")]
pub enum Revocation {
    /// The user was disabled: every session of theirs ends.
    UserDisabled {
        /// The user.
        user_id: Uuid,
    },
    /// The user was deleted: every session of theirs ends.
    UserDeleted {
        /// The user.
        user_id: Uuid,
    },
    /// A personal access token was revoked: the sessions it opened end.
    PatRevoked {
        /// Its user.
        user_id: Uuid,
        /// The token.
        token_id: Uuid,
    },
    /// A browser session was revoked (signed out): the sessions it opened end.
    BrowserSessionRevoked {
        /// Its user.
        user_id: Uuid,
        /// The browser session.
        session_id: Uuid,
    },
    /// The user lost the role that let them into others' workspaces (demoted
    /// to member): their sessions in others' workspaces end, those in their
    /// own stay.
    AdminAccessWithdrawn {
        /// The user.
        user_id: Uuid,
    },
    /// The organisation turned `admins_may_open_shells` off: every session
    /// in a workspace of another user ends, whoever opened it.
    AdminSessionsDisallowed {
        /// The organisation.
        organization_id: Uuid,
    },
}

impl Revocation {
    /// The user whose sessions it concerns (`None`: any user's).
    pub fn user_id(&self) -> Option<Uuid> {
        match *self {
            Revocation::UserDisabled { user_id }
            | Revocation::UserDeleted { user_id }
            | Revocation::PatRevoked { user_id, .. }
            | Revocation::BrowserSessionRevoked { user_id, .. }
            | Revocation::AdminAccessWithdrawn { user_id } => Some(user_id),
            Revocation::AdminSessionsDisallowed { .. } => None,
        }
    }

    /// The close reason the ended sessions give (at most 123 bytes).
    pub fn reason(&self) -> &'static str {
        match self {
            Revocation::UserDisabled { .. } => "your user was disabled; the session was ended",
            Revocation::UserDeleted { .. } => "your user was deleted; the session was ended",
            Revocation::PatRevoked { .. } => {
                "the personal access token that opened this session was revoked"
            }
            Revocation::BrowserSessionRevoked { .. } => {
                "the browser session that opened this session was revoked"
            }
            Revocation::AdminAccessWithdrawn { .. } => {
                "your role no longer lets you into others' workspaces; the session was ended"
            }
            Revocation::AdminSessionsDisallowed { .. } => {
                "the organisation no longer lets admins into others' workspaces; the session was ended"
            }
        }
    }
}

/// What changed about one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// True when this write made the workspace due for the conductor at once
    /// (a transition that cleared its next attempt time): a manager's report
    /// the conductor acts on without waiting for its next round or backoff.
    /// Absent (false) in changes relayed by older replicas.
    #[serde(default)]
    pub due: bool,
}

/// The sending side, owned by [`Db`](crate::Db).
#[derive(Debug, Clone)]
pub(crate) struct ChangeFeed {
    sender: broadcast::Sender<Change>,
    /// Set once the cross-replica relay runs (PostgreSQL): every change is
    /// also queued for `NOTIFY`.
    pub(crate) relay:
        std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::relay::Outgoing>>>,
    /// Replica-to-replica signals heard from the other replicas
    /// ([`ReplicaSignal`](crate::relay::ReplicaSignal)); not part of the
    /// change feed.
    pub(crate) signals: broadcast::Sender<crate::relay::ReplicaSignal>,
    /// Tells this feed's own notifications apart from other replicas'.
    pub(crate) origin: Uuid,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let (signals, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        ChangeFeed {
            sender,
            relay: Default::default(),
            signals,
            origin: Uuid::new_v4(),
        }
    }
}

impl ChangeFeed {
    pub(crate) fn publish(&self, change: Change) {
        self.relay(&change);
        self.publish_here(change);
    }

    /// To this process's subscribers only (what the relay does with other
    /// replicas' changes).
    pub(crate) fn publish_here(&self, change: Change) {
        // No subscriber is not an error: nobody needs to know.
        let _ = self.sender.send(change);
    }

    /// To the other replicas only.
    pub(crate) fn relay(&self, change: &Change) {
        if let Some(relay) = self.relay.get()
            && relay
                .try_send(crate::relay::Outgoing::Change(change.clone()))
                .is_err()
        {
            tracing::warn!(
                ?change,
                "the cross-replica change relay is full or stopped; other replicas miss this change"
            );
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }
}
