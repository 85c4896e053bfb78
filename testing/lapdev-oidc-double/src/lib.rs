//! A local OpenID Connect provider stand-in for Lapdev's sign-in tests: not an
//! identity provider.
//!
//! It serves discovery (`/.well-known/openid-configuration`), a JWKS, an
//! authorization endpoint that "signs in" the configured account at once and
//! redirects back with a code, and a token endpoint that checks the client
//! secret, the code (once) and the PKCE verifier (S256), then returns an RS256
//! ID token signed with a key it generated at start.
//!
//! [`Knobs`] make it misbehave the ways a real provider (or an attacker) can:
//! a wrong audience, a bad signature, an expired token, a nonce of its own
//! choosing, an unverified or changed email.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The account the authorization endpoint signs in, and how the next ID
/// tokens misbehave.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `sub`.
    pub subject: String,
    /// `email` (none: the claim is left out).
    pub email: Option<String>,
    /// `email_verified`.
    pub email_verified: bool,
    /// `preferred_username`.
    pub preferred_username: Option<String>,
    /// `aud` names another client.
    pub wrong_audience: bool,
    /// The token is signed with a key that is not in the JWKS (same `kid`).
    pub bad_signature: bool,
    /// `exp` is an hour in the past.
    pub expired: bool,
    /// `nonce` is this instead of the one the login asked for.
    pub nonce_override: Option<String>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            subject: "subject-1".into(),
            email: Some("ada@example.com".into()),
            email_verified: true,
            preferred_username: None,
            wrong_audience: false,
            bad_signature: false,
            expired: false,
            nonce_override: None,
        }
    }
}

struct Keys {
    signing: EncodingKey,
    other: EncodingKey,
    n: String,
    e: String,
}

/// Two RSA keys per process: generating them is the slow part.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rsa::rand_core::OsRng;
        let gen_key = |rng: &mut rsa::rand_core::OsRng| {
            rsa::RsaPrivateKey::new(rng, 2048).expect("RSA key generation")
        };
        let main = gen_key(&mut rng);
        let other = gen_key(&mut rng);
        let der = |k: &rsa::RsaPrivateKey| {
            EncodingKey::from_rsa_der(k.to_pkcs1_der().expect("PKCS#1 DER").as_bytes())
        };
        Keys {
            signing: der(&main),
            other: der(&other),
            n: URL_SAFE_NO_PAD.encode(main.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(main.e().to_bytes_be()),
        }
    })
}

struct Issued {
    nonce: Option<String>,
    challenge: Option<String>,
    redirect_uri: String,
    knobs: Knobs,
}

struct Shared {
    issuer: String,
    client_id: String,
    client_secret: String,
    knobs: Mutex<Knobs>,
    codes: Mutex<HashMap<String, Issued>>,
    nonces: Mutex<Vec<String>>,
}

/// A running stand-in; dropping it stops it.
pub struct OidcDouble {
    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub issuer: String,
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OidcDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcDouble")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Drop for OidcDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OidcDouble {
    /// Starts on a free loopback port, accepting `client_id`/`client_secret`.
    pub async fn start(client_id: &str, client_secret: &str) -> std::io::Result<Self> {
        let _ = keys();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            knobs: Mutex::new(Knobs::default()),
            codes: Mutex::default(),
            nonces: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            issuer,
            addr,
            shared,
            task,
        })
    }

    /// Changes the knobs for the next logins.
    pub fn set(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.shared.knobs.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Every nonce a login asked for, oldest first.
    pub fn nonces(&self) -> Vec<String> {
        self.shared
            .nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn discovery(State(s): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let i = &s.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile"],
    }))
}

async fn jwks() -> Json<serde_json::Value> {
    let k = keys();
    Json(json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1", "n": k.n, "e": k.e,
    }]}))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("client_id") != Some(&s.client_id) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "unknown client");
    }
    if q.get("response_type").map(String::as_str) != Some("code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_response_type",
            "code only",
        );
    }
    let challenge = q.get("code_challenge").cloned();
    if challenge.is_some() && q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "S256 only");
    }
    let Some(redirect_uri) = q.get("redirect_uri").cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no redirect_uri",
        );
    };
    let nonce = q.get("nonce").cloned();
    if let Some(n) = &nonce {
        s.nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(n.clone());
    }
    let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let knobs = s.knobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    s.codes.lock().unwrap_or_else(|e| e.into_inner()).insert(
        code.clone(),
        Issued {
            nonce,
            challenge,
            redirect_uri: redirect_uri.clone(),
            knobs,
        },
    );
    let mut to = redirect_uri;
    to.push(if to.contains('?') { '&' } else { '?' });
    to.push_str(&format!("code={code}"));
    if let Some(state) = q.get("state") {
        to.push_str("&state=");
        to.push_str(&url_encode(state));
    }
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.push(b'%'),
                }
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The client's id and secret: HTTP Basic (url-encoded parts) or the form.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        return Some((url_decode(id), url_decode(secret)));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match client_credentials(&headers, &form) {
        Some((id, secret)) if id == s.client_id && secret == s.client_secret => {}
        _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "bad client"),
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "code only",
        );
    }
    let issued = form
        .get("code")
        .and_then(|c| s.codes.lock().unwrap_or_else(|e| e.into_inner()).remove(c));
    let Some(issued) = issued else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if form.get("redirect_uri") != Some(&issued.redirect_uri) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri differs",
        );
    }
    if let Some(challenge) = &issued.challenge {
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if &computed != challenge {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verifier");
        }
    }
    let k = &issued.knobs;
    let now = chrono::Utc::now().timestamp();
    let exp = if k.expired { now - 3600 } else { now + 300 };
    let aud = if k.wrong_audience {
        "another-client".to_owned()
    } else {
        s.client_id.clone()
    };
    let mut claims = json!({
        "iss": s.issuer, "sub": k.subject, "aud": aud, "exp": exp,
        "iat": if k.expired { now - 7200 } else { now },
        "email_verified": k.email_verified,
    });
    if let Some(n) = k.nonce_override.clone().or(issued.nonce) {
        claims["nonce"] = json!(n);
    }
    if let Some(e) = &k.email {
        claims["email"] = json!(e);
    }
    if let Some(u) = &k.preferred_username {
        claims["preferred_username"] = json!(u);
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = if k.bad_signature {
        &keys().other
    } else {
        &keys().signing
    };
    let id_token = match jsonwebtoken::encode(&header, &claims, key) {
        Ok(t) => t,
        Err(e) => {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &e.to_string(),
            );
        }
    };
    Json(json!({
        "access_token": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>()),
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_coding_round_trips() {
        for s in ["abc", "a b+c", "x/y?z=1&w", "ü"] {
            assert_eq!(url_decode(&url_encode(s)), s);
        }
    }
}
