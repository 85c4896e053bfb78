//! `GET /providers` (admins and owners): cloud providers. Add a GKE provider
//! by uploading its service-account key (the server checks the key before it
//! stores anything and says what is wrong with it: not JSON, not a service
//! account key, no `private_key`…), list a provider's clusters, import one,
//! or create one and follow it until its manager connects. The page is the
//! forms; the script fills the lists from the `ProviderRpc` methods `lapdev
//! provider …` calls.

use axum::response::Response;
use maud::html;

use crate::web::assets::ADMIN_SCRIPT;
use crate::web::layout::{self, Nav};
use crate::web::pages::workspaces::field;
use crate::web::session::Viewer;

/// The page.
pub async fn page(viewer: Viewer) -> Response {
    if !viewer.is_admin() {
        return layout::forbidden(&viewer, "The providers page");
    }
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
            div.table-wrap tabindex="0" role="region" aria-label="Providers" {
                table #providers {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Kind" }
                        th scope="col" { "Project" } th scope="col" { "Location" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {}
                }
            }
            p #providers-empty hidden { "No providers yet." }
        }
        section #provider-clusters-section aria-labelledby="provider-clusters-heading" hidden {
            h2 #provider-clusters-heading { "Clusters in " span #provider-clusters-of {} }
            div.table-wrap tabindex="0" role="region" aria-label="Provider clusters" {
                table #provider-clusters {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Location" }
                        th scope="col" { "Status" } th scope="col" { "Version" }
                        th scope="col" { "Nodes" } th scope="col" { "In Lapdev" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {}
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
