//! `GET /sign-in`: the password form, and "Sign in with OpenID Connect" when
//! a provider is configured. The script posts the form to `/auth/session`.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::AppState;
use crate::auth::web_policy::cookie;
use crate::web::layout::{self, Nav};

/// The page (a signed-in browser goes to `/`).
pub async fn page(State(state): State<AppState>, headers: http::HeaderMap) -> Response {
    if let Some(secret) = cookie(&headers, state.web.policy.session_cookie())
        && state.auth.authenticate_session(secret).await.is_ok()
    {
        return Redirect::to("/").into_response();
    }
    let oidc = state.web.oidc.organization().await.is_some();
    layout::page(
        "Sign in",
        "sign-in",
        None,
        Nav::None,
        html! {
            h1 { "Sign in" }
            form #sign-in-form.card novalidate {
                label for="user" { "User name" }
                input #user name="user" type="text" autocomplete="username" required;
                label for="password" { "Password" }
                input #password name="password" type="password" autocomplete="current-password" required;
                p.form-error #sign-in-error role="alert" {}
                button type="submit" { "Sign in" }
            }
            @if oidc {
                p { a.button href="/auth/oidc/start" { "Sign in with OpenID Connect" } }
            }
        },
    )
}
