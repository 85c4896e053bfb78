//! Placement with every real binary (`lapdev-server` on PostgreSQL, the
//! Kubernetes API double with its stand-in scheduler, kubelet and
//! cluster-autoscaler, `lapdev-kube-manager` under the manifest's RBAC, the
//! `lapdev` CLI): which nodes count, other workloads' requests with
//! `capacity: pods`, per-node fit, tolerations and pull secrets on the pod, and
//! an autoscaling cluster that grows for a workspace (or declines to).

mod real;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use lapdev_common::status::CapacityMode;
use lapdev_kube_double::{KubeletConfig, NodeGroup, NodeSpec};
use real::{Env, NAMESPACE, eventually, workspace_args};
use serde_json::{Value, json};

fn node(cpu: &str, memory: &str) -> NodeSpec {
    NodeSpec {
        cpu: cpu.into(),
        memory: memory.into(),
        ..NodeSpec::default()
    }
}

fn labelled(cpu: &str, labels: &[(&str, &str)]) -> NodeSpec {
    NodeSpec {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..node(cpu, "64Gi")
    }
}

/// `workspace create` that must be refused: its error text.
fn refused(env: &Env, url: &str, name: &str, cpu: &str, memory: &str) -> String {
    let out = env.lapdev(url, &workspace_args(name, cpu, memory));
    assert!(
        !out.status.success(),
        "{name} was placed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn placement(env: &Env, url: &str, cluster: &str) -> Value {
    env.json(url, &["cluster", "get", cluster, "-o", "json"])["placement"].clone()
}

fn pod_of(env: &Env, workspace_id: &str) -> Option<Pod> {
    env.pods().into_iter().find(|p| {
        p.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.values().any(|v| v == workspace_id))
    })
}

async fn connected(env: &Env, url: &str, cluster: &str) {
    eventually("the cluster connected", || {
        env.json(url, &["cluster", "get", cluster, "-o", "json"])["status"] == "connected"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_schedulable_nodes_count_and_one_node_must_hold_the_workspace() {
    let nodes = vec![
        ("good".to_owned(), node("4", "16Gi")),
        ("cordoned".to_owned(), node("32", "64Gi")),
        (
            "not-ready".to_owned(),
            NodeSpec {
                ready: false,
                ..node("32", "64Gi")
            },
        ),
        ("gpu".to_owned(), node("32", "64Gi")),
        ("draining".to_owned(), node("32", "64Gi")),
        (
            "windows".to_owned(),
            labelled("32", &[("kubernetes.io/os", "windows")]),
        ),
        (
            "arm".to_owned(),
            labelled("32", &[("kubernetes.io/arch", "arm64")]),
        ),
    ];
    let env = Env::with(CapacityMode::Nodes, nodes).await;
    let h = env.double.handle();
    h.taint_node("gpu", "dedicated", "gpu", "NoSchedule")
        .unwrap();
    h.taint_node("draining", "maintenance", "", "NoExecute")
        .unwrap();
    let node_api: Api<Node> = Api::all(env.double.client().await.unwrap());
    node_api
        .patch(
            "cordoned",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let _kubelet = h.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let (_server, url) = env.server(0);
    let created = env.json(
        &url,
        &["cluster", "create", "pool", "--arch", "amd64", "-o", "json"],
    );
    let token = created["token"].as_str().unwrap().to_owned();
    let _manager = env.manager(&url, &token);
    connected(&env, &url, "pool").await;

    // Cordoned, NotReady, NoSchedule- and NoExecute-tainted, Windows and (with
    // `--arch amd64`) arm64 nodes are left out: only `good` counts.
    eventually("the per-node report", || {
        placement(&env, &url, "pool")["schedulable_nodes"] == 1
    })
    .await;
    let p = placement(&env, &url, "pool");
    assert_eq!(p["largest_free_node"]["name"], "good");
    assert_eq!(p["largest_free_node"]["free_cpu_millis"], 4000);

    // Larger than any node that counts (the excluded ones have 32 CPU).
    let err = refused(&env, &url, "big", "8", "4Gi");
    assert!(
        err.contains("no connected cluster can fit 8 CPU / 4 GiB; largest free node: 4 CPU / 16 GiB on good of pool"),
        "{err}"
    );

    // Two 4-CPU nodes: 8 CPU in total, but no node holds 6.
    h.add_node("good-2", node("4", "16Gi")).unwrap();
    eventually("two schedulable nodes", || {
        placement(&env, &url, "pool")["schedulable_nodes"] == 2
    })
    .await;
    let err = refused(&env, &url, "wide", "6", "4Gi");
    assert!(
        err.contains("largest free node: 4 CPU / 16 GiB on good"),
        "{err}"
    );

    // The admin lets workspaces onto the tainted pool and names a pull
    // secret: the gpu node counts, and a workspace only it can hold goes there.
    let settings = env.json(
        &url,
        &[
            "cluster",
            "placement",
            "pool",
            "--arch",
            "amd64",
            "--toleration",
            "dedicated=gpu:NoSchedule",
            "--image-pull-secret",
            "regcred",
            "-o",
            "json",
        ],
    );
    assert_eq!(settings["placement"]["schedulable_nodes"], 3);
    assert_eq!(settings["placement"]["largest_free_node"]["name"], "gpu");
    let ws = env.json(&url, &workspace_args("trainer", "16", "8Gi"));
    assert_eq!(ws["cluster"], "pool");
    let id = ws["id"].as_str().unwrap().to_owned();
    eventually("the trainer runs", || {
        env.json(&url, &["workspace", "get", "trainer", "-o", "json"])["status"] == "running"
    })
    .await;
    let pod = pod_of(&env, &id).expect("the trainer's pod");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("gpu"));
    let pull: Vec<String> = spec
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(pull, vec!["regcred"]);
    let selector = spec.node_selector.unwrap_or_default();
    assert_eq!(
        selector.get("kubernetes.io/arch").map(String::as_str),
        Some("amd64")
    );
    assert_eq!(
        selector.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_workloads_count_only_with_capacity_pods() {
    // The manifest's rights for `capacity: pods` (a superset), so the same
    // ServiceAccount serves both runs.
    let env = Env::with(
        CapacityMode::Pods,
        vec![("n1".to_owned(), node("8", "32Gi"))],
    )
    .await;
    let h = env.double.handle();
    h.create_namespace("builds").unwrap();
    let other: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ci-runner", "namespace": "builds"},
        "spec": {"nodeName": "n1", "containers": [{"name": "runner", "image": "ci:1",
            "resources": {"requests": {"cpu": "6", "memory": "8Gi"}}}]},
    }))
    .unwrap();
    h.seed_running_pod(&other).unwrap();
    let (_server, url) = env.server(0);
    let created = env.json(&url, &["cluster", "create", "shared", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();

    // `capacity: nodes` (the default): the CI runner is not seen.
    let mut manager = env.manager(&url, &token);
    connected(&env, &url, "shared").await;
    eventually("the per-node report", || {
        placement(&env, &url, "shared")["largest_free_node"]["free_cpu_millis"] == 8000
    })
    .await;
    assert_eq!(placement(&env, &url, "shared")["capacity_mode"], "nodes");

    // The admin switches to `capacity: pods` and applies the new manifest
    // (here: the manager restarts with its environment).
    let p = env.json(
        &url,
        &[
            "cluster",
            "placement",
            "shared",
            "--capacity",
            "pods",
            "-o",
            "json",
        ],
    );
    assert_eq!(p["placement"]["capacity_mode"], "pods");
    manager.kill();
    let _manager = env.manager_with(&url, &token, &[("LAPDEV_CAPACITY", "pods")]);
    eventually("the runner's requests counted", || {
        placement(&env, &url, "shared")["largest_free_node"]["free_cpu_millis"] == 2000
    })
    .await;
    connected(&env, &url, "shared").await;
    let node = &placement(&env, &url, "shared")["largest_free_node"];
    assert_eq!(node["free_memory_bytes"], 24_i64 << 30);
    let err = refused(&env, &url, "w1", "4", "4Gi");
    assert!(
        err.contains("largest free node: 2 CPU / 24 GiB on n1 of shared"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaling_cluster_grows_for_a_workspace_or_says_why_not() {
    let env = Env::with(
        CapacityMode::Nodes,
        vec![("small".to_owned(), node("2", "8Gi"))],
    )
    .await;
    let h = env.double.handle();
    // The cloud's node group: 8-CPU nodes, at most one of them.
    h.enable_autoscaler(NodeGroup {
        name: "pool".into(),
        template: node("8", "32Gi"),
        max_nodes: 1,
    });
    let _kubelet = h.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    let (_server, url) = env.server(0);
    let created = env.json(
        &url,
        &[
            "cluster",
            "create",
            "auto",
            "--autoscaling",
            "8,32Gi,5",
            "-o",
            "json",
        ],
    );
    let token = created["token"].as_str().unwrap().to_owned();
    let _manager = env.manager(&url, &token);
    connected(&env, &url, "auto").await;
    eventually("the per-node report", || {
        placement(&env, &url, "auto")["schedulable_nodes"] == 1
    })
    .await;

    // No node holds 4 CPU, but the autoscaler can add one that does.
    let ws = env.json(&url, &workspace_args("big", "4", "8Gi"));
    assert_eq!(ws["cluster"], "auto");
    eventually("waiting for the scale-up", || {
        let w = env.json(&url, &["workspace", "get", "big", "-o", "json"]);
        w["status"] == "creating" && w["reason"] == "WaitingForScaleUp"
    })
    .await;
    let w = env.json(&url, &["workspace", "get", "big", "-o", "json"]);
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .contains("pod triggered scale-up: [{pool 0->1 (max: 1)}]"),
        "{w}"
    );
    assert_eq!(h.upcoming_nodes(), 1);
    // Still waiting until the node is there.
    assert_eq!(
        env.json(&url, &["workspace", "get", "big", "-o", "json"])["reason"],
        "WaitingForScaleUp"
    );

    assert_eq!(h.complete_scale_up().unwrap(), vec!["pool-1"]);
    eventually("big runs on the new node", || {
        env.json(&url, &["workspace", "get", "big", "-o", "json"])["status"] == "running"
    })
    .await;
    let id = ws["id"].as_str().unwrap();
    let pod = pod_of(&env, id).expect("big's pod");
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("pool-1"));

    // The group is at its maximum: the autoscaler declines, and the workspace
    // fails with its reason.
    env.json(&url, &workspace_args("next", "6", "8Gi"));
    eventually("the decline", || {
        let w = env.json(&url, &["workspace", "get", "next", "-o", "json"]);
        w["status"] == "failed" && w["reason"] == "ScaleUpDeclined"
    })
    .await;
    let w = env.json(&url, &["workspace", "get", "next", "-o", "json"]);
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .contains("pod didn't trigger scale-up: 1 max node group size reached"),
        "{w}"
    );
    let next = env.json(&url, &["workspace", "get", "next", "-o", "json"]);
    let pod = pod_of(&env, next["id"].as_str().unwrap()).expect("next's pod");
    assert_eq!(pod.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert!(
        pod.spec.unwrap().node_name.is_none(),
        "no node took the declined pod"
    );

    // The cloud's limit is raised: the autoscaler adds a node after all and
    // the pod runs there. What is observed wins over the stale decline.
    assert!(h.set_autoscaler_max_nodes(2));
    eventually("the second scale-up", || h.upcoming_nodes() == 1).await;
    assert_eq!(h.complete_scale_up().unwrap(), vec!["pool-2"]);
    eventually("next runs on the added node", || {
        env.json(&url, &["workspace", "get", "next", "-o", "json"])["status"] == "running"
    })
    .await;
    let next = env.json(&url, &["workspace", "get", "next", "-o", "json"]);
    assert!(next["reason"].is_null(), "{next}");
    let pod = pod_of(&env, next["id"].as_str().unwrap()).expect("next's pod");
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("pool-2"));
}
