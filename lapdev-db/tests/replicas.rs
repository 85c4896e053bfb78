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
