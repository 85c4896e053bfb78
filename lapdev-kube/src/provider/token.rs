//! OAuth access tokens from a service-account key: the JWT-bearer grant
//! (RFC 7523) at the key's `token_uri`.
//!
//! Google APIs accept a self-signed JWT, but a GKE cluster's own API server wants
//! an OAuth access token. [`TokenSource`] signs a JWT assertion with the key
//! (`iss` the account, `aud` the token URI, the requested scope, one hour), posts
//! it as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, and caches the
//! token it gets until [`REFRESH_BEFORE_EXPIRY`] before it expires. Expiry is
//! measured on tokio's clock, so tests can pause and advance time.
//!
//! The client follows no redirects (the `token_uri` was checked against the
//! endpoint policy; a redirect would leave it), and a refusal is reported as
//! the HTTP status, a fixed text and at most the registered OAuth error code
//! (RFC 6749 §5.2): never the endpoint's own text.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::ProviderError;
use super::gcp::{ServiceAccountKey, ensure_crypto_provider};

/// The grant type of a JWT-bearer token request.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A cached token is replaced this long before it expires.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Lifetime asked for in the assertion.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How long one token request may take.
pub const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Cached {
    token: String,
    expires_at: Instant,
}

/// Access tokens for one key and scope, cached. Cheap to clone (clones share the
/// cache). `Debug` shows no token.
#[derive(Clone)]
pub struct TokenSource {
    key: ServiceAccountKey,
    scope: String,
    http: reqwest::Client,
    cache: Arc<Mutex<Option<Cached>>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.key.client_email())
            .field("token_uri", &self.key.token_uri())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
}

/// The OAuth error codes RFC 6749 §5.2 registers: the only upstream words a
/// refusal repeats.
const OAUTH_ERROR_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

impl TokenSource {
    /// A source for `key` and `scope`. Makes no call.
    pub fn new(key: ServiceAccountKey, scope: &str) -> Result<Self, ProviderError> {
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(TOKEN_REQUEST_TIMEOUT)
            // Tokens are fetched about once an hour: keep no idle connections.
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::BuildClient(format!("token client: {e}")))?;
        Ok(TokenSource {
            key,
            scope: scope.to_owned(),
            http,
            cache: Arc::default(),
        })
    }

    /// A valid access token: the cached one unless it expires within
    /// [`REFRESH_BEFORE_EXPIRY`], else a new one from the token endpoint.
    pub async fn access_token(&self) -> Result<String, ProviderError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.expires_at.saturating_duration_since(Instant::now()) > REFRESH_BEFORE_EXPIRY
        {
            return Ok(c.token.clone());
        }
        let requested_at = Instant::now();
        let (token, lifetime) = self.fetch().await?;
        *cache = Some(Cached {
            token: token.clone(),
            expires_at: requested_at + lifetime,
        });
        Ok(token)
    }

    /// The signed assertion for the token request.
    pub fn assertion(&self) -> Result<String, ProviderError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ProviderError::AccessToken("the system clock is before 1970".into()))?
            .as_secs();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "kid": self.key.private_key_id(),
        });
        let claims = serde_json::json!({
            "iss": self.key.client_email(),
            "sub": self.key.client_email(),
            "aud": self.key.token_uri(),
            "scope": self.scope,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signature = self.key.sign_rs256(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }

    async fn fetch(&self) -> Result<(String, Duration), ProviderError> {
        let assertion = self.assertion()?;
        let response = self
            .http
            .post(self.key.token_uri())
            .form(&[
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                // reqwest's error names the kind of failure (connect,
                // timeout), not anything the endpoint sent.
                ProviderError::AccessToken(format!(
                    "the token endpoint {} is unreachable: {}",
                    self.key.token_uri(),
                    e.without_url()
                ))
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            ProviderError::AccessToken(format!("reading the token response: {}", e.without_url()))
        })?;
        if !status.is_success() {
            let code = serde_json::from_slice::<TokenErrorResponse>(&body)
                .ok()
                .and_then(|e| OAUTH_ERROR_CODES.iter().find(|c| **c == e.error).copied());
            let what = if status.is_redirection() {
                "redirected (redirects are not followed)"
            } else if status.is_client_error() {
                "refused the key"
            } else {
                "failed"
            };
            return Err(ProviderError::AccessToken(match code {
                Some(code) => format!(
                    "the token endpoint {what}: HTTP {} ({code})",
                    status.as_u16()
                ),
                None => format!("the token endpoint {what}: HTTP {}", status.as_u16()),
            }));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            ProviderError::AccessToken("the token endpoint sent no access_token".into())
        })?;
        if parsed.access_token.is_empty() {
            return Err(ProviderError::AccessToken(
                "the token endpoint sent an empty access_token".into(),
            ));
        }
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600).min(86_400));
        Ok((parsed.access_token, lifetime))
    }
}
