//! `GET /tokens`: the viewer's own personal access tokens (every role):
//! create (the secret is shown once, from the HRPC answer, which is never
//! stored by a cache) and revoke: the `PeopleRpc` methods `lapdev token …`
//! calls.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use crate::AppState;
use crate::auth::api::{PatView, PeopleRpc as _};
use crate::web::assets::ADMIN_SCRIPT;
use crate::web::format::time;
use crate::web::layout::{self, Nav};
use crate::web::session::Viewer;

/// The page.
pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let list = state.people.list_tokens(viewer.context()).await;
    let body = html! {
        h1 { "Personal access tokens" }
        p { "A token lets the " code { "lapdev" } " CLI and scripts act as you (" (viewer.0.name) ")." }
        section aria-labelledby="create-token-heading" {
            h2 #create-token-heading { "New token" }
            form #create-token.card novalidate {
                div.field {
                    label for="token-name" { "Name" }
                    input #token-name name="name" type="text" required autocomplete="off"
                        aria-describedby="token-name-error";
                    p.field-error #token-name-error data-field="name" {}
                }
                div.field {
                    label for="token-days" { "Expires in (days)" }
                    input #token-days name="days" type="number" min="1" step="1" value="90"
                        aria-describedby="token-days-error";
                    p.field-error #token-days-error data-field="expires_in_days" {}
                }
                p.form-error #create-token-error role="alert" {}
                button type="submit" { "Create token" }
            }
            div #token-result hidden {
                div.command {
                    p.command-label { "Your new token (shown once: copy it now)" }
                    pre tabindex="0" { code #token-secret {} }
                    button.copy type="button" { "Copy" span.sr-only { ": new token" } }
                }
            }
        }
        section aria-labelledby="tokens-heading" {
            h2 #tokens-heading { "Your tokens" }
            @match &list {
                Ok(list) => {
                    div.table-wrap tabindex="0" role="region" aria-label="Your tokens" {
                        table #tokens {
                            thead { tr {
                                th scope="col" { "Name" } th scope="col" { "Starts with" }
                                th scope="col" { "Created" } th scope="col" { "Expires" }
                                th scope="col" { "Last used" } th scope="col" { "State" }
                                th scope="col" { "Actions" }
                            } }
                            tbody { @for t in list { (row(t)) } }
                        }
                    }
                    p #tokens-empty hidden[!list.is_empty()] { "No tokens yet." }
                }
                Err(e) => p.form-error role="alert" { "The tokens could not be listed: " (e.message) },
            }
        }
    };
    layout::page_with(
        "Tokens",
        "tokens",
        Some(&viewer),
        Nav::Tokens,
        body,
        Some(&ADMIN_SCRIPT),
    )
}

/// One token's row; the script builds the same from `list_tokens`.
fn row(t: &PatView) -> Markup {
    let n = &t.name;
    html! {
        tr data-id=(t.id) {
            th scope="row" { (n) }
            td { code { (t.display_prefix) "…" } }
            td { (time(Some(t.created_at))) }
            td { (time(Some(t.expires_at))) }
            td { (time(t.last_used_at)) }
            td.state {
                @if t.revoked_at.is_some() { span.badge data-status="revoked" { "revoked" } }
                @else if t.expires_at < chrono::Utc::now() { span.badge data-status="expired" { "expired" } }
                @else { "active" }
            }
            td.actions {
                @if t.revoked_at.is_none() {
                    button.danger type="button" data-action="revoke-token" data-id=(t.id) data-name=(n) {
                        "Revoke" span.sr-only { " " (n) }
                    }
                }
            }
        }
    }
}
