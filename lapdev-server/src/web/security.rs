//! The headers every dashboard response carries.
//!
//! The Content-Security-Policy allows scripts, styles, images and connections
//! from this origin only, and nothing inline: no `<script>` blocks, no `on…`
//! attributes, no `style` attributes (capacity bars are `<meter>` elements).
//! A page that shows text from a cluster or a user therefore cannot be made to
//! run it, even if an escape were missed. `frame-ancestors 'none'` (and
//! `X-Frame-Options: DENY` for old browsers) stops click-jacking.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;

/// The policy, as shipped (the tests read it from responses).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The terminal page's policy: the same, except that styles may also be
/// inline (xterm.js injects `<style>` elements and sets `style` attributes).
/// Scripts stay `'self'` only. No other page relaxes anything.
pub const TERMINAL_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// axum middleware: sets the security headers on every response (a page
/// that set its own policy, the terminal's, keeps it).
pub async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.entry(http::header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// axum `map_response`: API answers (which may carry a token or manifest shown
/// once) are never stored by a cache.
pub async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(http::header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
