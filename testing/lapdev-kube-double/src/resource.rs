//! The resources the double serves and how they are described in discovery.
//!
//! Every resource is stored the same way (as JSON); this table only says where it
//! lives in the URL space, its kind, whether it is namespaced, and whether it has
//! a `/status` subresource (which splits writes to `status` from writes to the
//! rest of the object, as the real registry strategies do).

use serde_json::{Value, json};

/// The static description of one served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural resource name, the URL segment.
    pub plural: &'static str,
    /// Singular name, as discovery reports it.
    pub singular: &'static str,
    /// Kind of the objects.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: &'static [&'static str],
    /// Whether the resource has a `/status` subresource.
    pub has_status: bool,
    /// Field selectors the resource accepts besides `metadata.name` and `metadata.namespace`.
    pub extra_fields: &'static [&'static str],
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `leases.coordination.k8s.io`, as the API's messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The discovery entries (`APIResource`) for this resource and its subresources.
    pub fn discovery(&self) -> Vec<Value> {
        let mut verbs = vec![
            "create", "delete", "get", "list", "patch", "update", "watch",
        ];
        if self.plural != "namespaces" {
            verbs.insert(1, "deletecollection");
        }
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
        })];
        if self.has_status {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.group.is_empty() && self.plural == "pods" {
            out.push(json!({
                "name": "pods/binding",
                "singularName": "",
                "namespaced": true,
                "kind": "Binding",
                "verbs": ["create"],
            }));
            // The real server lists both verbs for the streaming subresources
            // (GET for WebSocket, POST for SPDY).
            for sub in ["pods/exec", "pods/portforward"] {
                out.push(json!({
                    "name": sub,
                    "singularName": "",
                    "namespaced": true,
                    "kind": if sub == "pods/exec" { "PodExecOptions" } else { "PodPortForwardOptions" },
                    "verbs": ["create", "get"],
                }));
            }
        }
        out
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    has_status: bool,
    extra_fields: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        has_status,
        extra_fields,
    }
}

#[allow(clippy::too_many_arguments)]
const fn grouped(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    has_status: bool,
    extra_fields: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        has_status,
        extra_fields,
    }
}

const NEW_EVENT_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "reason",
    "reportingController",
    "type",
];

/// Every resource the double serves.
pub static RESOURCES: &[ResourceDef] = &[
    core(
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        true,
        &["status.phase"],
    ),
    core(
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        true,
        &["spec.unschedulable"],
    ),
    core("pods", "pod", "Pod", true, &["po"], true, POD_FIELDS),
    core(
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        true,
        &[],
    ),
    core(
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        false,
        EVENT_FIELDS,
    ),
    core("services", "service", "Service", true, &["svc"], true, &[]),
    core(
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        false,
        &[],
    ),
    core("secrets", "secret", "Secret", true, &[], false, &["type"]),
    core(
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        &[],
    ),
    grouped(
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        false,
        &[],
    ),
    grouped(
        "events.k8s.io",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        false,
        NEW_EVENT_FIELDS,
    ),
    grouped(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        true,
        &[],
    ),
    grouped(
        "networking.k8s.io",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        &["netpol"],
        false,
        &[],
    ),
    grouped(
        "storage.k8s.io",
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
        &["sc"],
        false,
        &[],
    ),
    grouped(
        "rbac.authorization.k8s.io",
        "roles",
        "role",
        "Role",
        true,
        &[],
        false,
        &[],
    ),
    grouped(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        false,
        &[],
    ),
    grouped(
        "rbac.authorization.k8s.io",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        false,
        &[],
    ),
    grouped(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        false,
        &[],
    ),
];

/// The resource served at `group/version/plural`, if any.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// A core/v1 resource by plural name; panics only on a typo in this crate.
pub(crate) fn core_resource(plural: &str) -> &'static ResourceDef {
    find("", "v1", plural).unwrap_or(&RESOURCES[0])
}

/// The named API groups (everything but core), each with its versions.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
