//! The idle and lifetime sweep at scale on PostgreSQL: 100,000 running
//! workspaces with armed timers in one organisation.
//!
//! Idle deadlines are spread evenly over the next 24 hours and lifetime
//! deadlines over 1 to 25 hours (in the opposite order), so about 17 idle and,
//! after the first hour, 17 lifetime deadlines fall due every 15 s. The clock moves 15 s (the server's sweep interval) before each sweep,
//! as the server's loop would, for 1 simulated hour; then a burst of 1,000
//! deadlines due at once, then sweeps right after sweeps (little or nothing
//! due: the clock is the real one plus the moves, so it keeps running).
//!
//! Printed: wall time per sweep (all of it database round trips: the due
//! query, then per batch of up to 500 one transaction with a conditional
//! timer update per stop, one locking read and one desired-state update, and
//! one read-back after the commit), and the delay from each deadline to its
//! stop on the sweep's clock (the interval plus the sweep's own time),
//! p50/p99/max.
//!
//! Run: `cargo bench -p lapdev-conductor --bench timer_sweep --profile dev`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapdev_common::status::{ClusterStatus, DesiredState};
use lapdev_conductor::idle::{NoSessions, TimerSweeper};
use lapdev_conductor::{Conductor, ConductorConfig, ManagerConnector};
use lapdev_db::test_support::{TestDatabase, seed_timed_workspaces};
use lapdev_db::{NewCluster, NewUser};
use lapdev_kube_rpc::KubeManagerRpcClient;
use uuid::Uuid;

const WORKSPACES: usize = 100_000;
const BURST: usize = 1_000;
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);
const SIMULATED: Duration = Duration::from_secs(3600);

/// No manager is ever reached (the sweep only writes the database).
struct Nobody;

impl ManagerConnector for Nobody {
    fn manager(&self, _: Uuid) -> Option<KubeManagerRpcClient> {
        None
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn line(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what}: n={} p50={:.1?} p99={:.1?} max={:.1?}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or_default()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let test = TestDatabase::postgres().await;
    let db = test.db().clone();
    let org = db.create_organization("bench").await.unwrap().id;
    let owner = db
        .create_user(
            org,
            NewUser {
                name: "dev".into(),
                email: None,
            },
        )
        .await
        .unwrap()
        .id;
    let cluster = db
        .create_cluster(org, NewCluster::named("big"))
        .await
        .unwrap();
    db.set_cluster_status(org, cluster.id, ClusterStatus::Connected)
        .await
        .unwrap();
    let conductor = Conductor::new(db.clone(), Arc::new(Nobody), ConductorConfig::default());
    let clock = conductor.clock().clone();
    let start = clock.now();
    let deadlines: Vec<_> = (0..WORKSPACES)
        .map(|i| {
            let frac = i as f64 / WORKSPACES as f64;
            let idle = start + chrono::Duration::milliseconds((frac * 86_400_000.0) as i64);
            let lifetime = start
                + chrono::Duration::hours(1)
                + chrono::Duration::milliseconds(((1.0 - frac) * 86_400_000.0) as i64);
            (Some(idle), Some(lifetime))
        })
        .collect();
    let seeding = Instant::now();
    seed_timed_workspaces(&db, org, owner, cluster.id, &deadlines)
        .await
        .unwrap();
    println!(
        "seeded {WORKSPACES} running workspaces with timers in {:.1?}",
        seeding.elapsed()
    );

    let sweeper = TimerSweeper::new(conductor.clone(), Arc::new(NoSessions), 500);
    let mut sweep_times = Vec::new();
    let mut delays = Vec::new();
    let (mut idle, mut lifetime) = (0, 0);
    let mut elapsed = Duration::ZERO;
    while elapsed < SIMULATED {
        clock.advance(SWEEP_INTERVAL);
        elapsed += SWEEP_INTERVAL;
        let t = Instant::now();
        let outcome = sweeper.sweep_once().await.unwrap();
        sweep_times.push(t.elapsed());
        idle += outcome.idle_stopped;
        lifetime += outcome.lifetime_stopped;
        delays.extend(outcome.stop_delays);
    }
    println!(
        "steady state: {} sweeps every {SWEEP_INTERVAL:?} over {SIMULATED:?} of clock, \
         {idle} idle and {lifetime} lifetime stops",
        sweep_times.len()
    );
    let stopped = idle + lifetime;
    line("  database time per sweep", sweep_times);
    line("  deadline -> stop delay", delays);

    // Never twice: every stop is one workspace stopped.
    let live = db.list_workspaces(org).await.unwrap();
    let stopped_rows = live
        .iter()
        .filter(|w| w.desired_state == DesiredState::Stopped)
        .count();
    assert_eq!(stopped_rows, stopped, "each stop is one workspace");

    // A burst: 1,000 more deadlines all due now (e.g. after an outage).
    let now = clock.now();
    let burst: Vec<_> = (0..BURST)
        .map(|i| (Some(now - chrono::Duration::milliseconds(i as i64)), None))
        .collect();
    seed_timed_workspaces(&db, org, owner, cluster.id, &burst)
        .await
        .unwrap();
    let t = Instant::now();
    let outcome = sweeper.sweep_once().await.unwrap();
    let took = t.elapsed();
    // Steady-state deadlines that came due on the real clock meanwhile are
    // stopped too.
    let n = outcome.idle_stopped + outcome.lifetime_stopped;
    assert!(n >= BURST, "{n} < {BURST}");
    println!(
        "burst: {BURST} due at once ({n} stopped) in one sweep in {took:.1?} ({:.2?} per stop)",
        took / n as u32
    );
    line("  deadline -> stop delay", outcome.stop_delays);

    // Back to back: only what came due on the real clock since the last one.
    let mut quiet = Vec::new();
    let mut n = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let outcome = sweeper.sweep_once().await.unwrap();
        n += outcome.idle_stopped + outcome.lifetime_stopped;
        quiet.push(t.elapsed());
    }
    line(
        &format!("back-to-back sweep ({n} stops in 50 sweeps, 100k timers)"),
        quiet,
    );
}
