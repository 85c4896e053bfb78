//! Which hosts the server may call on a provider's behalf.
//!
//! Whoever may add a provider chooses its API endpoint and the key's
//! `token_uri`; left open, that is a server-side request forgery path (the
//! server would POST signed assertions to, and report what answered from, any
//! address it can reach). So by default ([`EndpointPolicy::GoogleOnly`]) both
//! must be `https` on Google's hosts, on the default port, without user info:
//!
//! - the GKE API endpoint: `googleapis.com` or any `*.googleapis.com`
//!   (regional and Private Service Connect endpoints included);
//! - `token_uri`: `oauth2.googleapis.com`, `www.googleapis.com` (older keys) or
//!   `accounts.google.com` (older keys still).
//!
//! [`EndpointPolicy::AllowTestStandIns`] (the server's
//! `--allow-provider-test-endpoints`) allows any `https` URL and plain `http` on
//! loopback, for local stand-ins in tests and development only.

use super::ProviderError;

/// Hosts a service-account key's `token_uri` may name by default.
pub const GOOGLE_TOKEN_HOSTS: &[&str] = &[
    "oauth2.googleapis.com",
    "www.googleapis.com",
    "accounts.google.com",
];

/// Which provider endpoints are allowed; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointPolicy {
    /// Only Google's own hosts over https.
    #[default]
    GoogleOnly,
    /// Any https URL and loopback http: local stand-ins for tests.
    AllowTestStandIns,
}

impl EndpointPolicy {
    /// Checks a GKE API endpoint.
    pub fn check_api_endpoint(self, raw: &str) -> Result<(), ProviderError> {
        if self.allows(raw, |host| {
            host == "googleapis.com" || host.ends_with(".googleapis.com")
        }) {
            Ok(())
        } else {
            Err(ProviderError::InvalidConfig(match self {
                Self::GoogleOnly => {
                    "endpoint must be an https URL on googleapis.com (the server allows \
                     other hosts only with --allow-provider-test-endpoints)"
                        .into()
                }
                Self::AllowTestStandIns => {
                    "endpoint must be an https URL (plain http only on loopback)".into()
                }
            }))
        }
    }

    /// Checks a service-account key's `token_uri`.
    pub fn check_token_uri(self, raw: &str) -> Result<(), ProviderError> {
        if self.allows(raw, |host| GOOGLE_TOKEN_HOSTS.contains(&host)) {
            Ok(())
        } else {
            Err(ProviderError::MalformedCredentials(match self {
                Self::GoogleOnly => format!(
                    "token_uri must be an https URL on {} (the server allows other hosts \
                     only with --allow-provider-test-endpoints)",
                    GOOGLE_TOKEN_HOSTS.join(", ")
                ),
                Self::AllowTestStandIns => {
                    "token_uri must be an https URL (plain http only on loopback)".into()
                }
            }))
        }
    }

    fn allows(self, raw: &str, google_host: impl Fn(&str) -> bool) -> bool {
        let Ok(url) = url::Url::parse(raw) else {
            return false;
        };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        match self {
            Self::GoogleOnly => match (url.scheme(), url.host()) {
                // `Url` lower-cases domains and drops a default port.
                ("https", Some(url::Host::Domain(d))) => url.port().is_none() && google_host(d),
                _ => false,
            },
            Self::AllowTestStandIns => match (url.scheme(), url.host()) {
                ("https", Some(_)) => true,
                ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
                ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
                ("http", Some(url::Host::Domain(d))) => d == "localhost",
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointPolicy::*;

    #[test]
    fn google_hosts_only_by_default() {
        for ok in [
            "https://container.googleapis.com",
            "https://europe-west1-container.googleapis.com/",
            "https://CONTAINER.googleapis.com:443",
        ] {
            assert!(GoogleOnly.check_api_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://container.googleapis.com",
            "https://container.googleapis.com:8443",
            "https://evil.example.com",
            "https://googleapis.com.evil.example.com",
            "https://evilgoogleapis.com",
            "https://user:pw@container.googleapis.com",
            "https://169.254.169.254",
            "http://127.0.0.1:8080",
            "not a url",
        ] {
            assert!(GoogleOnly.check_api_endpoint(bad).is_err(), "{bad}");
        }
        assert!(
            GoogleOnly
                .check_token_uri("https://oauth2.googleapis.com/token")
                .is_ok()
        );
        assert!(
            GoogleOnly
                .check_token_uri("https://accounts.google.com/o/oauth2/token")
                .is_ok()
        );
        for bad in [
            "https://container.googleapis.com/token",
            "https://oauth2.googleapis.com.evil.example/token",
            "http://127.0.0.1:9/token",
            "https://metadata.google.internal/token",
        ] {
            assert!(GoogleOnly.check_token_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stand_ins_only_with_the_explicit_policy() {
        assert!(
            AllowTestStandIns
                .check_api_endpoint("http://127.0.0.1:8080")
                .is_ok()
        );
        assert!(
            AllowTestStandIns
                .check_token_uri("http://localhost:1/token")
                .is_ok()
        );
        assert!(
            AllowTestStandIns
                .check_api_endpoint("http://10.0.0.1")
                .is_err()
        );
    }
}
