//! The HTTP client of OpenID Connect: `openidconnect`'s [`AsyncHttpClient`]
//! over the project's own hyper + rustls (ring) client
//! ([`lapdev_hrpc::HttpTransport`]), so no reqwest and no second TLS stack.
//!
//! Egress rules, the same spirit as provider endpoints
//! (`lapdev_kube::provider::EndpointPolicy`): every URL (discovery, JWKS, token
//! endpoint) must be `https` without user info, and not an IP literal that
//! names this host or the link-local metadata range; redirects are never
//! followed (a 3xx is an error). Plain `http` to loopback is allowed only with
//! [`Egress::AllowLoopbackHttp`] (the server's `--allow-provider-test-endpoints`),
//! for local stand-ins.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use lapdev_hrpc::{HttpTransport, Transport as _, TransportError};
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Which URLs the client may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// https only.
    #[default]
    HttpsOnly,
    /// https, and plain http to loopback: local stand-ins in tests.
    AllowLoopbackHttp,
}

/// Why an OpenID provider could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The URL breaks the egress rules.
    #[error("refused to call {url}: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The provider answered with a redirect, which is not followed.
    #[error("the OpenID provider answered {status} (a redirect), which is not followed")]
    Redirect {
        /// The status.
        status: http::StatusCode,
    },
    /// No answer.
    #[error("the OpenID provider could not be reached")]
    Transport(#[source] TransportError),
}

/// Checks `raw` against `egress`; `Err` names the rule it breaks.
pub fn check_url(raw: &str, egress: Egress) -> Result<(), &'static str> {
    let url = url::Url::parse(raw).map_err(|_| "not a URL")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with user info are refused");
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
            Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        }
        Some(url::Host::Domain(_)) => None,
        None => return Err("the URL has no host"),
    };
    let local = ip.is_some_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified(),
    });
    let loopback = ip.is_some_and(|ip| ip.is_loopback());
    match (url.scheme(), egress) {
        ("https", _) if !local => Ok(()),
        ("https" | "http", Egress::AllowLoopbackHttp) if loopback => Ok(()),
        ("https", _) => Err("this host's own and link-local addresses are refused"),
        ("http", Egress::AllowLoopbackHttp) => Err("plain http only to loopback"),
        _ => Err("only https URLs are allowed"),
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct EgressClient {
    transport: HttpTransport,
    egress: Egress,
}

impl std::fmt::Debug for EgressClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressClient")
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}

impl EgressClient {
    /// A client on `transport` under `egress`.
    pub fn new(transport: HttpTransport, egress: Egress) -> Self {
        Self { transport, egress }
    }

    /// The rules it follows.
    pub fn egress(&self) -> Egress {
        self.egress
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, EgressError> {
        let url = request.uri().to_string();
        check_url(&url, self.egress).map_err(|reason| EgressError::Refused {
            url: url.clone(),
            reason,
        })?;
        let response = self
            .transport
            .send(request.map(Bytes::from))
            .await
            .map_err(EgressError::Transport)?;
        if response.status().is_redirection() {
            return Err(EgressError::Redirect {
                status: response.status(),
            });
        }
        Ok(response.map(|b| b.to_vec()))
    }
}

impl<'c> AsyncHttpClient<'c> for EgressClient {
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, EgressError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

#[cfg(test)]
mod tests {
    use super::Egress::*;
    use super::check_url;

    #[test]
    fn https_only_by_default() {
        assert!(check_url("https://accounts.example.com/.well-known/x", HttpsOnly).is_ok());
        for bad in [
            "http://accounts.example.com",
            "https://user:pw@accounts.example.com",
            "https://127.0.0.1/jwks",
            "https://localhost/jwks",
            "https://169.254.169.254/latest",
            "https://[::1]/",
            "http://127.0.0.1:9000/",
            "ftp://accounts.example.com",
            "not a url",
        ] {
            assert!(check_url(bad, HttpsOnly).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_http_only_with_the_test_flag() {
        assert!(check_url("http://127.0.0.1:9000/token", AllowLoopbackHttp).is_ok());
        assert!(check_url("http://localhost:9000/token", AllowLoopbackHttp).is_ok());
        assert!(check_url("http://10.0.0.1/token", AllowLoopbackHttp).is_err());
        assert!(check_url("http://169.254.169.254/", AllowLoopbackHttp).is_err());
    }
}
