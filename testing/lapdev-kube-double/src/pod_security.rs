//! Pod Security admission: a pod created in a namespace labelled
//! `pod-security.kubernetes.io/enforce: baseline|restricted` is refused when it
//! violates the Pod Security Standards of that level, with the real plugin's
//! message: `violates PodSecurity "restricted:latest": allowPrivilegeEscalation
//! != false (container "c" must set securityContext.allowPrivilegeEscalation=false), ...`.
//!
//! The checks and their order follow the real policy library: the baseline
//! checks by id, then the restricted ones by id, where a restricted check
//! replaces its baseline counterpart (capabilities, seccomp profile, volume
//! types). Modelled: host namespaces, host ports, privileged, capabilities,
//! hostPath (and other non-restricted volume types), allowPrivilegeEscalation,
//! runAsNonRoot, runAsUser 0 and seccomp profiles. Not modelled: AppArmor,
//! SELinux options, `/proc` mount type, sysctls, Windows host processes, the
//! `warn` and `audit` modes, and exemptions.

use serde_json::{Map, Value};

/// The label that sets the enforced level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The label that pins the policy version (default `latest`).
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";

/// Capabilities the baseline level lets a container add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Privileged,
    Baseline,
    Restricted,
}

/// `"c"` or `"a", "b"`.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "c"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    let noun = if names.len() == 1 {
        "container"
    } else {
        "containers"
    };
    format!("{noun} {}", quoted(names))
}

fn bool_at(v: &Value, pointer: &str) -> Option<bool> {
    v.pointer(pointer).and_then(Value::as_bool)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Every container (init containers first, as the policy library walks them).
fn all_containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .collect()
}

fn name_of(c: &Value) -> String {
    str_at(c, "/name").unwrap_or("").to_owned()
}

/// Names of the containers for which `f` holds.
fn which(containers: &[&Value], f: impl Fn(&Value) -> bool) -> Vec<String> {
    containers
        .iter()
        .filter(|c| f(c))
        .map(|c| name_of(c))
        .collect()
}

/// One failed check: its reason and detail as the message shows them.
type Violation = (&'static str, String);

fn host_namespaces(pod: &Value) -> Option<Violation> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| bool_at(pod, &format!("/spec/{f}")) == Some(true))
        .map(|f| format!("{f}=true"))
        .collect();
    (!set.is_empty()).then(|| ("host namespaces", set.join(", ")))
}

fn host_ports(cs: &[&Value]) -> Option<Violation> {
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for c in cs {
        let used: Vec<String> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hostPort").and_then(Value::as_i64))
            .filter(|p| *p != 0)
            .map(|p| p.to_string())
            .collect();
        if !used.is_empty() {
            names.push(name_of(c));
            ports.extend(used);
        }
    }
    if names.is_empty() {
        return None;
    }
    let verb = if names.len() == 1 { "uses" } else { "use" };
    let noun = if ports.len() == 1 {
        "hostPort"
    } else {
        "hostPorts"
    };
    Some((
        "hostPort",
        format!(
            "{} {verb} {noun} {}",
            containers_phrase(&names),
            ports.join(", ")
        ),
    ))
}

fn privileged(cs: &[&Value]) -> Option<Violation> {
    let names = which(cs, |c| {
        bool_at(c, "/securityContext/privileged") == Some(true)
    });
    (!names.is_empty()).then(|| {
        (
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&names)
            ),
        )
    })
}

fn added_capabilities(c: &Value) -> Vec<String> {
    c.pointer("/securityContext/capabilities/add")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Containers adding capabilities outside `allowed`, and those capabilities.
fn forbidden_adds(cs: &[&Value], allowed: &[&str]) -> Option<String> {
    let mut names = Vec::new();
    let mut caps: Vec<String> = Vec::new();
    for c in cs {
        let bad: Vec<String> = added_capabilities(c)
            .into_iter()
            .filter(|cap| !allowed.contains(&cap.as_str()))
            .collect();
        if !bad.is_empty() {
            names.push(name_of(c));
            for cap in bad {
                if !caps.contains(&cap) {
                    caps.push(cap);
                }
            }
        }
    }
    (!names.is_empty()).then(|| {
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&names),
            quoted(&caps)
        )
    })
}

fn capabilities_baseline(cs: &[&Value]) -> Option<Violation> {
    forbidden_adds(cs, BASELINE_CAPABILITIES).map(|d| ("non-default capabilities", d))
}

fn capabilities_restricted(cs: &[&Value]) -> Option<Violation> {
    let mut details = Vec::new();
    let no_drop = which(cs, |c| {
        !c.pointer("/securityContext/capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
    });
    if !no_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop)
        ));
    }
    details.extend(forbidden_adds(cs, &["NET_BIND_SERVICE"]));
    (!details.is_empty()).then(|| ("unrestricted capabilities", details.join("; ")))
}

fn volumes(pod: &Value) -> Vec<&Value> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

fn host_path_volumes(pod: &Value) -> Option<Violation> {
    let names: Vec<String> = volumes(pod)
        .into_iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(name_of)
        .collect();
    let noun = if names.len() == 1 {
        "volume"
    } else {
        "volumes"
    };
    (!names.is_empty()).then(|| ("hostPath volumes", format!("{noun} {}", quoted(&names))))
}

fn restricted_volumes(pod: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut types: Vec<String> = Vec::new();
    for v in volumes(pod) {
        let Some(obj) = v.as_object() else { continue };
        let bad: Vec<&String> = obj
            .keys()
            .filter(|k| *k != "name" && !RESTRICTED_VOLUMES.contains(&k.as_str()))
            .collect();
        if !bad.is_empty() {
            names.push(name_of(v));
            for t in bad {
                if !types.contains(t) {
                    types.push(t.clone());
                }
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    types.sort();
    let (noun, verb) = if names.len() == 1 {
        ("volume", "uses")
    } else {
        ("volumes", "use")
    };
    let kind = if types.len() == 1 {
        "restricted volume type"
    } else {
        "restricted volume types"
    };
    Some((
        "restricted volume types",
        format!("{noun} {} {verb} {kind} {}", quoted(&names), quoted(&types)),
    ))
}

fn allow_privilege_escalation(cs: &[&Value]) -> Option<Violation> {
    let names = which(cs, |c| {
        bool_at(c, "/securityContext/allowPrivilegeEscalation") != Some(false)
    });
    (!names.is_empty()).then(|| {
        (
            "allowPrivilegeEscalation != false",
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&names)
            ),
        )
    })
}

fn run_as_non_root(pod: &Value, cs: &[&Value]) -> Option<Violation> {
    let pod_value = bool_at(pod, "/spec/securityContext/runAsNonRoot");
    let mut details = Vec::new();
    let mut setters = Vec::new();
    if pod_value == Some(false) {
        setters.push("pod".to_owned());
    }
    let explicit_false = which(cs, |c| {
        bool_at(c, "/securityContext/runAsNonRoot") == Some(false)
    });
    if !explicit_false.is_empty() {
        setters.push(containers_phrase(&explicit_false));
    }
    if !setters.is_empty() {
        details.push(format!(
            "{} must not set securityContext.runAsNonRoot=false",
            setters.join(" and ")
        ));
    }
    if pod_value != Some(true) {
        let unset = which(cs, |c| {
            bool_at(c, "/securityContext/runAsNonRoot").is_none()
        });
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&unset)
            ));
        }
    }
    (!details.is_empty()).then(|| ("runAsNonRoot != true", details.join("; ")))
}

fn run_as_user(pod: &Value, cs: &[&Value]) -> Option<Violation> {
    let mut setters = Vec::new();
    if pod
        .pointer("/spec/securityContext/runAsUser")
        .and_then(Value::as_i64)
        == Some(0)
    {
        setters.push("pod".to_owned());
    }
    let root = which(cs, |c| {
        c.pointer("/securityContext/runAsUser")
            .and_then(Value::as_i64)
            == Some(0)
    });
    if !root.is_empty() {
        setters.push(containers_phrase(&root));
    }
    (!setters.is_empty()).then(|| {
        (
            "runAsUser=0",
            format!("{} must not set runAsUser=0", setters.join(" and ")),
        )
    })
}

/// Seccomp: `restricted` requires `RuntimeDefault` or `Localhost` (on the pod
/// or every container); both levels forbid `Unconfined`.
fn seccomp(pod: &Value, cs: &[&Value], restricted: bool) -> Option<Violation> {
    let allowed = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let mut details = Vec::new();
    let pod_type = str_at(pod, "/spec/securityContext/seccompProfile/type");
    if let Some(t) = pod_type.filter(|t| !allowed(t)) {
        details.push(format!(
            "pod must not set securityContext.seccompProfile.type to \"{t}\""
        ));
    }
    let mut bad_types: Vec<String> = Vec::new();
    let explicit_bad = which(cs, |c| {
        str_at(c, "/securityContext/seccompProfile/type").is_some_and(|t| !allowed(t))
    });
    for c in cs {
        if let Some(t) = str_at(c, "/securityContext/seccompProfile/type").filter(|t| !allowed(t))
            && !bad_types.iter().any(|b| b == t)
        {
            bad_types.push(t.to_owned());
        }
    }
    if !explicit_bad.is_empty() {
        let types: Vec<String> = bad_types.iter().map(|t| format!("\"{t}\"")).collect();
        details.push(format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            containers_phrase(&explicit_bad),
            types.join(", ")
        ));
    }
    if restricted && !pod_type.is_some_and(allowed) {
        let unset = which(cs, |c| {
            str_at(c, "/securityContext/seccompProfile/type").is_none()
        });
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&unset)
            ));
        }
    }
    (!details.is_empty()).then(|| ("seccompProfile", details.join("; ")))
}

/// The violations of `pod` at `level`, in the message's order.
fn violations(pod: &Value, level: Level) -> Vec<Violation> {
    let cs = all_containers(pod);
    let restricted = level == Level::Restricted;
    let mut out = Vec::new();
    // Baseline checks by id; the restricted level replaces three of them.
    if !restricted {
        out.extend(capabilities_baseline(&cs));
    }
    out.extend(host_namespaces(pod));
    if !restricted {
        out.extend(host_path_volumes(pod));
    }
    out.extend(host_ports(&cs));
    out.extend(privileged(&cs));
    if !restricted {
        out.extend(seccomp(pod, &cs, false));
        return out;
    }
    // Restricted checks by id.
    out.extend(allow_privilege_escalation(&cs));
    out.extend(capabilities_restricted(&cs));
    out.extend(restricted_volumes(pod));
    out.extend(run_as_non_root(pod, &cs));
    out.extend(run_as_user(pod, &cs));
    out.extend(seccomp(pod, &cs, true));
    out
}

/// The refusal message for `pod` in a namespace with `labels`, or `None` when
/// the pod is admitted.
pub(crate) fn check(pod: &Value, labels: &Map<String, Value>) -> Option<String> {
    let level = match labels.get(ENFORCE_LABEL).and_then(Value::as_str) {
        Some("baseline") => Level::Baseline,
        Some("restricted") => Level::Restricted,
        _ => Level::Privileged,
    };
    if level == Level::Privileged {
        return None;
    }
    let found = violations(pod, level);
    if found.is_empty() {
        return None;
    }
    let version = labels
        .get(ENFORCE_VERSION_LABEL)
        .and_then(Value::as_str)
        .unwrap_or("latest");
    let name = if level == Level::Restricted {
        "restricted"
    } else {
        "baseline"
    };
    let parts: Vec<String> = found
        .into_iter()
        .map(|(reason, detail)| format!("{reason} ({detail})"))
        .collect();
    Some(format!(
        "violates PodSecurity \"{name}:{version}\": {}",
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(level: &str) -> Map<String, Value> {
        json!({ENFORCE_LABEL: level})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_bare_pod_violates_restricted_in_the_real_order() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        assert_eq!(
            check(&pod, &labels("restricted")).unwrap(),
            "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(check(&pod, &labels("baseline")), None);
        assert_eq!(check(&pod, &labels("privileged")), None);
    }

    #[test]
    fn a_compliant_pod_passes_restricted() {
        let pod = json!({"spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            }}],
        }});
        assert_eq!(check(&pod, &labels("restricted")), None);
    }

    #[test]
    fn host_access_violates_baseline() {
        let pod = json!({"spec": {
            "hostNetwork": true, "hostPID": true,
            "securityContext": {"seccompProfile": {"type": "Unconfined"}},
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}}},
                {"name": "b", "securityContext": {"privileged": true}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
            ],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        }});
        assert_eq!(
            check(&pod, &labels("baseline")).unwrap(),
            "violates PodSecurity \"baseline:latest\": non-default capabilities (container \"a\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add), host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume \"root\"), hostPort (container \"b\" uses hostPort 8080), privileged (containers \"a\", \"b\" must not set securityContext.privileged=true), seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"
        );
    }

    #[test]
    fn root_is_refused_by_restricted() {
        let pod = json!({"spec": {
            "securityContext": {"runAsNonRoot": false, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
            }}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        }});
        assert_eq!(
            check(&pod, &labels("restricted")).unwrap(),
            "violates PodSecurity \"restricted:latest\": restricted volume types (volume \"h\" uses restricted volume type \"hostPath\"), runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false; pod or container \"c\" must set securityContext.runAsNonRoot=true), runAsUser=0 (pod must not set runAsUser=0)"
        );
    }
}
