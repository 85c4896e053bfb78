//! `lapdev login|logout|whoami`, `lapdev token …`, `lapdev user …` and
//! `lapdev audit list`, on the generated `PeopleRpcClient`.
//!
//! `login` asks for the password (without echo on a terminal, or from stdin with
//! `--password-stdin`), or takes a pasted token (`--with-token`, the headless
//! path), and stores the personal access token in the user's config directory
//! (`$LAPDEV_CONFIG_DIR`, else `$XDG_CONFIG_HOME/lapdev`, else
//! `~/.config/lapdev`) as `token`, mode 0600. Later commands use it when neither
//! `--token` nor `LAPDEV_TOKEN` is given.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use lapdev_common::role::Role;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Output, call_error, done, opt_ts, print_fields, print_json, print_table, ts};
pub use crate::auth::api::PeopleRpcClient;
use crate::auth::api::{AuditFilter, AuditView, PatView, UserView};

/// `lapdev token …`: your personal access tokens.
#[derive(Debug, Subcommand)]
pub enum PatCommand {
    /// Create a token (printed this once).
    Create {
        /// Token name.
        name: String,
        /// Expire after this many days (default 30, at most the server's maximum).
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// List your tokens.
    List,
    /// Revoke one of your tokens; it is refused from the next call on.
    Revoke {
        /// Token id.
        token_id: Uuid,
    },
}

/// `lapdev user …` (owners change users; admins may list them).
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        /// User name.
        name: String,
        /// `owner`, `admin` or `member`.
        #[arg(long, default_value = "member")]
        role: Role,
        /// Contact address.
        #[arg(long)]
        email: Option<String>,
        /// Read an initial password from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Show one user.
    Get {
        /// User name.
        name: String,
    },
    /// Change a user's role.
    SetRole {
        /// User name.
        name: String,
        /// `owner`, `admin` or `member`.
        role: Role,
    },
    /// Set a user's password (read from stdin; at least 8 characters), for
    /// signing in to the dashboard or with `lapdev login`. The first start's
    /// owner `admin` has none until this sets one.
    SetPassword {
        /// User name.
        name: String,
    },
    /// Disable a user. At once: their tokens and browser sessions are revoked
    /// and their open shells, exec and port-forward sessions end. Their
    /// running workspaces are stopped and kept with their volumes (an owner or
    /// admin may start or delete them; `enable` does not start them again).
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a disabled user again (their old tokens stay revoked).
    Enable {
        /// User name.
        name: String,
    },
    /// Delete a user: as `disable`, then the user is gone; their workspaces
    /// are kept, stopped, for an owner or admin to delete.
    Delete {
        /// User name.
        name: String,
    },
}

/// `lapdev audit …` (owners and admins).
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The audit log, newest first.
    List {
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Only this actor (user name).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (e.g. `cluster.delete`).
        #[arg(long)]
        action: Option<String>,
        /// Entries per page.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// The cursor printed after the previous page.
        #[arg(long)]
        before: Option<String>,
    },
}

/// Where `login` stores the token.
pub fn token_file() -> Option<PathBuf> {
    let dir = std::env::var_os("LAPDEV_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("lapdev")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/lapdev")))?;
    Some(dir.join("token"))
}

/// The stored token, if `login` stored one.
pub fn stored_token() -> Option<String> {
    let text = std::fs::read_to_string(token_file()?).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

fn store_token(token: &str) -> anyhow::Result<PathBuf> {
    let file = token_file().context("no config directory: set LAPDEV_CONFIG_DIR or HOME")?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A file left with looser permissions would keep them: start afresh.
    let _ = std::fs::remove_file(&file);
    super::write_private(&file, format!("{token}\n").as_bytes())?;
    Ok(file)
}

fn read_line(prompt: &str, hidden: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
    }
    // `stty` turns echo off without unsafe code or another dependency.
    let echo_off = hidden
        && terminal
        && std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo_off {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        eprintln!();
    }
    read.context("reading stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// `lapdev login`.
pub async fn login(
    api: &PeopleRpcClient,
    out: Output,
    user: Option<String>,
    organization: Option<String>,
    with_token: bool,
) -> anyhow::Result<()> {
    let (token, me) = if with_token {
        let token = read_line("Token: ", true)?;
        anyhow::ensure!(
            !token.trim().is_empty(),
            "no token given: type or pipe one on stdin"
        );
        let api = api.with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .context("the token contains characters a header cannot carry")?,
        );
        let me = api.whoami().await.map_err(call_error)?;
        (token.trim().to_owned(), me)
    } else {
        let user = match user {
            Some(u) => u,
            None => read_line("User: ", false)?,
        };
        let password = read_line("Password: ", true)?;
        // Checked here: an empty password would count as a failed sign-in
        // (and start the server's slow-down for this user).
        anyhow::ensure!(
            !password.is_empty(),
            "no password given: type it at the prompt, or pipe it on stdin"
        );
        let signed = api
            .sign_in(organization, user, password, Some("cli".into()))
            .await
            .map_err(call_error)?;
        (signed.token.token_secret, signed.user)
    };
    store_signed_in(out, &token, &me)
}

/// Stores a token from any sign-in and says who signed in.
pub fn store_signed_in(out: Output, token: &str, me: &UserView) -> anyhow::Result<()> {
    let file = store_token(token)?;
    done(
        out,
        json!({"user": me.name, "role": me.role, "token_file": file}),
        &format!(
            "signed in as {} ({}); token stored in {}",
            me.name,
            me.role,
            file.display()
        ),
    )
}

/// `lapdev logout`: revokes the stored token (when the server can be reached)
/// and removes it.
pub async fn logout(api: Option<&PeopleRpcClient>, out: Output) -> anyhow::Result<()> {
    let file = token_file().context("no config directory: set LAPDEV_CONFIG_DIR or HOME")?;
    if let (Some(api), Some(token)) = (api, stored_token()) {
        let prefix: String = token.chars().take(17).collect();
        if let Ok(list) = api.list_tokens().await
            && let Some(t) = list
                .iter()
                .find(|t| t.revoked_at.is_none() && t.display_prefix == prefix)
        {
            api.revoke_token(t.id).await.map_err(call_error)?;
        }
    }
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file.display())),
    }
    done(out, json!({"logged_out": true}), "logged out")
}

fn user_json(u: &UserView) -> Value {
    json!({
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "role": u.role,
        "disabled": u.disabled,
        "created_at": u.created_at,
    })
}

fn pat_json(t: &PatView) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "display_prefix": t.display_prefix,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "last_used_at": t.last_used_at,
        "revoked_at": t.revoked_at,
    })
}

fn audit_json(e: &AuditView) -> Value {
    json!({
        "id": e.id,
        "occurred_at": e.occurred_at,
        "actor": e.actor,
        "actor_id": e.actor_id,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "source_addr": e.source_addr,
        "request_id": e.request_id,
        "detail": e.detail,
    })
}

fn print_user(out: Output, u: &UserView) -> anyhow::Result<()> {
    match out {
        Output::Json => print_json(&user_json(u)),
        Output::Table => print_fields(user_json(u)),
    }
}

/// `lapdev whoami`: the user, and their quota and usage.
pub async fn whoami(
    api: &PeopleRpcClient,
    quotas: &crate::quota::QuotaRpcClient,
    out: Output,
) -> anyhow::Result<()> {
    let mut v = user_json(&api.whoami().await.map_err(call_error)?);
    let quota = super::quota::whoami_quota(quotas).await?;
    if let (Some(user), Value::Object(extra)) = (v.as_object_mut(), quota) {
        for (k, value) in extra {
            // JSON gets the numbers, the table the readable lines.
            if (out == Output::Json) == (k == "quota") {
                user.insert(k, value);
            }
        }
    }
    match out {
        Output::Json => print_json(&v),
        Output::Table => print_fields(v),
    }
}

/// `lapdev token …`.
pub async fn token(api: &PeopleRpcClient, out: Output, cmd: PatCommand) -> anyhow::Result<()> {
    match cmd {
        PatCommand::Create {
            name,
            expires_in_days,
        } => {
            let created = api
                .create_token(name, expires_in_days)
                .await
                .map_err(call_error)?;
            match out {
                Output::Json => {
                    let mut v = pat_json(&created.token);
                    if let Some(m) = v.as_object_mut() {
                        m.insert("token".into(), json!(created.token_secret));
                    }
                    print_json(&v)
                }
                Output::Table => {
                    outln!("{}", created.token_secret)?;
                    eprintln!(
                        "token {} ({}) expires {}; it is not shown again",
                        created.token.name,
                        created.token.id,
                        ts(created.token.expires_at)
                    );
                    Ok(())
                }
            }
        }
        PatCommand::List => {
            let list = api.list_tokens().await.map_err(call_error)?;
            match out {
                Output::Json => print_json(&Value::Array(list.iter().map(pat_json).collect())),
                Output::Table => print_table(
                    &["ID", "NAME", "PREFIX", "EXPIRES", "LAST USED", "REVOKED"],
                    list.iter()
                        .map(|t| {
                            vec![
                                t.id.to_string(),
                                t.name.clone(),
                                t.display_prefix.clone(),
                                ts(t.expires_at),
                                opt_ts(t.last_used_at),
                                opt_ts(t.revoked_at),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        PatCommand::Revoke { token_id } => {
            api.revoke_token(token_id).await.map_err(call_error)?;
            done(
                out,
                json!({"id": token_id, "revoked": true}),
                &format!("revoked token {token_id}"),
            )
        }
    }
}

/// `lapdev user …`.
pub async fn user(api: &PeopleRpcClient, out: Output, cmd: UserCommand) -> anyhow::Result<()> {
    let view = match cmd {
        UserCommand::Create {
            name,
            role,
            email,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(read_line("Password: ", true)?)
            } else {
                None
            };
            api.create_user(name, email, role, password)
                .await
                .map_err(call_error)?
        }
        UserCommand::List => {
            let list = api.list_users().await.map_err(call_error)?;
            return match out {
                Output::Json => print_json(&Value::Array(list.iter().map(user_json).collect())),
                Output::Table => print_table(
                    &["NAME", "ROLE", "DISABLED", "EMAIL", "CREATED"],
                    list.iter()
                        .map(|u| {
                            vec![
                                u.name.clone(),
                                u.role.to_string(),
                                u.disabled.to_string(),
                                u.email.clone().unwrap_or_default(),
                                ts(u.created_at),
                            ]
                        })
                        .collect(),
                ),
            };
        }
        UserCommand::Get { name } => api.get_user(name).await.map_err(call_error)?,
        UserCommand::SetRole { name, role } => {
            api.set_user_role(name, role).await.map_err(call_error)?
        }
        UserCommand::Disable { name } => api
            .set_user_disabled(name, true)
            .await
            .map_err(call_error)?,
        UserCommand::Enable { name } => api
            .set_user_disabled(name, false)
            .await
            .map_err(call_error)?,
        UserCommand::SetPassword { name } => {
            let password = read_line("Password: ", true)?;
            api.set_user_password(name.clone(), password)
                .await
                .map_err(call_error)?;
            return done(
                out,
                json!({"name": name, "password_set": true}),
                &format!("set the password of {name}"),
            );
        }
        UserCommand::Delete { name } => {
            api.delete_user(name.clone()).await.map_err(call_error)?;
            return done(
                out,
                json!({"name": name, "deleted": true}),
                &format!("deleted user {name}"),
            );
        }
    };
    print_user(out, &view)
}

/// `lapdev audit list`.
pub async fn audit(api: &PeopleRpcClient, out: Output, cmd: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::List {
        since,
        actor,
        action,
        limit,
        before,
    } = cmd;
    let page = api
        .list_audit(AuditFilter {
            since,
            actor,
            action,
            before,
            limit: Some(limit),
        })
        .await
        .map_err(call_error)?;
    match out {
        Output::Json => print_json(&json!({
            "entries": page.entries.iter().map(audit_json).collect::<Vec<_>>(),
            "next": page.next,
        })),
        Output::Table => {
            print_table(
                &["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "SOURCE"],
                page.entries
                    .iter()
                    .map(|e| {
                        vec![
                            ts(e.occurred_at),
                            e.actor.clone().unwrap_or_default(),
                            e.action.clone(),
                            e.target.clone().unwrap_or_default(),
                            e.outcome.clone(),
                            e.source_addr.clone().unwrap_or_default(),
                        ]
                    })
                    .collect(),
            )?;
            if let Some(next) = page.next {
                eprintln!("more: --before '{next}'");
            }
            Ok(())
        }
    }
}
