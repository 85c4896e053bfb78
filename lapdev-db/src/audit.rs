//! The audit log (`audit_log`): append-only in the database itself (triggers refuse
//! `UPDATE` and `DELETE` on both engines, see the `people` migration).
//!
//! [`Db::record_audit`] writes one row on its own; changes whose row must not be
//! lost (roles, tokens, users) write it in their own transaction through
//! [`insert_audit`]. Listing is newest first, paginated by a cursor of the last
//! row seen.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::db::{Db, now};
use crate::entities::audit_log;
use crate::error::DbResult;
use crate::util::{tz, utc};

/// Most rows one page may hold.
pub const MAX_AUDIT_PAGE: u64 = 500;

/// One audit row to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// The organisation it concerns (none for a failed sign-in of an unknown user).
    pub organization_id: Option<Uuid>,
    /// Who acted, when known.
    pub actor_id: Option<Uuid>,
    /// Their name as they gave it (kept even if the user is deleted later).
    pub actor_name: Option<String>,
    /// What was done, dotted: `user.set_role`, `cluster.delete`, `auth.sign_in`.
    pub action: String,
    /// What it was done to (a name or id).
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// The client's address.
    pub source_addr: Option<String>,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
    /// Anything else worth keeping (e.g. the new role).
    pub detail: Option<String>,
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Primary key.
    pub id: Uuid,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// What was recorded.
    pub entry: NewAuditEntry,
}

/// Which rows [`Db::list_audit`] returns.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only rows at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only rows older than this one (the cursor: the last row of the previous page).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Only this actor's name.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// At most this many rows (capped at [`MAX_AUDIT_PAGE`]).
    pub limit: u64,
}

/// Inserts `entry` on `conn` (the pool or a transaction).
pub(crate) async fn insert_audit<C: ConnectionTrait>(
    conn: &C,
    entry: NewAuditEntry,
) -> DbResult<AuditEntry> {
    let id = Uuid::new_v4();
    let at = now();
    audit_log::ActiveModel {
        id: Set(id),
        organization_id: Set(entry.organization_id),
        actor_id: Set(entry.actor_id),
        actor_name: Set(entry.actor_name.clone()),
        action: Set(entry.action.clone()),
        target: Set(entry.target.clone()),
        outcome: Set(entry.outcome.clone()),
        source_addr: Set(entry.source_addr.clone()),
        request_id: Set(entry.request_id.clone()),
        detail: Set(entry.detail.clone()),
        occurred_at: Set(tz(at)),
    }
    .insert(conn)
    .await?;
    Ok(AuditEntry {
        id,
        occurred_at: at,
        entry,
    })
}

impl Db {
    /// Appends one audit row.
    pub async fn record_audit(&self, entry: NewAuditEntry) -> DbResult<AuditEntry> {
        insert_audit(&self.conn, entry).await
    }

    /// Retention: deletes every audit row older than `before`, the one deliberate
    /// exception to append-only, and records that it did (`audit.prune`, with the
    /// count) in the same transaction. The refusing trigger is lifted only inside
    /// that transaction: on PostgreSQL `ALTER TABLE .. DISABLE TRIGGER` (which
    /// needs the table's owner and holds an exclusive lock until commit, so no
    /// other session ever sees the table unguarded); on SQLite the delete trigger
    /// is dropped and created again (SQLite's DDL is transactional). Nothing in
    /// the server calls this: `lapdev-server audit-prune` does, run by an
    /// operator.
    pub async fn prune_audit(&self, before: DateTime<Utc>, audit: NewAuditEntry) -> DbResult<u64> {
        use sea_orm::DbBackend;
        let backend = self.conn.get_database_backend();
        let txn = self.begin_write().await?;
        let (lift, restore) = match backend {
            DbBackend::Postgres => (
                "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete",
                "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete",
            ),
            _ => (
                "DROP TRIGGER audit_log_no_delete",
                "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log \
                 BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
            ),
        };
        txn.execute_unprepared(lift).await?;
        let done = audit_log::Entity::delete_many()
            .filter(audit_log::Column::OccurredAt.lt(tz(before)))
            .exec(&txn)
            .await?;
        txn.execute_unprepared(restore).await?;
        insert_audit(
            &txn,
            NewAuditEntry {
                detail: Some(format!(
                    "{} rows before {}",
                    done.rows_affected,
                    before.to_rfc3339()
                )),
                ..audit
            },
        )
        .await?;
        txn.commit().await?;
        Ok(done.rows_affected)
    }

    /// `org_id`'s audit rows, newest first.
    pub async fn list_audit(&self, org_id: Uuid, query: &AuditQuery) -> DbResult<Vec<AuditEntry>> {
        use audit_log::Column as A;
        let mut select = audit_log::Entity::find().filter(A::OrganizationId.eq(org_id));
        if let Some(since) = query.since {
            select = select.filter(A::OccurredAt.gte(tz(since)));
        }
        if let Some((at, id)) = query.before {
            select = select.filter(
                Condition::any().add(A::OccurredAt.lt(tz(at))).add(
                    Condition::all()
                        .add(A::OccurredAt.eq(tz(at)))
                        .add(A::Id.lt(id)),
                ),
            );
        }
        if let Some(actor) = &query.actor {
            select = select.filter(A::ActorName.eq(actor.as_str()));
        }
        if let Some(action) = &query.action {
            select = select.filter(A::Action.eq(action.as_str()));
        }
        let rows = select
            .order_by_desc(A::OccurredAt)
            .order_by_desc(A::Id)
            .limit(query.limit.clamp(1, MAX_AUDIT_PAGE))
            .all(&self.conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|m| AuditEntry {
                id: m.id,
                occurred_at: utc(m.occurred_at),
                entry: NewAuditEntry {
                    organization_id: m.organization_id,
                    actor_id: m.actor_id,
                    actor_name: m.actor_name,
                    action: m.action,
                    target: m.target,
                    outcome: m.outcome,
                    source_addr: m.source_addr,
                    request_id: m.request_id,
                    detail: m.detail,
                },
            })
            .collect())
    }
}
