//! The one authorization layer in front of every admin service.
//!
//! For a request to a method listed in [`ADMIN_SERVICES`]:
//! 1. the method's declared role comes from its descriptor (`#[hrpc(role)]`);
//!    `public` passes without identity, no role (or an unknown one) is refused:
//!    deny by default;
//! 2. the bearer token is verified: a personal access token (`lapdev_pat_…`,
//!    cached briefly) or a legacy admin JWT, which names only the user; without
//!    one, a browser session cookie, only with the CSRF header and the server's
//!    own `Origin` ([`WebPolicy`]);
//! 3. the user's role and state are looked up (cached briefly, the cache dropped
//!    on every change): a disabled or deleted user is `unauthenticated`, a role
//!    below the declared one is `permission_denied` naming the role needed;
//! 4. [`Caller`] (and, for older handlers, `AdminIdentity`) go into the request
//!    extensions; handlers read them from `Context`, never from headers;
//! 5. audited mutations get their audit row after the call, in the background.
//!
//! Requests to other paths (managers, the tunnel, unknown methods) pass through
//! untouched; they have their own authentication or none to give.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lapdev_common::role::{PAT_PREFIX, PUBLIC, Role};
use lapdev_db::{Db, DbError, NewAuditEntry};
use lapdev_hrpc::{HrpcError, ServiceDescriptor};
use lapdev_kube::db_error;
use sha2::{Digest as _, Sha256};

use super::audit::record_in_background;
use super::principal::{AuthCache, Caller};
use super::web_policy::{WebPolicy, cookie};
use crate::access::{Credential, LiveSessions, Revocation};
use crate::admin::api::AdminRpcClient;
use crate::admin::providers::ProviderRpcClient;
use crate::admin::workspaces::WorkspaceRpcClient;
use crate::auth::api::PeopleRpcClient;
use crate::jwt::{AdminIdentity, JwtKeys};

/// Every service behind this layer. The role-matrix test walks these, so a
/// method without a declared role fails it.
pub const ADMIN_SERVICES: &[ServiceDescriptor] = &[
    AdminRpcClient::DESCRIPTOR,
    ProviderRpcClient::DESCRIPTOR,
    WorkspaceRpcClient::DESCRIPTOR,
    PeopleRpcClient::DESCRIPTOR,
    crate::quota::QuotaRpcClient::DESCRIPTOR,
    crate::idle::api::WorkspaceTimerRpcClient::DESCRIPTOR,
];

/// Methods whose calls are audited by this layer, and the action they record.
/// People changes (users, roles, tokens, sign-in) write their own rows in their
/// own transactions instead.
const AUDITED: &[(&str, &str)] = &[
    ("/AdminRpc/create_cluster", "cluster.create"),
    ("/AdminRpc/delete_cluster", "cluster.delete"),
    ("/AdminRpc/set_cluster_cordoned", "cluster.cordon"),
    (
        "/AdminRpc/set_cluster_security_profile",
        "cluster.security_profile",
    ),
    ("/AdminRpc/set_cluster_placement", "cluster.placement"),
    (
        "/AdminRpc/forget_cluster_workspaces",
        "cluster.forget_workspaces",
    ),
    ("/AdminRpc/create_cluster_token", "cluster_token.create"),
    ("/AdminRpc/revoke_cluster_token", "cluster_token.revoke"),
    ("/ProviderRpc/create_provider", "provider.create"),
    ("/ProviderRpc/delete_provider", "provider.delete"),
    ("/ProviderRpc/import_cluster", "cluster.import"),
    ("/ProviderRpc/create_cluster", "cluster.create"),
    ("/ProviderRpc/delete_cluster", "cluster.delete"),
    ("/WorkspaceRpc/create_workspace", "workspace.create"),
    ("/WorkspaceRpc/stop_workspace", "workspace.stop"),
    ("/WorkspaceRpc/start_workspace", "workspace.start"),
    ("/WorkspaceRpc/delete_workspace", "workspace.delete"),
    ("/WorkspaceRpc/forget_workspace", "workspace.forget"),
    ("/QuotaRpc/set_quota", "quota.set"),
    (
        "/WorkspaceTimerRpc/set_workspace_policy",
        "workspace_policy.set",
    ),
];

/// Bodies of audited calls are read up to this size to name the target; larger
/// ones are refused here as the HRPC router would refuse them.
const MAX_AUDITED_BODY: usize = 4 * 1024 * 1024;

/// What the layer needs: the database, the JWT keys, the cache and the method
/// table.
#[derive(Clone)]
pub struct AuthState {
    /// The database.
    pub db: Db,
    /// Legacy admin JWTs.
    pub jwt: JwtKeys,
    /// Verified tokens and users.
    pub cache: Arc<AuthCache>,
    /// Open shell, exec and port-forward sessions, ended on revocation.
    pub live: LiveSessions,
    /// Open dashboard event streams (`/events`), ended on revocation; apart
    /// from `live` so they never count as shell sessions.
    pub streams: LiveSessions,
    trusted_proxies: Arc<Vec<IpAddr>>,
    web: Option<Arc<WebPolicy>>,
    methods: Arc<HashMap<&'static str, Option<&'static str>>>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState").finish_non_exhaustive()
    }
}

impl AuthState {
    /// Believe `x-forwarded-for` from these peers (`--trusted-proxies`).
    pub fn with_trusted_proxies(mut self, proxies: Vec<IpAddr>) -> Self {
        self.trusted_proxies = Arc::new(proxies);
        self
    }

    /// The layer's state for [`ADMIN_SERVICES`].
    pub fn new(db: Db, jwt: JwtKeys) -> Self {
        let methods = ADMIN_SERVICES
            .iter()
            .flat_map(|s| s.methods.iter())
            .map(|m| (m.path, m.role))
            .collect();
        Self {
            db,
            jwt,
            cache: Arc::new(AuthCache::default()),
            live: LiveSessions::default(),
            streams: LiveSessions::default(),
            trusted_proxies: Arc::new(Vec::new()),
            web: None,
            methods: Arc::new(methods),
        }
    }

    /// Accept browser sessions (cookie, with CSRF checks) and check the
    /// `Origin` of WebSocket upgrades under `policy`.
    pub fn with_web_policy(mut self, policy: WebPolicy) -> Self {
        self.web = Some(Arc::new(policy));
        self
    }

    /// The client's address of a request outside this layer (the `/auth/`
    /// endpoints), believing `x-forwarded-for` only from trusted proxies.
    pub fn client_addr(
        &self,
        extensions: &http::Extensions,
        headers: &http::HeaderMap,
    ) -> Option<String> {
        let peer = extensions.get::<ConnectInfo<ClientAddr>>()?.0.0.ip();
        let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        Some(client_ip(peer, forwarded, &self.trusted_proxies).to_string())
    }

    /// Authority was taken away (the database has committed it): forgets every
    /// cached token and user, so the very next call is checked afresh, then
    /// ends the open shell, exec and port-forward sessions and the dashboard
    /// event streams `revocation` covers. The one call every revocation makes.
    /// It also tells the other replicas (PostgreSQL's `NOTIFY`), which make
    /// [`revoked_elsewhere`](Self::revoked_elsewhere).
    pub fn revoked(&self, revocation: Revocation) {
        self.revoked_elsewhere(revocation);
        self.db.announce(lapdev_db::Change::Revoked(revocation));
    }

    /// Another replica took authority away: the same as
    /// [`revoked`](Self::revoked) on this replica's caches and sessions,
    /// without announcing it again.
    pub fn revoked_elsewhere(&self, revocation: Revocation) {
        self.cache.clear();
        self.live.revoke(revocation);
        self.streams.revoke(revocation);
    }

    /// The browser rules, when sessions are accepted.
    pub fn web_policy(&self) -> Option<&WebPolicy> {
        self.web.as_deref()
    }

    /// Who holds the browser session `secret`, with their role as of now. The
    /// session is checked against the database on every call (browsers call
    /// rarely), so expiry and revocation hold from the very next call.
    pub async fn authenticate_session(&self, secret: &str) -> Result<Caller, HrpcError> {
        let lifetime = self.web.as_ref().map(|w| w.lifetime).unwrap_or_default();
        let s = self
            .db
            .verify_session(secret, lifetime)
            .await
            .map_err(|e| match e {
                DbError::InvalidToken(r) => HrpcError::unauthenticated(format!("session {r}")),
                other => db_error(other),
            })?;
        self.caller_for(
            s.user_id,
            s.organization_id,
            Credential::BrowserSession(s.session_id),
        )
        .await
    }

    /// Who presents `token`, with their role as of now.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, HrpcError> {
        let (user_id, organization_id, credential) = if token.starts_with(PAT_PREFIX) {
            let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let pat = match self.cache.pat(&key) {
                Some(p) => p,
                None => {
                    let generation = self.cache.generation();
                    let p = self.db.verify_pat(token).await.map_err(|e| match e {
                        DbError::InvalidToken(r) => {
                            HrpcError::unauthenticated(format!("personal access token {r}"))
                        }
                        other => db_error(other),
                    })?;
                    self.cache.put_pat(key, p, generation);
                    p
                }
            };
            (
                pat.user_id,
                pat.organization_id,
                Credential::Pat(pat.token_id),
            )
        } else if token.starts_with(lapdev_common::token::CLUSTER_TOKEN_PREFIX) {
            return Err(HrpcError::unauthenticated(format!(
                "this is a cluster token ({}…), which only a cluster's manager presents: use a personal access token ({PAT_PREFIX}…)",
                lapdev_common::token::CLUSTER_TOKEN_PREFIX
            )));
        } else {
            let id = self
                .jwt
                .verify(token)
                .map_err(|e| HrpcError::unauthenticated(e.to_string()))?;
            (id.user_id, id.organization_id, Credential::Jwt)
        };
        self.caller_for(user_id, organization_id, credential).await
    }

    async fn caller_for(
        &self,
        user_id: uuid::Uuid,
        organization_id: uuid::Uuid,
        credential: Credential,
    ) -> Result<Caller, HrpcError> {
        let user = match self.cache.user(user_id) {
            Some(u) => u,
            None => {
                let generation = self.cache.generation();
                let u = self
                    .db
                    .get_user(organization_id, user_id)
                    .await
                    .map_err(|e| match e {
                        DbError::NotFound { .. } => {
                            HrpcError::unauthenticated("the token's user no longer exists")
                        }
                        other => db_error(other),
                    })?;
                self.cache.put_user(u.clone(), generation);
                u
            }
        };
        if user.disabled_at.is_some() {
            return Err(HrpcError::unauthenticated("this user is disabled"));
        }
        Ok(Caller {
            user_id,
            name: user.name,
            organization_id,
            role: user.role,
            credential,
        })
    }
}

/// The bearer token of `headers` (scheme case-insensitive).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The client's address as the socket saw it, for plain and TLS listeners alike
/// (inserted as `ConnectInfo<ClientAddr>` by the accept loop in `serve.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The client's address as [`authorize`] worked it out (see [`client_ip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client's address, when the server was given one.
pub fn source_addr(extensions: &http::Extensions) -> Option<String> {
    extensions
        .get::<ClientIp>()
        .map(|c| c.0)
        .or_else(|| {
            extensions
                .get::<ConnectInfo<ClientAddr>>()
                .map(|c| c.0.0.ip())
        })
        .map(|ip| ip.to_string())
}

/// The client's address: the socket's peer, unless that peer is a trusted
/// proxy; then the last `x-forwarded-for` hop that is not itself a trusted proxy
/// (walking from the right, so a client cannot forge its way past the proxies).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The role `path` needs: `Ok(None)` for public methods, `Err` when the method
/// declares nothing usable (refused).
fn required_role(declared: Option<&'static str>, path: &str) -> Result<Option<Role>, HrpcError> {
    match declared {
        Some(PUBLIC) => Ok(None),
        Some(r) => r.parse::<Role>().map(Some).map_err(|_| {
            HrpcError::permission_denied(format!("{path} declares an unknown role {r:?}"))
        }),
        None => Err(HrpcError::permission_denied(format!(
            "{path} declares no role, so nobody may call it"
        ))),
    }
}

/// axum middleware: see the module docs.
pub async fn authorize(
    State(auth): State<AuthState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(peer) = request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0.ip())
    {
        let forwarded = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = client_ip(peer, forwarded, &auth.trusted_proxies);
        request.extensions_mut().insert(ClientIp(ip));
    }
    let full = request.uri().path().to_owned();
    let path = full.strip_prefix("/rpc").unwrap_or(&full);
    let Some(&declared) = auth.methods.get(path) else {
        return next.run(request).await;
    };
    let required = match required_role(declared, path) {
        Ok(Some(r)) => r,
        Ok(None) => return next.run(request).await,
        Err(e) => return e.into_response(),
    };
    let session = auth
        .web
        .as_deref()
        .and_then(|w| cookie(request.headers(), w.session_cookie()).map(|c| (w, c)));
    let authenticated = match (bearer(request.headers()), session) {
        // Bearer calls are exempt from the CSRF rules: browsers never attach
        // a bearer token by themselves.
        (Some(token), _) => auth.authenticate(token).await,
        (None, Some((web, secret))) => match web.check_csrf(request.headers()) {
            Ok(()) => auth.authenticate_session(secret).await,
            Err(e) => Err(e),
        },
        (None, None) => Err(HrpcError::unauthenticated(
            "missing `authorization: Bearer <token>` header",
        )),
    };
    let caller = match authenticated {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if !caller.role.allows(required) {
        return HrpcError::permission_denied(format!(
            "this call needs the {required} role; you are {}",
            caller.role
        ))
        .with_details(serde_json::json!({ "required_role": required }))
        .into_response();
    }
    let audited = AUDITED.iter().find(|(p, _)| *p == path).map(|(_, a)| *a);
    request.extensions_mut().insert(AdminIdentity {
        user_id: caller.user_id,
        organization_id: caller.organization_id,
    });
    request.extensions_mut().insert(caller.clone());
    let Some(action) = audited else {
        return next.run(request).await;
    };

    let source = source_addr(request.extensions());
    let request_id = request
        .headers()
        .get(lapdev_hrpc::protocol::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_AUDITED_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return HrpcError::new(
                lapdev_hrpc::Code::ResourceExhausted,
                "request body is too large",
            )
            .into_response();
        }
    };
    let target = target_of(&bytes);
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    let status = response.status();
    let outcome = if status.is_success() {
        "success"
    } else if status == http::StatusCode::FORBIDDEN {
        "denied"
    } else {
        "failure"
    };
    record_in_background(
        &auth.db,
        NewAuditEntry {
            organization_id: Some(caller.organization_id),
            actor_id: Some(caller.user_id),
            actor_name: Some(caller.name),
            action: action.to_owned(),
            target,
            outcome: outcome.to_owned(),
            source_addr: source,
            request_id,
            detail: (!status.is_success()).then(|| status.as_u16().to_string()),
        },
    );
    response
}

/// axum middleware in front of the whole surface: a WebSocket upgrade that
/// carries an `Origin` must carry the server's own (see [`WebPolicy`]).
pub async fn upgrade_origin(
    State(auth): State<AuthState>,
    request: Request,
    next: Next,
) -> Response {
    let upgrade = request.headers().contains_key(http::header::UPGRADE);
    if upgrade
        && let Some(web) = auth.web.as_deref()
        && let Err(e) = web.check_upgrade_origin(request.headers())
    {
        return e.into_response();
    }
    next.run(request).await
}

/// The name of what an audited call acts on, from its JSON arguments.
fn target_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    for key in ["name", "cluster", "workspace", "token_id"] {
        match v.get(key) {
            Some(serde_json::Value::Object(o)) => {
                if let Some(n) = o.get("name").and_then(text) {
                    return Some(n);
                }
            }
            Some(other) => {
                if let Some(n) = text(other) {
                    return Some(n);
                }
            }
            None => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeclared_and_unknown_roles_are_refused() {
        assert!(required_role(None, "/X/y").is_err());
        assert!(required_role(Some("root"), "/X/y").is_err());
        assert_eq!(required_role(Some("public"), "/X/y").unwrap(), None);
        assert_eq!(
            required_role(Some("admin"), "/X/y").unwrap(),
            Some(Role::Admin)
        );
    }

    #[test]
    fn every_audited_method_exists() {
        for (path, _) in AUDITED {
            assert!(
                ADMIN_SERVICES
                    .iter()
                    .flat_map(|s| s.methods.iter())
                    .any(|m| m.path == *path),
                "{path} is audited but no service has it"
            );
        }
    }

    #[test]
    fn targets_come_from_the_arguments() {
        assert_eq!(target_of(br#"{"name":"a"}"#).as_deref(), Some("a"));
        assert_eq!(
            target_of(br#"{"workspace":{"name":"w"}}"#).as_deref(),
            Some("w")
        );
        assert_eq!(
            target_of(br#"{"cluster":"c","token_id":"t"}"#).as_deref(),
            Some("c")
        );
        assert_eq!(target_of(b"not json"), None);
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxies = [ip("10.0.0.1"), ip("10.0.0.2")];
        // Not a proxy: its own header is ignored.
        assert_eq!(
            client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &proxies),
            ip("1.2.3.4")
        );
        // Through two proxies; the leftmost entry was forged by the client.
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("6.6.6.6, 5.6.7.8, 10.0.0.2"), &proxies),
            ip("5.6.7.8")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, &proxies), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("garbage"), &proxies),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
