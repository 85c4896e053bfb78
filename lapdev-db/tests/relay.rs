//! The change feed across replicas: two `Db` handles on one PostgreSQL
//! database (two replicas) see each other's changes through `LISTEN/NOTIFY`,
//! never their own twice, and hear `Resync` when their listener reconnects.

use lapdev_db::test_support::TestDatabase;
use lapdev_db::{Change, Db, NewCluster, NewClusterToken, Revocation};
use sea_orm::ConnectionTrait as _;
use tokio::sync::broadcast;
use uuid::Uuid;

/// A second replica's handle on the test database, relaying.
async fn replica(test: &TestDatabase) -> Db {
    let db = lapdev_db::connect(test.url()).await.unwrap();
    let relay = db.start_change_relay().await.unwrap();
    tokio::spawn(relay.run(std::future::pending()));
    db
}

async fn next(rx: &mut broadcast::Receiver<Change>) -> Change {
    rx.recv().await.expect("the feed is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_written_on_one_replica_reaches_the_other_once() {
    let test = TestDatabase::postgres().await;
    let a = replica(&test).await;
    let b = replica(&test).await;
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();

    let org = a.create_organization("org").await.unwrap();
    let cluster = a
        .create_cluster(org.id, NewCluster::named("c1".to_owned()))
        .await
        .unwrap();
    let token = a
        .create_cluster_token(
            org.id,
            cluster.id,
            NewClusterToken {
                name: "t".into(),
                created_by: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    a.revoke_cluster_token(org.id, token.token.id)
        .await
        .unwrap();
    let revoked = Change::TokenRevoked {
        organization_id: org.id,
        cluster_id: cluster.id,
        token_id: token.token.id,
    };
    // B hears everything A published, in order, ending with the revocation.
    let mut heard = Vec::new();
    loop {
        let c = next(&mut on_b).await;
        heard.push(c.clone());
        if c == revoked {
            break;
        }
    }
    let mut published = Vec::new();
    loop {
        let c = next(&mut on_a).await;
        published.push(c.clone());
        if c == revoked {
            break;
        }
    }
    assert_eq!(heard, published);

    // An announcement (a revocation B acted on itself) reaches A only.
    let user_id = Uuid::new_v4();
    let announced = Change::Revoked(Revocation::UserDisabled { user_id });
    b.announce(announced.clone());
    // A's next change is B's announcement: A's own notifications came back
    // before it (NOTIFY is delivered in commit order) and were skipped.
    assert_eq!(next(&mut on_a).await, announced);
    assert!(matches!(
        on_b.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_reconnects_tells_its_consumers_to_resync() {
    let test = TestDatabase::postgres().await;
    let a = replica(&test).await;
    let b = replica(&test).await;
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();

    // Both listeners' connections are cut (as by a network failure or a
    // database restart); notifications sent meanwhile would be lost.
    test.db()
        .connection()
        .execute_unprepared(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await
        .unwrap();
    assert_eq!(next(&mut on_a).await, Change::Resync);
    assert_eq!(next(&mut on_b).await, Change::Resync);

    // Listening again, they hear each other as before.
    let announced = Change::Revoked(Revocation::UserDeleted {
        user_id: Uuid::new_v4(),
    });
    a.announce(announced.clone());
    assert_eq!(next(&mut on_b).await, announced);
}

#[tokio::test]
async fn sqlite_has_no_relay() {
    let test = TestDatabase::sqlite().await;
    assert!(matches!(
        test.db().start_change_relay().await,
        Err(lapdev_db::DbError::PostgresOnly(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_signal_reaches_the_others_but_not_the_change_feed() {
    use lapdev_db::ReplicaSignal;
    let test = TestDatabase::postgres().await;
    let a = replica(&test).await;
    let b = replica(&test).await;
    let mut signals_a = a.subscribe_signals();
    let mut signals_b = b.subscribe_signals();
    let mut feed_b = b.subscribe();
    let signal = ReplicaSignal::ClusterClaimed {
        cluster_id: Uuid::new_v4(),
        replica_id: Uuid::new_v4(),
        epoch: 7,
    };
    a.signal_replicas(signal.clone());
    let heard = tokio::time::timeout(std::time::Duration::from_secs(30), signals_b.recv())
        .await
        .expect("B hears A's signal")
        .unwrap();
    assert_eq!(heard, signal);
    // B answers; PostgreSQL delivers notifications in commit order, so A
    // hears B's after its own would have arrived: the first A hears is B's.
    let answer = ReplicaSignal::ManagerHeard {
        cluster_id: Uuid::new_v4(),
        reported: true,
        health: Some(Some("kube api down".into())),
    };
    b.signal_replicas(answer.clone());
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), signals_a.recv())
        .await
        .expect("A hears B's signal")
        .unwrap();
    assert_eq!(first, answer);
    // Signals are not changes: B's change feed saw none.
    assert!(matches!(
        feed_b.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}
