//! People and authorization: who a caller is, what their role allows, and the
//! API for users, personal access tokens, sign-in and the audit log.
//!
//! - `layer.rs`: the ONE authorization layer in front of every admin service.
//!   Each HRPC method declares the least role it needs with
//!   `#[hrpc(role = "...")]`; the layer reads it from the services' descriptors
//!   ([`ADMIN_SERVICES`]), authenticates the bearer token (a personal access token,
//!   or a legacy admin JWT), looks the user's role up (never from the token), and
//!   refuses what the role does not allow, naming the role needed. A method that
//!   declares no role is refused (deny by default). It also writes the audit row
//!   of every audited mutation, in the background.
//! - `principal.rs`: [`Caller`] and the short-lived cache of verified tokens and
//!   users, dropped whole on every change so revocation is immediate.
//! - `password.rs`: argon2id hashing on the blocking pool behind a global limit,
//!   the dummy hash for unknown users, and the per-user and per-address slow-down.
//! - `api.rs` / `service.rs`: `PeopleRpc` (sign-in, whoami, tokens, users, audit).
//! - `audit.rs`: the background audit writer (failures logged and counted).
//! - `web_policy.rs`: the session cookie, CSRF and WebSocket `Origin` rules;
//!   `web.rs`: the browser and CLI sign-in endpoints under `/auth/` (password
//!   to session, logout, OpenID Connect start and callback, the CLI's code
//!   exchange); `oidc/`: the OpenID Connect login itself and its HTTP client.
//! - `shell_access.rs`: who may open shell/exec/port-forward sessions into a
//!   workspace ([`shell_access::session_access_allowed`]).

pub mod api;
pub mod audit;
pub mod layer;
pub mod oidc;
pub mod password;
pub mod principal;
pub mod service;
pub mod shell_access;
pub mod web;
pub mod web_policy;

pub use layer::{ADMIN_SERVICES, AuthState, authorize, upgrade_origin};
pub use principal::Caller;
