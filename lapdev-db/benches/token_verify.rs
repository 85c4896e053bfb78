//! Benchmark: cluster-token verification and cluster-info updates per second on
//! PostgreSQL with 10,000 clusters and 20,000 tokens.
//!
//! Run with `cargo bench -p lapdev-db --bench token_verify` (needs the PostgreSQL of
//! `LAPDEV_TEST_DATABASE_URL`; a throwaway database is created and dropped). Tunables:
//! `LAPDEV_BENCH_CONCURRENCY` (default 16 tasks), `LAPDEV_BENCH_VERIFICATIONS`
//! (default 100,000), `LAPDEV_BENCH_UPDATES` (default 20,000).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapdev_common::status::CloudProvider;
use lapdev_db::test_support::TestDatabase;
use lapdev_db::{ClusterInfoUpdate, ConnectConfig, Db, NewCluster, NewClusterToken};
use uuid::Uuid;

const CLUSTERS: usize = 10_000;
const TOKENS_PER_CLUSTER: usize = 2;
const ORGANIZATIONS: usize = 10;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic PRNG for picking which token or cluster to use next.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

struct Fixture {
    /// (organisation, cluster) per cluster.
    clusters: Vec<(Uuid, Uuid)>,
    /// Plaintext tokens.
    tokens: Vec<String>,
}

async fn seed(db: &Db, concurrency: usize) -> Fixture {
    let mut orgs = Vec::new();
    for i in 0..ORGANIZATIONS {
        orgs.push(
            db.create_organization(&format!("org-{i}"))
                .await
                .unwrap()
                .id,
        );
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (db, orgs, next) = (db.clone(), orgs.clone(), next.clone());
        tasks.spawn(async move {
            let mut clusters = Vec::new();
            let mut tokens = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CLUSTERS {
                    break;
                }
                let org = orgs[i % orgs.len()];
                let cluster = db
                    .create_cluster(org, NewCluster::named(format!("cluster-{i}")))
                    .await
                    .unwrap();
                for t in 0..TOKENS_PER_CLUSTER {
                    let token = db
                        .create_cluster_token(
                            org,
                            cluster.id,
                            NewClusterToken {
                                name: format!("token-{t}"),
                                created_by: None,
                                expires_at: None,
                            },
                        )
                        .await
                        .unwrap();
                    tokens.push(token.secret.expose().to_owned());
                }
                clusters.push((org, cluster.id));
            }
            (clusters, tokens)
        });
    }
    let mut fixture = Fixture {
        clusters: Vec::new(),
        tokens: Vec::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (clusters, tokens) = done.unwrap();
        fixture.clusters.extend(clusters);
        fixture.tokens.extend(tokens);
    }
    fixture
}

/// Runs `total` operations over `concurrency` tasks; returns the elapsed time.
async fn run<F, Fut>(concurrency: usize, total: usize, op: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                op(i).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    started.elapsed()
}

fn report(what: &str, total: usize, elapsed: Duration) {
    println!(
        "{what:<40} {total:>8} ops in {:>7.2} s = {:>9.0} ops/s ({:.1} µs/op)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / total as f64
    );
}

#[tokio::main]
async fn main() {
    let concurrency = env_or("LAPDEV_BENCH_CONCURRENCY", 16);
    let verifications = env_or("LAPDEV_BENCH_VERIFICATIONS", 100_000);
    let updates = env_or("LAPDEV_BENCH_UPDATES", 20_000);

    let test = TestDatabase::empty_postgres().await;
    let mut config = ConnectConfig::new(test.url());
    config.max_connections = concurrency as u32;
    let db = Db::connect_with(&config).await.unwrap();

    let started = Instant::now();
    let fixture = Arc::new(seed(&db, concurrency).await);
    println!(
        "seeded {} clusters and {} tokens in {:.1} s (concurrency {concurrency})",
        fixture.clusters.len(),
        fixture.tokens.len(),
        started.elapsed().as_secs_f64()
    );

    // Warm up the pool and the caches.
    let warm = fixture.clone();
    let db2 = db.clone();
    run(concurrency, 2_000, move |i| {
        let (db, warm) = (db2.clone(), warm.clone());
        async move {
            db.verify_cluster_token(&warm.tokens[i % warm.tokens.len()])
                .await
                .unwrap();
        }
    })
    .await;
    db.flush_token_usage().await.unwrap();

    for tasks in [1, concurrency] {
        let (db2, fx) = (db.clone(), fixture.clone());
        let total = if tasks == 1 {
            verifications / 10
        } else {
            verifications
        };
        let elapsed = run(tasks, total, move |i| {
            let (db, fx) = (db2.clone(), fx.clone());
            async move {
                let pick = XorShift(i as u64 * 2_654_435_761 + 1).next(fx.tokens.len());
                let verified = db.verify_cluster_token(&fx.tokens[pick]).await.unwrap();
                assert_eq!(
                    verified.cluster_id,
                    fx.clusters[pick / TOKENS_PER_CLUSTER].1
                );
            }
        })
        .await;
        report(
            &format!("verify_cluster_token, {tasks} task(s)"),
            total,
            elapsed,
        );
    }

    let flush_started = Instant::now();
    let flushed = db.flush_token_usage().await.unwrap();
    report(
        "flush_token_usage (tokens written)",
        flushed,
        flush_started.elapsed(),
    );

    for tasks in [1, concurrency] {
        let (db2, fx) = (db.clone(), fixture.clone());
        let total = if tasks == 1 { updates / 10 } else { updates };
        let elapsed = run(tasks, total, move |i| {
            let (db, fx) = (db2.clone(), fx.clone());
            async move {
                let (org, cluster) =
                    fx.clusters[XorShift(i as u64 * 40_503 + 7).next(fx.clusters.len())];
                let info = ClusterInfoUpdate {
                    kubernetes_version: "v1.33.2".into(),
                    cloud_provider: CloudProvider::Gcp,
                    region: Some("europe-west1".into()),
                    node_count: 3 + (i % 5) as i32,
                    cpu_capacity_millis: 12_000,
                    cpu_allocatable_millis: 11_000 - (i % 100) as i64,
                    memory_capacity_bytes: 48 << 30,
                    memory_allocatable_bytes: 44 << 30,
                    manager_version: "0.1.0".into(),
                    manager_namespace: "lapdev".into(),
                    manifest_revision: None,
                    nodes: None,
                    detected_autoscaling: None,
                };
                db.update_cluster_info(org, cluster, &info).await.unwrap();
            }
        })
        .await;
        report(
            &format!("update_cluster_info, {tasks} task(s)"),
            total,
            elapsed,
        );
    }

    db.close().await.unwrap();
    drop(test);
}
