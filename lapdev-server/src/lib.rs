//! Lapdev's central server: configuration, wiring and the HTTP surface.
//!
//! The binary in `main.rs` parses flags and calls [`run`]; everything else is a
//! value a test can build without a port ([`app`]).

use axum::{Router, routing::get};

/// The server's whole HTTP surface.
pub fn app() -> Router {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz() -> &'static str {
    "ok"
}
