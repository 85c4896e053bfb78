//! The test handle: failures, hangs, RBAC denials, request counts, nodes, the kubelet.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use kube::api::{Api, ListParams, PostParams};
use lapdev_kube_double::{FailureMode, KubeletConfig, NodeSpec, Verb};

use crate::{pod, start, status};

#[tokio::test]
async fn fail_next_answers_with_the_status_of_the_code() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    double.fail_next(2, 500);
    let s = status(pods.list(&ListParams::default()).await);
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    assert_eq!(status(pods.list(&ListParams::default()).await).code, 500);
    pods.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn kube_retries_a_transient_503() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    // kube's default client retries 429, 503 and 504 (up to 15 times, with
    // exponential backoff from 5 ms), so one 503 is invisible to the caller.
    double.fail_next(2, 503);
    pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(double.request_count_for(Verb::List, "pods"), 3);
}

#[tokio::test]
async fn failure_mode_applies_until_cleared() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    double.set_failure_mode(FailureMode::Fail(500));
    let s = status(pods.get("a").await);
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    assert!(client_version_fails(&double).await, "discovery fails too");
    double.set_failure_mode(FailureMode::None);
    assert_eq!(status(pods.get("a").await).code, 404);
}

async fn client_version_fails(double: &lapdev_kube_double::KubeDouble) -> bool {
    double
        .client()
        .await
        .unwrap()
        .apiserver_version()
        .await
        .is_err()
}

#[tokio::test]
async fn hang_holds_requests_until_released() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    double.set_failure_mode(FailureMode::Hang);
    let timed_out = tokio::time::timeout(
        Duration::from_millis(300),
        pods.list(&ListParams::default()),
    )
    .await;
    assert!(timed_out.is_err(), "the request hangs");
    let pending = tokio::spawn({
        let pods = pods.clone();
        async move { pods.list(&ListParams::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    double.set_failure_mode(FailureMode::None);
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_denied_verb_is_forbidden_like_rbac() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    double.deny(Verb::List, "pods");
    let s = status(pods.list(&ListParams::default()).await);
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert!(
        s.message.starts_with("pods is forbidden: User "),
        "{}",
        s.message
    );
    assert!(
        s.message.ends_with(
            "cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        s.message
    );
    assert_eq!(
        status(pods.get("x").await).code,
        404,
        "other verbs still work"
    );
    double.allow(Verb::List, "pods");
    pods.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn requests_are_counted_by_verb() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    pods.get("a").await.unwrap();
    pods.get("a").await.unwrap();
    pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(double.request_count(Verb::Create), 1);
    assert_eq!(double.request_count(Verb::Get), 2);
    assert_eq!(double.request_count_for(Verb::List, "pods"), 1);
    assert_eq!(double.request_count_for(Verb::List, "nodes"), 0);
    double.reset_request_counts();
    assert_eq!(double.request_count(Verb::Get), 0);
}

#[tokio::test]
async fn nodes_come_and_go_with_their_capacity() {
    let (double, client) = start().await;
    let spec = NodeSpec {
        cpu: "16".into(),
        memory: "64Gi".into(),
        allocatable_cpu: Some("15800m".into()),
        provider_id: Some("gce://proj/us-central1-a/n1".into()),
        labels: [(
            "topology.kubernetes.io/region".to_owned(),
            "us-central1".to_owned(),
        )]
        .into(),
        ..NodeSpec::default()
    };
    double.add_node("n1", spec).unwrap();
    let nodes: Api<Node> = Api::all(client);
    let n = nodes.get("n1").await.unwrap();
    assert_eq!(
        n.spec.unwrap().provider_id.as_deref(),
        Some("gce://proj/us-central1-a/n1")
    );
    assert_eq!(
        n.metadata.labels.unwrap()["topology.kubernetes.io/region"],
        "us-central1"
    );
    assert_eq!(n.status.unwrap().allocatable.unwrap()["cpu"].0, "15800m");
    double.remove_node("n1").unwrap();
    assert_eq!(status(nodes.get("n1").await).code, 404);
}

#[tokio::test]
async fn set_pod_phase_reports_like_a_kubelet() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let extra = PodCondition {
        type_: "example.com/Warm".into(),
        status: "True".into(),
        ..PodCondition::default()
    };
    double
        .set_pod_phase("default", "a", "Running", vec![extra])
        .unwrap();
    let status = pods.get("a").await.unwrap().status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let conditions = status.conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert!(conditions.iter().any(|c| c.type_ == "example.com/Warm"));
    assert!(status.container_statuses.unwrap()[0].ready);
}

#[tokio::test]
async fn the_stand_in_kubelet_runs_new_pods() {
    let (double, client) = start().await;
    double.add_node("n1", NodeSpec::default()).unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(50),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let running = kube::runtime::wait::await_condition(
        pods.clone(),
        "a",
        kube::runtime::conditions::is_pod_running(),
    );
    let p = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
}

#[tokio::test]
async fn targeted_failures_and_latency() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    double.fail_next_matching(1, 500, Some(Verb::Create), Some("pods"));
    pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        status(pods.create(&PostParams::default(), &pod("a")).await).code,
        500
    );
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    double.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    pods.get("a").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn the_stand_in_scheduler_respects_capacity() {
    let (double, client) = start().await;
    double
        .add_node(
            "small",
            NodeSpec {
                cpu: "2".into(),
                memory: "4Gi".into(),
                ..NodeSpec::default()
            },
        )
        .unwrap();
    let mut cordoned = NodeSpec {
        cpu: "64".into(),
        memory: "256Gi".into(),
        ..NodeSpec::default()
    };
    cordoned.labels.insert("pool".into(), "big".into());
    double.add_node("big", cordoned).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "big",
            &Default::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(20),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let hungry = |name: &str| {
        let mut p = pod(name);
        p.spec.as_mut().unwrap().containers[0].resources = Some(
            serde_json::from_value(
                serde_json::json!({"requests": {"cpu": "1500m", "memory": "1Gi"}}),
            )
            .unwrap(),
        );
        p
    };
    pods.create(&PostParams::default(), &hungry("first"))
        .await
        .unwrap();
    let running = kube::runtime::wait::await_condition(
        pods.clone(),
        "first",
        kube::runtime::conditions::is_pod_running(),
    );
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    pods.create(&PostParams::default(), &hungry("second"))
        .await
        .unwrap();
    let unschedulable = |p: Option<&Pod>| {
        p.and_then(|p| {
            p.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "PodScheduled")
                .cloned()
        })
        .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    };
    let waiting = kube::runtime::wait::await_condition(pods.clone(), "second", unschedulable);
    let p = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let message = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap()
        .message
        .unwrap();
    assert_eq!(
        message,
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) were unschedulable."
    );
    pods.delete("first", &Default::default()).await.unwrap();
    let running = kube::runtime::wait::await_condition(
        pods,
        "second",
        kube::runtime::conditions::is_pod_running(),
    );
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn seeded_pods_are_running_on_their_node() {
    let (double, client) = start().await;
    double.add_node("n1", NodeSpec::default()).unwrap();
    let mut p = pod("bg");
    p.spec.as_mut().unwrap().node_name = Some("n1".into());
    double.seed_running_pod(&p).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let got = pods.get("bg").await.unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Running"));
    assert!(got.metadata.uid.is_some());
    match double.seed_running_pod(&p) {
        Err(lapdev_kube_double::HandleError::Api(e)) => {
            assert_eq!((e.code, e.reason), (409, "AlreadyExists"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_stand_in_kubelet_completes_graceful_deletions() {
    let (double, client) = start().await;
    double.add_node("n1", NodeSpec::default()).unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(20),
        ..KubeletConfig::default()
    });
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let running = kube::runtime::wait::await_condition(
        pods.clone(),
        "a",
        kube::runtime::conditions::is_pod_running(),
    );
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    let uid = pods.get("a").await.unwrap().metadata.uid.unwrap();
    pods.delete("a", &Default::default()).await.unwrap();
    let deleted = kube::runtime::wait::await_condition(
        pods,
        "a",
        kube::runtime::conditions::is_deleted(&uid),
    );
    tokio::time::timeout(Duration::from_secs(5), deleted)
        .await
        .unwrap()
        .unwrap();
}
