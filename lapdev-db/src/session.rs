//! Browser sessions (`browser_session`): a random 256-bit id in a cookie, only
//! its SHA-256 stored, an idle expiry moved forward on use and an absolute
//! expiry that never moves, revocation. Creation and revocation write their
//! audit row in the same transaction; disabling or deleting a user revokes
//! their sessions with their tokens (`people.rs`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::audit::{NewAuditEntry, insert_audit};
use crate::crypto::{random_bytes, token_hash};
use crate::db::{Db, now};
use crate::entities::browser_session;
use crate::error::{DbError, DbResult, TokenRejection};
use crate::util::{tz, utc};

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLifetime {
    /// Unused for this long, a session ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, however busy.
    pub absolute: Duration,
}

impl Default for SessionLifetime {
    fn default() -> Self {
        Self {
            idle: Duration::hours(8),
            absolute: Duration::days(7),
        }
    }
}

/// A new session and the cookie value, which is not stored anywhere.
#[derive(Clone)]
pub struct CreatedSession {
    /// The row's id (for revocation and the audit log).
    pub id: Uuid,
    /// The cookie value.
    pub secret: String,
    /// When it ends at the latest.
    pub expires_at: DateTime<Utc>,
    /// The live session this one replaced (the cookie the browser came with),
    /// revoked in the same transaction: whatever it opened must end too.
    pub replaced: Option<ReplacedSession>,
}

/// A browser session revoked because a sign-in replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacedSession {
    /// The revoked session's id.
    pub id: Uuid,
    /// Its user (not necessarily the one who just signed in).
    pub user_id: Uuid,
}

impl std::fmt::Debug for CreatedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedSession")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .field("replaced", &self.replaced)
            .finish_non_exhaustive()
    }
}

/// Who a valid session speaks for; the role is looked up separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedSession {
    /// The session.
    pub session_id: Uuid,
    /// Its user.
    pub user_id: Uuid,
    /// Their organisation.
    pub organization_id: Uuid,
}

/// A browser session as listed: never the cookie value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSession {
    /// Primary key.
    pub id: Uuid,
    /// Its user.
    pub user_id: Uuid,
    /// When it was signed in.
    pub created_at: DateTime<Utc>,
    /// When it ends unless used before (moved forward on use).
    pub idle_expires_at: DateTime<Utc>,
    /// When it ends at the latest.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked (signed out), if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Cookie values are 43 characters of unpadded base64url (32 random bytes).
fn is_well_formed(secret: &str) -> bool {
    secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Revokes every live session of `user_id` on `conn` (a transaction).
pub(crate) async fn revoke_user_sessions<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> DbResult<u64> {
    use browser_session::Column as S;
    let done = browser_session::Entity::update_many()
        .col_expr(S::RevokedAt, Expr::value(Some(tz(at))))
        .filter(S::UserId.eq(user_id))
        .filter(S::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(done.rows_affected)
}

impl Db {
    /// Creates a session for a live user and writes `audit` in the same
    /// transaction. `replaces`, the cookie the browser came with (if any), is
    /// revoked in that transaction: a sign-in always rotates the session id.
    pub async fn create_session(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        lifetime: SessionLifetime,
        replaces: Option<&str>,
        audit: NewAuditEntry,
    ) -> DbResult<CreatedSession> {
        self.get_user(org_id, user_id).await?;
        let bytes = random_bytes::<32>().ok_or(DbError::Random)?;
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        let at = now();
        let expires_at = at + lifetime.absolute;
        let id = Uuid::new_v4();
        let txn = self.begin_write().await?;
        let mut replaced = None;
        if let Some(old) = replaces.filter(|s| is_well_formed(s)) {
            let live = browser_session::Entity::find()
                .filter(browser_session::Column::SessionHash.eq(token_hash(old)))
                .filter(browser_session::Column::RevokedAt.is_null())
                .one(&txn)
                .await?;
            if let Some(row) = live {
                browser_session::Entity::update_many()
                    .col_expr(
                        browser_session::Column::RevokedAt,
                        Expr::value(Some(tz(at))),
                    )
                    .filter(browser_session::Column::Id.eq(row.id))
                    .filter(browser_session::Column::RevokedAt.is_null())
                    .exec(&txn)
                    .await?;
                replaced = Some(ReplacedSession {
                    id: row.id,
                    user_id: row.user_id,
                });
            }
        }
        browser_session::ActiveModel {
            id: Set(id),
            organization_id: Set(org_id),
            user_id: Set(user_id),
            session_hash: Set(token_hash(&secret)),
            created_at: Set(tz(at)),
            idle_expires_at: Set(tz((at + lifetime.idle).min(expires_at))),
            expires_at: Set(tz(expires_at)),
            revoked_at: Set(None),
        }
        .insert(&txn)
        .await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(CreatedSession {
            id,
            secret,
            expires_at,
            replaced,
        })
    }

    /// Checks a presented session cookie and moves its idle expiry forward:
    /// unknown, malformed, revoked, idle-expired and expired sessions are
    /// `InvalidToken`.
    pub async fn verify_session(
        &self,
        presented: &str,
        lifetime: SessionLifetime,
    ) -> DbResult<VerifiedSession> {
        if !is_well_formed(presented) {
            return Err(DbError::InvalidToken(TokenRejection::Malformed));
        }
        use browser_session::Column as S;
        let row = browser_session::Entity::find()
            .filter(S::SessionHash.eq(token_hash(presented)))
            .one(&self.conn)
            .await?
            .ok_or(DbError::InvalidToken(TokenRejection::Unknown))?;
        let at = now();
        if row.revoked_at.is_some() {
            return Err(DbError::InvalidToken(TokenRejection::Revoked));
        }
        let expires_at = utc(row.expires_at);
        if expires_at <= at || utc(row.idle_expires_at) <= at {
            return Err(DbError::InvalidToken(TokenRejection::Expired));
        }
        browser_session::Entity::update_many()
            .col_expr(
                S::IdleExpiresAt,
                Expr::value(tz((at + lifetime.idle).min(expires_at))),
            )
            .filter(S::Id.eq(row.id))
            .exec(&self.conn)
            .await?;
        Ok(VerifiedSession {
            session_id: row.id,
            user_id: row.user_id,
            organization_id: row.organization_id,
        })
    }

    /// Revokes the session behind a cookie value and writes `audit` in the same
    /// transaction; an unknown or already revoked session is left as it is.
    pub async fn revoke_session(&self, presented: &str, audit: NewAuditEntry) -> DbResult<bool> {
        if !is_well_formed(presented) {
            return Ok(false);
        }
        use browser_session::Column as S;
        let txn = self.begin_write().await?;
        let done = browser_session::Entity::update_many()
            .col_expr(S::RevokedAt, Expr::value(Some(tz(now()))))
            .filter(S::SessionHash.eq(token_hash(presented)))
            .filter(S::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if done.rows_affected > 0 {
            insert_audit(&txn, audit).await?;
        }
        txn.commit().await?;
        Ok(done.rows_affected > 0)
    }

    /// Revokes every session of a user (e.g. "sign out everywhere") and writes
    /// `audit` in the same transaction. Returns how many were live.
    pub async fn revoke_sessions_of(&self, user_id: Uuid, audit: NewAuditEntry) -> DbResult<u64> {
        let txn = self.begin_write().await?;
        let n = revoke_user_sessions(&txn, user_id, now()).await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(n)
    }
}

impl Db {
    /// A user's sessions that have not ended (neither revoked nor expired),
    /// newest first.
    pub async fn list_sessions(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> DbResult<Vec<BrowserSession>> {
        use browser_session::Column as S;
        use sea_orm::QueryOrder as _;
        let at = tz(now());
        Ok(browser_session::Entity::find()
            .filter(S::OrganizationId.eq(org_id))
            .filter(S::UserId.eq(user_id))
            .filter(S::RevokedAt.is_null())
            .filter(S::ExpiresAt.gt(at))
            .filter(S::IdleExpiresAt.gt(at))
            .order_by_desc(S::CreatedAt)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|m| BrowserSession {
                id: m.id,
                user_id: m.user_id,
                created_at: utc(m.created_at),
                idle_expires_at: utc(m.idle_expires_at),
                expires_at: utc(m.expires_at),
                revoked_at: m.revoked_at.map(utc),
            })
            .collect())
    }

    /// Revokes the session `id` of `org_id` (of `user_id` only, when given) and
    /// writes `audit` in the same transaction. Returns the session's user, or
    /// `None` when there is no such session. Revoking twice keeps the first
    /// time (and writes the audit row again).
    pub async fn revoke_session_by_id(
        &self,
        org_id: Uuid,
        user_id: Option<Uuid>,
        id: Uuid,
        audit: NewAuditEntry,
    ) -> DbResult<Option<Uuid>> {
        use browser_session::Column as S;
        let txn = self.begin_write().await?;
        let mut find = browser_session::Entity::find_by_id(id).filter(S::OrganizationId.eq(org_id));
        if let Some(user) = user_id {
            find = find.filter(S::UserId.eq(user));
        }
        let Some(row) = find.one(&txn).await? else {
            return Ok(None);
        };
        browser_session::Entity::update_many()
            .col_expr(S::RevokedAt, Expr::value(Some(tz(now()))))
            .filter(S::Id.eq(id))
            .filter(S::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(Some(row.user_id))
    }
}

#[cfg(test)]
mod tests {
    use super::is_well_formed;

    #[test]
    fn cookie_values_have_one_shape() {
        assert!(is_well_formed(&"a".repeat(43)));
        assert!(!is_well_formed(&"a".repeat(42)));
        assert!(!is_well_formed(&format!("{};", "a".repeat(42))));
        assert!(!is_well_formed(""));
    }
}
