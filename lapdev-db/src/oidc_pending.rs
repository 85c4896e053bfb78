//! OpenID Connect login steps in flight (`oidc_pending`): a started login,
//! found by its `state`, or a CLI's one-time code. Each is stored under the
//! SHA-256 of that lookup value with what the next step needs sealed with the
//! credential key, and is single-use: [`Db::take_oidc_pending`] deletes the
//! row, and only the caller whose delete removed it gets the contents, so two
//! replicas racing on one callback cannot both finish it. Rows expire;
//! expired rows are never returned and are pruned when new ones are stored.

use chrono::Duration;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;

use crate::crypto::{
    CredentialKey, OIDC_PENDING_AAD_CONTEXT, ProviderCredential, open, seal, token_hash,
};
use crate::db::{Db, now};
use crate::entities::oidc_pending;
use crate::error::DbResult;
use crate::util::{tz, utc};

/// Rows in flight at most; the oldest is dropped first beyond it (the start
/// of a login is unauthenticated, so the table must not grow without bound).
pub const MAX_OIDC_PENDING: u64 = 10_000;

/// What a pending row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OidcPendingKind {
    /// A login between its start and the provider's callback.
    Login,
    /// A CLI's one-time code between the callback and its redemption.
    CliCode,
}

impl OidcPendingKind {
    fn as_str(self) -> &'static str {
        match self {
            OidcPendingKind::Login => "login",
            OidcPendingKind::CliCode => "cli_code",
        }
    }
}

impl Db {
    /// Stores `payload` (sealed with `key`) under `lookup` for `ttl`.
    pub async fn put_oidc_pending(
        &self,
        key: &CredentialKey,
        kind: OidcPendingKind,
        lookup: &str,
        payload: &[u8],
        ttl: Duration,
    ) -> DbResult<()> {
        use oidc_pending::Column as P;
        let id = Uuid::new_v4();
        let sealed = seal(
            key,
            OIDC_PENDING_AAD_CONTEXT,
            id,
            &ProviderCredential::new(payload),
        )?;
        let at = now();
        let txn = self.begin_write().await?;
        oidc_pending::Entity::delete_many()
            .filter(P::ExpiresAt.lte(tz(at)))
            .exec(&txn)
            .await?;
        if oidc_pending::Entity::find().count(&txn).await? >= MAX_OIDC_PENDING
            && let Some(oldest) = oidc_pending::Entity::find()
                .order_by_asc(P::CreatedAt)
                .one(&txn)
                .await?
        {
            oidc_pending::Entity::delete_by_id(oldest.id)
                .exec(&txn)
                .await?;
        }
        oidc_pending::ActiveModel {
            id: Set(id),
            kind: Set(kind.as_str().to_owned()),
            lookup_hash: Set(token_hash(lookup)),
            sealed: Set(sealed),
            created_at: Set(tz(at)),
            expires_at: Set(tz(at + ttl)),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Takes the row of `kind` stored under `lookup`: deletes it and returns
    /// its payload, unless it is unknown, of another kind, expired, or another
    /// caller took it first (then `None`).
    pub async fn take_oidc_pending(
        &self,
        key: &CredentialKey,
        kind: OidcPendingKind,
        lookup: &str,
    ) -> DbResult<Option<Vec<u8>>> {
        use oidc_pending::Column as P;
        let Some(row) = oidc_pending::Entity::find()
            .filter(P::LookupHash.eq(token_hash(lookup)))
            .filter(P::Kind.eq(kind.as_str()))
            .one(&self.conn)
            .await?
        else {
            return Ok(None);
        };
        let taken = oidc_pending::Entity::delete_many()
            .filter(P::Id.eq(row.id))
            .exec(&self.conn)
            .await?;
        if taken.rows_affected != 1 || utc(row.expires_at) <= now() {
            return Ok(None);
        }
        let payload = open(key, OIDC_PENDING_AAD_CONTEXT, row.id, &row.sealed)?;
        Ok(Some(payload.expose().to_vec()))
    }
}
