//! A rolling upgrade and its rollback, with every real binary: the previous
//! release's `lapdev-server` (built from git history, see
//! `rolling_upgrade/previous.rs`) and this build's, replicas of one
//! PostgreSQL database behind a TCP proxy standing in for the load
//! balancer, real managers against their own Kubernetes API doubles, and the
//! CLI.
//!
//! What Kubernetes does in a rolling update of the server's Deployment: the
//! new replica starts (migrating the database) while the previous one still
//! serves, both serve side by side, then the previous one gets SIGTERM. A
//! rollback is the same with the roles swapped, so the previous release must
//! also start on the database the new one migrated. Last, this build plays
//! the previous release of a future one whose migration it does not know.

#[path = "rolling_upgrade/previous.rs"]
mod previous;
#[path = "replicas_e2e/proxy.rs"]
#[allow(dead_code)]
mod proxy;
mod real;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapdev_common::status::{CapacityMode, ClusterStatus};
use lapdev_db::{ClusterClaim, Db};
use proxy::{Policy, Proxy};
use real::{Cluster, Env, Proc, create_args, eventually, one_node};
use uuid::Uuid;

fn replica_args() -> Vec<&'static str> {
    let mut args = real::REPLICA_ARGS.to_vec();
    args.extend(["--shutdown-drain-secs", "1"]);
    args
}

/// A port free now, for a replica slot the proxy keeps addressing across
/// restarts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A replica's place: its port and data directory, kept across restarts.
struct Slot {
    port: u16,
    data: PathBuf,
}

impl Slot {
    fn new(data: PathBuf) -> Slot {
        Slot {
            port: free_port(),
            data,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts `bin` in this slot and returns it with the id it registered.
    async fn start(&self, env: &Env, bin: &Path) -> (Proc, String, Uuid) {
        let db = env.database.db();
        let before: Vec<Uuid> = live(db).await;
        let (proc, url) = env.server_of(bin, self.port, &self.data, &replica_args());
        let new: Vec<Uuid> = live(db)
            .await
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "registered once before serving: {new:?}");
        (proc, url, new[0])
    }
}

async fn live(db: &Db) -> Vec<Uuid> {
    db.live_replicas()
        .await
        .unwrap()
        .iter()
        .map(|r| r.info.id)
        .collect()
}

/// Waits until replica `by` claims `cluster` (a tunnel newer than
/// `after_epoch`), and returns the claim.
async fn claimed(db: &Db, cluster: Uuid, by: Uuid, after_epoch: i64) -> ClusterClaim {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(claim) = db.cluster_owner(cluster).await.unwrap()
            && claim.epoch > after_epoch
            && claim.replica_id == by
        {
            return claim;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster {cluster}: replica {by} never claimed it after epoch {after_epoch}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connected(db: &Db, org: Uuid, cluster: Uuid) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while db.get_cluster(org, cluster).await.unwrap().status != ClusterStatus::Connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster {cluster} never connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a workspace through the previous release. That release decides a
/// refusal from its cached view of which clusters are connected, which lags
/// another replica's claim by the change notification's latency (this build
/// reads the database again before refusing: `Conductor::rank`). So a
/// refusal naming exactly that is asked again until the view catches up; a
/// refused create leaves nothing behind (asserted: one workspace of the name).
/// The bound is under the previous release's periodic re-reads (its replica
/// heartbeat and placement cache TTL, 5 s each): the view must catch up
/// through this build's claim signal and change notifications, which is what
/// this step checks across versions.
async fn create_through_previous(env: &Env, url: &str, args: &[&str]) {
    let name = args[2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let out = env.lapdev(url, args);
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no connected, uncordoned cluster")
                && tokio::time::Instant::now() < deadline,
            "lapdev {args:?} failed: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = env.json(url, &["workspace", "list", "-o", "json"]);
    let same = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["name"] == name)
        .count();
    assert_eq!(same, 1, "one workspace named {name}: {list}");
}

/// Waits until workspace `name` is `status` through `url`, with as many
/// pods as `pods` on `cluster`.
async fn workspace_is(
    env: &Env,
    url: &str,
    cluster: &Cluster,
    name: &str,
    status: &str,
    pods: usize,
) {
    eventually(&format!("{name} is {status} with {pods} pod(s)"), || {
        let ws = env.json(url, &["workspace", "get", name, "-o", "json"]);
        let id = ws["id"].as_str().unwrap().to_owned();
        ws["status"] == status && cluster.objects_of(&id).0.len() == pods
    })
    .await;
}

fn pod_uid(cluster: &Cluster, env: &Env, url: &str, name: &str) -> String {
    let ws = env.json(url, &["workspace", "get", name, "-o", "json"]);
    let (pods, _) = cluster.objects_of(ws["id"].as_str().unwrap());
    assert_eq!(pods.len(), 1, "{name}: one pod");
    pods[0].metadata.uid.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_and_this_one_serve_side_by_side_through_an_upgrade_and_a_rollback() {
    let started = std::time::Instant::now();
    let step = |name: &str| eprintln!("[{:>6.1?}] {name}", started.elapsed());
    let previous = tokio::task::spawn_blocking(previous::server).await.unwrap();
    step("previous release built");
    let env = Env::with(CapacityMode::Nodes, one_node("1")).await;
    let db = env.database.db().clone();
    let current = env.server_bin.clone();
    // The first slot's data directory is the environment's: the replica
    // that bootstraps the database writes the admin token there.
    let second = tempfile::tempdir().unwrap();
    let slots = [
        Slot::new(env.data_dir.path().join("data")),
        Slot::new(second.path().join("data")),
    ];

    // The previous release serves the database first (it bootstraps it);
    // then the new one starts beside it and migrates.
    let (mut old, old_url, old_id) = slots[0].start(&env, &previous).await;
    let (mut new, new_url, new_id) = slots[1].start(&env, &current).await;
    step("both releases registered");
    let org = db.list_organizations().await.unwrap()[0].id;
    let proxy = Proxy::start(
        vec![slots[0].addr(), slots[1].addr()],
        Policy::RoundRobin { first: 0 },
    )
    .await;

    // c0's tunnel lands on the previous release, c1's on the new one.
    let mut clusters = Vec::new();
    for (i, holder) in [old_id, new_id].into_iter().enumerate() {
        let mut c = Cluster::register(&env, &proxy.url, &format!("c{i}"), one_node("4")).await;
        c.manager = Some(env.manager_of(&c.kubeconfig, &proxy.url, &c.token, &[]));
        claimed(&db, c.id, holder, 0).await;
        connected(&db, org, c.id).await;
        clusters.push(c);
    }
    let [c0, c1] = &clusters[..] else {
        unreachable!()
    };
    step("c0 on the previous release, c1 on the new one");

    // Each release's call for a cluster the other holds is forwarded to it.
    env.json(&new_url, &create_args("a", &c0.name, "500m"));
    create_through_previous(&env, &old_url, &create_args("b", &c1.name, "500m")).await;
    workspace_is(&env, &old_url, c0, "a", "running", 1).await;
    workspace_is(&env, &new_url, c1, "b", "running", 1).await;
    env.json(&new_url, &["workspace", "stop", "a", "-o", "json"]);
    workspace_is(&env, &old_url, c0, "a", "stopped", 0).await;
    let b_uid = pod_uid(c1, &env, &new_url, "b");
    step("workspaces driven across releases");

    // The upgrade completes: the previous release is stopped and c0's
    // manager redials through the load balancer to the new one.
    let c0_epoch = db.cluster_owner(c0.id).await.unwrap().unwrap().epoch;
    let exit = old.terminate().await;
    assert!(exit.success(), "the previous release exits cleanly: {exit}");
    let taken = claimed(&db, c0.id, new_id, c0_epoch).await;
    connected(&db, org, c0.id).await;
    env.json(&proxy.url, &["workspace", "start", "a", "-o", "json"]);
    workspace_is(&env, &proxy.url, c0, "a", "running", 1).await;
    assert_eq!(pod_uid(c1, &env, &proxy.url, "b"), b_uid, "b untouched");
    step("upgraded");

    // Rollback: the previous release starts again on the database the new
    // one served, and takes over when the new one stops.
    let (mut back, _back_url, back_id) = slots[0].start(&env, &previous).await;
    let c1_epoch = db.cluster_owner(c1.id).await.unwrap().unwrap().epoch;
    let exit = new.terminate().await;
    assert!(exit.success(), "the new release exits cleanly: {exit}");
    claimed(&db, c0.id, back_id, taken.epoch).await;
    claimed(&db, c1.id, back_id, c1_epoch).await;
    connected(&db, org, c0.id).await;
    connected(&db, org, c1.id).await;
    env.json(&proxy.url, &create_args("c", &c1.name, "500m"));
    workspace_is(&env, &proxy.url, c1, "c", "running", 1).await;
    workspace_is(&env, &proxy.url, c0, "a", "running", 1).await;
    assert_eq!(pod_uid(c1, &env, &proxy.url, "b"), b_uid, "b untouched");
    step("rolled back");

    // This build as the previous release of a future one: that release
    // migrated the database (an expand-only migration this build does not
    // know) and was rolled back. This build starts on it unchanged and
    // takes over when the previous release stops.
    for sql in [
        "CREATE TABLE future_release_thing (id BIGINT PRIMARY KEY)",
        "ALTER TABLE kube_workspace ADD COLUMN future_release_note TEXT",
        "INSERT INTO seaql_migrations (version, applied_at) \
         VALUES ('m20991231_000999_a_future_release', 0)",
    ] {
        lapdev_db::test_support::execute_sql(&db, sql)
            .await
            .unwrap();
    }
    let (_again, _again_url, again_id) = slots[1].start(&env, &current).await;
    let c0_epoch = db.cluster_owner(c0.id).await.unwrap().unwrap().epoch;
    let c1_epoch = db.cluster_owner(c1.id).await.unwrap().unwrap().epoch;
    let exit = back.terminate().await;
    assert!(exit.success(), "the previous release exits cleanly: {exit}");
    claimed(&db, c0.id, again_id, c0_epoch).await;
    claimed(&db, c1.id, again_id, c1_epoch).await;
    connected(&db, org, c0.id).await;
    env.json(&proxy.url, &create_args("d", &c0.name, "500m"));
    workspace_is(&env, &proxy.url, c0, "d", "running", 1).await;
    assert_eq!(pod_uid(c1, &env, &proxy.url, "b"), b_uid, "b untouched");
    step("served a database a newer release migrated");
}
