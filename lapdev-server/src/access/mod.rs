//! Getting into workspaces: the CLI's WebSocket endpoints for exec and
//! port-forward, bridged to streams on the workspace's manager.
//!
//! - `GET /api/v1/workspaces/{name-or-id}/exec?cmd=sh&cmd=-c&cmd=…&tty=1&stdin=1&cols=80&rows=24`:
//!   WebSocket binary messages carry `lapdev_kube_rpc::stream` exec frames both
//!   ways (the server passes them through; the manager checks them).
//! - `GET /api/v1/workspaces/{name-or-id}/portforward?port=N`: one forwarded
//!   connection; binary messages are its raw bytes, and an empty binary
//!   message from the client is its end of input. An error after the start
//!   closes the WebSocket with code 1011 and the reason.
//!
//! A close reason holds at most 123 bytes (RFC 6455 §5.5). A longer reason
//! (a kubelet's port-forward error with its cause, say) is sent whole as a
//! text message right before the close, whose reason is its first 123 bytes;
//! the CLI and the dashboard's terminal show the text. Text messages carry
//! nothing else.
//!
//! Both need `authorization: Bearer <token>` (a personal access token or an
//! admin JWT, verified by the authorization layer's [`AuthState::authenticate`]),
//! or a browser session cookie on an upgrade carrying the server's own
//! `Origin`. Every open session is registered in [`LiveSessions`] under its
//! user and the credential that opened it, and ends at once, with the reason as
//! its close reason (code 1008), when that user is disabled or deleted, that
//! token or browser session is revoked (a sign-in that rotates the browser's
//! session revokes the old one), or, for an admin's session in another user's
//! workspace, the admin is demoted to member or the organisation turns
//! `admins_may_open_shells` off.
//! Who may open a session is decided in one place, [`may_open_session`]. Every
//! refusal before the upgrade is an ordinary HRPC error response (JSON
//! `{code, message}`); another organisation's workspace is `404`.
//!
//! - `live.rs`: [`LiveSessions`], the registry of open sessions and the one
//!   revocation API ([`LiveSessions::revoke`]).
//! - `opener.rs`: [`StreamOpener`], how a stream reaches a manager.
//! - `session.rs`: the bridge, its end conditions (workspace stopped, cluster
//!   token revoked or cluster deleted, tunnel dropped, the caller's authority
//!   revoked), audit and metrics.

mod live;
mod opener;
mod session;

pub use live::{Credential, LiveSession, LiveSessions, Revocation};
pub use opener::{InProcessStreams, OpenFuture, StreamOpenError, StreamOpener, TunnelStreams};
pub use session::SessionKind;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::channel::mpsc;
use http_body_util::BodyExt as _;
use lapdev_common::status::WorkspaceStatus;
use lapdev_db::{Db, DbError, NewAuditEntry, Workspace};
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::stream::{
    EXEC_PATH, ExecRequest, PORTFORWARD_PATH, PortForwardRequest, STREAM_REQUEST_HEADER,
    TerminalSize,
};
use uuid::Uuid;

use crate::auth::layer::bearer;
use crate::auth::shell_access::{Decision, session_access_allowed};
use crate::auth::web_policy::cookie;
use crate::auth::{AuthState, Caller};

/// What the endpoints need.
#[derive(Clone)]
pub struct AccessState {
    /// The database (workspaces, the change feed, the audit log).
    pub db: Db,
    /// Who a token belongs to.
    pub auth: AuthState,
    /// How streams reach managers.
    pub streams: Arc<dyn StreamOpener>,
    /// Open sessions per workspace (they keep it from idling).
    pub activity: crate::idle::WorkspaceActivity,
}

/// The exec endpoint's route template (also its `/metrics` route label).
pub const EXEC_ROUTE: &str = "/api/v1/workspaces/{workspace}/exec";
/// The port-forward endpoint's route template (also its `/metrics` route label).
pub const PORTFORWARD_ROUTE: &str = "/api/v1/workspaces/{workspace}/portforward";
/// Every route [`routes`] serves.
pub const ROUTES: [&str; 2] = [EXEC_ROUTE, PORTFORWARD_ROUTE];

/// The two endpoints.
pub fn routes(state: AccessState) -> Router {
    Router::new()
        .route(EXEC_ROUTE, get(exec))
        .route(PORTFORWARD_ROUTE, get(portforward))
        .with_state(state)
}

/// Whether `caller` may open a shell, exec or port-forward in `workspace`: its
/// owner always; an admin or owner of the organisation only when the
/// organisation allows it (`lapdev org set --admins-may-open-shells true`), and
/// such a session is audited before it opens; a member never learns that another
/// user's workspace exists. The rule itself is
/// [`session_access_allowed`](crate::auth::shell_access::session_access_allowed).
pub async fn may_open_session(
    db: &Db,
    caller: &Caller,
    workspace: &Workspace,
) -> Result<Decision, HrpcError> {
    if caller.organization_id != workspace.organization_id {
        return Ok(Decision::DenyNotFound);
    }
    let is_owner = caller.user_id == workspace.owner_id;
    if is_owner {
        return Ok(Decision::AllowOwner);
    }
    let settings = db
        .org_settings(caller.organization_id)
        .await
        .map_err(lapdev_kube::db_error)?;
    Ok(session_access_allowed(
        caller.role,
        is_owner,
        settings.admins_may_open_shells,
    ))
}

/// Who is calling, with their session registered in [`LiveSessions`] under
/// the credential they used. The registration comes before the final check:
/// when the authorization cache moved (something was revoked or changed) while
/// the caller was checked, the check runs again with the session registered,
/// so a revocation either refuses this session or finds it in the registry.
async fn authenticate(
    state: &AccessState,
    headers: &http::HeaderMap,
) -> Result<(Caller, LiveSession), HrpcError> {
    let generation = state.auth.cache.generation();
    let caller = check_credential(state, headers).await?;
    let live = state.auth.live.open(caller.user_id, caller.credential);
    if state.auth.cache.generation() == generation {
        return Ok((caller, live));
    }
    let caller = check_credential(state, headers).await?;
    Ok((caller, live))
}

/// A bearer token (personal access token or legacy JWT), or a browser session
/// cookie on an upgrade that carries the server's own `Origin` (a WebSocket
/// cannot carry the CSRF header; browsers always send `Origin`).
async fn check_credential(
    state: &AccessState,
    headers: &http::HeaderMap,
) -> Result<Caller, HrpcError> {
    if let Some(token) = bearer(headers) {
        return state.auth.authenticate(token).await;
    }
    if let Some(web) = state.auth.web_policy()
        && let Some(secret) = cookie(headers, web.session_cookie())
    {
        web.check_session_upgrade(headers)?;
        return state.auth.authenticate_session(secret).await;
    }
    Err(HrpcError::unauthenticated(
        "no bearer token or session; run `lapdev login`",
    ))
}

/// The caller, their registered session, the workspace, its cluster:
/// everything checked before a stream is opened.
async fn admit(
    state: &AccessState,
    headers: &http::HeaderMap,
    workspace: &str,
) -> Result<(Caller, LiveSession, Workspace, Uuid), HrpcError> {
    let (caller, live) = authenticate(state, headers).await?;
    let found = match workspace.parse::<Uuid>() {
        Ok(id) => state.db.get_workspace(caller.organization_id, id).await,
        Err(_) => {
            state
                .db
                .get_workspace_by_name(caller.organization_id, workspace)
                .await
        }
    };
    let ws = found.map_err(|e| match e {
        DbError::NotFound { .. } => {
            HrpcError::not_found(format!("workspace {workspace} not found"))
        }
        other => lapdev_kube::db_error(other),
    })?;
    let mut decision = may_open_session(&state.db, &caller, &ws).await?;
    if decision == Decision::AllowAdminAudited {
        // Marked first, then checked again with a fresh role: a demotion or
        // the setting turned off either refuses this session or finds it
        // marked in the registry and ends it.
        live.mark_in_others_workspace(ws.organization_id);
        let now = check_credential(state, headers).await?;
        decision = may_open_session(&state.db, &now, &ws).await?;
    }
    if let Some(refusal) = decision.refusal(workspace) {
        return Err(refusal);
    }
    if decision == Decision::AllowAdminAudited {
        // Written (and waited for) before the session opens; a failed write is
        // logged and counted, never silently dropped.
        crate::auth::audit::record_now(
            &state.db,
            NewAuditEntry {
                organization_id: Some(ws.organization_id),
                actor_id: Some(caller.user_id),
                actor_name: Some(caller.name.clone()),
                action: "workspace.session.admin".into(),
                target: Some(ws.name.clone()),
                outcome: "success".into(),
                source_addr: None,
                request_id: None,
                detail: Some(format!(
                    "a session into a workspace of another user ({})",
                    ws.owner_id
                )),
            },
        )
        .await;
    }
    let name = &ws.name;
    match ws.status {
        WorkspaceStatus::Running => {}
        WorkspaceStatus::Stopped | WorkspaceStatus::Stopping => {
            return Err(HrpcError::failed_precondition(format!(
                "workspace {name} is stopped; start it with `lapdev workspace start {name}`"
            )));
        }
        WorkspaceStatus::Deleting | WorkspaceStatus::Deleted => {
            return Err(HrpcError::not_found(format!(
                "workspace {name} is deleted; create it again with `lapdev workspace create`"
            )));
        }
        WorkspaceStatus::Failed => {
            return Err(HrpcError::failed_precondition(format!(
                "workspace {name} has failed ({}); see `lapdev workspace get {name}`",
                ws.status_message.as_deref().unwrap_or("no detail")
            )));
        }
        other => {
            return Err(HrpcError::failed_precondition(format!(
                "workspace {name} is {other}, not running yet; wait until `lapdev workspace get {name}` says running"
            )));
        }
    }
    let cluster = ws.cluster_id.ok_or_else(|| {
        HrpcError::failed_precondition(format!("workspace {name} is not placed on a cluster"))
    })?;
    Ok((caller, live, ws, cluster))
}

fn flag(v: &str) -> bool {
    matches!(v, "1" | "true" | "yes")
}

/// The exec request from the query string.
fn exec_request(workspace_id: Uuid, query: &str) -> Result<ExecRequest, HrpcError> {
    let mut req = ExecRequest {
        workspace_id,
        command: Vec::new(),
        tty: false,
        stdin: false,
        size: None,
    };
    let (mut cols, mut rows) = (None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "cmd" => req.command.push(v.into_owned()),
            "tty" => req.tty = flag(&v),
            "stdin" => req.stdin = flag(&v),
            "cols" => cols = Some(v.parse::<u16>().map_err(|_| bad("cols", &v))?),
            "rows" => rows = Some(v.parse::<u16>().map_err(|_| bad("rows", &v))?),
            _ => {}
        }
    }
    if req.command.is_empty() {
        return Err(HrpcError::invalid_argument("no command (cmd=…)"));
    }
    if let (Some(cols), Some(rows)) = (cols, rows) {
        req.size = Some(TerminalSize { cols, rows });
    }
    Ok(req)
}

fn bad(field: &str, value: &str) -> HrpcError {
    HrpcError::invalid_argument(format!(
        "{field} must be a number from 0 to 65535, not {value:?}"
    ))
}

async fn exec(
    State(state): State<AccessState>,
    Path(workspace): Path<String>,
    RawQuery(query): RawQuery,
    headers: http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let upgrade = upgrade.map_err(|e| HrpcError::invalid_argument(e.body_text()))?;
        let (caller, live, ws, cluster) = admit(&state, &headers, &workspace).await?;
        let req = exec_request(ws.id, query.as_deref().unwrap_or(""))?;
        let first_word = req.command[0].clone();
        let header = serde_json::to_string(&req).map_err(|e| HrpcError::internal(e.to_string()))?;
        let open = session::Open {
            kind: SessionKind::Exec,
            caller,
            workspace: ws,
            cluster,
            detail: first_word_only(&first_word),
        };
        session::start(&state, open, live, EXEC_PATH, header, upgrade).await
    }
    .await;
    result.unwrap_or_else(|e| {
        session::refused(SessionKind::Exec);
        e.into_response()
    })
}

/// The program's name without a path or anything after it, for the audit log
/// (arguments may hold secrets).
fn first_word_only(program: &str) -> String {
    let word = program.split_whitespace().next().unwrap_or("");
    let base = word.rsplit('/').next().unwrap_or(word);
    base.chars().take(64).collect()
}

async fn portforward(
    State(state): State<AccessState>,
    Path(workspace): Path<String>,
    RawQuery(query): RawQuery,
    headers: http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let upgrade = upgrade.map_err(|e| HrpcError::invalid_argument(e.body_text()))?;
        let port = form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "port")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| HrpcError::invalid_argument("no port (port=N)"))?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            HrpcError::invalid_argument(format!("port must be 1–65535, not {port:?}"))
        })?;
        let (caller, live, ws, cluster) = admit(&state, &headers, &workspace).await?;
        let header = serde_json::to_string(&PortForwardRequest {
            workspace_id: ws.id,
            port,
        })
        .map_err(|e| HrpcError::internal(e.to_string()))?;
        let open = session::Open {
            kind: SessionKind::PortForward,
            caller,
            workspace: ws,
            cluster,
            detail: format!("port {port}"),
        };
        session::start(&state, open, live, PORTFORWARD_PATH, header, upgrade).await
    }
    .await;
    result.unwrap_or_else(|e| {
        session::refused(SessionKind::PortForward);
        e.into_response()
    })
}

/// Sends the stream's request to the manager; its error response (read up
/// to 64 KiB) becomes ours.
async fn open_on_manager(
    state: &AccessState,
    cluster: Uuid,
    path: &str,
    header: String,
    user: Uuid,
) -> Result<(mpsc::Sender<Bytes>, Body), HrpcError> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let body = Body::from_stream(futures::StreamExt::map(
        rx,
        Ok::<_, std::convert::Infallible>,
    ));
    let request = http::Request::post(path)
        .header(STREAM_REQUEST_HEADER, header)
        // For the owner's log when the stream is forwarded to another replica.
        .header(crate::routing::auth::USER_HEADER, user.to_string())
        .body(body)
        .map_err(|e| HrpcError::internal(e.to_string()))?;
    let response = state
        .streams
        .send_streaming(cluster, request)
        .await
        .map_err(|e| match e {
            StreamOpenError::Transport(_) => HrpcError::unavailable(e.to_string()),
            _ => HrpcError::failed_precondition(e.to_string()),
        })?;
    if response.status() != http::StatusCode::OK {
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), 64 * 1024);
        let body = limited
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(
            serde_json::from_slice::<HrpcError>(&body).unwrap_or_else(|_| {
                HrpcError::unavailable(format!("the cluster's manager answered {status}"))
            }),
        );
    }
    Ok((tx, response.into_body()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_queries_parse_and_bad_ones_are_refused() {
        let id = Uuid::nil();
        let r = exec_request(
            id,
            "cmd=sh&cmd=-c&cmd=echo%20a%26b&tty=1&stdin=true&cols=80&rows=24",
        )
        .unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo a&b"]);
        assert!(r.tty && r.stdin);
        assert_eq!(r.size, Some(TerminalSize { cols: 80, rows: 24 }));
        assert!(exec_request(id, "tty=1").is_err());
        let e = exec_request(id, "cmd=ls&cols=-1").unwrap_err();
        assert!(e.message.contains("cols"), "{e:?}");
    }

    #[test]
    fn only_the_first_word_of_a_command_is_kept() {
        assert_eq!(first_word_only("/usr/bin/psql"), "psql");
        assert_eq!(first_word_only("export TOKEN=secret"), "export");
        assert_eq!(first_word_only(""), "");
    }
}
