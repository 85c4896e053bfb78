//! The frame of every page: head (hashed assets, no inline code), navigation,
//! the sign-out button, a live region for results, and the main content.

use axum::response::{IntoResponse, Response};
use http::header::CACHE_CONTROL;
use lapdev_hrpc::HrpcError;
use maud::{DOCTYPE, Markup, html};

use super::assets::{Asset, EVENTS_WORKER, SCRIPT, STYLE};
use super::session::Viewer;

/// The project's documentation.
pub const DOCS_URL: &str = "https://github.com/lapce/lapdev";

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Workspaces,
    Clusters,
    Connect,
    Tokens,
    Users,
    Audit,
    Providers,
    None,
}

/// A full page. Pages are per-user and may show secrets the script put there,
/// so none is ever stored by a cache (`no-store`).
pub fn page(title: &str, name: &str, viewer: Option<&Viewer>, nav: Nav, main: Markup) -> Response {
    page_with(title, name, viewer, nav, main, None)
}

/// [`page`] with a script of its own besides the dashboard's.
pub fn page_with(
    title: &str,
    name: &str,
    viewer: Option<&Viewer>,
    nav: Nav,
    main: Markup,
    script: Option<&Asset>,
) -> Response {
    let link = |to: Nav, href: &str, text: &str| {
        html! {
            @if nav == to { a href=(href) aria-current="page" { (text) } }
            @else { a href=(href) { (text) } }
        }
    };
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lapdev" }
                link rel="stylesheet" href=(STYLE.url());
                meta name="lapdev-events-worker" content=(EVENTS_WORKER.url());
                script src=(SCRIPT.url()) defer {}
                @if let Some(s) = script { script src=(s.url()) defer {} }
            }
            body data-page=(name) {
                header {
                    nav aria-label="Main" {
                        span.brand { "Lapdev" }
                        @if let Some(v) = viewer {
                            (link(Nav::Workspaces, "/", "Workspaces"))
                            @if v.is_admin() { (link(Nav::Clusters, "/clusters", "Clusters")) }
                            (link(Nav::Connect, "/connect", "Connect"))
                            (link(Nav::Tokens, "/tokens", "Tokens"))
                            @if v.is_admin() {
                                (link(Nav::Providers, "/providers", "Providers"))
                                (link(Nav::Users, "/users", "Users"))
                                (link(Nav::Audit, "/audit", "Audit log"))
                            }
                        }
                        a href=(DOCS_URL) rel="noopener" { "Docs" }
                        @if let Some(v) = viewer {
                            span.who { (v.0.name) " (" (v.0.role.as_str()) ")" }
                            button #sign-out type="button" { "Sign out" }
                        }
                    }
                }
                main { (main) }
                p #toast role="status" aria-live="polite" {}
            }
        }
    };
    (
        [(CACHE_CONTROL, "no-store")],
        axum::response::Html(body.into_string()),
    )
        .into_response()
}

/// Links to a list's previous and next pages: `{path}?before=NAME` and
/// `{path}?after=NAME` (names query-encoded), labelled with the page size.
pub fn pager(
    path: &str,
    label: &str,
    page_size: u64,
    previous: Option<&str>,
    next: Option<&str>,
) -> Markup {
    let q = |key: &str, name: &str| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair(key, name);
        format!("{path}?{}", s.finish())
    };
    html! {
        @if previous.is_some() || next.is_some() {
            nav.pager aria-label=(label) {
                @if let Some(p) = previous { a #page-previous href=(q("before", p)) rel="prev" { "← Previous " (page_size) } }
                @if let Some(n) = next { a #page-next href=(q("after", n)) rel="next" { "Next " (page_size) " →" } }
            }
        }
    }
}

/// A page saying the viewer may not see what they asked for.
pub fn forbidden(viewer: &Viewer, what: &str) -> Response {
    let mut r = page(
        "Not allowed",
        "forbidden",
        Some(viewer),
        Nav::None,
        html! {
            h1 { "Not allowed" }
            p { (what) " is for admins and owners." }
        },
    );
    *r.status_mut() = http::StatusCode::FORBIDDEN;
    r
}

/// A page saying why what was asked for cannot be shown (an HRPC error from
/// the service behind it), with the error's HTTP status.
pub fn error(title: &str, name: &str, viewer: &Viewer, nav: Nav, e: &HrpcError) -> Response {
    let mut r = page(
        title,
        name,
        Some(viewer),
        nav,
        html! { h1 { (title) } p.form-error role="alert" { (e.message) } },
    );
    *r.status_mut() = e.http_status();
    r
}
