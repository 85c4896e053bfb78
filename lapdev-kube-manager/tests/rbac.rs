//! The manager as the ServiceAccount of the manifest the server renders, with
//! RBAC enforced by the double from the Role and ClusterRole actually applied,
//! and the workspace namespace's Pod Security level from the same manifest: a
//! call the manifest does not allow, or a pod the profile's Pod Security level
//! refuses, fails here.

mod common;

use std::time::Duration;

use common::fake_server::{FakeServer, Recorded, TOKEN};
use common::{ManagerProcess, NAMESPACE, spec};
use k8s_openapi::api::core::v1::Pod;
use lapdev_common::status::{SecurityProfile, WorkspaceStatus};
use lapdev_kube::manifest::{MANIFEST_REVISION, ManifestParams, manager_manifest};
use lapdev_kube_double::{KubeDouble, KubeletConfig, NodeSpec};
use lapdev_kube_rpc::ManagerHealth;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn last_is(r: &Recorded, id: Uuid, status: WorkspaceStatus) -> bool {
    r.statuses
        .iter()
        .rfind(|s| s.workspace_id == id)
        .is_some_and(|s| s.status == status)
}

async fn lifecycle_as_the_service_account(profile: SecurityProfile) {
    let double = KubeDouble::start().await.unwrap();
    let h = double.handle();
    h.add_node("node-1", NodeSpec::default()).unwrap();
    // The manifest's own Secret is not used here (the manager gets the fake
    // server's token); it only has to be well formed.
    let mut params = ManifestParams::new(
        "https://lapdev.example.com",
        "lapdev_ct_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde",
        "test",
    );
    params.security_profile = profile;
    let m = manager_manifest(&params).unwrap();
    assert_eq!(
        m.workspace_namespace.metadata.name.as_deref(),
        Some(NAMESPACE)
    );
    h.create(&m.manager_namespace).unwrap();
    h.create(&m.workspace_namespace).unwrap();
    h.create(&m.service_account).unwrap();
    h.create(&m.cluster_role).unwrap();
    h.create(&m.cluster_role_binding).unwrap();
    h.create(&m.role).unwrap();
    h.create(&m.role_binding).unwrap();
    h.enable_rbac();
    let _kubelet = h.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(50),
        ..KubeletConfig::default()
    });
    let kubeconfig = double
        .service_account_kubeconfig("lapdev", "lapdev-kube-manager")
        .unwrap();
    let server = FakeServer::start("127.0.0.1:0".parse().unwrap()).await;
    let _manager = ManagerProcess::spawn_kubeconfig(
        tempfile::tempdir().unwrap(),
        kubeconfig,
        &server.url(),
        TOKEN,
        &[
            ("LAPDEV_SECURITY_PROFILE", profile.as_str()),
            ("LAPDEV_MANIFEST_REVISION", MANIFEST_REVISION),
        ],
    );
    server
        .wait_for("snapshot and a healthy heartbeat", WAIT, |r| {
            !r.snapshots.is_empty() && r.heartbeats.last() == Some(&ManagerHealth::Ok)
        })
        .await;
    let info = server.recorded().infos.last().cloned().unwrap();
    assert_eq!(info.manifest_revision.as_deref(), Some(MANIFEST_REVISION));
    let rpc = server.manager();
    let id = Uuid::new_v4();
    rpc.create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("running", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    rpc.get_workspace_status(id).await.unwrap();
    rpc.stop_workspace(id).await.unwrap();
    server
        .wait_for("stopped", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Stopped)
        })
        .await;
    rpc.start_workspace(spec(id)).await.unwrap();
    server
        .wait_for("running again", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    // The repair path: a pod that ended is replaced.
    h.kubelet_evict(
        NAMESPACE,
        &format!("ws-{id}"),
        "The node was low on resource: memory.",
    )
    .unwrap();
    server
        .wait_for("evicted", WAIT, |r| last_is(r, id, WorkspaceStatus::Failed))
        .await;
    rpc.start_workspace(spec(id)).await.unwrap();
    server
        .wait_for("repaired", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    rpc.delete_workspace(id).await.unwrap();
    server
        .wait_for("deleted", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Deleted)
        })
        .await;
    assert!(h.list::<Pod>().unwrap().is_empty());
    // Never degraded once healthy: every watcher (events too) is allowed.
    let r = server.recorded();
    let first_ok = r
        .heartbeats
        .iter()
        .position(|h| *h == ManagerHealth::Ok)
        .unwrap();
    assert!(
        r.heartbeats[first_ok..]
            .iter()
            .all(|h| *h == ManagerHealth::Ok),
        "{:?}",
        r.heartbeats
    );
}

#[tokio::test]
async fn the_baseline_manifest_allows_every_call_and_admits_the_pods() {
    lifecycle_as_the_service_account(SecurityProfile::Baseline).await;
}

#[tokio::test]
async fn the_restricted_manifest_allows_every_call_and_admits_the_pods() {
    lifecycle_as_the_service_account(SecurityProfile::Restricted).await;
}
