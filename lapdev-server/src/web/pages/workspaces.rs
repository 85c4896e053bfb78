//! `GET /`: the viewer's workspaces (an admin's: the organisation's), the
//! create form, and stop/start/delete on each row. The script keeps status,
//! reason and message live from `/events`. The list is paged by name
//! (`?after=NAME`, `?before=NAME`; [`PAGE_SIZE`] a page), and the script
//! refreshes the page it shows.

use axum::extract::{Query, State};
use axum::response::Response;
use lapdev_common::status::DesiredState;
use maud::{Markup, html};

use crate::AppState;
use crate::admin::api::AdminRpc as _;
use crate::admin::workspaces::{
    PAGE_SIZE, WorkspacePage, WorkspacePageRequest, WorkspaceRpc as _, WorkspaceView,
};
use crate::web::format::{cores, gib, time};
use crate::web::layout::{self, Nav};
use crate::web::session::Viewer;

/// The page.
pub async fn page(
    State(state): State<AppState>,
    Query(at): Query<WorkspacePageRequest>,
    viewer: Viewer,
) -> Response {
    let at = WorkspacePageRequest {
        limit: None,
        cluster: None,
        ..at
    };
    let list = state
        .workspaces
        .list_workspaces_page(viewer.context(), at.clone())
        .await;
    let clusters = state
        .admin
        .list_clusters(viewer.context(), false)
        .await
        .unwrap_or_default();
    let body = html! {
        h1 { "Workspaces" }
        section aria-labelledby="create-heading" {
            h2 #create-heading { "New workspace" }
            form #create-workspace.card novalidate {
                (field("ws-name", "workspace.name", "Name", html! {
                    input #ws-name name="name" type="text" required autocomplete="off"
                        aria-describedby="ws-name-error";
                }))
                (field("ws-image", "workspace.image", "Image", html! {
                    input #ws-image name="image" type="text" required value="ubuntu:24.04"
                        aria-describedby="ws-image-error";
                }))
                (field("ws-cpu", "workspace.cpu_millis", "CPU (cores)", html! {
                    input #ws-cpu name="cpu" type="number" min="0" step="0.1" value="1"
                        aria-describedby="ws-cpu-error";
                }))
                (field("ws-memory", "workspace.memory_bytes", "Memory (GiB)", html! {
                    input #ws-memory name="memory" type="number" min="0" step="0.5" value="2"
                        aria-describedby="ws-memory-error";
                }))
                (field("ws-storage", "workspace.storage_bytes", "Storage (GiB)", html! {
                    input #ws-storage name="storage" type="number" min="0" step="1" value="10"
                        aria-describedby="ws-storage-error";
                }))
                (field("ws-cluster", "workspace.cluster", "Cluster (optional)", html! {
                    select #ws-cluster name="cluster" aria-describedby="ws-cluster-error" {
                        option value="" { "Any connected cluster" }
                        @for c in &clusters { option value=(c.name) { (c.name) } }
                    }
                }))
                (field("ws-region", "workspace.region", "Region (optional)", html! {
                    input #ws-region name="region" type="text" autocomplete="off"
                        aria-describedby="ws-region-error";
                }))
                p.form-error #create-error role="alert" {}
                button type="submit" { "Create" }
            }
        }
        section aria-labelledby="list-heading" {
            h2 #list-heading { "Your workspaces" }
            @match &list {
                Ok(WorkspacePage { workspaces: list, next, previous }) => {
                    div.table-wrap tabindex="0" role="region" aria-label="Your workspaces" {
                        table #workspaces
                            data-after=[at.after.as_deref()]
                            data-before=[at.after.is_none().then_some(at.before.as_deref()).flatten()] {
                            thead { tr {
                                th scope="col" { "Name" } th scope="col" { "Status" }
                                th scope="col" { "Message" } th scope="col" { "Image" }
                                th scope="col" { "Cluster" } th scope="col" { "Resources" }
                                th scope="col" { "Created" } th scope="col" { "Actions" }
                            } }
                            tbody { @for w in list { (row(w)) } }
                        }
                    }
                    p #workspaces-empty hidden[!list.is_empty()] { "No workspaces yet." }
                    (layout::pager("/", "Workspace pages", PAGE_SIZE, previous.as_deref(), next.as_deref()))
                }
                Err(e) => p.form-error role="alert" { "The workspaces could not be listed: " (e.message) },
            }
        }
    };
    layout::page(
        "Workspaces",
        "workspaces",
        Some(&viewer),
        Nav::Workspaces,
        body,
    )
}

/// A labelled control with the place its validation error goes (matched by
/// the error's `details.field`); other pages' forms use it too.
pub(crate) fn field(id: &str, error_field: &str, label: &str, control: Markup) -> Markup {
    html! {
        div.field {
            label for=(id) { (label) }
            (control)
            p.field-error id={ (id) "-error" } data-field=(error_field) {}
        }
    }
}

/// One workspace's row; the script builds the same from `list_workspaces`.
pub fn row(w: &WorkspaceView) -> Markup {
    html! {
        tr data-name=(w.name) {
            th scope="row" { a href={ "/workspaces/" (w.name) } { (w.name) } }
            td.status { span.badge data-status=(w.status.as_str()) { (w.status.as_str()) } }
            td.message {
                @if let Some(r) = &w.reason { span.reason { (r.as_str()) } " " }
                span.text { (w.message.as_deref().unwrap_or("")) }
            }
            td.image { (w.image) }
            td.cluster { (w.cluster.as_deref().unwrap_or("—")) }
            td { (cores(w.cpu_millis)) " · " (gib(w.memory_bytes)) " · " (gib(w.storage_bytes)) }
            td { (time(Some(w.created_at))) }
            td.actions {
                @if w.desired_state == DesiredState::Running {
                    button type="button" data-action="stop" data-name=(w.name) { "Stop" span.sr-only { " " (w.name) } }
                } @else if w.desired_state == DesiredState::Stopped {
                    button type="button" data-action="start" data-name=(w.name) { "Start" span.sr-only { " " (w.name) } }
                }
                button.danger type="button" data-action="delete" data-name=(w.name) { "Delete" span.sr-only { " " (w.name) } }
            }
        }
    }
}
