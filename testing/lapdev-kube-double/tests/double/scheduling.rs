//! The stand-in scheduler's filters: cordons, taints and tolerations, node
//! selectors and affinity, with the real scheduler's message and Event.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use lapdev_kube_double::{KubeletConfig, NodeSpec};
use serde_json::json;

use crate::start;

fn pod(name: &str, spec_extra: serde_json::Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "main", "image": "ubuntu:24.04"}]});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn node_of(pods: &Api<Pod>, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = pods.get(name).await.unwrap();
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never scheduled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn unschedulable_message(pods: &Api<Pod>, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = pods.get(name).await.unwrap();
        let c = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False");
        if let Some(m) = c.and_then(|c| c.message) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn taints_cordons_and_selectors_keep_pods_off_nodes() {
    let (double, client) = start().await;
    double.add_node("gpu", NodeSpec::default()).unwrap();
    double.add_node("cordoned", NodeSpec::default()).unwrap();
    let arm = NodeSpec {
        labels: BTreeMap::from([("kubernetes.io/arch".to_owned(), "arm64".to_owned())]),
        ..NodeSpec::default()
    };
    double.add_node("arm", arm).unwrap();
    double
        .taint_node("gpu", "dedicated", "gpu", "NoSchedule")
        .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let cordon = |on: bool| json!({"spec": {"unschedulable": on}});
    nodes
        .patch(
            "cordoned",
            &PatchParams::default(),
            &Patch::Merge(&cordon(true)),
        )
        .await
        .unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let amd64 = json!({"nodeSelector": {"kubernetes.io/arch": "amd64"}});
    pods.create(&PostParams::default(), &pod("ws", amd64))
        .await
        .unwrap();
    let expected = "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable.";
    assert_eq!(unschedulable_message(&pods, "ws").await, expected);
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let failed = events
        .list(&ListParams::default().fields("involvedObject.name=ws,reason=FailedScheduling"))
        .await
        .unwrap();
    assert_eq!(failed.items[0].message.as_deref(), Some(expected));

    // A toleration opens the tainted node; arm64 affinity the arm one.
    let tolerant = json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}], "nodeSelector": {"kubernetes.io/arch": "amd64"}});
    pods.create(&PostParams::default(), &pod("trainer", tolerant))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "trainer").await, "gpu");
    let arm_affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]},
    ]}}}});
    pods.create(&PostParams::default(), &pod("builder", arm_affinity))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "builder").await, "arm");

    // Uncordoned, the node takes the waiting pod.
    nodes
        .patch(
            "cordoned",
            &PatchParams::default(),
            &Patch::Merge(&cordon(false)),
        )
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "ws").await, "cordoned");
}

#[tokio::test]
async fn a_lost_node_is_tainted_unreachable_for_the_scheduler() {
    let (double, client) = start().await;
    double.add_node("n1", NodeSpec::default()).unwrap();
    double
        .add_node(
            "n2",
            NodeSpec {
                ready: false,
                ..NodeSpec::default()
            },
        )
        .unwrap();
    double.set_node_lost("n1").unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("ws", json!({})))
        .await
        .unwrap();
    assert_eq!(
        unschedulable_message(&pods, "ws").await,
        "0/2 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }."
    );
    // Tolerating everything (as some DaemonSets do) schedules anyway.
    let anything = json!({"tolerations": [{"operator": "Exists"}]});
    pods.create(&PostParams::default(), &pod("agent", anything))
        .await
        .unwrap();
    let node = node_of(&pods, "agent").await;
    assert!(node == "n1" || node == "n2", "{node}");
}

async fn event_message(events: &Api<Event>, pod: &str, reason: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
            .await
            .unwrap();
        if let Some(e) = list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
        {
            assert_eq!(e.type_.as_deref(), Some("Normal"));
            assert_eq!(
                e.source.and_then(|s| s.component).as_deref(),
                Some("cluster-autoscaler")
            );
            return e.message.unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pod} never got {reason}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn requesting(cpu: &str) -> serde_json::Value {
    json!({"containers": [{"name": "main", "image": "ubuntu:24.04", "resources": {"requests": {"cpu": cpu}}}]})
}

// "Resource sharing within containers" and "Pod Overhead" in the Kubernetes
// docs: sidecars (restartable init containers) add to the containers, a
// regular init container counts alone (plus the sidecars before it), and the
// overhead comes on top.
#[tokio::test]
async fn sidecars_init_containers_and_overhead_count_like_the_scheduler() {
    let (double, client) = start().await;
    double.add_node("n1", NodeSpec::default()).unwrap(); // 4 CPU
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let c = |name: &str, cpu: &str| json!({"name": name, "image": "ubuntu:24.04", "resources": {"requests": {"cpu": cpu}}});
    let mut sidecar = c("proxy", "1500m");
    sidecar["restartPolicy"] = json!("Always");
    // 2 + 1.5 (sidecar) + 1 (overhead) = 4.5 > 4.
    let too_big = json!({"containers": [c("main", "2")], "initContainers": [sidecar], "overhead": {"cpu": "1"}});
    pods.create(&PostParams::default(), &pod("sidecar", too_big))
        .await
        .unwrap();
    assert_eq!(
        unschedulable_message(&pods, "sidecar").await,
        "0/1 nodes are available: 1 Insufficient cpu."
    );
    // max(1, 3.5) = 3.5 <= 4: a regular init container is not added.
    let init = json!({"containers": [c("main", "1")], "initContainers": [c("setup", "3500m")]});
    pods.create(&PostParams::default(), &pod("init", init))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "init").await, "n1");
}

// A Windows node's kubelet labels it `kubernetes.io/os=windows` (and reports
// it in `nodeInfo`); a pod selecting Linux stays off it.
#[tokio::test]
async fn os_and_arch_labels_match_node_info_and_selectors() {
    let (double, client) = start().await;
    let labels = |os: &str, arch: &str| NodeSpec {
        labels: BTreeMap::from([
            ("kubernetes.io/os".to_owned(), os.to_owned()),
            ("kubernetes.io/arch".to_owned(), arch.to_owned()),
        ]),
        ..NodeSpec::default()
    };
    let win = double.add_node("win", labels("windows", "amd64")).unwrap();
    let info = win.status.unwrap().node_info.unwrap();
    assert_eq!(info.operating_system, "windows");
    let arm = double.add_node("arm", labels("linux", "arm64")).unwrap();
    let info = arm.status.unwrap().node_info.unwrap();
    assert_eq!(
        (info.operating_system.as_str(), info.architecture.as_str()),
        ("linux", "arm64")
    );
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let linux_amd64 =
        json!({"nodeSelector": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}});
    pods.create(&PostParams::default(), &pod("ws", linux_amd64))
        .await
        .unwrap();
    assert_eq!(
        unschedulable_message(&pods, "ws").await,
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    );
    let linux = json!({"nodeSelector": {"kubernetes.io/os": "linux"}});
    pods.create(&PostParams::default(), &pod("any-arch", linux))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "any-arch").await, "arm");
}

// cluster-autoscaler's FAQ ("How does scale-up work?"): a pending pod that a
// new node of a group would fit triggers a scale-up of that group; one that no
// group can help gets NotTriggerScaleUp with the reasons.
#[tokio::test]
async fn the_autoscaler_adds_a_node_for_a_pod_its_template_fits() {
    let (double, client) = start().await;
    double.add_node("small", NodeSpec::default()).unwrap(); // 4 CPU
    double.enable_autoscaler(lapdev_kube_double::NodeGroup {
        name: "pool".to_owned(),
        template: NodeSpec {
            cpu: "8".to_owned(),
            memory: "32Gi".to_owned(),
            ..NodeSpec::default()
        },
        max_nodes: 1,
    });
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");

    pods.create(&PostParams::default(), &pod("big", requesting("6")))
        .await
        .unwrap();
    assert_eq!(
        unschedulable_message(&pods, "big").await,
        "0/1 nodes are available: 1 Insufficient cpu."
    );
    assert_eq!(
        event_message(&events, "big", "TriggeredScaleUp").await,
        "pod triggered scale-up: [{pool 0->1 (max: 1)}]"
    );
    assert_eq!(double.upcoming_nodes(), 1);

    // Larger than the template: no node group helps.
    pods.create(&PostParams::default(), &pod("huge", requesting("16")))
        .await
        .unwrap();
    assert_eq!(
        event_message(&events, "huge", "NotTriggerScaleUp").await,
        "pod didn't trigger scale-up: 1 Insufficient cpu"
    );

    // The node arrives and takes the pod that waited for it.
    assert_eq!(double.complete_scale_up().unwrap(), vec!["pool-1"]);
    assert_eq!(node_of(&pods, "big").await, "pool-1");
    let node: Node = Api::all(client).get("pool-1").await.unwrap();
    assert_eq!(
        node.metadata.labels.unwrap()[lapdev_kube_double::NODE_GROUP_LABEL],
        "pool"
    );

    // The group is at its maximum: a pod the template would fit is declined.
    pods.create(&PostParams::default(), &pod("next", requesting("5")))
        .await
        .unwrap();
    assert_eq!(
        event_message(&events, "next", "NotTriggerScaleUp").await,
        "pod didn't trigger scale-up: 1 max node group size reached"
    );
    assert_eq!(double.upcoming_nodes(), 0);

    // The group's maximum is raised: the declined pod triggers a scale-up at
    // the scheduler's next retry, and the new node takes it.
    assert!(double.set_autoscaler_max_nodes(2));
    assert_eq!(
        event_message(&events, "next", "TriggeredScaleUp").await,
        "pod triggered scale-up: [{pool 1->2 (max: 2)}]"
    );
    assert_eq!(double.complete_scale_up().unwrap(), vec!["pool-2"]);
    assert_eq!(node_of(&pods, "next").await, "pool-2");
}
