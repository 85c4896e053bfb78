//! The web dashboard at `/`: server-rendered pages (maud templates, checked at
//! compile time and escaped by default), one small script of our own for forms
//! and live updates, and a stream of Server-Sent Events fed by the change feed.
//!
//! - `assets.rs`: the scripts (the dashboard's, the admin pages', the
//!   shared events worker) and the stylesheet, embedded in the binary and served
//!   under content-hashed names with a year-long immutable cache;
//! - `security.rs`: the headers every dashboard response carries (a strict
//!   Content-Security-Policy with no inline script or style, `frame-ancestors
//!   'none'`, `nosniff`);
//! - `session.rs`: who is looking at a page (the browser session cookie), and
//!   calls into the same services the HRPC methods run, as that caller;
//! - `layout.rs`: the page frame; `format.rs`: human units and times;
//! - `pages/`: one file per page (workspaces, paged by name; clusters;
//!   connect; tokens; users and roles; the audit log; providers);
//! - `events.rs`: `GET /events`, the live updates, one stream per browser
//!   (shared by its tabs), ended when its session is.
//!
//! The pages only read. Every action (sign-in, create, stop, delete…) is the
//! script calling the HRPC method the CLI calls, with the session cookie, the
//! CSRF header and our own `Origin` ([`crate::auth::web_policy`]).

pub mod assets;
pub mod events;
mod format;
mod layout;
mod pages;
pub mod security;
mod session;

pub use session::Viewer;

use axum::Router;
use axum::routing::get;
use tower_http::compression::CompressionLayer;

use crate::AppState;

/// The dashboard's routes: pages, assets and the event stream. Responses are
/// gzip-compressed when the browser accepts it (event streams never are: the
/// compression layer leaves `text/event-stream` alone).
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::workspaces::page))
        .route("/sign-in", get(pages::sign_in::page))
        .route("/workspaces/{name}", get(pages::workspace::page))
        .route("/workspaces/{name}/terminal", get(pages::terminal::page))
        .route("/clusters", get(pages::clusters::page))
        .route("/clusters/{name}", get(pages::cluster::page))
        .route("/connect", get(pages::connect::page))
        .route("/tokens", get(pages::tokens::page))
        .route("/users", get(pages::users::page))
        .route("/providers", get(pages::providers::page))
        .route("/audit", get(pages::audit::page))
        .route("/assets/{file}", get(assets::serve))
        .route("/events", get(events::stream))
        .with_state(state)
        .layer(CompressionLayer::new())
        .layer(axum::middleware::from_fn(security::headers))
}
