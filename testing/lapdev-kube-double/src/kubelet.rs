//! The stand-in kubelet (and the controllers that run with it): a loop that
//! follows the store's history, schedules pending pods, marks them `Running`,
//! binds and grows claims, confirms graceful pod deletions on nodes whose
//! kubelet runs, and lets the pod garbage collector look at changed nodes.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::handle::{DoubleHandle, KubeletConfig, now, set_condition};
use crate::resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::EventType;

impl DoubleHandle {
    /// Starts a stand-in kubelet (and scheduler) on the current Tokio runtime:
    /// after `config.delay`, a pending pod is bound to a Ready, uncordoned node
    /// with room for its requests and marked `Running` (or, when none fits, left
    /// `Pending` with `PodScheduled=False`, reason `Unschedulable`); pending PVCs
    /// are marked `Bound`. Abort the returned task to stop it.
    pub fn run_kubelet(&self, config: KubeletConfig) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move { handle.kubelet_loop(config).await })
    }

    async fn kubelet_loop(self, config: KubeletConfig) {
        let selector = LabelSelector::parse(&config.label_selector).unwrap_or_default();
        let pods = resource::core_resource("pods");
        let pvcs = resource::core_resource("persistentvolumeclaims");
        let nodes = resource::core_resource("nodes");
        let mut changes = self.store.subscribe();
        let mut next_node = 0usize;
        // Start from everything already there, then follow the history. The
        // resourceVersion is read first so nothing created meanwhile is missed.
        let mut last = self.store.current_rv();
        let mut pending = self.kubelet_work();
        loop {
            for (kind, ns, name) in pending.drain(..) {
                let handle = self.clone();
                let selector = selector.clone();
                let config = config.clone();
                next_node = next_node.wrapping_add(1);
                let pick = next_node;
                tokio::spawn(async move {
                    tokio::time::sleep(config.delay).await;
                    match kind {
                        WorkKind::Pod => handle.start_pod(&ns, &name, &selector, pick),
                        WorkKind::Claim if config.bind_claims => handle.bind_claim(&ns, &name),
                        WorkKind::Claim => {}
                    }
                });
            }
            changes.borrow_and_update();
            match self.store.events_after(last) {
                Ok((events, current)) => {
                    // Capacity may have appeared: retry pods that did not fit.
                    let freed = events.iter().any(|e| {
                        std::ptr::eq(e.res, nodes)
                            || (std::ptr::eq(e.res, pods)
                                && (e.kind == EventType::Deleted || e.object.attrs.terminated))
                    });
                    if freed {
                        pending.extend(self.unscheduled_pods());
                    }
                    for e in events.iter().filter(|e| std::ptr::eq(e.res, nodes)) {
                        let node = &e.object.attrs.name;
                        // Deleted or out of service: the pod garbage collector's turn.
                        self.collect_pod_garbage(node);
                        let was_ready = e.previous.as_ref().is_some_and(|p| p.attrs.ready);
                        if e.kind == EventType::Modified && e.object.attrs.ready && !was_ready {
                            // A node (and its kubelet) came back: it finishes
                            // what waited for it.
                            for (ns, name) in self.pods_on_node(node) {
                                pending.push((WorkKind::Pod, ns, name));
                            }
                        }
                    }
                    // New pods and claims, and pods whose deletion began.
                    let started_deleting = |e: &&Arc<crate::store::Event>| {
                        e.kind == EventType::Modified
                            && std::ptr::eq(e.res, pods)
                            && e.object.attrs.deleting
                            && !e.previous.as_ref().is_some_and(|p| p.attrs.deleting)
                    };
                    // Claims changed (a selected node, a larger request): the
                    // volume controllers look again.
                    let claim_changed = |e: &&Arc<crate::store::Event>| {
                        e.kind == EventType::Modified && std::ptr::eq(e.res, pvcs)
                    };
                    for e in events.iter().filter(|e| {
                        e.kind == EventType::Added || started_deleting(e) || claim_changed(e)
                    }) {
                        let kind = if std::ptr::eq(e.res, pods) {
                            WorkKind::Pod
                        } else if std::ptr::eq(e.res, pvcs) {
                            WorkKind::Claim
                        } else {
                            continue;
                        };
                        pending.push((
                            kind,
                            e.object.attrs.namespace.clone(),
                            e.object.attrs.name.clone(),
                        ));
                    }
                    last = current;
                }
                Err(_) => {
                    // The history moved past us: look at everything again.
                    last = self.store.current_rv();
                    pending.extend(self.kubelet_work());
                }
            }
            if pending.is_empty() && changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Pending pods that no node was found for.
    fn unscheduled_pods(&self) -> Vec<(WorkKind, String, String)> {
        let pods = resource::core_resource("pods");
        let any = FieldSelector::default();
        self.store
            .list(pods, None, &LabelSelector::default(), &any, None, None)
            .items
            .into_iter()
            .filter(|p| {
                p.attrs.field(pods, "spec.nodeName").is_empty()
                    && p.attrs.field(pods, "status.phase") == "Pending"
            })
            .map(|p| {
                (
                    WorkKind::Pod,
                    p.attrs.namespace.clone(),
                    p.attrs.name.clone(),
                )
            })
            .collect()
    }

    /// Every pod and claim, for the stand-in kubelet to look at.
    fn kubelet_work(&self) -> Vec<(WorkKind, String, String)> {
        let pods = resource::core_resource("pods");
        let pvcs = resource::core_resource("persistentvolumeclaims");
        let mut out = Vec::new();
        for (res, kind) in [(pods, WorkKind::Pod), (pvcs, WorkKind::Claim)] {
            let all = LabelSelector::default();
            let page = self
                .store
                .list(res, None, &all, &FieldSelector::default(), None, None);
            for obj in page.items {
                out.push((kind, obj.attrs.namespace.clone(), obj.attrs.name.clone()));
            }
        }
        out
    }

    fn start_pod(&self, ns: &str, name: &str, selector: &LabelSelector, pick: usize) {
        let pods = resource::core_resource("pods");
        let Ok(stored) = self.store.get(pods, ns, name) else {
            return;
        };
        let node = stored.attrs.field(pods, "spec.nodeName").to_owned();
        let lost = !node.is_empty() && self.is_node_lost(&node);
        if stored.attrs.deleting {
            if lost {
                // No kubelet confirms: the deletion waits for a force delete,
                // or for the pod garbage collector.
                self.collect_pod_garbage(&node);
            } else {
                // The containers "stopped": confirm the deletion, as the kubelet does.
                let _ = self.terminate_pod(ns, name);
            }
            return;
        }
        let uid = stored
            .value()
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if lost
            || self.fault_of(&uid).is_some()
            || !selector.matches(&stored.attrs)
            || stored.attrs.field(pods, "status.phase") != "Pending"
        {
            return;
        }
        if stored.attrs.field(pods, "spec.nodeName").is_empty() {
            let _one_at_a_time = self
                .scheduler
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match self.schedule(&stored, pick) {
                Ok(node) => {
                    if self.bind_pod(ns, name, &node).is_err() {
                        return;
                    }
                }
                Err(message) => {
                    let _ = self
                        .store
                        .mutate(pods, ns, name, "kube-scheduler", "status", |pod| {
                            let status = &mut pod["status"];
                            let mut list = status
                                .get("conditions")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default();
                            set_condition(&mut list, "PodScheduled", "False");
                            if let Some(c) = list
                                .iter_mut()
                                .find(|c| c.get("type") == Some(&json!("PodScheduled")))
                            {
                                c["reason"] = json!("Unschedulable");
                                c["message"] = json!(message);
                            }
                            status["conditions"] = json!(list);
                        });
                    if let Ok(pod) = self.store.get(pods, ns, name) {
                        let _ = self.record_event(
                            &pod.value(),
                            crate::events::Source::SCHEDULER,
                            crate::events::Kind::Warning,
                            "FailedScheduling",
                            &message,
                            None,
                        );
                        self.consider_scale_up(&pod);
                    }
                    return;
                }
            }
        }
        let _ = self.set_pod_phase(ns, name, "Running", Vec::new());
    }

    fn bind_claim(&self, ns: &str, name: &str) {
        self.provision_claim(ns, name);
    }
}

/// What the kubelet reports for a pod entering `phase`.
pub(crate) fn kubelet_status(pod: &mut Value, phase: &str) {
    let n = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map_or(0, |u| {
            u.bytes()
                .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)))
        });
    let running = phase == "Running";
    let terminal = phase == "Succeeded" || phase == "Failed";
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host_ip = json!("10.0.0.1");
    let status = &mut pod["status"];
    if !status.is_object() {
        *status = json!({});
    }
    status["phase"] = json!(phase);
    let mut conditions = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if running || terminal {
        if status.get("startTime").is_none() {
            status["startTime"] = json!(now());
        }
        if status.get("podIP").is_none() {
            let ip = format!("10.244.{}.{}", (n >> 8) & 0xff, (n & 0xff).max(2));
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
            status["hostIP"] = host_ip;
        }
        let ready = if running { "True" } else { "False" };
        for ty in ["PodReadyToStartContainers", "Initialized", "PodScheduled"] {
            set_condition(&mut conditions, ty, "True");
        }
        set_condition(&mut conditions, "ContainersReady", ready);
        set_condition(&mut conditions, "Ready", ready);
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let state = if running {
                    json!({"running": {"startedAt": now()}})
                } else {
                    json!({"terminated": {"exitCode": if phase == "Succeeded" { 0 } else { 1 }, "reason": if phase == "Succeeded" { "Completed" } else { "Error" }}})
                };
                json!({
                    "name": c.get("name"),
                    "image": c.get("image"),
                    "imageID": "",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                })
            })
            .collect();
        status["containerStatuses"] = json!(statuses);
    }
    status["conditions"] = json!(conditions);
}

/// What the stand-in kubelet has to look at.
#[derive(Debug, Clone, Copy)]
enum WorkKind {
    Pod,
    Claim,
}
