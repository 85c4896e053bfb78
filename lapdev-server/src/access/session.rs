//! One session: the CLI's WebSocket bridged to a manager stream, ended when
//! either side ends, the workspace stops or is deleted, the cluster's token is
//! revoked or the cluster deleted, the stream to the manager fails (the
//! tunnel dropped), or the caller's authority is revoked (user disabled or
//! deleted, the token or browser session that opened it revoked; close code
//! 1008 with the reason). A session whose change feed lagged (it missed
//! changes) reads the workspace and the cluster's tokens again rather than
//! trust that nothing it missed ended it. Each session is logged, audited (who, workspace, kind, the
//! command's first word or the port, start, end, bytes each way) and counted.
//!
//! Metrics (labels from closed sets): `lapdev_sessions_total{kind, outcome}`
//! (`outcome`: `ok`, `refused`, `ended`), `lapdev_sessions_open{kind}`,
//! `lapdev_session_bytes_total{kind, direction}` (`direction`: `to_workspace`,
//! `from_workspace`).

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use lapdev_common::status::WorkspaceStatus;
use lapdev_db::{Change, Db, DbError, NewAuditEntry, Workspace};
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::stream::STREAM_ERROR_TRAILER;
use uuid::Uuid;

use super::{AccessState, LiveSession};
use crate::auth::Caller;

/// What a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A command or a shell.
    Exec,
    /// One forwarded connection.
    PortForward,
}

impl SessionKind {
    fn as_str(self) -> &'static str {
        match self {
            SessionKind::Exec => "exec",
            SessionKind::PortForward => "portforward",
        }
    }

    fn action(self) -> &'static str {
        match self {
            SessionKind::Exec => "workspace.exec",
            SessionKind::PortForward => "workspace.port_forward",
        }
    }
}

/// A session about to open.
pub(super) struct Open {
    pub kind: SessionKind,
    pub caller: Caller,
    pub workspace: Workspace,
    pub cluster: Uuid,
    /// The command's first word, or `port N`.
    pub detail: String,
}

/// Counts a session refused before it opened.
pub(super) fn refused(kind: SessionKind) {
    metrics::counter!("lapdev_sessions_total", "kind" => kind.as_str(), "outcome" => "refused")
        .increment(1);
}

/// Opens the manager stream, then accepts the WebSocket and bridges the two.
pub(super) async fn start(
    state: &AccessState,
    open: Open,
    live: LiveSession,
    path: &str,
    header: String,
    upgrade: WebSocketUpgrade,
) -> Result<Response, HrpcError> {
    // Subscribe before the stream opens so no stop in between is missed; a
    // re-check after missed changes looks for revocations from this time on.
    let subscribed_at = Utc::now();
    let changes = state.db.subscribe();
    let (to_manager, from_manager) =
        super::open_on_manager(state, open.cluster, path, header, open.caller.user_id).await?;
    let kind = open.kind;
    metrics::counter!("lapdev_sessions_total", "kind" => kind.as_str(), "outcome" => "ok")
        .increment(1);
    let db = state.db.clone();
    let activity = state.activity.clone();
    Ok(upgrade
        .max_message_size(1 << 20)
        // tungstenite's default read buffer (128 KiB) is filled before each
        // read, so every idle forwarded connection kept it resident: the
        // tunnel's smaller buffer keeps the server's cost per idle connection
        // under 64 KiB (issue 14's floor, measured by benches/access_cost.rs).
        .read_buffer_size(lapdev_hrpc::tunnel::DEFAULT_WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let mut live = live;
            let in_use = activity
                .open(open.workspace.organization_id, open.workspace.id)
                .await;
            let started = Utc::now();
            tracing::info!(
                kind = kind.as_str(), user = %open.caller.name, workspace = %open.workspace.name,
                detail = %open.detail, "session open"
            );
            metrics::gauge!("lapdev_sessions_open", "kind" => kind.as_str()).increment(1);
            let feed = Feed {
                changes,
                db: &db,
                subscribed_at,
            };
            let ended = bridge(socket, to_manager, from_manager, feed, &mut live, &open).await;
            drop(live);
            in_use.end().await;
            metrics::gauge!("lapdev_sessions_open", "kind" => kind.as_str()).decrement(1);
            metrics::counter!("lapdev_sessions_total", "kind" => kind.as_str(), "outcome" => "ended")
                .increment(1);
            let ended_at = Utc::now();
            tracing::info!(
                kind = kind.as_str(), user = %open.caller.name, workspace = %open.workspace.name,
                bytes_in = ended.bytes_in, bytes_out = ended.bytes_out, reason = %ended.reason,
                "session closed"
            );
            crate::auth::audit::record_in_background(
                &db,
                NewAuditEntry {
                    organization_id: Some(open.workspace.organization_id),
                    actor_id: Some(open.caller.user_id),
                    actor_name: Some(open.caller.name.clone()),
                    action: kind.action().into(),
                    target: Some(open.workspace.name.clone()),
                    outcome: if ended.clean { "success" } else { "failure" }.into(),
                    source_addr: None,
                    request_id: None,
                    detail: Some(format!(
                        "{}; started {}; ended {}; {} bytes to the workspace, {} from it; {}",
                        open.detail,
                        started.to_rfc3339(),
                        ended_at.to_rfc3339(),
                        ended.bytes_in,
                        ended.bytes_out,
                        ended.reason
                    )),
                },
            );
        }))
}

/// How a session ended.
struct Ended {
    bytes_in: u64,
    bytes_out: u64,
    reason: String,
    clean: bool,
}

/// Why the session must end on a change, if it must.
fn ends_session(change: &Change, workspace: Uuid, cluster: Uuid) -> Option<&'static str> {
    match change {
        Change::Workspace(c)
            if c.workspace_id == workspace && c.status != WorkspaceStatus::Running =>
        {
            Some("the workspace stopped")
        }
        Change::TokenRevoked { cluster_id, .. } if *cluster_id == cluster => {
            Some("the cluster's token was revoked")
        }
        Change::ClusterDeleted { cluster_id, .. } if *cluster_id == cluster => {
            Some("the cluster was deleted")
        }
        _ => None,
    }
}

/// The change feed a session watches, and what it needs to re-check the
/// state when it missed changes.
struct Feed<'a> {
    changes: tokio::sync::broadcast::Receiver<Change>,
    db: &'a Db,
    /// When the session subscribed: revocations from then on end it.
    subscribed_at: DateTime<Utc>,
}

/// Waits for a change that ends the session and returns why. When the
/// receiver lagged (more than the feed's capacity published while it was not
/// looking), the missed changes may have held the one that ends it, so
/// `recheck` reads the current state instead.
async fn watch_changes<F, Fut>(
    mut changes: tokio::sync::broadcast::Receiver<Change>,
    workspace: Uuid,
    cluster: Uuid,
    mut recheck: F,
) -> String
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<&'static str>>,
{
    loop {
        match changes.recv().await {
            // Another replica's changes may have been missed: as if lagged.
            Ok(Change::Resync) => {
                tracing::warn!(%workspace, "an access session may have missed another replica's changes; re-checking");
                if let Some(why) = recheck().await {
                    return why.to_owned();
                }
            }
            Ok(c) => {
                if let Some(why) = ends_session(&c, workspace, cluster) {
                    return why.to_owned();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(%workspace, missed, "an access session missed change notifications; re-checking");
                if let Some(why) = recheck().await {
                    return why.to_owned();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                return "the server is shutting down".to_owned();
            }
        }
    }
}

/// What [`ends_session`] would have said of the changes a lagged session
/// missed, read from the database: the workspace no longer running where the
/// session is, the cluster deleted, or one of its tokens revoked since the
/// session subscribed. Conservative: a state that cannot be read ends the
/// session too.
async fn recheck(db: &Db, open: &Open, since: DateTime<Utc>) -> Option<&'static str> {
    let org = open.workspace.organization_id;
    match db.get_workspace(org, open.workspace.id).await {
        Ok(ws) if ws.status == WorkspaceStatus::Running && ws.cluster_id == Some(open.cluster) => {}
        Ok(_) => return Some("the workspace stopped"),
        Err(DbError::NotFound { .. }) => return Some("the workspace was deleted"),
        Err(_) => return Some(RECHECK_FAILED),
    }
    match db.list_cluster_tokens(org, open.cluster).await {
        Ok(tokens)
            if tokens
                .iter()
                .any(|t| t.revoked_at.is_some_and(|at| at >= since)) =>
        {
            Some("the cluster's token was revoked")
        }
        Ok(_) => None,
        Err(DbError::NotFound { .. }) => Some("the cluster was deleted"),
        Err(_) => Some(RECHECK_FAILED),
    }
}

const RECHECK_FAILED: &str =
    "the session missed change notifications and the workspace's state could not be read again";

async fn bridge(
    socket: WebSocket,
    mut to_manager: futures::channel::mpsc::Sender<Bytes>,
    mut from_manager: Body,
    changes: Feed<'_>,
    live: &mut LiveSession,
    open: &Open,
) -> Ended {
    use std::sync::atomic::{AtomicU64, Ordering};
    let kind = open.kind.as_str();
    let (mut ws_tx, mut ws_rx) = socket.split();
    let bytes_in = AtomicU64::new(0);
    let bytes_out = AtomicU64::new(0);
    // Each direction is its own future, so a slow reader on one side never
    // stops the other.
    let upload = async {
        while let Some(msg) = ws_rx.next().await {
            match msg {
                Ok(Message::Binary(b)) if b.is_empty() => {
                    // End of input (port-forward): the workspace side finishes.
                    to_manager.close_channel();
                }
                Ok(Message::Binary(b)) => {
                    bytes_in.fetch_add(b.len() as u64, Ordering::Relaxed);
                    metrics::counter!("lapdev_session_bytes_total", "kind" => kind, "direction" => "to_workspace")
                        .increment(b.len() as u64);
                    if to_manager.send(b).await.is_err() {
                        // The manager stopped reading; its response says why.
                        std::future::pending::<()>().await;
                    }
                }
                Ok(Message::Close(_)) => return "the client closed the session".to_owned(),
                Ok(_) => {}
                Err(_) => return "the client's connection failed".to_owned(),
            }
        }
        "the client went away".to_owned()
    };
    let download = async {
        loop {
            match from_manager.frame().await {
                Some(Ok(f)) => {
                    if let Some(trailers) = f.trailers_ref() {
                        if let Some(e) = trailers.get(STREAM_ERROR_TRAILER) {
                            let reason = String::from_utf8_lossy(e.as_bytes()).into_owned();
                            return (1011, reason);
                        }
                        continue;
                    }
                    if let Ok(data) = f.into_data() {
                        bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                        metrics::counter!("lapdev_session_bytes_total", "kind" => kind, "direction" => "from_workspace")
                            .increment(data.len() as u64);
                        if ws_tx.send(Message::Binary(data)).await.is_err() {
                            return (0, "the client went away".to_owned());
                        }
                    }
                }
                None => return (1000, String::new()),
                Some(Err(e)) => {
                    return (
                        1011,
                        format!("the stream to the workspace failed (tunnel dropped?): {e}"),
                    );
                }
            }
        }
    };
    let stop = watch_changes(changes.changes, open.workspace.id, open.cluster, || {
        recheck(changes.db, open, changes.subscribed_at)
    });
    let (code, reason, clean) = {
        tokio::pin!(download);
        // `stop` first: revoking a cluster token publishes the change before
        // it closes the tunnel, so checking it first reports why the stream
        // failed ("the cluster's token was revoked") rather than that it did.
        tokio::select! {
            biased;
            why = stop => (1001, why, false),
            why = live.revoked() => (1008, why.to_owned(), false),
            (code, reason) = &mut download => (code, reason, code == 1000),
            why = upload => (1000, why, true),
        }
    };
    let mut ended = Ended {
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        reason: if reason.is_empty() {
            "ended".into()
        } else {
            reason.clone()
        },
        clean,
    };
    if code == 0 {
        return ended;
    }
    let mut reason = if code == 1000 { String::new() } else { reason };
    // A close reason is at most 123 bytes (RFC 6455 §5.5): a longer one goes
    // whole in a text message first (clients read the close's as its start).
    if reason.len() > 123 {
        if ws_tx
            .send(Message::Text(reason.clone().into()))
            .await
            .is_err()
        {
            ended.clean = false;
        }
        while reason.len() > 123 {
            reason.pop();
        }
    }
    if ws_tx
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await
        .is_err()
    {
        ended.clean = false;
    }
    ended
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use futures::FutureExt as _;
    use lapdev_db::WorkspaceChange;
    use tokio::sync::broadcast;

    use super::*;

    fn stopped(workspace: Uuid, cluster: Uuid) -> Change {
        Change::Workspace(WorkspaceChange {
            organization_id: Uuid::nil(),
            workspace_id: workspace,
            cluster_id: Some(cluster),
            previous_status: Some(WorkspaceStatus::Running),
            status: WorkspaceStatus::Stopping,
            reason: None,
            repair: false,
            due: false,
        })
    }

    fn unrelated() -> Change {
        Change::ClusterChanged {
            organization_id: Uuid::nil(),
            cluster_id: Uuid::new_v4(),
        }
    }

    /// A feed of capacity 2 that lost the change ending the session: the
    /// session's stop was published, then 3 more, so the receiver lags past it.
    /// The sender is returned so the feed stays open (a closed one ends the
    /// watch as "shutting down").
    fn lagged_past_a_stop(
        workspace: Uuid,
        cluster: Uuid,
    ) -> (broadcast::Sender<Change>, broadcast::Receiver<Change>) {
        let (tx, rx) = broadcast::channel(2);
        tx.send(stopped(workspace, cluster)).unwrap();
        for _ in 0..3 {
            tx.send(unrelated()).unwrap();
        }
        (tx, rx)
    }

    #[test]
    fn a_stop_on_the_feed_ends_the_session() {
        let (w, c) = (Uuid::new_v4(), Uuid::new_v4());
        let (tx, rx) = broadcast::channel(16);
        tx.send(unrelated()).unwrap();
        tx.send(stopped(w, c)).unwrap();
        let why = watch_changes(rx, w, c, || async { None }).now_or_never();
        assert_eq!(why.as_deref(), Some("the workspace stopped"));
    }

    #[test]
    fn a_lagged_feed_rechecks_and_ends_the_session_when_the_state_says_so() {
        let (w, c) = (Uuid::new_v4(), Uuid::new_v4());
        let rechecks = Cell::new(0);
        let (_tx, rx) = lagged_past_a_stop(w, c);
        let why = watch_changes(rx, w, c, || {
            rechecks.set(rechecks.get() + 1);
            async { Some("the workspace stopped") }
        })
        .now_or_never();
        assert_eq!(
            why.as_deref(),
            Some("the workspace stopped"),
            "a lagged session must not miss the stop it lost"
        );
        assert_eq!(rechecks.get(), 1);
    }

    #[test]
    fn a_lagged_feed_whose_recheck_finds_nothing_keeps_the_session() {
        let (w, c) = (Uuid::new_v4(), Uuid::new_v4());
        let rechecks = Cell::new(0);
        let (_tx, rx) = lagged_past_a_stop(w, c);
        let why = watch_changes(rx, w, c, || {
            rechecks.set(rechecks.get() + 1);
            async { None }
        })
        .now_or_never();
        assert_eq!(why, None, "still waiting for a change");
        assert_eq!(rechecks.get(), 1);
    }
}
