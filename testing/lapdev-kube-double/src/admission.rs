//! Admission plugins that look at other objects: `DefaultStorageClass`
//! (mutating: a claim without a class gets the default one),
//! `PersistentVolumeClaimResize` (validating: a claim may only grow when its
//! StorageClass allows volume expansion) and `PodSecurity` (validating: pods
//! against their namespace's enforced level, see [`crate::pod_security`]). They run where the real API server
//! runs them: mutating before validation, validating after it.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resource::{self, ResourceDef};
use crate::validate::parse_quantity;

/// The annotation that marks the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// Read access to the stored objects, for plugins that consult other objects.
pub(crate) trait Lookup {
    /// One object, if it exists.
    fn get(&self, res: &'static ResourceDef, ns: &str, name: &str) -> Option<Value>;
    /// Every object of a cluster-scoped resource.
    fn all(&self, res: &'static ResourceDef) -> Vec<Value>;
}

fn storage_classes() -> &'static ResourceDef {
    resource::find("storage.k8s.io", "v1", "storageclasses").unwrap_or(&resource::RESOURCES[0])
}

fn is_default_class(sc: &Value) -> bool {
    sc.pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// Mutating admission on create.
pub(crate) fn mutate_create(res: &ResourceDef, obj: &mut Value, store: &dyn Lookup) {
    if res.group.is_empty() && res.plural == "persistentvolumeclaims" {
        default_storage_class(obj, store);
    }
}

/// `DefaultStorageClass`: a claim that names no class (the field absent, not
/// `""`) gets the default class; of several defaults, the newest.
fn default_storage_class(obj: &mut Value, store: &dyn Lookup) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("storageClassName").is_some_and(|v| !v.is_null()) {
        return;
    }
    let newest = store
        .all(storage_classes())
        .into_iter()
        .filter(is_default_class)
        .max_by(|a, b| {
            let created = |v: &Value| {
                v.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            created(a).cmp(&created(b))
        });
    if let Some(name) = newest
        .as_ref()
        .and_then(|sc| sc.pointer("/metadata/name"))
        .and_then(Value::as_str)
    {
        spec.insert("storageClassName".to_owned(), json!(name));
    }
}

/// Validating admission on create.
pub(crate) fn validate_create(
    res: &ResourceDef,
    obj: &Value,
    store: &dyn Lookup,
) -> Result<(), ApiError> {
    if !(res.group.is_empty() && res.plural == "pods") {
        return Ok(());
    }
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let labels = store
        .get(resource::core_resource("namespaces"), "", ns)
        .and_then(|n| n.pointer("/metadata/labels").cloned())
        .and_then(|l| l.as_object().cloned())
        .unwrap_or_default();
    match crate::pod_security::check(obj, &labels) {
        None => Ok(()),
        Some(why) => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!("{} \"{name}\" is forbidden: {why}", res.qualified()),
                details: Some(json!({"name": name, "kind": res.plural})),
            })
        }
    }
}

/// Validating admission on update.
pub(crate) fn validate_update(
    res: &ResourceDef,
    old: &Value,
    new: &Value,
    store: &dyn Lookup,
) -> Result<(), ApiError> {
    if res.group.is_empty() && res.plural == "persistentvolumeclaims" {
        return claim_resize(res, old, new, store);
    }
    Ok(())
}

/// `PersistentVolumeClaimResize`: a larger storage request needs a class with
/// `allowVolumeExpansion: true`; the answer is the plugin's 403.
fn claim_resize(
    res: &ResourceDef,
    old: &Value,
    new: &Value,
    store: &dyn Lookup,
) -> Result<(), ApiError> {
    let storage = |v: &Value| {
        v.pointer("/spec/resources/requests/storage")
            .and_then(|q| match q {
                Value::String(s) => parse_quantity(s),
                Value::Number(n) => n.as_f64(),
                _ => None,
            })
    };
    let grows = matches!((storage(old), storage(new)), (Some(a), Some(b)) if b > a);
    if !grows {
        return Ok(());
    }
    let class = new
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let expandable = !class.is_empty()
        && store
            .get(storage_classes(), "", class)
            .and_then(|sc| sc.get("allowVolumeExpansion").and_then(Value::as_bool))
            .unwrap_or(false);
    if expandable {
        return Ok(());
    }
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Err(ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{} \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
            res.qualified()
        ),
        details: Some(json!({"name": name, "kind": res.plural})),
    })
}
