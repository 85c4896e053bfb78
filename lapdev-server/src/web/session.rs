//! Who is looking at a page: the browser session cookie, checked against the
//! database on every page like every cookie-authenticated call.
//!
//! A page handler takes a [`Viewer`]; without a valid session the browser is
//! sent to `/sign-in`. Pages only read, so no CSRF check is needed here; the
//! data they show comes from the same service methods the HRPC routes run,
//! called with a [`Context`] carrying the viewer as the authorization layer
//! would have put it there (members still see only their own workspaces).

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Redirect, Response};
use http::request::Parts;
use lapdev_common::role::Role;
use lapdev_hrpc::Context;

use crate::AppState;
use crate::auth::Caller;
use crate::auth::web_policy::cookie;
use crate::jwt::AdminIdentity;

/// The signed-in user of a page request.
#[derive(Debug, Clone)]
pub struct Viewer(pub Caller);

impl Viewer {
    /// Whether the viewer may see admin pages.
    pub fn is_admin(&self) -> bool {
        self.0.role.allows(Role::Admin)
    }

    /// A call context carrying the viewer, for the services behind the HRPC
    /// methods.
    pub fn context(&self) -> Context {
        let mut extensions = http::Extensions::new();
        extensions.insert(AdminIdentity {
            user_id: self.0.user_id,
            organization_id: self.0.organization_id,
        });
        extensions.insert(self.0.clone());
        Context::new(
            uuid::Uuid::new_v4().to_string(),
            None,
            http::HeaderMap::new(),
            extensions,
        )
    }
}

/// Why a page was not shown: not signed in, or not allowed.
#[derive(Debug)]
pub enum PageRefusal {
    /// No valid session: go and sign in.
    SignIn,
}

impl IntoResponse for PageRefusal {
    fn into_response(self) -> Response {
        match self {
            PageRefusal::SignIn => Redirect::to("/sign-in").into_response(),
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = PageRefusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let name = state.web.policy.session_cookie();
        let Some(secret) = cookie(&parts.headers, name) else {
            return Err(PageRefusal::SignIn);
        };
        state
            .auth
            .authenticate_session(secret)
            .await
            .map(Viewer)
            .map_err(|_| PageRefusal::SignIn)
    }
}
