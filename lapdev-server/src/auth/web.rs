//! The browser and CLI sign-in endpoints under `/auth/` (plain HTTP, not HRPC:
//! they set cookies and redirect).
//!
//! - `POST /auth/session` `{"user", "password", "organization"?}`: password
//!   sign-in that starts a browser session (CSRF header and our `Origin`
//!   required, so no other site can sign a browser in); answers the user.
//! - `POST /auth/logout`: revokes the browser's session (CSRF rules apply).
//! - `GET /auth/oidc/start[?cli_port=P&cli_challenge=C]`: starts an OpenID
//!   Connect login (sets the pre-login cookie, redirects to the provider).
//! - `GET /auth/oidc/callback`: the provider's redirect; a browser gets a
//!   session cookie and goes to `/`; a CLI login redirects to
//!   `http://127.0.0.1:P/callback?code=…` with a one-time code.
//! - `POST /auth/cli/exchange` `{"code", "code_verifier", "token_name"?}`: the
//!   CLI redeems its one-time code with its PKCE verifier for a personal access
//!   token (in the response body, never in a URL).
//!
//! Every failure answers a status and a one-line plain-text reason; failed
//! logins are audited (rate-limited like password failures).

use axum::Json;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderMap, StatusCode};
use lapdev_db::NewAuditEntry;
use lapdev_hrpc::HrpcError;
use serde::Deserialize;

use super::audit::record_now;
use super::layer::AuthState;
use super::oidc::{CliRequest, OidcLogins};
use super::service::{PeopleService, user_view};
use super::web_policy::{PRELOGIN_TTL_SECS, WebPolicy, cookie};
use crate::access::{Credential, Revocation};

/// What the endpoints need.
#[derive(Clone, Debug)]
pub struct WebState {
    /// Sign-in, tokens, sessions.
    pub people: PeopleService,
    /// OpenID Connect logins.
    pub oidc: OidcLogins,
    /// The authorization layer (client addresses).
    pub auth: AuthState,
    /// Cookie and CSRF rules.
    pub policy: WebPolicy,
}

/// Password sign-in's route.
pub const SESSION_ROUTE: &str = "/auth/session";
/// Sign-out's route.
pub const LOGOUT_ROUTE: &str = "/auth/logout";
/// The OpenID Connect login's start.
pub const OIDC_START_ROUTE: &str = "/auth/oidc/start";
/// The OpenID Connect provider's redirect back.
pub const OIDC_CALLBACK_ROUTE: &str = "/auth/oidc/callback";
/// The CLI's code exchange.
pub const CLI_EXCHANGE_ROUTE: &str = "/auth/cli/exchange";
/// Every route [`routes`] serves (each also its `/metrics` route label).
pub const ROUTES: [&str; 5] = [
    SESSION_ROUTE,
    LOGOUT_ROUTE,
    OIDC_START_ROUTE,
    OIDC_CALLBACK_ROUTE,
    CLI_EXCHANGE_ROUTE,
];

/// The `/auth/` routes.
pub fn routes(state: WebState) -> Router {
    Router::new()
        .route(SESSION_ROUTE, post(password_session))
        .route(LOGOUT_ROUTE, post(logout))
        .route(OIDC_START_ROUTE, get(oidc_start))
        .route(OIDC_CALLBACK_ROUTE, get(oidc_callback))
        .route(CLI_EXCHANGE_ROUTE, post(cli_exchange))
        .with_state(state)
}

fn refusal(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(lapdev_hrpc::protocol::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The body of `POST /auth/session`.
#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    /// The organisation (default: the first).
    #[serde(default)]
    pub organization: Option<String>,
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

async fn password_session(State(s): State<WebState>, request: Request) -> Response {
    if let Err(e) = s.policy.check_csrf(request.headers()) {
        return e.into_response();
    }
    let source = s.auth.client_addr(request.extensions(), request.headers());
    let rid = request_id(request.headers());
    let old = cookie(request.headers(), s.policy.session_cookie()).map(str::to_owned);
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return refusal(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large"),
    };
    let form: PasswordForm = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return HrpcError::invalid_argument(e.to_string()).into_response(),
    };
    let user = match s
        .people
        .check_password(
            source.clone(),
            rid.clone(),
            form.organization.as_deref(),
            form.user,
            form.password,
        )
        .await
    {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    match s
        .people
        .start_session(
            &user,
            s.policy.lifetime,
            old.as_deref(),
            "auth.sign_in",
            source,
            rid,
        )
        .await
    {
        Ok(created) => (
            [(SET_COOKIE, session_cookie(&s.policy, &created.secret))],
            Json(user_view(user)),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn session_cookie(policy: &WebPolicy, secret: &str) -> String {
    let max_age = u64::try_from(policy.lifetime.absolute.num_seconds()).unwrap_or(0);
    policy.set_cookie(policy.session_cookie(), secret, max_age)
}

async fn logout(State(s): State<WebState>, request: Request) -> Response {
    let headers = request.headers();
    let Some(secret) = cookie(headers, s.policy.session_cookie()) else {
        return refusal(StatusCode::UNAUTHORIZED, "no session");
    };
    if let Err(e) = s.policy.check_csrf(headers) {
        return e.into_response();
    }
    let caller = match s.auth.authenticate_session(secret).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let entry = NewAuditEntry {
        organization_id: Some(caller.organization_id),
        actor_id: Some(caller.user_id),
        actor_name: Some(caller.name.clone()),
        action: "session.revoke".into(),
        target: Some(caller.name),
        outcome: "success".into(),
        source_addr: s.auth.client_addr(request.extensions(), headers),
        request_id: request_id(headers),
        detail: None,
    };
    if let Err(e) = s.people.db().revoke_session(secret, entry).await {
        return lapdev_kube::db_error(e).into_response();
    }
    if let Credential::BrowserSession(session_id) = caller.credential {
        s.auth.revoked(Revocation::BrowserSessionRevoked {
            user_id: caller.user_id,
            session_id,
        });
    }
    (
        StatusCode::NO_CONTENT,
        [(
            SET_COOKIE,
            s.policy.set_cookie(s.policy.session_cookie(), "", 0),
        )],
    )
        .into_response()
}

/// The query of `GET /auth/oidc/start`.
#[derive(Debug, Deserialize)]
pub struct StartQuery {
    /// The CLI's loopback port.
    #[serde(default)]
    pub cli_port: Option<u16>,
    /// The CLI's PKCE challenge (S256).
    #[serde(default)]
    pub cli_challenge: Option<String>,
}

async fn oidc_start(State(s): State<WebState>, Query(q): Query<StartQuery>) -> Response {
    let cli = match (q.cli_port, q.cli_challenge) {
        (Some(port), Some(challenge)) => Some(CliRequest { port, challenge }),
        (None, None) => None,
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "cli_port and cli_challenge go together",
            );
        }
    };
    match s.oidc.start(cli).await {
        Ok(started) => (
            StatusCode::SEE_OTHER,
            [
                (LOCATION, started.authorize_url),
                (
                    SET_COOKIE,
                    s.policy.set_cookie(
                        s.policy.prelogin_cookie(),
                        &started.prelogin,
                        PRELOGIN_TTL_SECS,
                    ),
                ),
            ],
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "OpenID Connect login could not start");
            refusal(e.status(), e)
        }
    }
}

/// The query of `GET /auth/oidc/callback`.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    /// The authorization code.
    #[serde(default)]
    pub code: Option<String>,
    /// The state.
    #[serde(default)]
    pub state: Option<String>,
    /// The provider's error, instead of a code.
    #[serde(default)]
    pub error: Option<String>,
    /// Its description.
    #[serde(default)]
    pub error_description: Option<String>,
}

async fn oidc_callback(
    State(s): State<WebState>,
    Query(q): Query<CallbackQuery>,
    request: Request,
) -> Response {
    let headers = request.headers();
    let source = s.auth.client_addr(request.extensions(), headers);
    let rid = request_id(headers);
    let Some(state) = q.state.as_deref() else {
        return refusal(StatusCode::BAD_REQUEST, "the callback carries no state");
    };
    let code = match (&q.code, &q.error) {
        (Some(c), None) => Ok(c.as_str()),
        (_, Some(e)) => Err(format!(
            "{e}{}",
            q.error_description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        )),
        (None, None) => Err("the callback carries no code".to_owned()),
    };
    let base = NewAuditEntry {
        outcome: "success".into(),
        source_addr: source.clone(),
        request_id: rid.clone(),
        ..Default::default()
    };
    let prelogin = cookie(headers, s.policy.prelogin_cookie());
    let signed_in = match s.oidc.finish(state, code, prelogin, base.clone()).await {
        Ok(x) => x,
        Err(e) => {
            if s.people.may_audit_failure() {
                record_now(
                    s.people.db(),
                    NewAuditEntry {
                        organization_id: s.oidc.organization().await,
                        action: "auth.oidc".into(),
                        outcome: "failure".into(),
                        detail: Some(e.to_string()),
                        ..base
                    },
                )
                .await;
            }
            tracing::info!(error = %e, "OpenID Connect login refused");
            return refusal(e.status(), e);
        }
    };
    let clear_prelogin = s.policy.set_cookie(s.policy.prelogin_cookie(), "", 0);
    if let Some(cli) = signed_in.cli {
        let code = match s.oidc.grant(&signed_in.user, cli.challenge).await {
            Ok(code) => code,
            Err(e) => return refusal(e.status(), e),
        };
        let to = format!("http://127.0.0.1:{}/callback?code={code}", cli.port);
        return (
            StatusCode::SEE_OTHER,
            [(LOCATION, to), (SET_COOKIE, clear_prelogin)],
        )
            .into_response();
    }
    let old = cookie(headers, s.policy.session_cookie());
    match s
        .people
        .start_session(
            &signed_in.user,
            s.policy.lifetime,
            old,
            "auth.sign_in_oidc",
            source,
            rid,
        )
        .await
    {
        Ok(created) => {
            let mut response = (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response();
            for c in [session_cookie(&s.policy, &created.secret), clear_prelogin] {
                if let Ok(v) = http::HeaderValue::from_str(&c) {
                    response.headers_mut().append(SET_COOKIE, v);
                }
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// The body of `POST /auth/cli/exchange`.
#[derive(Debug, Deserialize)]
pub struct ExchangeForm {
    /// The one-time code from the loopback redirect.
    pub code: String,
    /// The verifier of the challenge the CLI started with.
    pub code_verifier: String,
    /// The new token's name.
    #[serde(default)]
    pub token_name: Option<String>,
}

async fn cli_exchange(State(s): State<WebState>, request: Request) -> Response {
    let source = s.auth.client_addr(request.extensions(), request.headers());
    let rid = request_id(request.headers());
    let body = match axum::body::to_bytes(request.into_body(), 16 * 1024).await {
        Ok(b) => b,
        Err(_) => return refusal(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large"),
    };
    let form: ExchangeForm = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return HrpcError::invalid_argument(e.to_string()).into_response(),
    };
    let user = match s.oidc.redeem(&form.code, &form.code_verifier).await {
        Ok(u) => u,
        Err(e) => return refusal(e.status(), e),
    };
    match s
        .people
        .mint_sign_in_token(
            user,
            form.token_name
                .or_else(|| Some("cli (OpenID Connect)".into())),
            "auth.sign_in_oidc",
            source,
            rid,
        )
        .await
    {
        Ok(signed) => Json(signed).into_response(),
        Err(e) => e.into_response(),
    }
}
