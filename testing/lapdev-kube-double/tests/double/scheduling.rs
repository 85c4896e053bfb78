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
