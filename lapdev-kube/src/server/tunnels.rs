//! [`TunnelBook`]: which token opened each cluster's tunnel, under the one lock
//! that registration, revocation and expiry all take, so they never
//! interleave.
//!
//! The invariant: a tunnel is usable (published in the registry) only after
//! its token id has been recorded with the tunnel's generation, and both
//! happen in one critical section that also checks the token against the
//! revocations this server has seen. So:
//!
//! - a revocation that lands before registration is found by the check and
//!   the tunnel is refused;
//! - a revocation that lands after registration finds the recorded token and
//!   closes the tunnel;
//! - there is no third case: revocation takes the same lock.
//!
//! Revoked token ids are remembered for [`REVOKED_MEMORY`]: longer than any
//! upgrade takes between its token check and its registration.
//!
//! Expiry closes a tunnel only while it is still the generation that was
//! registered (a newer tunnel of the cluster, with another token, is left
//! alone).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::ClusterIdentity;

/// How long a revoked token id is remembered for refusing registrations.
pub const REVOKED_MEMORY: Duration = Duration::from_secs(10 * 60);

/// Why a tunnel was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its token was revoked while the upgrade was under way.
    Revoked,
    /// Its token expired while the upgrade was under way.
    Expired,
}

impl Refusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Revoked => "the cluster token was revoked",
            Self::Expired => "the cluster token has expired",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Opened {
    token_id: Uuid,
    generation: u64,
}

#[derive(Default)]
struct State {
    next_generation: u64,
    current: HashMap<Uuid, Opened>,
    revoked: HashMap<Uuid, Instant>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct TunnelBook {
    state: Mutex<State>,
}

impl TunnelBook {
    /// Records the tunnel's token and a new generation and then calls
    /// `publish` (which makes the tunnel usable), all under the lock; or
    /// refuses, without publishing, when the token was revoked or has expired.
    pub(crate) fn register(
        &self,
        identity: ClusterIdentity,
        publish: impl FnOnce(),
    ) -> Result<u64, Refusal> {
        let mut state = lock(&self.state);
        prune(&mut state);
        if state.revoked.contains_key(&identity.token_id) {
            return Err(Refusal::Revoked);
        }
        if identity
            .expires_at
            .is_some_and(|at| at <= chrono::Utc::now())
        {
            return Err(Refusal::Expired);
        }
        state.next_generation += 1;
        let generation = state.next_generation;
        state.current.insert(
            identity.cluster_id,
            Opened {
                token_id: identity.token_id,
                generation,
            },
        );
        publish();
        Ok(generation)
    }

    /// Remembers `token_id` as revoked and calls `close` for every cluster
    /// whose current tunnel it opened, under the lock.
    pub(crate) fn revoke(&self, token_id: Uuid, mut close: impl FnMut(Uuid)) {
        let mut state = lock(&self.state);
        prune(&mut state);
        state.revoked.insert(token_id, Instant::now());
        let clusters: Vec<Uuid> = state
            .current
            .iter()
            .filter(|(_, o)| o.token_id == token_id)
            .map(|(c, _)| *c)
            .collect();
        for cluster_id in clusters {
            state.current.remove(&cluster_id);
            close(cluster_id);
        }
    }

    /// Calls `close` if `generation` is still the cluster's current tunnel
    /// (its token expired), under the lock.
    pub(crate) fn expire(&self, cluster_id: Uuid, generation: u64, close: impl FnOnce()) -> bool {
        let mut state = lock(&self.state);
        if state
            .current
            .get(&cluster_id)
            .is_some_and(|o| o.generation == generation)
        {
            state.current.remove(&cluster_id);
            close();
            true
        } else {
            false
        }
    }

    /// A tunnel ended: forgets it if it is still the current generation.
    /// Returns whether it was.
    pub(crate) fn closed(&self, cluster_id: Uuid, generation: u64) -> bool {
        let mut state = lock(&self.state);
        if state
            .current
            .get(&cluster_id)
            .is_some_and(|o| o.generation == generation)
        {
            state.current.remove(&cluster_id);
            true
        } else {
            false
        }
    }

    /// The tokens that opened the current tunnels.
    pub(crate) fn tokens(&self) -> Vec<Uuid> {
        let state = lock(&self.state);
        let mut tokens: Vec<Uuid> = state.current.values().map(|o| o.token_id).collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
    }

    /// A cluster was deleted.
    pub(crate) fn forget_cluster(&self, cluster_id: Uuid) {
        lock(&self.state).current.remove(&cluster_id);
    }

    /// The token that opened the cluster's current tunnel.
    #[cfg(test)]
    fn token_of(&self, cluster_id: Uuid) -> Option<Uuid> {
        lock(&self.state)
            .current
            .get(&cluster_id)
            .map(|o| o.token_id)
    }
}

fn prune(state: &mut State) {
    state.revoked.retain(|_, at| at.elapsed() < REVOKED_MEMORY);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};

    use super::*;

    fn identity(cluster_id: Uuid, token_id: Uuid) -> ClusterIdentity {
        ClusterIdentity {
            cluster_id,
            organization_id: Uuid::nil(),
            token_id,
            expires_at: None,
        }
    }

    /// A stand-in for the tunnel registry: the clusters with a live tunnel.
    type Live = Arc<Mutex<HashSet<Uuid>>>;

    #[test]
    fn revocation_before_registration_refuses_the_tunnel() {
        let book = TunnelBook::default();
        let live = Live::default();
        let (cluster, token) = (Uuid::new_v4(), Uuid::new_v4());
        book.revoke(token, |c| {
            live.lock().unwrap().remove(&c);
        });
        let registered = book.register(identity(cluster, token), || {
            live.lock().unwrap().insert(cluster);
        });
        assert_eq!(registered, Err(Refusal::Revoked));
        assert!(live.lock().unwrap().is_empty());
        assert_eq!(book.token_of(cluster), None);
    }

    #[test]
    fn revocation_after_registration_closes_the_tunnel() {
        let book = TunnelBook::default();
        let live = Live::default();
        let (cluster, token) = (Uuid::new_v4(), Uuid::new_v4());
        book.register(identity(cluster, token), || {
            live.lock().unwrap().insert(cluster);
        })
        .unwrap();
        assert_eq!(book.token_of(cluster), Some(token));
        book.revoke(token, |c| {
            live.lock().unwrap().remove(&c);
        });
        assert!(live.lock().unwrap().is_empty());
    }

    #[test]
    fn the_token_is_recorded_before_the_tunnel_is_usable() {
        let book = TunnelBook::default();
        let (cluster, token) = (Uuid::new_v4(), Uuid::new_v4());
        book.register(identity(cluster, token), || {
            // Publishing happens with the record already in place (the lock
            // is held, so look at the state directly).
            let state = book.state.try_lock();
            assert!(state.is_err(), "publish runs under the book's lock");
        })
        .unwrap();
        assert_eq!(book.token_of(cluster), Some(token));
    }

    #[test]
    fn an_expired_token_is_refused_and_expiry_spares_a_newer_tunnel() {
        let book = TunnelBook::default();
        let cluster = Uuid::new_v4();
        let expired = ClusterIdentity {
            expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            ..identity(cluster, Uuid::new_v4())
        };
        assert_eq!(book.register(expired, || {}), Err(Refusal::Expired));
        let first = book
            .register(identity(cluster, Uuid::new_v4()), || {})
            .unwrap();
        let second = book
            .register(identity(cluster, Uuid::new_v4()), || {})
            .unwrap();
        assert!(!book.expire(cluster, first, || panic!("closed the newer tunnel")));
        assert!(!book.closed(cluster, first));
        let mut closed = false;
        assert!(book.expire(cluster, second, || closed = true));
        assert!(closed);
    }

    /// Registration and revocation racing on two threads, started together
    /// by a barrier, many times: whichever wins, no tunnel of the revoked
    /// token is left live.
    #[test]
    fn racing_registration_and_revocation_never_leave_a_tunnel_open() {
        for _ in 0..2_000 {
            let book = Arc::new(TunnelBook::default());
            let live = Live::default();
            let (cluster, token) = (Uuid::new_v4(), Uuid::new_v4());
            let start = Arc::new(Barrier::new(2));
            let registering = {
                let (book, live, start) = (book.clone(), live.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    book.register(identity(cluster, token), || {
                        live.lock().unwrap().insert(cluster);
                    })
                })
            };
            start.wait();
            book.revoke(token, |c| {
                live.lock().unwrap().remove(&c);
            });
            let _ = registering.join().unwrap();
            assert!(
                live.lock().unwrap().is_empty(),
                "a tunnel of a revoked token stayed open"
            );
        }
    }
}
