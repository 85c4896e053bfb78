//! The replica registry on PostgreSQL: leases in the database's clock, the
//! generation that fences a replica that lost its lease, and migrations of
//! replicas started together serialised by the startup lock.

use std::time::Duration;

use lapdev_db::replica::LeaseTooShort;
use lapdev_db::test_support::{TestDatabase, expire_replica_lease};
use lapdev_db::{ConnectConfig, Db, DbError, LeaseTiming, ReplicaInfo};
use uuid::Uuid;

fn info(address: &str) -> ReplicaInfo {
    ReplicaInfo {
        id: Uuid::new_v4(),
        address: address.to_owned(),
        version: "test".to_owned(),
    }
}

#[test]
fn a_lease_is_at_least_three_heartbeats() {
    let beat = Duration::from_secs(5);
    assert_eq!(
        LeaseTiming::new(beat, Duration::from_secs(14)),
        Err(LeaseTooShort {
            heartbeat: beat,
            lease: Duration::from_secs(14)
        })
    );
    assert!(LeaseTiming::new(Duration::ZERO, Duration::from_secs(1)).is_err());
    let timing = LeaseTiming::new(beat, Duration::from_secs(15)).unwrap();
    assert_eq!(timing.lease(), Duration::from_secs(15));
}

#[tokio::test]
async fn a_replica_that_lost_its_lease_is_fenced_until_it_registers_again() {
    let test = TestDatabase::postgres().await;
    let db = test.db();
    let timing = LeaseTiming::default();
    let a = info("10.0.0.1:8090");
    let b = info("10.0.0.2:8090");
    let lease_a = db.register_replica(&a, timing).await.unwrap();
    let lease_b = db.register_replica(&b, timing).await.unwrap();
    assert_eq!(lease_a.generation, 1);
    let live = db.live_replicas().await.unwrap();
    assert_eq!(
        live.iter().map(|r| r.info.clone()).collect::<Vec<_>>(),
        vec![a.clone(), b.clone()]
    );

    let renewed = db.renew_replica_lease(&lease_a, timing).await.unwrap();
    let renewed = renewed.expect("a held lease renews");
    assert!(renewed.expires_at >= lease_a.expires_at);
    db.replica_lease_held(&renewed).await.unwrap();

    // A misses its heartbeats: it can neither renew nor write on its lease.
    expire_replica_lease(db, a.id).await.unwrap();
    assert_eq!(
        db.renew_replica_lease(&renewed, timing).await.unwrap(),
        None
    );
    assert!(matches!(
        db.replica_lease_held(&renewed).await,
        Err(DbError::LeaseLost { generation: 1 })
    ));
    let live: Vec<_> = db.live_replicas().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].info.id, b.id);

    // Registering again takes a new generation; the old one stays fenced.
    let again = db.register_replica(&a, timing).await.unwrap();
    assert_eq!(again.generation, 2);
    db.replica_lease_held(&again).await.unwrap();
    assert!(matches!(
        db.replica_lease_held(&renewed).await,
        Err(DbError::LeaseLost { generation: 1 })
    ));
    assert_eq!(
        db.renew_replica_lease(&renewed, timing).await.unwrap(),
        None
    );

    // A crashed replica's row is reaped once its lease is over; a clean
    // shutdown leaves at once.
    expire_replica_lease(db, b.id).await.unwrap();
    assert!(matches!(
        db.replica_lease_held(&lease_b).await,
        Err(DbError::LeaseLost { generation: 1 })
    ));
    assert_eq!(db.reap_replicas(Duration::ZERO).await.unwrap(), 1);
    db.leave_replica(&again).await.unwrap();
    assert!(db.live_replicas().await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_has_no_registry() {
    let test = TestDatabase::sqlite().await;
    assert!(matches!(
        test.db()
            .register_replica(&info("x:1"), LeaseTiming::default())
            .await,
        Err(DbError::PostgresOnly(_))
    ));
    // The startup lock is a no-op there.
    test.db()
        .startup_lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_migrate_one_after_the_other() {
    let test = TestDatabase::empty_postgres().await;
    let starts = (0..4).map(|_| {
        let mut config = ConnectConfig::new(test.url());
        config.max_connections = 2;
        tokio::spawn(async move { Db::connect_with(&config).await })
    });
    for start in futures::future::join_all(starts).await {
        let db = start.unwrap().expect("every replica starts");
        db.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_cluster_claim_is_fenced_by_the_lease_and_only_the_newest_writes_status() {
    use lapdev_common::status::ClusterStatus;
    let test = TestDatabase::postgres().await;
    let db = test.db();
    let timing = LeaseTiming::default();
    let org = db.create_organization("acme").await.unwrap();
    let cluster = db
        .create_cluster(org.id, lapdev_db::NewCluster::named("c1"))
        .await
        .unwrap();
    let a = info("10.0.0.1:8090");
    let b = info("10.0.0.2:8090");
    let lease_a = db.register_replica(&a, timing).await.unwrap();
    let lease_b = db.register_replica(&b, timing).await.unwrap();
    assert_eq!(db.cluster_owner(cluster.id).await.unwrap(), None);
    // Never claimed: any replica that hears the manager may write.
    assert!(
        db.set_unowned_cluster_status(org.id, cluster.id, ClusterStatus::Disconnected)
            .await
            .unwrap()
    );

    let claim_a = db.claim_cluster(cluster.id, &lease_a).await.unwrap();
    assert_eq!((claim_a.replica_id, claim_a.epoch), (a.id, 1));
    assert_eq!(db.cluster_owner(cluster.id).await.unwrap(), Some(claim_a));
    assert!(
        db.set_cluster_status_as_owner(org.id, &claim_a, ClusterStatus::Connected)
            .await
            .unwrap()
    );
    assert_eq!(
        db.get_cluster(org.id, cluster.id).await.unwrap().status,
        ClusterStatus::Connected
    );
    // Claimed: only the owner writes.
    assert!(
        !db.set_unowned_cluster_status(org.id, cluster.id, ClusterStatus::Pending)
            .await
            .unwrap()
    );

    // B's newer tunnel: the newest claim wins, A's write is refused.
    let claim_b = db.claim_cluster(cluster.id, &lease_b).await.unwrap();
    assert_eq!((claim_b.replica_id, claim_b.epoch), (b.id, 2));
    assert!(
        !db.set_cluster_status_as_owner(org.id, &claim_a, ClusterStatus::Disconnected)
            .await
            .unwrap()
    );
    assert_eq!(
        db.get_cluster(org.id, cluster.id).await.unwrap().status,
        ClusterStatus::Connected
    );

    // A replica that lost its lease can neither claim nor write as owner.
    expire_replica_lease(db, b.id).await.unwrap();
    assert!(matches!(
        db.set_cluster_status_as_owner(org.id, &claim_b, ClusterStatus::Disconnected)
            .await,
        Err(DbError::LeaseLost { .. })
    ));
    assert!(matches!(
        db.claim_cluster(cluster.id, &lease_b).await,
        Err(DbError::LeaseLost { .. })
    ));
    assert_eq!(db.cluster_owner(cluster.id).await.unwrap(), Some(claim_b));
    // Nor claim a cluster that does not exist.
    assert!(matches!(
        db.claim_cluster(Uuid::new_v4(), &lease_a).await,
        Err(DbError::NotFound { .. })
    ));

    // What any replica recorded as last heard is readable by the owner.
    let at = chrono::Utc::now();
    db.touch_cluster_seen_at(org.id, cluster.id, at)
        .await
        .unwrap();
    let seen = db.clusters_last_seen(&[cluster.id]).await.unwrap();
    assert!(seen[&cluster.id] >= at - chrono::Duration::milliseconds(1));
    assert!(db.clusters_last_seen(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_has_no_cluster_owners() {
    let test = TestDatabase::sqlite().await;
    assert!(matches!(
        test.db().cluster_owner(Uuid::new_v4()).await,
        Err(DbError::PostgresOnly(_))
    ));
}
