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

#[tokio::test]
async fn shutdown_fails_readiness_then_drains_tunnels_one_at_a_time_and_refuses_new_ones() {
    // A long window: with two tunnels the second closes half-way through it,
    // so the server is still draining (and serving) while the test looks.
    let limits = lapdev_server::config::LimitsConfig {
        shutdown_drain_secs: 120,
        ..Default::default()
    };
    let t = TestServer::postgres_with(limits).await;
    let admin = t.admin();
    let mut runs = Vec::new();
    let mut tokens = Vec::new();
    for name in ["drain-a", "drain-b"] {
        let created = admin
            .create_cluster(name.into(), None, None, None)
            .await
            .unwrap();
        let session = dial(&t, &created.token_secret, FakeManager::blocking_stop())
            .await
            .unwrap();
        runs.push(tokio::spawn(session.run()));
        tokens.push(created.token_secret);
    }
    let kube = t.server.state.kube.clone();
    eventually("both tunnels registered", || {
        let kube = kube.clone();
        async move { kube.connected_clusters().len() == 2 }
    })
    .await;

    t.server.shutdown();
    assert!(!t.server.state.replica.is_ready(), "readiness fails first");
    // One tunnel closes at once, the other waits its turn.
    eventually("the first tunnel closed", || {
        let kube = kube.clone();
        async move { kube.connected_clusters().len() == 1 }
    })
    .await;
    eventually("its manager's session ended", || {
        let done = runs.iter().any(|r| r.is_finished());
        async move { done }
    })
    .await;
    let (ended, waiting): (Vec<_>, Vec<_>) = runs.into_iter().partition(|r| r.is_finished());
    assert_eq!((ended.len(), waiting.len()), (1, 1));
    match ended.into_iter().next().unwrap().await.unwrap() {
        lapdev_hrpc::tunnel::CloseReason::Peer { reason, .. } => {
            assert_eq!(reason, lapdev_kube::server::DRAIN_REASON)
        }
        other => panic!("unexpected {other:?}"),
    }
    // Meanwhile a manager dialling this server is sent elsewhere.
    match dial(&t, &tokens[0], FakeManager::blocking_stop()).await {
        Err(lapdev_hrpc::tunnel::TunnelConnectError::Rejected { status, .. }) => {
            assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE)
        }
        Err(other) => panic!("expected 503, got {other:?}"),
        Ok(_) => panic!("a draining server accepted a new tunnel"),
    }
    assert_eq!(kube.connected_clusters().len(), 1);
}
