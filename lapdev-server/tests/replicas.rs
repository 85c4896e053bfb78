//! Several replicas on one PostgreSQL database (first start, the replica
//! registry, readiness) and the single-replica rule of SQLite.

mod common;

use std::process::Command;

use lapdev_common::status::ClusterStatus;
use lapdev_db::Change;
use lapdev_db::test_support::{TestDatabase, expire_replica_lease};
use lapdev_hrpc::Transport as _;
use lapdev_server::Server;
use lapdev_server::config::LimitsConfig;
use lapdev_server::replica::Registration;

async fn readyz(addr: std::net::SocketAddr) -> u16 {
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    transport
        .send(
            http::Request::get(format!("http://{addr}/readyz"))
                .body(bytes::Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A replica's configuration: its own data directory, the shared database
/// and the shared secrets every replica of a deployment is given.
fn replica_config(dir: &tempfile::TempDir, url: &str) -> lapdev_server::config::ServerConfig {
    let mut config = common::config(dir.path().to_owned(), Some(url.to_owned()));
    config.encryption_key = Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
    config.jwt_secret = Some("a shared jwt secret of enough length!".into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_on_a_fresh_database_make_one_organisation() {
    let database = TestDatabase::empty_postgres().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let starts = dirs.iter().map(|dir| {
        let config = replica_config(dir, database.url());
        tokio::spawn(Server::start(config))
    });
    let servers: Vec<Server> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|s| s.unwrap().expect("every replica starts"))
        .collect();
    let minted = servers
        .iter()
        .filter(|s| s.first_admin_token.is_some())
        .count();
    assert_eq!(minted, 1, "exactly one replica bootstrapped");
    let db = &servers[0].state.db;
    assert_eq!(db.list_organizations().await.unwrap().len(), 1);

    // Every replica is registered, with its internal listener's address
    // (not the public one), and ready.
    let live = db.live_replicas().await.unwrap();
    let mut addresses: Vec<_> = live.iter().map(|r| r.info.address.clone()).collect();
    addresses.sort();
    let mut expected: Vec<_> = servers
        .iter()
        .map(|s| {
            let internal = s.internal_addr.expect("PostgreSQL: an internal listener");
            assert_ne!(internal, s.local_addr);
            internal.to_string()
        })
        .collect();
    expected.sort();
    assert_eq!(addresses, expected);
    for s in &servers {
        assert_eq!(readyz(s.local_addr).await, 200);
    }

    // A replica that withdraws (the first step of shutdown) fails readiness,
    // and leaves the registry once stopped.
    let mut servers = servers;
    let last = servers.pop().unwrap();
    last.state.replica.withdraw();
    assert_eq!(readyz(last.local_addr).await, 503);
    last.shutdown();
    let db = last.state.db.clone();
    last.wait().await.unwrap();
    assert_eq!(db.live_replicas().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_lease_registers_again_under_a_new_generation() {
    let database = TestDatabase::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        replica_config(&dir, database.url()),
        LimitsConfig::default(),
    )
    .await
    .unwrap();
    let status = &server.state.replica;
    let lease = status.lease().expect("registered before serving");
    assert_eq!(lease.generation, 1);
    let mut watch = status.watch();

    expire_replica_lease(database.db(), lease.id).await.unwrap();
    status.renew_now();
    watch
        .wait_for(|r| matches!(r, Registration::Leased(l) if l.generation == 2))
        .await
        .unwrap();
    database
        .db()
        .replica_lease_held(&status.lease().unwrap())
        .await
        .unwrap();
    assert!(database.db().replica_lease_held(&lease).await.is_err());
    assert_eq!(readyz(server.local_addr).await, 200);
    server.shutdown();
    server.wait().await.unwrap();
    assert!(database.db().live_replicas().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_file_refuses_but_admin_token_works() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path().join("data"), None);
    let first = Server::start(config.clone()).await.unwrap();
    assert_eq!(readyz(first.local_addr).await, 200);

    let refused = Server::start(config.clone()).await.err().expect("refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("another lapdev-server is already serving the SQLite database")
            && message.contains("PostgreSQL"),
        "{message}"
    );
    // The real binary says the same and exits.
    let out = Command::new(env!("CARGO_BIN_EXE_lapdev-server"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving the SQLite database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The operator's commands do not take the serving lock.
    let out = Command::new(env!("CARGO_BIN_EXE_lapdev-server"))
        .arg("admin-token")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("lapdev_pat_"));

    first.shutdown();
    first.wait().await.unwrap();
    // Released with the server.
    let again = Server::start(config).await.unwrap();
    again.shutdown();
    again.wait().await.unwrap();
}

/// A second replica beside `a`: the same database and the same secrets (its
/// data directory holds only them on PostgreSQL).
async fn second_replica(a: &common::TestServer) -> common::TestServer {
    let server = Server::start(common::config(
        a.data_dir.path().join("data"),
        Some(a.database.as_ref().unwrap().url().to_owned()),
    ))
    .await
    .unwrap();
    common::TestServer {
        addr: server.local_addr,
        server,
        admin_token: a.admin_token.clone(),
        data_dir: tempfile::tempdir().unwrap(),
        database: None,
    }
}

/// Waits until `f` holds, for at most 5 s: shorter than every cache's
/// lifetime (10 s for personal access tokens), so only the change arriving
/// from the other replica can make it hold in time.
async fn within_five_seconds<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 5 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pat_revoked_on_one_replica_is_refused_on_another() {
    use lapdev_server::auth::api::PeopleRpcClient;
    let a = common::TestServer::postgres().await;
    let b = second_replica(&a).await;
    let people = |t: &common::TestServer, token: &str| {
        PeopleRpcClient::new(lapdev_hrpc::Client::http(&format!("{}/rpc", t.base())).unwrap())
            .with_header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            )
    };
    let created = people(&a, &a.admin_token)
        .create_token("laptop".into(), None)
        .await
        .unwrap();
    // B has verified and cached it.
    people(&b, &created.token_secret).whoami().await.unwrap();
    people(&a, &a.admin_token)
        .revoke_token(created.token.id)
        .await
        .unwrap();
    // Refused on the revoking replica at once…
    let refused = people(&a, &created.token_secret)
        .whoami()
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, lapdev_hrpc::CallError::Service(e) if e.code == lapdev_hrpc::Code::Unauthenticated),
        "{refused:?}"
    );
    // …and on the other as soon as the notification arrives.
    within_five_seconds("the other replica refuses the revoked token", || {
        let client = people(&b, &created.token_secret);
        async move {
            matches!(
                client.whoami().await,
                Err(lapdev_hrpc::CallError::Service(e)) if e.code == lapdev_hrpc::Code::Unauthenticated
            )
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_token_revoked_on_one_replica_closes_the_tunnel_another_holds() {
    let a = common::TestServer::postgres().await;
    let b = second_replica(&a).await;
    let created = a
        .admin()
        .create_cluster("c1".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = created.cluster.id;
    let token = a
        .admin()
        .create_cluster_token("c1".into(), "second".into(), None)
        .await
        .unwrap();
    let session = common::dial(&b, &token.token_secret, std::sync::Arc::default())
        .await
        .unwrap();
    let handle = session.handle();
    let run = tokio::spawn(session.run());
    let kube_b = b.server.state.kube.clone();
    common::eventually("the tunnel is up on B", || {
        let kube = kube_b.clone();
        async move { kube.is_tunnel_up(cluster_id) }
    })
    .await;
    let token_id = token.token.id;
    a.admin()
        .revoke_cluster_token("c1".into(), token_id)
        .await
        .unwrap();
    within_five_seconds("B closes the tunnel of the revoked token", || {
        let kube = kube_b.clone();
        let handle = handle.clone();
        async move { !kube.is_tunnel_up(cluster_id) && handle.is_closed() }
    })
    .await;
    let _ = run.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_events_of_one_replica_show_a_change_made_on_another() {
    use futures::StreamExt as _;
    let a = common::TestServer::postgres().await;
    let b = second_replica(&a).await;
    let caller = b
        .server
        .state
        .auth
        .authenticate(&b.admin_token)
        .await
        .unwrap();
    let mut events = Box::pin(
        b.server
            .state
            .events
            .stream(lapdev_server::web::Viewer(caller), None),
    );
    a.admin()
        .create_cluster("seen-on-b".into(), None, None, None)
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .expect("B's event stream shows A's change within 5 s")
        .unwrap()
        .unwrap();
    let shown = format!("{event:?}");
    assert!(shown.contains("cluster"), "{shown}");
}

/// Two replicas A and B on one fresh PostgreSQL database whose managers
/// heartbeat every `heartbeat_secs`, and a cluster created on A.
async fn two_replicas_and_a_cluster(
    heartbeat_secs: u64,
) -> (common::TestServer, common::TestServer, uuid::Uuid, String) {
    let database = TestDatabase::postgres().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = common::config(
        data_dir.path().join("data"),
        Some(database.url().to_owned()),
    );
    config.heartbeat_interval_secs = heartbeat_secs;
    let server = Server::start(config.clone()).await.unwrap();
    let a = common::TestServer {
        addr: server.local_addr,
        admin_token: server.first_admin_token.clone().unwrap(),
        server,
        data_dir,
        database: Some(database),
    };
    let server = Server::start(config).await.unwrap();
    let b = common::TestServer {
        addr: server.local_addr,
        server,
        admin_token: a.admin_token.clone(),
        data_dir: tempfile::tempdir().unwrap(),
        database: None,
    };
    let created = a
        .admin()
        .create_cluster("c1".into(), None, None, None)
        .await
        .unwrap();
    (a, b, created.cluster.id, created.token_secret)
}

/// Waits until `t` claims the cluster whose tunnel it just got, then reports
/// the cluster's info and waits until `connected` is stored.
async fn claimed_then_connected(t: &common::TestServer, token: &str, cluster_id: uuid::Uuid) {
    let kube = t.server.state.kube.clone();
    common::eventually("the replica claims the cluster", || {
        let kube = kube.clone();
        async move { kube.owner_claim(cluster_id).is_some() }
    })
    .await;
    t.cluster_client(token)
        .report_cluster_info(common::sample_info())
        .await
        .unwrap();
    common::eventually("the cluster is connected", || async move {
        stored_status(t, cluster_id).await == ClusterStatus::Connected
    })
    .await;
}

async fn stored_status(t: &common::TestServer, cluster_id: uuid::Uuid) -> ClusterStatus {
    let db = &t.server.state.db;
    let org = db.list_organizations().await.unwrap()[0].id;
    db.get_cluster(org, cluster_id).await.unwrap().status
}

/// Counts the cluster's changes on `watcher`'s feed (its own and, through
/// the relay, the other replica's) from a barrier on: a marker cluster
/// created on `other` and seen on `watcher`'s feed, so every change `other`
/// made before has arrived (one replica's notifications arrive in order).
async fn count_cluster_changes(
    watcher: &common::TestServer,
    other: &common::TestServer,
    cluster_id: uuid::Uuid,
    marker: &str,
) -> impl FnMut() -> usize + use<> {
    let mut feed = watcher.server.state.db.subscribe();
    let marker_id = other
        .admin()
        .create_cluster(marker.into(), None, None, None)
        .await
        .unwrap()
        .cluster
        .id;
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Ok(Change::ClusterChanged { cluster_id: c, .. }) = feed.recv().await
                && c == marker_id
            {
                return;
            }
        }
    })
    .await
    .expect("the marker reaches the other replica");
    let mut seen = 0;
    move || {
        while let Ok(change) = feed.try_recv() {
            if matches!(change, Change::ClusterChanged { cluster_id: c, .. } if c == cluster_id) {
                seen += 1;
            }
        }
        seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_tunnel_wins_across_replicas_and_the_older_replica_closes_its_own() {
    let (a, b, cluster_id, token) = two_replicas_and_a_cluster(10).await;
    let replica_a = a.server.state.replica.lease().unwrap().id;
    let replica_b = b.server.state.replica.lease().unwrap().id;

    // The first tunnel, on A: A owns the cluster, in the database too.
    let first = common::dial(&a, &token, std::sync::Arc::default())
        .await
        .unwrap();
    let first_handle = first.handle();
    let first_run = tokio::spawn(first.run());
    claimed_then_connected(&a, &token, cluster_id).await;
    let kube_a = a.server.state.kube.clone();
    let db = a.server.state.db.clone();
    let owner = db.cluster_owner(cluster_id).await.unwrap().unwrap();
    assert_eq!((owner.replica_id, owner.epoch), (replica_a, 1));
    assert!(b.server.state.kube.owner_claim(cluster_id).is_none());

    // A newer tunnel on B: B owns it, and A is told and closes the older one.
    let second = common::dial(&b, &token, std::sync::Arc::default())
        .await
        .unwrap();
    let second_handle = second.handle();
    let second_run = tokio::spawn(second.run());
    let kube_b = b.server.state.kube.clone();
    common::eventually("A closes the older tunnel", || {
        let kube = kube_a.clone();
        let handle = first_handle.clone();
        async move { !kube.is_tunnel_up(cluster_id) && handle.is_closed() }
    })
    .await;
    let owner = db.cluster_owner(cluster_id).await.unwrap().unwrap();
    assert_eq!((owner.replica_id, owner.epoch), (replica_b, 2));
    assert_eq!(kube_b.owner_claim(cluster_id), Some(owner));
    assert!(kube_a.owner_claim(cluster_id).is_none());
    assert!(kube_b.is_tunnel_up(cluster_id) && !second_handle.is_closed());
    let closed = first_run.await.unwrap();
    assert!(
        format!("{closed:?}").contains(lapdev_kube::server::SUPERSEDED),
        "{closed:?}"
    );
    // A's tunnel closing did not make the cluster disconnected: B owns it.
    common::eventually("the cluster is connected under B", || {
        let a = &a;
        async move { stored_status(a, cluster_id).await == ClusterStatus::Connected }
    })
    .await;
    second_handle.close("done");
    let _ = second_run.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_on_the_replica_without_the_tunnel_keep_the_cluster_connected() {
    let (a, b, cluster_id, token) = two_replicas_and_a_cluster(1).await;
    let session = common::dial(&a, &token, std::sync::Arc::default())
        .await
        .unwrap();
    let handle = session.handle();
    let run = tokio::spawn(session.run());
    // Everything but the tunnel goes to B.
    let to_b = b.cluster_client(&token);
    common::eventually("A claims the cluster", || {
        let kube = a.server.state.kube.clone();
        async move { kube.owner_claim(cluster_id).is_some() }
    })
    .await;
    to_b.report_cluster_info(common::sample_info())
        .await
        .unwrap();
    to_b.heartbeat(lapdev_kube_rpc::ManagerHealth::Ok)
        .await
        .unwrap();
    common::eventually("the cluster is connected", || {
        let a = &a;
        async move { stored_status(a, cluster_id).await == ClusterStatus::Connected }
    })
    .await;

    // Heartbeats only to B, every interval, for more than three intervals
    // (A hears none): no status write anywhere, the cluster stays connected.
    let mut changes_a = count_cluster_changes(&a, &b, cluster_id, "marker-b").await;
    let mut changes_b = count_cluster_changes(&b, &a, cluster_id, "marker-a").await;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(6) {
        to_b.heartbeat(lapdev_kube_rpc::ManagerHealth::Ok)
            .await
            .unwrap();
        // The manager's pace, not a wait for an outcome.
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        assert_eq!(
            stored_status(&a, cluster_id).await,
            ClusterStatus::Connected
        );
    }
    assert_eq!(changes_a(), 0, "A wrote the cluster's status");
    assert_eq!(changes_b(), 0, "B wrote the cluster's status");

    // Heartbeats stop everywhere: the owner declares it disconnected.
    common::eventually("the cluster is disconnected", || {
        let a = &a;
        async move { stored_status(a, cluster_id).await == ClusterStatus::Disconnected }
    })
    .await;
    handle.close("done");
    let _ = run.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_lease_closes_the_tunnels_it_claimed_under_it_at_once() {
    let (a, _b, cluster_id, token) = two_replicas_and_a_cluster(10).await;
    let session = common::dial(&a, &token, std::sync::Arc::default())
        .await
        .unwrap();
    let handle = session.handle();
    let run = tokio::spawn(session.run());
    claimed_then_connected(&a, &token, cluster_id).await;
    let kube_a = a.server.state.kube.clone();
    let status = &a.server.state.replica;
    let lease = status.lease().unwrap();
    let mut watch = status.watch();

    // A's lease runs out (as after a long pause): its claim is void, so its
    // tunnel closes when the keeper finds the lease lost, without waiting for
    // a status write to be refused (none is due: nothing changed).
    expire_replica_lease(&a.server.state.db, lease.id)
        .await
        .unwrap();
    status.renew_now();
    watch
        .wait_for(|r| matches!(r, Registration::Leased(l) if l.generation == lease.generation + 1))
        .await
        .unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), run)
        .await
        .expect("the tunnel closes when the lease is found lost")
        .unwrap();
    assert!(
        format!("{closed:?}").contains(lapdev_kube::server::LEASE_LOST),
        "{closed:?}"
    );
    assert!(handle.is_closed());
    assert!(kube_a.owner_claim(cluster_id).is_none());

    // The manager dials again and A claims it under its new lease.
    let again = common::dial(&a, &token, std::sync::Arc::default())
        .await
        .unwrap();
    let again_handle = again.handle();
    let again_run = tokio::spawn(again.run());
    common::eventually("A claims the cluster under its new generation", || {
        let kube = kube_a.clone();
        async move {
            kube.owner_claim(cluster_id)
                .is_some_and(|c| c.generation == lease.generation + 1)
        }
    })
    .await;
    again_handle.close("done");
    let _ = again_run.await;
}
