//! Cluster-token authentication for manager calls: an axum layer that verifies
//! the `x-lapdev-cluster-token` header and puts a [`ClusterIdentity`] into the
//! request extensions, with a short-lived cache of verified tokens so a busy
//! server does not read the database on every heartbeat.
//!
//! A cached answer is used for at most the cache TTL after the database last
//! confirmed it (and never past the token's expiry). Once it is older than half
//! the TTL, the next request still uses it but starts one background
//! re-verification, so a cluster that keeps calling is re-checked without any
//! of its requests waiting on the database. Requests that find no usable
//! answer wait on one shared verification per token rather than each querying
//! the database: otherwise, when a slow moment leaves several requests of a
//! cluster in flight as its entry expires, they all query at once, which makes
//! the moment slower (a stampede).
//!
//! Revocation through this server is immediate: [`TokenVerifier::forget_token`]
//! and [`TokenVerifier::forget_cluster`] drop cache entries at once, and a
//! verification that was already running when they were called does not put its
//! answer into the cache. Changes made to the database by anything else are seen
//! within the cache TTL, or at once after [`TokenVerifier::recheck_all`] (what a
//! replica does when it may have missed other replicas' revocations).
//!
//! **Stale if error.** When the database cannot answer (an outage, not a
//! rejection), a token it confirmed within the TTL plus the stale-if-error
//! window ([`TokenVerifier::with_stale_if_error`]; 5 minutes in the server) is
//! still accepted, so a database outage shorter than that drops no manager's
//! calls, heartbeats or tunnel. The window is bounded, a token is never used
//! past its expiry, and revocations through this server still apply at once.
//! Past the window the answer is `unavailable`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use lapdev_common::headers::KUBE_CLUSTER_TOKEN_HEADER;
use lapdev_db::{Db, DbError, TokenRejection, VerifiedClusterToken};
use lapdev_hrpc::HrpcError;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
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
    /// When the token expires, if ever: its tunnel closes then.
    pub expires_at: Option<chrono::DateTime<Utc>>,
}

impl From<VerifiedClusterToken> for ClusterIdentity {
    fn from(v: VerifiedClusterToken) -> Self {
        Self {
            cluster_id: v.cluster_id,
            organization_id: v.organization_id,
            token_id: v.token_id,
            expires_at: v.expires_at,
        }
    }
}

/// How long a request waits for the database when a stale-if-error answer
/// could stand in.
pub const STALE_WAIT: Duration = Duration::from_secs(2);

/// The SHA-256 of a presented token: cache keys, so plaintext tokens are not
/// kept in memory longer than a request (or its background re-verification).
type Key = [u8; 32];

struct Cached {
    identity: ClusterIdentity,
    /// When the database last confirmed this answer.
    verified_at: Instant,
    /// A background re-verification is running.
    refreshing: bool,
    /// Revocations may have been missed since the database confirmed this
    /// answer ([`TokenVerifier::recheck_all`]): the next request asks the
    /// database, and uses this answer only as a stale-if-error fallback.
    recheck: bool,
}

/// One verification that concurrent requests for the same token share.
type Flight = Arc<OnceCell<Result<ClusterIdentity, HrpcError>>>;

#[derive(Default)]
struct Shared {
    cache: Mutex<HashMap<Key, Cached>>,
    in_flight: Mutex<HashMap<Key, Flight>>,
    /// Bumped by every `forget_*` and by `recheck_all`; a verification that
    /// started under an older generation does not cache its answer (an entry
    /// that is still there is marked for re-checking instead).
    generation: AtomicU64,
}

/// Verifies cluster tokens against the database, caching successes briefly.
#[derive(Clone)]
pub struct TokenVerifier {
    db: Db,
    ttl: Duration,
    stale_if_error: Duration,
    state: Arc<Shared>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("ttl", &self.ttl)
            .field("stale_if_error", &self.stale_if_error)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the cache says about a token.
enum Lookup {
    /// Use this identity; `refresh` says to start a background re-verification.
    Hit {
        identity: ClusterIdentity,
        refresh: bool,
    },
    /// Nothing usable: verify against the database.
    Miss,
}

impl TokenVerifier {
    /// A verifier whose positive answers are reused for `ttl`, with no
    /// stale-if-error window.
    pub fn new(db: Db, ttl: Duration) -> Self {
        Self {
            db,
            ttl,
            stale_if_error: Duration::ZERO,
            state: Arc::default(),
        }
    }

    /// Also accepts a token the database confirmed within `ttl + window` when
    /// the database cannot answer now (see the module docs).
    pub fn with_stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// Verifies `presented`; the error is what the caller is told.
    pub async fn verify(&self, presented: &str) -> Result<ClusterIdentity, HrpcError> {
        let key: Key = Sha256::digest(presented.as_bytes()).into();
        match self.lookup(&key) {
            Lookup::Hit { identity, refresh } => {
                if refresh {
                    let verifier = self.clone();
                    let presented = presented.to_owned();
                    tokio::spawn(async move { verifier.refresh(key, presented).await });
                }
                Ok(identity)
            }
            Lookup::Miss => match self.verify_or_wait(key, presented).await {
                Err(e) if e.code == lapdev_hrpc::Code::Unavailable => match self.stale(&key) {
                    Some(identity) => {
                        tracing::warn!(
                            cluster_id = %identity.cluster_id,
                            "the database cannot verify a cluster token; using the last confirmed answer"
                        );
                        Ok(identity)
                    }
                    None => Err(e),
                },
                other => other,
            },
        }
    }

    /// Verifies against the database; when a stale answer could stand in, waits
    /// at most [`STALE_WAIT`] (a hanging database must not hold a heartbeat up
    /// until the caller's deadline).
    async fn verify_or_wait(
        &self,
        key: Key,
        presented: &str,
    ) -> Result<ClusterIdentity, HrpcError> {
        if self.stale(&key).is_none() {
            return self.verify_shared(key, presented).await;
        }
        match tokio::time::timeout(STALE_WAIT, self.verify_shared(key, presented)).await {
            Ok(result) => result,
            Err(_) => Err(HrpcError::unavailable(
                "cannot verify the cluster token right now",
            )),
        }
    }

    /// A cached answer the database confirmed within the TTL plus the
    /// stale-if-error window, unexpired.
    fn stale(&self, key: &Key) -> Option<ClusterIdentity> {
        let cache = lock(&self.state.cache);
        let c = cache.get(key)?;
        let fresh_enough = c.verified_at.elapsed() < self.ttl + self.stale_if_error;
        let unexpired = c.identity.expires_at.is_none_or(|at| at > Utc::now());
        (fresh_enough && unexpired).then_some(c.identity)
    }

    fn lookup(&self, key: &Key) -> Lookup {
        let mut cache = lock(&self.state.cache);
        let Some(c) = cache.get_mut(key) else {
            return Lookup::Miss;
        };
        let age = c.verified_at.elapsed();
        if c.recheck || age >= self.ttl || c.identity.expires_at.is_some_and(|at| at <= Utc::now())
        {
            return Lookup::Miss;
        }
        let refresh = !c.refreshing && age >= self.ttl / 2;
        if refresh {
            c.refreshing = true;
        }
        Lookup::Hit {
            identity: c.identity,
            refresh,
        }
    }

    /// Verifies against the database, sharing one verification among the
    /// requests that present the same token at the same time.
    async fn verify_shared(&self, key: Key, presented: &str) -> Result<ClusterIdentity, HrpcError> {
        let flight: Flight = lock(&self.state.in_flight).entry(key).or_default().clone();
        let result = flight
            .get_or_init(|| self.verify_and_cache(key, presented))
            .await
            .clone();
        // The first request to finish retires the shared verification, so the
        // next miss asks the database again.
        let mut in_flight = lock(&self.state.in_flight);
        if in_flight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            in_flight.remove(&key);
        }
        result
    }

    /// A background re-verification of a cached token.
    async fn refresh(&self, key: Key, presented: String) {
        if self.verify_and_cache(key, &presented).await.is_err() {
            let mut cache = lock(&self.state.cache);
            if let Some(c) = cache.get_mut(&key) {
                // Rejected tokens have been dropped already; after a database
                // error the cached answer stays until its TTL runs out.
                c.refreshing = false;
            }
        }
    }

    /// Asks the database and caches a positive answer (or drops the cached
    /// one when the token is now rejected).
    async fn verify_and_cache(
        &self,
        key: Key,
        presented: &str,
    ) -> Result<ClusterIdentity, HrpcError> {
        let generation = self.state.generation.load(Ordering::SeqCst);
        let started = Instant::now();
        match self.db.verify_cluster_token(presented).await {
            Ok(v) => {
                let identity = ClusterIdentity::from(v);
                let mut cache = lock(&self.state.cache);
                if self.state.generation.load(Ordering::SeqCst) != generation {
                    // Something was forgotten meanwhile; this answer may predate
                    // it. A revoked token's entry is gone already; any other
                    // entry stays, as a stale-if-error fallback only.
                    if let Some(c) = cache.get_mut(&key) {
                        c.recheck = true;
                    }
                    return Ok(identity);
                }
                // Keep the cache bounded: drop stale entries when it grows.
                if cache.len() > 100_000 {
                    let ttl = self.ttl;
                    cache.retain(|_, c| c.verified_at.elapsed() < ttl);
                }
                cache.insert(
                    key,
                    Cached {
                        identity,
                        verified_at: started,
                        refreshing: false,
                        recheck: false,
                    },
                );
                Ok(identity)
            }
            Err(DbError::InvalidToken(reason)) => {
                lock(&self.state.cache).remove(&key);
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

    /// Revocations may have been missed (another replica's notifications were
    /// lost): every cached answer is confirmed by the database again before
    /// its next use. Until the database answers, a cached answer still stands
    /// in as stale-if-error allows: a database outage that began with the
    /// lost notifications must not drop every manager's calls. Revocations
    /// made through this server still apply at once. Returns the ids of the
    /// tokens cached, for the caller to check against the database and
    /// [`TokenVerifier::forget_token`] the revoked ones (so the fallback is
    /// kept only while the database cannot say).
    pub fn recheck_all(&self) -> Vec<Uuid> {
        let ids = {
            let mut cache = lock(&self.state.cache);
            self.state.generation.fetch_add(1, Ordering::SeqCst);
            cache
                .values_mut()
                .map(|c| {
                    c.recheck = true;
                    c.identity.token_id
                })
                .collect()
        };
        lock(&self.state.in_flight).clear();
        ids
    }

    /// Forgets a token at once (it was revoked).
    pub fn forget_token(&self, token_id: Uuid) {
        self.forget(|c| c.identity.token_id == token_id);
    }

    /// Forgets every token of a cluster at once (it was deleted).
    pub fn forget_cluster(&self, cluster_id: Uuid) {
        self.forget(|c| c.identity.cluster_id == cluster_id);
    }

    fn forget(&self, matches: impl Fn(&Cached) -> bool) {
        {
            let mut cache = lock(&self.state.cache);
            self.state.generation.fetch_add(1, Ordering::SeqCst);
            cache.retain(|_, c| !matches(c));
        }
        // Requests from now on must not join a verification that may have read
        // the database before the change.
        lock(&self.state.in_flight).clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapdev_db::test_support::{TestDatabase, cluster_with_tokens};

    #[tokio::test]
    async fn a_confirmed_token_outlives_a_database_outage_within_the_window_only() {
        let test_db = TestDatabase::postgres().await;
        let db = test_db.db().clone();
        let (_, cluster_id, tokens) = cluster_with_tokens(&db, &["t"]).await;
        let created = &tokens[0];
        let secret = created.secret.expose().to_owned();
        // A zero TTL: every call asks the database, as after any TTL has run out.
        let tolerant = TokenVerifier::new(db.clone(), Duration::ZERO)
            .with_stale_if_error(Duration::from_secs(3600));
        let strict = TokenVerifier::new(db.clone(), Duration::ZERO);
        assert_eq!(
            tolerant.verify(&secret).await.unwrap().token_id,
            created.token.id
        );
        strict.verify(&secret).await.unwrap();

        // The outage: the database is gone.
        drop(test_db);
        for _ in 0..3 {
            let identity = tolerant.verify(&secret).await.unwrap();
            assert_eq!(identity.cluster_id, cluster_id);
        }
        let e = strict.verify(&secret).await.unwrap_err();
        assert_eq!(e.code, lapdev_hrpc::Code::Unavailable);
        // A token this verifier never confirmed is not let in.
        assert!(
            tolerant
                .verify("lapdev_ct_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .await
                .is_err()
        );
        // A revocation through this server applies at once, outage or not.
        tolerant.forget_token(created.token.id);
        let e = tolerant.verify(&secret).await.unwrap_err();
        assert_eq!(e.code, lapdev_hrpc::Code::Unavailable);
    }

    /// After missed notifications every cached answer is confirmed again (a
    /// revocation made elsewhere is seen at once), but a database that cannot
    /// answer then does not cost the answers stale-if-error keeps.
    #[tokio::test]
    async fn a_recheck_asks_the_database_and_keeps_the_outage_fallback() {
        let test_db = TestDatabase::postgres().await;
        let db = test_db.db().clone();
        let (org, _, tokens) = cluster_with_tokens(&db, &["revoked", "kept"]).await;
        let [revoked, kept] = &tokens[..] else {
            unreachable!()
        };
        // A long TTL: without a recheck, every answer below comes from the cache.
        let ttl = Duration::from_secs(3600);
        let tolerant =
            TokenVerifier::new(db.clone(), ttl).with_stale_if_error(Duration::from_secs(3600));
        tolerant.verify(revoked.secret.expose()).await.unwrap();
        tolerant.verify(kept.secret.expose()).await.unwrap();

        // Revoked by another replica; this one missed the notification.
        db.revoke_cluster_token(org, revoked.token.id)
            .await
            .unwrap();
        assert!(tolerant.verify(revoked.secret.expose()).await.is_ok());
        tolerant.recheck_all();
        let e = tolerant.verify(revoked.secret.expose()).await.unwrap_err();
        assert_eq!(e.code, lapdev_hrpc::Code::Unauthenticated);

        // The database goes away, then a recheck: the kept token's last
        // confirmed answer stands in.
        drop(test_db);
        tolerant.recheck_all();
        let identity = tolerant.verify(kept.secret.expose()).await.unwrap();
        assert_eq!(identity.token_id, kept.token.id);
        // The revoked token's answer was dropped, not kept as a fallback.
        let e = tolerant.verify(revoked.secret.expose()).await.unwrap_err();
        assert_eq!(e.code, lapdev_hrpc::Code::Unavailable);
    }
}
