//! `GET /clusters/{name}` (admins and owners): one cluster's facts, its
//! tokens (create: the token and a manifest carrying it are shown once, with a
//! copy button; revoke), its workspaces, and its scheduling settings (what
//! `lapdev cluster placement` sets). `web/static/cluster.js` runs the token
//! actions through the HRPC methods `lapdev cluster token …` calls; their
//! answers are `no-store`, and the page never holds a token's secret.
//!
//! The facts (status, last seen, capacity) and the workspaces list (paged by
//! name, `?after=NAME`/`?before=NAME`, [`PAGE_SIZE`] a page) stay live from
//! `/events`: the dashboard script re-reads them through `get_cluster` and
//! `list_workspaces_page` and sets their text with `textContent`.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::Utc;
use lapdev_common::status::CapacityMode;
use maud::{Markup, html};

use super::clusters::{bar, capacity};
use super::workspace::command;
use crate::AppState;
use crate::admin::api::{AdminRpc as _, ClusterView, TokenView};
use crate::admin::paging::{PAGE_SIZE, PageRequest};
use crate::admin::workspaces::{
    WorkspacePage, WorkspacePageRequest, WorkspaceRpc as _, WorkspaceView,
};
use crate::web::assets::CLUSTER_SCRIPT;
use crate::web::format::{cores, gib, time};
use crate::web::layout::{self, Nav};
use crate::web::session::Viewer;

/// The page.
pub async fn page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(at): Query<PageRequest>,
    viewer: Viewer,
) -> Response {
    if !viewer.is_admin() {
        return layout::forbidden(&viewer, "A cluster's page");
    }
    let c = match state
        .admin
        .get_cluster(viewer.context(), name.clone())
        .await
    {
        Ok(c) => c,
        Err(e) => return layout::error("Cluster", "cluster", &viewer, Nav::Clusters, &e),
    };
    let tokens = state
        .admin
        .list_cluster_tokens(viewer.context(), name.clone())
        .await;
    let workspaces = state
        .workspaces
        .list_workspaces_page(
            viewer.context(),
            WorkspacePageRequest {
                after: at.after.clone(),
                before: at.before.clone(),
                limit: None,
                cluster: Some(name.clone()),
            },
        )
        .await;
    let n = &c.name;
    let body = html! {
        script src=(CLUSTER_SCRIPT.url()) defer {}
        h1 { "Cluster " (n) }
        p { a href="/clusters" { "All clusters" } }
        (facts(&c))
        section aria-labelledby="tokens-heading" {
            h2 #tokens-heading { "Tokens" }
            p { "The manager dials in with a token; a cluster has at most two live ones, for rotation: create a new one, apply its manifest, then revoke the old one (its tunnel closes at once)." }
            form #create-token.card data-cluster=(n) novalidate {
                div.field {
                    label for="token-name" { "Token name" }
                    input #token-name name="name" type="text" required autocomplete="off"
                        aria-describedby="token-name-error";
                    p.field-error #token-name-error data-field="name" {}
                }
                p.form-error #create-token-error role="alert" {}
                button type="submit" { "Create token" }
            }
            div #token-result hidden {
                ul #token-warnings.warnings hidden aria-label="Before you apply it" {}
                div.command {
                    p.command-label { "New token (shown once; it is inside the manifest)" }
                    pre tabindex="0" { code #token-secret {} }
                    button.copy type="button" { "Copy" span.sr-only { ": new token" } }
                }
                (command("Apply the manifest that carries it", &format!("kubectl apply -f {n}-manager.yaml")))
                p { a #token-manifest.button download="" href="#" { "Download the manifest" } }
            }
            @match &tokens {
                Ok(tokens) => div.table-wrap tabindex="0" role="region" aria-label="Tokens" {
                    table #tokens data-cluster=(n) {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Prefix" }
                            th scope="col" { "State" } th scope="col" { "Created" }
                            th scope="col" { "Last used" } th scope="col" { "Expires" }
                            th scope="col" { "Actions" }
                        } }
                        tbody { @for t in tokens { (token_row(t)) } }
                    }
                },
                Err(e) => p.form-error role="alert" { "The tokens could not be listed: " (e.message) },
            }
        }
        section aria-labelledby="cluster-workspaces-heading" {
            h2 #cluster-workspaces-heading { "Workspaces on " (n) }
            @match &workspaces {
                Ok(WorkspacePage { workspaces: list, next, previous }) => {
                    div.table-wrap tabindex="0" role="region" aria-label="Workspaces on this cluster" hidden[list.is_empty()] {
                        table #cluster-workspaces data-cluster=(n)
                            data-after=[at.after.as_deref()]
                            data-before=[at.after.is_none().then_some(at.before.as_deref()).flatten()] {
                            thead { tr {
                                th scope="col" { "Name" } th scope="col" { "Status" }
                                th scope="col" { "Image" } th scope="col" { "Resources" }
                                th scope="col" { "Created" }
                            } }
                            tbody { @for w in list { (workspace_row(w)) } }
                        }
                    }
                    p #cluster-workspaces-empty hidden[!list.is_empty()] { "No workspaces run here." }
                    (layout::pager(&format!("/clusters/{n}"), "Pages of this cluster's workspaces", PAGE_SIZE, previous.as_deref(), next.as_deref()))
                },
                Err(e) => p.form-error role="alert" { "The workspaces could not be listed: " (e.message) },
            }
        }
        section aria-labelledby="placement-heading" {
            h2 #placement-heading { "Scheduling" }
            (placement(&c))
            (placement_form(&c))
            p { "Tolerations and autoscaling are set with " code { "lapdev cluster placement " (n) " --toleration … --autoscaling …" } ". Settings apply to each workspace at its next create or start; a new capacity mode needs a new manifest (create a token)." }
        }
    };
    layout::page(
        &format!("Cluster {n}"),
        "cluster",
        Some(&viewer),
        Nav::Clusters,
        body,
    )
}

/// The cluster's facts; the dashboard script rebuilds the same from
/// `get_cluster` (`clusterFacts` in `app.js`).
fn facts(c: &ClusterView) -> Markup {
    let cap = capacity(c);
    let or_dash = |v: Option<&str>| v.unwrap_or("—").to_owned();
    html! {
        dl.facts #cluster data-name=(c.name) {
            dt { "Status" }
            dd.status {
                span.badge data-status=(c.status.as_str()) { (c.status.as_str()) }
                @if c.cordoned { " " span.badge data-status="cordoned" { "cordoned" } }
            }
            dt { "Last seen" } dd { (time(c.last_reported_at)) }
            dt { "Kubernetes" } dd { (or_dash(c.kubernetes_version.as_deref())) }
            dt { "Manager" } dd { (or_dash(c.manager_version.as_deref())) }
            dt { "Nodes" } dd { (c.node_count.map(|n| n.to_string()).unwrap_or_else(|| "—".into())) }
            dt { "Region" } dd { (or_dash(c.region.as_deref())) }
            dt { "Provider" } dd { (c.provider.as_str()) }
            dt { "CPU allocatable" } dd { (c.cpu_allocatable_millis.map(cores).unwrap_or_else(|| "—".into())) }
            dt { "Memory allocatable" } dd { (c.memory_allocatable_bytes.map(gib).unwrap_or_else(|| "—".into())) }
            dt { "CPU used" } dd.cpu { (bar(&format!("CPU used on {}", c.name), cap.cpu_used, cap.cpu_allocatable, cores)) }
            dt { "Memory used" } dd.memory { (bar(&format!("Memory used on {}", c.name), cap.memory_used, cap.memory_allocatable, gib)) }
            dt { "Largest free node" }
            dd.largest {
                @match &cap.largest_free {
                    Some((node, cpu, mem)) => { (node) ": " (cores(*cpu)) " · " (gib(*mem)) }
                    None => "—",
                }
            }
            dt { "Pod Security" } dd { (c.security_profile.as_str()) }
            dt { "Registered" } dd { (time(c.created_at)) }
        }
    }
}

/// Whether a token still opens a tunnel.
fn token_state(t: &TokenView) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|at| at <= Utc::now()) {
        "expired"
    } else {
        "live"
    }
}

/// One token's row; `cluster.js` builds the same from `list_cluster_tokens`.
fn token_row(t: &TokenView) -> Markup {
    let state = token_state(t);
    html! {
        tr data-id=(t.id) {
            th scope="row" { (t.name) }
            td { code { (t.display_prefix) "…" } }
            td.status { span.badge data-status=(state) { (state) } }
            td { (time(Some(t.created_at))) }
            td { (time(t.last_used_at)) }
            td { @if t.expires_at.is_some() { (time(t.expires_at)) } @else { "never" } }
            td.actions {
                @if state == "live" {
                    button.danger type="button" data-action="revoke-token" data-id=(t.id) data-name=(t.name) {
                        "Revoke" span.sr-only { " token " (t.name) }
                    }
                }
            }
        }
    }
}

fn workspace_row(w: &WorkspaceView) -> Markup {
    html! {
        tr data-name=(w.name) {
            th scope="row" { a href={ "/workspaces/" (w.name) } { (w.name) } }
            td.status { span.badge data-status=(w.status.as_str()) { (w.status.as_str()) } }
            td.image { (w.image) }
            td { (cores(w.cpu_millis)) " · " (gib(w.memory_bytes)) " · " (gib(w.storage_bytes)) }
            td { (time(Some(w.created_at))) }
        }
    }
}

fn placement(c: &ClusterView) -> Markup {
    let p = &c.placement;
    let s = &p.scheduling;
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "any".to_owned()
        } else {
            items.join(", ")
        }
    };
    let autoscaling = p.autoscaling.or(c.detected_autoscaling);
    html! {
        dl.facts #placement {
            dt { "Free room counts" } dd { (p.capacity_mode.as_str()) }
            dt { "Node selector" } dd { (list(s.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect())) }
            dt { "Tolerations" } dd { (if s.tolerations.is_empty() { "none".to_owned() } else { list(s.tolerations.iter().map(|t| t.to_string()).collect()) }) }
            dt { "Architecture" } dd { (s.arch.as_deref().unwrap_or("any")) }
            dt { "Image pull secrets" } dd { (if s.image_pull_secrets.is_empty() { "none".to_owned() } else { s.image_pull_secrets.join(", ") }) }
            dt { "Priority class" } dd { (s.priority_class.as_deref().unwrap_or("default")) }
            dt { "User namespaces" } dd { (if s.user_namespaces { "on" } else { "off" }) }
            dt { "Autoscaling" }
            dd {
                @match autoscaling {
                    Some(a) => {
                        "nodes up to " (cores(a.max_node_cpu_millis)) " · " (gib(a.max_node_memory_bytes))
                        @if let Some(m) = a.max_nodes { ", at most " (m) " nodes" }
                        @if p.autoscaling.is_none() { " (detected)" }
                    }
                    None => "none declared",
                }
            }
        }
    }
}

/// The settings `cluster.js` changes through `set_cluster_placement` (the
/// rest of the placement is sent back as it was).
fn placement_form(c: &ClusterView) -> Markup {
    let s = &c.placement.scheduling;
    let selector: Vec<String> = s
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let field = |id: &str, label: &str, value: String| {
        html! {
            div.field {
                label for=(id) { (label) }
                input id=(id) name=(id) type="text" value=(value) autocomplete="off";
            }
        }
    };
    html! {
        form #edit-placement.card data-cluster=(c.name) novalidate {
            div.field {
                label for="pl-capacity" { "Free room counts" }
                select #pl-capacity name="pl-capacity" {
                    @for mode in CapacityMode::ALL.iter().copied() {
                        option value=(mode.as_str()) selected[mode == c.placement.capacity_mode] { (mode.as_str()) }
                    }
                }
            }
            (field("pl-node-selector", "Node selector (key=value, comma-separated)", selector.join(", ")))
            (field("pl-arch", "Architecture (empty: any)", s.arch.clone().unwrap_or_default()))
            (field("pl-pull-secrets", "Image pull secrets (comma-separated)", s.image_pull_secrets.join(", ")))
            (field("pl-priority", "Priority class (empty: the default)", s.priority_class.clone().unwrap_or_default()))
            div.field {
                label { input #pl-userns name="pl-userns" type="checkbox" checked[s.user_namespaces]; " Run workspace pods in their own user namespace" }
            }
            p.form-error #placement-error role="alert" {}
            button type="submit" { "Save scheduling" }
        }
    }
}
