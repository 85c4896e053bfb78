//! The real `lapdev-kube-manager` binary against the Kubernetes API double and a
//! recording stand-in for the server: cluster info, workspace commands, status
//! reports, reconnects, degraded health, refused commands.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fake_server::{FakeServer, TOKEN};
use common::{ManagerProcess, NAMESPACE, double, eventually, spec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use lapdev_common::status::{CloudProvider, WorkspaceStatus};
use lapdev_hrpc::{CallError, Code};
use lapdev_kube_double::{FailureMode, KubeletConfig, NodeSpec, Verb};
use lapdev_kube_rpc::ManagerHealth;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

fn any_addr() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn cluster_info_is_reported_at_connect_and_when_nodes_change() {
    let double = double().await;
    let h = double.handle();
    h.remove_node("node-1").unwrap();
    let gke = |region: &str| NodeSpec {
        provider_id: Some("gce://proj/europe-west1-b/gke-1".into()),
        labels: BTreeMap::from([
            ("topology.kubernetes.io/region".into(), region.into()),
            ("cloud.google.com/gke-nodepool".into(), "pool".into()),
        ]),
        ..NodeSpec::default()
    };
    h.add_node(
        "a",
        NodeSpec {
            cpu: "4".into(),
            memory: "15963568Ki".into(),
            allocatable_cpu: Some("3800m".into()),
            allocatable_memory: Some("2Gi".into()),
            ..gke("europe-west1")
        },
    )
    .unwrap();
    h.add_node(
        "b",
        NodeSpec {
            cpu: "1.5".into(),
            memory: "500M".into(),
            ..gke("europe-west1")
        },
    )
    .unwrap();
    h.add_node(
        "c",
        NodeSpec {
            cpu: "1e3".into(),
            memory: "1e3".into(),
            ..gke("europe-west1")
        },
    )
    .unwrap();
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);

    let r = server
        .wait_for("cluster info", WAIT, |r| !r.infos.is_empty())
        .await;
    let info = &r.infos[0];
    assert_eq!(info.node_count, 3);
    assert_eq!(info.cpu_capacity_millis, 4000 + 1500 + 1_000_000);
    assert_eq!(info.cpu_allocatable_millis, 3800 + 1500 + 1_000_000);
    assert_eq!(
        info.memory_capacity_bytes,
        15_963_568 * 1024 + 500_000_000 + 1000
    );
    assert_eq!(
        info.memory_allocatable_bytes,
        (2 << 30) + 500_000_000 + 1000
    );
    assert_eq!(info.provider, CloudProvider::Gcp);
    assert_eq!(info.region.as_deref(), Some("europe-west1"));
    assert_eq!(info.kubernetes_version, "v1.33.0");
    assert_eq!(info.workspace_namespace, NAMESPACE);
    assert_eq!(info.manager_namespace, "lapdev");
    assert!(!info.manager_version.is_empty());

    // A node joins: reported again.
    h.add_node(
        "d",
        NodeSpec {
            cpu: "2".into(),
            ..gke("europe-west1")
        },
    )
    .unwrap();
    let r = server
        .wait_for("info with 4 nodes", WAIT, |r| {
            r.infos.last().is_some_and(|i| i.node_count == 4)
        })
        .await;
    assert_eq!(
        r.infos.last().unwrap().cpu_capacity_millis,
        4000 + 1500 + 1_000_000 + 2000
    );
    // A node's capacity changes (as its kubelet would report): reported again.
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
        kube::Api::all(double.client().await.unwrap());
    nodes
        .patch_status(
            "d",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "status": {"capacity": {"cpu": "3"}, "allocatable": {"cpu": "2500m"}}
            })),
        )
        .await
        .unwrap();
    let r = server
        .wait_for("info with d's new capacity", WAIT, |r| {
            r.infos
                .last()
                .is_some_and(|i| i.cpu_capacity_millis == 4000 + 1500 + 1_000_000 + 3000)
        })
        .await;
    assert_eq!(
        r.infos.last().unwrap().cpu_allocatable_millis,
        3800 + 1500 + 1_000_000 + 2500
    );
    let d_cpu = 3000;

    // A node leaves: reported again.
    h.remove_node("c").unwrap();
    server
        .wait_for("info with 3 nodes", WAIT, |r| {
            r.infos
                .last()
                .is_some_and(|i| i.node_count == 3 && i.cpu_capacity_millis == 4000 + 1500 + d_cpu)
        })
        .await;
}

#[tokio::test]
async fn workspace_lifecycle_through_the_tunnel() {
    let double = double().await;
    let h = double.handle();
    let _kubelet = h.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(100),
        ..KubeletConfig::default()
    });
    let server = FakeServer::start(any_addr()).await;
    let manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let id = Uuid::new_v4();

    // Create twice: one pod, one claim.
    let first = rpc.create_workspace(spec(id)).await.unwrap();
    assert_eq!(first.workspace_id, id);
    assert_eq!(first.status, WorkspaceStatus::Creating);
    assert_eq!(first.pod_name.as_deref(), Some(format!("ws-{id}").as_str()));
    rpc.create_workspace(spec(id)).await.unwrap();
    let pods: Vec<Pod> = h.list().unwrap();
    let pvcs: Vec<PersistentVolumeClaim> = h.list().unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pvcs.len(), 1);
    let labels = pods[0].metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "lapdev");
    assert_eq!(labels["lapdev.dev/workspace-id"], id.to_string());
    let c = &pods[0].spec.as_ref().unwrap().containers[0];
    // The baseline profile: sudo works, the runtime's default capabilities.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, None);
    assert_eq!(sc.capabilities, None);
    assert_eq!((c.tty, c.stdin), (Some(true), Some(true)));
    let psc = pods[0]
        .spec
        .as_ref()
        .unwrap()
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(psc.fs_group, Some(1000));

    // The kubelet starts it: running reaches the server.
    let running = |r: &common::fake_server::Recorded| {
        r.statuses
            .iter()
            .any(|s| s.workspace_id == id && s.status == WorkspaceStatus::Running)
    };
    server.wait_for("running", WAIT, running).await;
    let status = rpc.get_workspace_status(id).await.unwrap();
    assert_eq!(status.status, WorkspaceStatus::Running);
    let listed = rpc.list_workspaces().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, WorkspaceStatus::Running);

    // Stop keeps the claim. The pod terminates gracefully (the kubelet confirms).
    let stopped = rpc.stop_workspace(id).await.unwrap();
    assert!(
        matches!(
            stopped.status,
            WorkspaceStatus::Stopping | WorkspaceStatus::Stopped
        ),
        "{stopped:?}"
    );
    server
        .wait_for("stopped", WAIT, |r| {
            r.statuses
                .last()
                .is_some_and(|s| s.status == WorkspaceStatus::Stopped)
        })
        .await;
    assert!(h.list::<Pod>().unwrap().is_empty());
    assert_eq!(h.list::<PersistentVolumeClaim>().unwrap().len(), 1);
    // Stopping again is fine.
    assert_eq!(
        rpc.stop_workspace(id).await.unwrap().status,
        WorkspaceStatus::Stopped
    );

    // Start recreates the pod.
    rpc.start_workspace(spec(id)).await.unwrap();
    assert_eq!(h.list::<Pod>().unwrap().len(), 1);
    server
        .wait_for("running again", WAIT, |r| {
            r.statuses
                .last()
                .is_some_and(|s| s.status == WorkspaceStatus::Running)
        })
        .await;

    // A phase change the kubelet reports reaches the server, with the reason.
    h.set_pod_phase(NAMESPACE, &format!("ws-{id}"), "Failed", vec![])
        .unwrap();
    let r = server
        .wait_for("failed", WAIT, |r| {
            r.statuses
                .last()
                .is_some_and(|s| s.status == WorkspaceStatus::Failed)
        })
        .await;
    assert!(
        r.statuses
            .last()
            .unwrap()
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit code 1")),
        "{:?}",
        r.statuses.last()
    );

    // Start right after a stop waits for the old pod to finish terminating.
    rpc.stop_workspace(id).await.unwrap();
    rpc.start_workspace(spec(id)).await.unwrap();
    server
        .wait_for("running after a quick restart", WAIT, |r| {
            r.statuses
                .last()
                .is_some_and(|s| s.status == WorkspaceStatus::Running)
        })
        .await;
    assert_eq!(h.list::<Pod>().unwrap().len(), 1);

    // Delete removes everything; deleting again is fine.
    let deleted = rpc.delete_workspace(id).await.unwrap();
    assert!(
        matches!(
            deleted.status,
            WorkspaceStatus::Deleting | WorkspaceStatus::Deleted
        ),
        "{deleted:?}"
    );
    server
        .wait_for("deleted", WAIT, |r| {
            r.statuses
                .last()
                .is_some_and(|s| s.status == WorkspaceStatus::Deleted)
        })
        .await;
    assert!(h.list::<Pod>().unwrap().is_empty());
    assert!(h.list::<PersistentVolumeClaim>().unwrap().is_empty());
    assert_eq!(
        rpc.delete_workspace(id).await.unwrap().status,
        WorkspaceStatus::Deleted
    );
    match rpc.get_workspace_status(id).await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::NotFound),
        other => panic!("expected not_found, got {other:?}"),
    }
    let log = manager.log();
    assert!(log.contains("command done"));
    assert!(!log.contains('\u{1b}'), "a piped log has no colour codes");
}

#[tokio::test]
async fn a_restarted_server_gets_a_fresh_snapshot() {
    let double = double().await;
    let h = double.handle();
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    server.manager().create_workspace(spec(a)).await.unwrap();
    server.manager().create_workspace(spec(b)).await.unwrap();
    server
        .wait_for("both creating", WAIT, |r| {
            [a, b]
                .iter()
                .all(|id| r.statuses.iter().any(|s| s.workspace_id == *id))
        })
        .await;

    // The server goes away; meanwhile a's pod starts and b's pod fails.
    let addr = server.stop().await;
    h.set_pod_phase(NAMESPACE, &format!("ws-{a}"), "Running", vec![])
        .unwrap();
    h.set_pod_phase(NAMESPACE, &format!("ws-{b}"), "Failed", vec![])
        .unwrap();

    // Back on the same address: the manager reconnects and sends everything.
    let server = FakeServer::start(addr).await;
    let r = server
        .wait_for("a snapshot with both", WAIT, |r| {
            r.snapshots.iter().any(|s| s.len() == 2) && !r.infos.is_empty()
        })
        .await;
    let snap = r.snapshots.iter().find(|s| s.len() == 2).unwrap();
    let status_of = |id| snap.iter().find(|o| o.workspace_id == id).unwrap().status;
    assert_eq!(status_of(a), WorkspaceStatus::Running);
    assert_eq!(status_of(b), WorkspaceStatus::Failed);
    assert_eq!(r.tunnels, 1);
    // And commands work over the new tunnel.
    assert_eq!(server.manager().list_workspaces().await.unwrap().len(), 2);
}

#[tokio::test]
async fn kubernetes_failures_degrade_and_recover() {
    let double = double().await;
    let h = double.handle();
    let server = FakeServer::start(any_addr()).await;
    let manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    let r = server
        .wait_for("ok heartbeat", WAIT, |r| {
            r.heartbeats.last() == Some(&ManagerHealth::Ok)
        })
        .await;
    // The very first heartbeat already says ok: it waits for the first probe.
    assert_eq!(r.heartbeats.first(), Some(&ManagerHealth::Ok));
    let mgr = &manager;
    eventually("ready", WAIT, || async move {
        mgr.get("/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;

    h.set_failure_mode(FailureMode::Fail(500));
    let r = server
        .wait_for("degraded heartbeat", WAIT, |r| {
            matches!(r.heartbeats.last(), Some(ManagerHealth::Degraded { .. }))
        })
        .await;
    let Some(ManagerHealth::Degraded { reason }) = r.heartbeats.last() else {
        unreachable!()
    };
    assert!(
        reason.contains("kubernetes API") || reason.contains("watching"),
        "{reason}"
    );
    eventually("not ready", WAIT, || async move {
        mgr.get("/readyz").await.is_some_and(|(s, _)| s == 503)
    })
    .await;
    // Still alive, still connected.
    assert_eq!(manager.get("/healthz").await.unwrap().0, 200);

    h.set_failure_mode(FailureMode::None);
    server
        .wait_for("ok again", WAIT, |r| {
            r.heartbeats.last() == Some(&ManagerHealth::Ok)
        })
        .await;
    eventually("ready again", WAIT, || async move {
        mgr.get("/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    // And it still sees changes after the outage.
    let id = Uuid::new_v4();
    server.manager().create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("creating after recovery", WAIT, |r| {
            r.statuses.iter().any(|s| s.workspace_id == id)
        })
        .await;
    let (status, metrics) = manager.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("lapdev_manager_connected"), "{metrics}");
    assert!(
        metrics.contains("lapdev_manager_commands_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn refused_commands_come_back_as_readable_errors() {
    let double = double().await;
    let h = double.handle();
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();

    // RBAC says no.
    h.deny(Verb::Create, "pods");
    match rpc.create_workspace(spec(Uuid::new_v4())).await {
        Err(CallError::Service(e)) => {
            assert_eq!(e.code, Code::PermissionDenied, "{e:?}");
            assert!(e.message.contains("creating pod"), "{}", e.message);
            assert!(
                e.message.to_lowercase().contains("forbidden"),
                "{}",
                e.message
            );
        }
        other => panic!("expected permission_denied, got {other:?}"),
    }
    h.allow(Verb::Create, "pods");

    // An image no registry can serve.
    let mut bad = spec(Uuid::new_v4());
    bad.image = "not an image".into();
    match rpc.create_workspace(bad).await {
        Err(CallError::Service(e)) => {
            assert_eq!(e.code, Code::InvalidArgument, "{e:?}");
            assert!(e.message.contains("invalid image"), "{}", e.message);
        }
        other => panic!("expected invalid_argument, got {other:?}"),
    }
    // Kubernetes refuses the pod (validation, quota).
    for (code, expected) in [
        (422, Code::InvalidArgument),
        (403, Code::PermissionDenied),
        (409, Code::Aborted),
    ] {
        h.fail_next_matching(1, code, Some(Verb::Create), Some("pods"));
        match rpc.create_workspace(spec(Uuid::new_v4())).await {
            Err(CallError::Service(e)) => {
                assert_eq!(e.code, expected, "{e:?}");
                assert!(e.message.contains("creating pod ws-"), "{}", e.message);
                assert!(e.message.contains(&format!("HTTP {code}")), "{}", e.message);
            }
            other => panic!("expected an error for {code}, got {other:?}"),
        }
    }
    // Throttling and server errors are retried a bounded number of times,
    // then reported as retryable with the cause.
    h.fail_next_matching(2, 503, Some(Verb::Create), Some("pods"));
    let id = Uuid::new_v4();
    assert_eq!(
        rpc.create_workspace(spec(id)).await.unwrap().workspace_id,
        id,
        "two 503s are retried"
    );
    for (code, expected) in [(429, Code::ResourceExhausted), (500, Code::Unavailable)] {
        h.reset_request_counts();
        h.fail_next_matching(3, code, Some(Verb::Create), Some("pods"));
        match rpc.create_workspace(spec(Uuid::new_v4())).await {
            Err(CallError::Service(e)) => {
                assert_eq!(e.code, expected, "{e:?}");
                assert!(e.message.contains("3 attempts"), "{}", e.message);
                assert!(e.message.contains(&format!("HTTP {code}")), "{}", e.message);
                assert_eq!(e.details.as_ref().unwrap()["retryable"], true, "{e:?}");
            }
            other => panic!("expected an error for {code}, got {other:?}"),
        }
        assert_eq!(
            h.request_count_for(Verb::Create, "pods"),
            3,
            "bounded retries"
        );
    }

    // A spec refused before Kubernetes.
    let mut zero = spec(Uuid::new_v4());
    zero.cpu_millis = 0;
    match rpc.create_workspace(zero).await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::InvalidArgument),
        other => panic!("expected invalid_argument, got {other:?}"),
    }

    // An API server that never answers: an error within the timeout, not a hang.
    h.set_failure_mode(FailureMode::Hang);
    let started = std::time::Instant::now();
    match rpc.create_workspace(spec(Uuid::new_v4())).await {
        Err(CallError::Service(e)) => {
            assert_eq!(e.code, Code::DeadlineExceeded, "{e:?}");
            assert!(e.message.contains("did not answer"), "{}", e.message);
        }
        other => panic!("expected deadline_exceeded, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    h.set_failure_mode(FailureMode::None);
}

#[tokio::test]
async fn sigterm_closes_the_tunnel_and_exits_cleanly() {
    let double = double().await;
    let server = FakeServer::start(any_addr()).await;
    let mut manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let status = tokio::task::spawn_blocking(move || {
        let s = manager.terminate();
        (s, manager)
    })
    .await
    .unwrap();
    assert!(status.0.is_some_and(|s| s.success()), "{:?}", status.0);
}

#[tokio::test]
async fn a_wrong_token_is_retried_not_fatal() {
    let double = double().await;
    let server = FakeServer::start(any_addr()).await;
    // Well-formed, but not this cluster's: the server refuses it.
    let wrong = format!("lapdev_ct_{}", "w".repeat(43));
    let manager = ManagerProcess::spawn(&double, &server.url(), &wrong);
    let mgr = &manager;
    eventually("a refused tunnel is logged", WAIT, || async move {
        mgr.log().contains("401")
    })
    .await;
    assert!(server.recorded().heartbeats.is_empty());
    assert_eq!(manager.get("/readyz").await.unwrap().0, 503);
}

/// A value that cannot be a cluster token (here a personal access token, the
/// likeliest mix-up) stops the manager at once, saying which setting is wrong,
/// instead of asking the server every few minutes.
#[tokio::test]
async fn a_malformed_token_stops_the_manager_and_names_the_setting() {
    let double = double().await;
    let server = FakeServer::start(any_addr()).await;
    let pat = format!("lapdev_pat_{}", "p".repeat(43));
    let mut manager = ManagerProcess::spawn(&double, &server.url(), &pat);
    let status = tokio::task::spawn_blocking(move || {
        let status = manager.child.wait().unwrap();
        (status, manager)
    })
    .await
    .unwrap();
    let (status, manager) = status;
    assert!(!status.success(), "{status:?}");
    let log = manager.log();
    assert!(
        log.contains("LAPDEV_KUBE_CLUSTER_TOKEN is not a cluster token")
            && log.contains("personal access token"),
        "{log}"
    );
    assert!(server.recorded().heartbeats.is_empty());
}

#[tokio::test]
async fn changes_missed_by_a_broken_watch_are_found_by_the_relist() {
    let double = double().await;
    let h = double.handle();
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let id = Uuid::new_v4();
    server.manager().create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("creating", WAIT, |r| {
            r.statuses.iter().any(|s| s.workspace_id == id)
        })
        .await;

    // The watches break and the history is compacted while the pod goes away
    // behind the manager's back: resuming is 410 Gone, so the watcher relists.
    h.set_failure_mode(FailureMode::Fail(500));
    h.drop_watches();
    h.delete::<Pod>(NAMESPACE, &format!("ws-{id}")).unwrap();
    h.compact();
    h.set_failure_mode(FailureMode::None);
    let r = server
        .wait_for("stopped after the relist", WAIT, |r| {
            r.statuses
                .iter()
                .any(|s| s.workspace_id == id && s.status == WorkspaceStatus::Stopped)
        })
        .await;
    assert!(r.heartbeats.last().is_some());
}

#[tokio::test]
async fn an_unreachable_kubernetes_api_at_start_is_degraded_not_fatal() {
    // A kubeconfig whose API server is gone.
    let gone = double().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    gone.write_kubeconfig(&kubeconfig).unwrap();
    drop(gone);

    let server = FakeServer::start(any_addr()).await;
    let manager = ManagerProcess::spawn_kubeconfig(dir, kubeconfig, &server.url(), TOKEN, &[]);
    let r = server
        .wait_for("a degraded heartbeat", WAIT, |r| {
            matches!(r.heartbeats.last(), Some(ManagerHealth::Degraded { .. }))
        })
        .await;
    assert!(r.infos.is_empty() && r.snapshots.is_empty());
    let mgr = &manager;
    eventually("not ready, but alive", WAIT, || async move {
        mgr.get("/readyz").await.is_some_and(|(s, _)| s == 503)
            && mgr.get("/healthz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    // Commands fail readably instead of hanging.
    match server.manager().list_workspaces().await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::Unavailable),
        other => panic!("expected unavailable, got {other:?}"),
    }
    match server
        .manager()
        .create_workspace(spec(Uuid::new_v4()))
        .await
    {
        Err(CallError::Service(e)) => {
            assert_eq!(e.code, Code::Unavailable, "{e:?}");
            assert!(e.message.contains("unreachable"), "{}", e.message);
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}
