//! `GET /audit` (admins and owners): the audit log, newest first, filtered by
//! actor and action (`?actor=&action=`), a page at a time (`?before=` the
//! cursor `PeopleRpc/list_audit` gives, as `lapdev audit` pages).

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use crate::AppState;
use crate::auth::api::{AuditFilter, PeopleRpc as _};
use crate::web::format::time;
use crate::web::layout::{self, Nav};
use crate::web::session::Viewer;

/// Rows a page.
const PAGE: u64 = 100;

/// The page's query.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    before: Option<String>,
}

/// The page.
pub async fn page(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
    viewer: Viewer,
) -> Response {
    if !viewer.is_admin() {
        return layout::forbidden(&viewer, "The audit log");
    }
    let nonempty = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (actor, action) = (nonempty(&q.actor), nonempty(&q.action));
    let filter = AuditFilter {
        since: None,
        actor: actor.clone(),
        action: action.clone(),
        before: nonempty(&q.before),
        limit: Some(PAGE),
    };
    let page = state.people.list_audit(viewer.context(), filter).await;
    let next_href = |next: &str| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(a) = &actor {
            s.append_pair("actor", a);
        }
        if let Some(a) = &action {
            s.append_pair("action", a);
        }
        s.append_pair("before", next);
        format!("/audit?{}", s.finish())
    };
    let body = html! {
        h1 { "Audit log" }
        form #audit-filter.card method="get" action="/audit" {
            div.field {
                label for="audit-actor" { "Actor (user name)" }
                input #audit-actor name="actor" type="text" value=[actor.as_deref()] autocomplete="off";
            }
            div.field {
                label for="audit-action" { "Action (e.g. workspace.create)" }
                input #audit-action name="action" type="text" value=[action.as_deref()] autocomplete="off";
            }
            button type="submit" { "Filter" }
        }
        @match &page {
            Ok(page) => {
                div.table-wrap tabindex="0" role="region" aria-label="Audit log" {
                    table #audit {
                        thead { tr {
                            th scope="col" { "When" } th scope="col" { "Actor" }
                            th scope="col" { "Action" } th scope="col" { "Target" }
                            th scope="col" { "Outcome" } th scope="col" { "From" }
                            th scope="col" { "Detail" }
                        } }
                        tbody {
                            @for e in &page.entries {
                                tr {
                                    td { (time(Some(e.occurred_at))) }
                                    td { (e.actor.as_deref().unwrap_or("—")) }
                                    th scope="row" { (e.action) }
                                    td.detail { (e.target.as_deref().unwrap_or("—")) }
                                    td { span.badge data-status=(e.outcome) { (e.outcome) } }
                                    td { (e.source_addr.as_deref().unwrap_or("—")) }
                                    td.detail { (e.detail.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
                @if page.entries.is_empty() { p { "Nothing recorded matches." } }
                @if let Some(next) = &page.next {
                    nav.pager aria-label="Audit log pages" {
                        a #page-next href=(next_href(next)) rel="next" { "Older entries →" }
                    }
                }
            }
            Err(e) => p.form-error role="alert" { "The audit log could not be read: " (e.message) },
        }
    };
    layout::page("Audit log", "audit", Some(&viewer), Nav::Audit, body)
}
