//! `GET /workspaces/{name}`: one workspace, live, and how to connect to it
//! (the CLI's shell, port-forward and SSH commands, each with a copy button).

use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};

use crate::AppState;
use crate::admin::workspaces::WorkspaceRpc as _;
use crate::web::format::{cores, gib, time};
use crate::web::layout::{self, Nav};
use crate::web::session::Viewer;

/// The page (another member's workspace is "not found", as in the API).
pub async fn page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    viewer: Viewer,
) -> Response {
    let w = match state.workspaces.get_workspace(viewer.context(), name).await {
        Ok(w) => w,
        Err(e) => return layout::error("Workspace", "workspace", &viewer, Nav::Workspaces, &e),
    };
    let n = &w.name;
    let body = html! {
        h1 { "Workspace " (n) }
        dl.facts #workspace data-name=(n) {
            dt { "Status" } dd.status { span.badge data-status=(w.status.as_str()) { (w.status.as_str()) } }
            dt { "Reason" } dd.reason { (w.reason.as_ref().map(|r| r.as_str()).unwrap_or("—")) }
            dt { "Message" } dd.message { (w.message.as_deref().unwrap_or("—")) }
            dt { "Image" } dd { (w.image) }
            dt { "Cluster" } dd.cluster { (w.cluster.as_deref().unwrap_or("—")) }
            dt { "Resources" } dd { (cores(w.cpu_millis)) " · " (gib(w.memory_bytes)) " memory · " (gib(w.storage_bytes)) " storage" }
            dt { "Created" } dd { (time(Some(w.created_at))) }
        }
        h2 { "Connect" }
        p { a.button #open-terminal href={ "/workspaces/" (form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>()) "/terminal" } { "Open a terminal" } }
        p { "With the " code { "lapdev" } " CLI signed in to this server (see " a href="/connect" { "Connect" } "):" }
        (command("A shell", &format!("lapdev workspace shell {n}")))
        (command("Run one command", &format!("lapdev workspace exec {n} -- uname -a")))
        (command("Forward port 8080", &format!("lapdev workspace port-forward {n} 8080")))
        (command("SSH, VS Code Remote-SSH, JetBrains Gateway", &format!("lapdev workspace ssh-config {n} >> ~/.ssh/config && ssh lapdev-{n}")))
    };
    layout::page(
        &format!("Workspace {n}"),
        "workspace",
        Some(&viewer),
        Nav::Workspaces,
        body,
    )
}

/// A command with a copy button (the script copies the `<code>`'s text).
pub fn command(label: &str, text: &str) -> Markup {
    html! {
        div.command {
            p.command-label { (label) }
            pre tabindex="0" { code { (text) } }
            button.copy type="button" { "Copy" span.sr-only { ": " (label) } }
        }
    }
}
