//! Personal access tokens (`personal_access_token`): `lapdev_pat_` + 256 random
//! bits, only the SHA-256 stored, a name, an expiry, `last_used_at`, revocation.
//!
//! Creation and revocation write their audit row in the same transaction.
//! Verification is one indexed read plus a `last_used_at` write; the server
//! caches verified tokens briefly and drops the cache on every revocation, so a
//! revoked token is refused on the very next call.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use lapdev_common::role::{PAT_PREFIX, is_well_formed_pat, pat_display_prefix};
use lapdev_common::token::CLUSTER_TOKEN_SECRET_BYTES;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use crate::audit::{NewAuditEntry, insert_audit};
use crate::crypto::{random_bytes, token_hash};
use crate::db::{Db, now};
use crate::entities::personal_access_token;
use crate::error::{DbError, DbResult, EntityKind, TokenRejection};
use crate::util::{check_name, tz, utc};

/// A personal access token as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalAccessToken {
    /// Primary key.
    pub id: Uuid,
    /// Whose token it is.
    pub user_id: Uuid,
    /// A label chosen by its owner.
    pub name: String,
    /// `lapdev_pat_` plus the first characters of the secret.
    pub display_prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// When it was last presented successfully.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new token and its plaintext, which is not stored anywhere.
#[derive(Clone)]
pub struct CreatedPat {
    /// The stored row.
    pub token: PersonalAccessToken,
    /// The plaintext, shown once.
    pub secret: String,
}

impl std::fmt::Debug for CreatedPat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedPat")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Who a valid token speaks for. The user's role and liveness are looked up
/// separately, per request: a token carries no authority of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedPat {
    /// The token.
    pub token_id: Uuid,
    /// Its user.
    pub user_id: Uuid,
    /// Their organisation.
    pub organization_id: Uuid,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
}

fn from_model(m: personal_access_token::Model) -> PersonalAccessToken {
    PersonalAccessToken {
        id: m.id,
        user_id: m.user_id,
        name: m.name,
        display_prefix: m.display_prefix,
        created_at: utc(m.created_at),
        expires_at: utc(m.expires_at),
        last_used_at: m.last_used_at.map(utc),
        revoked_at: m.revoked_at.map(utc),
    }
}

impl Db {
    /// Creates a token for a live user of `org_id`, valid until `expires_at`, and
    /// writes `audit` in the same transaction.
    pub async fn create_pat(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        name: &str,
        expires_at: DateTime<Utc>,
        audit: NewAuditEntry,
    ) -> DbResult<CreatedPat> {
        check_name("token name", name)?;
        self.get_user(org_id, user_id).await?;
        let bytes = random_bytes::<CLUSTER_TOKEN_SECRET_BYTES>().ok_or(DbError::Random)?;
        let secret = format!("{PAT_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let display_prefix = pat_display_prefix(&secret)
            .ok_or(DbError::Random)?
            .to_owned();
        let txn = self.begin_write().await?;
        let model = personal_access_token::ActiveModel {
            id: Set(Uuid::new_v4()),
            organization_id: Set(org_id),
            user_id: Set(user_id),
            name: Set(name.to_owned()),
            token_hash: Set(token_hash(&secret)),
            display_prefix: Set(display_prefix),
            created_at: Set(tz(now())),
            expires_at: Set(tz(expires_at)),
            last_used_at: Set(None),
            revoked_at: Set(None),
        }
        .insert(&txn)
        .await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(CreatedPat {
            token: from_model(model),
            secret,
        })
    }

    /// Checks a presented token: unknown, malformed, revoked and expired tokens,
    /// and tokens of deleted users, are `InvalidToken`. Records the use.
    pub async fn verify_pat(&self, presented: &str) -> DbResult<VerifiedPat> {
        if !is_well_formed_pat(presented) {
            return Err(DbError::InvalidToken(TokenRejection::Malformed));
        }
        use personal_access_token::Column as T;
        let row = personal_access_token::Entity::find()
            .filter(T::TokenHash.eq(token_hash(presented)))
            .one(&self.conn)
            .await?
            .ok_or(DbError::InvalidToken(TokenRejection::Unknown))?;
        let at = now();
        if row.revoked_at.is_some() {
            return Err(DbError::InvalidToken(TokenRejection::Revoked));
        }
        if utc(row.expires_at) <= at {
            return Err(DbError::InvalidToken(TokenRejection::Expired));
        }
        personal_access_token::Entity::update_many()
            .col_expr(T::LastUsedAt, Expr::value(Some(tz(at))))
            .filter(T::Id.eq(row.id))
            .exec(&self.conn)
            .await?;
        Ok(VerifiedPat {
            token_id: row.id,
            user_id: row.user_id,
            organization_id: row.organization_id,
            expires_at: utc(row.expires_at),
        })
    }

    /// A user's tokens (revoked and expired ones included), newest first.
    pub async fn list_pats(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> DbResult<Vec<PersonalAccessToken>> {
        use personal_access_token::Column as T;
        Ok(personal_access_token::Entity::find()
            .filter(T::OrganizationId.eq(org_id))
            .filter(T::UserId.eq(user_id))
            .order_by_desc(T::CreatedAt)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(from_model)
            .collect())
    }

    /// The user of token `token_id` of `org_id`, if there is such a token.
    pub async fn pat_user(&self, org_id: Uuid, token_id: Uuid) -> DbResult<Option<Uuid>> {
        use personal_access_token::Column as T;
        Ok(personal_access_token::Entity::find_by_id(token_id)
            .filter(T::OrganizationId.eq(org_id))
            .one(&self.conn)
            .await?
            .map(|t| t.user_id))
    }

    /// Revokes one of `user_id`'s tokens and writes `audit` in the same
    /// transaction. Revoking twice keeps the first time.
    pub async fn revoke_pat(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        token_id: Uuid,
        audit: NewAuditEntry,
    ) -> DbResult<()> {
        use personal_access_token::Column as T;
        let txn = self.begin_write().await?;
        let found = personal_access_token::Entity::find_by_id(token_id)
            .filter(T::OrganizationId.eq(org_id))
            .filter(T::UserId.eq(user_id))
            .one(&txn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::PersonalAccessToken, token_id))?;
        if found.revoked_at.is_none() {
            personal_access_token::Entity::update_many()
                .col_expr(T::RevokedAt, Expr::value(Some(tz(now()))))
                .filter(T::Id.eq(token_id))
                .filter(T::RevokedAt.is_null())
                .exec(&txn)
                .await?;
        }
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(())
    }
}
