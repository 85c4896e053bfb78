//! Lost nodes, taints, the pod garbage collector, and the binding subresource.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::Status;
use lapdev_kube_double::{KubeDouble, KubeletConfig, NodeSpec, OUT_OF_SERVICE};
use serde_json::json;

use crate::{pod, start, status};

async fn gone(pods: &Api<Pod>, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.get(name).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "{name} never went");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two nodes, a running kubelet, and pod `name` Running on `node`.
async fn running_on(double: &KubeDouble, pods: &Api<Pod>, name: &str, node: &str) {
    let mut p = pod(name);
    p.spec.as_mut().unwrap().node_name = Some(node.into());
    pods.create(&PostParams::default(), &p).await.unwrap();
    double
        .set_pod_phase("default", name, "Running", vec![])
        .unwrap();
}

async fn two_nodes() -> (KubeDouble, Api<Pod>, Api<Node>) {
    let (double, client) = start().await;
    for n in ["n1", "n2"] {
        double.add_node(n, NodeSpec::default()).unwrap();
    }
    (
        double,
        Api::namespaced(client.clone(), "default"),
        Api::all(client),
    )
}

#[tokio::test]
async fn a_lost_node_reports_unknown_and_is_tainted() {
    let (double, pods, nodes) = two_nodes().await;
    running_on(&double, &pods, "ws", "n1").await;
    double.set_node_lost("n1").unwrap();
    assert!(double.is_node_lost("n1"));
    let n = nodes.get("n1").await.unwrap();
    let ready = n
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let taints = n.spec.unwrap().taints.unwrap();
    let effects: Vec<_> = taints
        .iter()
        .filter(|t| t.key == "node.kubernetes.io/unreachable")
        .map(|t| t.effect.as_str())
        .collect();
    assert_eq!(effects, ["NoSchedule", "NoExecute"]);
    let p = pods.get("ws").await.unwrap();
    let conditions = p.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False")
    );

    // Back: Ready, untainted, the pod Ready again.
    double.set_node_ready("n1", true).unwrap();
    assert!(!double.is_node_lost("n1"));
    let n = nodes.get("n1").await.unwrap();
    assert!(n.spec.unwrap().taints.is_none());
    let conditions = n.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert!(conditions.iter().all(|c| c.status != "Unknown"));
    let p = pods.get("ws").await.unwrap();
    let conditions = p.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}

#[tokio::test]
async fn graceful_deletion_on_a_lost_node_waits_for_force_or_the_node() {
    let (double, pods, _nodes) = two_nodes().await;
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(20),
        ..KubeletConfig::default()
    });
    running_on(&double, &pods, "lost", "n1").await;
    running_on(&double, &pods, "fine", "n2").await;
    double.set_node_lost("n1").unwrap();
    pods.delete("lost", &DeleteParams::default()).await.unwrap();
    pods.delete("fine", &DeleteParams::default()).await.unwrap();
    // The kubelet of n2 confirms its pod; by then it has looked at "lost" too.
    gone(&pods, "fine").await;
    let stuck = pods.get("lost").await.unwrap();
    assert!(stuck.metadata.deletion_timestamp.is_some());
    // The node comes back: its kubelet finishes the deletion.
    double.set_node_ready("n1", true).unwrap();
    gone(&pods, "lost").await;

    // Lost again: a force delete (grace 0) ends it at once.
    running_on(&double, &pods, "lost", "n1").await;
    double.set_node_lost("n1").unwrap();
    pods.delete("lost", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get("lost")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    pods.delete("lost", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(status(pods.get("lost").await).code, 404);
}

#[tokio::test]
async fn the_pod_gc_ends_pods_of_deleted_and_out_of_service_nodes() {
    let (double, pods, _nodes) = two_nodes().await;
    running_on(&double, &pods, "a", "n1").await;
    running_on(&double, &pods, "b", "n1").await;
    double.set_node_lost("n1").unwrap();
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    // Out of service: the terminating pod goes, the other stays.
    double
        .taint_node("n1", OUT_OF_SERVICE, "nodeshutdown", "NoExecute")
        .unwrap();
    assert_eq!(status(pods.get("a").await).code, 404);
    assert!(pods.get("b").await.is_ok());
    // The node deleted: every pod on it goes.
    double.remove_node("n1").unwrap();
    assert_eq!(status(pods.get("b").await).code, 404);

    // With the collector off, only a client's force delete ends them.
    double.set_pod_gc(false);
    running_on(&double, &pods, "c", "n2").await;
    double.set_node_lost("n2").unwrap();
    pods.delete("c", &DeleteParams::default()).await.unwrap();
    double
        .taint_node("n2", OUT_OF_SERVICE, "nodeshutdown", "NoExecute")
        .unwrap();
    double.remove_node("n2").unwrap();
    assert!(
        pods.get("c")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
}

#[tokio::test]
async fn taints_are_added_and_removed_like_kubectl_taint() {
    let (double, _pods, nodes) = two_nodes().await;
    double
        .taint_node("n1", "dedicated", "gpu", "NoSchedule")
        .unwrap();
    double
        .taint_node("n1", "dedicated", "cpu", "NoSchedule")
        .unwrap();
    let taints = nodes.get("n1").await.unwrap().spec.unwrap().taints.unwrap();
    assert_eq!(taints.len(), 1, "same key and effect: replaced");
    assert_eq!(taints[0].value.as_deref(), Some("cpu"));
    assert!(taints[0].time_added.is_none());
    double.untaint_node("n1", "dedicated").unwrap();
    assert!(
        nodes
            .get("n1")
            .await
            .unwrap()
            .spec
            .unwrap()
            .taints
            .is_none()
    );
}

#[tokio::test]
async fn the_binding_subresource_binds_once() {
    let (double, pods, _nodes) = two_nodes().await;
    let client = double.client().await.unwrap();
    pods.create(&PostParams::default(), &pod("ws"))
        .await
        .unwrap();
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "ws"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
    });
    let s: Status = pods
        .create_subresource("binding", "ws", &PostParams::default(), &binding)
        .await
        .unwrap();
    assert_eq!(s.code, 201);
    let p = pods.get("ws").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
    assert!(
        p.status
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    let events: Api<Event> = Api::namespaced(client, "default");
    let list = events
        .list(&ListParams::default().fields("involvedObject.name=ws,reason=Scheduled"))
        .await
        .unwrap();
    assert_eq!(
        list.items[0].message.as_deref(),
        Some("Successfully assigned default/ws to n1")
    );
    let mut again = binding.clone();
    again["target"]["name"] = json!("n2");
    let s = status(
        pods.create_subresource::<_, Status>("binding", "ws", &PostParams::default(), &again)
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        "Operation cannot be fulfilled on pods/binding \"ws\": pod ws is already assigned to node \"n1\""
    );
    let s = status(
        pods.create_subresource::<_, Status>("binding", "nope", &PostParams::default(), &again)
            .await,
    );
    assert_eq!(s.code, 400, "the names differ: {}", s.message);
    again["metadata"]["name"] = json!("nope");
    let s = status(
        pods.create_subresource::<_, Status>("binding", "nope", &PostParams::default(), &again)
            .await,
    );
    assert_eq!(s.code, 404);
    // Only create: a GET of the subresource is not allowed.
    let s = status(pods.get_subresource("binding", "ws").await);
    assert_eq!(s.code, 405);
}

#[tokio::test]
async fn the_stand_in_scheduler_records_failed_scheduling() {
    let (double, client) = start().await;
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("ws"))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client, "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let list = events
            .list(&ListParams::default().fields("reason=FailedScheduling"))
            .await
            .unwrap();
        if let Some(e) = list.items.into_iter().next() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no FailedScheduling"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.message.as_deref(),
        Some("no nodes available to schedule pods")
    );
    assert_eq!(
        event.source.unwrap().component.as_deref(),
        Some("default-scheduler")
    );
}
