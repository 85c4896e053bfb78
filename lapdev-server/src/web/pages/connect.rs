//! `GET /connect`: how to reach this server from the `lapdev` CLI (copyable).

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::workspace::command;
use crate::AppState;
use crate::web::layout::{self, Nav};
use crate::web::session::Viewer;

/// The page.
pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let server = state.web.policy.origin().to_owned();
    let oidc = state.web.oidc.organization().await.is_some();
    let body = html! {
        h1 { "Connect with the CLI" }
        p { "Point the CLI at this server and sign in; the token it stores is yours, with your role." }
        (command("Point the CLI here", &format!("export LAPDEV_SERVER={server}")))
        @if oidc { (command("Sign in through your identity provider", "lapdev login --oidc")) }
        (command("Sign in with your password", &format!("lapdev login --user {}", viewer.0.name)))
        (command("Your workspaces", "lapdev workspace list"))
        p { "Each workspace's page lists its shell, port-forward and SSH commands." }
    };
    layout::page("Connect", "connect", Some(&viewer), Nav::Connect, body)
}
