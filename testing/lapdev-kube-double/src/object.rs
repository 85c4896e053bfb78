//! Stored objects: serialized once per version (as etcd keeps them), with the few
//! attributes that selectors and the built-in controllers look at.
//!
//! Keeping JSON bytes instead of parsed values makes a list or a watch event a
//! copy of bytes and keeps the memory of 20,000 pods plus their history small.
//! Writes parse the current version, change it, and serialize the new one.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

use crate::resource::ResourceDef;

/// What selectors and controllers need without parsing the object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attrs {
    /// `metadata.namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Values of the resource's extra selectable fields, in `extra_fields` order.
    pub fields: Vec<String>,
    /// For pods: the PVCs their volumes mount.
    pub claims: Vec<String>,
    /// For pods: whether the phase is `Succeeded` or `Failed`.
    pub terminated: bool,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
    /// For pods: CPU (cores) and memory (bytes) requested, as the scheduler
    /// counts them; for nodes: allocatable CPU and memory.
    pub cpu: f64,
    /// See `cpu`.
    pub memory: f64,
    /// For nodes: whether the `Ready` condition is `True`.
    pub ready: bool,
    /// For nodes: `spec.taints`, so the scheduler need not parse every node.
    pub taints: Vec<Value>,
}

fn quantity(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::String(s)) => crate::validate::parse_quantity(s).unwrap_or(0.0),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// What one container asks for: its requests, or its limits where requests are unset.
fn container_requests(c: &Value, resource: &str) -> f64 {
    let requested = c
        .pointer("/resources/requests")
        .and_then(|r| r.get(resource));
    let limited = c.pointer("/resources/limits").and_then(|r| r.get(resource));
    quantity(requested.or(limited))
}

/// A pod's effective request, as the scheduler computes it
/// (`k8s.io/component-helpers/resource.PodRequests`): the containers plus the
/// sidecar init containers (`restartPolicy: Always`), or the largest init
/// container plus the sidecars started before it when that is more, plus
/// `spec.overhead`.
fn pod_requests(pod: &Value, resource: &str) -> f64 {
    let list = |key: &str| {
        pod.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut sidecars = 0.0;
    let mut init_peak: f64 = 0.0;
    for c in list("initContainers") {
        let r = container_requests(&c, resource);
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            sidecars += r;
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars + r);
        }
    }
    let app: f64 = sidecars
        + list("containers")
            .iter()
            .map(|c| container_requests(c, resource))
            .sum::<f64>();
    let overhead = quantity(pod.pointer("/spec/overhead").and_then(|o| o.get(resource)));
    app.max(init_peak) + overhead
}

/// The string value of a dotted field path, as the field-selector index sees it.
pub fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    for part in field.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

impl Attrs {
    /// The value of one of the resource's extra selectable fields, e.g. a pod's
    /// `spec.nodeName`.
    pub fn field(&self, res: &ResourceDef, name: &str) -> &str {
        res.extra_fields
            .iter()
            .position(|f| *f == name)
            .and_then(|i| self.fields.get(i))
            .map_or("", String::as_str)
    }

    /// Extracts the attributes of `obj`, a `res` object.
    pub fn of(res: &ResourceDef, obj: &Value) -> Self {
        let meta = obj.get("metadata");
        let s = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let finalizers = meta
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut claims = Vec::new();
        let mut terminated = false;
        let (mut cpu, mut memory, mut ready) = (0.0, 0.0, false);
        let mut taints = Vec::new();
        if res.plural == "nodes" && res.group.is_empty() {
            taints = obj
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            cpu = quantity(obj.pointer("/status/allocatable/cpu"));
            memory = quantity(obj.pointer("/status/allocatable/memory"));
            ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| {
                    c.get("type") == Some(&Value::from("Ready"))
                        && c.get("status") == Some(&Value::from("True"))
                });
        }
        if res.plural == "pods" && res.group.is_empty() {
            let volumes = obj.pointer("/spec/volumes").and_then(Value::as_array);
            claims = volumes
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    v.pointer("/persistentVolumeClaim/claimName")
                        .and_then(Value::as_str)
                })
                .map(str::to_owned)
                .collect();
            let phase = obj
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            terminated = phase == "Succeeded" || phase == "Failed";
            cpu = pod_requests(obj, "cpu");
            memory = pod_requests(obj, "memory");
        }
        Self {
            namespace: s("namespace"),
            name: s("name"),
            labels,
            fields: res
                .extra_fields
                .iter()
                .map(|f| field_value(obj, f))
                .collect(),
            claims,
            terminated,
            deleting: meta.is_some_and(|m| m.get("deletionTimestamp").is_some()),
            finalizers,
            cpu,
            memory,
            ready,
            taints,
        }
    }
}

/// An object without `kind`/`apiVersion`, as items of a real list are sent.
struct WithoutType<'a>(&'a Value);

impl Serialize for WithoutType<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in m.iter().filter(|(k, _)| *k != "kind" && *k != "apiVersion") {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

/// One stored version of an object.
#[derive(Debug, Clone)]
pub struct Stored {
    res: &'static ResourceDef,
    /// The object as a list item: JSON without `kind` and `apiVersion`.
    item: Bytes,
    /// Selector and controller attributes.
    pub attrs: Attrs,
}

impl Stored {
    /// Serializes `obj`, an object of `res`.
    pub fn new(res: &'static ResourceDef, obj: &Value) -> Self {
        let item = serde_json::to_vec(&WithoutType(obj)).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            res,
            item: Bytes::from(item),
            attrs: Attrs::of(res, obj),
        }
    }

    /// The JSON of the object as a list item (no `kind`/`apiVersion`).
    pub fn item_json(&self) -> &[u8] {
        &self.item
    }

    /// The JSON of the whole object, with `kind` and `apiVersion`.
    pub fn json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.item.len() + 64);
        out.extend_from_slice(b"{\"kind\":");
        out.extend(serde_json::to_vec(self.res.kind).unwrap_or_default());
        out.extend_from_slice(b",\"apiVersion\":");
        out.extend(serde_json::to_vec(&self.res.api_version()).unwrap_or_default());
        match self.item.get(1..) {
            Some(rest) if rest.first().is_some_and(|b| *b != b'}') => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            _ => out.push(b'}'),
        }
        out
    }

    /// The object parsed, with `kind` and `apiVersion`.
    pub fn value(&self) -> Value {
        let mut v: Value = serde_json::from_slice(&self.item)
            .unwrap_or_else(|_| Value::Object(Default::default()));
        if let Some(m) = v.as_object_mut() {
            m.insert("kind".to_owned(), Value::String(self.res.kind.to_owned()));
            m.insert(
                "apiVersion".to_owned(),
                Value::String(self.res.api_version()),
            );
        }
        v
    }
}
