//! Audit rows that must never hold up or fail the action they describe: written
//! on a background task; a failed write is logged and counted
//! (`lapdev_audit_write_failures_total`), never silent.
//!
//! Changes of roles, users and tokens do not come here: they write their row in
//! their own transaction (`lapdev_db`).

use lapdev_db::{Db, NewAuditEntry};

/// Writes `entry` in the background.
pub fn record_in_background(db: &Db, entry: NewAuditEntry) {
    let db = db.clone();
    tokio::spawn(async move {
        record_now(&db, entry).await;
    });
}

/// Writes `entry` and waits for it, logging and counting a failure instead of
/// returning it.
pub async fn record_now(db: &Db, entry: NewAuditEntry) {
    let action = entry.action.clone();
    if let Err(e) = db.record_audit(entry).await {
        ::metrics::counter!("lapdev_audit_write_failures_total").increment(1);
        tracing::error!(error = %e, action, "could not write an audit row");
    }
}
