//! Browser rules: the session cookie, CSRF and the `Origin` of WebSocket
//! upgrades, all derived from the server's public URL.
//!
//! - The session cookie holds a random id (only its SHA-256 is stored, see
//!   `lapdev_db` `session.rs`): `HttpOnly`, `SameSite=Lax`, `Path=/`. When the
//!   public URL is https it is `__Host-lapdev_session` with `Secure` (the
//!   `__Host-` prefix makes browsers refuse it from any subdomain or path).
//!   Browsers refuse a `__Host-` cookie without `Secure`, so a plain-http
//!   development server names it `lapdev_session`.
//! - The pre-login cookie binds an OpenID Connect login's `state` and `nonce`
//!   to the browser that started it (same attributes, 10 minutes).
//! - CSRF: a request authenticated by cookie must carry [`CSRF_HEADER`] (a
//!   custom header, which a cross-site form cannot send and a cross-site script
//!   cannot send without a CORS preflight this server never answers) AND an
//!   `Origin` equal to the public URL's origin. Bearer-token calls are exempt:
//!   browsers never attach a bearer token by themselves.
//! - WebSocket upgrades carrying an `Origin` must carry the public one (browsers
//!   always send it; managers and the CLI send none).

use http::HeaderMap;
use http::header::{COOKIE, ORIGIN};
use lapdev_db::SessionLifetime;
use lapdev_hrpc::HrpcError;

/// The custom header cookie-authenticated requests must carry (any non-empty
/// value).
pub const CSRF_HEADER: &str = "x-lapdev-csrf";

/// How long an OpenID Connect login may take from start to callback.
pub const PRELOGIN_TTL_SECS: u64 = 600;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct WebPolicy {
    origin: String,
    secure: bool,
    /// Session lifetimes.
    pub lifetime: SessionLifetime,
}

impl WebPolicy {
    /// The policy of a server reachable at `public_url`.
    pub fn new(public_url: &str, lifetime: SessionLifetime) -> Self {
        let (origin, secure) = match url::Url::parse(public_url) {
            Ok(u) => (u.origin().ascii_serialization(), u.scheme() == "https"),
            Err(_) => (public_url.trim_end_matches('/').to_owned(), false),
        };
        Self {
            origin,
            secure,
            lifetime,
        }
    }

    /// The public URL's origin (`scheme://host[:port]`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether cookies are `Secure` (the public URL is https).
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The session cookie's name.
    pub fn session_cookie(&self) -> &'static str {
        if self.secure {
            "__Host-lapdev_session"
        } else {
            "lapdev_session"
        }
    }

    /// The pre-login cookie's name.
    pub fn prelogin_cookie(&self) -> &'static str {
        if self.secure {
            "__Host-lapdev_prelogin"
        } else {
            "lapdev_prelogin"
        }
    }

    /// A `Set-Cookie` value; `max_age` 0 deletes the cookie.
    pub fn set_cookie(&self, name: &str, value: &str, max_age_secs: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}")
    }

    /// Checks what a cookie-authenticated request must carry: [`CSRF_HEADER`]
    /// and the public origin.
    pub fn check_csrf(&self, headers: &HeaderMap) -> Result<(), HrpcError> {
        let marked = headers
            .get(CSRF_HEADER)
            .is_some_and(|v| !v.as_bytes().is_empty());
        if !marked {
            return Err(HrpcError::permission_denied(format!(
                "a request signed in by cookie must carry the {CSRF_HEADER} header"
            )));
        }
        match headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
            Some(o) if o == self.origin => Ok(()),
            Some(_) => Err(HrpcError::permission_denied(
                "a request signed in by cookie must come from this server's own origin",
            )),
            None => Err(HrpcError::permission_denied(
                "a request signed in by cookie must carry an Origin header",
            )),
        }
    }

    /// Checks a WebSocket upgrade's `Origin`: absent (not a browser) or ours.
    pub fn check_upgrade_origin(&self, headers: &HeaderMap) -> Result<(), HrpcError> {
        match headers.get(ORIGIN) {
            None => Ok(()),
            Some(o) if o.as_bytes() == self.origin.as_bytes() => Ok(()),
            Some(_) => Err(HrpcError::permission_denied(
                "WebSocket upgrades from another origin are refused",
            )),
        }
    }

    /// Checks a WebSocket upgrade authenticated by the session cookie: it must
    /// carry the public `Origin` (a WebSocket cannot carry [`CSRF_HEADER`];
    /// browsers always send `Origin`, so its absence means no browser sent it).
    pub fn check_session_upgrade(&self, headers: &HeaderMap) -> Result<(), HrpcError> {
        match headers.get(ORIGIN) {
            Some(o) if o.as_bytes() == self.origin.as_bytes() => Ok(()),
            Some(_) => Err(HrpcError::permission_denied(
                "WebSocket upgrades from another origin are refused",
            )),
            None => Err(HrpcError::permission_denied(
                "a WebSocket signed in by cookie must carry an Origin header",
            )),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn https_sessions_use_a_host_prefixed_secure_cookie() {
        let p = WebPolicy::new("https://lapdev.example.com/", SessionLifetime::default());
        assert_eq!(p.origin(), "https://lapdev.example.com");
        assert_eq!(p.session_cookie(), "__Host-lapdev_session");
        let c = p.set_cookie(p.session_cookie(), "abc", 60);
        for part in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age=60"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!c.contains("Domain"));
        let plain = WebPolicy::new("http://127.0.0.1:8080", SessionLifetime::default());
        assert_eq!(plain.session_cookie(), "lapdev_session");
        assert!(!plain.set_cookie("x", "y", 1).contains("Secure"));
    }

    #[test]
    fn csrf_needs_the_header_and_our_origin() {
        let p = WebPolicy::new("https://lapdev.example.com", SessionLifetime::default());
        let ours = "https://lapdev.example.com";
        assert!(
            p.check_csrf(&headers(&[(CSRF_HEADER, "1"), ("origin", ours)]))
                .is_ok()
        );
        assert!(p.check_csrf(&headers(&[("origin", ours)])).is_err());
        assert!(p.check_csrf(&headers(&[(CSRF_HEADER, "1")])).is_err());
        assert!(
            p.check_csrf(&headers(&[
                (CSRF_HEADER, "1"),
                ("origin", "https://evil.example")
            ]))
            .is_err()
        );
        assert!(
            p.check_csrf(&headers(&[
                (CSRF_HEADER, "1"),
                ("origin", "https://lapdev.example.com.evil.example")
            ]))
            .is_err()
        );
    }

    #[test]
    fn upgrades_from_other_origins_are_refused() {
        let p = WebPolicy::new("http://127.0.0.1:8080", SessionLifetime::default());
        assert!(p.check_upgrade_origin(&HeaderMap::new()).is_ok());
        assert!(
            p.check_upgrade_origin(&headers(&[("origin", "http://127.0.0.1:8080")]))
                .is_ok()
        );
        assert!(
            p.check_upgrade_origin(&headers(&[("origin", "http://evil.example")]))
                .is_err()
        );
    }

    #[test]
    fn cookie_upgrades_need_our_origin() {
        let p = WebPolicy::new("http://127.0.0.1:8080", SessionLifetime::default());
        assert!(p.check_session_upgrade(&HeaderMap::new()).is_err());
        assert!(
            p.check_session_upgrade(&headers(&[("origin", "http://127.0.0.1:8080")]))
                .is_ok()
        );
        assert!(
            p.check_session_upgrade(&headers(&[("origin", "http://evil.example")]))
                .is_err()
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = headers(&[("cookie", "a=1; lapdev_session=xyz"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "lapdev_session"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "session"), None);
    }
}
