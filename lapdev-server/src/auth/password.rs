//! Passwords: argon2id (the `argon2` crate) with fixed parameters, run on the
//! blocking pool behind a global concurrency limit so sign-ins cannot starve the
//! runtime or the other RPCs; a dummy hash so an unknown user costs the same as a
//! known one; and [`SlowDown`], the exponential delay after failed attempts, per
//! user and per client address (a delay, never a lockout an attacker could use
//! against a victim).
//!
//! The counts live in this process: each replica of a multi-replica
//! deployment slows down the attempts it sees, so spreading guesses over N
//! replicas buys N times the attempts (README, "Several replicas").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Memory cost in KiB (19 MiB), iterations and lanes: OWASP's argon2id baseline.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Iterations.
pub const ARGON2_ITERATIONS: u32 = 2;
/// Lanes.
pub const ARGON2_LANES: u32 = 1;

/// Failed attempts are forgotten after this long without another.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The delay after the first failure; it doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The delay never grows past this.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// Why hashing failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The parameters or the salt were refused by argon2 (a bug, not bad input).
    #[error("could not hash the password: {0}")]
    Hash(argon2::password_hash::Error),
    /// The blocking task did not finish.
    #[error("the hashing task failed")]
    Join(#[source] tokio::task::JoinError),
    /// The limiter was closed.
    #[error("the password hasher is shutting down")]
    Closed,
}

fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
        .map_err(|e| PasswordError::Hash(e.into()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` into a PHC string (synchronously; use [`Passwords::hash`] on
/// the server).
pub fn hash_blocking(password: &str) -> Result<String, PasswordError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(PasswordError::Hash)?;
    Ok(hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(PasswordError::Hash)?
        .to_string())
}

/// Whether `password` matches the PHC string `hash` (a malformed hash never does).
pub fn verify_blocking(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    hasher().is_ok_and(|h| h.verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Hashing and verification on the blocking pool, at most `limit` at once.
#[derive(Clone)]
pub struct Passwords {
    limit: Arc<Semaphore>,
    dummy: Arc<String>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").finish_non_exhaustive()
    }
}

impl Passwords {
    /// At most `limit` hashes at once; computes the dummy hash now.
    pub fn new(limit: usize) -> Result<Self, PasswordError> {
        let random: [u8; 16] = rand::random();
        Ok(Self {
            limit: Arc::new(Semaphore::new(limit.max(1))),
            dummy: Arc::new(hash_blocking(&hex::encode(random))?),
        })
    }

    /// Hashes `password` for storing.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(PasswordError::Join)?
    }

    /// Whether `password` matches `hash`; with no hash (unknown user, no password)
    /// the dummy hash is verified instead, so the answer takes as long, and is no.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| (*self.dummy).clone());
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&password, &hash))
            .await
            .map_err(PasswordError::Join)?;
        Ok(known && ok)
    }
}

/// Failed sign-in attempts per key (a user, a client address) and the delay the
/// next attempt waits.
#[derive(Debug, Default)]
pub struct SlowDown {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl SlowDown {
    /// How long the next attempt for `key` waits.
    pub fn delay(&self, key: &str) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(key) {
            Some((n, at)) if *n > 0 && at.elapsed() < FORGET_AFTER => delay_after(*n),
            _ => Duration::ZERO,
        }
    }

    /// Counts a failure for `key`.
    pub fn failed(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        let entry = failures
            .entry(key.to_owned())
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }

    /// Forgets `key`'s failures (after a success).
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The delay after `failures` failed attempts: 250 ms, doubling, at most 8 s.
pub fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
    FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_blocking("correct horse", &h));
        assert!(!verify_blocking("wrong", &h));
        assert!(!verify_blocking("correct horse", "not a hash"));
    }

    #[tokio::test]
    async fn unknown_users_never_verify() {
        let p = Passwords::new(1).unwrap();
        assert!(!p.verify("anything".into(), None).await.unwrap());
        let h = p.hash("pw".into()).await.unwrap();
        assert!(p.verify("pw".into(), Some(h)).await.unwrap());
    }

    #[test]
    fn failures_slow_down_exponentially_up_to_a_cap() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(1), Duration::from_millis(250));
        assert_eq!(delay_after(2), Duration::from_millis(500));
        assert_eq!(delay_after(4), Duration::from_secs(2));
        assert_eq!(delay_after(40), MAX_DELAY);
        let s = SlowDown::default();
        assert_eq!(s.delay("u"), Duration::ZERO);
        s.failed("u");
        s.failed("u");
        assert_eq!(s.delay("u"), Duration::from_millis(500));
        assert_eq!(s.delay("other"), Duration::ZERO);
        s.succeeded("u");
        assert_eq!(s.delay("u"), Duration::ZERO);
    }
}
