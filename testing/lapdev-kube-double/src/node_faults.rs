//! Nodes that fail: a node whose kubelet stopped (the node lifecycle
//! controller marks its conditions `Unknown` and taints it unreachable, and the
//! graceful deletion of its pods never completes), taints such as
//! `node.kubernetes.io/out-of-service`, and the pod garbage collector that
//! force-deletes the pods of deleted nodes and the terminating pods of
//! out-of-service nodes.

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::error::HandleError;
use crate::handle::{DoubleHandle, now, to_typed};
use crate::resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Preconditions, WriteCtx};

/// The taint that tells the pod garbage collector a node is down for good.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
/// The taint the node lifecycle controller puts on a node that stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The node conditions a kubelet reports, with the reason each has when fine.
const CONDITIONS: [(&str, &str, &str); 4] = [
    ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID"),
    ("Ready", "True", "KubeletReady"),
];

fn set_node_condition(node: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    let when = now();
    let mut list = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match list.iter_mut().find(|c| c.get("type") == Some(&json!(ty))) {
        Some(c) => {
            if c.get("status") != Some(&json!(status)) {
                c["lastTransitionTime"] = json!(when);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => list.push(json!({
            "type": ty, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": when, "lastTransitionTime": when,
        })),
    }
    node["status"]["conditions"] = json!(list);
}

fn taints(node: &Value) -> Vec<Value> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn set_taints(node: &mut Value, list: Vec<Value>) {
    if !node.get("spec").is_some_and(Value::is_object) {
        node["spec"] = json!({});
    }
    match (list.is_empty(), node["spec"].as_object_mut()) {
        (true, Some(spec)) => {
            spec.remove("taints");
        }
        _ => node["spec"]["taints"] = json!(list),
    }
}

fn has_taint(node: &Value, key: &str) -> bool {
    taints(node)
        .iter()
        .any(|t| t.get("key") == Some(&json!(key)))
}

impl DoubleHandle {
    /// The node stops reporting and its stand-in kubelet stops, as when a node
    /// dies or is cut off: every node condition becomes `Unknown` (reason
    /// `NodeStatusUnknown`, message `Kubelet stopped posting node status.`), the
    /// node gets the `node.kubernetes.io/unreachable` taints (`NoSchedule` and
    /// `NoExecute`), its pods' `Ready` condition turns `False`, and the graceful
    /// deletion of a pod on it never completes: the pod keeps its
    /// `deletionTimestamp` until it is deleted with grace period 0, the node is
    /// deleted, or the node is out of service (both via the pod garbage
    /// collector). [`DoubleHandle::set_node_ready`] with `true` brings it back.
    pub fn set_node_lost(&self, name: &str) -> Result<Node, HandleError> {
        let nodes = resource::core_resource("nodes");
        self.kubelet_lock().lost_nodes.insert(name.to_owned());
        let out = self
            .store
            .mutate(nodes, "", name, "kube-controller-manager", "status", |n| {
                for (ty, _, _) in CONDITIONS {
                    set_node_condition(
                        n,
                        ty,
                        "Unknown",
                        "NodeStatusUnknown",
                        "Kubelet stopped posting node status.",
                    );
                }
            })?;
        let when = now();
        let out = self
            .store
            .mutate(nodes, "", name, "kube-controller-manager", "", |n| {
                let mut list = taints(n);
                list.retain(|t| t.get("key") != Some(&json!(UNREACHABLE)));
                list.push(json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": when}));
                list.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": when}));
                set_taints(n, list);
            })
            .unwrap_or(out);
        let pods = resource::core_resource("pods");
        for (ns, pod) in self.pods_on_node(name) {
            let _ = self
                .store
                .mutate(pods, &ns, &pod, "kube-controller-manager", "status", |p| {
                    let mut list = p
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    crate::handle::set_condition(&mut list, "Ready", "False");
                    p["status"]["conditions"] = json!(list);
                });
        }
        to_typed(&out)
    }

    /// Whether the node's stand-in kubelet is stopped ([`DoubleHandle::set_node_lost`]).
    pub fn is_node_lost(&self, name: &str) -> bool {
        self.kubelet_lock().lost_nodes.contains(name)
    }

    /// Adds (or replaces) a taint, as `kubectl taint nodes NAME KEY=VALUE:EFFECT`
    /// does; `effect` is `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    /// [`OUT_OF_SERVICE`] on a node that is not Ready lets the pod garbage
    /// collector force-delete the node's terminating pods.
    pub fn taint_node(
        &self,
        node: &str,
        key: &str,
        value: &str,
        effect: &str,
    ) -> Result<Node, HandleError> {
        let nodes = resource::core_resource("nodes");
        let when = now();
        let out = self
            .store
            .mutate(nodes, "", node, "kubectl-taint", "", |n| {
                let mut list = taints(n);
                list.retain(|t| {
                    t.get("key") != Some(&json!(key)) || t.get("effect") != Some(&json!(effect))
                });
                let mut taint = json!({"key": key, "effect": effect});
                if !value.is_empty() {
                    taint["value"] = json!(value);
                }
                if effect == "NoExecute" {
                    taint["timeAdded"] = json!(when);
                }
                list.push(taint);
                set_taints(n, list);
            })?;
        self.collect_pod_garbage(node);
        to_typed(&out)
    }

    /// Removes every taint with this key.
    pub fn untaint_node(&self, node: &str, key: &str) -> Result<Node, HandleError> {
        let nodes = resource::core_resource("nodes");
        let out = self
            .store
            .mutate(nodes, "", node, "kubectl-taint", "", |n| {
                let mut list = taints(n);
                list.retain(|t| t.get("key") != Some(&json!(key)));
                set_taints(n, list);
            })?;
        to_typed(&out)
    }

    /// Turns the pod garbage collector on (the default) or off. It force-deletes
    /// (grace period 0) the pods of a deleted node, and the terminating pods of
    /// a node that is not Ready and carries the `out-of-service` taint, as the
    /// real one does (at once here; the real one runs every 20 s and waits 40 s
    /// before deleting orphans). Off, only a client's force delete ends them,
    /// which lets a test prove that its client does that itself.
    pub fn set_pod_gc(&self, on: bool) {
        self.kubelet_lock().pod_gc = on;
    }

    pub(crate) fn kubelet_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::kubelet_faults::KubeletState> {
        self.kubelet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `(namespace, name)` of every pod bound to `node`.
    pub(crate) fn pods_on_node(&self, node: &str) -> Vec<(String, String)> {
        let pods = resource::core_resource("pods");
        let Ok(fields) = FieldSelector::parse(&format!("spec.nodeName={node}"), pods) else {
            return Vec::new();
        };
        self.store
            .list(pods, None, &LabelSelector::default(), &fields, None, None)
            .items
            .iter()
            .map(|p| (p.attrs.namespace.clone(), p.attrs.name.clone()))
            .collect()
    }

    /// The pod garbage collector's pass over one node (see [`DoubleHandle::set_pod_gc`]).
    pub(crate) fn collect_pod_garbage(&self, node: &str) {
        if !self.kubelet_lock().pod_gc {
            return;
        }
        let nodes = resource::core_resource("nodes");
        let pods = resource::core_resource("pods");
        let (gone, out_of_service) = match self.store.get(nodes, "", node) {
            Err(_) => (true, false),
            Ok(n) => (
                false,
                !n.attrs.ready && has_taint(&n.value(), OUT_OF_SERVICE),
            ),
        };
        if !gone && !out_of_service {
            return;
        }
        let force = Preconditions {
            grace_period: Some(0),
            ..Preconditions::default()
        };
        for (ns, name) in self.pods_on_node(node) {
            let terminating = self
                .store
                .get(pods, &ns, &name)
                .is_ok_and(|p| p.attrs.deleting);
            if gone || terminating {
                let _ = self.store.delete(
                    pods,
                    &ns,
                    &name,
                    &force,
                    &WriteCtx::by("pod-garbage-collector"),
                );
            }
        }
    }

    /// A lost node comes back: its conditions are reported again, the
    /// unreachable taints go, its stand-in kubelet runs again.
    pub(crate) fn node_back(&self, name: &str) -> Result<(), HandleError> {
        let nodes = resource::core_resource("nodes");
        self.kubelet_lock().lost_nodes.remove(name);
        self.store
            .mutate(nodes, "", name, "kubelet", "status", |n| {
                for (ty, status, reason) in CONDITIONS {
                    let message = match ty {
                        "Ready" => "kubelet is posting ready status",
                        _ => "",
                    };
                    set_node_condition(n, ty, status, reason, message);
                }
            })?;
        self.store
            .mutate(nodes, "", name, "kube-controller-manager", "", |n| {
                let mut list = taints(n);
                list.retain(|t| t.get("key") != Some(&json!(UNREACHABLE)));
                set_taints(n, list);
            })?;
        // The kubelet reports its running pods Ready again.
        let pods = resource::core_resource("pods");
        for (ns, pod) in self.pods_on_node(name) {
            let Ok(stored) = self.store.get(pods, &ns, &pod) else {
                continue;
            };
            let value = stored.value();
            let uid = value
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if stored.attrs.field(pods, "status.phase") == "Running"
                && !stored.attrs.deleting
                && self.fault_of(uid).is_none()
            {
                self.set_pod_phase(&ns, &pod, "Running", Vec::new())?;
            }
        }
        Ok(())
    }
}
