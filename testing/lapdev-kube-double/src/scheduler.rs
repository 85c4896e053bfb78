//! The stand-in scheduler's choice of a node, with the real scheduler's filters
//! in its order (the first filter a node fails is the reason counted for it):
//! `NodeUnschedulable` (cordoned nodes, unless the pod tolerates
//! `node.kubernetes.io/unschedulable`), `TaintToleration` (`NoSchedule` and
//! `NoExecute` taints the pod does not tolerate; a node that is not Ready and
//! carries no taint for it counts as tainted `node.kubernetes.io/not-ready`, as
//! the node lifecycle controller would taint it), `NodeAffinity` (`nodeSelector`
//! and required node affinity, e.g. on `kubernetes.io/arch` or
//! `kubernetes.io/os`), and `NodeResourcesFit` (allocatable CPU and memory
//! minus the requests of the pods already on the node).
//!
//! A pod no node fits gets the real message, e.g. `0/3 nodes are available: 1
//! Insufficient cpu, 2 node(s) had untolerated taint {node.kubernetes.io/unreachable: }.`
//! (reasons sorted as the scheduler sorts them; the preemption part is left out).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::handle::DoubleHandle;
use crate::object::Stored;
use crate::resource;
use crate::selector::{FieldSelector, LabelSelector};

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn list<'a>(v: &'a Value, pointer: &str) -> Vec<&'a Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Whether a toleration tolerates a taint (`ToleratesTaint` in the real code).
fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = str_at(toleration, "effect");
    if !effect.is_empty() && effect != str_at(taint, "effect") {
        return false;
    }
    let key = str_at(toleration, "key");
    if !key.is_empty() && key != str_at(taint, "key") {
        return false;
    }
    match str_at(toleration, "operator") {
        "Exists" => true,
        "" | "Equal" => !key.is_empty() && str_at(toleration, "value") == str_at(taint, "value"),
        _ => false,
    }
}

/// The first `NoSchedule`/`NoExecute` taint of the node the pod does not tolerate.
fn untolerated<'a>(pod: &Value, taints: &'a [Value]) -> Option<&'a Value> {
    let tolerations = list(pod, "/spec/tolerations");
    taints
        .iter()
        .filter(|t| matches!(str_at(t, "effect"), "NoSchedule" | "NoExecute"))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// One `matchExpressions` requirement against the node's labels.
fn requirement_matches(req: &Value, labels: &BTreeMap<String, String>) -> bool {
    let key = str_at(req, "key");
    let values: Vec<&str> = list(req, "/values")
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    let value = labels.get(key);
    let number = |s: &str| s.parse::<i64>().ok();
    match str_at(req, "operator") {
        "In" => value.is_some_and(|v| values.contains(&v.as_str())),
        "NotIn" => value.is_none_or(|v| !values.contains(&v.as_str())),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// `nodeSelector` and required node affinity (terms ORed, expressions ANDed).
fn affinity_matches(pod: &Value, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    let selector_ok = pod
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    if !selector_ok {
        return false;
    }
    let terms = list(
        pod,
        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
    );
    if terms.is_empty() {
        return true;
    }
    let name_labels = BTreeMap::from([("metadata.name".to_owned(), node_name.to_owned())]);
    terms.iter().any(|term| {
        let exprs = list(term, "/matchExpressions");
        let fields = list(term, "/matchFields");
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|r| requirement_matches(r, labels))
            && fields.iter().all(|r| requirement_matches(r, &name_labels))
    })
}

/// Why `pod` cannot go to `node`, which already holds `used` (CPU, memory):
/// the reason of the first filter it fails, two for CPU and memory both short;
/// empty when it fits. The cluster autoscaler asks the same of a node it could
/// add.
pub(crate) fn node_failures(
    pod_value: &Value,
    pod: &Stored,
    node: &Stored,
    used: (f64, f64),
) -> Vec<String> {
    let nodes_res = resource::core_resource("nodes");
    let cordon =
        serde_json::json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
    let mut taints = node.attrs.taints.clone();
    let lifecycle_tainted = taints.iter().any(|t| {
        matches!(
            str_at(t, "key"),
            "node.kubernetes.io/not-ready" | "node.kubernetes.io/unreachable"
        )
    });
    if !node.attrs.ready && !lifecycle_tainted {
        taints.push(
            serde_json::json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}),
        );
    }
    if node.attrs.field(nodes_res, "spec.unschedulable") == "true"
        && untolerated(pod_value, std::slice::from_ref(&cordon)).is_some()
    {
        return vec!["node(s) were unschedulable".to_owned()];
    }
    if let Some(t) = untolerated(pod_value, &taints) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            str_at(t, "key"),
            str_at(t, "value")
        )];
    }
    if !affinity_matches(pod_value, &node.attrs.name, &node.attrs.labels) {
        return vec!["node(s) didn't match Pod's node affinity/selector".to_owned()];
    }
    let mut out = Vec::new();
    if node.attrs.cpu - used.0 < pod.attrs.cpu - 1e-9 {
        out.push("Insufficient cpu".to_owned());
    }
    if node.attrs.memory - used.1 < pod.attrs.memory - 1e-9 {
        out.push("Insufficient memory".to_owned());
    }
    out
}

impl DoubleHandle {
    /// A node for `pod` (see the module docs); candidates that fit are taken in
    /// turn (`pick`) to spread pods. The error is the real scheduler's message.
    pub(crate) fn schedule(&self, pod: &Stored, pick: usize) -> Result<String, String> {
        let pods = resource::core_resource("pods");
        let nodes_res = resource::core_resource("nodes");
        let all = LabelSelector::default();
        let any = FieldSelector::default();
        let nodes = self
            .store
            .list(nodes_res, None, &all, &any, None, None)
            .items;
        if nodes.is_empty() {
            return Err("no nodes available to schedule pods".to_owned());
        }
        let pod_value = pod.value();
        let mut used: HashMap<String, (f64, f64)> = HashMap::new();
        for p in self.store.list(pods, None, &all, &any, None, None).items {
            let node = p.attrs.field(pods, "spec.nodeName");
            if !node.is_empty() && !p.attrs.terminated {
                let entry = used.entry(node.to_owned()).or_default();
                entry.0 += p.attrs.cpu;
                entry.1 += p.attrs.memory;
            }
        }
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut fits = Vec::new();
        for n in &nodes {
            let name = &n.attrs.name;
            let used = used.get(name).copied().unwrap_or_default();
            let failed = node_failures(&pod_value, pod, n, used);
            if failed.is_empty() {
                fits.push(name.clone());
            }
            for r in failed {
                *reasons.entry(r).or_default() += 1;
            }
        }
        if let Some(node) = fits.get(pick % fits.len().max(1)) {
            return Ok(node.clone());
        }
        let mut parts: Vec<String> = reasons
            .into_iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        Err(format!(
            "0/{} nodes are available: {}.",
            nodes.len(),
            parts.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tolerations_match_like_the_scheduler() {
        let taint = json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"});
        assert!(tolerates(
            &json!({"key": "dedicated", "value": "gpu"}),
            &taint
        ));
        assert!(tolerates(
            &json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}),
            &taint
        ));
        assert!(tolerates(&json!({"operator": "Exists"}), &taint));
        assert!(!tolerates(
            &json!({"key": "dedicated", "value": "cpu"}),
            &taint
        ));
        assert!(!tolerates(
            &json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
            &taint
        ));
        assert!(!tolerates(&json!({"value": "gpu"}), &taint));
    }

    #[test]
    fn affinity_terms_are_ored_and_expressions_anded() {
        let labels = BTreeMap::from([
            ("kubernetes.io/arch".to_owned(), "arm64".to_owned()),
            ("pool".to_owned(), "8".to_owned()),
        ]);
        let pod = |terms: Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}});
        let arm = json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]});
        let amd = json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]});
        let big = json!({"key": "pool", "operator": "Gt", "values": ["4"]});
        assert!(affinity_matches(
            &pod(json!([{"matchExpressions": [arm, big]}])),
            "n",
            &labels
        ));
        assert!(!affinity_matches(
            &pod(json!([{"matchExpressions": [amd.clone(), big]}])),
            "n",
            &labels
        ));
        assert!(affinity_matches(
            &pod(
                json!([{"matchExpressions": [amd]}, {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}])
            ),
            "n",
            &labels
        ));
        assert!(!affinity_matches(
            &json!({"spec": {"nodeSelector": {"kubernetes.io/arch": "amd64"}}}),
            "n",
            &labels
        ));
    }
}
