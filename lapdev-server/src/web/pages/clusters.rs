//! `GET /clusters` (admins and owners): every cluster with its status, last
//! report, version, nodes, region, provider and capacity bars (allocatable,
//! used by Lapdev, free, and the largest free node), cordon/uncordon and
//! delete with a typed confirmation; and "connect a cluster": a name, then the
//! token (shown once), the `kubectl apply` command and the manifest download.
//! The list is paged by name (`?after=NAME`, `?before=NAME`;
//! [`PAGE_SIZE`] a page); the script keeps the page it shows live from
//! `/events` (status, last seen, capacity), so a new cluster's row turns
//! connected when its manager dials in.

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};

use crate::AppState;
use crate::admin::api::{AdminRpc as _, ClusterPage, ClusterView};
use crate::admin::paging::{PAGE_SIZE, PageRequest};
use crate::web::format::{cores, gib, time};
use crate::web::layout::{self, Nav};
use crate::web::session::Viewer;

/// The page.
pub async fn page(
    State(state): State<AppState>,
    Query(at): Query<PageRequest>,
    viewer: Viewer,
) -> Response {
    if !viewer.is_admin() {
        return layout::forbidden(&viewer, "The clusters page");
    }
    let at = PageRequest { limit: None, ..at };
    let list = state
        .admin
        .list_clusters_page(viewer.context(), at.clone())
        .await;
    let body = html! {
        h1 { "Clusters" }
        section aria-labelledby="connect-heading" {
            h2 #connect-heading { "Connect a cluster" }
            form #connect-cluster.card novalidate {
                div.field {
                    label for="cluster-name" { "Cluster name" }
                    input #cluster-name name="name" type="text" required autocomplete="off"
                        aria-describedby="cluster-name-error";
                    p.field-error #cluster-name-error data-field="name" {}
                }
                p.form-error #connect-error role="alert" {}
                button type="submit" { "Create and show the install command" }
            }
            div #connect-result hidden {
                p { "Apply this manifest in the cluster; this page turns the cluster connected when its manager dials in." }
                ul #connect-warnings.warnings hidden aria-label="Before you apply it" {}
                div.command {
                    p.command-label { "Install the manager" }
                    pre tabindex="0" { code #connect-command {} }
                    button.copy type="button" { "Copy" span.sr-only { ": install command" } }
                }
                p { a #manifest-download.button download="" href="#" { "Download the manifest" } }
                div.command {
                    p.command-label { "Cluster token (shown once; it is inside the manifest)" }
                    pre tabindex="0" { code #connect-token {} }
                    button.copy type="button" { "Copy" span.sr-only { ": cluster token" } }
                }
            }
        }
        section aria-labelledby="clusters-heading" {
            h2 #clusters-heading { "Registered clusters" }
            @match &list {
                Ok(ClusterPage { clusters: list, next, previous }) => {
                    div.table-wrap tabindex="0" role="region" aria-label="Registered clusters" {
                    table #clusters
                        data-after=[at.after.as_deref()]
                        data-before=[at.after.is_none().then_some(at.before.as_deref()).flatten()] {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Status" }
                            th scope="col" { "Last seen" } th scope="col" { "Version" }
                            th scope="col" { "Nodes" } th scope="col" { "Region" }
                            th scope="col" { "Provider" } th scope="col" { "CPU" }
                            th scope="col" { "Memory" } th scope="col" { "Largest free node" }
                            th scope="col" { "Actions" }
                        } }
                        tbody { @for c in list { (row(c)) } }
                    }
                    }
                    p #clusters-empty hidden[!list.is_empty()] { "No clusters yet." }
                    (layout::pager("/clusters", "Cluster pages", PAGE_SIZE, previous.as_deref(), next.as_deref()))
                },
                Err(e) => p.form-error role="alert" { "The clusters could not be listed: " (e.message) },
            }
        }
    };
    layout::page("Clusters", "clusters", Some(&viewer), Nav::Clusters, body)
}

/// Allocatable, used by Lapdev (and other pods, when counted) and the largest
/// free node, from the manager's per-node report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_allocatable: i64,
    pub cpu_used: i64,
    pub memory_allocatable: i64,
    pub memory_used: i64,
    /// The node with the most free CPU: (name, free millicores, free bytes).
    pub largest_free: Option<(String, i64, i64)>,
}

/// What [`Capacity`] the cluster reported (allocatable only, without a
/// per-node report).
pub fn capacity(c: &ClusterView) -> Capacity {
    let mut cap = Capacity {
        cpu_allocatable: c.cpu_allocatable_millis.unwrap_or(0),
        memory_allocatable: c.memory_allocatable_bytes.unwrap_or(0),
        ..Capacity::default()
    };
    if let Some(nodes) = &c.nodes {
        for n in nodes {
            let cpu_used = n.cpu_lapdev_millis + n.cpu_other_millis;
            let mem_used = n.memory_lapdev_bytes + n.memory_other_bytes;
            cap.cpu_used += cpu_used;
            cap.memory_used += mem_used;
            let free = (
                (n.cpu_allocatable_millis - cpu_used).max(0),
                (n.memory_allocatable_bytes - mem_used).max(0),
            );
            if cap
                .largest_free
                .as_ref()
                .is_none_or(|(_, cpu, mem)| (free.0, free.1) > (*cpu, *mem))
            {
                cap.largest_free = Some((n.name.clone(), free.0, free.1));
            }
        }
    }
    cap
}

pub(crate) fn bar(label: &str, used: i64, allocatable: i64, show: fn(i64) -> String) -> Markup {
    let free = (allocatable - used).max(0);
    html! {
        @if allocatable > 0 {
            meter min="0" max=(allocatable) value=(used) aria-label=(label) {}
            span.bar-text { (show(free)) " free of " (show(allocatable)) }
        } @else { "—" }
    }
}

/// One cluster's row; the script builds the same from `list_clusters`.
pub fn row(c: &ClusterView) -> Markup {
    let cap = capacity(c);
    let n = &c.name;
    html! {
        tr data-name=(n) {
            th scope="row" { a href={ "/clusters/" (n) } { (n) } }
            td.status {
                span.badge data-status=(c.status.as_str()) { (c.status.as_str()) }
                @if c.cordoned { " " span.badge data-status="cordoned" { "cordoned" } }
            }
            td { (time(c.last_reported_at)) }
            td.version { (c.kubernetes_version.as_deref().unwrap_or("—")) }
            td { (c.node_count.map(|n| n.to_string()).unwrap_or_else(|| "—".into())) }
            td.region { (c.region.as_deref().unwrap_or("—")) }
            td { (c.provider.as_str()) }
            td { (bar(&format!("CPU used on {n}"), cap.cpu_used, cap.cpu_allocatable, cores)) }
            td { (bar(&format!("Memory used on {n}"), cap.memory_used, cap.memory_allocatable, gib)) }
            td {
                @match &cap.largest_free {
                    Some((node, cpu, mem)) => { (node) ": " (cores(*cpu)) " · " (gib(*mem)) }
                    None => "—",
                }
            }
            td.actions {
                @if c.cordoned {
                    button type="button" data-action="uncordon" data-name=(n) { "Uncordon" span.sr-only { " " (n) } }
                } @else {
                    button type="button" data-action="cordon" data-name=(n) { "Cordon" span.sr-only { " " (n) } }
                }
                button.danger type="button" data-action="delete-cluster" data-name=(n) { "Delete" span.sr-only { " " (n) } }
            }
        }
    }
}
