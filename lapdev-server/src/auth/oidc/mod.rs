//! OpenID Connect sign-in at the server level: authorization code with PKCE
//! through the `openidconnect` crate, over our own HTTP client ([`http`]).
//!
//! A login, step by step:
//! 1. `GET /auth/oidc/start` ([`OidcLogins::start`]): discovery (egress rules),
//!    a fresh `state`, `nonce` and PKCE verifier, stored in the database under
//!    the state's SHA-256 (sealed, expiring; `lapdev_db` `oidc_pending.rs`)
//!    together with the SHA-256 of a random pre-login cookie the browser
//!    receives. The browser goes to the provider.
//! 2. `GET /auth/oidc/callback` ([`OidcLogins::finish`]): the state is taken
//!    out (deleted, so a replay finds nothing), the provider must still be the
//!    one the login started with, the pre-login cookie must match, discovery is
//!    read again, the code is exchanged with the PKCE verifier, the ID token's
//!    signature (JWKS), issuer, audience, expiry and nonce are verified by
//!    `openidconnect`.
//! 3. The account: a user already linked to (issuer, subject) is that user,
//!    whatever email the token now carries (an email is used only for the
//!    first link). Otherwise the email must be present, verified by the
//!    provider and in an allowed domain; the live user with that email is
//!    linked, or a new user with the provider's default role is created.
//! 4. A browser gets a session cookie; the CLI ([`CliRequest`]) gets a one-time
//!    code on its loopback redirect, which it exchanges for a personal access
//!    token by POST with its own PKCE verifier ([`OidcLogins::redeem`]).
//!
//! Pending logins and one-time codes live in the database, so a login survives
//! a restart and any replica may finish it; each is single-use and expires.

pub mod http;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lapdev_db::{
    CredentialKey, Db, DbError, NewAuditEntry, NewUser, OidcPendingKind, OidcProvider, User,
};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use self::http::{EgressClient, EgressError};
use super::web_policy::PRELOGIN_TTL_SECS;

/// How long a CLI's one-time code may wait to be redeemed.
pub const CLI_CODE_TTL: Duration = Duration::from_secs(120);

/// The CLI's part of a login: where to send the one-time code and the
/// challenge of the verifier it will redeem it with (S256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliRequest {
    /// The loopback port the CLI listens on.
    pub port: u16,
    /// `BASE64URL(SHA256(verifier))`.
    pub challenge: String,
}

/// Why a login failed. Each maps to one response in the web handlers.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No OpenID provider is configured.
    #[error("OpenID Connect sign-in is not configured on this server")]
    NotConfigured,
    /// The stored provider could not be read.
    #[error("the OpenID provider's settings cannot be read")]
    Storage(#[source] DbError),
    /// Discovery failed.
    #[error("the OpenID provider's discovery document could not be used: {0}")]
    Discovery(String),
    /// The state is unknown, expired or already used.
    #[error("unknown, expired or already used login state")]
    UnknownState,
    /// The browser finishing the login is not the one that started it.
    #[error("this login was started in another browser (pre-login cookie mismatch)")]
    WrongBrowser,
    /// The provider returned an error instead of a code.
    #[error("the OpenID provider refused the sign-in: {0}")]
    ProviderRefused(String),
    /// The code exchange failed.
    #[error("the authorization code could not be exchanged: {0}")]
    Exchange(String),
    /// The ID token failed verification (signature, issuer, audience, expiry,
    /// nonce).
    #[error("the ID token was rejected: {0}")]
    IdToken(String),
    /// The provider did not say the email is verified.
    #[error("the OpenID provider did not verify this account's email")]
    UnverifiedEmail,
    /// No email to link by.
    #[error("the OpenID provider gave no email to link this account by")]
    NoEmail,
    /// The email's domain is not allowed.
    #[error("email domain {0:?} is not allowed on this server")]
    DomainNotAllowed(String),
    /// The linked user is disabled.
    #[error("this user is disabled")]
    Disabled,
    /// The CLI's one-time code is unknown, expired, used or its verifier is
    /// wrong.
    #[error("unknown, expired or already used sign-in code, or the wrong verifier")]
    BadCliCode,
    /// The database failed.
    #[error("the sign-in could not be stored")]
    Database(#[source] DbError),
    /// Bad input.
    #[error("{0}")]
    BadRequest(&'static str),
}

impl LoginError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> ::http::StatusCode {
        use ::http::StatusCode as S;
        match self {
            LoginError::NotConfigured => S::NOT_FOUND,
            LoginError::Storage(_) | LoginError::Database(_) => S::INTERNAL_SERVER_ERROR,
            LoginError::Discovery(_) | LoginError::Exchange(_) => S::BAD_GATEWAY,
            LoginError::UnknownState
            | LoginError::WrongBrowser
            | LoginError::BadRequest(_)
            | LoginError::BadCliCode => S::BAD_REQUEST,
            LoginError::ProviderRefused(_) | LoginError::IdToken(_) => S::UNAUTHORIZED,
            LoginError::UnverifiedEmail
            | LoginError::NoEmail
            | LoginError::DomainNotAllowed(_)
            | LoginError::Disabled => S::FORBIDDEN,
        }
    }
}

/// A login between start and callback, as stored (sealed).
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    /// Hex SHA-256 of the pre-login cookie.
    prelogin_hash: String,
    nonce: String,
    pkce_verifier: String,
    cli_port: Option<u16>,
    cli_challenge: Option<String>,
    /// The provider the login started with.
    issuer: String,
}

/// A CLI's one-time code, as stored (sealed).
#[derive(Serialize, Deserialize)]
struct PendingCode {
    user_id: Uuid,
    organization_id: Uuid,
    challenge: String,
}

/// A started login: where to send the browser and the pre-login cookie value.
#[derive(Debug)]
pub struct Started {
    /// The provider's authorization URL.
    pub authorize_url: String,
    /// The pre-login cookie's value.
    pub prelogin: String,
}

/// A finished login.
#[derive(Debug)]
pub struct SignedIn {
    /// Who signed in.
    pub user: User,
    /// Set when the CLI started the login.
    pub cli: Option<CliRequest>,
}

/// Logins in flight and the CLI's one-time codes; see the module docs.
#[derive(Clone)]
pub struct OidcLogins {
    db: Db,
    key: CredentialKey,
    http: EgressClient,
    redirect_url: String,
}

impl std::fmt::Debug for OidcLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcLogins")
            .field("redirect_url", &self.redirect_url)
            .finish_non_exhaustive()
    }
}

fn sha(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Whether `s` is the shape of a PKCE S256 challenge or verifier we accept.
fn is_b64url(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The user name a new account gets: the provider's preferred user name or
/// the email's local part, trimmed to what names allow.
fn new_user_name(preferred: Option<&str>, email: &str) -> String {
    let raw = preferred
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| email.split('@').next().unwrap_or(email));
    let name: String = raw.trim().chars().take(64).collect();
    if name.is_empty() {
        "user".to_owned()
    } else {
        name
    }
}

impl OidcLogins {
    /// Logins for a server whose public URL is `public_url`.
    pub fn new(db: Db, key: CredentialKey, http: EgressClient, public_url: &str) -> Self {
        Self {
            db,
            key,
            http,
            redirect_url: format!("{}/auth/oidc/callback", public_url.trim_end_matches('/')),
        }
    }

    /// The organisation OpenID Connect users join, if a provider is set.
    pub async fn organization(&self) -> Option<uuid::Uuid> {
        match self.db.oidc_provider(&self.key).await {
            Ok(p) => p.map(|p| p.config.organization_id),
            Err(_) => None,
        }
    }

    /// The HTTP client (its egress rules also check configured issuers).
    pub fn http(&self) -> &EgressClient {
        &self.http
    }

    async fn discover(&self, provider: &OidcProvider) -> Result<CoreProviderMetadata, LoginError> {
        let issuer = IssuerUrl::new(provider.config.issuer.clone())
            .map_err(|e| LoginError::Discovery(e.to_string()))?;
        CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| LoginError::Discovery(error_chain(&e)))
    }

    /// Step 1: see the module docs.
    pub async fn start(&self, cli: Option<CliRequest>) -> Result<Started, LoginError> {
        if let Some(c) = &cli
            && (c.port == 0 || !is_b64url(&c.challenge, 43, 43))
        {
            return Err(LoginError::BadRequest(
                "cli_port must be a port and cli_challenge a base64url SHA-256",
            ));
        }
        let provider = self
            .db
            .oidc_provider(&self.key)
            .await
            .map_err(LoginError::Storage)?
            .ok_or(LoginError::NotConfigured)?;
        let metadata = self.discover(&provider).await?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(provider.config.client_id.clone()),
            Some(ClientSecret::new(secret_text(&provider))),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.redirect_url.clone())
                .map_err(|e| LoginError::Discovery(e.to_string()))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        let prelogin = random_token();
        let (cli_port, cli_challenge) = match cli {
            Some(c) => (Some(c.port), Some(c.challenge)),
            None => (None, None),
        };
        let stored = PendingLogin {
            prelogin_hash: hex::encode(sha(&prelogin)),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            cli_port,
            cli_challenge,
            issuer: provider.config.issuer.clone(),
        };
        let payload = serde_json::to_vec(&stored)
            .map_err(|_| LoginError::BadRequest("the login could not be stored"))?;
        self.db
            .put_oidc_pending(
                &self.key,
                OidcPendingKind::Login,
                state.secret(),
                &payload,
                ttl(Duration::from_secs(PRELOGIN_TTL_SECS)),
            )
            .await
            .map_err(LoginError::Database)?;
        Ok(Started {
            authorize_url: url.to_string(),
            prelogin,
        })
    }

    /// Step 2 and 3: see the module docs. `audit` is the row written with a
    /// new link or user (its action and target are filled in here).
    pub async fn finish(
        &self,
        state: &str,
        code: Result<&str, String>,
        prelogin: Option<&str>,
        audit: NewAuditEntry,
    ) -> Result<SignedIn, LoginError> {
        // Taken out first (deleted), so a replay of this state finds nothing.
        let payload = self
            .db
            .take_oidc_pending(&self.key, OidcPendingKind::Login, state)
            .await
            .map_err(LoginError::Database)?
            .ok_or(LoginError::UnknownState)?;
        let pending: PendingLogin =
            serde_json::from_slice(&payload).map_err(|_| LoginError::UnknownState)?;
        let cookie_ok = prelogin.is_some_and(|p| {
            ring_eq(
                hex::encode(sha(p)).as_bytes(),
                pending.prelogin_hash.as_bytes(),
            )
        });
        if !cookie_ok {
            return Err(LoginError::WrongBrowser);
        }
        let code = code.map_err(LoginError::ProviderRefused)?;
        let provider = self
            .db
            .oidc_provider(&self.key)
            .await
            .map_err(LoginError::Storage)?
            .ok_or(LoginError::NotConfigured)?;
        if provider.config.issuer != pending.issuer {
            // The provider was replaced while this login was in flight.
            return Err(LoginError::UnknownState);
        }
        let provider = &provider;
        let metadata = self.discover(provider).await?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(provider.config.client_id.clone()),
            Some(ClientSecret::new(secret_text(provider))),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.redirect_url.clone())
                .map_err(|e| LoginError::Discovery(e.to_string()))?,
        );
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| LoginError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::Exchange(error_chain(&e)))?;
        use openidconnect::TokenResponse as _;
        let id_token = response
            .id_token()
            .ok_or_else(|| LoginError::IdToken("the provider returned no ID token".into()))?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(pending.nonce.clone()))
            .map_err(|e| LoginError::IdToken(error_chain(&e)))?;
        let issuer = claims.issuer().as_str().to_owned();
        let subject = claims.subject().as_str().to_owned();
        let email = claims.email().map(|e| e.as_str().to_owned());
        let verified = claims.email_verified() == Some(true);
        let preferred = claims.preferred_username().map(|u| u.as_str().to_owned());

        let user = self
            .account(
                provider, &issuer, &subject, email, verified, preferred, audit,
            )
            .await?;
        if user.disabled_at.is_some() {
            return Err(LoginError::Disabled);
        }
        let cli = match (pending.cli_port, pending.cli_challenge) {
            (Some(port), Some(challenge)) => Some(CliRequest { port, challenge }),
            _ => None,
        };
        Ok(SignedIn { user, cli })
    }

    #[allow(clippy::too_many_arguments)]
    async fn account(
        &self,
        provider: &OidcProvider,
        issuer: &str,
        subject: &str,
        email: Option<String>,
        verified: bool,
        preferred: Option<String>,
        audit: NewAuditEntry,
    ) -> Result<User, LoginError> {
        if let Some((user, _email_at_link)) = self
            .db
            .user_by_identity(issuer, subject)
            .await
            .map_err(LoginError::Database)?
        {
            // Linked before: the email the token carries now does not matter.
            return Ok(user);
        }
        let email = email.ok_or(LoginError::NoEmail)?;
        if !verified {
            return Err(LoginError::UnverifiedEmail);
        }
        let domain = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        if domain.is_empty() || !provider.config.allowed_domains.contains(&domain) {
            return Err(LoginError::DomainNotAllowed(domain));
        }
        let org = provider.config.organization_id;
        let audit = NewAuditEntry {
            organization_id: Some(org),
            target: Some(format!("{issuer} {subject}")),
            detail: Some(email.clone()),
            ..audit
        };
        if let Some(existing) = self
            .db
            .user_by_email(org, &email)
            .await
            .map_err(LoginError::Database)?
        {
            self.db
                .link_identity(
                    existing.id,
                    issuer,
                    subject,
                    Some(&email),
                    NewAuditEntry {
                        actor_id: Some(existing.id),
                        actor_name: Some(existing.name.clone()),
                        action: "user.link_identity".into(),
                        ..audit
                    },
                )
                .await
                .map_err(LoginError::Database)?;
            return Ok(existing);
        }
        let base = new_user_name(preferred.as_deref(), &email);
        let suffix = hex::encode(&sha(subject)[..4]);
        for name in [base.clone(), format!("{base}-{suffix}")] {
            let created = self
                .db
                .create_linked_user(
                    org,
                    NewUser {
                        name: name.clone(),
                        email: Some(email.clone()),
                    },
                    provider.config.default_role,
                    issuer,
                    subject,
                    NewAuditEntry {
                        actor_name: Some(name.clone()),
                        action: "user.create_oidc".into(),
                        ..audit.clone()
                    },
                )
                .await;
            match created {
                Ok(u) => return Ok(u),
                Err(DbError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(LoginError::Database(e)),
            }
        }
        Err(LoginError::BadRequest(
            "no free user name for this account; ask an owner to create it",
        ))
    }

    /// Step 4 for the CLI: a one-time code for `user`, redeemable with the
    /// verifier of `challenge` within [`CLI_CODE_TTL`], once.
    pub async fn grant(&self, user: &User, challenge: String) -> Result<String, LoginError> {
        let code = random_token();
        let payload = serde_json::to_vec(&PendingCode {
            user_id: user.id,
            organization_id: user.organization_id,
            challenge,
        })
        .map_err(|_| LoginError::BadRequest("the sign-in code could not be stored"))?;
        self.db
            .put_oidc_pending(
                &self.key,
                OidcPendingKind::CliCode,
                &code,
                &payload,
                ttl(CLI_CODE_TTL),
            )
            .await
            .map_err(LoginError::Database)?;
        Ok(code)
    }

    /// Redeems a one-time code with the CLI's PKCE verifier (once): the user,
    /// as they are now.
    pub async fn redeem(&self, code: &str, verifier: &str) -> Result<User, LoginError> {
        let payload = self
            .db
            .take_oidc_pending(&self.key, OidcPendingKind::CliCode, code)
            .await
            .map_err(LoginError::Database)?
            .ok_or(LoginError::BadCliCode)?;
        let grant: PendingCode =
            serde_json::from_slice(&payload).map_err(|_| LoginError::BadCliCode)?;
        if !is_b64url(verifier, 43, 128) {
            return Err(LoginError::BadCliCode);
        }
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if !ring_eq(challenge.as_bytes(), grant.challenge.as_bytes()) {
            return Err(LoginError::BadCliCode);
        }
        let user = self
            .db
            .get_user(grant.organization_id, grant.user_id)
            .await
            .map_err(|e| match e {
                DbError::NotFound { .. } => LoginError::BadCliCode,
                other => LoginError::Database(other),
            })?;
        if user.disabled_at.is_some() {
            return Err(LoginError::Disabled);
        }
        Ok(user)
    }
}

/// A std duration as a chrono one (the TTLs here are minutes).
fn ttl(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::minutes(10))
}

fn secret_text(p: &OidcProvider) -> String {
    String::from_utf8_lossy(p.config.client_secret.expose()).into_owned()
}

/// Constant-time equality.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether an egress error is a refusal of the rules (not an outage).
pub fn is_refusal(e: &EgressError) -> bool {
    matches!(
        e,
        EgressError::Refused { .. } | EgressError::Redirect { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_users_are_named_from_the_provider() {
        assert_eq!(new_user_name(Some("ada"), "a@x.io"), "ada");
        assert_eq!(new_user_name(None, "grace@x.io"), "grace");
        assert_eq!(new_user_name(Some("  "), "bob@x.io"), "bob");
        assert_eq!(new_user_name(None, "@x.io"), "user");
    }

    #[test]
    fn pkce_shapes() {
        assert!(is_b64url(&"a".repeat(43), 43, 43));
        assert!(!is_b64url(&"a".repeat(42), 43, 43));
        assert!(!is_b64url(&format!("{}=", "a".repeat(42)), 43, 43));
        assert!(ring_eq(b"abc", b"abc"));
        assert!(!ring_eq(b"abc", b"abd"));
        assert!(!ring_eq(b"abc", b"ab"));
    }
}
