//! Validation, as far as Lapdev's code can trip over it on a real cluster.
//!
//! Object names (DNS-1123 subdomain, or label for namespaces, DNS-1035 label for
//! services), label keys and values, quantities (a malformed quantity fails to
//! decode, which the real server answers with 400 `BadRequest`; a negative
//! request or a request above its limit is 422 `Invalid`), pods (containers
//! required, container names, images, volumes) and PVCs (access modes and a
//! storage request required). Updates: a pod's spec is immutable except the
//! fields the real server lets change, a PVC's spec except its storage request.

use serde_json::Value;

use crate::error::{ApiError, Cause};
use crate::resource::ResourceDef;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
/// The regular expression the real server quotes when a quantity does not parse.
pub const QUANTITY_REGEX: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

fn is_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A DNS-1123 label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_chars(s)
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_chars)
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Parses a Kubernetes quantity (`100m`, `1.5Gi`, `1e3`, `2`) into its value.
///
/// Returns `None` when the string is not a quantity.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let num_end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(s.len(), |(i, _)| i);
    let (num, suffix) = s.split_at(num_end);
    let digits = num.trim_start_matches(['+', '-']);
    if digits.is_empty()
        || !digits.bytes().any(|b| b.is_ascii_digit())
        || digits.matches('.').count() > 1
    {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(value * multiplier)
}

fn quantity_decode_error(kind: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{kind} in version \"v1\" cannot be handled as a {kind}: quantities must match the regular expression '{QUANTITY_REGEX}'"
    ))
}

/// Checks that every quantity in a map of resource names to quantities parses.
fn check_quantities(map: Option<&Value>, kind: &str) -> Result<(), ApiError> {
    let Some(map) = map else { return Ok(()) };
    let Some(obj) = map.as_object() else {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: expected a map of quantities"
        )));
    };
    for v in obj.values() {
        let ok = match v {
            Value::String(s) => parse_quantity(s).is_some(),
            Value::Number(_) => true,
            _ => false,
        };
        if !ok {
            return Err(quantity_decode_error(kind));
        }
    }
    Ok(())
}

fn quantity_of(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Decodes `obj` as `T` to find type errors (a string where a number or an
/// object belongs, bad base64 in a Secret): the real server fails those while
/// decoding, with 400. Missing fields are left to validation, as Go's decoder
/// does not require any.
fn decode_as<T: serde::de::DeserializeOwned>(
    res: &ResourceDef,
    obj: &Value,
) -> Result<(), ApiError> {
    match T::deserialize(obj) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().starts_with("missing field") => Ok(()),
        Err(e) => Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))),
    }
}

/// What to do with the object's Rust type.
trait TypedCheck {
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(
        &mut self,
        res: &ResourceDef,
        obj: &Value,
    ) -> Result<(), ApiError>;
}

/// Type errors only.
struct Decode;

impl TypedCheck for Decode {
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(
        &mut self,
        res: &ResourceDef,
        obj: &Value,
    ) -> Result<(), ApiError> {
        decode_as::<T>(res, obj)
    }
}

/// One step of a field path.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Unknown fields: what a decode into the type and back drops.
struct Unknown(Vec<Vec<Seg>>);

impl TypedCheck for Unknown {
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(
        &mut self,
        _res: &ResourceDef,
        obj: &Value,
    ) -> Result<(), ApiError> {
        if let Ok(typed) = T::deserialize(obj)
            && let Ok(known) = serde_json::to_value(&typed)
        {
            dropped_fields(obj, &known, &mut Vec::new(), &mut self.0);
        }
        Ok(())
    }
}

fn dropped_fields(input: &Value, known: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a.iter().filter(|(_, v)| !v.is_null()) {
                path.push(Seg::Key(k.clone()));
                match b.get(k) {
                    Some(kv) => dropped_fields(v, kv, path, out),
                    None => out.push(path.clone()),
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, kv)) in a.iter().zip(b).enumerate() {
                path.push(Seg::Index(i));
                dropped_fields(v, kv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn remove_at(v: &mut Value, path: &[Seg]) {
    match path {
        [Seg::Key(k)] => {
            if let Some(m) = v.as_object_mut() {
                m.remove(k);
            }
        }
        [Seg::Key(k), rest @ ..] => {
            if let Some(next) = v.get_mut(k.as_str()) {
                remove_at(next, rest);
            }
        }
        [Seg::Index(i), rest @ ..] => {
            if let Some(next) = v.get_mut(*i) {
                remove_at(next, rest);
            }
        }
        [] => {}
    }
}

/// Drops the fields the object's type does not have, as the real server's
/// decoder does (unless `fieldValidation=Strict` refused them first).
pub fn prune_unknown(res: &ResourceDef, obj: &mut Value) {
    let mut unknown = Unknown(Vec::new());
    if with_type(res, obj, &mut unknown).is_err() {
        return;
    }
    for path in unknown.0 {
        remove_at(obj, &path);
    }
}

/// `fieldValidation=Strict`: a 400 naming the fields the type does not have.
pub fn check_strict(res: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let mut unknown = Unknown(Vec::new());
    with_type(res, obj, &mut unknown)?;
    if unknown.0.is_empty() {
        return Ok(());
    }
    let fields: Vec<String> = unknown
        .0
        .iter()
        .map(|f| format!("unknown field \"{}\"", display(f)))
        .collect();
    Err(ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
        res.kind,
        res.version,
        res.kind,
        fields.join(", ")
    )))
}

fn check_types(res: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    with_type(res, obj, &mut Decode)
}

fn with_type(res: &ResourceDef, obj: &Value, v: &mut impl TypedCheck) -> Result<(), ApiError> {
    use k8s_openapi::api::{
        apps, coordination, core::v1 as core, events, networking, rbac, storage,
    };
    match (res.group, res.plural) {
        ("", "namespaces") => v.check::<core::Namespace>(res, obj),
        ("", "nodes") => v.check::<core::Node>(res, obj),
        ("", "pods") => v.check::<core::Pod>(res, obj),
        ("", "persistentvolumeclaims") => v.check::<core::PersistentVolumeClaim>(res, obj),
        ("", "events") => v.check::<core::Event>(res, obj),
        ("", "services") => v.check::<core::Service>(res, obj),
        ("", "configmaps") => v.check::<core::ConfigMap>(res, obj),
        ("", "secrets") => v.check::<core::Secret>(res, obj),
        ("", "serviceaccounts") => v.check::<core::ServiceAccount>(res, obj),
        ("coordination.k8s.io", "leases") => v.check::<coordination::v1::Lease>(res, obj),
        ("events.k8s.io", "events") => v.check::<events::v1::Event>(res, obj),
        ("apps", "deployments") => v.check::<apps::v1::Deployment>(res, obj),
        ("networking.k8s.io", "networkpolicies") => {
            v.check::<networking::v1::NetworkPolicy>(res, obj)
        }
        ("storage.k8s.io", "storageclasses") => v.check::<storage::v1::StorageClass>(res, obj),
        ("rbac.authorization.k8s.io", "roles") => v.check::<rbac::v1::Role>(res, obj),
        ("rbac.authorization.k8s.io", "rolebindings") => v.check::<rbac::v1::RoleBinding>(res, obj),
        ("rbac.authorization.k8s.io", "clusterroles") => v.check::<rbac::v1::ClusterRole>(res, obj),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            v.check::<rbac::v1::ClusterRoleBinding>(res, obj)
        }
        _ => Ok(()),
    }
}

/// "Decode" errors (400): what fails before validation proper on a real server.
///
/// `typed` decodes the object as its Rust type to find type errors; the test
/// handle skips it for objects that came from typed values.
pub fn check_decodable(res: &ResourceDef, obj: &Value, typed: bool) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: expected a JSON object",
            res.kind, res.version, res.kind
        )));
    }
    if typed {
        check_types(res, obj)?;
    }
    match res.plural {
        "pods" => {
            for list in ["containers", "initContainers"] {
                let containers = obj
                    .pointer(&format!("/spec/{list}"))
                    .and_then(Value::as_array);
                for c in containers.into_iter().flatten() {
                    check_quantities(c.pointer("/resources/requests"), res.kind)?;
                    check_quantities(c.pointer("/resources/limits"), res.kind)?;
                }
            }
            check_quantities(obj.pointer("/spec/overhead"), res.kind)?;
        }
        "persistentvolumeclaims" => {
            check_quantities(obj.pointer("/spec/resources/requests"), res.kind)?;
            check_quantities(obj.pointer("/spec/resources/limits"), res.kind)?;
            check_quantities(obj.pointer("/status/capacity"), res.kind)?;
        }
        "nodes" => {
            check_quantities(obj.pointer("/status/capacity"), res.kind)?;
            check_quantities(obj.pointer("/status/allocatable"), res.kind)?;
        }
        _ => {}
    }
    Ok(())
}

fn validate_name(res: &ResourceDef, name: &str, causes: &mut Vec<Cause>) {
    let (ok, msg) = match res.plural {
        "namespaces" => (is_dns1123_label(name), LABEL_MSG),
        "services" => (is_dns1035_label(name), DNS1035_MSG),
        _ => (is_dns1123_subdomain(name), SUBDOMAIN_MSG),
    };
    if !ok {
        causes.push(Cause::invalid("metadata.name", name, msg));
    }
}

fn validate_labels(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else {
        return;
    };
    for (k, v) in labels {
        if !crate::selector::valid_label_key(k) {
            causes.push(Cause::invalid(
                "metadata.labels",
                k,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        let value = v.as_str().unwrap_or("");
        if !v.is_string() || !crate::selector::valid_label_value(value) {
            causes.push(Cause::invalid(
                "metadata.labels",
                value,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
}

fn validate_container(c: &Value, path: &str, names: &mut Vec<String>, causes: &mut Vec<Cause>) {
    let name = str_at(c, "name");
    if name.is_empty() {
        causes.push(Cause::required(format!("{path}.name"), ""));
    } else if !is_dns1123_label(name) {
        causes.push(Cause::invalid(format!("{path}.name"), name, LABEL_MSG));
    } else if names.iter().any(|n| n == name) {
        causes.push(Cause::duplicate(format!("{path}.name"), name));
    } else {
        names.push(name.to_owned());
    }
    if str_at(c, "image").trim().is_empty() {
        causes.push(Cause::required(format!("{path}.image"), ""));
    }
    let requests = c.pointer("/resources/requests").and_then(Value::as_object);
    let limits = c.pointer("/resources/limits").and_then(Value::as_object);
    for (which, map) in [("requests", requests), ("limits", limits)] {
        for (res_name, q) in map.into_iter().flatten() {
            if quantity_of(q).is_some_and(|v| v < 0.0) {
                causes.push(Cause::invalid(
                    format!("{path}.resources.{which}[{res_name}]"),
                    q.as_str().unwrap_or(""),
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    for (res_name, req) in requests.into_iter().flatten() {
        let limit = limits.and_then(|l| l.get(res_name)).and_then(quantity_of);
        if let (Some(r), Some(l)) = (quantity_of(req), limit)
            && r > l
        {
            causes.push(Cause::invalid(
                format!("{path}.resources.requests"),
                req.as_str().unwrap_or(""),
                &format!("must be less than or equal to {res_name} limit"),
            ));
        }
    }
}

fn validate_pod(obj: &Value, causes: &mut Vec<Cause>) {
    let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
    let mut names = Vec::new();
    match containers {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                validate_container(c, &format!("spec.containers[{i}]"), &mut names, causes);
            }
        }
        _ => causes.push(Cause::required("spec.containers", "")),
    }
    let inits = obj
        .pointer("/spec/initContainers")
        .and_then(Value::as_array);
    for (i, c) in inits.into_iter().flatten().enumerate() {
        validate_container(c, &format!("spec.initContainers[{i}]"), &mut names, causes);
    }
    let volumes = obj.pointer("/spec/volumes").and_then(Value::as_array);
    let mut vol_names: Vec<&str> = Vec::new();
    for (i, v) in volumes.into_iter().flatten().enumerate() {
        let name = str_at(v, "name");
        if name.is_empty() {
            causes.push(Cause::required(format!("spec.volumes[{i}].name"), ""));
        } else if !is_dns1123_label(name) {
            causes.push(Cause::invalid(
                format!("spec.volumes[{i}].name"),
                name,
                LABEL_MSG,
            ));
        } else if vol_names.contains(&name) {
            causes.push(Cause::duplicate(format!("spec.volumes[{i}].name"), name));
        } else {
            vol_names.push(name);
        }
        if let Some(pvc) = v.get("persistentVolumeClaim")
            && str_at(pvc, "claimName").is_empty()
        {
            causes.push(Cause::required(
                format!("spec.volumes[{i}].persistentVolumeClaim.claimName"),
                "",
            ));
        }
    }
    let restart = obj.pointer("/spec/restartPolicy").and_then(Value::as_str);
    if let Some(r) = restart
        && !["Always", "OnFailure", "Never"].contains(&r)
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.restartPolicy".to_owned(),
            message: format!(
                "Unsupported value: \"{r}\": supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
}

fn validate_pvc(obj: &Value, causes: &mut Vec<Cause>) {
    let modes = obj.pointer("/spec/accessModes").and_then(Value::as_array);
    if modes.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    if obj.pointer("/spec/resources/requests/storage").is_none() {
        causes.push(Cause::required("spec.resources[storage]", ""));
    }
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    let svc_type = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    if ports.is_none_or(Vec::is_empty) && !headless && svc_type != "ExternalName" {
        causes.push(Cause::required("spec.ports", ""));
    }
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
}

/// Validates an object about to be stored (create or update).
pub fn validate(res: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = Vec::new();
    validate_name(res, name, &mut causes);
    validate_labels(obj, &mut causes);
    match res.plural {
        "pods" => validate_pod(obj, &mut causes),
        "persistentvolumeclaims" => validate_pvc(obj, &mut causes),
        "services" => validate_service(obj, &mut causes),
        "storageclasses" => validate_storage_class(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res, name, &causes))
    }
}

fn without_images(spec: &Value) -> Value {
    let mut spec = spec.clone();
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(c) = c.as_object_mut() {
                    c.remove("image");
                }
            }
        }
    }
    if let Some(s) = spec.as_object_mut() {
        s.remove("activeDeadlineSeconds");
        s.remove("tolerations");
        s.remove("terminationGracePeriodSeconds");
    }
    spec
}

/// A PVC's spec is immutable but for its storage request, which only a bound
/// claim may change, and only upwards (as `ValidatePersistentVolumeClaimUpdate`).
fn pvc_update(old: &Value, old_spec: &Value, new_spec: &Value) -> Option<Cause> {
    let bound = old.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
    let strip = |s: &Value| {
        let mut s = s.clone();
        if bound
            && let Some(r) = s
                .pointer_mut("/resources/requests")
                .and_then(Value::as_object_mut)
        {
            r.remove("storage");
        }
        // The binder sets `volumeName` once; the double's binder writes past validation.
        if let Some(o) = s.as_object_mut() {
            o.remove("volumeName");
        }
        s
    };
    if strip(old_spec) != strip(new_spec) {
        return Some(Cause::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let storage = |s: &Value| {
        s.pointer("/resources/requests/storage")
            .and_then(quantity_of)
    };
    match (storage(old_spec), storage(new_spec)) {
        (Some(before), Some(after)) if after < before => Some(Cause::forbidden(
            "spec.resources.requests.storage",
            "field can not be less than previous value",
        )),
        _ => None,
    }
}

/// A StorageClass keeps its provisioner, parameters, reclaim policy and binding mode.
fn storage_class_update(old: &Value, new: &Value) -> Option<Cause> {
    for field in ["parameters", "provisioner", "reclaimPolicy"] {
        if old.get(field) != new.get(field) {
            return Some(Cause::forbidden(
                field,
                &format!("updates to {field} are forbidden."),
            ));
        }
    }
    (old.get("volumeBindingMode") != new.get("volumeBindingMode"))
        .then(|| Cause::forbidden("volumeBindingMode", "field is immutable"))
}

fn validate_storage_class(obj: &Value, causes: &mut Vec<Cause>) {
    if str_at(obj, "provisioner").is_empty() {
        causes.push(Cause::required("provisioner", ""));
    }
    let supported = |field: &str, values: &[&str]| {
        let v = str_at(obj, field);
        (!v.is_empty() && !values.contains(&v)).then(|| {
            let list: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
            Cause {
                reason: "FieldValueNotSupported",
                field: field.to_owned(),
                message: format!(
                    "Unsupported value: \"{v}\": supported values: {}",
                    list.join(", ")
                ),
            }
        })
    };
    causes.extend(supported("reclaimPolicy", &["Delete", "Retain"]));
    causes.extend(supported(
        "volumeBindingMode",
        &["Immediate", "WaitForFirstConsumer"],
    ));
}

/// Checks an update against the fields the real server keeps immutable.
pub fn validate_update(res: &ResourceDef, old: &Value, new: &Value) -> Result<(), ApiError> {
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let null = Value::Null;
    let old_spec = old.get("spec").unwrap_or(&null);
    let new_spec = new.get("spec").unwrap_or(&null);
    let cause = match res.plural {
        "pods" if without_images(old_spec) != without_images(new_spec) => Some(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        )),
        "persistentvolumeclaims" => pvc_update(old, old_spec, new_spec),
        "storageclasses" => storage_class_update(old, new),
        _ => None,
    };
    match cause {
        Some(c) => Err(ApiError::invalid(res, name, &[c])),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity(".5"), Some(0.5));
        assert_eq!(parse_quantity("-1"), Some(-1.0));
        for bad in ["", "abc", "1.2.3", "1Gb", "m", "1 Gi", "--1"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(is_dns1123_label("ws-1"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
    }
}
