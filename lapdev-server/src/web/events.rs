//! `GET /events`: live updates for the dashboard as Server-Sent Events, fed
//! by the database's change feed ([`lapdev_db::Change`]).
//!
//! An event says what changed, not the row: `{"kind":"workspace","id":…}`,
//! `cluster` or `token`; the page then asks the HRPC method it shows (which
//! applies the caller's rights again). Each stream sees only its
//! organisation's events, and only those its role may know of: a member gets
//! their own workspaces' events and the clusters' (they may list clusters),
//! never token events or another user's workspaces.
//!
//! Ids are `{epoch}-{seq}`: `epoch` is random per process, `seq` counts the
//! hub's events. The hub keeps the last [`REPLAY_WINDOW`] events; a browser
//! that reconnects with `Last-Event-ID` gets what it missed from that window,
//! and otherwise (another process, or too long away) one `reload` event: the
//! page reloads rather than show stale state. A stream that falls behind the
//! live feed gets `reload` too.
//!
//! A stream ends when the authority behind it is taken away: it registers
//! with [`AuthState::streams`](crate::auth::AuthState) under its browser
//! session, and signing out, revoking the session, or disabling or deleting
//! the user sends one `ended` event (its data the reason) and closes it; the
//! browser's reconnect is then refused (`401`) and the page goes to sign-in.
//!
//! `/metrics` counts the open streams ([`STREAMS_GAUGE`]).
//!
//! Streams are long-lived responses: the unary request timeout covers `/rpc`
//! only, the accept loop's idle rule counts a response in flight until its
//! body ends, the compression layer leaves `text/event-stream` alone, and a
//! comment every 15 s keeps proxies from closing an idle stream. Requests
//! with the session cookie count against the `api` connection budget
//! ([`crate::conn_class`]).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _, stream};
use http::{HeaderMap, StatusCode};
use lapdev_db::{Change, Db};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::session::{PageRefusal, Viewer};
use crate::AppState;
use crate::auth::web_policy::cookie;

/// How many recent events a reconnecting browser may catch up on.
pub const REPLAY_WINDOW: usize = 1024;

/// Who may see an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Everyone in the organisation.
    Everyone,
    /// Admins and owners.
    Admins,
    /// Admins, owners and this user (a workspace's owner).
    OwnerAndAdmins(Uuid),
}

/// One event as the hub keeps it.
#[derive(Debug, PartialEq, Eq)]
pub struct HubEvent {
    /// Its place in the hub's sequence.
    pub seq: u64,
    /// Its organisation; `None` for everyone (a `reload`).
    pub organization_id: Option<Uuid>,
    /// Who may see it.
    pub audience: Audience,
    /// The SSE event name (`change` or `reload`).
    pub name: &'static str,
    /// Its JSON data.
    pub data: String,
}

impl HubEvent {
    fn visible_to(&self, viewer: &Viewer) -> bool {
        let caller = &viewer.0;
        if self
            .organization_id
            .is_some_and(|o| o != caller.organization_id)
        {
            return false;
        }
        match self.audience {
            Audience::Everyone => true,
            Audience::Admins => viewer.is_admin(),
            Audience::OwnerAndAdmins(owner) => viewer.is_admin() || owner == caller.user_id,
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    next: u64,
    recent: VecDeque<Arc<HubEvent>>,
}

/// The dashboard's side of the change feed: numbers events, keeps the replay
/// window and fans out to streams.
#[derive(Debug, Clone)]
pub struct EventHub {
    epoch: Arc<str>,
    ring: Arc<Mutex<Ring>>,
    live: broadcast::Sender<Arc<HubEvent>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            epoch: hex::encode(rand::random::<[u8; 6]>()).into(),
            ring: Arc::default(),
            live: broadcast::channel(REPLAY_WINDOW).0,
        }
    }
}

/// Where a reconnecting stream starts.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    /// The events after this sequence number (already sent before it).
    After(u64, Vec<Arc<HubEvent>>),
    /// The missed events are gone: tell the page to reload.
    Reload(u64),
}

impl EventHub {
    /// Numbers, keeps and sends one event.
    pub fn publish(
        &self,
        organization_id: Option<Uuid>,
        audience: Audience,
        name: &'static str,
        data: String,
    ) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.next += 1;
        let event = Arc::new(HubEvent {
            seq: ring.next,
            organization_id,
            audience,
            name,
            data,
        });
        if ring.recent.len() == REPLAY_WINDOW {
            ring.recent.pop_front();
        }
        ring.recent.push_back(event.clone());
        // Sent under the lock, so the live order is the sequence order.
        let _ = self.live.send(event);
    }

    /// The id of an event of this process.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// What a stream that last saw `last_event_id` needs first.
    fn resume(&self, last_event_id: Option<&str>) -> Resume {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last) = last_event_id else {
            return Resume::After(ring.next, Vec::new());
        };
        let seq = last
            .split_once('-')
            .filter(|(epoch, _)| *epoch == &*self.epoch)
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        let oldest = ring.recent.front().map_or(ring.next + 1, |e| e.seq);
        match seq {
            // Everything after `seq` is still in the window.
            Some(seq) if seq <= ring.next && seq + 1 >= oldest => Resume::After(
                ring.next,
                ring.recent
                    .iter()
                    .filter(|e| e.seq > seq)
                    .cloned()
                    .collect(),
            ),
            _ => Resume::Reload(ring.next),
        }
    }

    /// Follows the change feed until `shutdown` resolves, publishing what the
    /// dashboard shows. A workspace's owner is read once and remembered. The
    /// feed is subscribed to at once, before the returned future first runs,
    /// so no change made after this call is missed.
    pub fn run(
        self,
        db: Db,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let changes = db.subscribe();
        self.follow(db, changes, shutdown)
    }

    async fn follow(
        self,
        db: Db,
        mut changes: broadcast::Receiver<Change>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut owners: HashMap<Uuid, Uuid> = HashMap::new();
        loop {
            let change = tokio::select! {
                _ = &mut shutdown => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(Change::Workspace(w)) => {
                    let owner = match owners.get(&w.workspace_id) {
                        Some(o) => Some(*o),
                        None => db
                            .get_workspace(w.organization_id, w.workspace_id)
                            .await
                            .ok()
                            .map(|ws| ws.owner_id),
                    };
                    if w.status == lapdev_common::status::WorkspaceStatus::Deleted {
                        owners.remove(&w.workspace_id);
                    } else if let Some(o) = owner {
                        owners.insert(w.workspace_id, o);
                    }
                    self.publish(
                        Some(w.organization_id),
                        owner.map_or(Audience::Admins, Audience::OwnerAndAdmins),
                        "change",
                        serde_json::json!({"kind": "workspace", "id": w.workspace_id}).to_string(),
                    );
                }
                Ok(
                    Change::ClusterChanged {
                        organization_id,
                        cluster_id,
                    }
                    | Change::ClusterDeleted {
                        organization_id,
                        cluster_id,
                    },
                ) => self.publish(
                    Some(organization_id),
                    Audience::Everyone,
                    "change",
                    serde_json::json!({"kind": "cluster", "id": cluster_id}).to_string(),
                ),
                Ok(Change::TokenRevoked {
                    organization_id,
                    cluster_id,
                    ..
                }) => self.publish(
                    Some(organization_id),
                    Audience::Admins,
                    "change",
                    serde_json::json!({"kind": "token", "id": cluster_id}).to_string(),
                ),
                // Revocations end sessions; pages learn of them by their
                // next call.
                Ok(Change::Revoked(_)) => {}
                // Events were lost (here, or another replica's): every page
                // must reload.
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                    self.publish(None, Audience::Everyone, "reload", "{}".into());
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// The stream of events `viewer` may see, starting after `last_event_id`.
    pub fn stream(
        &self,
        viewer: Viewer,
        last_event_id: Option<&str>,
    ) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        // Subscribe before reading the window, so nothing falls between; what
        // is in both is skipped by its sequence number.
        let live = self.live.subscribe();
        let hub = self.clone();
        let (first, after): (Vec<Event>, u64) = match self.resume(last_event_id) {
            Resume::After(after, missed) => (
                missed
                    .iter()
                    .filter(|e| e.visible_to(&viewer))
                    .map(|e| hub.sse(e))
                    .collect(),
                after,
            ),
            Resume::Reload(after) => (vec![hub.reload(after)], after),
        };
        let rest = stream::unfold(
            (live, viewer, hub, after),
            |(mut live, viewer, hub, after)| async move {
                loop {
                    match live.recv().await {
                        Ok(e) if e.seq > after && e.visible_to(&viewer) => {
                            let event = hub.sse(&e);
                            return Some((event, (live, viewer, hub, after)));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => {
                            let event = hub.reload(after);
                            return Some((event, (live, viewer, hub, after)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        );
        stream::iter(first).chain(rest).map(Ok)
    }

    fn sse(&self, e: &HubEvent) -> Event {
        Event::default()
            .id(self.event_id(e.seq))
            .event(e.name)
            .data(&e.data)
    }

    fn reload(&self, seq: u64) -> Event {
        Event::default()
            .id(self.event_id(seq))
            .event("reload")
            .data("{}")
    }
}

/// `GET /events`.
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    viewer: Result<Viewer, PageRefusal>,
) -> Response {
    let Ok(viewer) = viewer else {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    };
    // Browsers say where a request comes from; only our own pages may listen.
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() != b"same-origin")
    {
        return (
            StatusCode::FORBIDDEN,
            "only this server's pages may listen\n",
        )
            .into_response();
    }
    // Registered first, then the session checked again: a sign-out between
    // the first check and the registration either fails this check or finds
    // the stream registered and ends it.
    let mut registration = state
        .auth
        .streams
        .open(viewer.0.user_id, viewer.0.credential);
    let Some(secret) = cookie(&headers, state.web.policy.session_cookie()) else {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    };
    if state.auth.authenticate_session(secret).await.is_err() {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    }
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let events = state.events.stream(viewer, last);
    // The reason, once the stream's authority is taken away.
    let reason = Arc::new(std::sync::OnceLock::new());
    let set = reason.clone();
    let revoked = async move {
        let _ = set.set(registration.revoked().await);
    };
    let ended = stream::once(async move { reason.get().copied() }).filter_map(|r| {
        futures::future::ready(r.map(|r| Ok(Event::default().event("ended").data(r))))
    });
    // Counted until the response body is dropped (the stream ended, or the
    // browser went away).
    let open = OpenStream::count();
    let events = events.take_until(revoked).chain(ended).inspect(move |_| {
        let _ = &open;
    });
    (
        [(http::header::CACHE_CONTROL, "no-store")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

/// The gauge [`STREAMS_GAUGE`] counts one open stream while this lives.
struct OpenStream;

/// The `/metrics` gauge of open `/events` streams (one per browser whose tabs
/// share a worker; one per tab without).
pub const STREAMS_GAUGE: &str = "lapdev_dashboard_event_streams";

impl OpenStream {
    fn count() -> Self {
        metrics::gauge!(STREAMS_GAUGE).increment(1);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(STREAMS_GAUGE).decrement(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_replays_the_window_or_asks_for_a_reload() {
        let hub = EventHub::default();
        let org = Uuid::new_v4();
        for _ in 0..3 {
            hub.publish(Some(org), Audience::Everyone, "change", "{}".into());
        }
        // A fresh stream starts after the newest event.
        assert_eq!(hub.resume(None), Resume::After(3, vec![]));
        // A reconnect gets what came after its last id.
        let Resume::After(3, missed) = hub.resume(Some(&hub.event_id(1))) else {
            panic!("expected a replay");
        };
        assert_eq!(missed.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        // Another process's id, garbage, or an id from the future: reload.
        assert_eq!(hub.resume(Some("other-1")), Resume::Reload(3));
        assert_eq!(hub.resume(Some("nonsense")), Resume::Reload(3));
        assert_eq!(hub.resume(Some(&hub.event_id(9))), Resume::Reload(3));
        // Past the window: reload.
        for _ in 0..REPLAY_WINDOW {
            hub.publish(Some(org), Audience::Everyone, "change", "{}".into());
        }
        assert_eq!(
            hub.resume(Some(&hub.event_id(1))),
            Resume::Reload(3 + REPLAY_WINDOW as u64)
        );
        let oldest_kept = 3 + 1;
        assert!(matches!(
            hub.resume(Some(&hub.event_id(oldest_kept))),
            Resume::After(_, missed) if missed.len() == REPLAY_WINDOW - 1
        ));
    }
}
