//! Several replicas on one PostgreSQL database (first start, the replica
//! registry, readiness) and the single-replica rule of SQLite.

mod common;

use std::process::Command;

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

    // Every replica is registered, with its address, and ready.
    let live = db.live_replicas().await.unwrap();
    let mut addresses: Vec<_> = live.iter().map(|r| r.info.address.clone()).collect();
    addresses.sort();
    let mut expected: Vec<_> = servers.iter().map(|s| s.local_addr.to_string()).collect();
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
