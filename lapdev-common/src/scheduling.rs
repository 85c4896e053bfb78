//! Where a cluster's workspaces may run: the per-node capacity a manager
//! reports ([`NodeCapacity`]), the admin's per-cluster scheduling settings
//! ([`SchedulingSettings`]: node selector, tolerations, architecture, image
//! pull secrets, priority class) and what an autoscaling cluster can add
//! ([`Autoscaling`]).
//!
//! The settings decide which reported nodes can take a workspace
//! ([`SchedulingSettings::admits`]) with the scheduler's own rules: a node must
//! match every node-selector label and the architecture, and each of its
//! `NoSchedule`/`NoExecute` taints must be tolerated. The manager already drops
//! nodes no workspace can use whatever the settings (not Ready, cordoned, not
//! Linux), so a settings change takes effect at the next placement, with no
//! round trip to the manager.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The node label naming a node's CPU architecture.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";
/// The node label naming a node's operating system.
pub const OS_LABEL: &str = "kubernetes.io/os";

/// A node a workspace could be scheduled on, as its manager reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// The node's name.
    pub name: String,
    /// Allocatable CPU, millicores.
    pub cpu_allocatable_millis: i64,
    /// Allocatable memory, bytes.
    pub memory_allocatable_bytes: i64,
    /// Requests of Lapdev's pods bound to the node, millicores.
    pub cpu_lapdev_millis: i64,
    /// Requests of Lapdev's pods bound to the node, bytes.
    pub memory_lapdev_bytes: i64,
    /// Requests of other pods bound to the node (0 unless the cluster counts
    /// every pod: `capacity: pods`), millicores.
    #[serde(default)]
    pub cpu_other_millis: i64,
    /// See `cpu_other_millis`, bytes.
    #[serde(default)]
    pub memory_other_bytes: i64,
    /// Its `NoSchedule` and `NoExecute` taints (others never block scheduling).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Its labels (node selectors and the architecture are matched against them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl NodeCapacity {
    /// CPU not requested by anyone, millicores (never negative).
    pub fn free_cpu_millis(&self) -> i64 {
        (self.cpu_allocatable_millis - self.cpu_lapdev_millis - self.cpu_other_millis).max(0)
    }

    /// Memory not requested by anyone, bytes (never negative).
    pub fn free_memory_bytes(&self) -> i64 {
        (self.memory_allocatable_bytes - self.memory_lapdev_bytes - self.memory_other_bytes).max(0)
    }
}

/// What a taint does to pods that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New pods are not scheduled there.
    NoSchedule,
    /// The scheduler avoids the node but may use it.
    PreferNoSchedule,
    /// New pods are not scheduled there and running ones are evicted.
    NoExecute,
}

impl TaintEffect {
    /// The effect as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }

    /// Parses Kubernetes' spelling.
    pub fn parse(s: &str) -> Option<TaintEffect> {
        match s {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }

    /// True for the effects that keep an intolerant pod off the node.
    pub fn blocks_scheduling(self) -> bool {
        matches!(self, TaintEffect::NoSchedule | TaintEffect::NoExecute)
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    /// The taint's key.
    pub key: String,
    /// Its value (empty when none).
    #[serde(default)]
    pub value: String,
    /// Its effect.
    pub effect: TaintEffect,
}

/// How a toleration matches a taint's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TolerationOperator {
    /// Key and value must be equal.
    #[default]
    Equal,
    /// The key must exist (any value); an empty key matches every taint.
    Exists,
}

/// A pod toleration, with Kubernetes' semantics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    /// The taint key it matches; empty (with `Exists`) matches every key.
    #[serde(default)]
    pub key: String,
    /// How the value is matched.
    #[serde(default)]
    pub operator: TolerationOperator,
    /// The value for `Equal`.
    #[serde(default)]
    pub value: String,
    /// The effect it matches; `None` matches every effect.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether this toleration tolerates `taint` (the scheduler's rule).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }

    /// Parses the CLI form: `key=value:Effect`, `key:Effect`, `key` (exists,
    /// any effect), `key=value`, or `:Effect` / `*` for every key.
    pub fn parse(s: &str) -> Result<Toleration, SchedulingError> {
        let bad = |why: &str| SchedulingError::Toleration(format!("{s:?}: {why}"));
        let (rest, effect) = match s.rsplit_once(':') {
            Some((rest, effect)) => (
                rest,
                Some(TaintEffect::parse(effect).ok_or_else(|| {
                    bad("the effect must be NoSchedule, PreferNoSchedule or NoExecute")
                })?),
            ),
            None => (s, None),
        };
        let t = match rest.split_once('=') {
            _ if rest.is_empty() || rest == "*" => Toleration {
                key: String::new(),
                operator: TolerationOperator::Exists,
                value: String::new(),
                effect,
            },
            Some((key, value)) => Toleration {
                key: key.to_owned(),
                operator: TolerationOperator::Equal,
                value: value.to_owned(),
                effect,
            },
            None => Toleration {
                key: rest.to_owned(),
                operator: TolerationOperator::Exists,
                value: String::new(),
                effect,
            },
        };
        t.validate()?;
        Ok(t)
    }

    fn validate(&self) -> Result<(), SchedulingError> {
        let bad = |why: String| Err(SchedulingError::Toleration(why));
        if self.key.is_empty() {
            if self.operator != TolerationOperator::Exists {
                return bad("a toleration without a key must use Exists".into());
            }
        } else if let Err(why) = check_label_key(&self.key) {
            return bad(format!("key {:?}: {why}", self.key));
        }
        if self.operator == TolerationOperator::Exists && !self.value.is_empty() {
            return bad("an Exists toleration takes no value".into());
        }
        if let Err(why) = check_label_value(&self.value) {
            return bad(format!("value {:?}: {why}", self.value));
        }
        Ok(())
    }
}

impl fmt::Display for Toleration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operator {
            TolerationOperator::Exists if self.key.is_empty() => f.write_str("*")?,
            TolerationOperator::Exists => f.write_str(&self.key)?,
            TolerationOperator::Equal => write!(f, "{}={}", self.key, self.value)?,
        }
        if let Some(e) = self.effect {
            write!(f, ":{}", e.as_str())?;
        }
        Ok(())
    }
}

/// The admin's per-cluster scheduling settings, applied to every workspace
/// pod of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulingSettings {
    /// Labels a node must have (the pod's `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The CPU architecture (`kubernetes.io/arch`, e.g. `amd64`, `arm64`); any
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Names of Secrets in the workspace namespace used to pull images. The
    /// admin creates them; the manager never reads them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// The pods' `priorityClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// Run workspace pods in their own user namespace (`hostUsers: false`):
    /// root in the container is an unprivileged user on the node. Needs a
    /// cluster that supports it (Kubernetes 1.33+ with a container runtime
    /// and kernel that do, e.g. containerd 2 on Linux 6.3+); elsewhere the
    /// pods fail to start, so it is off unless the admin turns it on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_namespaces: bool,
}

/// A scheduling setting is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulingError {
    /// A node-selector label key or value.
    #[error("invalid node selector: {0}")]
    NodeSelector(String),
    /// A toleration.
    #[error("invalid toleration {0}")]
    Toleration(String),
    /// The architecture.
    #[error("invalid architecture {0:?}: must be a label value such as amd64 or arm64")]
    Arch(String),
    /// An image pull secret's name.
    #[error("invalid image pull secret {0:?}: must be a DNS subdomain name")]
    ImagePullSecret(String),
    /// The priority class's name.
    #[error("invalid priority class {0:?}: must be a DNS subdomain name")]
    PriorityClass(String),
    /// The autoscaling limits.
    #[error("invalid autoscaling limits: {0}")]
    Autoscaling(String),
}

impl SchedulingSettings {
    /// Checks every setting against Kubernetes' syntax, so a pod built from them
    /// is never refused by the API server for its form.
    pub fn validate(&self) -> Result<(), SchedulingError> {
        for (k, v) in &self.node_selector {
            check_label_key(k)
                .map_err(|why| SchedulingError::NodeSelector(format!("key {k:?}: {why}")))?;
            check_label_value(v)
                .map_err(|why| SchedulingError::NodeSelector(format!("value {v:?}: {why}")))?;
        }
        for t in &self.tolerations {
            t.validate()?;
        }
        if let Some(a) = &self.arch
            && (a.is_empty() || check_label_value(a).is_err())
        {
            return Err(SchedulingError::Arch(a.clone()));
        }
        for s in &self.image_pull_secrets {
            if !is_dns_subdomain(s) {
                return Err(SchedulingError::ImagePullSecret(s.clone()));
            }
        }
        if let Some(p) = &self.priority_class
            && !is_dns_subdomain(p)
        {
            return Err(SchedulingError::PriorityClass(p.clone()));
        }
        Ok(())
    }

    /// Whether a workspace pod built with these settings could be scheduled on
    /// `node`: every node-selector label and the architecture match, and every
    /// `NoSchedule`/`NoExecute` taint is tolerated.
    pub fn admits(&self, node: &NodeCapacity) -> bool {
        let selector_ok = self
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v));
        let arch_ok = self
            .arch
            .as_ref()
            .is_none_or(|a| node.labels.get(ARCH_LABEL) == Some(a));
        let taints_ok = node
            .taints
            .iter()
            .filter(|t| t.effect.blocks_scheduling())
            .all(|t| self.tolerations.iter().any(|tol| tol.tolerates(t)));
        selector_ok && arch_ok && taints_ok
    }

    /// The node selector the pod gets: the admin's plus the architecture, and
    /// always `kubernetes.io/os: linux`, so the scheduler keeps workspaces off
    /// Windows nodes as placement does (capacity counts Linux nodes only).
    pub fn pod_node_selector(&self) -> BTreeMap<String, String> {
        let mut s = self.node_selector.clone();
        s.insert(OS_LABEL.to_owned(), "linux".to_owned());
        if let Some(a) = &self.arch {
            s.insert(ARCH_LABEL.to_owned(), a.clone());
        }
        s
    }
}

/// The largest node an autoscaling cluster can add, declared by the admin or
/// detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoscaling {
    /// The CPU of the largest node the autoscaler can add (for GKE Autopilot: the
    /// largest pod it accepts), millicores.
    pub max_node_cpu_millis: i64,
    /// Its memory, bytes.
    pub max_node_memory_bytes: i64,
    /// How many nodes the cluster may have at most, when known.
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// The maximums are per pod, not per node (GKE Autopilot refuses a larger
    /// pod whatever its nodes), so they bound every workspace, even one that a
    /// current node could hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_pod_limit: bool,
}

impl Autoscaling {
    /// GKE Autopilot's per-pod maximums for the default (general-purpose)
    /// compute class, 30 vCPU and 110 GiB ("Resource requests in Autopilot" in
    /// GKE's documentation): Autopilot adds a node for any pod within them.
    pub const GKE_AUTOPILOT: Autoscaling = Autoscaling {
        max_node_cpu_millis: 30_000,
        max_node_memory_bytes: 110 << 30,
        max_nodes: None,
        per_pod_limit: true,
    };

    /// Whether a workspace of this size is within the per-pod maximums (always,
    /// when the maximums are per node).
    pub fn admits_pod(&self, cpu_millis: i64, memory_bytes: i64) -> bool {
        !self.per_pod_limit
            || (cpu_millis <= self.max_node_cpu_millis
                && memory_bytes <= self.max_node_memory_bytes)
    }

    /// Parses the CLI form `max-node-cpu,max-node-memory[,max-nodes]` (CPU and
    /// memory in Kubernetes quantity syntax, e.g. `16,64Gi,20`).
    pub fn parse(s: &str) -> Result<Autoscaling, SchedulingError> {
        let bad = |why: String| SchedulingError::Autoscaling(format!("{s:?}: {why}"));
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad(
                "expected max-node-cpu,max-node-memory[,max-nodes]".into()
            ));
        }
        let cpu = crate::quantity::parse_cpu_millis(parts[0])
            .map_err(|e| bad(format!("max-node-cpu: {e}")))?;
        let mem = crate::quantity::parse_bytes(parts[1])
            .map_err(|e| bad(format!("max-node-memory: {e}")))?;
        if cpu <= 0 || mem <= 0 {
            return Err(bad(
                "max-node-cpu and max-node-memory must be positive".into()
            ));
        }
        let max_nodes = parts
            .get(2)
            .map(|n| {
                n.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("max-nodes must be a positive whole number".into()))
            })
            .transpose()?;
        Ok(Autoscaling {
            max_node_cpu_millis: cpu,
            max_node_memory_bytes: mem,
            max_nodes,
            per_pod_limit: false,
        })
    }
}

fn check_label_value(v: &str) -> Result<(), &'static str> {
    if v.len() > 63 {
        return Err("must be at most 63 characters");
    }
    if v.is_empty() {
        return Ok(());
    }
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let bytes = v.as_bytes();
    if !bytes.iter().all(|b| ok_char(*b))
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return Err(
            "must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
        );
    }
    Ok(())
}

fn check_label_key(k: &str) -> Result<(), &'static str> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Err("the prefix must be a DNS subdomain");
    }
    if name.is_empty() {
        return Err("the name must not be empty");
    }
    check_label_value(name)
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests;
