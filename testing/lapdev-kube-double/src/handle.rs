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
use crate::kubelet::kubelet_status;
use crate::object::Stored;
use crate::resource::{self, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Deleted, Preconditions, Store, WriteCtx};

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
    /// Local exec, the exec protocols offered and the pods' registered ports.
    pub(crate) streams: Arc<crate::stream::Streams>,
    /// The stand-in cluster-autoscaler's node group, when it is on.
    pub(crate) autoscaler: Arc<std::sync::Mutex<Option<crate::autoscaler::AutoscalerState>>>,
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
        let node = self.node_object(name, spec);
        let out = self.store.create(
            resource::core_resource("nodes"),
            "",
            node,
            &WriteCtx::by("kubelet"),
        )?;
        to_typed(&out)
    }

    /// The Node object a kubelet registers for `spec`: the well-known labels
    /// (`kubernetes.io/os` and `kubernetes.io/arch` default to linux and amd64,
    /// and `status.nodeInfo` says the same as the labels), capacity,
    /// allocatable and conditions.
    pub(crate) fn node_object(&self, name: &str, spec: NodeSpec) -> Value {
        let mut labels: BTreeMap<String, String> = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), name.to_owned()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("beta.kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ]);
        labels.extend(spec.labels);
        let os = labels.get("kubernetes.io/os").cloned().unwrap_or_default();
        let arch = labels
            .get("kubernetes.io/arch")
            .cloned()
            .unwrap_or_default();
        labels.insert("beta.kubernetes.io/os".to_owned(), os.clone());
        labels.insert("beta.kubernetes.io/arch".to_owned(), arch.clone());
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
                    "operatingSystem": os,
                    "architecture": arch,
                    "kernelVersion": "6.1.0",
                    "containerRuntimeVersion": "none://0.0.0",
                    "machineID": "", "systemUUID": "", "bootID": "",
                },
            },
        });
        if let Some(p) = spec.provider_id {
            node["spec"]["providerID"] = json!(p);
        }
        node
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

    /// Lets `pods/exec` run commands as local processes (in a scratch
    /// directory per pod, see [`DoubleHandle::scratch_dir`]); until then exec
    /// answers 403. The double has no authentication of its own: whoever
    /// reaches its port can then run any command as this process's user.
    pub fn enable_local_exec(&self) {
        self.streams.set_local_exec(true);
    }

    /// Turns local exec off again (403 for new exec requests).
    pub fn disable_local_exec(&self) {
        self.streams.set_local_exec(false);
    }

    /// Whether exec offers `v5.channel.k8s.io` (default `true`, as API
    /// servers from 1.30 do); `false` plays an older server that only speaks
    /// `v4.channel.k8s.io`, which has no way to close stdin alone.
    pub fn set_exec_v5(&self, offered: bool) {
        self.streams.set_offer_v5(offered);
    }

    /// Makes `pods/portforward` to `remote_port` of pod `namespace/pod` connect
    /// to `local_addr` (e.g. a loopback server the test runs). Unregistered
    /// ports, and registered ones nothing listens on, get the kubelet's
    /// `connection refused` error on the port's error channel.
    pub fn register_pod_port(
        &self,
        namespace: &str,
        pod: &str,
        remote_port: u16,
        local_addr: std::net::SocketAddr,
    ) {
        self.streams
            .register_port(namespace, pod, remote_port, local_addr);
    }

    /// Makes port-forward to a port nobody registered connect to the same
    /// port on `host` (e.g. `127.0.0.1`), for every pod; `None` (the default)
    /// turns this off. For end-to-end runs where pods are created by the
    /// system under test, so their names are not known up front.
    pub fn forward_unregistered_ports(&self, host: Option<std::net::IpAddr>) {
        self.streams.set_unregistered(host);
    }

    /// Forgets a port registered with [`DoubleHandle::register_pod_port`].
    pub fn unregister_pod_port(&self, namespace: &str, pod: &str, remote_port: u16) {
        self.streams.unregister_port(namespace, pod, remote_port);
    }

    /// The working directory of commands exec'd in pod `namespace/pod` (under
    /// the double's own temporary directory, created on first exec, removed
    /// when the [`crate::KubeDouble`] is dropped).
    pub fn scratch_dir(&self, namespace: &str, pod: &str) -> std::path::PathBuf {
        self.streams.scratch_dir(namespace, pod)
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
}
