//! `GET /workspaces/{name}/terminal`: a shell in a running workspace, in the
//! browser. xterm.js (bundled by `build.rs`) opens the same WebSocket endpoint
//! `lapdev workspace shell` uses (`/api/v1/workspaces/{name}/exec`, the
//! login shell, a TTY), signed in by the session cookie; that endpoint checks
//! the browser's `Origin` and decides who may open a session
//! ([`crate::access::may_open_session`]). The page asks the same question
//! first, so a refusal is a page that says why rather than a dead terminal.
//!
//! Only this page relaxes the Content-Security-Policy, and only its
//! `style-src` ([`TERMINAL_CONTENT_SECURITY_POLICY`]): xterm.js injects
//! styles. A server built without Node.js has no bundle: the page then says
//! so and shows the CLI command.

use axum::extract::{Path, State};
use axum::response::Response;
use http::HeaderValue;
use http::header::CONTENT_SECURITY_POLICY;
use lapdev_common::status::WorkspaceStatus;
use lapdev_db::DbError;
use lapdev_hrpc::HrpcError;
use maud::{Markup, html};

use super::workspace::command;
use crate::AppState;
use crate::web::assets::{self, Asset};
use crate::web::layout::{self, Nav};
use crate::web::security::TERMINAL_CONTENT_SECURITY_POLICY;
use crate::web::session::Viewer;

/// The page.
pub async fn page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    viewer: Viewer,
) -> Response {
    let title = format!("Terminal · {name}");
    let refused =
        |e: HrpcError| layout::error("Terminal", "terminal", &viewer, Nav::Workspaces, &e);
    let ws = match state
        .db
        .get_workspace_by_name(viewer.0.organization_id, &name)
        .await
    {
        Ok(ws) => ws,
        Err(DbError::NotFound { .. }) => {
            return refused(HrpcError::not_found(format!(
                "workspace {name:?} not found"
            )));
        }
        Err(e) => return refused(lapdev_kube::db_error(e)),
    };
    match crate::access::may_open_session(&state.db, &viewer.0, &ws).await {
        Ok(decision) => {
            if let Some(e) = decision.refusal(&name) {
                return refused(e);
            }
        }
        Err(e) => return refused(e),
    }
    let bundle = assets::terminal();
    let body = content(&name, ws.status, bundle);
    let mut response = layout::page(&title, "terminal", Some(&viewer), Nav::Workspaces, body);
    if ws.status == WorkspaceStatus::Running && bundle.is_some() {
        response.headers_mut().insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(TERMINAL_CONTENT_SECURITY_POLICY),
        );
    }
    response
}

/// What the page shows: the terminal when the workspace runs and the bundle
/// is built in; otherwise why not, and the CLI's way in.
fn content(name: &str, status: WorkspaceStatus, bundle: Option<(&Asset, &Asset)>) -> Markup {
    html! {
        h1 { "Terminal · " (name) }
        p { a href={ "/workspaces/" (urlencode(name)) } { "Back to workspace " (name) } }
        @if status != WorkspaceStatus::Running {
            p.form-error role="alert" {
                "Workspace " (name) " is " (status.as_str()) "; a terminal opens into a running workspace. Start it on its page."
            }
        } @else if let Some((script, style)) = bundle {
            (terminal(name, script, style))
        } @else {
            p.form-error role="alert" {
                "The terminal is not built into this server (it was built without Node.js and npm). Use the CLI:"
            }
            (command("A shell", &format!("lapdev workspace shell {name}")))
        }
    }
}

/// The terminal's element: where its WebSocket goes (the CLI's exec endpoint
/// with the CLI's login shell), its status line, and its assets.
fn terminal(name: &str, script: &Asset, style: &Asset) -> Markup {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for arg in crate::cli::access::login_shell() {
        query.append_pair("cmd", &arg);
    }
    query.append_pair("tty", "1").append_pair("stdin", "1");
    let path = format!("/api/v1/workspaces/{}/exec", urlencode(name));
    html! {
        link rel="stylesheet" href=(style.url());
        script src=(script.url()) defer {}
        p #terminal-status role="status" aria-live="polite" { "Loading the terminal…" }
        div #terminal role="region" aria-label={ "Shell in " (name) }
            data-path=(path) data-query=(query.finish()) {}
        p #terminal-again hidden { a href="" { "Open a new session" } }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_bundle_the_page_shows_the_cli_command() {
        let html = content("box", WorkspaceStatus::Running, None).into_string();
        assert!(html.contains("not built into this server"), "{html}");
        assert!(html.contains("lapdev workspace shell box"), "{html}");
        assert!(!html.contains("<script") && !html.contains("id=\"terminal\""));
    }

    #[test]
    fn the_terminal_opens_the_clis_shell_with_a_tty() {
        let js = Asset {
            name: "terminal.0.js".into(),
            bytes: b"",
            content_type: "text/javascript",
        };
        let css = Asset {
            name: "terminal.0.css".into(),
            bytes: b"",
            content_type: "text/css",
        };
        let html = content("box", WorkspaceStatus::Running, Some((&js, &css))).into_string();
        assert!(
            html.contains("data-path=\"/api/v1/workspaces/box/exec\""),
            "{html}"
        );
        let query = html
            .split("data-query=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let query = query.replace("&amp;", "&");
        let cmd: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "cmd")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(cmd, crate::cli::access::login_shell());
        assert!(query.ends_with("tty=1&stdin=1"), "{query}");
        let stopped = content("box", WorkspaceStatus::Stopped, Some((&js, &css))).into_string();
        assert!(!stopped.contains("<script") && stopped.contains("is stopped"));
    }
}
