//! Lapdev's database layer: the SeaORM entities, the repository API the rest of the
//! code uses instead of raw SeaORM, and connect-and-migrate on start.
//!
//! Start with [`connect`] (PostgreSQL `postgres://…` or SQLite `sqlite://…?mode=rwc`);
//! it applies pending migrations and returns a [`Db`]. Every repository function is a
//! method on [`Db`], returns plain domain structs with the typed enums of
//! `lapdev_common::status`, and fails with [`DbError`]. Functions about an
//! organisation's rows take its id first and treat rows of other organisations as
//! absent.
//!
//! Statuses are stored as the strings of `lapdev_common::status`; reading back an
//! unknown string is [`DbError::CorruptValue`], never a silent default.
//!
//! With the `test-support` feature, [`test_support`] creates and drops throwaway
//! databases for tests of this and other crates.

mod cluster;
pub mod crypto;
mod db;
pub mod entities;
mod error;
mod org;
mod provider;
#[cfg(feature = "test-support")]
pub mod test_support;
mod token;
mod util;
mod workspace;

pub use cluster::{Cluster, ClusterInfoUpdate, NewCluster, ResourceRequests};
pub use crypto::{CredentialError, CredentialKey, ProviderCredential};
pub use db::{ConnectConfig, CreateWithTokenError, Db, connect};
pub use error::{DbError, DbResult, EntityKind, TokenRejection};
pub use org::{NewUser, Organization, User};
pub use provider::{NewProvider, Provider};
pub use token::{
    ClusterToken, ClusterTokenSecret, CreatedClusterToken, NewClusterToken, VerifiedClusterToken,
};
pub use workspace::{NewWorkspace, Workspace, WorkspaceTransition, workspace_transition_allowed};
