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
        .create_cluster("capped".into(), None, None, None)
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

#[tokio::test]
async fn a_failing_manifest_render_leaves_no_row_and_no_token() {
    let database = lapdev_db::test_support::TestDatabase::postgres().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = common::config(
        data_dir.path().join("data"),
        Some(database.url().to_owned()),
    );
    // A URL scheme the manifest renderer refuses.
    config.public_url = Some("ftp://lapdev.example.com".into());
    let server = lapdev_server::Server::start(config).await.unwrap();
    let admin = common::admin_client(
        &format!("http://{}", server.local_addr),
        server.first_admin_token.as_deref().unwrap(),
    );
    let err = admin
        .create_cluster("doomed".into(), None, None, None)
        .await
        .unwrap_err();
    let lapdev_hrpc::CallError::Service(err) = err else {
        panic!("expected a service error, got {err:?}");
    };
    assert_eq!(err.code, Code::FailedPrecondition, "{err:?}");
    assert!(admin.list_clusters(true).await.unwrap().is_empty());
    // The token rolled back with the row: lapdev-db's
    // `a_failed_finish_rolls_back_the_cluster_and_its_token` counts token rows.
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn names_with_control_characters_are_invalid_argument_naming_the_field() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    for bad in ["nul\0name", "Upper", "with space", "line\nbreak", ""] {
        let err = admin
            .create_cluster(bad.into(), None, None, None)
            .await
            .unwrap_err();
        let lapdev_hrpc::CallError::Service(err) = err else {
            panic!("expected a service error, got {err:?}");
        };
        assert_eq!(err.code, Code::InvalidArgument, "{bad:?}: {err:?}");
        assert_eq!(err.details.as_ref().unwrap()["field"], "name", "{bad:?}");
    }
    admin
        .create_cluster("ok".into(), None, None, None)
        .await
        .unwrap();
    for bad in ["nul\0token", "esc\u{1b}[2J", " padded"] {
        let err = admin
            .create_cluster_token("ok".into(), bad.into(), None)
            .await
            .unwrap_err();
        let lapdev_hrpc::CallError::Service(err) = err else {
            panic!("expected a service error, got {err:?}");
        };
        assert_eq!(err.code, Code::InvalidArgument, "{bad:?}: {err:?}");
        assert_eq!(err.details.as_ref().unwrap()["field"], "name", "{bad:?}");
    }
    assert!(admin.list_clusters(false).await.unwrap().len() == 1);
}
