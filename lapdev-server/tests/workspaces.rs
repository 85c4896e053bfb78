//! Workspaces through the real server and the real `lapdev` CLI, with a manager
//! stand-in on the other end of a real tunnel: placement, the reconciler calling
//! the manager, status reports, stop, start, delete.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use common::{FakeManager, TestServer, dial, eventually, observation, sample_info};
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_kube_rpc::ManagerHealth;
use serde_json::Value;
use uuid::Uuid;

fn lapdev(t: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &t.admin_token)
        .output()
        .expect("the lapdev binary runs")
}

fn json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "lapdev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_lifecycle_through_the_cli() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("dev".into(), None, None, None)
        .await
        .unwrap();
    let manager_api = t.cluster_client(&created.token_secret);
    manager_api
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let fake = Arc::new(FakeManager::default());
    let session = dial(&t, &created.token_secret, fake.clone()).await.unwrap();
    let _run = tokio::spawn(session.run());
    eventually("cluster connected", || {
        let admin = admin.clone();
        async move { admin.get_cluster("dev".into()).await.unwrap().status == ClusterStatus::Connected }
    })
    .await;
    manager_api.heartbeat(ManagerHealth::Ok).await.unwrap();

    // Nothing fits: a clear error in numbers, exit non-zero.
    let out = lapdev(
        &t,
        &[
            "workspace",
            "create",
            "huge",
            "--image",
            "ubuntu",
            "--cpu",
            "64",
            "--memory",
            "1Ti",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no connected cluster can fit 64 CPU"), "{err}");
    // A malformed quantity is refused before any call.
    let out = lapdev(
        &t,
        &[
            "workspace",
            "create",
            "bad",
            "--image",
            "ubuntu",
            "--cpu",
            "lots",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cpu"));

    let ws = json(lapdev(
        &t,
        &[
            "workspace",
            "create",
            "alice-dev",
            "--image",
            "ghcr.io/lapdev/ws:1",
            "--cpu",
            "500m",
            "--memory",
            "1Gi",
            "--storage",
            "5Gi",
            "-o",
            "json",
        ],
    ));
    for field in [
        "id",
        "name",
        "cluster",
        "status",
        "desired_state",
        "message",
        "image",
        "cpu_millis",
        "memory_bytes",
        "storage_bytes",
        "created_at",
    ] {
        assert!(ws.get(field).is_some(), "missing {field}: {ws}");
    }
    assert_eq!(ws["cluster"], "dev");
    assert_eq!(ws["cpu_millis"], 500);
    assert_eq!(ws["memory_bytes"], 1i64 << 30);
    assert_eq!(ws["storage_bytes"], 5i64 << 30);
    assert_eq!(ws["desired_state"], "running");
    let id: Uuid = ws["id"].as_str().unwrap().parse().unwrap();

    // The server's reconciler calls the manager down the tunnel.
    eventually("the manager got the create", || {
        let fake = fake.clone();
        async move { fake.has(id) == Some(WorkspaceStatus::Creating) }
    })
    .await;
    // The manager's watch sees the pod running and reports it.
    manager_api
        .report_workspace_status(observation(id, WorkspaceStatus::Running))
        .await
        .unwrap();
    let got = json(lapdev(&t, &["workspace", "get", "alice-dev", "-o", "json"]));
    assert_eq!(got["status"], "running");

    json(lapdev(
        &t,
        &["workspace", "stop", "alice-dev", "-o", "json"],
    ));
    eventually("stopped", || {
        let fake = fake.clone();
        async move { fake.has(id) == Some(WorkspaceStatus::Stopped) }
    })
    .await;
    eventually("status stopped", || async {
        json(lapdev(&t, &["workspace", "get", "alice-dev", "-o", "json"]))["status"] == "stopped"
    })
    .await;

    json(lapdev(
        &t,
        &["workspace", "start", "alice-dev", "-o", "json"],
    ));
    eventually("started", || {
        let fake = fake.clone();
        async move { fake.has(id) == Some(WorkspaceStatus::Creating) }
    })
    .await;

    json(lapdev(
        &t,
        &["workspace", "delete", "alice-dev", "-o", "json"],
    ));
    eventually("deleted", || async {
        json(lapdev(&t, &["workspace", "get", "alice-dev", "-o", "json"]))["status"] == "deleted"
    })
    .await;
    // The home volume is kept for the retention window: this stand-in is an
    // older manager without `delete_workspace_keeping_volume`, so the
    // conductor stopped it instead (pod gone, volume kept).
    assert_eq!(fake.has(id), Some(WorkspaceStatus::Stopped));
    let live = json(lapdev(&t, &["workspace", "list", "-o", "json"]));
    assert_eq!(live, Value::Array(vec![]));
    let all = json(lapdev(&t, &["workspace", "list", "--all", "-o", "json"]));
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_reports_end_wanted_deletions_and_flag_unwanted_ones() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("dev".into(), None, None, None)
        .await
        .unwrap();
    let manager_api = t.cluster_client(&created.token_secret);
    manager_api
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let fake = Arc::new(FakeManager::default());
    let session = dial(&t, &created.token_secret, fake.clone()).await.unwrap();
    let _run = tokio::spawn(session.run());
    eventually("cluster connected", || {
        let admin = admin.clone();
        async move { admin.get_cluster("dev".into()).await.unwrap().status == ClusterStatus::Connected }
    })
    .await;
    let ws = json(lapdev(
        &t,
        &[
            "workspace",
            "create",
            "w",
            "--image",
            "ubuntu",
            "-o",
            "json",
        ],
    ));
    let id: Uuid = ws["id"].as_str().unwrap().parse().unwrap();
    eventually("created", || {
        let fake = fake.clone();
        async move { fake.has(id).is_some() }
    })
    .await;

    // The objects vanish while the user still wants the workspace: failed, not
    // deleted, so it can be repaired.
    manager_api
        .report_workspace_status(observation(id, WorkspaceStatus::Deleted))
        .await
        .unwrap();
    let got = json(lapdev(&t, &["workspace", "get", "w", "-o", "json"]));
    assert_ne!(got["status"], "deleted");
    assert_eq!(got["deleted_at"], Value::Null);

    // Asked for and reported: the row is soft-deleted.
    json(lapdev(&t, &["workspace", "delete", "w", "-o", "json"]));
    // The conductor may have finished the deletion already, in which case the
    // report names a workspace that is gone.
    match manager_api
        .report_workspace_status(observation(id, WorkspaceStatus::Deleted))
        .await
    {
        Ok(()) => {}
        Err(lapdev_hrpc::CallError::Service(e)) => {
            assert_eq!(e.code, lapdev_hrpc::Code::NotFound, "{e}")
        }
        Err(other) => panic!("{other:?}"),
    }
    eventually("soft-deleted", || async {
        json(lapdev(&t, &["workspace", "get", "w", "-o", "json"]))["deleted_at"].is_string()
    })
    .await;
    assert_eq!(
        json(lapdev(&t, &["workspace", "list", "-o", "json"])),
        Value::Array(vec![])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_report_does_not_overwrite_a_newer_one() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("dev".into(), None, None, None)
        .await
        .unwrap();
    let manager_api = t.cluster_client(&created.token_secret);
    manager_api
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let fake = Arc::new(FakeManager::default());
    let session = dial(&t, &created.token_secret, fake.clone()).await.unwrap();
    let _run = tokio::spawn(session.run());
    eventually("cluster connected", || {
        let admin = admin.clone();
        async move { admin.get_cluster("dev".into()).await.unwrap().status == ClusterStatus::Connected }
    })
    .await;
    let ws = json(lapdev(
        &t,
        &[
            "workspace",
            "create",
            "w",
            "--image",
            "ubuntu",
            "-o",
            "json",
        ],
    ));
    let id: Uuid = ws["id"].as_str().unwrap().parse().unwrap();
    eventually("created", || {
        let fake = fake.clone();
        async move { fake.has(id).is_some() }
    })
    .await;

    // The newer observation: a terminal failure, which the conductor leaves
    // alone until the user acts.
    let newer = lapdev_kube_rpc::WorkspaceObservation {
        reason: Some(lapdev_common::reason::WorkspaceReason::InvalidImage),
        message: Some("invalid image reference".into()),
        ..observation(id, WorkspaceStatus::Failed)
    };
    manager_api
        .report_workspace_status(newer.clone())
        .await
        .unwrap();
    // An older one arriving later, singly or in a snapshot, changes nothing
    // (`creating` may follow `failed`, so only its age refuses it).
    let older = lapdev_kube_rpc::WorkspaceObservation {
        observed_at: newer.observed_at - chrono::Duration::seconds(1),
        ..observation(id, WorkspaceStatus::Creating)
    };
    manager_api
        .report_workspace_status(older.clone())
        .await
        .unwrap();
    manager_api
        .report_workspace_snapshot(vec![older])
        .await
        .unwrap();
    let got = json(lapdev(&t, &["workspace", "get", "w", "-o", "json"]));
    assert_eq!(got["status"], "failed", "{got}");
    assert_eq!(got["reason"], "InvalidImage", "{got}");

    // As new as the stored one: applied (ties go to the report).
    let tie = lapdev_kube_rpc::WorkspaceObservation {
        observed_at: newer.observed_at,
        ..observation(id, WorkspaceStatus::Creating)
    };
    manager_api.report_workspace_status(tie).await.unwrap();
    let got = json(lapdev(&t, &["workspace", "get", "w", "-o", "json"]));
    assert_eq!(got["status"], "creating", "{got}");
}
