//! The builders: names, labels, the pod's development settings, both security
//! profiles, the claim, the spec hash.

use super::*;
use serde_json::{Value, json};

fn spec() -> WorkspaceSpec {
    WorkspaceSpec {
        workspace_id: "6f1c1d52-3f7a-4a55-9a35-0f2f6c1e2b7d".parse().unwrap(),
        name: "My workspace / with spaces".into(),
        image: "ghcr.io/lapdev/workspace:latest".into(),
        cpu_millis: 1500,
        memory_bytes: 4 << 30,
        storage_bytes: 10 << 30,
        env: BTreeMap::from([("EDITOR".into(), "vim".into())]),
        scheduling: Default::default(),
    }
}

fn settings() -> WorkspaceSettings {
    WorkspaceSettings::default()
}

fn pod_json(s: &WorkspaceSettings) -> Value {
    serde_json::to_value(workspace_pod(&spec(), s)).unwrap()
}

#[test]
fn names_are_deterministic_valid_dns_labels() {
    let id = spec().workspace_id;
    assert_eq!(pod_name(id), "ws-6f1c1d52-3f7a-4a55-9a35-0f2f6c1e2b7d");
    assert_eq!(pvc_name(id), "ws-6f1c1d52-3f7a-4a55-9a35-0f2f6c1e2b7d-home");
    for n in [pod_name(id), pvc_name(id)] {
        assert!(n.len() <= 63);
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
    assert_eq!(object_of_name(&pod_name(id)), Some((id, EventObject::Pod)));
    assert_eq!(
        object_of_name(&pvc_name(id)),
        Some((id, EventObject::Claim))
    );
    assert_eq!(object_of_name("ws-nope"), None);
}

#[test]
fn the_pod_suits_development_and_carries_the_labels() {
    let v = pod_json(&settings());
    assert_eq!(v["metadata"]["namespace"], "lapdev-workspaces");
    assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], "lapdev");
    assert_eq!(
        v["metadata"]["labels"][WORKSPACE_ID_LABEL],
        spec().workspace_id.to_string()
    );
    assert_eq!(
        v["metadata"]["annotations"][WORKSPACE_NAME_ANNOTATION],
        "My workspace / with spaces"
    );
    let c = &v["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/lapdev/workspace:latest");
    assert_eq!(c["tty"], true);
    assert_eq!(c["stdin"], true);
    assert_eq!(
        c["env"][0],
        json!({"name": "HOME", "value": HOME_MOUNT_PATH})
    );
    assert_eq!(c["env"][1]["name"], "EDITOR");
    assert_eq!(c["volumeMounts"][0]["mountPath"], HOME_MOUNT_PATH);
    let r = &c["resources"];
    assert_eq!(r["requests"]["cpu"], "1500m");
    assert!(r["limits"].get("cpu").is_none(), "no CPU limit by default");
    assert_eq!(r["limits"]["memory"], (4i64 << 30).to_string());
    assert_eq!(r["requests"]["ephemeral-storage"], "2Gi");
    assert_eq!(r["limits"]["ephemeral-storage"], "8Gi");
    let psc = &v["spec"]["securityContext"];
    assert_eq!(psc["fsGroup"], 1000);
    assert_eq!(psc["fsGroupChangePolicy"], "OnRootMismatch");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(v["spec"]["automountServiceAccountToken"], false);
    assert_eq!(
        v["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        pvc_name(spec().workspace_id)
    );
    // Round-trips through the quantity parser the server uses.
    assert_eq!(
        lapdev_common::quantity::parse_cpu_millis(r["requests"]["cpu"].as_str().unwrap()),
        Ok(1500)
    );
    // The spec's own HOME wins.
    let mut s = spec();
    s.env.insert("HOME".into(), "/root".into());
    let v = serde_json::to_value(workspace_pod(&s, &settings())).unwrap();
    let env = v["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(env.iter().filter(|e| e["name"] == "HOME").count(), 1);
    assert!(env.contains(&json!({"name": "HOME", "value": "/root"})));
}

#[test]
fn baseline_lets_root_and_sudo_work() {
    let v = pod_json(&settings());
    let sc = &v["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert!(sc.get("allowPrivilegeEscalation").is_none());
    assert!(sc.get("capabilities").is_none());
    assert!(sc.get("runAsNonRoot").is_none());
    assert!(v["spec"]["securityContext"].get("runAsUser").is_none());
    assert!(v["spec"]["securityContext"].get("runAsNonRoot").is_none());
    // A configured uid makes it non-root, still with sudo.
    let s = WorkspaceSettings {
        run_as_user: Some(1001),
        ..settings()
    };
    let v = pod_json(&s);
    assert_eq!(v["spec"]["securityContext"]["runAsUser"], 1001);
    assert_eq!(v["spec"]["securityContext"]["runAsGroup"], 1001);
    assert_eq!(v["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(v["spec"]["securityContext"]["fsGroup"], 1000);
}

#[test]
fn restricted_drops_everything() {
    let s = WorkspaceSettings {
        security_profile: SecurityProfile::Restricted,
        fs_group: 2000,
        ..settings()
    };
    let v = pod_json(&s);
    let sc = &v["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["runAsNonRoot"], true);
    let psc = &v["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(
        psc["runAsUser"], 2000,
        "the fsGroup's id when no uid is set"
    );
    assert_eq!(psc["fsGroup"], 2000);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
fn cpu_limits_are_separate_from_requests() {
    assert_eq!("none".parse::<CpuLimit>(), Ok(CpuLimit::None));
    assert_eq!("2x".parse::<CpuLimit>(), Ok(CpuLimit::Times(2.0)));
    assert_eq!("3500m".parse::<CpuLimit>(), Ok(CpuLimit::Millis(3500)));
    assert_eq!("4".parse::<CpuLimit>(), Ok(CpuLimit::Millis(4000)));
    assert!("-1x".parse::<CpuLimit>().is_err());
    assert!("lots".parse::<CpuLimit>().is_err());
    assert_eq!(CpuLimit::Times(2.0).for_request(1500), Some(3000));
    assert_eq!(
        CpuLimit::Millis(1000).for_request(1500),
        Some(1500),
        "never below the request"
    );
    let s = WorkspaceSettings {
        cpu_limit: CpuLimit::Times(2.0),
        ..settings()
    };
    assert_eq!(
        pod_json(&s)["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "3000m"
    );
}

#[test]
fn the_claim_asks_for_the_storage() {
    let s = WorkspaceSettings {
        storage_class: Some("fast".into()),
        ..settings()
    };
    let v = serde_json::to_value(home_pvc(&spec(), &s)).unwrap();
    assert_eq!(v["metadata"]["name"], pvc_name(spec().workspace_id));
    assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], "lapdev");
    assert_eq!(
        v["spec"]["resources"]["requests"]["storage"],
        (10i64 << 30).to_string()
    );
    assert_eq!(v["spec"]["storageClassName"], "fast");
    assert_eq!(v["spec"]["accessModes"], json!(["ReadWriteOnce"]));
}

#[test]
fn a_pod_built_with_other_settings_is_outdated() {
    let pod = workspace_pod(&spec(), &settings());
    assert_eq!(outdated(&pod, &settings()), None);
    let recorded: WorkspaceSpec =
        serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()[SPEC_ANNOTATION]).unwrap();
    assert_eq!(recorded, spec());
    let restricted = WorkspaceSettings {
        security_profile: SecurityProfile::Restricted,
        ..settings()
    };
    assert!(outdated(&pod, &restricted).is_some());
    // A pod from a manager that recorded nothing is outdated too.
    let mut old = pod.clone();
    old.metadata.annotations = None;
    assert!(outdated(&old, &settings()).is_some());
    // The same spec and settings always hash the same.
    assert_eq!(
        workspace_pod(&spec(), &settings()).metadata.annotations,
        pod.metadata.annotations
    );
}

#[test]
fn bad_specs_are_refused_before_kubernetes() {
    let mut s = spec();
    s.image = " ".into();
    assert_eq!(validate(&s), Err(SpecError::EmptyImage));
    s.image = "not an image".into();
    assert!(matches!(validate(&s), Err(SpecError::InvalidImage(_))));
    let mut s = spec();
    s.cpu_millis = 0;
    assert_eq!(validate(&s), Err(SpecError::NotPositive("cpu_millis")));
    assert!(validate(&spec()).is_ok());
}

#[test]
fn workspace_ids_come_from_the_label() {
    let pod = workspace_pod(&spec(), &settings());
    assert_eq!(workspace_id_of(&pod.metadata), Some(spec().workspace_id));
    assert_eq!(workspace_id_of(&ObjectMeta::default()), None);
}

#[test]
fn the_clusters_scheduling_settings_land_on_the_pod() {
    use lapdev_common::scheduling::{SchedulingSettings, Toleration};
    let plain = pod_json(&settings());
    // Linux only, as placement counts (Windows nodes are left out).
    assert_eq!(
        plain["spec"]["nodeSelector"],
        json!({"kubernetes.io/os": "linux"})
    );
    for field in [
        "tolerations",
        "imagePullSecrets",
        "priorityClassName",
        "hostUsers",
    ] {
        assert!(
            plain["spec"].get(field).is_none(),
            "{field} without settings"
        );
    }
    let mut s = spec();
    s.scheduling = SchedulingSettings {
        node_selector: BTreeMap::from([("pool".into(), "dev".into())]),
        tolerations: vec![
            Toleration::parse("dedicated=dev:NoSchedule").unwrap(),
            Toleration::parse("spot").unwrap(),
        ],
        arch: Some("arm64".into()),
        image_pull_secrets: vec!["regcred".into()],
        priority_class: Some("dev-low".into()),
        user_namespaces: true,
    };
    validate(&s).unwrap();
    let pod = serde_json::to_value(workspace_pod(&s, &settings())).unwrap();
    assert_eq!(
        pod["spec"]["nodeSelector"],
        json!({"pool": "dev", "kubernetes.io/arch": "arm64", "kubernetes.io/os": "linux"})
    );
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([
            {"key": "dedicated", "operator": "Equal", "value": "dev", "effect": "NoSchedule"},
            {"key": "spot", "operator": "Exists"}
        ])
    );
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    assert_eq!(pod["spec"]["priorityClassName"], "dev-low");
    assert_eq!(pod["spec"]["hostUsers"], false);
    s.scheduling.image_pull_secrets = vec!["Not Valid".into()];
    assert!(
        validate(&s)
            .unwrap_err()
            .to_string()
            .contains("invalid image pull secret")
    );
}
