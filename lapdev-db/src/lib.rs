//! Lapdev's database layer: the SeaORM entities, the repository API the rest of the
//! code uses instead of raw SeaORM, and connect-and-migrate on start.
//!
//! Start with [`connect`] (PostgreSQL `postgres://…` or SQLite `sqlite://…?mode=rwc`);
//! it applies pending migrations (or, on a database a newer release migrated, serves it
//! unchanged: module [`schema`]) and returns a [`Db`]. Every repository function is a
//! method on [`Db`], returns plain domain structs with the typed enums of
//! `lapdev_common::status`, and fails with [`DbError`]. Functions about an
//! organisation's rows take its id first and treat rows of other organisations as
//! absent.
//!
//! Statuses are stored as the strings of `lapdev_common::status`; reading back an
//! unknown string is [`DbError::CorruptValue`], never a silent default.
//!
//! People: users carry a [`lapdev_common::role::Role`] and may be disabled
//! (`people.rs`); personal access tokens store only their SHA-256 (`pat.rs`);
//! the audit log is append-only, enforced by database triggers (`audit.rs`;
//! [`Db::prune_audit`] is the operator's retention job); browser sessions store
//! only their SHA-256 too (`session.rs`); OpenID Connect: the server's provider,
//! its client secret sealed like provider credentials, and (issuer, subject)
//! links to users (`oidc.rs`), and logins in flight, sealed and single-use
//! (`oidc_pending.rs`); organisation settings (`org.rs`).
//! Role, user and token changes write their audit row in the same transaction.
//! Every write publishes a [`Change`] on the in-process change feed
//! ([`Db::subscribe`], module [`changes`]); caches and metrics derive from it.
//!
//! With the `test-support` feature, [`test_support`] creates and drops throwaway
//! databases for tests of this and other crates.

mod audit;
pub mod changes;
mod cluster;
mod cluster_placement;
pub mod crypto;
mod db;
pub mod entities;
mod error;
mod notice;
mod oidc;
mod oidc_pending;
mod org;
mod pat;
mod people;
mod provider;
mod quota;
pub mod relay;
pub mod replica;
mod replica_owner;
mod replica_route;
mod retention;
pub mod schema;
mod session;
#[cfg(feature = "test-support")]
pub mod test_support;
mod timers;
mod token;
mod util;
mod workspace;

pub use audit::{AuditEntry, AuditQuery, MAX_AUDIT_PAGE, NewAuditEntry};
pub use changes::{Change, Revocation, WorkspaceChange};
pub use cluster::{Cluster, ClusterInfoUpdate, NewCluster, ResourceRequests};
pub use cluster_placement::PlacementSettings;
pub use crypto::{CredentialError, CredentialKey, ProviderCredential};
pub use db::{ConnectConfig, CreateWithTokenError, Db, connect};
pub use error::{DbError, DbResult, EntityKind, TokenRejection};
pub use notice::{DueNotice, lifetime_notice};
pub use oidc::{NewOidcProvider, OidcProvider};
pub use oidc_pending::{MAX_OIDC_PENDING, OidcPendingKind};
pub use org::{NewUser, OrgSettings, Organization, User};
pub use pat::{CreatedPat, PersonalAccessToken, VerifiedPat};
pub use people::{SignInCandidate, UserChange};
pub use provider::{NewProvider, Provider};
pub use quota::OrgQuotas;
pub use relay::ReplicaSignal;
pub use replica::{LeaseTiming, Replica, ReplicaInfo, ReplicaLease, StartupLock};
pub use replica_owner::ClusterClaim;
pub use replica_route::ClusterRoute;
pub use retention::{DueVolumePurge, RestoreRefusal};
pub use session::{
    BrowserSession, CreatedSession, ReplacedSession, SessionLifetime, VerifiedSession,
};
pub use timers::{
    DEFAULT_LIFETIME_NOTICE_SECS, DEFAULT_VOLUME_RETENTION_SECS, DueTimer, TimerKind,
    WorkspacePolicy, WorkspaceTimer,
};
pub use token::{
    ClusterToken, ClusterTokenSecret, CreatedClusterToken, NewClusterToken, VerifiedClusterToken,
};
pub use workspace::{
    Backoff, NewWorkspace, PageCursor, Workspace, WorkspaceTransition, workspace_transition_allowed,
};
