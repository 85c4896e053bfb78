//! The server's Kubernetes integration: `KubeClusterServer` (the server side of
//! `KubeClusterRpc`), the registry of connected managers, cloud providers and
//! install-manifest rendering.

pub mod server;
mod workspace_reports;

pub mod manifest;
pub mod provider;

use lapdev_db::DbError;
use lapdev_hrpc::HrpcError;

/// Maps a repository error to what an API caller is told: the kind of failure
/// and a readable message; internal details are logged, not returned.
pub fn db_error(e: DbError) -> HrpcError {
    match e {
        DbError::NotFound { .. } => HrpcError::not_found(e.to_string()),
        DbError::AlreadyExists { .. } => HrpcError::already_exists(e.to_string()),
        DbError::InvalidInput { .. } => HrpcError::invalid_argument(e.to_string()),
        DbError::InvalidToken(_) => HrpcError::unauthenticated(e.to_string()),
        DbError::InUse { .. }
        | DbError::InvalidTransition { .. }
        | DbError::NotRestorable { .. } => HrpcError::failed_precondition(e.to_string()),
        DbError::Conflict { .. } => HrpcError::new(lapdev_hrpc::Code::Aborted, e.to_string()),
        DbError::QuotaExceeded(q) => {
            HrpcError::new(lapdev_hrpc::Code::ResourceExhausted, q.to_string())
                .with_details(serde_json::json!({ "quota": q }))
        }
        other => {
            tracing::error!(error = %other, "database error");
            HrpcError::unavailable("the database is not available")
        }
    }
}
