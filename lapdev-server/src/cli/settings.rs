//! `lapdev oidc set|show|clear` (the server's OpenID Connect provider) and
//! `lapdev org show|set` (the organisation's settings).

use anyhow::Context as _;
use clap::Subcommand;
use lapdev_common::role::Role;
use serde_json::json;

use super::people::PeopleRpcClient;
use super::{Output, call_error, done, print_json};
use crate::auth::api::{OidcProviderSettings, OidcProviderView, OrgSettingsView};

/// `lapdev oidc …`
#[derive(Debug, Subcommand)]
pub enum OidcCommand {
    /// Set the OpenID Connect provider (owners). The client secret is read from
    /// stdin and stored encrypted.
    Set {
        /// The issuer URL (https).
        #[arg(long)]
        issuer: String,
        /// This server's client id at the provider.
        #[arg(long)]
        client_id: String,
        /// Email domains allowed to sign in for the first time (repeatable).
        #[arg(long = "allowed-domain", required = true)]
        allowed_domains: Vec<String>,
        /// The role new users get.
        #[arg(long, default_value = "member")]
        default_role: Role,
    },
    /// Show the provider (never the secret).
    Show,
    /// Remove the provider (linked accounts are kept).
    Clear,
}

/// `lapdev org …`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Show the organisation's settings.
    Show,
    /// Change the organisation's settings (owners; audited).
    Set {
        /// Whether admins may open shell, exec and port-forward sessions into
        /// other users' workspaces (always audited).
        #[arg(long)]
        admins_may_open_shells: bool,
    },
}

fn oidc_json(v: &OidcProviderView) -> serde_json::Value {
    json!({
        "issuer": v.issuer, "client_id": v.client_id, "allowed_domains": v.allowed_domains,
        "default_role": v.default_role, "redirect_url": v.redirect_url,
        "updated_at": v.updated_at,
    })
}

fn oidc_text(v: &OidcProviderView) -> String {
    format!(
        "issuer:          {}\nclient id:       {}\nallowed domains: {}\ndefault role:    {}\nredirect URL:    {} (register it at the provider)",
        v.issuer,
        v.client_id,
        v.allowed_domains.join(", "),
        v.default_role,
        v.redirect_url
    )
}

/// `lapdev oidc …`.
pub async fn oidc(api: &PeopleRpcClient, out: Output, cmd: OidcCommand) -> anyhow::Result<()> {
    match cmd {
        OidcCommand::Set {
            issuer,
            client_id,
            allowed_domains,
            default_role,
        } => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .context("reading the client secret from stdin")?;
            let view = api
                .set_oidc_provider(OidcProviderSettings {
                    issuer,
                    client_id,
                    client_secret: secret.trim().to_owned(),
                    allowed_domains,
                    default_role: Some(default_role),
                })
                .await
                .map_err(call_error)?;
            done(out, oidc_json(&view), &oidc_text(&view))
        }
        OidcCommand::Show => match api.get_oidc_provider().await.map_err(call_error)? {
            Some(v) => done(out, oidc_json(&v), &oidc_text(&v)),
            None => done(out, json!(null), "no OpenID Connect provider is set"),
        },
        OidcCommand::Clear => {
            api.clear_oidc_provider().await.map_err(call_error)?;
            done(
                out,
                json!({"cleared": true}),
                "OpenID Connect provider removed",
            )
        }
    }
}

/// `lapdev org …`.
pub async fn org(api: &PeopleRpcClient, out: Output, cmd: OrgCommand) -> anyhow::Result<()> {
    let s = match cmd {
        OrgCommand::Show => api.get_org_settings().await.map_err(call_error)?,
        OrgCommand::Set {
            admins_may_open_shells,
        } => api
            .set_org_settings(OrgSettingsView {
                admins_may_open_shells,
            })
            .await
            .map_err(call_error)?,
    };
    match out {
        Output::Json => print_json(&json!(s)),
        Output::Table => {
            outln!("admins may open shells: {}", s.admins_may_open_shells)?;
            Ok(())
        }
    }
}
