//! [`Caller`]: the authenticated user of a request, with the role looked up for
//! this request; and [`AuthCache`], which keeps verified tokens and users for a
//! few seconds so a busy client costs no database read per call.
//!
//! Every change that could take authority away (token revoked, user disabled,
//! deleted or demoted) calls [`AuthCache::clear`] (revocations through
//! [`AuthState::revoked`](super::AuthState::revoked), which also ends the open
//! sessions they cover), so the very next call is checked against the database
//! again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use lapdev_common::role::Role;
use lapdev_db::{User, VerifiedPat};

pub use crate::access::Credential;
use uuid::Uuid;

/// How long a verified token or a looked-up user is trusted without asking the
/// database again (changes clear the cache at once).
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// The authenticated caller of an admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub user_id: Uuid,
    /// Their name.
    pub name: String,
    /// Their organisation.
    pub organization_id: Uuid,
    /// Their role, as of this request.
    pub role: Role,
    /// What authenticated this request (the token or browser session), so
    /// sessions it opens end when it is revoked.
    pub credential: Credential,
}

impl Caller {
    /// Whether the caller sees every workspace of the organisation, not only their
    /// own.
    pub fn sees_all_workspaces(&self) -> bool {
        self.role.allows(Role::Admin)
    }
}

/// Verified tokens (by SHA-256) and users (by id), each with the time it was read.
///
/// A generation counter closes the race between a lookup in flight and a
/// [`AuthCache::clear`]: what was read before the clear is not put back after it.
#[derive(Debug, Default)]
pub struct AuthCache {
    generation: AtomicU64,
    pats: Mutex<HashMap<[u8; 32], (VerifiedPat, Instant)>>,
    users: Mutex<HashMap<Uuid, (User, Instant)>>,
}

impl AuthCache {
    /// A cached token, if fresh and not expired.
    pub fn pat(&self, key: &[u8; 32]) -> Option<VerifiedPat> {
        let pats = self.pats.lock().unwrap_or_else(|e| e.into_inner());
        pats.get(key)
            .filter(|(p, at)| at.elapsed() < CACHE_TTL && p.expires_at > Utc::now())
            .map(|(p, _)| *p)
    }

    /// The generation to pass to the `put_` methods: read it before the lookup.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Remembers a verified token read during `generation`.
    pub fn put_pat(&self, key: [u8; 32], pat: VerifiedPat, generation: u64) {
        let mut pats = self.pats.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation() != generation {
            return;
        }
        pats.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        pats.insert(key, (pat, Instant::now()));
    }

    /// A cached user, if fresh.
    pub fn user(&self, id: Uuid) -> Option<User> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .get(&id)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(u, _)| u.clone())
    }

    /// Remembers a user read during `generation`.
    pub fn put_user(&self, user: User, generation: u64) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation() != generation {
            return;
        }
        users.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        users.insert(user.id, (user, Instant::now()));
    }

    /// Forgets everything: the next call of every client is checked afresh.
    pub fn clear(&self) {
        // Both locks are held while the generation moves, so no put can slip in
        // between the bump and the clearing.
        let mut pats = self.pats.lock().unwrap_or_else(|e| e.into_inner());
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        pats.clear();
        users.clear();
    }
}
