use super::*;

fn node(labels: &[(&str, &str)], taints: &[(&str, &str, TaintEffect)]) -> NodeCapacity {
    NodeCapacity {
        name: "n".into(),
        cpu_allocatable_millis: 4000,
        memory_allocatable_bytes: 16 << 30,
        cpu_lapdev_millis: 1000,
        memory_lapdev_bytes: 2 << 30,
        cpu_other_millis: 500,
        memory_other_bytes: 1 << 30,
        taints: taints
            .iter()
            .map(|(k, v, e)| Taint {
                key: (*k).into(),
                value: (*v).into(),
                effect: *e,
            })
            .collect(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

#[test]
fn free_room_subtracts_lapdev_and_other_requests() {
    let n = node(&[], &[]);
    assert_eq!(n.free_cpu_millis(), 2500);
    assert_eq!(n.free_memory_bytes(), 13 << 30);
    let mut over = n.clone();
    over.cpu_other_millis = 10_000;
    assert_eq!(over.free_cpu_millis(), 0);
}

#[test]
fn tolerations_follow_the_schedulers_rules() {
    let taint = Taint {
        key: "pool".into(),
        value: "gpu".into(),
        effect: TaintEffect::NoSchedule,
    };
    let t = |s: &str| Toleration::parse(s).unwrap();
    assert!(t("pool=gpu:NoSchedule").tolerates(&taint));
    assert!(
        t("pool=gpu").tolerates(&taint),
        "no effect matches every effect"
    );
    assert!(t("pool").tolerates(&taint), "exists matches any value");
    assert!(
        t("*").tolerates(&taint),
        "empty key with exists matches all"
    );
    assert!(!t("pool=cpu:NoSchedule").tolerates(&taint));
    assert!(!t("pool=gpu:NoExecute").tolerates(&taint));
    assert!(!t("other").tolerates(&taint));
    assert_eq!(t("pool=gpu:NoSchedule").to_string(), "pool=gpu:NoSchedule");
    assert_eq!(t("pool").to_string(), "pool");
}

#[test]
fn bad_tolerations_are_refused_with_the_reason() {
    for bad in ["pool=gpu:Sometimes", "=x", "bad key=1", "pool=a b"] {
        let e = Toleration::parse(bad).unwrap_err();
        assert!(matches!(e, SchedulingError::Toleration(_)), "{bad}: {e}");
    }
}

#[test]
fn admits_checks_selector_arch_and_blocking_taints() {
    let amd = node(&[(ARCH_LABEL, "amd64"), ("pool", "dev")], &[]);
    let arm = node(&[(ARCH_LABEL, "arm64"), ("pool", "dev")], &[]);
    let tainted = node(
        &[(ARCH_LABEL, "amd64"), ("pool", "gpu")],
        &[("nvidia.com/gpu", "present", TaintEffect::NoSchedule)],
    );
    let preferred = node(
        &[(ARCH_LABEL, "amd64")],
        &[("spot", "", TaintEffect::PreferNoSchedule)],
    );
    let any = SchedulingSettings::default();
    assert!(any.admits(&amd) && any.admits(&arm) && any.admits(&preferred));
    assert!(!any.admits(&tainted));
    let amd_only = SchedulingSettings {
        arch: Some("amd64".into()),
        ..Default::default()
    };
    assert!(amd_only.admits(&amd));
    assert!(!amd_only.admits(&arm));
    let gpu = SchedulingSettings {
        node_selector: [("pool".to_string(), "gpu".to_string())].into(),
        tolerations: vec![Toleration::parse("nvidia.com/gpu:NoSchedule").unwrap()],
        ..Default::default()
    };
    assert!(gpu.admits(&tainted));
    assert!(!gpu.admits(&amd), "the selector wants pool=gpu");
}

#[test]
fn settings_are_validated() {
    let ok = SchedulingSettings {
        node_selector: [("cloud.google.com/gke-nodepool".into(), "dev-pool".into())].into(),
        tolerations: vec![Toleration::parse("dedicated=dev:NoSchedule").unwrap()],
        arch: Some("arm64".into()),
        image_pull_secrets: vec!["regcred".into()],
        priority_class: Some("dev-low".into()),
        user_namespaces: true,
    };
    ok.validate().unwrap();
    // Round-trips, and stays out of the JSON when off (older managers and
    // stored rows see what they always saw).
    let json = serde_json::to_value(&ok).unwrap();
    assert_eq!(json["user_namespaces"], true);
    assert_eq!(
        serde_json::from_value::<SchedulingSettings>(json).unwrap(),
        ok
    );
    assert_eq!(
        serde_json::to_value(SchedulingSettings::default()).unwrap(),
        serde_json::json!({})
    );
    assert_eq!(
        ok.pod_node_selector().get(ARCH_LABEL).map(String::as_str),
        Some("arm64")
    );
    let cases: Vec<(SchedulingSettings, &str)> = vec![
        (
            SchedulingSettings {
                node_selector: [("-bad".into(), "x".into())].into(),
                ..Default::default()
            },
            "invalid node selector",
        ),
        (
            SchedulingSettings {
                arch: Some("x86 64".into()),
                ..Default::default()
            },
            "invalid architecture",
        ),
        (
            SchedulingSettings {
                image_pull_secrets: vec!["Reg_Cred".into()],
                ..Default::default()
            },
            "invalid image pull secret",
        ),
        (
            SchedulingSettings {
                priority_class: Some(String::new()),
                ..Default::default()
            },
            "invalid priority class",
        ),
    ];
    for (s, want) in cases {
        let e = s.validate().unwrap_err().to_string();
        assert!(e.starts_with(want), "{e}");
    }
}

#[test]
fn autoscaling_parses_the_cli_form() {
    let a = Autoscaling::parse("16,64Gi,20").unwrap();
    assert_eq!(a.max_node_cpu_millis, 16_000);
    assert_eq!(a.max_node_memory_bytes, 64 << 30);
    assert_eq!(a.max_nodes, Some(20));
    assert_eq!(Autoscaling::parse("500m, 1Gi").unwrap().max_nodes, None);
    for bad in ["16", "16,64Gi,0", "x,64Gi", "16,-1Gi", "1,2,3,4"] {
        assert!(Autoscaling::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn settings_round_trip_through_json_and_default_when_absent() {
    let s = SchedulingSettings {
        tolerations: vec![Toleration::parse("a=b:NoExecute").unwrap()],
        ..Default::default()
    };
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(
        serde_json::from_str::<SchedulingSettings>(&json).unwrap(),
        s
    );
    assert_eq!(
        serde_json::from_str::<SchedulingSettings>("{}").unwrap(),
        SchedulingSettings::default()
    );
}
