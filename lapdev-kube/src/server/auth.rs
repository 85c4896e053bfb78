//! Cluster-token authentication for manager calls: an axum layer that verifies
//! the `x-lapdev-cluster-token` header and puts a [`ClusterIdentity`] into the
//! request extensions, with a short-lived cache of verified tokens so a busy
//! server does not read the database on every heartbeat.
//!
//! Revocation through this server is immediate: [`TokenVerifier::forget_token`]
//! and [`TokenVerifier::forget_cluster`] drop cache entries at once. Changes made
//! to the database by anything else are seen within the cache TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use lapdev_common::headers::KUBE_CLUSTER_TOKEN_HEADER;
use lapdev_db::{Db, DbError, TokenRejection, VerifiedClusterToken};
use lapdev_hrpc::HrpcError;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Who is calling: set by the auth layer from a verified cluster token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// The cluster the token belongs to.
    pub cluster_id: Uuid,
    /// The cluster's organisation.
    pub organization_id: Uuid,
    /// The token used.
    pub token_id: Uuid,
}

impl From<VerifiedClusterToken> for ClusterIdentity {
    fn from(v: VerifiedClusterToken) -> Self {
        Self {
            cluster_id: v.cluster_id,
            organization_id: v.organization_id,
            token_id: v.token_id,
        }
    }
}

struct Cached {
    identity: ClusterIdentity,
    expires_at: Option<chrono::DateTime<Utc>>,
    cached_until: Instant,
}

/// Verifies cluster tokens against the database, caching successes briefly.
#[derive(Clone)]
pub struct TokenVerifier {
    db: Db,
    ttl: Duration,
    // Keyed by the SHA-256 of the presented token, so plaintext tokens are not
    // kept in memory longer than a request.
    cache: Arc<Mutex<HashMap<[u8; 32], Cached>>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier whose positive answers are reused for `ttl`.
    pub fn new(db: Db, ttl: Duration) -> Self {
        Self {
            db,
            ttl,
            cache: Arc::default(),
        }
    }

    /// Verifies `presented`; the error is what the caller is told.
    pub async fn verify(&self, presented: &str) -> Result<ClusterIdentity, HrpcError> {
        let key: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&key)
                && c.cached_until > now
                && c.expires_at.is_none_or(|at| at > Utc::now())
            {
                return Ok(c.identity);
            }
        }
        match self.db.verify_cluster_token(presented).await {
            Ok(v) => {
                let identity = ClusterIdentity::from(v);
                let expires_at = self.token_expiry(identity).await;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                // Keep the cache bounded: drop stale entries when it grows.
                if cache.len() > 100_000 {
                    cache.retain(|_, c| c.cached_until > now);
                }
                cache.insert(
                    key,
                    Cached {
                        identity,
                        expires_at,
                        cached_until: now + self.ttl,
                    },
                );
                Ok(identity)
            }
            Err(DbError::InvalidToken(reason)) => {
                Err(HrpcError::unauthenticated(rejection_message(reason)))
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster token verification failed");
                Err(HrpcError::unavailable(
                    "cannot verify the cluster token right now",
                ))
            }
        }
    }

    async fn token_expiry(&self, identity: ClusterIdentity) -> Option<chrono::DateTime<Utc>> {
        // The expiry bounds how long a cached answer may be used.
        self.db
            .list_cluster_tokens(identity.organization_id, identity.cluster_id)
            .await
            .ok()
            .and_then(|tokens| {
                tokens
                    .into_iter()
                    .find(|t| t.id == identity.token_id)
                    .and_then(|t| t.expires_at)
            })
    }

    /// Forgets a token at once (it was revoked).
    pub fn forget_token(&self, token_id: Uuid) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, c| c.identity.token_id != token_id);
    }

    /// Forgets every token of a cluster at once (it was deleted).
    pub fn forget_cluster(&self, cluster_id: Uuid) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, c| c.identity.cluster_id != cluster_id);
    }
}

fn rejection_message(reason: TokenRejection) -> String {
    match reason {
        TokenRejection::Malformed => "the cluster token is malformed".to_owned(),
        TokenRejection::Unknown => "the cluster token is not valid".to_owned(),
        TokenRejection::Revoked => "the cluster token was revoked".to_owned(),
        TokenRejection::Expired => "the cluster token has expired".to_owned(),
        TokenRejection::ClusterDeleted => "the cluster of this token was deleted".to_owned(),
    }
}

/// axum middleware: rejects requests without a valid cluster token with `401`
/// and an HRPC error body; otherwise inserts the [`ClusterIdentity`].
pub async fn require_cluster_token(
    State(verifier): State<TokenVerifier>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(value) = request.headers().get(KUBE_CLUSTER_TOKEN_HEADER) else {
        return HrpcError::unauthenticated(format!("missing {KUBE_CLUSTER_TOKEN_HEADER} header"))
            .into_response();
    };
    let Ok(token) = value.to_str() else {
        return HrpcError::unauthenticated("the cluster token is malformed").into_response();
    };
    match verifier.verify(token.trim()).await {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}
