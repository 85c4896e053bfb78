//! Placement across replicas: two conductors (two processes' worth of
//! in-memory snapshots and in-flight charges) on one PostgreSQL database never
//! over-commit a cluster together.

mod common;

use std::sync::Arc;

use common::{Connector, Mode, env};
use lapdev_conductor::{Conductor, ConductorConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_two_replicas_never_overcommit() {
    let e = env().await;
    // Room for exactly 5 + 3 workspaces of 1 CPU.
    let (a, manager_a) = e.cluster("a", 5000, 64, "r", Mode::Normal).await;
    let (b, manager_b) = e.cluster("b", 3000, 64, "r", Mode::Normal).await;
    // A second replica: its own database handle, connector and conductor.
    let db2 = lapdev_db::connect(e._test.url()).await.unwrap();
    let connector2 = Arc::new(Connector::default());
    connector2.connect(a, manager_a);
    connector2.connect(b, manager_b);
    let second = Conductor::new(db2, connector2, ConductorConfig::default());
    // Both replicas have read their snapshot before the race starts, so
    // neither knows of the other's placements but through the database.
    for conductor in [&e.conductor, &second] {
        let req = lapdev_conductor::placement::PlacementRequest {
            cpu_millis: 1000,
            memory_bytes: common::GIB,
            cluster: None,
            region: None,
        };
        conductor.plan(e.org, &req).await.unwrap();
    }
    let creates: Vec<_> = (0..20)
        .map(|i| {
            let conductor = if i % 2 == 0 {
                e.conductor.clone()
            } else {
                second.clone()
            };
            let req = e.request(&format!("w{i}"), 1000, 1);
            let (org, owner) = (e.org, e.owner);
            tokio::spawn(async move { conductor.create_workspace(org, owner, req).await })
        })
        .collect();
    let mut results = Vec::new();
    for c in creates {
        results.push(c.await.unwrap());
    }
    let placed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let on = |c| placed.iter().filter(|w| w.cluster_id == Some(c)).count();
    assert_eq!((on(a), on(b)), (5, 3), "exactly the room there is");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            r.to_string()
                .starts_with("no connected cluster can fit 1 CPU"),
            "{r}"
        );
    }
    let requested = e.db.cluster_requested_resources(e.org).await.unwrap();
    assert!(requested[&a].cpu_millis <= 5000 && requested[&b].cpu_millis <= 3000);
}
