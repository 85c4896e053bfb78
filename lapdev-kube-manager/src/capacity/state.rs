//! What the tracker keeps for capacity: the other pods' requests by node (only
//! with `capacity: pods`), and when the list was last published, so pod churn
//! republishes it at most once per [`Coalescing::min_interval`].

use std::collections::HashMap;
use std::time::Instant;

use lapdev_common::kube::KubeClusterInfo;
use uuid::Uuid;

use super::{
    Coalescing, NodeInput, Requests, RequestsByNode, detect_autoscaling, holds_resources,
    node_capacities,
};
use crate::cluster_info::NodeSummary;
use crate::observe::PodFacts;
use crate::tracker::Change;

/// A pod of another workspace, reduced to the node it holds and its requests
/// (`None`: unbound or ended).
pub type OtherPod = Option<(String, Requests)>;

/// The capacity part of the tracker's state.
#[derive(Debug, Default)]
pub struct CapacityState {
    /// When to republish.
    pub coalescing: Coalescing,
    other: RequestsByNode,
    relist: Option<RequestsByNode>,
    last_publish: Option<Instant>,
    dirty: bool,
}

impl CapacityState {
    /// Something that changes the requests happened.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether a republish is due: something changed and the last one is at
    /// least the interval old.
    pub fn due(&self) -> bool {
        self.dirty
            && self
                .last_publish
                .is_none_or(|t| t.elapsed() >= self.coalescing.min_interval)
    }

    /// A publish happened (or was judged not worth it).
    pub fn published(&mut self) {
        self.dirty = false;
        self.last_publish = Some(Instant::now());
    }

    /// A change of another pod (cluster-wide watch). Returns whether a node's
    /// sum changed.
    pub fn other_change(&mut self, change: Change<String, OtherPod>) -> bool {
        fn bound(p: &OtherPod) -> Option<(&str, Requests)> {
            p.as_ref().map(|(n, r)| (n.as_str(), *r))
        }
        let changed = match change {
            Change::Upsert(k, v) => self.other.set(&k, bound(&v)),
            Change::Remove(k) => self.other.set(&k, None),
            Change::Init => {
                self.relist = Some(RequestsByNode::default());
                false
            }
            Change::InitUpsert(k, v) => {
                self.relist
                    .get_or_insert_with(RequestsByNode::default)
                    .set(&k, bound(&v));
                false
            }
            Change::InitDone => {
                self.other = self.relist.take().unwrap_or_default();
                true
            }
        };
        self.dirty |= changed;
        changed
    }

    /// How many other pods are counted.
    pub fn other_pods(&self) -> usize {
        self.other.len()
    }

    /// Fills `info`'s per-node list and detected autoscaler from the nodes and
    /// the workspace pods.
    pub fn fill(
        &self,
        info: &mut KubeClusterInfo,
        nodes: &HashMap<String, NodeSummary>,
        workspace_pods: &HashMap<Uuid, PodFacts>,
    ) {
        let mut lapdev: HashMap<String, Requests> = HashMap::new();
        for p in workspace_pods.values() {
            if let Some(node) = &p.node_name
                && holds_resources(&p.phase)
            {
                let sum = lapdev.entry(node.clone()).or_default();
                *sum = sum.add(p.requests);
            }
        }
        info.nodes = Some(node_capacities(
            nodes.iter().map(|(name, s)| NodeInput {
                name,
                cpu_allocatable_millis: s.cpu_allocatable_millis,
                memory_allocatable_bytes: s.memory_allocatable_bytes,
                ready: s.health.not_ready.is_none(),
                facts: &s.placement,
            }),
            &lapdev,
            self.other.by_node(),
        ));
        info.autoscaling = detect_autoscaling(nodes.values().map(|n| &n.placement.labels));
    }
}
