//! The reverse tunnel end to end: a manager (a stand-in implementing
//! `KubeManagerRpc`) dials the real server; the server calls it down the tunnel.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeManager, TestServer, dial, eventually, sample_info};
use lapdev_common::status::ClusterStatus;
use lapdev_hrpc::{CallError, Code, HrpcError};
use lapdev_kube_rpc::ManagerHealth;
use uuid::Uuid;

#[tokio::test]
async fn the_server_calls_the_manager_down_its_tunnel() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("tunnelled".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = created.cluster.id;
    let manager = t.cluster_client(&created.token_secret);
    manager.report_cluster_info(sample_info()).await.unwrap();

    let fake = FakeManager::blocking_stop();
    let session = dial(&t, &created.token_secret, fake.clone()).await.unwrap();
    let handle = session.handle();
    let run = tokio::spawn(session.run());

    let kube = t.server.state.kube.clone();
    eventually("tunnel registered", || {
        let kube = kube.clone();
        async move { kube.is_tunnel_up(cluster_id) }
    })
    .await;
    // Reported and tunnelled: connected.
    eventually("status connected", || {
        let admin = admin.clone();
        async move {
            admin.get_cluster("tunnelled".into()).await.unwrap().status == ClusterStatus::Connected
        }
    })
    .await;

    // Calls down the tunnel.
    let client = kube
        .manager_client(cluster_id)
        .expect("a client for a connected cluster");
    let info = client.get_cluster_info().await.unwrap();
    assert_eq!(info.kubernetes_version, "v1.30.2");
    let id = Uuid::new_v4();
    match client.get_workspace_status(id).await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::NotFound),
        other => panic!("expected not_found, got {other:?}"),
    }

    // Degraded health shows; ok again clears it.
    manager
        .heartbeat(ManagerHealth::Degraded {
            reason: "kubernetes API unreachable".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        admin.get_cluster("tunnelled".into()).await.unwrap().status,
        ClusterStatus::Degraded
    );
    manager.heartbeat(ManagerHealth::Ok).await.unwrap();
    assert_eq!(
        admin.get_cluster("tunnelled".into()).await.unwrap().status,
        ClusterStatus::Connected
    );

    // A call in flight when the manager drops fails with `unavailable`.
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.stop_workspace(id).await }
    });
    // The manager has the call in hand.
    tokio::time::timeout(Duration::from_secs(10), fake.entered.notified())
        .await
        .unwrap();
    handle.close("manager shutting down");
    let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap();
    let folded: HrpcError = result.unwrap_err().into();
    assert_eq!(folded.code, Code::Unavailable);
    run.await.unwrap();

    eventually("tunnel gone", || {
        let kube = kube.clone();
        async move { !kube.is_tunnel_up(cluster_id) }
    })
    .await;
    assert!(kube.manager_client(cluster_id).is_none());
    eventually("status disconnected", || {
        let admin = admin.clone();
        async move {
            admin.get_cluster("tunnelled".into()).await.unwrap().status
                == ClusterStatus::Disconnected
        }
    })
    .await;
    drop(fake);
}

#[tokio::test]
async fn revoking_the_token_closes_its_tunnel() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("revoked".into(), None, None, None)
        .await
        .unwrap();
    let session = dial(&t, &created.token_secret, Arc::default())
        .await
        .unwrap();
    let run = tokio::spawn(session.run());
    let kube = t.server.state.kube.clone();
    let cluster_id = created.cluster.id;
    eventually("tunnel registered", || {
        let kube = kube.clone();
        async move { kube.is_tunnel_up(cluster_id) }
    })
    .await;

    admin
        .revoke_cluster_token("revoked".into(), created.token.id)
        .await
        .unwrap();
    // The manager's session ends by itself, with the server's reason.
    let reason = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert!(reason.to_string().contains("revoked"), "{reason}");
    assert!(!kube.is_tunnel_up(cluster_id));

    // And it cannot come back with that token.
    match dial(&t, &created.token_secret, Arc::default()).await {
        Err(e) => {
            assert_eq!(e.status().map(|s| s.as_u16()), Some(401), "{e}");
            assert_eq!(e.code(), Some(Code::Unauthenticated));
        }
        Ok(_) => panic!("a revoked token opened a tunnel"),
    }
}

#[tokio::test]
async fn the_newest_tunnel_of_a_cluster_wins() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("twice".into(), None, None, None)
        .await
        .unwrap();
    let first = dial(&t, &created.token_secret, Arc::default())
        .await
        .unwrap();
    let first_run = tokio::spawn(first.run());
    let kube = t.server.state.kube.clone();
    let cluster_id = created.cluster.id;
    eventually("first tunnel", || {
        let kube = kube.clone();
        async move { kube.is_tunnel_up(cluster_id) }
    })
    .await;
    let second = dial(&t, &created.token_secret, Arc::default())
        .await
        .unwrap();
    let second_handle = second.handle();
    let _second_run = tokio::spawn(second.run());
    // The first session is closed by the server.
    tokio::time::timeout(Duration::from_secs(10), first_run)
        .await
        .unwrap()
        .unwrap();
    // Calls reach the second.
    let client = kube.manager_client(cluster_id).unwrap();
    client.get_cluster_info().await.unwrap();
    assert!(!second_handle.is_closed());
}
