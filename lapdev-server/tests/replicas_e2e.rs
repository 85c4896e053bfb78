//! Several replicas end to end, with every real binary: three
//! `lapdev-server` processes on one PostgreSQL database (same encryption key
//! and JWT secret, each with its own data directory and port) behind a small
//! TCP proxy standing in for the load balancer, real managers against their
//! own Kubernetes API doubles, and the `lapdev` CLI. Managers and the CLI
//! talk to the proxy; a call meant for one replica goes to it directly.
//!
//! One setup, run as a sequence of steps (each a function below): starting
//! three server processes and three managers is most of the cost.

#[path = "replicas_e2e/proxy.rs"]
mod proxy;
mod real;
#[path = "replicas_e2e/sse.rs"]
mod sse;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use lapdev_common::status::{CapacityMode, ClusterStatus};
use lapdev_db::Db;
use proxy::{Policy, Proxy};
use real::{Cluster, Env, Proc, create_args, eventually, one_node};
use serde_json::Value;
use uuid::Uuid;

/// The replicas' public URL (in [`real::REPLICA_ARGS`]).
const PUBLIC_URL: &str = "https://lapdev.example.com";
/// Longer than every bounded wait below: a revoked cluster token is
/// noticed within them only through the change feed, never because a
/// replica's cache expired.
const TOKEN_CACHE_TTL_SECS: &str = "60";

struct Replica {
    proc: Proc,
    url: String,
    id: Uuid,
    _dir: Option<tempfile::TempDir>,
}

struct Deployment {
    env: Env,
    replicas: Vec<Replica>,
    /// Round robin: managers' tunnels and the CLI.
    proxy: Proxy,
    /// Tunnels to replica 0, everything else to replica 1.
    split: Proxy,
    clusters: Vec<Cluster>,
    org: Uuid,
}

impl Deployment {
    fn db(&self) -> &Db {
        self.env.database.db()
    }

    fn json(&self, url: &str, args: &[&str]) -> Value {
        self.env.json(url, args)
    }

    async fn status(&self, cluster: Uuid) -> ClusterStatus {
        self.db()
            .get_cluster(self.org, cluster)
            .await
            .unwrap()
            .status
    }

    async fn owner(&self, cluster: Uuid) -> Option<lapdev_db::ClusterClaim> {
        self.db().cluster_owner(cluster).await.unwrap()
    }

    async fn connected(&self, cluster: Uuid) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while self.status(cluster).await != ClusterStatus::Connected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster {cluster} never connected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the cluster's newest tunnel is claimed by a replica
    /// (after `after_epoch`), and returns the claim.
    async fn claimed(&self, cluster: Uuid, after_epoch: i64) -> lapdev_db::ClusterClaim {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(claim) = self.owner(cluster).await
                && claim.epoch > after_epoch
            {
                return claim;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster {cluster}: no tunnel claimed it after epoch {after_epoch}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn replica_index(&self, id: Uuid) -> usize {
        self.replicas
            .iter()
            .position(|r| r.id == id)
            .expect("a known replica")
    }

    fn start_manager(&self, cluster: &Cluster, via: &Proxy, token: &str) -> Proc {
        self.env
            .manager_of(&cluster.kubeconfig, &via.url, token, &[])
    }
}

fn replica_args() -> Vec<&'static str> {
    let mut args = real::REPLICA_ARGS.to_vec();
    args.extend(["--token-cache-ttl-secs", TOKEN_CACHE_TTL_SECS]);
    args
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Three replicas (the first one bootstraps the fresh database), the two
/// proxies, and three clusters whose managers' tunnels land on replicas 0
/// (through `split`), 1 and 2 (through `proxy`, one after the other).
async fn deploy() -> Deployment {
    let env = Env::with(CapacityMode::Nodes, one_node("1")).await;
    let db = env.database.db().clone();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let dir = (i > 0).then(|| tempfile::tempdir().unwrap());
        let data = match &dir {
            Some(d) => d.path().join("data"),
            None => env.data_dir.path().join("data"),
        };
        let known: BTreeSet<Uuid> = db
            .live_replicas()
            .await
            .unwrap()
            .iter()
            .map(|r| r.info.id)
            .collect();
        let (proc, url) = env.server_in(0, &data, &replica_args());
        // Registered before it serves: the one new id is this replica's.
        let new: Vec<Uuid> = db
            .live_replicas()
            .await
            .unwrap()
            .iter()
            .map(|r| r.info.id)
            .filter(|id| !known.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "replica {i} registered once: {new:?}");
        replicas.push(Replica {
            proc,
            url,
            id: new[0],
            _dir: dir,
        });
    }
    assert_eq!(db.live_replicas().await.unwrap().len(), 3);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| addr_of(&r.url)).collect();
    let proxy = Proxy::start(addrs.clone(), Policy::RoundRobin { first: 1 }).await;
    let split = Proxy::start(addrs, Policy::Split { tunnel: 0, rest: 1 }).await;
    let org = db.list_organizations().await.unwrap()[0].id;

    let mut clusters = Vec::new();
    for i in 0..3 {
        clusters.push(Cluster::register(&env, &proxy.url, &format!("c{i}"), one_node("4")).await);
    }
    let mut d = Deployment {
        env,
        replicas,
        proxy,
        split,
        clusters,
        org,
    };
    for i in 0..3 {
        let via = if i == 0 { &d.split } else { &d.proxy };
        let manager = d.start_manager(&d.clusters[i], via, &d.clusters[i].token);
        d.clusters[i].manager = Some(manager);
        // One at a time, so the proxy's tunnel turns are theirs in order.
        d.claimed(d.clusters[i].id, 0).await;
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_a_load_balancer_serve_every_cluster_and_survive_a_kill() {
    let started = std::time::Instant::now();
    let step = |name: &str| eprintln!("[{:>6.1?}] {name}", started.elapsed());
    let mut d = deploy().await;
    step("deployed");
    clusters_connect_to_different_replicas(&d).await;
    step("clusters connect to different replicas");
    a_workspace_created_through_each_replica_reaches_its_cluster(&d).await;
    step("a workspace through each replica");
    heartbeats_on_one_replica_and_the_tunnel_on_another_keep_the_cluster_connected(&d).await;
    step("heartbeats and tunnel apart");
    an_event_stream_on_one_replica_sees_a_change_made_on_another(&d).await;
    step("event stream");
    a_pat_revoked_on_one_replica_is_refused_on_another(&d).await;
    step("PAT revocation");
    a_cluster_token_revoked_on_one_replica_closes_the_tunnel_another_holds(&mut d).await;
    step("cluster token revocation");
    concurrent_creates_spread_over_replicas_never_over_commit(&d).await;
    step("concurrent creates");
    a_killed_owner_loses_nothing(&mut d).await;
    step("kill -9");
}

async fn clusters_connect_to_different_replicas(d: &Deployment) {
    let mut owners = Vec::new();
    for c in &d.clusters {
        d.connected(c.id).await;
        // Its capacity reported too: placement counts it from then on.
        eventually(&format!("{} reported its node", c.name), || {
            d.json(&d.proxy.url, &["cluster", "get", &c.name, "-o", "json"])
                ["cpu_allocatable_millis"]
                == 4000
        })
        .await;
        let owner = d.owner(c.id).await.expect("claimed");
        owners.push(d.replica_index(owner.replica_id));
    }
    assert_eq!(
        owners,
        vec![0, 1, 2],
        "each cluster's tunnel on its replica"
    );
    // The proxy sent the tunnels where the owners say they are.
    let mut tunnels: Vec<usize> = d.proxy.open_tunnels().iter().map(|c| c.replica).collect();
    tunnels.sort();
    assert_eq!(tunnels, vec![1, 2]);
    assert_eq!(
        d.split
            .open_tunnels()
            .iter()
            .map(|c| c.replica)
            .collect::<Vec<_>>(),
        vec![0]
    );
}

async fn a_workspace_created_through_each_replica_reaches_its_cluster(d: &Deployment) {
    let mut ids = Vec::new();
    for (i, c) in d.clusters.iter().enumerate() {
        // Through a replica that does not hold the cluster's tunnel.
        let through = &d.replicas[(i + 1) % 3];
        let name = format!("w{i}");
        let ws = d.json(&through.url, &create_args(&name, &c.name, "500m"));
        assert_eq!(ws["cluster"], c.name.as_str());
        ids.push(ws["id"].as_str().unwrap().to_owned());
    }
    for (i, c) in d.clusters.iter().enumerate() {
        eventually(&format!("w{i} runs on {}", c.name), || {
            let (pods, pvcs) = c.objects_of(&ids[i]);
            pods.len() == 1
                && pvcs.len() == 1
                && d.json(
                    &d.proxy.url,
                    &["workspace", "get", &format!("w{i}"), "-o", "json"],
                )["status"]
                    == "running"
        })
        .await;
        assert_eq!(c.pods().len(), 1, "{}: one pod", c.name);
        assert_eq!(c.pvcs().len(), 1, "{}: one PVC", c.name);
    }
}

async fn heartbeats_on_one_replica_and_the_tunnel_on_another_keep_the_cluster_connected(
    d: &Deployment,
) {
    let c0 = &d.clusters[0];
    let owner = d.owner(c0.id).await.unwrap();
    assert_eq!(
        d.replica_index(owner.replica_id),
        0,
        "the tunnel on replica 0"
    );
    // Every other connection of c0's manager went to replica 1.
    let conns = d.split.conns();
    assert!(conns.iter().any(|c| !c.tunnel), "the manager called");
    assert!(
        conns.iter().all(|c| if c.tunnel {
            c.replica == 0
        } else {
            c.replica == 1
        }),
        "{conns:?}"
    );
    // The owner hears nothing from the manager but the tunnel; were replica
    // 1's heartbeats lost, three missed intervals (6 s) would make it
    // `disconnected`. Watch five heartbeats land (more than three
    // intervals) and the status at every step.
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < 5 {
        assert_eq!(d.status(c0.id).await, ClusterStatus::Connected);
        if let Some(at) = d
            .db()
            .clusters_last_seen(&[c0.id])
            .await
            .unwrap()
            .get(&c0.id)
        {
            seen.insert(*at);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "heartbeats heard: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(d.status(c0.id).await, ClusterStatus::Connected);
    let owner_now = d.owner(c0.id).await.unwrap();
    assert_eq!(owner_now, owner, "no tunnel was replaced meanwhile");
}

async fn an_event_stream_on_one_replica_sees_a_change_made_on_another(d: &Deployment) {
    let watcher = &d.replicas[2].url;
    let cookie = sse::sign_in(watcher, &d.env.admin_token(), "ada").await;
    let mut events = sse::Events::open(watcher, &cookie).await;
    let created = d.json(
        &d.replicas[0].url,
        &["cluster", "create", "seen-on-2", "-o", "json"],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (name, data) = events.next().await;
            if name == "change" && data.contains(&id) {
                return data;
            }
        }
    })
    .await
    .expect("replica 2's stream shows replica 0's change");
    assert!(found.contains("cluster"), "{found}");
}

async fn a_pat_revoked_on_one_replica_is_refused_on_another(d: &Deployment) {
    let (r0, r1) = (&d.replicas[0].url, &d.replicas[1].url);
    let created = d.json(r0, &["token", "create", "laptop", "-o", "json"]);
    let secret = created["token"].as_str().unwrap().to_owned();
    let token_id = created["id"].as_str().unwrap().to_owned();
    let whoami = |url: &str| d.env.lapdev_as(url, &secret, &["whoami", "-o", "json"]);
    // Replica 1 verified (and cached) it.
    let out = whoami(r1);
    assert!(out.status.success(), "{}", stderr(&out));
    d.json(r0, &["token", "revoke", &token_id, "-o", "json"]);
    // Refused on the revoking replica at once…
    let out = whoami(r0);
    assert!(
        !out.status.success(),
        "replica 0 still takes the revoked PAT"
    );
    let refusal = stderr(&out);
    // …and on the other within 5 s: shorter than the 10 s a replica trusts a
    // verified personal access token, so only the change feed can do it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = whoami(r1);
        if !out.status.success() {
            assert_eq!(stderr(&out), refusal, "the same refusal");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica 1 still takes the PAT revoked on replica 0 after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_cluster_token_revoked_on_one_replica_closes_the_tunnel_another_holds(
    d: &mut Deployment,
) {
    let c1 = 1;
    let name = d.clusters[c1].name.clone();
    let second = d.json(
        &d.proxy.url,
        &[
            "cluster", "token", "create", &name, "--name", "second", "-o", "json",
        ],
    );
    let secret = second["token"].as_str().unwrap().to_owned();
    let token_id = second["id"].as_str().unwrap().to_owned();
    // c1's manager, now with the second token.
    let before = d.owner(d.clusters[c1].id).await.unwrap();
    let seen: BTreeSet<usize> = d.proxy.conns().iter().map(|c| c.id).collect();
    d.clusters[c1].manager.take().unwrap().kill();
    let manager = d.start_manager(&d.clusters[c1], &d.proxy, &secret);
    let claim = d.claimed(d.clusters[c1].id, before.epoch).await;
    let holder = d.replica_index(claim.replica_id);
    let tunnel = d
        .proxy
        .open_tunnels()
        .into_iter()
        .find(|c| !seen.contains(&c.id))
        .expect("the new manager's tunnel");
    assert_eq!(tunnel.replica, holder);
    let revoker = (holder + 1) % 3;
    d.json(
        &d.replicas[revoker].url,
        &["cluster", "token", "revoke", &name, &token_id, "-o", "json"],
    );
    // The holder closes the tunnel within the bound, well before its token
    // cache (60 s) would have it ask the database again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while d.proxy.is_open(tunnel.id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica {holder} still holds the tunnel of a token revoked on replica {revoker}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The manager with the first token takes the cluster back.
    drop(manager);
    let manager = d.start_manager(&d.clusters[c1], &d.proxy, &d.clusters[c1].token);
    d.clusters[c1].manager = Some(manager);
    d.claimed(d.clusters[c1].id, claim.epoch).await;
    d.connected(d.clusters[c1].id).await;
}

async fn concurrent_creates_spread_over_replicas_never_over_commit(d: &Deployment) {
    let c1 = &d.clusters[1];
    let cluster = d.json(&d.proxy.url, &["cluster", "get", &c1.name, "-o", "json"]);
    let allocatable = cluster["cpu_allocatable_millis"].as_i64().unwrap();
    assert_eq!(allocatable, 4000);
    // w1 (500m) is there already: three more 1-CPU workspaces fit.
    let first_conn = d.proxy.conns().len();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let name = format!("burst-{i}");
            std::process::Command::new(env!("CARGO_BIN_EXE_lapdev"))
                .args(create_args(&name, &c1.name, "1"))
                .env("LAPDEV_SERVER", &d.proxy.url)
                .env("LAPDEV_TOKEN", d.env.admin_token())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let placed: Vec<Value> = outs
        .iter()
        .filter(|o| o.status.success())
        .map(|o| serde_json::from_slice(&o.stdout).unwrap())
        .collect();
    // Refused as full, never for another reason: a create whose row another
    // replica's reconciler touched mid-placement looks again rather than
    // answering `aborted`.
    let mut full = 0;
    for o in outs.iter().filter(|o| !o.status.success()) {
        let e = stderr(o);
        assert!(e.contains("can fit"), "refused for capacity only: {e}");
        full += 1;
    }
    eprintln!(
        "20 concurrent creates: {} placed, {full} refused as full",
        placed.len()
    );
    // The creates went to every replica.
    let replicas: BTreeSet<usize> = d.proxy.conns()[first_conn..]
        .iter()
        .filter(|c| !c.tunnel)
        .map(|c| c.replica)
        .collect();
    assert_eq!(replicas.len(), 3, "the creates spread over the replicas");
    assert!(
        (1..=3).contains(&placed.len()),
        "{} placed where three fit",
        placed.len()
    );

    // Once everything placed on c1 runs (those the creates placed, and any
    // the reconciler placed since), the cluster holds no more than it has.
    let on_c1 = || -> Vec<Value> {
        let all = d.json(&d.proxy.url, &["workspace", "list", "-o", "json"]);
        all.as_array()
            .unwrap()
            .iter()
            .filter(|w| w["cluster"] == c1.name.as_str())
            .cloned()
            .collect()
    };
    eventually("every workspace placed on c1 runs", || {
        let on = on_c1();
        placed.iter().all(|p| on.iter().any(|w| w["id"] == p["id"]))
            && on.iter().all(|w| w["status"] == "running")
    })
    .await;
    let on = on_c1();
    let cpu: i64 = on.iter().map(|w| w["cpu_millis"].as_i64().unwrap()).sum();
    let memory: i64 = on.iter().map(|w| w["memory_bytes"].as_i64().unwrap()).sum();
    assert!(cpu <= allocatable, "{cpu}m placed on {allocatable}m");
    assert!(memory <= cluster["memory_allocatable_bytes"].as_i64().unwrap());
    assert!(on.len() <= 4, "w1 and at most three more: {}", on.len());
    // The double's scheduler agrees: every pod is bound to the node.
    let pods = c1.pods();
    assert!(pods.len() <= 4);
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()),
        "a pod the node could not take"
    );
}

async fn a_killed_owner_loses_nothing(d: &mut Deployment) {
    let c2 = &d.clusters[2];
    let owner = d.owner(c2.id).await.unwrap();
    let victim = d.replica_index(owner.replica_id);
    assert_eq!(victim, 2);
    // The Kubernetes API answers slowly, so the create is in flight when the
    // owner dies.
    c2.double.handle().set_latency(Duration::from_millis(300));
    let ws = d.json(
        &d.replicas[0].url,
        &create_args("inflight", &c2.name, "500m"),
    );
    let id = ws["id"].as_str().unwrap().to_owned();
    d.replicas[victim].proc.kill();
    c2.double.handle().set_latency(Duration::ZERO);

    // The first time the pod and the PVC both exist, their uids.
    let mut first = None;
    eventually("the in-flight create made its pod and PVC", || {
        let (pods, pvcs) = c2.objects_of(&id);
        if let (Some(pod), Some(pvc)) = (pods.first(), pvcs.first()) {
            first = Some((pod.metadata.uid.clone(), pvc.metadata.uid.clone()));
        }
        first.is_some()
    })
    .await;
    // The manager redialled through the proxy: another replica owns the
    // cluster, and it is connected.
    let claim = d.claimed(c2.id, owner.epoch).await;
    assert_ne!(d.replica_index(claim.replica_id), victim);
    d.connected(c2.id).await;
    eventually("the in-flight workspace runs", || {
        d.json(
            &d.proxy.url,
            &["workspace", "get", "inflight", "-o", "json"],
        )["status"]
            == "running"
    })
    .await;
    let (pods, pvcs) = c2.objects_of(&id);
    assert_eq!((pods.len(), pvcs.len()), (1, 1), "one pod and one PVC");
    assert_eq!(
        Some((pods[0].metadata.uid.clone(), pvcs[0].metadata.uid.clone())),
        first,
        "neither was made again"
    );
}
