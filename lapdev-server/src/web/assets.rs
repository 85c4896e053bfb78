//! The dashboard's own script and stylesheet, embedded in the binary.
//!
//! Each is served at `/assets/{stem}.{hash}.{ext}`, where `hash` is the first
//! 16 hex digits of the SHA-256 of its bytes, with `Cache-Control: public,
//! max-age=31536000, immutable`: a new build changes the name, so a browser
//! never keeps a stale copy and never asks twice for a current one. Any other
//! name is `404`.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use sha2::{Digest as _, Sha256};

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its content-hashed name (`app.0123456789abcdef.js`).
    pub name: String,
    /// Its bytes.
    pub bytes: &'static [u8],
    /// Its media type.
    pub content_type: &'static str,
}

impl Asset {
    fn new(stem: &str, ext: &str, bytes: &'static [u8], content_type: &'static str) -> Self {
        let hash = hex::encode(&Sha256::digest(bytes)[..8]);
        Asset {
            name: format!("{stem}.{hash}.{ext}"),
            bytes,
            content_type,
        }
    }

    /// Where a page links it.
    pub fn url(&self) -> String {
        format!("/assets/{}", self.name)
    }
}

/// The dashboard script.
pub static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "js",
        include_bytes!("../../web/static/app.js"),
        "text/javascript; charset=utf-8",
    )
});

/// The dashboard stylesheet.
pub static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "css",
        include_bytes!("../../web/static/app.css"),
        "text/css; charset=utf-8",
    )
});

/// The cluster detail page's script (tokens, placement), after [`SCRIPT`],
/// whose helpers it uses.
pub static CLUSTER_SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "cluster",
        "js",
        include_bytes!("../../web/static/cluster.js"),
        "text/javascript; charset=utf-8",
    )
});

/// The script of the admin and token pages (users, tokens, audit).
pub static ADMIN_SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "admin",
        "js",
        include_bytes!("../../web/static/admin.js"),
        "text/javascript; charset=utf-8",
    )
});

/// The terminal page's bundle (xterm.js, its fit addon and
/// `web/terminal/terminal.js`), built by `build.rs` into `OUT_DIR`.
#[cfg(lapdev_terminal)]
static TERMINAL_BUNDLE: LazyLock<(Asset, Asset)> = LazyLock::new(|| {
    (
        Asset::new(
            "terminal",
            "js",
            include_bytes!(concat!(env!("OUT_DIR"), "/terminal/terminal.js")),
            "text/javascript; charset=utf-8",
        ),
        Asset::new(
            "terminal",
            "css",
            include_bytes!(concat!(env!("OUT_DIR"), "/terminal/terminal.css")),
            "text/css; charset=utf-8",
        ),
    )
});

/// The terminal's script and stylesheet, or `None` when this server was built
/// without Node.js (`build.rs` warned).
pub fn terminal() -> Option<(&'static Asset, &'static Asset)> {
    #[cfg(lapdev_terminal)]
    {
        Some((&TERMINAL_BUNDLE.0, &TERMINAL_BUNDLE.1))
    }
    #[cfg(not(lapdev_terminal))]
    {
        None
    }
}

/// Every asset served.
fn all() -> impl Iterator<Item = &'static Asset> {
    let terminal = terminal().into_iter().flat_map(|(js, css)| [js, css]);
    [
        &*SCRIPT,
        &*STYLE,
        &*CLUSTER_SCRIPT,
        &*ADMIN_SCRIPT,
        &*EVENTS_WORKER,
    ]
    .into_iter()
    .chain(terminal)
}

/// The shared worker that holds a browser's one event stream for all its
/// tabs (`app.js` falls back to a stream per tab without `SharedWorker`).
pub static EVENTS_WORKER: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "events-worker",
        "js",
        include_bytes!("../../web/static/events-worker.js"),
        "text/javascript; charset=utf-8",
    )
});

/// The long cache of a content-hashed asset.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    match all().find(|a| a.name == file) {
        Some(a) => (
            [(CONTENT_TYPE, a.content_type), (CACHE_CONTROL, IMMUTABLE)],
            a.bytes,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(CACHE_CONTROL, "no-store")],
            "no such asset\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        let expected = hex::encode(&Sha256::digest(SCRIPT.bytes)[..8]);
        assert_eq!(SCRIPT.name, format!("app.{expected}.js"));
        assert!(STYLE.name.starts_with("app.") && STYLE.name.ends_with(".css"));
        assert_ne!(SCRIPT.name, STYLE.name);
        let names: std::collections::HashSet<_> = all().map(|a| &a.name).collect();
        assert_eq!(names.len(), all().count(), "two assets share a name");
    }
}
