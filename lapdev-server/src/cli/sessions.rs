//! `lapdev session list|revoke`: your browser sessions and personal access
//! tokens (with their last use and the shell, exec and port-forward sessions
//! each holds open), and revoking one by id. Owners may name another user
//! (`--user`) and revoke anyone's in their organisation.

use clap::Subcommand;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Output, call_error, done, opt_ts, print_json, print_table, ts};
use crate::auth::api::{PeopleRpcClient, SessionKindView, SessionView};

/// `lapdev session …`.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List your live browser sessions and your tokens with their last use.
    List {
        /// Another user's (owners only).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a browser session or token by id: it is refused from the next
    /// call on and the shells, exec and port-forward sessions it opened end at
    /// once. Owners may revoke anyone's in their organisation.
    Revoke {
        /// The id `lapdev session list` shows.
        id: Uuid,
    },
}

fn kind(k: SessionKindView) -> &'static str {
    match k {
        SessionKindView::Browser => "browser",
        SessionKindView::Token => "token",
    }
}

fn session_json(s: &SessionView) -> Value {
    json!({
        "id": s.id,
        "kind": kind(s.kind),
        "name": s.name,
        "created_at": s.created_at,
        "last_used_at": s.last_used_at,
        "idle_expires_at": s.idle_expires_at,
        "expires_at": s.expires_at,
        "revoked_at": s.revoked_at,
        "current": s.current,
        "open_sessions": s.open_sessions,
    })
}

/// Runs `cmd`.
pub async fn session(
    api: &PeopleRpcClient,
    out: Output,
    cmd: SessionCommand,
) -> anyhow::Result<()> {
    match cmd {
        SessionCommand::List { user } => {
            let list = api.list_sessions(user).await.map_err(call_error)?;
            match out {
                Output::Json => print_json(&json!({
                    "user": list.user,
                    "sessions": list.sessions.iter().map(session_json).collect::<Vec<_>>(),
                })),
                Output::Table => print_table(
                    &[
                        "ID",
                        "KIND",
                        "NAME",
                        "CREATED",
                        "LAST USED",
                        "EXPIRES",
                        "REVOKED",
                        "OPEN",
                    ],
                    list.sessions
                        .iter()
                        .map(|s| {
                            let mark = if s.current { " (this one)" } else { "" };
                            vec![
                                format!("{}{mark}", s.id),
                                kind(s.kind).to_owned(),
                                s.name.clone().unwrap_or_default(),
                                ts(s.created_at),
                                opt_ts(s.last_used_at),
                                ts(s.idle_expires_at.unwrap_or(s.expires_at).min(s.expires_at)),
                                opt_ts(s.revoked_at),
                                s.open_sessions.to_string(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        SessionCommand::Revoke { id } => {
            api.revoke_session(id).await.map_err(call_error)?;
            done(
                out,
                json!({"id": id, "revoked": true}),
                &format!("revoked {id}"),
            )
        }
    }
}
