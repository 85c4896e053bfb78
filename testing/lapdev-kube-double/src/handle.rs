//! The test handle: what a test (or the dev binary) does to the "cluster" that
//! no API client would: add and remove nodes, play the kubelet and the
//! scheduler, inject failures, deny verbs, drop watches, count requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::control::{Control, FailureMode, Verb};
use crate::error::{ApiError, HandleError};
use crate::object::Stored;
use crate::resource::{self, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Deleted, EventType, Preconditions, Store, WriteCtx};

/// A node to add: its capacity and identity.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// CPU capacity as a quantity, e.g. `"4"` or `"3500m"`.
    pub cpu: String,
    /// Memory capacity as a quantity, e.g. `"16Gi"`.
    pub memory: String,
    /// Allocatable CPU; the capacity when `None`.
    pub allocatable_cpu: Option<String>,
    /// Allocatable memory; the capacity when `None`.
    pub allocatable_memory: Option<String>,
    /// `spec.providerID`, e.g. `gce://project/zone/name`.
    pub provider_id: Option<String>,
    /// Extra labels, e.g. `topology.kubernetes.io/region`.
    pub labels: BTreeMap<String, String>,
    /// Whether the node's `Ready` condition is `True`.
    pub ready: bool,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            cpu: "4".to_owned(),
            memory: "16Gi".to_owned(),
            allocatable_cpu: None,
            allocatable_memory: None,
            provider_id: None,
            labels: BTreeMap::new(),
            ready: true,
        }
    }
}

/// How the stand-in kubelet behaves.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// How long after creation a pending pod becomes `Running`.
    pub delay: Duration,
    /// Only pods matching this label selector are started (empty: all).
    pub label_selector: String,
    /// Whether pending PVCs are marked `Bound`.
    pub bind_claims: bool,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(500),
            label_selector: String::new(),
            bind_claims: true,
        }
    }
}

/// A cloneable handle on a running double's state.
#[derive(Debug, Clone)]
pub struct DoubleHandle {
    pub(crate) store: Arc<Store>,
    pub(crate) control: Arc<Control>,
    pub(crate) kubernetes_version: String,
    /// Makes the stand-in scheduler place one pod at a time, as the real one does.
    pub(crate) scheduler: Arc<std::sync::Mutex<()>>,
    /// What the stand-in kubelets are told to fail, and which nodes lost theirs.
    pub(crate) kubelet: Arc<std::sync::Mutex<crate::kubelet_faults::KubeletState>>,
    /// ServiceAccount tokens and whether RBAC is enforced.
    pub(crate) auth: Arc<crate::rbac::Auth>,
}

fn resource_of<K: kube::Resource<DynamicType = ()>>() -> Result<&'static ResourceDef, HandleError> {
    let (group, version, plural) = (K::group(&()), K::version(&()), K::plural(&()));
    resource::find(&group, &version, &plural).ok_or_else(|| {
        HandleError::Api(ApiError::bad_request(format!(
            "the double does not serve {plural} in {group}/{version}"
        )))
    })
}

pub(crate) fn to_typed<K: DeserializeOwned>(v: &Stored) -> Result<K, HandleError> {
    serde_json::from_slice(&v.json()).map_err(HandleError::Deserialize)
}

pub(crate) fn now() -> String {
    crate::store::now()
}

pub(crate) fn set_condition(conditions: &mut Vec<Value>, ty: &str, status: &str) {
    let when = now();
    match conditions.iter_mut().find(|c| c.get("type") == Some(&json!(ty))) {
        Some(c) if c.get("status") == Some(&json!(status)) => {}
        Some(c) => {
            c["status"] = json!(status);
            c["lastTransitionTime"] = json!(when);
        }
        None => conditions.push(json!({"type": ty, "status": status, "lastTransitionTime": when, "lastProbeTime": null})),
    }
}

impl DoubleHandle {
    /// Adds a node with the given capacity (as the node's kubelet would register it).
    pub fn add_node(&self, name: &str, spec: NodeSpec) -> Result<Node, HandleError> {
        let mut labels: BTreeMap<String, String> = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), name.to_owned()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("beta.kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ]);
        labels.extend(spec.labels);
        let capacity = json!({"cpu": spec.cpu, "memory": spec.memory, "pods": "110", "ephemeral-storage": "100Gi"});
        let allocatable = json!({
            "cpu": spec.allocatable_cpu.unwrap_or(spec.cpu),
            "memory": spec.allocatable_memory.unwrap_or(spec.memory),
            "pods": "110",
            "ephemeral-storage": "95Gi",
        });
        let n = self.store.current_rv();
        let when = now();
        let ready = if spec.ready { "True" } else { "False" };
        let mut node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {},
            "status": {
                "capacity": capacity,
                "allocatable": allocatable,
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": when, "lastTransitionTime": when},
                    {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": when, "lastTransitionTime": when},
                    {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": when, "lastTransitionTime": when},
                    {"type": "Ready", "status": ready, "reason": "KubeletReady", "lastHeartbeatTime": when, "lastTransitionTime": when},
                ],
                "addresses": [
                    {"type": "InternalIP", "address": format!("10.0.{}.{}", (n >> 8) & 0xff, n & 0xff)},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": {
                    "kubeletVersion": self.kubernetes_version,
                    "kubeProxyVersion": self.kubernetes_version,
                    "osImage": "lapdev-kube-double (not a real node)",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "kernelVersion": "6.1.0",
                    "containerRuntimeVersion": "none://0.0.0",
                    "machineID": "", "systemUUID": "", "bootID": "",
                },
            },
        });
        if let Some(p) = spec.provider_id {
            node["spec"]["providerID"] = json!(p);
        }
        let out = self.store.create(
            resource::core_resource("nodes"),
            "",
            node,
            &WriteCtx::by("kubelet"),
        )?;
        to_typed(&out)
    }

    /// Removes a node (as deleting the Node object would); the pod garbage
    /// collector then force-deletes the pods bound to it (see
    /// [`DoubleHandle::set_pod_gc`]).
    pub fn remove_node(&self, name: &str) -> Result<(), HandleError> {
        self.store.delete(
            resource::core_resource("nodes"),
            "",
            name,
            &Preconditions::default(),
            &WriteCtx::by("kube-controller-manager"),
        )?;
        self.kubelet_lock().lost_nodes.remove(name);
        self.collect_pod_garbage(name);
        Ok(())
    }

    /// Sets a node's `Ready` condition, as its kubelet (or the node lifecycle
    /// controller, for a node that stopped reporting) would. `true` also brings
    /// back a node lost with [`DoubleHandle::set_node_lost`]: all its conditions
    /// are reported again, the unreachable taints go, and its stand-in kubelet
    /// runs again (finishing the graceful deletions that waited for it).
    pub fn set_node_ready(&self, name: &str, ready: bool) -> Result<Node, HandleError> {
        if ready {
            self.node_back(name)?;
            return self.get("", name);
        }
        let status = "Unknown";
        let out = self.store.mutate(
            resource::core_resource("nodes"),
            "",
            name,
            "kubelet",
            "status",
            |node| {
                let mut list = node
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                set_condition(&mut list, "Ready", status);
                node["status"]["conditions"] = json!(list);
            },
        )?;
        to_typed(&out)
    }

    /// Sets a pod's phase and conditions, as the kubelet would report them.
    ///
    /// A `Running` pod also gets `startTime`, a pod IP and running, ready
    /// container statuses; conditions given replace those of the same type.
    pub fn set_pod_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: &str,
        conditions: Vec<PodCondition>,
    ) -> Result<Pod, HandleError> {
        let conditions: Vec<Value> = conditions
            .into_iter()
            .map(|c| serde_json::to_value(c).map_err(HandleError::Serialize))
            .collect::<Result<_, _>>()?;
        let out = self.store.mutate(
            resource::core_resource("pods"),
            namespace,
            name,
            "kubelet",
            "status",
            |pod| {
                kubelet_status(pod, phase);
                let status = &mut pod["status"];
                let mut list = status
                    .get("conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for c in conditions {
                    let ty = c.get("type").cloned();
                    list.retain(|x| x.get("type") != ty.as_ref());
                    list.push(c);
                }
                status["conditions"] = json!(list);
            },
        )?;
        to_typed(&out)
    }

    /// Completes a graceful pod deletion, as the pod's kubelet does once its
    /// containers stopped (a delete with grace period 0); `true` when the pod is
    /// gone, `false` when finalizers still hold it.
    pub fn terminate_pod(&self, namespace: &str, name: &str) -> Result<bool, HandleError> {
        let pre = Preconditions {
            grace_period: Some(0),
            ..Preconditions::default()
        };
        let out = self.store.delete(
            resource::core_resource("pods"),
            namespace,
            name,
            &pre,
            &WriteCtx::by("kubelet"),
        )?;
        match out {
            Deleted::Gone(pod) => {
                if let Some(uid) = pod.value().pointer("/metadata/uid").and_then(Value::as_str) {
                    self.forget_fault(uid);
                }
                Ok(true)
            }
            Deleted::Pending(_) => Ok(false),
        }
    }

    /// Binds a pod to a node, as the scheduler's `POST pods/NAME/binding` does:
    /// 409 `Conflict` when the pod is already bound (to another node) or is
    /// being deleted.
    pub fn bind_pod(&self, namespace: &str, name: &str, node: &str) -> Result<Pod, HandleError> {
        Ok(self.bind(namespace, name, node, "kube-scheduler")?)
    }

    /// The binding subresource's work (shared by the API and the handle).
    pub(crate) fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        manager: &str,
    ) -> Result<Pod, ApiError> {
        let conflict = |why: String| ApiError {
            code: 409,
            reason: "Conflict",
            message: format!("Operation cannot be fulfilled on pods/binding \"{name}\": {why}"),
            details: Some(json!({"name": name, "kind": "pods/binding"})),
        };
        let out = self.store.try_mutate(
            resource::core_resource("pods"),
            namespace,
            name,
            manager,
            "",
            |pod| {
                if pod.pointer("/metadata/deletionTimestamp").is_some() {
                    return Err(conflict(format!(
                        "pod {name} is being deleted, cannot be assigned to a host"
                    )));
                }
                match pod.pointer("/spec/nodeName").and_then(Value::as_str) {
                    Some(n) if n == node => return Ok(()),
                    Some(n) if !n.is_empty() => {
                        return Err(conflict(format!(
                            "pod {name} is already assigned to node \"{n}\""
                        )));
                    }
                    _ => {}
                }
                pod["spec"]["nodeName"] = json!(node);
                let status = &mut pod["status"];
                let mut list = status
                    .get("conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                set_condition(&mut list, "PodScheduled", "True");
                if let Some(c) = list
                    .iter_mut()
                    .find(|c| c.get("type") == Some(&json!("PodScheduled")))
                    && let Some(c) = c.as_object_mut()
                {
                    c.remove("reason");
                    c.remove("message");
                }
                status["conditions"] = json!(list);
                Ok(())
            },
        )?;
        let value = out.value();
        self.select_node_for_claims(&value, node);
        let msg = format!("Successfully assigned {namespace}/{name} to {node}");
        // Losing the event (e.g. its namespace went) does not undo the binding.
        let _ = self.record_event(
            &value,
            crate::events::Source::SCHEDULER,
            crate::events::Kind::Normal,
            "Scheduled",
            &msg,
            None,
        );
        serde_json::from_value(value).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Stores a pod that is already bound to `spec.nodeName` and `Running`, as if
    /// the scheduler and its kubelet had done their work: one write per pod, for
    /// seeding large fixtures (e.g. 20,000 background pods) quickly. No validation.
    pub fn seed_running_pod(&self, pod: &Pod) -> Result<Pod, HandleError> {
        let pods = resource::core_resource("pods");
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let mut value = serde_json::to_value(pod).map_err(HandleError::Serialize)?;
        kubelet_status(&mut value, "Running");
        let mut conditions = value["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        set_condition(&mut conditions, "PodScheduled", "True");
        value["status"]["conditions"] = json!(conditions);
        to_typed(&*self.store.seed(pods, &ns, value)?)
    }

    /// Creates any served object directly in the store (no HTTP, not counted).
    pub fn create<K>(&self, obj: &K) -> Result<K, HandleError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let res = resource_of::<K>()?;
        let ns = obj
            .meta()
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let value = serde_json::to_value(obj).map_err(HandleError::Serialize)?;
        let out = self
            .store
            .create(res, &ns, value, &WriteCtx::by("lapdev-kube-double"))?;
        to_typed(&out)
    }

    /// Reads any served object directly from the store.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Result<K, HandleError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let res = resource_of::<K>()?;
        to_typed(&*self.store.get(res, namespace, name)?)
    }

    /// Lists objects of a type directly from the store (all namespaces).
    pub fn list<K>(&self) -> Result<Vec<K>, HandleError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let res = resource_of::<K>()?;
        let page = self.store.list(
            res,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
            None,
            None,
        );
        page.items.iter().map(|v| to_typed(v)).collect()
    }

    /// Deletes an object directly; `true` when it is gone, `false` when it is
    /// still terminating (finalizers, or a bound pod's graceful deletion).
    pub fn delete<K>(&self, namespace: &str, name: &str) -> Result<bool, HandleError>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let res = resource_of::<K>()?;
        let out = self.store.delete(
            res,
            namespace,
            name,
            &Preconditions::default(),
            &WriteCtx::by("lapdev-kube-double"),
        )?;
        Ok(matches!(out, Deleted::Gone(_)))
    }

    /// Creates a namespace (no-op when it exists).
    pub fn create_namespace(&self, name: &str) -> Result<(), HandleError> {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match self.store.create(
            resource::core_resource("namespaces"),
            "",
            ns,
            &WriteCtx::by("lapdev-kube-double"),
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Enforces authentication and RBAC from now on (see the crate docs):
    /// requests with a ServiceAccount token from
    /// [`DoubleHandle::service_account_token`] are authorised from the stored
    /// Roles, ClusterRoles and their bindings; unknown tokens get 401; requests
    /// without a token or with the admin kubeconfig's stay cluster-admin.
    pub fn enable_rbac(&self) {
        self.auth.enable();
    }

    /// A bearer token that authenticates as `system:serviceaccount:NS:NAME`
    /// (valid while the ServiceAccount object exists).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.auth.issue(namespace, name)
    }

    /// The next `n` API requests fail with `code` (e.g. 500, 503) and its `Status`.
    pub fn fail_next(&self, n: usize, code: u16) {
        self.control.fail_next(n, code);
    }

    /// The next `n` requests with this verb and/or on this resource (plural,
    /// or e.g. `pods/status`) fail with `code`; other requests pass.
    pub fn fail_next_matching(
        &self,
        n: usize,
        code: u16,
        verb: Option<Verb>,
        resource: Option<&str>,
    ) {
        self.control.fail_next_matching(n, code, verb, resource);
    }

    /// Delays every API answer by `latency` (zero to stop), e.g. to exercise deadlines.
    pub fn set_latency(&self, latency: Duration) {
        self.control.set_latency(latency);
    }

    /// Sets how every API request is answered until changed.
    pub fn set_failure_mode(&self, mode: FailureMode) {
        self.control.set_failure_mode(mode);
    }

    /// Denies `verb` on `resource` (plural, or `pods/status`) with 403 `Forbidden`.
    pub fn deny(&self, verb: Verb, resource: &str) {
        self.control.deny(verb, resource);
    }

    /// Lifts a denial made with [`DoubleHandle::deny`].
    pub fn allow(&self, verb: Verb, resource: &str) {
        self.control.allow(verb, resource);
    }

    /// Ends every open watch stream (as an API server restart or a load balancer would).
    pub fn drop_watches(&self) {
        self.control.drop_watches();
    }

    /// Resource requests seen for `verb`, over every resource.
    pub fn request_count(&self, verb: Verb) -> u64 {
        self.control.request_count(verb)
    }

    /// Resource requests seen for `verb` on `resource` (plural, e.g. `pods`).
    pub fn request_count_for(&self, verb: Verb, resource: &str) -> u64 {
        self.control.request_count_for(verb, resource)
    }

    /// Requests outside resource paths (discovery, `/version`).
    pub fn non_resource_request_count(&self) -> u64 {
        self.control.non_resource_count()
    }

    /// Resets the request counters.
    pub fn reset_request_counts(&self) {
        self.control.reset_counts();
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.current_rv()
    }

    /// Forgets the whole watch history, so a watch or continue token from
    /// any earlier resourceVersion gets 410 `Gone`/`Expired` (like etcd compaction).
    pub fn compact(&self) {
        self.store.compact();
    }

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
