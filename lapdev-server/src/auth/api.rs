//! `PeopleRpc`: sign-in, the caller's own identity and personal access tokens,
//! users and roles (owners), and the audit log (owners and admins). Behind the
//! authorization layer like every admin service; each method declares its role.

use chrono::{DateTime, Utc};
use lapdev_common::role::Role;
use lapdev_hrpc::{Context, HrpcError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user as the API shows it (never a password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

/// A personal access token's metadata (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatView {
    pub id: Uuid,
    pub name: String,
    pub display_prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedPatView {
    pub token: PatView,
    /// The plaintext. It is not stored and cannot be shown again.
    pub token_secret: String,
}

/// What kind of credential a [`SessionView`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKindView {
    /// A browser session (cookie).
    Browser,
    /// A personal access token (CLI, scripts).
    Token,
}

/// One browser session or personal access token of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Pass it to `revoke_session`.
    pub id: Uuid,
    pub kind: SessionKindView,
    /// The token's name (browser sessions have none).
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When a token was last presented (recorded when the server's short
    /// authorization cache misses, so within about 10 s).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When a browser session ends unless used before.
    pub idle_expires_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The credential of this very call.
    pub current: bool,
    /// Shell, exec and port-forward sessions it holds open on this server.
    pub open_sessions: u32,
}

/// A user's sessions and tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// Whose they are.
    pub user: String,
    /// Live browser sessions, then every token (revoked and expired ones too),
    /// newest first within each kind.
    pub sessions: Vec<SessionView>,
}

/// What a successful sign-in returns: a new token for the signed-in user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedIn {
    pub user: UserView,
    pub token: CreatedPatView,
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub source_addr: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<String>,
}

/// A page of audit rows, newest first; pass `next` as `before` for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<String>,
}

/// Filters of `list_audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub before: Option<String>,
    /// Rows per page (default 100, at most 500).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// The server's OpenID provider as the API shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcProviderView {
    pub issuer: String,
    pub client_id: String,
    pub allowed_domains: Vec<String>,
    pub default_role: Role,
    /// Where the provider must send browsers back (register it there).
    pub redirect_url: String,
    pub updated_at: DateTime<Utc>,
}

/// What `set_oidc_provider` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcProviderSettings {
    /// The issuer URL (https; discovery is `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// Stored encrypted, never returned.
    pub client_secret: String,
    /// Email domains whose verified addresses may sign in for the first time.
    pub allowed_domains: Vec<String>,
    /// The role of users created at their first sign-in (default `member`).
    #[serde(default)]
    pub default_role: Option<Role>,
}

/// The organisation's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgSettingsView {
    /// Admins may open shell, exec and port-forward sessions into other users'
    /// workspaces (always audited). Default off.
    pub admins_may_open_shells: bool,
}

/// People: identity, tokens, users, audit.
#[lapdev_hrpc::service]
pub trait PeopleRpc {
    /// Signs in with a password and returns a new personal access token. Failed
    /// attempts slow down per user and per client address.
    #[hrpc(role = "public")]
    async fn sign_in(
        &self,
        ctx: Context,
        organization: Option<String>,
        user: String,
        password: String,
        token_name: Option<String>,
    ) -> Result<SignedIn, HrpcError>;

    /// Who the caller is.
    #[hrpc(role = "member")]
    async fn whoami(&self, ctx: Context) -> Result<UserView, HrpcError>;

    /// A new personal access token for the caller (default 30 days, at most the
    /// server's maximum).
    #[hrpc(role = "member")]
    async fn create_token(
        &self,
        ctx: Context,
        name: String,
        expires_in_days: Option<u64>,
    ) -> Result<CreatedPatView, HrpcError>;

    /// The caller's tokens.
    #[hrpc(role = "member")]
    async fn list_tokens(&self, ctx: Context) -> Result<Vec<PatView>, HrpcError>;

    /// Revokes one of the caller's tokens; it is refused from the next call on.
    #[hrpc(role = "member")]
    async fn revoke_token(&self, ctx: Context, token_id: Uuid) -> Result<(), HrpcError>;

    /// The caller's live browser sessions and their tokens with their last use;
    /// an owner may name another user of the organisation.
    #[hrpc(role = "member")]
    async fn list_sessions(
        &self,
        ctx: Context,
        user: Option<String>,
    ) -> Result<SessionList, HrpcError>;

    /// Revokes a browser session or a personal access token by id: the
    /// caller's own, or (owners) anyone's in the organisation. It is refused
    /// from the next call on and the shell, exec and port-forward sessions it
    /// opened end at once. Audited.
    #[hrpc(role = "member")]
    async fn revoke_session(&self, ctx: Context, id: Uuid) -> Result<(), HrpcError>;

    /// Creates a user with a role and, optionally, a password.
    #[hrpc(role = "owner")]
    async fn create_user(
        &self,
        ctx: Context,
        name: String,
        email: Option<String>,
        role: Role,
        password: Option<String>,
    ) -> Result<UserView, HrpcError>;

    /// The organisation's users.
    #[hrpc(role = "admin")]
    async fn list_users(&self, ctx: Context) -> Result<Vec<UserView>, HrpcError>;

    /// One user by name.
    #[hrpc(role = "admin")]
    async fn get_user(&self, ctx: Context, name: String) -> Result<UserView, HrpcError>;

    /// Changes a user's role (the last owner cannot be demoted).
    #[hrpc(role = "owner")]
    async fn set_user_role(
        &self,
        ctx: Context,
        name: String,
        role: Role,
    ) -> Result<UserView, HrpcError>;

    /// Disables or re-enables a user. Disabling revokes their tokens and
    /// browser sessions at once, ends their open shell, exec and port-forward
    /// sessions, and stops their running workspaces (kept with their volumes;
    /// re-enabling does not start them again).
    #[hrpc(role = "owner")]
    async fn set_user_disabled(
        &self,
        ctx: Context,
        name: String,
        disabled: bool,
    ) -> Result<UserView, HrpcError>;

    /// Sets a user's password.
    #[hrpc(role = "owner")]
    async fn set_user_password(
        &self,
        ctx: Context,
        name: String,
        password: String,
    ) -> Result<(), HrpcError>;

    /// Deletes a user (soft): as disabling, then the user is gone; their
    /// workspaces are kept, stopped, for an owner or admin to delete.
    #[hrpc(role = "owner")]
    async fn delete_user(&self, ctx: Context, name: String) -> Result<(), HrpcError>;

    /// The organisation's audit log, newest first, paginated.
    #[hrpc(role = "admin")]
    async fn list_audit(&self, ctx: Context, filter: AuditFilter) -> Result<AuditPage, HrpcError>;

    /// Sets the server's OpenID Connect provider (replacing any other).
    #[hrpc(role = "owner")]
    async fn set_oidc_provider(
        &self,
        ctx: Context,
        settings: OidcProviderSettings,
    ) -> Result<OidcProviderView, HrpcError>;

    /// The server's OpenID Connect provider, if one is set.
    #[hrpc(role = "admin")]
    async fn get_oidc_provider(&self, ctx: Context) -> Result<Option<OidcProviderView>, HrpcError>;

    /// Removes the OpenID Connect provider (linked accounts are kept).
    #[hrpc(role = "owner")]
    async fn clear_oidc_provider(&self, ctx: Context) -> Result<(), HrpcError>;

    /// The organisation's settings.
    #[hrpc(role = "admin")]
    async fn get_org_settings(&self, ctx: Context) -> Result<OrgSettingsView, HrpcError>;

    /// Changes the organisation's settings (audited).
    #[hrpc(role = "owner")]
    async fn set_org_settings(
        &self,
        ctx: Context,
        settings: OrgSettingsView,
    ) -> Result<OrgSettingsView, HrpcError>;
}
