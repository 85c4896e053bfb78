//! Placement across replicas: two conductors (two processes' worth of
//! in-memory snapshots and in-flight charges) on one PostgreSQL database never
//! over-commit a cluster together, and each workspace is driven from the
//! replica holding its cluster's tunnel.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{Connector, Mode, env};
use lapdev_common::status::{ClusterStatus, DesiredState, WorkspaceStatus};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_leaves_workspaces_on_a_cluster_another_replica_holds_to_that_replica() {
    let e = env().await;
    let (a, manager_a) = e.cluster("a", 8000, 64, "r", Mode::Normal).await;
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w1", 1000, 1))
        .await
        .unwrap();
    assert_eq!(ws.cluster_id, Some(a));
    e.conductor.reconcile_once().await;
    assert_eq!(manager_a.has(ws.id), Some(WorkspaceStatus::Creating));
    // The user stops it; the workspace is unsettled and due.
    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Stopped)
        .await
        .unwrap();
    e.conductor.clear_backoff().await;

    // A second replica that reaches the manager (calls it would forward) but
    // sees the tunnel held elsewhere queues nothing.
    let db2 = lapdev_db::connect(e._test.url()).await.unwrap();
    let connector2 = Arc::new(Connector::default());
    connector2.connect(a, manager_a.clone());
    connector2.set_elsewhere(a, true);
    let second = Conductor::new(db2, connector2.clone(), ConductorConfig::default());
    assert_eq!(second.reconcile_once().await, 0);
    assert_eq!(manager_a.has(ws.id), Some(WorkspaceStatus::Creating));

    // Once the tunnel is its own, it drives the workspace.
    connector2.set_elsewhere(a, false);
    assert_eq!(second.reconcile_once().await, 1);
    assert_eq!(manager_a.has(ws.id), Some(WorkspaceStatus::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_row_another_replica_touched_mid_placement_is_still_placed() {
    let e = env().await;
    let (a, _manager) = e.cluster("a", 8000, 64, "r", Mode::Normal).await;
    // Another replica writes the new row between this replica's decision and
    // its write (as a reconciler woken by the row does), leaving it unplaced.
    let db = e.db.clone();
    let org = e.org;
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    e.conductor.set_placement_hook(Arc::new(move |id| {
        let (db, first) = (db.clone(), first.clone());
        Box::pin(async move {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let ws = db.get_workspace(org, id).await.unwrap();
                db.set_workspace_desired_state(org, id, ws.version, DesiredState::Running)
                    .await
                    .unwrap();
            }
        })
    }));
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w1", 1000, 1))
        .await
        .expect("placed after looking again, not 'changed concurrently'");
    assert_eq!(ws.cluster_id, Some(a));
    assert_eq!(ws.status, WorkspaceStatus::Creating);
}

/// A cluster that just connected through another replica: this replica's
/// snapshot still says disconnected and its connector has not read the new
/// owner yet. Placement reads both again before refusing, so the create goes
/// through; a refusal the fresh reads confirm stays a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_refuses_only_from_fresh_reads_not_from_a_lagging_view() {
    let e = env().await;
    let (a, manager_a) = e.cluster("a", 4000, 64, "r", Mode::Normal).await;
    e.db.set_cluster_status(e.org, a, ClusterStatus::Disconnected)
        .await
        .unwrap();
    let db2 = lapdev_db::connect(e._test.url()).await.unwrap();
    let connector2 = Arc::new(Connector::default());
    let second = Conductor::new(db2, connector2.clone(), ConductorConfig::default());
    let req = |cpu_millis| lapdev_conductor::placement::PlacementRequest {
        cpu_millis,
        memory_bytes: common::GIB,
        cluster: Some("a".into()),
        region: None,
    };
    // The second replica reads its snapshot while `a` is disconnected.
    let e1 = second.plan(e.org, &req(1000)).await.unwrap_err();
    assert!(e1.to_string().contains("no connected"), "{e1}");

    // `a` connects through the first replica. The second hears of neither
    // the status nor the owner (its handle has no change feed from the first).
    e.db.set_cluster_status(e.org, a, ClusterStatus::Connected)
        .await
        .unwrap();
    connector2.connect_unread(a, manager_a);
    let before = connector2.refreshed.load(Ordering::SeqCst);
    let ranked = second.plan(e.org, &req(1000)).await.unwrap();
    assert_eq!(ranked[0].cluster_id, a);
    assert_eq!(connector2.refreshed.load(Ordering::SeqCst), before + 1);
    let ws = second
        .create_workspace(e.org, e.owner, e.request("w1", 1000, 1))
        .await
        .unwrap();
    assert_eq!(ws.cluster_id, Some(a));

    // Too big for `a` on fresh reads too: refused, and the connector is not
    // asked again (it already sees `a`).
    let before = connector2.refreshed.load(Ordering::SeqCst);
    let too_big = second.plan(e.org, &req(8000)).await.unwrap_err();
    assert!(too_big.to_string().contains("can fit"), "{too_big}");
    assert_eq!(connector2.refreshed.load(Ordering::SeqCst), before);
}
