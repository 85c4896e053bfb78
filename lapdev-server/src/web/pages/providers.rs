//! `GET /providers` (admins and owners): cloud providers. Add a GKE provider
//! by uploading its service-account key (the server checks the key before it
//! stores anything and says what is wrong with it: not JSON, not a service
//! account key, no `private_key`…), list a provider's clusters, import one,
//! or create one and follow it until its manager connects.
//!
//! The server renders the providers and, with `?clusters=NAME`, that
//! provider's clusters (asked of the provider, as `lapdev provider clusters`
//! does), so both lists work without the script; the script adds the forms'
//! and buttons' actions through the same `ProviderRpc` methods and shows a
//! provider's clusters in place.

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use crate::AppState;
use crate::admin::api::ProviderView;
use crate::admin::providers::{ProviderClusterView, ProviderRpc as _};

use crate::web::assets::ADMIN_SCRIPT;
use crate::web::layout::{self, Nav};
use crate::web::pages::workspaces::field;
use crate::web::session::Viewer;

/// What the page shows besides the providers.
#[derive(Debug, Default, Deserialize)]
pub struct Shown {
    /// The provider whose clusters are listed.
    #[serde(default)]
    pub clusters: Option<String>,
}

/// The page.
pub async fn page(
    State(state): State<AppState>,
    Query(shown): Query<Shown>,
    viewer: Viewer,
) -> Response {
    if !viewer.is_admin() {
        return layout::forbidden(&viewer, "The providers page");
    }
    let providers = state.providers.list_providers(viewer.context()).await;
    let remote = match shown.clusters {
        Some(name) => {
            let list = state
                .providers
                .list_provider_clusters(viewer.context(), name.clone())
                .await;
            Some((name, list))
        }
        None => None,
    };
    let body = html! {
        h1 { "Cloud providers" }
        section aria-labelledby="add-provider-heading" {
            h2 #add-provider-heading { "Add a GKE provider" }
            form #add-provider.card novalidate {
                (field("provider-name", "name", "Name", html! {
                    input #provider-name name="name" type="text" required autocomplete="off"
                        aria-describedby="provider-name-error";
                }))
                (field("provider-project", "config.project", "Google Cloud project", html! {
                    input #provider-project name="project" type="text" required autocomplete="off"
                        aria-describedby="provider-project-error";
                }))
                (field("provider-location", "config.location", "Default location (optional)", html! {
                    input #provider-location name="location" type="text" autocomplete="off"
                        placeholder="europe-west1" aria-describedby="provider-location-error";
                }))
                (field("provider-key", "credential", "Service-account key (JSON file)", html! {
                    input #provider-key name="key" type="file" required accept=".json,application/json"
                        aria-describedby="provider-key-error";
                }))
                p.form-error #add-provider-error role="alert" {}
                button type="submit" { "Check the key and add" }
            }
        }
        section aria-labelledby="providers-heading" {
            h2 #providers-heading { "Providers" }
            @match &providers {
                Ok(list) => {
                    div.table-wrap tabindex="0" role="region" aria-label="Providers" {
                        table #providers {
                            thead { tr {
                                th scope="col" { "Name" } th scope="col" { "Kind" }
                                th scope="col" { "Project" } th scope="col" { "Location" }
                                th scope="col" { "Actions" }
                            } }
                            tbody { @for p in list { (provider_row(p)) } }
                        }
                    }
                    p #providers-empty hidden[!list.is_empty()] { "No providers yet." }
                },
                Err(e) => p.form-error role="alert" { "The providers could not be listed: " (e.message) },
            }
        }
        section #provider-clusters-section aria-labelledby="provider-clusters-heading"
            data-provider=[remote.as_ref().map(|(n, _)| n.as_str())] hidden[remote.is_none()] {
            h2 #provider-clusters-heading { "Clusters in " span #provider-clusters-of { (remote.as_ref().map(|(n, _)| n.as_str()).unwrap_or("")) } }
            @if let Some((_, Err(e))) = &remote {
                p.form-error role="alert" { "The provider's clusters could not be listed: " (e.message) }
            }
            div.table-wrap tabindex="0" role="region" aria-label="Provider clusters" {
                table #provider-clusters {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Location" }
                        th scope="col" { "Status" } th scope="col" { "Version" }
                        th scope="col" { "Nodes" } th scope="col" { "In Lapdev" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {
                        @if let Some((_, Ok(list))) = &remote { @for c in list { (provider_cluster_row(c)) } }
                    }
                }
            }
            h3 #create-provider-cluster-heading { "Create a cluster" }
            form #create-provider-cluster.card novalidate aria-labelledby="create-provider-cluster-heading" {
                (field("pc-name", "name", "Cluster name", html! {
                    input #pc-name name="name" type="text" required autocomplete="off"
                        aria-describedby="pc-name-error";
                }))
                (field("pc-location", "location", "Location (optional)", html! {
                    input #pc-location name="location" type="text" autocomplete="off"
                        aria-describedby="pc-location-error";
                }))
                (field("pc-mode", "mode", "Nodes", html! {
                    select #pc-mode name="mode" aria-describedby="pc-mode-error" {
                        option value="autopilot" { "Autopilot (GKE manages nodes)" }
                        option value="standard" { "Standard: 3 × e2-standard-4" }
                    }
                }))
                p.form-error #create-provider-cluster-error role="alert" {}
                button type="submit" { "Create" }
            }
        }
        section #cluster-progress-section aria-labelledby="cluster-progress-heading" hidden {
            h2 #cluster-progress-heading { "Progress" }
            ol #cluster-progress.progress aria-live="polite" {}
        }
    };
    layout::page_with(
        "Providers",
        "providers",
        Some(&viewer),
        Nav::Providers,
        body,
        Some(&ADMIN_SCRIPT),
    )
}

/// One provider's row; `admin.js` builds the same from `list_providers`.
/// "Clusters" is a link (the page lists them without the script).
fn provider_row(p: &ProviderView) -> Markup {
    let config = |key: &str| {
        p.config
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("—")
            .to_owned()
    };
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("clusters", &p.name);
    html! {
        tr data-name=(p.name) {
            th scope="row" { (p.name) }
            td { (p.kind.as_str()) }
            td { (config("project")) }
            td { (config("location")) }
            td.actions {
                a.button href={ "/providers?" (q.finish()) "#provider-clusters-heading" }
                    data-action="provider-clusters" data-name=(p.name) {
                    "Clusters" span.sr-only { " of " (p.name) }
                }
                " "
                button.danger type="button" data-action="delete-provider" data-name=(p.name) {
                    "Delete" span.sr-only { " " (p.name) }
                }
            }
        }
    }
}

/// One of a provider's clusters; `admin.js` builds the same from
/// `list_provider_clusters`.
fn provider_cluster_row(c: &ProviderClusterView) -> Markup {
    html! {
        tr data-name=(c.name) {
            th scope="row" { (c.name) }
            td { (c.location) }
            td.status { span.badge data-status=(c.status.as_str()) { (c.status.as_str()) } }
            td { (c.kubernetes_version.as_deref().unwrap_or("—")) }
            td { (c.node_count) }
            td { (c.imported_as.as_deref().unwrap_or("—")) }
            td.actions {
                @if c.imported_as.is_none() {
                    button type="button" data-action="import-cluster" data-name=(c.name) data-location=(c.location) {
                        "Import" span.sr-only { " " (c.name) }
                    }
                }
            }
        }
    }
}
