//! Item-count caps on list-carrying RPCs, checked before the database is
//! touched.

mod common;

use common::{TestServer, observation};
use lapdev_common::status::WorkspaceStatus;
use lapdev_hrpc::Code;
use lapdev_kube::server::MAX_SNAPSHOT_WORKSPACES;
use uuid::Uuid;

#[tokio::test]
async fn an_oversized_snapshot_is_invalid_argument_without_touching_the_database() {
    // What deployed managers send per chunk must always fit.
    const { assert!(MAX_SNAPSHOT_WORKSPACES >= 2_000) };
    let mut t = TestServer::postgres().await;
    let created = t
        .admin()
        .create_cluster("capped".into(), None)
        .await
        .unwrap();
    let manager = t.cluster_client(&created.token_secret);
    // A full chunk is accepted (and its token is now cached).
    let chunk: Vec<_> = (0..2_000)
        .map(|_| observation(Uuid::new_v4(), WorkspaceStatus::Running))
        .collect();
    manager.report_workspace_snapshot(chunk).await.unwrap();

    // With the database gone, anything that reached it would fail differently.
    drop(t.database.take());
    let oversized: Vec<_> = (0..=MAX_SNAPSHOT_WORKSPACES)
        .map(|_| observation(Uuid::new_v4(), WorkspaceStatus::Running))
        .collect();
    let e = manager
        .report_workspace_snapshot(oversized)
        .await
        .unwrap_err();
    let lapdev_hrpc::CallError::Service(e) = e else {
        panic!("expected a service error, got {e:?}");
    };
    assert_eq!(e.code, Code::InvalidArgument, "{e:?}");
    assert_eq!(e.details.as_ref().unwrap()["field"], "workspaces");
}
