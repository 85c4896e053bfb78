//! The tunnel's token invariant through the real server: expiry closes a
//! tunnel, a revocation racing a registration never leaves one open, and a
//! database outage longer than the token cache's lifetime drops nothing.

mod common;

use common::{FakeManager, TestServer, dial, eventually, sample_info};
use lapdev_common::status::ClusterStatus;
use lapdev_kube_rpc::ManagerHealth;
use lapdev_server::config::LimitsConfig;

#[tokio::test]
async fn a_tunnel_closes_at_its_tokens_expiry() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    let created = admin
        .create_cluster("expiring".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = created.cluster.id;
    let token = admin
        .create_cluster_token("expiring".into(), "short".into(), Some(2))
        .await
        .unwrap();
    let session = dial(&t, &token.token_secret, FakeManager::blocking_stop())
        .await
        .unwrap();
    let handle = session.handle();
    let run = tokio::spawn(session.run());
    let kube = t.server.state.kube.clone();
    eventually("the tunnel registered", || {
        let kube = kube.clone();
        async move { kube.is_tunnel_up(cluster_id) }
    })
    .await;
    // Without a close scheduled at expiry the tunnel would stay up for ever.
    eventually("the tunnel closed at the token's expiry", || {
        let kube = kube.clone();
        let handle = handle.clone();
        async move { !kube.is_tunnel_up(cluster_id) && handle.is_closed() }
    })
    .await;
    let _ = run.await;
    // And the expired token cannot open another.
    assert!(
        dial(&t, &token.token_secret, FakeManager::blocking_stop())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn revocation_racing_registration_never_leaves_a_tunnel_open() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    admin
        .create_cluster("racing".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = admin.get_cluster("racing".into()).await.unwrap().id;
    let kube = t.server.state.kube.clone();
    for round in 0..25 {
        // Two live tokens at most: revoke the initial one on the first round.
        if round == 0 {
            let tokens = admin.list_cluster_tokens("racing".into()).await.unwrap();
            for tk in tokens {
                admin
                    .revoke_cluster_token("racing".into(), tk.id)
                    .await
                    .unwrap();
            }
        }
        let token = admin
            .create_cluster_token("racing".into(), format!("round-{round}"), None)
            .await
            .unwrap();
        let dialing = dial(&t, &token.token_secret, FakeManager::blocking_stop());
        let revoking = admin.revoke_cluster_token("racing".into(), token.token.id);
        let (dialed, revoked) = tokio::join!(dialing, revoking);
        revoked.unwrap();
        if let Ok(session) = dialed {
            let handle = session.handle();
            let run = tokio::spawn(session.run());
            eventually("the revoked token's tunnel closed", || {
                let handle = handle.clone();
                async move { handle.is_closed() }
            })
            .await;
            let _ = run.await;
        }
        eventually("no tunnel of a revoked token is registered", || {
            let kube = kube.clone();
            async move { !kube.is_tunnel_up(cluster_id) }
        })
        .await;
    }
}

#[tokio::test]
async fn a_database_outage_longer_than_the_token_cache_drops_no_tunnel_and_flips_no_status() {
    // A zero cache lifetime: every call asks the database, so any outage is
    // longer than the cache's lifetime.
    let mut t = TestServer::postgres_with(LimitsConfig {
        token_cache_ttl_secs: 0,
        ..LimitsConfig::default()
    })
    .await;
    let admin = t.admin();
    let created = admin
        .create_cluster("steady".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = created.cluster.id;
    let manager = t.cluster_client(&created.token_secret);
    manager.report_cluster_info(sample_info()).await.unwrap();
    let session = dial(&t, &created.token_secret, FakeManager::blocking_stop())
        .await
        .unwrap();
    let handle = session.handle();
    let run = tokio::spawn(session.run());
    let kube = t.server.state.kube.clone();
    eventually("connected", || {
        let kube = kube.clone();
        async move { kube.cluster_status(cluster_id) == Some(ClusterStatus::Connected) }
    })
    .await;

    // The outage.
    drop(t.database.take());
    for _ in 0..20 {
        manager
            .heartbeat(ManagerHealth::Ok)
            .await
            .expect("heartbeats keep working through the outage");
    }
    kube.sweep().await;
    assert!(kube.is_tunnel_up(cluster_id));
    assert!(!handle.is_closed());
    assert_eq!(
        kube.cluster_status(cluster_id),
        Some(ClusterStatus::Connected)
    );
    // Calls down the tunnel still work.
    let client = kube.manager_client(cluster_id).unwrap();
    client.get_cluster_info().await.unwrap();
    handle.close("test over");
    let _ = run.await;
}
