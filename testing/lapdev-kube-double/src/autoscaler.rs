//! A stand-in cluster-autoscaler with one node group: when the stand-in
//! scheduler finds no node for a pod, the autoscaler asks whether a node of
//! the group's template would take it (the scheduler's own filters, against an
//! empty node) and records on the pod the Event the real one records
//! (`processors/status/eventing_scale_up_processor.go`):
//!
//! - `TriggeredScaleUp`, `pod triggered scale-up: [{GROUP 1->2 (max: 3)}]`,
//!   when the template fits and the group is below its maximum; the node is
//!   "being provisioned" until [`DoubleHandle::complete_scale_up`] adds it;
//! - `NotTriggerScaleUp`, `pod didn't trigger scale-up: 1 Insufficient cpu`
//!   (the template's failed filters, one node group each) or
//!   `pod didn't trigger scale-up: 1 max node group size reached`, otherwise.
//!
//! Both are `Normal` Events from `cluster-autoscaler`. A pod whose scale-up is
//! under way gets no second Event (the real one counts it against the
//! upcoming node). Raising the group's maximum
//! ([`DoubleHandle::set_autoscaler_max_nodes`]) runs a scan, as the real one
//! looks at every unschedulable pod each scan interval, so a pod declined
//! before may trigger a scale-up then. Simplified: one node group, no
//! scale-down, no backoff, no periodic scan.

use std::collections::HashSet;

use serde_json::Value;

use crate::error::HandleError;
use crate::events::{Kind, Source};
use crate::handle::{DoubleHandle, NodeSpec};
use crate::object::Stored;
use crate::resource;
use crate::scheduler::node_failures;
use crate::selector::{FieldSelector, LabelSelector};

/// The label that says which node group a node belongs to.
pub const NODE_GROUP_LABEL: &str = "lapdev-kube-double/node-group";

const AUTOSCALER: Source<'static> = Source {
    component: "cluster-autoscaler",
    host: None,
};

/// The node group the stand-in autoscaler may grow.
#[derive(Debug, Clone)]
pub struct NodeGroup {
    /// Its name, as the Events print it.
    pub name: String,
    /// What a new node looks like (its labels get [`NODE_GROUP_LABEL`]).
    pub template: NodeSpec,
    /// How many nodes the group may have at most.
    pub max_nodes: u32,
}

#[derive(Debug)]
pub(crate) struct AutoscalerState {
    group: NodeGroup,
    /// Nodes triggered and not yet provisioned.
    upcoming: u32,
    /// Pods a scale-up was triggered for (uid).
    triggered: HashSet<String>,
    /// Nodes added so far (for their names).
    added: u32,
}

impl DoubleHandle {
    /// Turns the stand-in cluster-autoscaler on for `group` (see the module
    /// docs). Nodes already labelled with the group count towards its size.
    pub fn enable_autoscaler(&self, group: NodeGroup) {
        *self.autoscaler_lock() = Some(AutoscalerState {
            group,
            upcoming: 0,
            triggered: HashSet::new(),
            added: 0,
        });
    }

    /// Changes the node group's maximum size (the cloud's limit was raised or
    /// lowered), then looks again at every pod the scheduler found no node for
    /// (`PodScheduled=False`), as the real autoscaler's next scan would: one
    /// declined before may trigger a scale-up now. Returns false when the
    /// autoscaler is off.
    pub fn set_autoscaler_max_nodes(&self, max_nodes: u32) -> bool {
        match self.autoscaler_lock().as_mut() {
            Some(a) => a.group.max_nodes = max_nodes,
            None => return false,
        }
        // The autoscaler's next scan: every pod the scheduler found no node for.
        let _one_at_a_time = self
            .scheduler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pods = resource::core_resource("pods");
        let page = self.store.list(
            pods,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
            None,
            None,
        );
        for pod in page.items {
            let unschedulable = pod
                .value()
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter().any(|c| {
                        c.get("type") == Some(&Value::from("PodScheduled"))
                            && c.get("status") == Some(&Value::from("False"))
                    })
                });
            if unschedulable
                && pod.attrs.field(pods, "spec.nodeName").is_empty()
                && pod.attrs.field(pods, "status.phase") == "Pending"
            {
                self.consider_scale_up(&pod);
            }
        }
        true
    }

    /// How many nodes the autoscaler has decided to add and not yet added.
    pub fn upcoming_nodes(&self) -> u32 {
        self.autoscaler_lock().as_ref().map_or(0, |a| a.upcoming)
    }

    /// The cloud provider delivers the triggered nodes: each is added from the
    /// template (named `GROUP-N`, Ready), and the scheduler looks again at the
    /// pods that waited. Returns the new nodes' names.
    pub fn complete_scale_up(&self) -> Result<Vec<String>, HandleError> {
        // Held while the nodes are added, so the scheduler's retries never see
        // the scale-up done but its nodes missing (and trigger it again).
        let mut guard = self.autoscaler_lock();
        let Some(a) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let names: Vec<String> = (0..a.upcoming)
            .map(|i| format!("{}-{}", a.group.name, a.added + i + 1))
            .collect();
        for name in &names {
            self.add_node(name, template(&a.group))?;
            a.added += 1;
            a.upcoming -= 1;
        }
        a.triggered.clear();
        Ok(names)
    }

    /// The autoscaler's look at a pod the scheduler could not place.
    pub(crate) fn consider_scale_up(&self, pod: &Stored) {
        let mut guard = self.autoscaler_lock();
        let Some(a) = guard.as_mut() else {
            return;
        };
        let value = pod.value();
        let uid = value
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if a.triggered.contains(&uid) {
            return;
        }
        let nodes = resource::core_resource("nodes");
        let template_node = Stored::new(nodes, &self.node_object("template", template(&a.group)));
        let failures = node_failures(&value, pod, &template_node, (0.0, 0.0));
        let size = self.group_size(&a.group.name) + a.upcoming;
        let (reason, message) = if !failures.is_empty() {
            let mut reasons: Vec<String> = failures.iter().map(|r| format!("1 {r}")).collect();
            reasons.sort();
            (
                "NotTriggerScaleUp",
                format!("pod didn't trigger scale-up: {}", reasons.join(", ")),
            )
        } else if size >= a.group.max_nodes {
            (
                "NotTriggerScaleUp",
                "pod didn't trigger scale-up: 1 max node group size reached".to_owned(),
            )
        } else {
            a.upcoming += 1;
            a.triggered.insert(uid);
            (
                "TriggeredScaleUp",
                format!(
                    "pod triggered scale-up: [{{{} {}->{} (max: {})}}]",
                    a.group.name,
                    size,
                    size + 1,
                    a.group.max_nodes
                ),
            )
        };
        drop(guard);
        let _ = self.record_event(&value, AUTOSCALER, Kind::Normal, reason, &message, None);
    }

    fn group_size(&self, group: &str) -> u32 {
        let nodes = resource::core_resource("nodes");
        let Ok(selector) = LabelSelector::parse(&format!("{NODE_GROUP_LABEL}={group}")) else {
            return 0;
        };
        let n = self
            .store
            .list(
                nodes,
                None,
                &selector,
                &FieldSelector::default(),
                None,
                None,
            )
            .items
            .len();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn autoscaler_lock(&self) -> std::sync::MutexGuard<'_, Option<AutoscalerState>> {
        self.autoscaler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn template(group: &NodeGroup) -> NodeSpec {
    let mut spec = group.template.clone();
    spec.labels
        .insert(NODE_GROUP_LABEL.to_owned(), group.name.clone());
    spec.ready = true;
    spec
}
