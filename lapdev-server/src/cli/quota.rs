//! `lapdev quota set|get`, `lapdev workspace-policy set|get`,
//! `lapdev workspace keep-alive`, and the quota lines of `lapdev whoami`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use lapdev_common::quantity;
use lapdev_common::quota::{QuotaLimits, QuotaUsage, bytes, cpu};
use lapdev_db::WorkspacePolicy;
use serde_json::{Value, json};

use super::{Output, call_error, print_fields, print_json, print_table};
use crate::idle::api::{TimerView, WorkspaceTimerRpcClient};
use crate::quota::{QuotaRpcClient, QuotaTarget, QuotaView};

/// `lapdev quota …` (setting needs an owner; reading an admin).
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a quota: the organisation's total (default), every member's
    /// default (`--each-member`) or one member's (`--user NAME`). Limits not
    /// given are removed; no limit at all removes the quota.
    Set {
        /// One member's own quota (replaces the default).
        #[arg(long, conflicts_with = "each_member")]
        user: Option<String>,
        /// The default quota of every member.
        #[arg(long)]
        each_member: bool,
        /// Most running workspaces.
        #[arg(long)]
        running: Option<i64>,
        /// Most CPU requested by running workspaces (`8`, `500m`).
        #[arg(long)]
        cpu: Option<String>,
        /// Most memory requested by running workspaces (`32Gi`).
        #[arg(long)]
        memory: Option<String>,
        /// Most home-volume storage requested by all workspaces (`500Gi`).
        #[arg(long)]
        storage: Option<String>,
    },
    /// Every quota of the organisation, with what is requested now.
    Get,
}

/// `lapdev workspace-policy …`: idle timeout, lifetime, volume retention.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set the policy (owners). Durations like `2h`, `30m`, `7d`; a setting
    /// not given returns to its default (no idle stop, no lifetime, 7 days of
    /// retention, a notice 15 minutes before a lifetime stop). Timers apply
    /// from each workspace's next start; retention from the next delete.
    Set {
        /// Idle timeout of workspaces without their own.
        #[arg(long)]
        idle_timeout: Option<String>,
        /// The longest idle timeout a workspace may set for itself.
        #[arg(long)]
        max_idle_timeout: Option<String>,
        /// The longest a workspace runs per start.
        #[arg(long)]
        max_lifetime: Option<String>,
        /// How long a deleted workspace's home volume is kept (`workspace
        /// restore` brings it back until then).
        #[arg(long)]
        volume_retention: Option<String>,
        /// How long before a lifetime stop the workspace is told (default
        /// 15m).
        #[arg(long)]
        lifetime_notice: Option<String>,
    },
    /// Show the policy.
    Get,
}

/// A duration flag in seconds.
fn secs(flag: &str, value: Option<String>) -> anyhow::Result<Option<i64>> {
    value
        .map(|v| {
            let d = humantime::parse_duration(&v)
                .with_context(|| format!("--{flag} {v:?}: a duration like 2h, 30m or 7d"))?;
            i64::try_from(d.as_secs()).with_context(|| format!("--{flag} {v:?} is too long"))
        })
        .transpose()
}

fn duration_text(secs: Option<i64>) -> Value {
    match secs {
        Some(s) => {
            json!(humantime::format_duration(Duration::from_secs(s.max(0) as u64)).to_string())
        }
        None => Value::Null,
    }
}

/// `lapdev quota …`.
pub async fn quota(api: &QuotaRpcClient, out: Output, cmd: QuotaCommand) -> anyhow::Result<()> {
    match cmd {
        QuotaCommand::Set {
            user,
            each_member,
            running,
            cpu,
            memory,
            storage,
        } => {
            let limits = QuotaLimits {
                running_workspaces: running,
                cpu_millis: cpu
                    .map(|c| quantity::parse_cpu_millis(&c).with_context(|| format!("--cpu {c:?}")))
                    .transpose()?,
                memory_bytes: memory
                    .map(|m| quantity::parse_bytes(&m).with_context(|| format!("--memory {m:?}")))
                    .transpose()?,
                storage_bytes: storage
                    .map(|s| quantity::parse_bytes(&s).with_context(|| format!("--storage {s:?}")))
                    .transpose()?,
            };
            let target = match (user, each_member) {
                (Some(user), _) => QuotaTarget::Member(user),
                (None, true) => QuotaTarget::EachMember,
                (None, false) => QuotaTarget::Organization,
            };
            let view = api.set_quota(target, limits).await.map_err(call_error)?;
            match out {
                Output::Json => print_json(&quota_json(&view)),
                Output::Table => print_fields(quota_json(&view)),
            }
        }
        QuotaCommand::Get => {
            let list = api.list_quotas().await.map_err(call_error)?;
            match out {
                Output::Json => print_json(&Value::Array(list.iter().map(quota_json).collect())),
                Output::Table => print_table(
                    &["QUOTA", "RUNNING", "CPU", "MEMORY", "STORAGE"],
                    list.iter()
                        .map(|q| {
                            let u = q.usage.unwrap_or_default();
                            vec![
                                q.target.clone(),
                                used_of(
                                    q.usage.map(|_| u.running_workspaces.to_string()),
                                    q.limits.running_workspaces.map(|l| l.to_string()),
                                ),
                                used_of(
                                    q.usage.map(|_| cpu(u.cpu_millis)),
                                    q.limits.cpu_millis.map(cpu),
                                ),
                                used_of(
                                    q.usage.map(|_| bytes(u.memory_bytes)),
                                    q.limits.memory_bytes.map(bytes),
                                ),
                                used_of(
                                    q.usage.map(|_| bytes(u.storage_bytes)),
                                    q.limits.storage_bytes.map(bytes),
                                ),
                            ]
                        })
                        .collect(),
                ),
            }
        }
    }
}

/// `6 / 8`, `6 / -` (no limit), `- / 8` (a default: no usage of its own).
fn used_of(used: Option<String>, limit: Option<String>) -> String {
    format!(
        "{} / {}",
        used.unwrap_or_else(|| "-".into()),
        limit.unwrap_or_else(|| "-".into())
    )
}

fn limits_json(l: &QuotaLimits) -> Value {
    json!({
        "running_workspaces": l.running_workspaces,
        "cpu_millis": l.cpu_millis,
        "memory_bytes": l.memory_bytes,
        "storage_bytes": l.storage_bytes,
    })
}

fn usage_json(u: &QuotaUsage) -> Value {
    json!({
        "running_workspaces": u.running_workspaces,
        "cpu_millis": u.cpu_millis,
        "memory_bytes": u.memory_bytes,
        "storage_bytes": u.storage_bytes,
    })
}

fn quota_json(q: &QuotaView) -> Value {
    json!({
        "quota": q.target,
        "limits": limits_json(&q.limits),
        "usage": q.usage.as_ref().map(usage_json),
    })
}

/// The quota lines `lapdev whoami` adds to the user's fields.
pub async fn whoami_quota(api: &QuotaRpcClient) -> anyhow::Result<Value> {
    let mine = api.my_quota().await.map_err(call_error)?;
    let line = |u: &QuotaUsage, l: &QuotaLimits| {
        format!(
            "running {}, CPU {}, memory {}, storage {}",
            used_of(
                Some(u.running_workspaces.to_string()),
                l.running_workspaces.map(|v| v.to_string())
            ),
            used_of(Some(cpu(u.cpu_millis)), l.cpu_millis.map(cpu)),
            used_of(Some(bytes(u.memory_bytes)), l.memory_bytes.map(bytes)),
            used_of(Some(bytes(u.storage_bytes)), l.storage_bytes.map(bytes)),
        )
    };
    Ok(json!({
        "quota": {
            "member": { "limits": limits_json(&mine.member), "usage": usage_json(&mine.member_usage) },
            "organization": { "limits": limits_json(&mine.organization), "usage": usage_json(&mine.organization_usage) },
        },
        "your usage": line(&mine.member_usage, &mine.member),
        "organisation usage": line(&mine.organization_usage, &mine.organization),
    }))
}

/// `lapdev workspace-policy …`.
pub async fn policy(
    api: &WorkspaceTimerRpcClient,
    out: Output,
    cmd: PolicyCommand,
) -> anyhow::Result<()> {
    let policy = match cmd {
        PolicyCommand::Set {
            idle_timeout,
            max_idle_timeout,
            max_lifetime,
            volume_retention,
            lifetime_notice,
        } => {
            let policy = WorkspacePolicy {
                idle_timeout_secs: secs("idle-timeout", idle_timeout)?,
                max_idle_timeout_secs: secs("max-idle-timeout", max_idle_timeout)?,
                max_lifetime_secs: secs("max-lifetime", max_lifetime)?,
                volume_retention_secs: secs("volume-retention", volume_retention)?,
                lifetime_notice_secs: secs("lifetime-notice", lifetime_notice)?,
            };
            api.set_workspace_policy(policy).await.map_err(call_error)?
        }
        PolicyCommand::Get => api.get_workspace_policy().await.map_err(call_error)?,
    };
    let v = json!({
        "idle_timeout": duration_text(policy.idle_timeout_secs),
        "max_idle_timeout": duration_text(policy.max_idle_timeout_secs),
        "max_lifetime": duration_text(policy.max_lifetime_secs),
        "volume_retention": duration_text(Some(
            policy
                .volume_retention_secs
                .unwrap_or(lapdev_db::DEFAULT_VOLUME_RETENTION_SECS)
        )),
        "lifetime_notice": duration_text(Some(
            policy
                .lifetime_notice_secs
                .unwrap_or(lapdev_db::DEFAULT_LIFETIME_NOTICE_SECS)
        )),
    });
    match out {
        Output::Json => print_json(&v),
        Output::Table => print_fields(v),
    }
}

/// `lapdev workspace keep-alive NAME [--idle-timeout 4h]`.
pub async fn keep_alive(
    api: &WorkspaceTimerRpcClient,
    out: Output,
    name: String,
    idle_timeout: Option<String>,
) -> anyhow::Result<()> {
    let own = secs("idle-timeout", idle_timeout)?;
    let view = api
        .keep_alive_workspace(name, own)
        .await
        .map_err(call_error)?;
    let v = timer_json(&view);
    match out {
        Output::Json => print_json(&v),
        Output::Table => print_fields(v),
    }
}

/// A workspace's timers as `-o json` prints them.
pub fn timer_json(t: &TimerView) -> Value {
    json!({
        "stops_at": t.stops_at,
        "stops_for": t.stops_for,
        "idle_timeout": duration_text(t.effective_idle_timeout_secs),
        "last_active_at": t.last_active_at,
    })
}
