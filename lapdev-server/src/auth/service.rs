//! The implementation of [`PeopleRpc`].
//!
//! Role, user and token changes write their audit row in the same transaction
//! (`lapdev_db`) and then clear the authorization cache, so the change holds
//! from the very next call. Failed sign-ins are audited at most
//! [`FAILED_SIGN_IN_AUDITS_PER_MINUTE`] times a minute, so the audit table is no
//! target for filling up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapdev_common::role::Role;
use lapdev_db::{
    AuditQuery, CredentialKey, Db, DbError, NewAuditEntry, NewOidcProvider, NewUser, OrgSettings,
    PersonalAccessToken, ProviderCredential, User, UserChange,
};
use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube::db_error;
use uuid::Uuid;

use super::api::{
    AuditFilter, AuditPage, AuditView, CreatedPatView, OidcProviderSettings, OidcProviderView,
    OrgSettingsView, PatView, PeopleRpc, SessionKindView, SessionList, SessionView, SignedIn,
    UserView,
};
use super::audit::record_now;
use super::layer::{AuthState, source_addr};
use super::oidc::http::{Egress, check_url};
use super::password::{Passwords, SlowDown};
use super::principal::{Caller, Credential};
use crate::access::Revocation;
use crate::auth::shell_access::session_access_allowed;

/// Audit rows for failed sign-ins, at most, per minute.
pub const FAILED_SIGN_IN_AUDITS_PER_MINUTE: u32 = 60;

/// Token lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// When the caller does not say.
    pub default_days: u64,
    /// The most a token may live.
    pub max_days: u64,
}

/// The people service.
#[derive(Clone)]
pub struct PeopleService {
    db: Db,
    auth: AuthState,
    passwords: Passwords,
    slow: Arc<SlowDown>,
    failed_audits: Arc<Mutex<(Instant, u32)>>,
    policy: TokenPolicy,
    credential_key: Option<CredentialKey>,
    egress: Egress,
    public_url: String,
    conductor: Option<lapdev_conductor::Conductor>,
}

impl std::fmt::Debug for PeopleService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeopleService").finish_non_exhaustive()
    }
}

fn caller(ctx: &Context) -> Result<Caller, HrpcError> {
    ctx.extension::<Caller>()
        .cloned()
        .ok_or_else(|| HrpcError::unauthenticated("no caller on this request"))
}

fn audit(ctx: &Context, who: &Caller, action: &str, target: Option<String>) -> NewAuditEntry {
    NewAuditEntry {
        organization_id: Some(who.organization_id),
        actor_id: Some(who.user_id),
        actor_name: Some(who.name.clone()),
        action: action.to_owned(),
        target,
        outcome: "success".to_owned(),
        source_addr: source_addr(ctx.extensions()),
        request_id: Some(ctx.request_id().to_owned()),
        detail: None,
    }
}

/// A repository error as the people API answers it: the last-owner guard is a
/// precondition, not bad input.
fn people_error(e: DbError) -> HrpcError {
    match e {
        DbError::InvalidInput {
            field: "user",
            reason,
        } => HrpcError::failed_precondition(reason)
            .with_details(serde_json::json!({"field": "name"})),
        DbError::InvalidInput { field, reason } => {
            HrpcError::invalid_argument(format!("invalid {field}: {reason}"))
                .with_details(serde_json::json!({ "field": field }))
        }
        other => db_error(other),
    }
}

/// The view of a user.
pub fn user_view(u: User) -> UserView {
    UserView {
        id: u.id,
        disabled: u.disabled_at.is_some(),
        name: u.name,
        email: u.email,
        role: u.role,
        created_at: u.created_at,
    }
}

fn pat_view(t: PersonalAccessToken) -> PatView {
    PatView {
        id: t.id,
        name: t.name,
        display_prefix: t.display_prefix,
        created_at: t.created_at,
        expires_at: t.expires_at,
        last_used_at: t.last_used_at,
        revoked_at: t.revoked_at,
    }
}

impl PeopleService {
    /// A service on the database and the authorization layer's state.
    pub fn new(db: Db, auth: AuthState, passwords: Passwords, policy: TokenPolicy) -> Self {
        Self {
            db,
            auth,
            passwords,
            slow: Arc::new(SlowDown::default()),
            failed_audits: Arc::new(Mutex::new((Instant::now(), 0))),
            policy,
            credential_key: None,
            egress: Egress::HttpsOnly,
            public_url: String::new(),
            conductor: None,
        }
    }

    /// The conductor to wake when a disabled or deleted user's workspaces were
    /// set to stop.
    pub fn with_conductor(mut self, conductor: lapdev_conductor::Conductor) -> Self {
        self.conductor = Some(conductor);
        self
    }

    /// What the OpenID Connect settings need: the key that seals the client
    /// secret, the egress rules issuers must follow, the public URL.
    pub fn with_oidc(mut self, key: CredentialKey, egress: Egress, public_url: &str) -> Self {
        self.credential_key = Some(key);
        self.egress = egress;
        self.public_url = public_url.trim_end_matches('/').to_owned();
        self
    }

    fn key(&self) -> Result<&CredentialKey, HrpcError> {
        self.credential_key
            .as_ref()
            .ok_or_else(|| HrpcError::failed_precondition("this server has no credential key"))
    }

    fn oidc_view(&self, p: lapdev_db::OidcProvider) -> OidcProviderView {
        OidcProviderView {
            issuer: p.config.issuer,
            client_id: p.config.client_id,
            allowed_domains: p.config.allowed_domains,
            default_role: p.config.default_role,
            redirect_url: format!("{}/auth/oidc/callback", self.public_url),
            updated_at: p.updated_at,
        }
    }

    fn expiry(&self, days: Option<u64>) -> Result<DateTime<Utc>, HrpcError> {
        let days = days.unwrap_or(self.policy.default_days);
        if days == 0 || days > self.policy.max_days {
            return Err(HrpcError::invalid_argument(format!(
                "expires_in_days must be between 1 and {}",
                self.policy.max_days
            ))
            .with_details(serde_json::json!({"field": "expires_in_days"})));
        }
        Ok(Utc::now()
            + chrono::Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400_000)))
    }

    async fn user_named(&self, who: &Caller, name: &str) -> Result<User, HrpcError> {
        self.db
            .get_user_by_name(who.organization_id, name)
            .await
            .map_err(db_error)
    }

    async fn change(
        &self,
        ctx: &Context,
        name: &str,
        change: UserChange,
        action: &str,
        detail: Option<String>,
    ) -> Result<UserView, HrpcError> {
        let who = caller(ctx)?;
        let user = self.user_named(&who, name).await?;
        let entry = NewAuditEntry {
            detail,
            ..audit(ctx, &who, action, Some(name.to_owned()))
        };
        let changed = self
            .db
            .change_user(who.organization_id, user.id, change, entry)
            .await
            .map_err(people_error)?;
        match change {
            UserChange::Disable => self
                .auth
                .revoked(Revocation::UserDisabled { user_id: user.id }),
            UserChange::Delete => self
                .auth
                .revoked(Revocation::UserDeleted { user_id: user.id }),
            // A role that may not enter others' workspaces (whatever the
            // organisation's setting) ends the sessions the user has in them.
            UserChange::SetRole(role) if !session_access_allowed(role, false, true).allowed() => {
                self.auth
                    .revoked(Revocation::AdminAccessWithdrawn { user_id: user.id })
            }
            UserChange::SetRole(_) | UserChange::Enable => self.auth.cache.clear(),
        }
        if matches!(change, UserChange::Disable | UserChange::Delete) {
            // Their workspaces were set to stop in the same transaction; the
            // reconciler acts on it now rather than at its next round.
            if let Some(conductor) = &self.conductor {
                conductor.wake();
            }
        }
        Ok(user_view(changed))
    }

    /// A new personal access token for a user who just signed in (password or
    /// OpenID Connect), audited as `action` in the same transaction.
    pub async fn mint_sign_in_token(
        &self,
        u: User,
        token_name: Option<String>,
        action: &str,
        source: Option<String>,
        request_id: Option<String>,
    ) -> Result<SignedIn, HrpcError> {
        let name = token_name.unwrap_or_else(|| "sign-in".to_owned());
        let created = self
            .db
            .create_pat(
                u.organization_id,
                u.id,
                &name,
                self.expiry(None)?,
                NewAuditEntry {
                    organization_id: Some(u.organization_id),
                    actor_id: Some(u.id),
                    actor_name: Some(u.name.clone()),
                    action: action.to_owned(),
                    target: Some(u.name.clone()),
                    outcome: "success".into(),
                    source_addr: source,
                    request_id,
                    detail: None,
                },
            )
            .await
            .map_err(people_error)?;
        Ok(SignedIn {
            user: user_view(u),
            token: CreatedPatView {
                token: pat_view(created.token),
                token_secret: created.secret,
            },
        })
    }

    /// A new browser session for a user who just signed in, revoking the one
    /// the browser came with (rotation), audited in the same transaction; the
    /// shell, exec and port-forward sessions the replaced one opened end.
    pub async fn start_session(
        &self,
        u: &User,
        lifetime: lapdev_db::SessionLifetime,
        replaces: Option<&str>,
        action: &str,
        source: Option<String>,
        request_id: Option<String>,
    ) -> Result<lapdev_db::CreatedSession, HrpcError> {
        self.db
            .create_session(
                u.organization_id,
                u.id,
                lifetime,
                replaces,
                NewAuditEntry {
                    organization_id: Some(u.organization_id),
                    actor_id: Some(u.id),
                    actor_name: Some(u.name.clone()),
                    action: action.to_owned(),
                    target: Some(u.name.clone()),
                    outcome: "success".into(),
                    source_addr: source,
                    request_id,
                    detail: Some("session".into()),
                },
            )
            .await
            .map_err(people_error)
            .inspect(|created| {
                if let Some(old) = created.replaced {
                    self.auth.revoked(Revocation::BrowserSessionRevoked {
                        user_id: old.user_id,
                        session_id: old.id,
                    });
                }
            })
    }

    /// The database (for the `/auth/` endpoints).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Whether one more failed sign-in may be audited this minute.
    pub fn may_audit_failure(&self) -> bool {
        let mut window = self.failed_audits.lock().unwrap_or_else(|e| e.into_inner());
        if window.0.elapsed() >= Duration::from_secs(60) {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        window.1 <= FAILED_SIGN_IN_AUDITS_PER_MINUTE
    }

    /// Checks a password sign-in: slowed down per user and per address after
    /// failures, the same cost for unknown users, failures audited (at most
    /// [`FAILED_SIGN_IN_AUDITS_PER_MINUTE`]). The user on success.
    pub async fn check_password(
        &self,
        source: Option<String>,
        request_id: Option<String>,
        organization: Option<&str>,
        user: String,
        password: String,
    ) -> Result<User, HrpcError> {
        let org_id = self.organization_id(organization).await?;
        let user_key = format!("user:{}:{user}", org_id.unwrap_or_default());
        let addr_key = format!("addr:{}", source.as_deref().unwrap_or("unknown"));
        let delay = self.slow.delay(&user_key).max(self.slow.delay(&addr_key));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let candidate = match org_id {
            Some(org) => self
                .db
                .find_sign_in_candidate(org, &user)
                .await
                .map_err(db_error)?,
            None => None,
        };
        let hash = candidate.as_ref().and_then(|c| c.password_hash.clone());
        let matches = self.passwords.verify(password, hash).await.map_err(|e| {
            tracing::error!(error = %e, "password verification failed");
            HrpcError::unavailable("sign-in is unavailable")
        })?;
        let signed_in = candidate.filter(|c| matches && c.user.disabled_at.is_none());
        let Some(candidate) = signed_in else {
            self.slow.failed(&user_key);
            self.slow.failed(&addr_key);
            if self.may_audit_failure() {
                record_now(
                    &self.db,
                    NewAuditEntry {
                        organization_id: org_id,
                        actor_name: Some(user.clone()),
                        action: "auth.sign_in".into(),
                        target: Some(user),
                        outcome: "failure".into(),
                        source_addr: source,
                        request_id,
                        ..Default::default()
                    },
                )
                .await;
            }
            return Err(HrpcError::unauthenticated("wrong user name or password"));
        };
        self.slow.succeeded(&user_key);
        self.slow.succeeded(&addr_key);
        Ok(candidate.user)
    }

    async fn organization_id(&self, name: Option<&str>) -> Result<Option<Uuid>, HrpcError> {
        let orgs = self.db.list_organizations().await.map_err(db_error)?;
        Ok(match name {
            Some(n) => orgs.into_iter().find(|o| o.name == n).map(|o| o.id),
            None => orgs.into_iter().next().map(|o| o.id),
        })
    }
}

impl PeopleRpc for PeopleService {
    async fn sign_in(
        &self,
        ctx: Context,
        organization: Option<String>,
        user: String,
        password: String,
        token_name: Option<String>,
    ) -> Result<SignedIn, HrpcError> {
        let u = self
            .check_password(
                source_addr(ctx.extensions()),
                Some(ctx.request_id().to_owned()),
                organization.as_deref(),
                user,
                password,
            )
            .await?;
        self.mint_sign_in_token(
            u,
            token_name,
            "auth.sign_in",
            source_addr(ctx.extensions()),
            Some(ctx.request_id().to_owned()),
        )
        .await
    }

    async fn whoami(&self, ctx: Context) -> Result<UserView, HrpcError> {
        let who = caller(&ctx)?;
        let u = self
            .db
            .get_user(who.organization_id, who.user_id)
            .await
            .map_err(db_error)?;
        Ok(user_view(u))
    }

    async fn create_token(
        &self,
        ctx: Context,
        name: String,
        expires_in_days: Option<u64>,
    ) -> Result<CreatedPatView, HrpcError> {
        let who = caller(&ctx)?;
        let expires_at = self.expiry(expires_in_days)?;
        let created = self
            .db
            .create_pat(
                who.organization_id,
                who.user_id,
                &name,
                expires_at,
                audit(&ctx, &who, "token.create", Some(name.clone())),
            )
            .await
            .map_err(people_error)?;
        Ok(CreatedPatView {
            token: pat_view(created.token),
            token_secret: created.secret,
        })
    }

    async fn list_tokens(&self, ctx: Context) -> Result<Vec<PatView>, HrpcError> {
        let who = caller(&ctx)?;
        let list = self
            .db
            .list_pats(who.organization_id, who.user_id)
            .await
            .map_err(db_error)?;
        Ok(list.into_iter().map(pat_view).collect())
    }

    async fn revoke_token(&self, ctx: Context, token_id: Uuid) -> Result<(), HrpcError> {
        let who = caller(&ctx)?;
        self.db
            .revoke_pat(
                who.organization_id,
                who.user_id,
                token_id,
                audit(&ctx, &who, "token.revoke", Some(token_id.to_string())),
            )
            .await
            .map_err(people_error)?;
        self.auth.revoked(Revocation::PatRevoked {
            user_id: who.user_id,
            token_id,
        });
        Ok(())
    }

    async fn list_sessions(
        &self,
        ctx: Context,
        user: Option<String>,
    ) -> Result<SessionList, HrpcError> {
        let who = caller(&ctx)?;
        let user = match user {
            Some(name) if name != who.name => {
                // Checked before the lookup, so a member learns nothing about
                // which names exist.
                if who.role != Role::Owner {
                    return Err(HrpcError::permission_denied(
                        "listing another user's sessions needs the owner role",
                    )
                    .with_details(serde_json::json!({ "required_role": Role::Owner })));
                }
                self.user_named(&who, &name).await?
            }
            _ => self
                .db
                .get_user(who.organization_id, who.user_id)
                .await
                .map_err(db_error)?,
        };
        let browser = self
            .db
            .list_sessions(who.organization_id, user.id)
            .await
            .map_err(db_error)?;
        let tokens = self
            .db
            .list_pats(who.organization_id, user.id)
            .await
            .map_err(db_error)?;
        let live = &self.auth.live;
        let open = |c: Credential| u32::try_from(live.count_of(user.id, c)).unwrap_or(u32::MAX);
        let mut sessions: Vec<SessionView> = browser
            .into_iter()
            .map(|b| SessionView {
                id: b.id,
                kind: SessionKindView::Browser,
                name: None,
                created_at: b.created_at,
                last_used_at: None,
                idle_expires_at: Some(b.idle_expires_at),
                expires_at: b.expires_at,
                revoked_at: b.revoked_at,
                current: who.credential == Credential::BrowserSession(b.id),
                open_sessions: open(Credential::BrowserSession(b.id)),
            })
            .collect();
        sessions.extend(tokens.into_iter().map(|t| SessionView {
            id: t.id,
            kind: SessionKindView::Token,
            current: who.credential == Credential::Pat(t.id),
            open_sessions: open(Credential::Pat(t.id)),
            name: Some(t.name),
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            idle_expires_at: None,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }));
        Ok(SessionList {
            user: user.name,
            sessions,
        })
    }

    async fn revoke_session(&self, ctx: Context, id: Uuid) -> Result<(), HrpcError> {
        let who = caller(&ctx)?;
        let org = who.organization_id;
        // Owners may revoke anyone's; everybody else only their own, and
        // another user's id is `not_found`, as if it did not exist.
        let only = (who.role != Role::Owner).then_some(who.user_id);
        let entry = |action: &str, kind: &str| NewAuditEntry {
            detail: Some(kind.to_owned()),
            ..audit(&ctx, &who, action, Some(id.to_string()))
        };
        let session = self
            .db
            .revoke_session_by_id(org, only, id, entry("session.revoke", "browser session"))
            .await
            .map_err(db_error)?;
        if let Some(user_id) = session {
            self.auth.revoked(Revocation::BrowserSessionRevoked {
                user_id,
                session_id: id,
            });
            return Ok(());
        }
        match self.db.pat_user(org, id).await.map_err(db_error)? {
            Some(user_id) if only.is_none_or(|me| me == user_id) => {
                self.db
                    .revoke_pat(
                        org,
                        user_id,
                        id,
                        entry("token.revoke", "personal access token"),
                    )
                    .await
                    .map_err(people_error)?;
                self.auth.revoked(Revocation::PatRevoked {
                    user_id,
                    token_id: id,
                });
                Ok(())
            }
            _ => Err(HrpcError::not_found(format!(
                "no session or token {id}; see `lapdev session list`"
            ))
            .with_details(serde_json::json!({"field": "id"}))),
        }
    }

    async fn create_user(
        &self,
        ctx: Context,
        name: String,
        email: Option<String>,
        role: Role,
        password: Option<String>,
    ) -> Result<UserView, HrpcError> {
        let who = caller(&ctx)?;
        let hash = match password {
            Some(p) if p.len() < 8 => {
                return Err(HrpcError::invalid_argument(
                    "the password must have at least 8 characters",
                )
                .with_details(serde_json::json!({"field": "password"})));
            }
            Some(p) => Some(self.passwords.hash(p).await.map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                HrpcError::internal("could not hash the password")
            })?),
            None => None,
        };
        let entry = NewAuditEntry {
            detail: Some(format!("role={role}")),
            ..audit(&ctx, &who, "user.create", Some(name.clone()))
        };
        let user = self
            .db
            .create_user_with_role(who.organization_id, NewUser { name, email }, role, entry)
            .await
            .map_err(people_error)?;
        if hash.is_some() {
            self.db
                .set_password_hash(who.organization_id, user.id, hash)
                .await
                .map_err(db_error)?;
        }
        Ok(user_view(user))
    }

    async fn list_users(&self, ctx: Context) -> Result<Vec<UserView>, HrpcError> {
        let who = caller(&ctx)?;
        let users = self
            .db
            .list_users(who.organization_id)
            .await
            .map_err(db_error)?;
        Ok(users.into_iter().map(user_view).collect())
    }

    async fn get_user(&self, ctx: Context, name: String) -> Result<UserView, HrpcError> {
        let who = caller(&ctx)?;
        Ok(user_view(self.user_named(&who, &name).await?))
    }

    async fn set_user_role(
        &self,
        ctx: Context,
        name: String,
        role: Role,
    ) -> Result<UserView, HrpcError> {
        self.change(
            &ctx,
            &name,
            UserChange::SetRole(role),
            "user.set_role",
            Some(format!("role={role}")),
        )
        .await
    }

    async fn set_user_disabled(
        &self,
        ctx: Context,
        name: String,
        disabled: bool,
    ) -> Result<UserView, HrpcError> {
        let (change, action) = if disabled {
            (UserChange::Disable, "user.disable")
        } else {
            (UserChange::Enable, "user.enable")
        };
        self.change(&ctx, &name, change, action, None).await
    }

    async fn set_user_password(
        &self,
        ctx: Context,
        name: String,
        password: String,
    ) -> Result<(), HrpcError> {
        let who = caller(&ctx)?;
        if password.len() < 8 {
            return Err(HrpcError::invalid_argument(
                "the password must have at least 8 characters",
            )
            .with_details(serde_json::json!({"field": "password"})));
        }
        let user = self.user_named(&who, &name).await?;
        let hash = self.passwords.hash(password).await.map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            HrpcError::internal("could not hash the password")
        })?;
        self.db
            .set_password_hash(who.organization_id, user.id, Some(hash))
            .await
            .map_err(db_error)?;
        record_now(&self.db, audit(&ctx, &who, "user.set_password", Some(name))).await;
        Ok(())
    }

    async fn delete_user(&self, ctx: Context, name: String) -> Result<(), HrpcError> {
        self.change(&ctx, &name, UserChange::Delete, "user.delete", None)
            .await
            .map(|_| ())
    }

    async fn list_audit(&self, ctx: Context, filter: AuditFilter) -> Result<AuditPage, HrpcError> {
        let who = caller(&ctx)?;
        let before = match filter.before.as_deref() {
            Some(cursor) => Some(parse_cursor(cursor).ok_or_else(|| {
                HrpcError::invalid_argument("malformed page cursor")
                    .with_details(serde_json::json!({"field": "before"}))
            })?),
            None => None,
        };
        let limit = filter
            .limit
            .unwrap_or(100)
            .clamp(1, lapdev_db::MAX_AUDIT_PAGE);
        let rows = self
            .db
            .list_audit(
                who.organization_id,
                &AuditQuery {
                    since: filter.since,
                    before,
                    actor: filter.actor,
                    action: filter.action,
                    limit,
                },
            )
            .await
            .map_err(db_error)?;
        let next = (rows.len() as u64 == limit)
            .then(|| {
                rows.last()
                    .map(|r| format!("{}|{}", r.occurred_at.to_rfc3339(), r.id))
            })
            .flatten();
        Ok(AuditPage {
            entries: rows
                .into_iter()
                .map(|r| AuditView {
                    id: r.id,
                    occurred_at: r.occurred_at,
                    actor_id: r.entry.actor_id,
                    actor: r.entry.actor_name,
                    action: r.entry.action,
                    target: r.entry.target,
                    outcome: r.entry.outcome,
                    source_addr: r.entry.source_addr,
                    request_id: r.entry.request_id,
                    detail: r.entry.detail,
                })
                .collect(),
            next,
        })
    }

    async fn set_oidc_provider(
        &self,
        ctx: Context,
        settings: OidcProviderSettings,
    ) -> Result<OidcProviderView, HrpcError> {
        let who = caller(&ctx)?;
        let issuer = settings.issuer.trim_end_matches('/').to_owned();
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        check_url(&discovery, self.egress).map_err(|reason| {
            HrpcError::invalid_argument(format!("issuer: {reason}"))
                .with_details(serde_json::json!({"field": "issuer"}))
        })?;
        if settings.client_secret.is_empty() {
            return Err(
                HrpcError::invalid_argument("client_secret must not be empty")
                    .with_details(serde_json::json!({"field": "client_secret"})),
            );
        }
        if settings.allowed_domains.iter().all(|d| d.trim().is_empty()) {
            return Err(HrpcError::invalid_argument(
                "allowed_domains must name at least one email domain",
            )
            .with_details(serde_json::json!({"field": "allowed_domains"})));
        }
        let stored = self
            .db
            .set_oidc_provider(
                self.key()?,
                NewOidcProvider {
                    organization_id: who.organization_id,
                    issuer: issuer.clone(),
                    client_id: settings.client_id,
                    client_secret: ProviderCredential::new(settings.client_secret.into_bytes()),
                    allowed_domains: settings.allowed_domains,
                    default_role: settings.default_role.unwrap_or(Role::Member),
                },
                audit(&ctx, &who, "oidc.set", Some(issuer)),
            )
            .await
            .map_err(people_error)?;
        Ok(self.oidc_view(stored))
    }

    async fn get_oidc_provider(
        &self,
        _ctx: Context,
    ) -> Result<Option<OidcProviderView>, HrpcError> {
        let stored = self.db.oidc_provider(self.key()?).await.map_err(db_error)?;
        Ok(stored.map(|p| self.oidc_view(p)))
    }

    async fn clear_oidc_provider(&self, ctx: Context) -> Result<(), HrpcError> {
        let who = caller(&ctx)?;
        self.db
            .clear_oidc_provider(audit(&ctx, &who, "oidc.clear", None))
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn get_org_settings(&self, ctx: Context) -> Result<OrgSettingsView, HrpcError> {
        let who = caller(&ctx)?;
        let s = self
            .db
            .org_settings(who.organization_id)
            .await
            .map_err(db_error)?;
        Ok(OrgSettingsView {
            admins_may_open_shells: s.admins_may_open_shells,
        })
    }

    async fn set_org_settings(
        &self,
        ctx: Context,
        settings: OrgSettingsView,
    ) -> Result<OrgSettingsView, HrpcError> {
        let who = caller(&ctx)?;
        let entry = NewAuditEntry {
            detail: Some(format!(
                "admins_may_open_shells={}",
                settings.admins_may_open_shells
            )),
            ..audit(&ctx, &who, "org.settings", None)
        };
        let s = self
            .db
            .set_org_settings(
                who.organization_id,
                OrgSettings {
                    admins_may_open_shells: settings.admins_may_open_shells,
                },
                entry,
            )
            .await
            .map_err(db_error)?;
        if !s.admins_may_open_shells {
            self.auth.revoked(Revocation::AdminSessionsDisallowed {
                organization_id: who.organization_id,
            });
        }
        Ok(OrgSettingsView {
            admins_may_open_shells: s.admins_may_open_shells,
        })
    }
}

fn parse_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (at, id) = cursor.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        id.parse().ok()?,
    ))
}
