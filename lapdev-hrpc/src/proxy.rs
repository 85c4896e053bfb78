//! Dialing out through an HTTP proxy (`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`,
//! upper or lower case, as curl reads them) with HTTP `CONNECT`, for both the
//! HRPC client ([`crate::HttpTransport`]) and the reverse tunnel's WebSocket
//! ([`crate::tunnel::connect`]). The proxy rules and the `CONNECT` handshake
//! are hyper-util's (`client::proxy::matcher`, `connect::proxy::Tunnel`); this
//! module only picks, per destination, between a direct TCP connection and a
//! tunnel through the proxy. TLS to the server runs inside the tunnel, so the
//! proxy sees only the host and port.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Which destinations go through which proxy.
#[derive(Clone)]
pub struct ProxyRules {
    matcher: Arc<Matcher>,
}

impl std::fmt::Debug for ProxyRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The matcher's Debug would print proxy credentials.
        f.debug_struct("ProxyRules").finish_non_exhaustive()
    }
}

impl ProxyRules {
    /// The rules of the process environment (`HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY`, `NO_PROXY`, and their lower-case forms).
    pub fn from_env() -> Self {
        Self {
            matcher: Arc::new(Matcher::from_env()),
        }
    }

    /// Explicit rules: `https_proxy` for `https`/`wss` destinations, `http_proxy`
    /// for `http`/`ws` ones, `no_proxy` in `NO_PROXY` syntax.
    pub fn new(https_proxy: Option<&str>, http_proxy: Option<&str>, no_proxy: &str) -> Self {
        let mut b = Matcher::builder().no(no_proxy);
        if let Some(p) = https_proxy {
            b = b.https(p);
        }
        if let Some(p) = http_proxy {
            b = b.http(p);
        }
        Self {
            matcher: Arc::new(b.build()),
        }
    }

    /// The proxy for `dst` (`http`, `https`, `ws` or `wss`), with its
    /// `Proxy-Authorization` when the proxy URL carries credentials; `None` to
    /// connect directly.
    pub fn proxy_for(&self, dst: &Uri) -> Option<(Uri, Option<http::HeaderValue>)> {
        let i = self.matcher.intercept(&http_form(dst)?)?;
        Some((i.uri().clone(), i.basic_auth().cloned()))
    }
}

/// `dst` with an `http`/`https` scheme and an explicit port, as the proxy
/// rules and the `CONNECT` line want it.
fn http_form(dst: &Uri) -> Option<Uri> {
    let (scheme, default_port) = match dst.scheme_str()? {
        "https" | "wss" => ("https", 443),
        "http" | "ws" => ("http", 80),
        _ => return None,
    };
    let host = dst.host()?;
    let port = dst.port_u16().unwrap_or(default_port);
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("{scheme}://{host}:{port}").parse().ok()
}

/// A connector (for hyper's client) that tunnels through the proxy the rules
/// name for each destination and connects directly otherwise.
#[derive(Clone, Debug)]
pub struct ProxyConnector {
    http: HttpConnector,
    rules: Option<ProxyRules>,
}

impl ProxyConnector {
    /// Wraps `http`; without rules it is `http` itself.
    pub fn new(http: HttpConnector, rules: Option<ProxyRules>) -> Self {
        Self { http, rules }
    }

    /// One TCP connection to `dst` (`ws`/`wss`/`http`/`https`), through the
    /// proxy when the rules say so.
    pub async fn connect_stream(&self, dst: &Uri) -> Result<TcpStream, BoxError> {
        let target = http_form(dst).ok_or("the URL has no host")?;
        let io = tower::ServiceExt::oneshot(self.clone(), target).await?;
        Ok(io.into_inner())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let proxy = self.rules.as_ref().and_then(|r| r.proxy_for(&dst));
        let mut http = self.http.clone();
        Box::pin(async move {
            match proxy {
                None => Ok(tower::Service::call(&mut http, dst).await?),
                Some((proxy, auth)) => {
                    let mut tunnel = Tunnel::new(proxy, http);
                    if let Some(auth) = auth {
                        tunnel = tunnel.with_auth(auth);
                    }
                    let dst = http_form(&dst).unwrap_or(dst);
                    Ok(tower::ServiceExt::oneshot(tunnel, dst).await?)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pick_the_proxy_by_scheme_and_honour_no_proxy() {
        let rules = ProxyRules::new(
            Some("http://proxy.corp:3128"),
            None,
            "internal.corp,10.0.0.0/8",
        );
        let (p, auth) = rules
            .proxy_for(&"wss://lapdev.example.com/rpc/_tunnel".parse().unwrap())
            .unwrap();
        assert_eq!(p.to_string(), "http://proxy.corp:3128/");
        assert!(auth.is_none());
        assert!(
            rules
                .proxy_for(&"https://x.internal.corp/".parse().unwrap())
                .is_none()
        );
        assert!(
            rules
                .proxy_for(&"https://10.1.2.3:8443/".parse().unwrap())
                .is_none()
        );
        assert!(
            rules
                .proxy_for(&"ws://plain.example.com/".parse().unwrap())
                .is_none(),
            "no http proxy configured"
        );
    }

    #[test]
    fn credentials_become_proxy_authorization_and_stay_out_of_debug() {
        let rules = ProxyRules::new(Some("http://user:secret@proxy:3128"), None, "");
        let (_, auth) = rules
            .proxy_for(&"https://lapdev.example.com/".parse().unwrap())
            .unwrap();
        assert!(auth.unwrap().to_str().unwrap().starts_with("Basic "));
        assert!(!format!("{rules:?}").contains("secret"));
    }

    #[test]
    fn destinations_get_an_explicit_port() {
        let f = |s: &str| http_form(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            f("wss://a.example/x").as_deref(),
            Some("https://a.example:443/")
        );
        assert_eq!(
            f("ws://a.example:8080/").as_deref(),
            Some("http://a.example:8080/")
        );
        assert_eq!(f("ftp://a.example/"), None);
    }
}
