//! Per-node schedulable capacity: pure functions from what the manager keeps of
//! nodes and pods to the [`NodeCapacity`] list it reports, plus the rule that
//! decides when a new list is worth reporting.
//!
//! - A node counts when it is Ready, not cordoned and Linux
//!   ([`NodePlacementFacts::counts`]). Which of those nodes a cluster's
//!   workspaces can use (architecture, node selector, tolerations) depends on
//!   the admin's settings and is decided by the server
//!   ([`lapdev_common::scheduling::SchedulingSettings::admits`]), so a settings
//!   change needs no manager round trip.
//! - A pod's requests follow the scheduler ([`pod_requests`]).
//! - Reports are coalesced ([`Coalescing`]): pod churn republishes at most once
//!   per interval, and only when some node's free room moved by more than a
//!   threshold.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Node, PodSpec};
use lapdev_common::kube::KubeClusterInfo;
use lapdev_common::quantity::{parse_bytes, parse_cpu_millis};
use lapdev_common::scheduling::{Autoscaling, NodeCapacity, OS_LABEL, Taint, TaintEffect};

pub mod state;
pub mod trimmed;

/// CPU and memory requested by a pod, or summed over pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Millicores.
    pub cpu_millis: i64,
    /// Bytes.
    pub memory_bytes: i64,
}

impl Requests {
    fn add(self, o: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
        }
    }

    fn sub(self, o: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
        }
    }

    fn max(self, o: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.max(o.cpu_millis),
            memory_bytes: self.memory_bytes.max(o.memory_bytes),
        }
    }
}

fn container_requests(c: &Container) -> Requests {
    let res = c.resources.as_ref();
    // The API server defaults a missing request to the limit; objects that
    // skipped defaulting (older stores, the double) get the same rule here.
    let get = |key: &str, parse: fn(&str) -> Result<i64, _>| {
        res.and_then(|r| {
            r.requests
                .as_ref()
                .and_then(|m| m.get(key))
                .or_else(|| r.limits.as_ref().and_then(|m| m.get(key)))
        })
        .and_then(|q| parse(&q.0).ok())
        .unwrap_or(0)
        .max(0)
    };
    Requests {
        cpu_millis: get("cpu", parse_cpu_millis),
        memory_bytes: get("memory", parse_bytes),
    }
}

/// The pod's requests as the scheduler counts them: the larger of (the
/// containers plus the sidecar init containers, `restartPolicy: Always`) and
/// the largest init container (plus the sidecars started before it), plus the
/// pod overhead.
pub fn pod_requests(spec: &PodSpec) -> Requests {
    let mut sidecars = Requests::default();
    let mut init_peak = Requests::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.add(r);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars.add(r));
        }
    }
    let app = spec
        .containers
        .iter()
        .map(container_requests)
        .fold(sidecars, Requests::add);
    let overhead = spec
        .overhead
        .as_ref()
        .map(|o| Requests {
            cpu_millis: o
                .get("cpu")
                .and_then(|q| parse_cpu_millis(&q.0).ok())
                .unwrap_or(0),
            memory_bytes: o
                .get("memory")
                .and_then(|q| parse_bytes(&q.0).ok())
                .unwrap_or(0),
        })
        .unwrap_or_default();
    app.max(init_peak).add(overhead)
}

/// Whether a pod in `phase` still holds its node's resources (the scheduler
/// frees them when the pod ends).
pub fn holds_resources(phase: &str) -> bool {
    !matches!(phase, "Succeeded" | "Failed")
}

/// What placement needs of a node beyond its size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlacementFacts {
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Its `kubernetes.io/os` label.
    pub os: Option<String>,
    /// Its `NoSchedule` and `NoExecute` taints.
    pub taints: Vec<Taint>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl NodePlacementFacts {
    /// The facts of a node.
    pub fn from_node(node: &Node) -> Self {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        Self {
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            os: labels.get(OS_LABEL).cloned(),
            taints: spec
                .and_then(|s| s.taints.as_deref())
                .unwrap_or_default()
                .iter()
                .filter_map(|t| {
                    let effect = TaintEffect::parse(&t.effect)?;
                    effect.blocks_scheduling().then(|| Taint {
                        key: t.key.clone(),
                        value: t.value.clone().unwrap_or_default(),
                        effect,
                    })
                })
                .collect(),
            labels,
        }
    }

    /// Whether a workspace could ever run there, whatever the cluster's
    /// settings: not cordoned and Linux (a node without the OS label, which
    /// every kubelet sets, is taken for Linux). Readiness is checked apart.
    pub fn counts(&self) -> bool {
        !self.unschedulable && self.os.as_deref().is_none_or(|os| os == "linux")
    }
}

/// GKE Autopilot, told by its nodes' labels: Autopilot adds nodes for any pod
/// within its per-pod maximums.
pub fn detect_autoscaling<'a>(
    labels: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> Option<Autoscaling> {
    labels
        .into_iter()
        .any(|l| {
            l.keys().any(|k| k.starts_with("autopilot.gke.io/"))
                || l.get("cloud.google.com/gke-autopilot").map(String::as_str) == Some("true")
        })
        .then_some(Autoscaling::GKE_AUTOPILOT)
}

/// One node as the capacity list needs it.
#[derive(Debug, Clone, Copy)]
pub struct NodeInput<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Allocatable CPU, millicores.
    pub cpu_allocatable_millis: i64,
    /// Allocatable memory, bytes.
    pub memory_allocatable_bytes: i64,
    /// Ready.
    pub ready: bool,
    /// The rest.
    pub facts: &'a NodePlacementFacts,
}

/// The reported list: every node that counts, with Lapdev's and other pods'
/// requests bound to it, sorted by name.
pub fn node_capacities<'a>(
    nodes: impl IntoIterator<Item = NodeInput<'a>>,
    lapdev: &HashMap<String, Requests>,
    other: &HashMap<String, Requests>,
) -> Vec<NodeCapacity> {
    let mut out: Vec<NodeCapacity> = nodes
        .into_iter()
        .filter(|n| n.ready && n.facts.counts())
        .map(|n| {
            let l = lapdev.get(n.name).copied().unwrap_or_default();
            let o = other.get(n.name).copied().unwrap_or_default();
            NodeCapacity {
                name: n.name.to_owned(),
                cpu_allocatable_millis: n.cpu_allocatable_millis,
                memory_allocatable_bytes: n.memory_allocatable_bytes,
                cpu_lapdev_millis: l.cpu_millis,
                memory_lapdev_bytes: l.memory_bytes,
                cpu_other_millis: o.cpu_millis,
                memory_other_bytes: o.memory_bytes,
                taints: n.facts.taints.clone(),
                labels: n.facts.labels.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Per-node sums of requests, kept up to date one pod at a time.
#[derive(Debug, Default)]
pub struct RequestsByNode {
    pods: HashMap<String, (String, Requests)>,
    by_node: HashMap<String, Requests>,
}

impl RequestsByNode {
    /// Sets (or replaces) a pod's contribution; `None` (unbound, ended, gone)
    /// removes it. Returns whether a node's sum changed.
    pub fn set(&mut self, pod: &str, bound: Option<(&str, Requests)>) -> bool {
        let old = match bound {
            Some((node, r)) => self.pods.insert(pod.to_owned(), (node.to_owned(), r)),
            None => self.pods.remove(pod),
        };
        if let Some((node, r)) = &old {
            if bound.is_some_and(|(n, nr)| n == node && nr == *r) {
                return false;
            }
            if let Some(sum) = self.by_node.get_mut(node) {
                *sum = sum.sub(*r);
                if *sum == Requests::default() {
                    self.by_node.remove(node);
                }
            }
        }
        if let Some((node, r)) = bound {
            let sum = self.by_node.entry(node.to_owned()).or_default();
            *sum = sum.add(r);
        }
        old.is_some() || bound.is_some()
    }

    /// Drops everything (a relist starts over).
    pub fn clear(&mut self) {
        self.pods.clear();
        self.by_node.clear();
    }

    /// The sums by node name.
    pub fn by_node(&self) -> &HashMap<String, Requests> {
        &self.by_node
    }

    /// How many pods are counted.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True when no pod is counted.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// When a new capacity list is worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    /// Pod churn republishes the list at most this often.
    pub min_interval: Duration,
    /// A node's free CPU must move by more than this (millicores)...
    pub cpu_threshold_millis: i64,
    /// ...or its free memory by more than this (bytes).
    pub memory_threshold_bytes: i64,
}

impl Default for Coalescing {
    fn default() -> Self {
        Coalescing {
            min_interval: Duration::from_secs(5),
            cpu_threshold_millis: 100,
            memory_threshold_bytes: 128 << 20,
        }
    }
}

impl Coalescing {
    /// Whether `new` differs from `old` enough to report: anything but the
    /// nodes' requests changed (nodes came or went, a taint, a label, the
    /// version, ...), or some node's free room moved past a threshold.
    pub fn significant(&self, old: &KubeClusterInfo, new: &KubeClusterInfo) -> bool {
        let strip = |i: &KubeClusterInfo| KubeClusterInfo {
            nodes: None,
            ..i.clone()
        };
        if strip(old) != strip(new) {
            return true;
        }
        let (Some(a), Some(b)) = (&old.nodes, &new.nodes) else {
            return old.nodes.is_some() != new.nodes.is_some();
        };
        if a.len() != b.len() {
            return true;
        }
        a.iter().zip(b).any(|(a, b)| {
            a.name != b.name
                || a.cpu_allocatable_millis != b.cpu_allocatable_millis
                || a.memory_allocatable_bytes != b.memory_allocatable_bytes
                || a.taints != b.taints
                || a.labels != b.labels
                || (a.free_cpu_millis() - b.free_cpu_millis()).abs() > self.cpu_threshold_millis
                || (a.free_memory_bytes() - b.free_memory_bytes()).abs()
                    > self.memory_threshold_bytes
        })
    }
}

#[cfg(test)]
mod tests;
