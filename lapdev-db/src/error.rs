//! [`DbError`], the one error type of the repository API.
//!
//! Callers match on the variants (`NotFound`, `AlreadyExists`, `Conflict`,
//! `InvalidToken`, ...) to pick an HTTP or RPC status; the database's own error is only
//! kept as a source for logging.

use lapdev_common::status::{ParseEnumError, WorkspaceStatus};
use sea_orm::{DbErr, SqlErr};
use uuid::Uuid;

use crate::crypto::CredentialError;

/// The kind of row an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    /// An `organization` row.
    Organization,
    /// A `user` row.
    User,
    /// A `k8s_provider` row.
    Provider,
    /// A `kube_cluster` row.
    Cluster,
    /// A `kube_cluster_token` row.
    ClusterToken,
    /// A `kube_workspace` row.
    Workspace,
    /// A `personal_access_token` row.
    PersonalAccessToken,
}

impl std::fmt::Display for EntityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntityKind::Organization => "organization",
            EntityKind::User => "user",
            EntityKind::Provider => "provider",
            EntityKind::Cluster => "cluster",
            EntityKind::ClusterToken => "cluster token",
            EntityKind::Workspace => "workspace",
            EntityKind::PersonalAccessToken => "personal access token",
        })
    }
}

/// Why a presented cluster token was rejected. Callers answer every reason the same
/// way (unauthenticated); the reason is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// The string does not have the cluster-token shape.
    Malformed,
    /// No token with this hash exists.
    Unknown,
    /// The token was revoked.
    Revoked,
    /// The token's expiry time has passed.
    Expired,
    /// The token's cluster was deleted.
    ClusterDeleted,
}

impl std::fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRejection::Malformed => "malformed",
            TokenRejection::Unknown => "unknown",
            TokenRejection::Revoked => "revoked",
            TokenRejection::Expired => "expired",
            TokenRejection::ClusterDeleted => "its cluster was deleted",
        })
    }
}

/// Everything a repository function can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening the connection pool failed.
    #[error("could not connect to the database")]
    Connect(#[source] DbErr),
    /// The directory of an SQLite database file could not be created.
    #[error("could not create the database directory {path}")]
    CreateDataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading which migrations are applied, or applying the pending ones,
    /// failed.
    #[error("could not migrate the database")]
    Migrate(#[source] DbErr),
    /// The database records migrations this build does not know, and they
    /// are not simply newer than all of its own (another branch's, or some of
    /// this build's are missing under them). Nothing was changed.
    #[error(
        "the database's migrations do not match this build: applied but unknown here, \
         and not all newer than this build's: {}; this build's not applied: {}. \
         Run the release that migrated it, or undo its migrations with that release's \
         `migrations down` first",
        unknown.join(", "),
        if pending.is_empty() { "none".to_owned() } else { pending.join(", ") }
    )]
    SchemaDiverged {
        /// Applied migrations this build does not know.
        unknown: Vec<String>,
        /// This build's migrations not applied.
        pending: Vec<String>,
    },
    /// Taking or giving back the startup advisory lock (PostgreSQL) failed.
    #[error("could not take the database's startup lock")]
    StartupLock(#[source] sea_orm::sqlx::Error),
    /// Listening for other replicas' changes failed.
    #[error("could not listen for other replicas' changes")]
    Listen(#[source] sea_orm::sqlx::Error),
    /// [`Db::start_change_relay`](crate::Db::start_change_relay) was called
    /// twice on one handle.
    #[error("this database handle already relays its changes")]
    RelayRunning,
    /// The cluster a placer chose has no room for the workspace any more
    /// (placements elsewhere, e.g. on another replica, took it meanwhile):
    /// decide again from a fresh read.
    #[error("cluster {cluster_id} no longer has room for the workspace")]
    NoLongerFits {
        /// The cluster chosen.
        cluster_id: Uuid,
    },
    /// The replica's lease ran out (or another start of it took a newer
    /// generation): whatever it was about to write on the strength of its
    /// lease is refused.
    #[error("this replica's lease is lost (generation {generation})")]
    LeaseLost {
        /// The generation the write was fenced with.
        generation: i64,
    },
    /// The operation exists only on PostgreSQL (several replicas); SQLite is
    /// single-replica.
    #[error("{0} needs PostgreSQL; SQLite serves one replica only")]
    PostgresOnly(&'static str),
    /// The row does not exist, is soft-deleted, or belongs to another organisation.
    #[error("{entity} {key} not found")]
    NotFound {
        /// What was looked up.
        entity: EntityKind,
        /// The id or name it was looked up by.
        key: String,
    },
    /// A live row with the same unique name (or key) already exists.
    #[error("{entity} {key:?} already exists")]
    AlreadyExists {
        /// What was being created.
        entity: EntityKind,
        /// The name (or key) that is taken.
        key: String,
    },
    /// The row changed since the caller read it (optimistic concurrency); re-read and retry.
    #[error("{entity} {id} was changed concurrently (expected version {expected_version})")]
    Conflict {
        /// What was being changed.
        entity: EntityKind,
        /// Its id.
        id: Uuid,
        /// The version the caller expected.
        expected_version: i64,
    },
    /// The requested workspace status may not follow the current one.
    #[error("workspace {id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The workspace.
        id: Uuid,
        /// Its current status.
        from: WorkspaceStatus,
        /// The status that was asked for.
        to: WorkspaceStatus,
    },
    /// A manager's observation is older than the one the workspace already
    /// reflects; it was not applied (the newer one stands).
    #[error(
        "workspace {id}: an observation made at {observed} is older than the stored one ({stored})"
    )]
    StaleObservation {
        /// The workspace.
        id: Uuid,
        /// When the stored observation was made.
        stored: chrono::DateTime<chrono::Utc>,
        /// When the refused observation was made.
        observed: chrono::DateTime<chrono::Utc>,
    },
    /// The row is still referenced by live rows (e.g. a cluster with workspaces).
    #[error("{entity} {id} is still in use by {users} live {user_kind} row(s)")]
    InUse {
        /// What was being deleted.
        entity: EntityKind,
        /// Its id.
        id: Uuid,
        /// How many live rows still refer to it.
        users: u64,
        /// What kind of rows those are.
        user_kind: EntityKind,
    },
    /// Creating or starting the workspace would exceed a quota; the message
    /// says which, in numbers.
    #[error(transparent)]
    QuotaExceeded(#[from] lapdev_common::quota::QuotaExceeded),
    /// `workspace restore` cannot bring the deleted workspace back; the
    /// message says why and what to do.
    #[error("workspace {name:?} cannot be restored: {why}")]
    NotRestorable {
        /// The name it was asked for by.
        name: String,
        /// Why not.
        why: crate::retention::RestoreRefusal,
    },
    /// A presented cluster token is not valid.
    #[error("invalid cluster token: {0}")]
    InvalidToken(TokenRejection),
    /// An argument failed validation before anything was written.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The argument or field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stored enum string does not name any variant: the row is corrupt or was written
    /// by a newer version.
    #[error("{table}.{column} holds an unknown value")]
    CorruptValue {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// Which enum and which value.
        #[source]
        source: ParseEnumError,
    },
    /// A stored JSON column does not have the expected shape.
    #[error("{table}.{column} holds malformed JSON")]
    CorruptJson {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// What failed to decode.
        #[source]
        source: serde_json::Error,
    },
    /// Encrypting or decrypting a provider credential failed.
    #[error("provider credential")]
    Credential(#[from] CredentialError),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Any other database failure (connection lost, timeout, ...).
    #[error("database query failed")]
    Query(#[from] DbErr),
}

/// Shorthand for results of the repository API.
pub type DbResult<T> = Result<T, DbError>;

impl DbError {
    pub(crate) fn not_found(entity: EntityKind, key: impl ToString) -> Self {
        DbError::NotFound {
            entity,
            key: key.to_string(),
        }
    }
}

/// Maps a unique-constraint violation of an insert or update to `AlreadyExists`.
pub(crate) fn unique_violation(entity: EntityKind, key: &str) -> impl FnOnce(DbErr) -> DbError {
    move |err| match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => DbError::AlreadyExists {
            entity,
            key: key.to_owned(),
        },
        _ => DbError::Query(err),
    }
}

/// Parses a stored enum string, turning an unknown value into `CorruptValue`.
pub(crate) fn parse_stored<T>(table: &'static str, column: &'static str, value: &str) -> DbResult<T>
where
    T: std::str::FromStr<Err = ParseEnumError>,
{
    value.parse().map_err(|source| DbError::CorruptValue {
        table,
        column,
        source,
    })
}
