//! Cluster tokens (`kube_cluster_token`): create (the plaintext is returned once),
//! verify, revoke, list, and the coalesced `last_used_at`.
//!
//! Only the SHA-256 of a token is stored. Verification is one indexed read and never
//! writes: `last_used_at` is kept in memory and written by [`Db::flush_token_usage`],
//! which the server runs periodically ([`Db::run_token_usage_flusher`]) and on
//! shutdown ([`Db::close`]).

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, FixedOffset, Utc};
use lapdev_common::token::{
    CLUSTER_TOKEN_PREFIX, CLUSTER_TOKEN_SECRET_BYTES, cluster_token_display_prefix,
    is_well_formed_cluster_token,
};
use sea_orm::sea_query::{CaseStatement, Expr};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::crypto::{random_bytes, token_hash};
use crate::db::{Db, now};
use crate::entities::{kube_cluster, kube_cluster_token};
use crate::error::{DbError, DbResult, EntityKind, TokenRejection};
use crate::util::{check_named, tz, utc};

/// A cluster token as listed: never the secret, only its display prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterToken {
    /// Primary key.
    pub id: Uuid,
    /// The cluster it authenticates.
    pub cluster_id: Uuid,
    /// A label chosen by the admin (e.g. "initial", "rotation-2026-11").
    pub name: String,
    /// `lapdev_ct_` plus the first characters of the secret.
    pub display_prefix: String,
    /// Who created it.
    pub created_by: Option<Uuid>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last presented successfully (including uses not yet flushed).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops being valid, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What [`Db::create_cluster_token`] needs.
#[derive(Debug, Clone)]
pub struct NewClusterToken {
    /// A label chosen by the admin.
    pub name: String,
    /// Who creates it.
    pub created_by: Option<Uuid>,
    /// When it stops being valid, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The plaintext of a new token. Shown once; its `Debug` does not reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTokenSecret(String);

impl ClusterTokenSecret {
    /// The token to hand to the manager, on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClusterTokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTokenSecret(<redacted>)")
    }
}

/// A new token: its row and its plaintext.
#[derive(Debug, Clone)]
pub struct CreatedClusterToken {
    /// The stored row.
    pub token: ClusterToken,
    /// The plaintext, which is not stored anywhere.
    pub secret: ClusterTokenSecret,
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClusterToken {
    /// The token's id (to revoke it or close its tunnel).
    pub token_id: Uuid,
    /// The cluster it authenticates.
    pub cluster_id: Uuid,
    /// The cluster's organisation, for scoping what the manager may touch.
    pub organization_id: Uuid,
    /// When the token stops being valid, if ever (tunnels close then).
    pub expires_at: Option<DateTime<Utc>>,
}

fn token_from_model(m: kube_cluster_token::Model) -> ClusterToken {
    ClusterToken {
        id: m.id,
        cluster_id: m.cluster_id,
        name: m.name,
        display_prefix: m.display_prefix,
        created_by: m.created_by,
        created_at: utc(m.created_at),
        last_used_at: m.last_used_at.map(utc),
        expires_at: m.expires_at.map(utc),
        revoked_at: m.revoked_at.map(utc),
    }
}

/// A fresh token: the prefix and 256 bits from the OS CSPRNG in base64url.
fn generate_token() -> DbResult<String> {
    let bytes = random_bytes::<CLUSTER_TOKEN_SECRET_BYTES>().ok_or(DbError::Random)?;
    Ok(format!(
        "{CLUSTER_TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Tokens per `UPDATE` when flushing usage: two bind parameters each plus one for the
/// `IN` list, well below the parameter limits of PostgreSQL and SQLite.
const FLUSH_BATCH: usize = 500;

type VerifyRow = (
    Uuid,
    Uuid,
    Option<DateTime<FixedOffset>>,
    Option<DateTime<FixedOffset>>,
    Uuid,
    Option<DateTime<FixedOffset>>,
);

impl Db {
    /// Creates a token for a live cluster of `org_id` and returns its plaintext once.
    pub async fn create_cluster_token(
        &self,
        org_id: Uuid,
        cluster_id: Uuid,
        new: NewClusterToken,
    ) -> DbResult<CreatedClusterToken> {
        self.check_new_cluster_token(org_id, &new).await?;
        self.get_cluster(org_id, cluster_id).await?;
        Self::insert_cluster_token(&self.conn, cluster_id, new).await
    }

    /// The checks [`Db::create_cluster_token`] makes of the token itself.
    pub(crate) async fn check_new_cluster_token(
        &self,
        org_id: Uuid,
        new: &NewClusterToken,
    ) -> DbResult<()> {
        check_named(lapdev_common::name::NameKind::Token, &new.name)?;
        if let Some(user_id) = new.created_by {
            self.get_user(org_id, user_id).await?;
        }
        Ok(())
    }

    /// Mints and inserts a checked token through `conn` (the pool or a
    /// transaction).
    pub(crate) async fn insert_cluster_token<C: sea_orm::ConnectionTrait>(
        conn: &C,
        cluster_id: Uuid,
        new: NewClusterToken,
    ) -> DbResult<CreatedClusterToken> {
        let secret = generate_token()?;
        let display_prefix = cluster_token_display_prefix(&secret)
            .expect("generated tokens are well-formed")
            .to_owned();
        let model = kube_cluster_token::ActiveModel {
            id: Set(Uuid::new_v4()),
            cluster_id: Set(cluster_id),
            name: Set(new.name),
            token_hash: Set(token_hash(&secret)),
            display_prefix: Set(display_prefix),
            created_by: Set(new.created_by),
            created_at: Set(tz(now())),
            last_used_at: Set(None),
            expires_at: Set(new.expires_at.map(tz)),
            revoked_at: Set(None),
        }
        .insert(conn)
        .await?;
        Ok(CreatedClusterToken {
            token: token_from_model(model),
            secret: ClusterTokenSecret(secret),
        })
    }

    /// Checks a presented token. Unknown, malformed, revoked and expired tokens and
    /// tokens of deleted clusters are `InvalidToken`. Does not write to the database;
    /// the use is recorded in memory for the next flush.
    pub async fn verify_cluster_token(&self, presented: &str) -> DbResult<VerifiedClusterToken> {
        if !is_well_formed_cluster_token(presented) {
            return Err(DbError::InvalidToken(TokenRejection::Malformed));
        }
        use kube_cluster_token::Column as T;
        let row: Option<VerifyRow> = kube_cluster_token::Entity::find()
            .select_only()
            .column(T::Id)
            .column(T::ClusterId)
            .column(T::ExpiresAt)
            .column(T::RevokedAt)
            .column(kube_cluster::Column::OrganizationId)
            .column(kube_cluster::Column::DeletedAt)
            .inner_join(kube_cluster::Entity)
            .filter(T::TokenHash.eq(token_hash(presented)))
            .into_tuple()
            .one(&self.conn)
            .await?;
        let Some((token_id, cluster_id, expires_at, revoked_at, organization_id, deleted_at)) = row
        else {
            return Err(DbError::InvalidToken(TokenRejection::Unknown));
        };
        let at = now();
        if revoked_at.is_some() {
            return Err(DbError::InvalidToken(TokenRejection::Revoked));
        }
        if expires_at.is_some_and(|expires| utc(expires) <= at) {
            return Err(DbError::InvalidToken(TokenRejection::Expired));
        }
        if deleted_at.is_some() {
            return Err(DbError::InvalidToken(TokenRejection::ClusterDeleted));
        }
        self.token_usage.record(token_id, at);
        Ok(VerifiedClusterToken {
            token_id,
            cluster_id,
            organization_id,
            expires_at: expires_at.map(utc),
        })
    }

    /// Of `token_ids`, those that still work: not revoked, not expired, their
    /// cluster not deleted. A replica whose change listener reconnected checks
    /// its tunnels' tokens with it (revocations may have been missed).
    pub async fn live_cluster_token_ids(
        &self,
        token_ids: &[Uuid],
    ) -> DbResult<std::collections::HashSet<Uuid>> {
        use kube_cluster_token::Column as T;
        if token_ids.is_empty() {
            return Ok(Default::default());
        }
        let at = tz(now());
        let ids: Vec<Uuid> = kube_cluster_token::Entity::find()
            .select_only()
            .column(T::Id)
            .inner_join(kube_cluster::Entity)
            .filter(T::Id.is_in(token_ids.iter().copied()))
            .filter(T::RevokedAt.is_null())
            .filter(
                sea_orm::Condition::any()
                    .add(T::ExpiresAt.is_null())
                    .add(T::ExpiresAt.gt(at)),
            )
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(ids.into_iter().collect())
    }

    /// Revokes a token of one of `org_id`'s clusters. Revoking twice keeps the first
    /// revocation time.
    pub async fn revoke_cluster_token(&self, org_id: Uuid, token_id: Uuid) -> DbResult<()> {
        let token = kube_cluster_token::Entity::find_by_id(token_id)
            .inner_join(kube_cluster::Entity)
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::ClusterToken, token_id))?;
        if token.revoked_at.is_none() {
            kube_cluster_token::Entity::update_many()
                .col_expr(
                    kube_cluster_token::Column::RevokedAt,
                    Expr::value(Some(tz(now()))),
                )
                .filter(kube_cluster_token::Column::Id.eq(token_id))
                .filter(kube_cluster_token::Column::RevokedAt.is_null())
                .exec(&self.conn)
                .await?;
            self.changes.publish(crate::Change::TokenRevoked {
                organization_id: org_id,
                cluster_id: token.cluster_id,
                token_id,
            });
        }
        Ok(())
    }

    /// The tokens of a live cluster of `org_id` (revoked and expired ones included),
    /// oldest first. `last_used_at` includes uses not yet flushed.
    pub async fn list_cluster_tokens(
        &self,
        org_id: Uuid,
        cluster_id: Uuid,
    ) -> DbResult<Vec<ClusterToken>> {
        self.get_cluster(org_id, cluster_id).await?;
        let tokens = kube_cluster_token::Entity::find()
            .filter(kube_cluster_token::Column::ClusterId.eq(cluster_id))
            .order_by_asc(kube_cluster_token::Column::CreatedAt)
            .order_by_asc(kube_cluster_token::Column::Id)
            .all(&self.conn)
            .await?;
        Ok(tokens
            .into_iter()
            .map(|model| {
                let mut token = token_from_model(model);
                if let Some(pending) = self.token_usage.get(token.id) {
                    token.last_used_at =
                        Some(token.last_used_at.map_or(pending, |t| t.max(pending)));
                }
                token
            })
            .collect())
    }

    /// Writes the `last_used_at` of tokens used since the last flush; returns how many
    /// tokens were written. Writes are batched ([`FLUSH_BATCH`] tokens per `UPDATE`);
    /// entries that fail to write are kept for the next flush.
    pub async fn flush_token_usage(&self) -> DbResult<usize> {
        use kube_cluster_token::Column as T;
        let mut pending: Vec<_> = self.token_usage.take().into_iter().collect();
        pending.sort_unstable_by_key(|(id, _)| *id);
        let mut written = 0;
        for batch in pending.chunks(FLUSH_BATCH) {
            // One statement per batch: `SET last_used_at = CASE WHEN id = ? THEN ? ...`.
            let mut case = CaseStatement::new();
            for &(token_id, at) in batch {
                case = case.case(T::Id.eq(token_id), Expr::value(Some(tz(at))));
            }
            let result = kube_cluster_token::Entity::update_many()
                .col_expr(T::LastUsedAt, case.finally(Expr::col(T::LastUsedAt)).into())
                .filter(T::Id.is_in(batch.iter().map(|(id, _)| *id)))
                .exec(&self.conn)
                .await;
            if let Err(err) = result {
                self.token_usage.restore(pending[written..].iter().copied());
                return Err(err.into());
            }
            written += batch.len();
        }
        Ok(written)
    }

    /// Flushes token usage every `period` until `shutdown` resolves, then once more.
    /// Flush errors are logged and retried on the next tick.
    pub async fn run_token_usage_flusher(
        &self,
        period: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut shutdown => break,
            }
            if let Err(err) = self.flush_token_usage().await {
                tracing::warn!(error = %err, "flushing cluster-token usage failed");
            }
        }
        if let Err(err) = self.flush_token_usage().await {
            tracing::warn!(error = %err, "final flush of cluster-token usage failed");
        }
    }
}
