//! Quotas on what workspaces request, and the check that admits a workspace
//! (pure: the database layer sums the usage and calls [`check`] inside the
//! transaction that creates or starts the workspace).
//!
//! A quota has four optional limits: running workspaces (desired state
//! `running`), the CPU and memory those request, and the storage every live
//! workspace requests (a stopped workspace keeps its volume). An organisation
//! has a total ([`QuotaScope::Organization`]), a default for each member
//! ([`QuotaScope::EachMember`]) and per-member limits that replace the default
//! ([`QuotaScope::Member`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    /// Workspaces whose desired state is `running`.
    #[serde(default)]
    pub running_workspaces: Option<i64>,
    /// CPU in millicores requested by running workspaces.
    #[serde(default)]
    pub cpu_millis: Option<i64>,
    /// Memory in bytes requested by running workspaces.
    #[serde(default)]
    pub memory_bytes: Option<i64>,
    /// Home-volume storage in bytes requested by all live workspaces.
    #[serde(default)]
    pub storage_bytes: Option<i64>,
}

impl QuotaLimits {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == QuotaLimits::default()
    }

    /// The first negative limit's name, if any.
    pub fn negative_field(&self) -> Option<&'static str> {
        [
            ("running_workspaces", self.running_workspaces),
            ("cpu_millis", self.cpu_millis),
            ("memory_bytes", self.memory_bytes),
            ("storage_bytes", self.storage_bytes),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| v < 0))
        .map(|(name, _)| name)
    }
}

/// What is requested now (or what one workspace adds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    /// Workspaces whose desired state is `running`.
    pub running_workspaces: i64,
    /// CPU in millicores requested by running workspaces.
    pub cpu_millis: i64,
    /// Memory in bytes requested by running workspaces.
    pub memory_bytes: i64,
    /// Storage in bytes requested by all live workspaces.
    pub storage_bytes: i64,
}

/// Whose quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaScope {
    /// The organisation's total.
    Organization,
    /// The default limit of every member.
    EachMember,
    /// One member's own limit (replaces [`QuotaScope::EachMember`]).
    Member(Uuid),
}

impl QuotaScope {
    /// How the scope is stored (`organization`, `each_member`, a user's id).
    pub fn subject(&self) -> String {
        match self {
            QuotaScope::Organization => "organization".to_owned(),
            QuotaScope::EachMember => "each_member".to_owned(),
            QuotaScope::Member(id) => id.to_string(),
        }
    }

    /// The scope stored as `subject`, if it is one.
    pub fn from_subject(subject: &str) -> Option<QuotaScope> {
        match subject {
            "organization" => Some(QuotaScope::Organization),
            "each_member" => Some(QuotaScope::EachMember),
            other => other.parse().ok().map(QuotaScope::Member),
        }
    }
}

/// Which limit a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaResource {
    /// Running workspaces.
    RunningWorkspaces,
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
    /// Storage.
    Storage,
}

impl QuotaResource {
    /// The label used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            QuotaResource::RunningWorkspaces => "running_workspaces",
            QuotaResource::Cpu => "cpu",
            QuotaResource::Memory => "memory",
            QuotaResource::Storage => "storage",
        }
    }
}

/// Whose limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaHolder {
    /// The member creating or starting the workspace.
    Member,
    /// The whole organisation.
    Organization,
}

impl QuotaHolder {
    /// The label used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            QuotaHolder::Member => "member",
            QuotaHolder::Organization => "organization",
        }
    }
}

/// A refusal, in numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct QuotaExceeded {
    /// Whose limit.
    pub holder: QuotaHolder,
    /// Which limit.
    pub resource: QuotaResource,
    /// What is requested now.
    pub used: i64,
    /// The limit.
    pub limit: i64,
    /// What the workspace would add.
    pub needs: i64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.holder {
            QuotaHolder::Member => "your",
            QuotaHolder::Organization => "the organisation's",
        };
        match self.resource {
            QuotaResource::RunningWorkspaces => write!(
                f,
                "{whose} running workspaces are {} of {} allowed; stop one first",
                self.used, self.limit
            ),
            QuotaResource::Cpu => write!(
                f,
                "{whose} running workspaces request {} of {} CPU; this one needs {}",
                cpu(self.used),
                cpu(self.limit),
                cpu(self.needs)
            ),
            QuotaResource::Memory => write!(
                f,
                "{whose} running workspaces request {} of {} memory; this one needs {}",
                bytes(self.used),
                bytes(self.limit),
                bytes(self.needs)
            ),
            QuotaResource::Storage => write!(
                f,
                "{whose} workspaces request {} of {} storage; this one needs {}",
                bytes(self.used),
                bytes(self.limit),
                bytes(self.needs)
            ),
        }
    }
}

/// Admits `needs` on top of `used` under `limits`, or says which limit refuses
/// (the first of running workspaces, CPU, memory, storage that would be
/// exceeded).
pub fn check(
    holder: QuotaHolder,
    limits: &QuotaLimits,
    used: &QuotaUsage,
    needs: &QuotaUsage,
) -> Result<(), QuotaExceeded> {
    let rows = [
        (
            QuotaResource::RunningWorkspaces,
            limits.running_workspaces,
            used.running_workspaces,
            needs.running_workspaces,
        ),
        (
            QuotaResource::Cpu,
            limits.cpu_millis,
            used.cpu_millis,
            needs.cpu_millis,
        ),
        (
            QuotaResource::Memory,
            limits.memory_bytes,
            used.memory_bytes,
            needs.memory_bytes,
        ),
        (
            QuotaResource::Storage,
            limits.storage_bytes,
            used.storage_bytes,
            needs.storage_bytes,
        ),
    ];
    for (resource, limit, used, needs) in rows {
        let Some(limit) = limit else { continue };
        if needs > 0 && used.saturating_add(needs) > limit {
            return Err(QuotaExceeded {
                holder,
                resource,
                used,
                limit,
                needs,
            });
        }
    }
    Ok(())
}

/// Millicores as CPUs: `4`, `1.5`, `0.25`.
pub fn cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        return (millis / 1000).to_string();
    }
    let s = format!("{}.{:03}", millis / 1000, (millis % 1000).abs());
    s.trim_end_matches('0').to_owned()
}

/// Bytes in the largest binary unit that keeps two decimals meaningful:
/// `16 GiB`, `1.5 GiB`, `512 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n.abs() >= size {
            let value = n as f64 / size as f64;
            let text = format!("{value:.2}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            return format!("{text} {unit}");
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;

    #[test]
    fn the_refusal_says_it_in_numbers() {
        let limits = QuotaLimits {
            cpu_millis: Some(8000),
            ..Default::default()
        };
        let used = QuotaUsage {
            running_workspaces: 3,
            cpu_millis: 6000,
            ..Default::default()
        };
        let needs = QuotaUsage {
            running_workspaces: 1,
            cpu_millis: 4000,
            ..Default::default()
        };
        let e = check(QuotaHolder::Member, &limits, &used, &needs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "your running workspaces request 6 of 8 CPU; this one needs 4"
        );
        assert_eq!(e.resource, QuotaResource::Cpu);
        // Exactly at the limit is allowed.
        let fits = QuotaUsage {
            cpu_millis: 2000,
            ..needs
        };
        check(QuotaHolder::Member, &limits, &used, &fits).unwrap();
    }

    #[test]
    fn each_limit_refuses_for_itself() {
        let limits = QuotaLimits {
            running_workspaces: Some(2),
            cpu_millis: None,
            memory_bytes: Some(16 * GIB),
            storage_bytes: Some(100 * GIB),
        };
        let used = QuotaUsage {
            running_workspaces: 1,
            cpu_millis: 99_000,
            memory_bytes: 12 * GIB,
            storage_bytes: 90 * GIB,
        };
        let memory = check(
            QuotaHolder::Organization,
            &limits,
            &used,
            &QuotaUsage {
                running_workspaces: 1,
                cpu_millis: 1000,
                memory_bytes: 8 * GIB,
                storage_bytes: 0,
            },
        )
        .unwrap_err();
        assert_eq!(
            memory.to_string(),
            "the organisation's running workspaces request 12 GiB of 16 GiB memory; this one needs 8 GiB"
        );
        let storage = check(
            QuotaHolder::Member,
            &limits,
            &used,
            &QuotaUsage {
                storage_bytes: 20 * GIB,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(storage.resource, QuotaResource::Storage);
        let running = check(
            QuotaHolder::Member,
            &limits,
            &QuotaUsage {
                running_workspaces: 2,
                ..Default::default()
            },
            &QuotaUsage {
                running_workspaces: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            running.to_string(),
            "your running workspaces are 2 of 2 allowed; stop one first"
        );
        // Asking for nothing more never fails, even over a lowered limit.
        check(QuotaHolder::Member, &limits, &used, &QuotaUsage::default()).unwrap();
    }

    #[test]
    fn units_read_well() {
        assert_eq!(cpu(1500), "1.5");
        assert_eq!(cpu(250), "0.25");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(10), "10 B");
    }

    #[test]
    fn scopes_round_trip() {
        let id = Uuid::new_v4();
        for s in [
            QuotaScope::Organization,
            QuotaScope::EachMember,
            QuotaScope::Member(id),
        ] {
            assert_eq!(QuotaScope::from_subject(&s.subject()), Some(s));
        }
        assert_eq!(QuotaScope::from_subject("nobody"), None);
    }
}
