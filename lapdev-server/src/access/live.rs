//! The registry of live access sessions (shell, exec, port-forward), keyed by
//! user and by the credential that opened each one, so taking authority away
//! ends them at once.
//!
//! One API for every revocation: [`LiveSessions::revoke`] with a
//! [`Revocation`]. The authorization state calls it (through
//! [`AuthState::revoked`](crate::auth::AuthState::revoked)) after the database
//! has committed a user's disabling or deletion, a personal access token's
//! revocation or a browser session's; each matching session ends with the
//! revocation's [`reason`](Revocation::reason) as its close reason. The
//! registry is per process: with several replicas each replica receives the
//! same [`Revocation`] through the change feed (`LISTEN/NOTIFY`, see
//! `crate::replica_changes`) and calls `revoke` on its own registry.
//!
//! A session registers *before* the check that admits it is final: see
//! `admit` in `mod.rs`, which re-checks the credential when the authorization
//! cache moved while it registered, so no revocation slips between the check
//! and the registration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use uuid::Uuid;

/// What authenticated a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A personal access token, by id.
    Pat(Uuid),
    /// A browser session, by id.
    BrowserSession(Uuid),
    /// A legacy admin JWT (revocable only through its user).
    Jwt,
}

pub use lapdev_db::changes::Revocation;

/// Whether `revocation` ends a session of `entry`'s kind.
fn covers(revocation: &Revocation, entry: &Entry) -> bool {
    match *revocation {
        Revocation::UserDisabled { .. } | Revocation::UserDeleted { .. } => true,
        Revocation::PatRevoked { token_id, .. } => entry.credential == Credential::Pat(token_id),
        Revocation::BrowserSessionRevoked { session_id, .. } => {
            entry.credential == Credential::BrowserSession(session_id)
        }
        Revocation::AdminAccessWithdrawn { .. } => entry.in_others_workspace.is_some(),
        Revocation::AdminSessionsDisallowed { organization_id } => {
            entry.in_others_workspace == Some(organization_id)
        }
    }
}

struct Entry {
    credential: Credential,
    /// Set (to the workspace's organisation) when the session is in a
    /// workspace of another user, as an admin: a withdrawn role or setting
    /// ends it.
    in_others_workspace: Option<Uuid>,
    end: oneshot::Sender<&'static str>,
}

type Users = HashMap<Uuid, HashMap<u64, Entry>>;

/// The live sessions of this process. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct LiveSessions {
    users: Arc<Mutex<Users>>,
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for LiveSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSessions")
            .field("open", &self.count())
            .finish()
    }
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session of `user_id` opened with `credential`; it stays
    /// registered until the returned handle is dropped.
    pub fn open(&self, user_id: Uuid, credential: Credential) -> LiveSession {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = oneshot::channel();
        self.lock().entry(user_id).or_default().insert(
            id,
            Entry {
                credential,
                in_others_workspace: None,
                end,
            },
        );
        LiveSession {
            registry: self.clone(),
            user_id,
            id,
            ended,
        }
    }

    /// Ends every session `revocation` covers; returns how many.
    pub fn revoke(&self, revocation: Revocation) -> usize {
        let ended: Vec<Entry> = {
            let mut users = self.lock();
            let keys: Vec<Uuid> = match revocation.user_id() {
                Some(user) => vec![user],
                None => users.keys().copied().collect(),
            };
            let mut ended = Vec::new();
            for user in keys {
                let Some(sessions) = users.get_mut(&user) else {
                    continue;
                };
                let ids: Vec<u64> = sessions
                    .iter()
                    .filter(|(_, e)| covers(&revocation, e))
                    .map(|(id, _)| *id)
                    .collect();
                ended.extend(ids.iter().filter_map(|id| sessions.remove(id)));
                if sessions.is_empty() {
                    users.remove(&user);
                }
            }
            ended
        };
        let n = ended.len();
        for e in ended {
            // A session whose handle is being dropped no longer listens.
            let _ = e.end.send(revocation.reason());
        }
        if n > 0 {
            tracing::info!(
                ?revocation,
                sessions = n,
                reason = revocation.reason(),
                "access sessions ended"
            );
        }
        n
    }

    /// How many sessions are open in this process.
    pub fn count(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    /// How many sessions `credential` of `user_id` holds open in this process.
    pub fn count_of(&self, user_id: Uuid, credential: Credential) -> usize {
        self.lock()
            .get(&user_id)
            .map(|s| s.values().filter(|e| e.credential == credential).count())
            .unwrap_or(0)
    }
}

/// One registered session; dropping it unregisters it.
pub struct LiveSession {
    registry: LiveSessions,
    user_id: Uuid,
    id: u64,
    ended: oneshot::Receiver<&'static str>,
}

impl std::fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession")
            .field("user_id", &self.user_id)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LiveSession {
    /// Marks the session as one in a workspace of another user of
    /// `organization_id`, opened as an admin: demoting the user or turning
    /// the organisation's `admins_may_open_shells` off ends it. Mark before
    /// the final check that admits it (see `admit` in `mod.rs`).
    pub fn mark_in_others_workspace(&self, organization_id: Uuid) {
        if let Some(entry) = self
            .registry
            .lock()
            .get_mut(&self.user_id)
            .and_then(|s| s.get_mut(&self.id))
        {
            entry.in_others_workspace = Some(organization_id);
        }
    }

    /// Resolves with the reason when the session's authority is revoked; never
    /// otherwise.
    pub async fn revoked(&mut self) -> &'static str {
        match (&mut self.ended).await {
            Ok(reason) => reason,
            // The registry never drops a sender without sending, unless the
            // entry was removed by our own drop: then nobody is waiting.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let mut users = self.registry.lock();
        if let Some(sessions) = users.get_mut(&self.user_id) {
            sessions.remove(&self.id);
            if sessions.is_empty() {
                users.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended_now(s: &mut LiveSession) -> Option<&'static str> {
        s.ended.try_recv().ok()
    }

    #[test]
    fn revocations_end_exactly_the_sessions_they_cover() {
        let live = LiveSessions::default();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (pat1, pat2, web) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut a1 = live.open(alice, Credential::Pat(pat1));
        let mut a2 = live.open(alice, Credential::Pat(pat2));
        let mut a3 = live.open(alice, Credential::BrowserSession(web));
        let mut b1 = live.open(bob, Credential::Pat(pat1));
        assert_eq!(live.count(), 4);
        assert_eq!(live.count_of(alice, Credential::Pat(pat1)), 1);

        let n = live.revoke(Revocation::PatRevoked {
            user_id: alice,
            token_id: pat1,
        });
        assert_eq!(n, 1);
        assert!(ended_now(&mut a1).unwrap().contains("token"));
        assert_eq!(ended_now(&mut a2), None);
        assert_eq!(ended_now(&mut b1), None, "another user's session stays");

        let n = live.revoke(Revocation::BrowserSessionRevoked {
            user_id: alice,
            session_id: web,
        });
        assert_eq!(n, 1);
        assert!(ended_now(&mut a3).unwrap().contains("browser session"));

        assert_eq!(live.revoke(Revocation::UserDisabled { user_id: alice }), 1);
        assert!(ended_now(&mut a2).unwrap().contains("disabled"));
        assert_eq!(ended_now(&mut b1), None);
        assert_eq!(live.count(), 1);
    }

    #[test]
    fn withdrawn_admin_access_ends_only_sessions_in_others_workspaces() {
        let live = LiveSessions::default();
        let (ada, carl) = (Uuid::new_v4(), Uuid::new_v4());
        let (org, other_org) = (Uuid::new_v4(), Uuid::new_v4());
        let mut ada_own = live.open(ada, Credential::Jwt);
        let mut ada_others = live.open(ada, Credential::Jwt);
        ada_others.mark_in_others_workspace(org);
        let mut carl_others = live.open(carl, Credential::Jwt);
        carl_others.mark_in_others_workspace(org);
        let mut elsewhere = live.open(carl, Credential::Jwt);
        elsewhere.mark_in_others_workspace(other_org);

        assert_eq!(
            live.revoke(Revocation::AdminAccessWithdrawn { user_id: ada }),
            1
        );
        assert!(ended_now(&mut ada_others).unwrap().contains("role"));
        assert_eq!(ended_now(&mut ada_own), None, "her own workspace's stays");
        assert_eq!(ended_now(&mut carl_others), None);

        assert_eq!(
            live.revoke(Revocation::AdminSessionsDisallowed {
                organization_id: org
            }),
            1
        );
        assert!(
            ended_now(&mut carl_others)
                .unwrap()
                .contains("organisation")
        );
        assert_eq!(
            ended_now(&mut elsewhere),
            None,
            "another organisation's stays"
        );
        assert_eq!(ended_now(&mut ada_own), None);
    }

    #[test]
    fn a_dropped_session_is_unregistered() {
        let live = LiveSessions::default();
        let user = Uuid::new_v4();
        let s = live.open(user, Credential::Jwt);
        assert_eq!(live.count(), 1);
        drop(s);
        assert_eq!(live.count(), 0);
        assert_eq!(live.revoke(Revocation::UserDeleted { user_id: user }), 0);
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let u = Uuid::nil();
        for r in [
            Revocation::UserDisabled { user_id: u },
            Revocation::UserDeleted { user_id: u },
            Revocation::PatRevoked {
                user_id: u,
                token_id: u,
            },
            Revocation::BrowserSessionRevoked {
                user_id: u,
                session_id: u,
            },
            Revocation::AdminAccessWithdrawn { user_id: u },
            Revocation::AdminSessionsDisallowed { organization_id: u },
        ] {
            assert!(r.reason().len() <= 123, "{r:?}");
        }
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_with_the_reason() {
        let live = LiveSessions::default();
        let user = Uuid::new_v4();
        let mut s = live.open(user, Credential::Jwt);
        let waiter = tokio::spawn(async move { s.revoked().await });
        live.revoke(Revocation::UserDisabled { user_id: user });
        let reason = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(reason.contains("disabled"));
    }
}
