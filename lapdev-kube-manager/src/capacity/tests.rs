use super::trimmed::TrimmedPod;
use super::*;
use lapdev_common::scheduling::ARCH_LABEL;
use lapdev_common::status::CloudProvider;

fn spec(json: serde_json::Value) -> PodSpec {
    serde_json::from_value(json).unwrap()
}

fn c(cpu: &str, mem: &str) -> serde_json::Value {
    serde_json::json!({"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}})
}

#[test]
fn pod_requests_follow_the_scheduler() {
    // Containers sum.
    let s = spec(serde_json::json!({"containers": [c("500m", "1Gi"), c("250m", "512Mi")]}));
    assert_eq!(
        pod_requests(&s),
        Requests {
            cpu_millis: 750,
            memory_bytes: 1536 << 20
        }
    );
    // A larger init container wins per resource.
    let s = spec(serde_json::json!({
        "initContainers": [c("2", "256Mi")],
        "containers": [c("500m", "1Gi")]
    }));
    assert_eq!(
        pod_requests(&s),
        Requests {
            cpu_millis: 2000,
            memory_bytes: 1 << 30
        }
    );
    // A sidecar (restartPolicy Always) adds to the containers, and to the init
    // containers after it; overhead is added on top.
    let mut sidecar = c("100m", "128Mi");
    sidecar["restartPolicy"] = "Always".into();
    let s = spec(serde_json::json!({
        "initContainers": [sidecar, c("1", "64Mi")],
        "containers": [c("500m", "1Gi")],
        "overhead": {"cpu": "10m", "memory": "1Mi"}
    }));
    assert_eq!(
        pod_requests(&s),
        Requests {
            cpu_millis: 1100 + 10,
            memory_bytes: (1024 + 128 + 1) << 20
        }
    );
    // Limits stand in for missing requests; garbage counts as 0, never panics.
    let s = spec(serde_json::json!({"containers": [
        {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
        {"name": "b", "resources": {"requests": {"cpu": "lots", "memory": "-5"}}}
    ]}));
    assert_eq!(
        pod_requests(&s),
        Requests {
            cpu_millis: 1000,
            memory_bytes: 1 << 30
        }
    );
}

#[test]
fn the_trimmed_pod_keeps_node_phase_and_requests_only() {
    let pod: TrimmedPod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                     "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "web", "image": "nginx", "env": [{"name": "SECRET", "value": "hunter2"}],
             "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"}
    }))
    .unwrap();
    assert_eq!(pod.key(), "shop/web-1");
    assert_eq!(
        pod.bound(),
        Some((
            "n1",
            Requests {
                cpu_millis: 250,
                memory_bytes: 64 << 20
            }
        ))
    );
    assert!(pod.metadata.annotations.is_none() && pod.metadata.labels.is_none());
    assert!(!format!("{pod:?}").contains("hunter2"));
    let ended: TrimmedPod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "job", "namespace": "x"},
        "spec": {"nodeName": "n1", "containers": []},
        "status": {"phase": "Succeeded"}
    }))
    .unwrap();
    assert_eq!(ended.bound(), None, "an ended pod frees its node");
}

fn node_json(
    name: &str,
    extra_spec: serde_json::Value,
    labels: serde_json::Value,
    ready: bool,
) -> Node {
    let mut spec = serde_json::json!({});
    if let serde_json::Value::Object(m) = extra_spec {
        for (k, v) in m {
            spec[k] = v;
        }
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"allocatable": {"cpu": "4", "memory": "16Gi"},
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    }))
    .unwrap()
}

#[test]
fn only_ready_uncordoned_linux_nodes_count_and_taints_are_kept() {
    let linux = serde_json::json!({OS_LABEL: "linux", ARCH_LABEL: "amd64"});
    let nodes = [
        node_json("ok", serde_json::json!({}), linux.clone(), true),
        node_json(
            "cordoned",
            serde_json::json!({"unschedulable": true}),
            linux.clone(),
            true,
        ),
        node_json("not-ready", serde_json::json!({}), linux.clone(), false),
        node_json(
            "windows",
            serde_json::json!({}),
            serde_json::json!({OS_LABEL: "windows"}),
            true,
        ),
        node_json(
            "tainted",
            serde_json::json!({"taints": [
                {"key": "gpu", "value": "yes", "effect": "NoSchedule"},
                {"key": "spot", "effect": "PreferNoSchedule"}]}),
            linux.clone(),
            true,
        ),
    ];
    let summaries: Vec<_> = nodes
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap(),
                crate::cluster_info::summarize_node(n).0,
            )
        })
        .collect();
    let lapdev: HashMap<String, Requests> = [(
        "ok".to_string(),
        Requests {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        },
    )]
    .into();
    let list = node_capacities(
        summaries.iter().map(|(name, s)| NodeInput {
            name,
            cpu_allocatable_millis: s.cpu_allocatable_millis,
            memory_allocatable_bytes: s.memory_allocatable_bytes,
            ready: s.health.not_ready.is_none(),
            facts: &s.placement,
        }),
        &lapdev,
        &HashMap::new(),
    );
    let names: Vec<&str> = list.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["ok", "tainted"]);
    assert_eq!(list[0].free_cpu_millis(), 3000);
    assert_eq!(list[1].taints.len(), 1, "PreferNoSchedule never blocks");
    assert_eq!(list[1].taints[0].key, "gpu");
    assert_eq!(summaries[0].1.provider, None::<CloudProvider>);
}

#[test]
fn requests_by_node_follow_moves_and_removals() {
    let r = |cpu| Requests {
        cpu_millis: cpu,
        memory_bytes: 0,
    };
    let mut by = RequestsByNode::default();
    assert!(by.set("a", Some(("n1", r(100)))));
    assert!(by.set("b", Some(("n1", r(200)))));
    assert!(!by.set("b", Some(("n1", r(200)))), "no change, no news");
    assert_eq!(by.by_node()["n1"], r(300));
    assert!(by.set("b", Some(("n2", r(200)))));
    assert_eq!(by.by_node()["n1"], r(100));
    assert_eq!(by.by_node()["n2"], r(200));
    assert!(by.set("a", None));
    assert!(!by.by_node().contains_key("n1"));
    assert!(!by.set("zzz", None));
    assert_eq!(by.len(), 1);
}

#[test]
fn coalescing_ignores_small_moves_and_reports_big_ones() {
    let node = |cpu_used: i64, mem_used: i64| NodeCapacity {
        name: "n1".into(),
        cpu_allocatable_millis: 4000,
        memory_allocatable_bytes: 16 << 30,
        cpu_lapdev_millis: 0,
        memory_lapdev_bytes: 0,
        cpu_other_millis: cpu_used,
        memory_other_bytes: mem_used,
        taints: vec![],
        labels: BTreeMap::new(),
    };
    let info = |nodes: Vec<NodeCapacity>| KubeClusterInfo {
        kubernetes_version: "v1.33.0".into(),
        node_count: 1,
        cpu_capacity_millis: 4000,
        cpu_allocatable_millis: 4000,
        memory_capacity_bytes: 16 << 30,
        memory_allocatable_bytes: 16 << 30,
        provider: CloudProvider::Unknown,
        region: None,
        manager_version: String::new(),
        manager_namespace: String::new(),
        workspace_namespace: String::new(),
        manifest_revision: None,
        nodes: Some(nodes),
        capacity_mode: None,
        autoscaling: None,
    };
    let c = Coalescing::default();
    let base = info(vec![node(0, 0)]);
    assert!(!c.significant(&base, &info(vec![node(50, 64 << 20)])));
    assert!(c.significant(&base, &info(vec![node(150, 0)])));
    assert!(c.significant(&base, &info(vec![node(0, 256 << 20)])));
    assert!(c.significant(&base, &info(vec![])), "a node went away");
    let mut tainted = node(0, 0);
    tainted.taints.push(Taint {
        key: "k".into(),
        value: String::new(),
        effect: TaintEffect::NoSchedule,
    });
    assert!(c.significant(&base, &info(vec![tainted])));
    let mut newer = base.clone();
    newer.kubernetes_version = "v1.34.0".into();
    assert!(c.significant(&base, &newer));
}

#[test]
fn autopilot_is_detected_from_node_labels() {
    let plain: BTreeMap<String, String> = [(OS_LABEL.to_string(), "linux".to_string())].into();
    let autopilot: BTreeMap<String, String> =
        [("autopilot.gke.io/managed".to_string(), "true".to_string())].into();
    assert_eq!(detect_autoscaling([&plain]), None);
    assert_eq!(
        detect_autoscaling([&plain, &autopilot]),
        Some(Autoscaling::GKE_AUTOPILOT)
    );
}
