//! StorageClasses and what the volume controllers do with claims: binding a
//! claim at once (`Immediate`) or once a pod using it is scheduled
//! (`WaitForFirstConsumer`, through the scheduler's
//! `volume.kubernetes.io/selected-node` annotation), and growing a bound
//! claim's capacity after an allowed expansion (the external resizer and the
//! kubelet's online file system resize, at once).

use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{Value, json};

use crate::admission::DEFAULT_CLASS_ANNOTATION;
use crate::error::HandleError;
use crate::events::{Kind, Source};
use crate::handle::{DoubleHandle, to_typed};
use crate::resource;
use crate::store::WriteCtx;

/// The annotation the scheduler puts on a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

const WAITING: &str = "waiting for first consumer to be created before binding";

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn quantity(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::String(s)) => crate::validate::parse_quantity(s).unwrap_or(0.0),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        _ => 0.0,
    }
}

impl DoubleHandle {
    /// Adds a StorageClass (provisioner `pd.csi.storage.gke.io`, as on GKE):
    /// `allow_volume_expansion` lets bound claims of it grow,
    /// `wait_for_first_consumer` sets `volumeBindingMode: WaitForFirstConsumer`
    /// (else `Immediate`), `default` marks it the default class, which claims
    /// created without `storageClassName` then get.
    pub fn add_storage_class(
        &self,
        name: &str,
        allow_volume_expansion: bool,
        wait_for_first_consumer: bool,
        default: bool,
    ) -> Result<StorageClass, HandleError> {
        let mode = if wait_for_first_consumer {
            "WaitForFirstConsumer"
        } else {
            "Immediate"
        };
        let mut sc = json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "pd.csi.storage.gke.io",
            "parameters": {"type": "pd-balanced"},
            "reclaimPolicy": "Delete",
            "volumeBindingMode": mode,
            "allowVolumeExpansion": allow_volume_expansion,
        });
        if default {
            sc["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: "true"});
        }
        let res = resource::find("storage.k8s.io", "v1", "storageclasses")
            .unwrap_or(&resource::RESOURCES[0]);
        let out = self
            .store
            .create(res, "", sc, &WriteCtx::by("lapdev-kube-double"))?;
        to_typed(&out)
    }

    /// The volume controllers' pass over one claim (see the module docs).
    pub(crate) fn provision_claim(&self, ns: &str, name: &str) {
        let pvcs = resource::core_resource("persistentvolumeclaims");
        let Ok(stored) = self.store.get(pvcs, ns, name) else {
            return;
        };
        let claim = stored.value();
        if stored.attrs.deleting {
            return;
        }
        let requested = claim.pointer("/spec/resources/requests/storage").cloned();
        if str_at(&claim, "/status/phase") == "Bound" {
            let capacity = claim.pointer("/status/capacity/storage");
            if quantity(requested.as_ref()) > quantity(capacity) {
                let _ = self
                    .store
                    .mutate(pvcs, ns, name, "kubelet", "status", |pvc| {
                        pvc["status"]["capacity"]["storage"] =
                            requested.clone().unwrap_or(json!("1Gi"));
                    });
            }
            return;
        }
        if str_at(&claim, "/status/phase") != "Pending" {
            return;
        }
        let class = str_at(&claim, "/spec/storageClassName");
        let classes = resource::find("storage.k8s.io", "v1", "storageclasses");
        let waits = classes
            .and_then(|r| self.store.get(r, "", class).ok())
            .is_some_and(|sc| str_at(&sc.value(), "/volumeBindingMode") == "WaitForFirstConsumer");
        let selected = claim
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SELECTED_NODE))
            .is_some();
        if waits && !selected {
            let source = Source {
                component: "persistentvolume-controller",
                host: None,
            };
            let _ = self.record_event(
                &claim,
                source,
                Kind::Normal,
                "WaitForFirstConsumer",
                WAITING,
                None,
            );
            return;
        }
        let _ = self.store.mutate(pvcs, ns, name, "kube-controller-manager", "status", |pvc| {
            if pvc.pointer("/status/phase") != Some(&json!("Pending")) {
                return;
            }
            let uid = str_at(pvc, "/metadata/uid").to_owned();
            let storage = requested.clone().unwrap_or(json!("1Gi"));
            let modes = pvc.pointer("/spec/accessModes").cloned().unwrap_or(json!([]));
            pvc["spec"]["volumeName"] = json!(format!("pvc-{uid}"));
            pvc["status"] = json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": storage}});
        });
    }

    /// The scheduler's volume binding for a pod it bound to `node`: its
    /// `WaitForFirstConsumer` claims that wait get the selected node.
    pub(crate) fn select_node_for_claims(&self, pod: &Value, node: &str) {
        let pvcs = resource::core_resource("persistentvolumeclaims");
        let ns = str_at(pod, "/metadata/namespace");
        let claims = crate::object::Attrs::of(resource::core_resource("pods"), pod).claims;
        let classes = resource::find("storage.k8s.io", "v1", "storageclasses");
        for claim in claims {
            let waits = self.store.get(pvcs, ns, &claim).ok().is_some_and(|c| {
                let class = str_at(&c.value(), "/spec/storageClassName").to_owned();
                classes
                    .and_then(|r| self.store.get(r, "", &class).ok())
                    .is_some_and(|sc| {
                        str_at(&sc.value(), "/volumeBindingMode") == "WaitForFirstConsumer"
                    })
            });
            if !waits {
                continue;
            }
            let _ = self
                .store
                .mutate(pvcs, ns, &claim, "kube-scheduler", "", |pvc| {
                    if str_at(pvc, "/status/phase") != "Pending" {
                        return;
                    }
                    let meta = &mut pvc["metadata"];
                    if !meta.get("annotations").is_some_and(Value::is_object) {
                        meta["annotations"] = json!({});
                    }
                    meta["annotations"][SELECTED_NODE] = json!(node);
                });
        }
    }
}
