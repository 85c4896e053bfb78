//! Patches: JSON merge (RFC 7386), strategic merge, JSON patch (RFC 6902), and
//! server-side apply with coarse field ownership.
//!
//! Strategic merge follows the real patch strategies for the lists Lapdev's
//! objects contain: lists of containers, volumes, env, ports, volume mounts,
//! conditions and the like merge by their key (`name`, `containerPort`, `port`,
//! `mountPath`, `type`); `metadata.finalizers` merges as a set; the `$patch:
//! delete`/`replace` directives are honoured; every other list is replaced,
//! as in a JSON merge patch. `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` are dropped (ordering and retain-keys make no
//! difference to the objects here).
//!
//! Server-side apply tracks ownership per field manager in
//! `metadata.managedFields` (`FieldsV1`), at the granularity of object fields:
//! a list is one field (the real server tracks items of keyed lists
//! separately), so two managers that set different items of one list
//! conflict where the real server would merge them.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A field path of object keys, e.g. `["spec", "replicas"]`.
pub type FieldPath = Vec<String>;

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge key of a list field under strategic merge, if the list merges by key.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses"
        | "hostAliases" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "conditions" | "readinessGates" => "type",
        "addresses" => "type",
        _ => return None,
    })
}

fn port_key(parent_is_container: bool) -> &'static str {
    if parent_is_container {
        "containerPort"
    } else {
        "port"
    }
}

/// Strategic merge patch for the lists that matter to Lapdev (see the module docs).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    strategic_merge_at(target, patch, false);
}

fn strategic_merge_at(target: &mut Value, patch: &Value, is_container: bool) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    let child_is_container = t.contains_key("image") || patch.contains_key("image");
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let key = if k == "ports" {
            Some(port_key(is_container || child_is_container))
        } else {
            merge_key(k)
        };
        match (key, v, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(existing))) => {
                merge_keyed_list(
                    existing,
                    items,
                    key,
                    k.starts_with("containers") || k == "initContainers",
                );
            }
            (None, Value::Array(items), Some(Value::Array(existing))) if k == "finalizers" => {
                for item in items {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            (_, Value::Array(items), _) => {
                let clean: Vec<Value> = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                t.insert(k.clone(), Value::Array(clean));
            }
            _ => strategic_merge_at(
                t.entry(k.clone()).or_insert(Value::Null),
                v,
                k == "containers" || k == "initContainers",
            ),
        }
    }
}

fn merge_keyed_list(existing: &mut Vec<Value>, items: &[Value], key: &str, containers: bool) {
    for item in items {
        let Some(id) = item.get(key) else {
            existing.push(item.clone());
            continue;
        };
        let pos = existing.iter().position(|e| e.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_at(&mut existing[i], item, containers),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge_at(&mut fresh, item, containers);
                existing.push(fresh);
            }
        }
    }
}

/// RFC 6902 JSON patch; a failed operation is 422 `Invalid` like the real server.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("json patch is not valid: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("the server rejected our request due to an error in our request: {e}"),
        details: None,
    })
}

/// Top-level metadata that no manager owns.
fn ignored(path: &[String]) -> bool {
    match path {
        [a] => a == "apiVersion" || a == "kind" || a == "metadata",
        [m, f, ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The leaf field paths of an object: every scalar, list and empty object.
pub fn leaves(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect_leaves(v, &mut Vec::new(), &mut out);
    out.retain(|p| !ignored(p));
    out
}

fn collect_leaves(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(k.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        _ if !path.is_empty() => {
            out.insert(path.clone());
        }
        _ => {}
    }
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Merges `config` into `target`: objects recursively, lists and scalars replaced.
fn merge_config(target: &mut Value, config: &Value) {
    match (target.as_object_mut(), config) {
        (Some(t), Value::Object(c)) => {
            for (k, v) in c {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_config(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *target = config.clone(),
    }
}

fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let entry = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            cur = next;
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    let Some(name) = k.strip_prefix("f:") else {
                        continue;
                    };
                    path.push(name.to_owned());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ if !path.is_empty() => {
                out.insert(path.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct ManagedEntry {
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
}

fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    let entries = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array);
    entries
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            ManagedEntry {
                manager: s("manager"),
                operation: s("operation"),
                subresource: s("subresource"),
                api_version: s("apiVersion"),
                time: s("time"),
                fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
            }
        })
        .collect()
}

fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut m = serde_json::json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                m["subresource"] = Value::String(e.subresource.clone());
            }
            m
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".to_owned(), Value::Array(list));
        }
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn display_path(p: &[String]) -> String {
    p.iter().map(|k| format!(".{k}")).collect()
}

/// What one write does to field ownership.
#[derive(Debug, Clone)]
pub struct Ownership<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// `""` for the main resource, `"status"` for the status subresource.
    pub subresource: &'a str,
    /// The object's apiVersion.
    pub api_version: &'a str,
    /// The timestamp to record for a changed entry.
    pub now: &'a str,
}

/// Records an update (`operation: Update`): changed fields move to `manager`.
pub fn record_update(old: Option<&Value>, new: &mut Value, own: &Ownership<'_>) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let null = Value::Null;
    let old_leaves = old.map(leaves).unwrap_or_default();
    let new_leaves = leaves(new);
    let changed: BTreeSet<FieldPath> = new_leaves
        .iter()
        .filter(|p| get_path(old.unwrap_or(&null), p) != get_path(new, p))
        .cloned()
        .collect();
    let removed: Vec<&FieldPath> = old_leaves.difference(&new_leaves).collect();
    if changed.is_empty() && removed.is_empty() {
        write_managed(new, &entries);
        return;
    }
    for e in &mut entries {
        e.fields.retain(|f| {
            !changed.iter().any(|c| overlaps(c, f)) && !removed.iter().any(|r| overlaps(r, f))
        });
    }
    let pos = entries.iter().position(|e| {
        e.manager == own.manager && e.operation == "Update" && e.subresource == own.subresource
    });
    let entry = match pos {
        Some(i) => &mut entries[i],
        None => {
            entries.push(ManagedEntry {
                manager: own.manager.to_owned(),
                operation: "Update".to_owned(),
                subresource: own.subresource.to_owned(),
                api_version: own.api_version.to_owned(),
                time: String::new(),
                fields: BTreeSet::new(),
            });
            let last = entries.len() - 1;
            &mut entries[last]
        }
    };
    entry.fields.extend(changed);
    entry.time = own.now.to_owned();
    write_managed(new, &entries);
}

/// Server-side apply of `config` onto `current` (or onto nothing, to create).
///
/// Returns the new object with its `managedFields`, or a 409 `Conflict` listing the
/// fields other managers own with other values when `force` is not set.
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    own: &Ownership<'_>,
    force: bool,
    res: &crate::resource::ResourceDef,
    name: &str,
) -> Result<Value, ApiError> {
    let mut entries = current.map(read_managed).unwrap_or_default();
    let mut obj = current
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut applied = leaves(config);
    // The status subresource owns only status; the main resource never status.
    applied.retain(|p| {
        (p.first().map(String::as_str) == Some("status")) == (own.subresource == "status")
    });

    let mine = |e: &ManagedEntry| {
        e.manager == own.manager && e.operation == "Apply" && e.subresource == own.subresource
    };
    let mut conflicts: Vec<(String, String)> = Vec::new();
    let mut forced: Vec<(usize, FieldPath)> = Vec::new();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| !mine(e)) {
        for owned in &e.fields {
            for p in applied.iter().filter(|p| overlaps(p, owned)) {
                if get_path(&obj, p) != get_path(config, p) {
                    conflicts.push((e.manager.clone(), display_path(p)));
                    forced.push((i, owned.clone()));
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(ApiError::apply_conflict(res, name, &conflicts));
    }
    for (i, owned) in forced {
        entries[i].fields.remove(&owned);
    }

    let previous: BTreeSet<FieldPath> = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.clone())
        .collect();
    for dropped in previous.difference(&applied) {
        let still_owned = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.fields.contains(dropped));
        if !still_owned {
            remove_path(&mut obj, dropped);
        }
    }
    let mut config = config.clone();
    if let Some(c) = config.as_object_mut() {
        if own.subresource == "status" {
            c.retain(|k, _| k == "status" || k == "metadata" || k == "apiVersion" || k == "kind");
        } else {
            c.remove("status");
        }
    }
    merge_config(&mut obj, &config);

    match entries.iter().position(mine) {
        Some(i) if entries[i].fields == applied => {}
        Some(i) => {
            entries[i].fields = applied;
            entries[i].time = own.now.to_owned();
        }
        None => entries.push(ManagedEntry {
            manager: own.manager.to_owned(),
            operation: "Apply".to_owned(),
            subresource: own.subresource.to_owned(),
            api_version: own.api_version.to_owned(),
            time: own.now.to_owned(),
            fields: applied,
        }),
    }
    write_managed(&mut obj, &entries);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_finalizers_as_set() {
        let mut t = json!({
            "metadata": {"finalizers": ["a"]},
            "spec": {"containers": [{"name": "x", "image": "1"}, {"name": "y", "image": "2"}]}
        });
        strategic_merge(
            &mut t,
            &json!({
                "metadata": {"finalizers": ["b"]},
                "spec": {"containers": [{"name": "y", "image": "3"}, {"name": "x", "$patch": "delete"}]}
            }),
        );
        assert_eq!(t["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            t["spec"]["containers"],
            json!([{"name": "y", "image": "3"}])
        );
    }
}
