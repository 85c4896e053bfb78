//! The stand-in kubelet failing pods as real kubelets do: image pulls that fail
//! and back off (`ErrImagePull` and `ImagePullBackOff` alternating), invalid
//! image names, crash loops (`CrashLoopBackOff` with `lastState.terminated`),
//! evictions and volumes that never attach; each with the pod status, the
//! container statuses and the Events a real kubelet (or the attach/detach
//! controller) writes.
//!
//! A failing pod is remembered by uid, so the stand-in kubelet loop leaves it
//! alone (it never becomes `Running`) until [`DoubleHandle::kubelet_recover`];
//! [`DoubleHandle::kubelet_retry`] plays the kubelet's next attempt.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::error::HandleError;
use crate::events::{Kind, Source};
use crate::handle::{DoubleHandle, kubelet_status, now, set_condition};
use crate::resource;

/// Longest crash-loop back-off of a real kubelet (5 minutes).
const MAX_BACKOFF_SECS: u64 = 300;

/// How the stand-in kubelet fails one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PodFault {
    ImagePull,
    InvalidImage,
    CrashLoop,
    VolumeAttach,
    Evicted,
}

/// What the stand-in kubelets are told to do wrong.
#[derive(Debug)]
pub(crate) struct KubeletState {
    /// Failing pods by uid (a new pod of the same name is a new pod).
    pub pods: HashMap<String, PodFault>,
    /// Nodes whose kubelet stopped ([`DoubleHandle::set_node_lost`]).
    pub lost_nodes: HashSet<String>,
    /// Whether the pod garbage collector runs (see [`DoubleHandle::set_pod_gc`]).
    pub pod_gc: bool,
}

impl Default for KubeletState {
    fn default() -> Self {
        Self {
            pods: HashMap::new(),
            lost_nodes: HashSet::new(),
            pod_gc: true,
        }
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn containers(pod: &Value) -> Vec<Value> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The image reference as containerd resolves it: `nginx:1` is
/// `docker.io/library/nginx:1`, a missing tag is `:latest`.
fn full_image(image: &str) -> String {
    let (first, rest) = image.split_once('/').unwrap_or(("", image));
    let registry_given =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut out = match (first.is_empty(), registry_given) {
        (true, _) => format!("docker.io/library/{rest}"),
        (false, true) => image.to_owned(),
        (false, false) => format!("docker.io/{image}"),
    };
    let last = out.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !last.contains('@') {
        out.push_str(":latest");
    }
    out
}

/// The error containerd reports for an image that does not exist.
fn pull_error(image: &str) -> String {
    let full = full_image(image);
    format!(
        "rpc error: code = NotFound desc = failed to pull and unpack image \"{full}\": failed to resolve reference \"{full}\": {full}: not found"
    )
}

fn invalid_image_message(image: &str) -> String {
    format!(
        "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
    )
}

/// A duration as Go prints it (`10s`, `1m20s`, `5m0s`), as in the kubelet's messages.
fn go_duration(secs: u64) -> String {
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// The kubelet's crash-loop back-off after `restarts` restarts: 10 s, doubling, at most 5 min.
fn crash_backoff(restarts: i64) -> u64 {
    let doublings = u32::try_from(restarts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    (10u64 << doublings).min(MAX_BACKOFF_SECS)
}

/// Sets a pod condition with its reason and message.
fn set_condition_why(conditions: &mut Vec<Value>, ty: &str, status: &str, reason: &str, msg: &str) {
    set_condition(conditions, ty, status);
    if let Some(c) = conditions
        .iter_mut()
        .find(|c| c.get("type") == Some(&json!(ty)))
    {
        c["reason"] = json!(reason);
        c["message"] = json!(msg);
    }
}

fn conditions_of(pod: &Value) -> Vec<Value> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn container_names(pod: &Value) -> String {
    let names: Vec<String> = containers(pod)
        .iter()
        .map(|c| str_at(c, "/name").to_owned())
        .collect();
    names.join(" ")
}

/// Ready and ContainersReady false because containers are not ready.
fn not_ready(pod: &mut Value) {
    let mut list = conditions_of(pod);
    let msg = format!("containers with unready status: [{}]", container_names(pod));
    set_condition_why(
        &mut list,
        "ContainersReady",
        "False",
        "ContainersNotReady",
        &msg,
    );
    set_condition_why(&mut list, "Ready", "False", "ContainersNotReady", &msg);
    pod["status"]["conditions"] = json!(list);
}

/// A not-ready container status in `state`, keeping the restart count and
/// last state of the previous status of the same container.
fn container_status(pod: &Value, c: &Value, state: Value) -> Value {
    let name = str_at(c, "/name");
    let old = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|s| str_at(s, "/name") == name));
    json!({
        "name": name,
        "image": c.get("image"),
        "imageID": "",
        "ready": false,
        "started": false,
        "restartCount": old.and_then(|o| o.get("restartCount")).cloned().unwrap_or(json!(0)),
        "state": state,
        "lastState": old.and_then(|o| o.get("lastState")).cloned().unwrap_or(json!({})),
    })
}

/// Sets every container's status from `f` (container spec, its old status).
fn set_container_statuses(pod: &mut Value, f: impl Fn(&Value, &Value) -> Value) {
    let statuses: Vec<Value> = containers(pod).iter().map(|c| f(pod, c)).collect();
    pod["status"]["containerStatuses"] = json!(statuses);
}

/// What a kubelet reports for a pod whose sandbox runs (start time, pod IP,
/// conditions), keeping the container statuses it reported before.
fn started(pod: &mut Value) {
    let before = pod.pointer("/status/containerStatuses").cloned();
    kubelet_status(pod, "Running");
    if let Some(b) = before {
        pod["status"]["containerStatuses"] = b;
    }
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl DoubleHandle {
    fn pod_key(ns: &str, name: &str) -> String {
        format!("{ns}/{name}")
    }

    /// The fault the stand-in kubelet plays for the pod with this uid.
    pub(crate) fn fault_of(&self, uid: &str) -> Option<PodFault> {
        self.kubelet_lock().pods.get(uid).copied()
    }

    /// The pod, bound to a node first by the stand-in scheduler when it is on none.
    fn pod_on_node(&self, ns: &str, name: &str) -> Result<(Value, String), HandleError> {
        let pods = resource::core_resource("pods");
        let stored = self.store.get(pods, ns, name)?;
        let node = stored.attrs.field(pods, "spec.nodeName").to_owned();
        if !node.is_empty() {
            return Ok((stored.value(), node));
        }
        let node = {
            let _one_at_a_time = self
                .scheduler
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.schedule(&stored, 0)
                .map_err(|why| HandleError::Unschedulable(Self::pod_key(ns, name), why))?
        };
        let bound = self.bind_pod(ns, name, &node)?;
        let value = serde_json::to_value(bound).map_err(HandleError::Serialize)?;
        Ok((value, node))
    }

    fn set_fault(&self, pod: &Value, fault: PodFault) {
        let uid = str_at(pod, "/metadata/uid").to_owned();
        self.kubelet_lock().pods.insert(uid, fault);
    }

    /// Writes the pod's status as the kubelet does (`pods/status`).
    fn write_status(
        &self,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, HandleError> {
        let pods = resource::core_resource("pods");
        let out = self.store.mutate(pods, ns, name, "kubelet", "status", f)?;
        Ok(out.value())
    }

    /// Records an event about a container of `pod` from its node's kubelet.
    fn kubelet_event(&self, pod: &Value, node: &str, c: &str, kind: Kind, reason: &str, msg: &str) {
        let source = Source {
            component: "kubelet",
            host: Some(node),
        };
        let path = format!("spec.containers{{{c}}}");
        // An event that cannot be written (its namespace went) is lost, as on
        // a real cluster; the pod's status still says what happened.
        let _ = self.record_event(pod, source, kind, reason, msg, Some(&path));
    }

    /// The image pull of every container of the pod fails, as for an image that
    /// does not exist: the pod stays `Pending`, each container `waiting` with
    /// reason `ErrImagePull` and containerd's error as message, and the kubelet's
    /// `Pulling` and `Failed` Events. Each [`DoubleHandle::kubelet_retry`] then
    /// alternates `ImagePullBackOff` (message `Back-off pulling image "IMG"`,
    /// Event `BackOff`) and `ErrImagePull`, counting the repeated Events up.
    /// A pod on no node is bound first by the stand-in scheduler.
    pub fn kubelet_fail_image_pull(&self, ns: &str, pod: &str) -> Result<(), HandleError> {
        let (value, node) = self.pod_on_node(ns, pod)?;
        self.set_fault(&value, PodFault::ImagePull);
        self.pull_failed(ns, pod, &node)
    }

    fn pull_failed(&self, ns: &str, pod: &str, node: &str) -> Result<(), HandleError> {
        let value = self.write_status(ns, pod, |p| {
            started(p);
            p["status"]["phase"] = json!("Pending");
            not_ready(p);
            set_container_statuses(p, |pod, c| {
                let image = str_at(c, "/image");
                let state =
                    json!({"waiting": {"reason": "ErrImagePull", "message": pull_error(image)}});
                container_status(pod, c, state)
            });
        })?;
        for c in containers(&value) {
            let (name, image) = (str_at(&c, "/name"), str_at(&c, "/image"));
            let failed = format!("Failed to pull image \"{image}\": {}", pull_error(image));
            self.kubelet_event(
                &value,
                node,
                name,
                Kind::Normal,
                "Pulling",
                &format!("Pulling image \"{image}\""),
            );
            self.kubelet_event(&value, node, name, Kind::Warning, "Failed", &failed);
            self.kubelet_event(
                &value,
                node,
                name,
                Kind::Warning,
                "Failed",
                "Error: ErrImagePull",
            );
        }
        Ok(())
    }

    fn pull_backing_off(&self, ns: &str, pod: &str, node: &str) -> Result<(), HandleError> {
        let value = self.write_status(ns, pod, |p| {
            set_container_statuses(p, |pod, c| {
                let image = str_at(c, "/image");
                let msg = format!("Back-off pulling image \"{image}\"");
                let state = json!({"waiting": {"reason": "ImagePullBackOff", "message": msg}});
                container_status(pod, c, state)
            });
        })?;
        for c in containers(&value) {
            let (name, image) = (str_at(&c, "/name"), str_at(&c, "/image"));
            let msg = format!("Back-off pulling image \"{image}\"");
            self.kubelet_event(&value, node, name, Kind::Normal, "BackOff", &msg);
            self.kubelet_event(
                &value,
                node,
                name,
                Kind::Warning,
                "Failed",
                "Error: ImagePullBackOff",
            );
        }
        Ok(())
    }

    /// The pod's image names do not parse: `waiting` reason `InvalidImageName`
    /// with the kubelet's message and Events `InspectFailed` and `Failed`; no
    /// retry ever changes that (a retry counts the Events up).
    pub fn kubelet_fail_invalid_image(&self, ns: &str, pod: &str) -> Result<(), HandleError> {
        let (value, node) = self.pod_on_node(ns, pod)?;
        self.set_fault(&value, PodFault::InvalidImage);
        self.invalid_image(ns, pod, &node)
    }

    fn invalid_image(&self, ns: &str, pod: &str, node: &str) -> Result<(), HandleError> {
        let value = self.write_status(ns, pod, |p| {
            started(p);
            p["status"]["phase"] = json!("Pending");
            not_ready(p);
            set_container_statuses(p, |pod, c| {
                let msg = invalid_image_message(str_at(c, "/image"));
                let state = json!({"waiting": {"reason": "InvalidImageName", "message": msg}});
                container_status(pod, c, state)
            });
        })?;
        for c in containers(&value) {
            let (name, image) = (str_at(&c, "/name"), str_at(&c, "/image"));
            let msg = invalid_image_message(image);
            self.kubelet_event(&value, node, name, Kind::Warning, "InspectFailed", &msg);
            self.kubelet_event(
                &value,
                node,
                name,
                Kind::Warning,
                "Failed",
                "Error: InvalidImageName",
            );
        }
        Ok(())
    }

    /// The pod's containers start and exit, again and again: phase `Running`,
    /// Ready false, each container `waiting` with reason `CrashLoopBackOff` and
    /// the kubelet's `back-off 10s restarting failed container=C pod=P_NS(UID)`
    /// message, `lastState.terminated` `OOMKilled` (exit code 137) when `oom`,
    /// else `Error` (exit code 1), `restartCount` one up, and a `BackOff` Event.
    /// Each [`DoubleHandle::kubelet_retry`] is one more restart: the count goes
    /// up and the back-off doubles (10s, 20s, 40s, ... 5m0s).
    pub fn kubelet_crash_loop(&self, ns: &str, pod: &str, oom: bool) -> Result<(), HandleError> {
        let (value, node) = self.pod_on_node(ns, pod)?;
        self.set_fault(&value, PodFault::CrashLoop);
        self.crashed(ns, pod, &node, Some(oom))
    }

    /// One more crash; `oom` `None` keeps the kind of the last one.
    fn crashed(
        &self,
        ns: &str,
        pod: &str,
        node: &str,
        oom: Option<bool>,
    ) -> Result<(), HandleError> {
        let when = now();
        let value = self.write_status(ns, pod, |p| {
            let (name, uid) = (
                str_at(p, "/metadata/name").to_owned(),
                str_at(p, "/metadata/uid").to_owned(),
            );
            started(p);
            not_ready(p);
            set_container_statuses(p, |pod, c| {
                let mut status = container_status(pod, c, json!({}));
                let restarts = status["restartCount"].as_i64().unwrap_or(0) + 1;
                let was_oom =
                    status.pointer("/lastState/terminated/reason") == Some(&json!("OOMKilled"));
                let (code, reason) = if oom.unwrap_or(was_oom) {
                    (137, "OOMKilled")
                } else {
                    (1, "Error")
                };
                let msg = format!(
                    "back-off {} restarting failed container={} pod={name}_{ns}({uid})",
                    go_duration(crash_backoff(restarts)),
                    str_at(c, "/name"),
                );
                status["restartCount"] = json!(restarts);
                status["state"] =
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": msg}});
                status["lastState"] = json!({"terminated": {
                    "exitCode": code, "reason": reason, "startedAt": when, "finishedAt": when,
                    "containerID": format!("containerd://{}", random_hex()),
                }});
                status
            });
        })?;
        let (name, uid) = (
            str_at(&value, "/metadata/name"),
            str_at(&value, "/metadata/uid"),
        );
        for c in containers(&value) {
            let (cname, image) = (str_at(&c, "/name"), str_at(&c, "/image"));
            let pulled = format!("Container image \"{image}\" already present on machine");
            self.kubelet_event(&value, node, cname, Kind::Normal, "Pulled", &pulled);
            self.kubelet_event(
                &value,
                node,
                cname,
                Kind::Normal,
                "Created",
                &format!("Created container {cname}"),
            );
            self.kubelet_event(
                &value,
                node,
                cname,
                Kind::Normal,
                "Started",
                &format!("Started container {cname}"),
            );
            let msg =
                format!("Back-off restarting failed container {cname} in pod {name}_{ns}({uid})");
            self.kubelet_event(&value, node, cname, Kind::Warning, "BackOff", &msg);
        }
        Ok(())
    }

    /// The node's kubelet evicts the pod (e.g. under memory pressure): phase
    /// `Failed`, `status.reason` `Evicted`, `status.message` `message`, a
    /// `DisruptionTarget` condition (reason `TerminationByKubelet`), every
    /// container terminated (exit code 137), and Events `Evicted` and `Killing`.
    /// A real kubelet's message reads like `The node was low on resource:
    /// memory. Threshold quantity: 100Mi, available: 20Mi.`
    pub fn kubelet_evict(&self, ns: &str, pod: &str, message: &str) -> Result<(), HandleError> {
        let (value, node) = self.pod_on_node(ns, pod)?;
        self.set_fault(&value, PodFault::Evicted);
        let when = now();
        let value = self.write_status(ns, pod, |p| {
            started(p);
            let status = &mut p["status"];
            status["phase"] = json!("Failed");
            status["reason"] = json!("Evicted");
            status["message"] = json!(message);
            let mut list = conditions_of(p);
            set_condition_why(
                &mut list,
                "DisruptionTarget",
                "True",
                "TerminationByKubelet",
                message,
            );
            set_condition_why(&mut list, "Ready", "False", "PodFailed", "");
            set_condition_why(&mut list, "ContainersReady", "False", "PodFailed", "");
            p["status"]["conditions"] = json!(list);
            set_container_statuses(p, |pod, c| {
                let state = json!({"terminated": {
                    "exitCode": 137, "reason": "Error", "startedAt": when, "finishedAt": when,
                    "containerID": format!("containerd://{}", random_hex()),
                }});
                container_status(pod, c, state)
            });
        })?;
        let source = Source {
            component: "kubelet",
            host: Some(&node),
        };
        let _ = self.record_event(&value, source, Kind::Warning, "Evicted", message, None);
        for c in containers(&value) {
            let cname = str_at(&c, "/name");
            self.kubelet_event(
                &value,
                &node,
                cname,
                Kind::Normal,
                "Killing",
                &format!("Stopping container {cname}"),
            );
        }
        Ok(())
    }

    /// The pod's PersistentVolumeClaims never attach to its node: the pod stays
    /// `Pending` with its containers `waiting` in `ContainerCreating`, with a
    /// `FailedAttachVolume` Event from the attach/detach controller and a
    /// `FailedMount` Event from the kubelet; each retry counts them up.
    pub fn kubelet_fail_volume_attach(&self, ns: &str, pod: &str) -> Result<(), HandleError> {
        let (value, node) = self.pod_on_node(ns, pod)?;
        if crate::object::Attrs::of(resource::core_resource("pods"), &value)
            .claims
            .is_empty()
        {
            return Err(HandleError::NoClaim(Self::pod_key(ns, pod)));
        }
        self.set_fault(&value, PodFault::VolumeAttach);
        self.attach_failed(ns, pod, &node)
    }

    fn attach_failed(&self, ns: &str, pod: &str, node: &str) -> Result<(), HandleError> {
        let value = self.write_status(ns, pod, |p| {
            let status = &mut p["status"];
            status["phase"] = json!("Pending");
            let mut list = conditions_of(p);
            for ty in ["PodScheduled", "Initialized"] {
                set_condition(&mut list, ty, "True");
            }
            set_condition(&mut list, "PodReadyToStartContainers", "False");
            p["status"]["conditions"] = json!(list);
            not_ready(p);
            set_container_statuses(p, |pod, c| {
                container_status(pod, c, json!({"waiting": {"reason": "ContainerCreating"}}))
            });
        })?;
        let pvcs = resource::core_resource("persistentvolumeclaims");
        let volumes = value
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut names = Vec::new();
        for v in &volumes {
            let Some(claim) = v
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            else {
                continue;
            };
            names.push(str_at(v, "/name").to_owned());
            let pv = match self.store.get(pvcs, ns, claim) {
                Ok(c) => {
                    let c = c.value();
                    match str_at(&c, "/spec/volumeName") {
                        "" => format!("pvc-{}", str_at(&c, "/metadata/uid")),
                        name => name.to_owned(),
                    }
                }
                Err(_) => format!("pvc-{claim}"),
            };
            let msg = format!(
                "AttachVolume.Attach failed for volume \"{pv}\" : rpc error: code = DeadlineExceeded desc = context deadline exceeded"
            );
            let source = Source {
                component: "attachdetach-controller",
                host: None,
            };
            let _ = self.record_event(
                &value,
                source,
                Kind::Warning,
                "FailedAttachVolume",
                &msg,
                None,
            );
        }
        let names = names.join(" ");
        let msg = format!(
            "Unable to attach or mount volumes: unmounted volumes=[{names}], unattached volumes=[{names}], failed to process volumes=[]: timed out waiting for the condition"
        );
        let source = Source {
            component: "kubelet",
            host: Some(node),
        };
        let _ = self.record_event(&value, source, Kind::Warning, "FailedMount", &msg, None);
        Ok(())
    }

    /// The kubelet's next attempt at a pod it is failing: an image pull
    /// alternates between `ErrImagePull` and `ImagePullBackOff`, a crash loop
    /// restarts once more (count up, back-off doubled), an invalid image or a
    /// volume attach fails the same way again; repeated Events are counted up
    /// (`count`, `lastTimestamp`). An evicted pod is final: nothing changes.
    pub fn kubelet_retry(&self, ns: &str, pod: &str) -> Result<(), HandleError> {
        let pods = resource::core_resource("pods");
        let stored = self.store.get(pods, ns, pod)?;
        let value = stored.value();
        let node = stored.attrs.field(pods, "spec.nodeName").to_owned();
        let fault = self
            .fault_of(str_at(&value, "/metadata/uid"))
            .ok_or_else(|| HandleError::NotFailing(Self::pod_key(ns, pod)))?;
        match fault {
            PodFault::ImagePull => {
                let reason = str_at(&value, "/status/containerStatuses/0/state/waiting/reason");
                if reason == "ErrImagePull" {
                    self.pull_backing_off(ns, pod, &node)
                } else {
                    self.pull_failed(ns, pod, &node)
                }
            }
            PodFault::InvalidImage => self.invalid_image(ns, pod, &node),
            PodFault::CrashLoop => self.crashed(ns, pod, &node, None),
            PodFault::VolumeAttach => self.attach_failed(ns, pod, &node),
            PodFault::Evicted => Ok(()),
        }
    }

    /// The failure goes away (the image now exists, the volume attached, the
    /// process stopped crashing): the pod becomes `Running` and Ready. An
    /// evicted pod stays `Failed`, as on a real cluster.
    pub fn kubelet_recover(&self, ns: &str, pod: &str) -> Result<(), HandleError> {
        let pods = resource::core_resource("pods");
        let stored = self.store.get(pods, ns, pod)?;
        let uid = str_at(&stored.value(), "/metadata/uid").to_owned();
        let fault = self.kubelet_lock().pods.remove(&uid);
        match fault {
            None | Some(PodFault::Evicted) => Ok(()),
            Some(_) => {
                self.write_status(ns, pod, |p| {
                    let restarts: Vec<Value> = p
                        .pointer("/status/containerStatuses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    kubelet_status(p, "Running");
                    let mut list = conditions_of(p);
                    for ty in ["PodReadyToStartContainers", "ContainersReady", "Ready"] {
                        set_condition(&mut list, ty, "True");
                    }
                    for c in list.iter_mut() {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("reason");
                            c.remove("message");
                        }
                    }
                    p["status"]["conditions"] = json!(list);
                    // The restart count and last state survive a recovery.
                    if let Some(statuses) = p
                        .pointer_mut("/status/containerStatuses")
                        .and_then(Value::as_array_mut)
                    {
                        for s in statuses.iter_mut() {
                            let name = s.get("name").cloned();
                            if let Some(old) =
                                restarts.iter().find(|o| o.get("name") == name.as_ref())
                            {
                                s["restartCount"] =
                                    old.get("restartCount").cloned().unwrap_or(json!(0));
                                s["lastState"] = old.get("lastState").cloned().unwrap_or(json!({}));
                            }
                        }
                    }
                })?;
                Ok(())
            }
        }
    }

    /// Forgets the fault of a pod that is gone.
    pub(crate) fn forget_fault(&self, uid: &str) {
        self.kubelet_lock().pods.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_resolve_like_containerd() {
        assert_eq!(full_image("nginx:bad"), "docker.io/library/nginx:bad");
        assert_eq!(full_image("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(full_image("me/app:1"), "docker.io/me/app:1");
        assert_eq!(full_image("ghcr.io/me/app"), "ghcr.io/me/app:latest");
        assert_eq!(full_image("localhost:5000/app:2"), "localhost:5000/app:2");
    }

    #[test]
    fn crash_backoff_doubles_to_five_minutes() {
        let seen: Vec<String> = (1..=7).map(|r| go_duration(crash_backoff(r))).collect();
        assert_eq!(
            seen,
            ["10s", "20s", "40s", "1m20s", "2m40s", "5m0s", "5m0s"]
        );
    }
}
