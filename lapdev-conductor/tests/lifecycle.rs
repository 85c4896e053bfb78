//! The conductor on real PostgreSQL with in-process stand-in managers: placement,
//! the lifecycle state machine, refusals, timeouts, crash recovery and
//! concurrent creates.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{GIB, Mode, env};
use lapdev_common::status::{DesiredState, WorkspaceStatus};
use lapdev_conductor::placement::PlacementRequest;
use lapdev_conductor::{Conductor, ConductorConfig, ConductorError, CreateWorkspace};
use lapdev_hrpc::{Code, HrpcError};
use tokio::sync::Notify;
use uuid::Uuid;

#[tokio::test]
async fn a_workspace_goes_through_its_whole_lifecycle() {
    let e = env().await;
    let (small, _) = e
        .cluster("small", 2000, 8, "europe-west1", Mode::Normal)
        .await;
    let (big, manager) = e
        .cluster("big", 16000, 64, "europe-west1", Mode::Normal)
        .await;

    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w1", 1000, 2))
        .await
        .unwrap();
    assert_eq!(ws.cluster_id, Some(big), "the emptiest cluster wins");
    assert_ne!(ws.cluster_id, Some(small));
    assert_eq!(ws.status, WorkspaceStatus::Creating);

    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
    // The manager's watch reports the pod running (as the server would record it).
    let current = e.get(ws.id).await;
    e.db.transition_workspace(
        e.org,
        ws.id,
        current.version,
        lapdev_db::WorkspaceTransition::to(WorkspaceStatus::Running),
    )
    .await
    .unwrap();
    assert_eq!(
        e.conductor.reconcile_once().await,
        0,
        "running as desired: settled"
    );

    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Stopped)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(e.get(ws.id).await.status, WorkspaceStatus::Stopped);
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Stopped));

    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Running)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(e.get(ws.id).await.status, WorkspaceStatus::Creating);
    assert!(manager.calls().contains(&"start".to_owned()));

    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Deleted)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), None, "the manager removed everything");
    let gone =
        e.db.find_workspace_by_name_including_deleted(e.org, "w1")
            .await
            .unwrap();
    assert_eq!(gone.status, WorkspaceStatus::Deleted);
    assert!(gone.deleted_at.is_some());
    assert_eq!(e.conductor.reconcile_once().await, 0);
}

#[tokio::test]
async fn placement_respects_constraints_and_says_why_nothing_fits() {
    let e = env().await;
    let (eu, _) = e
        .cluster("prod-eu", 4000, 16, "europe-west1", Mode::Normal)
        .await;
    let (us, _) = e
        .cluster("prod-us", 8000, 32, "us-central1", Mode::Normal)
        .await;
    let (cordoned, _) = e
        .cluster("cordoned", 64000, 256, "europe-west1", Mode::Normal)
        .await;
    e.db.set_cluster_cordoned(e.org, cordoned, true)
        .await
        .unwrap();
    let (offline, _) = e
        .cluster("offline", 64000, 256, "europe-west1", Mode::Normal)
        .await;
    e.connector.disconnect(offline);

    let mut r = e.request("in-eu", 1000, 1);
    r.region = Some("europe-west1".into());
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, r)
        .await
        .unwrap();
    assert_eq!(ws.cluster_id, Some(eu));

    let mut r = e.request("named", 1000, 1);
    r.cluster = Some("prod-us".into());
    assert_eq!(
        e.conductor
            .create_workspace(e.org, e.owner, r)
            .await
            .unwrap()
            .cluster_id,
        Some(us)
    );

    let err = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("huge", 32000, 128))
        .await
        .unwrap_err();
    assert!(matches!(err, ConductorError::Placement(_)));
    assert_eq!(
        err.to_string(),
        "no connected cluster can fit 32 CPU / 128 GiB; largest free: 7 CPU / 31 GiB on prod-us"
    );
    // Nothing was recorded for a request that fits nowhere.
    assert!(e.db.get_workspace_by_name(e.org, "huge").await.is_err());
}

#[tokio::test]
async fn concurrent_creates_never_overcommit() {
    let e = env().await;
    // Room for exactly 5 + 3 workspaces of 1 CPU.
    let (a, _) = e.cluster("a", 5000, 64, "r", Mode::Normal).await;
    let (b, _) = e.cluster("b", 3000, 64, "r", Mode::Normal).await;
    let creates = (0..20).map(|i| {
        let conductor = e.conductor.clone();
        let req = e.request(&format!("w{i}"), 1000, 1);
        let (org, owner) = (e.org, e.owner);
        tokio::spawn(async move { conductor.create_workspace(org, owner, req).await })
    });
    let results: Vec<_> = futures_join(creates).await;
    let placed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(placed.len(), 8, "exactly the room there is");
    let on = |c| placed.iter().filter(|w| w.cluster_id == Some(c)).count();
    assert_eq!((on(a), on(b)), (5, 3));
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

type PausedCreate = tokio::task::JoinHandle<Result<lapdev_db::Workspace, ConductorError>>;

/// One cluster with room for one 1-CPU workspace, and a create of one that is
/// paused between its placement decision and its write until `release` is
/// notified (later placements pass).
async fn a_create_paused_mid_write(
    placement_cache_ttl: Duration,
) -> (common::Env, Uuid, Arc<Notify>, PausedCreate) {
    let e = common::env_with(ConductorConfig {
        placement_cache_ttl,
        ..Default::default()
    })
    .await;
    let (cluster, _) = e.cluster("a", 1000, 64, "r", Mode::Normal).await;
    let reached = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (r, g) = (reached.clone(), release.clone());
    e.conductor.set_placement_hook(Arc::new(move |_| {
        let (r, g) = (r.clone(), g.clone());
        let pause = first.swap(false, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if pause {
                r.notify_one();
                g.notified().await;
            }
        })
    }));
    let create = {
        let conductor = e.conductor.clone();
        let req = e.request("first", 1000, 1);
        let (org, owner) = (e.org, e.owner);
        tokio::spawn(async move { conductor.create_workspace(org, owner, req).await })
    };
    reached.notified().await;
    (e, cluster, release, create)
}

#[tokio::test]
async fn a_placement_being_written_counts_in_a_fresh_read() {
    // Every decision reads the database again, which does not hold a choice
    // still being written: the in-flight charge must count anyway.
    let (e, a, release, first) = a_create_paused_mid_write(Duration::ZERO).await;
    let second = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("second", 1000, 1))
        .await;
    assert!(
        second.as_ref().is_err_and(|e| e
            .to_string()
            .starts_with("no connected cluster can fit 1 CPU")),
        "{second:?}"
    );
    release.notify_one();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.cluster_id, Some(a));
}

#[tokio::test]
async fn a_placement_abandoned_mid_write_gives_its_room_back() {
    let (e, a, _release, first) = a_create_paused_mid_write(Duration::from_secs(3600)).await;
    let req = PlacementRequest {
        cpu_millis: 1000,
        memory_bytes: GIB,
        cluster: None,
        region: None,
    };
    assert!(e.conductor.plan(e.org, &req).await.is_err(), "charged");
    // The caller goes away (a dropped request) while its choice is written.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // The charge is released (by a task the abandoned placement started).
    let mut tries = 0;
    while e.conductor.plan(e.org, &req).await.is_err() {
        tries += 1;
        assert!(tries < 10_000, "the abandoned charge was never released");
        tokio::task::yield_now().await;
    }
    let second = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("second", 1000, 1))
        .await
        .unwrap();
    assert_eq!(second.cluster_id, Some(a));
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_refusing_cluster_hands_the_workspace_to_the_next() {
    let e = env().await;
    let (refusing, refuser) = e.cluster("a-refusing", 16000, 64, "r", Mode::Refuse).await;
    let (willing, manager) = e.cluster("b-willing", 8000, 32, "r", Mode::Normal).await;
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w", 1000, 1))
        .await
        .unwrap();
    assert_eq!(
        ws.cluster_id,
        Some(refusing),
        "the emptier cluster is tried first"
    );

    e.conductor.reconcile_once().await;
    assert_eq!(
        refuser.calls(),
        ["create", "delete"],
        "what the refusing cluster made is removed before moving on"
    );
    let after = e.get(ws.id).await;
    assert_eq!(
        after.cluster_id,
        Some(willing),
        "re-placed on the next cluster"
    );
    assert!(
        after
            .status_message
            .unwrap_or_default()
            .contains("exceeded quota")
    );

    // The refusal put the workspace into backoff; the next round goes now.
    e.conductor.clear_backoff().await;
    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
}

#[tokio::test]
async fn a_manager_that_never_answers_times_out_and_is_retried() {
    let e = env().await;
    let (_, manager) = e.cluster("slow", 8000, 32, "r", Mode::Hang).await;
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w", 1000, 1))
        .await
        .unwrap();

    e.conductor.reconcile_once().await;
    let after = e.get(ws.id).await;
    assert_eq!(
        after.status,
        WorkspaceStatus::Creating,
        "still wanted, still creating"
    );
    let message = after.status_message.unwrap_or_default();
    assert!(
        message.contains("cannot reach the manager") || message.contains("deadline"),
        "{message}"
    );

    // The manager recovers; the next round (backoff passed) converges.
    *manager.mode.lock().unwrap() = Mode::Normal;
    e.conductor.clear_backoff().await;
    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
    assert_eq!(manager.calls().len(), 2, "the call was retried");
}

#[tokio::test]
async fn a_new_conductor_finishes_what_a_crashed_one_left() {
    let e = env().await;
    let (cluster, manager) = e.cluster("c", 8000, 32, "r", Mode::Normal).await;
    // The first conductor placed the workspace and "crashed" before calling the
    // manager.
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w", 1000, 1))
        .await
        .unwrap();
    assert_eq!(manager.calls(), Vec::<String>::new());

    let restarted = Conductor::new(
        e.db.clone(),
        e.connector.clone(),
        ConductorConfig::default(),
    );
    restarted.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));
    assert_eq!(e.get(ws.id).await.cluster_id, Some(cluster));

    // A deletion interrupted half-way (status `deleting`) is finished too.
    restarted
        .set_desired_state(e.org, ws.id, DesiredState::Deleted)
        .await
        .unwrap();
    let current = e.get(ws.id).await;
    e.db.transition_workspace(
        e.org,
        ws.id,
        current.version,
        lapdev_db::WorkspaceTransition::to(WorkspaceStatus::Deleting),
    )
    .await
    .unwrap();
    let again = Conductor::new(
        e.db.clone(),
        e.connector.clone(),
        ConductorConfig::default(),
    );
    again.reconcile_once().await;
    assert_eq!(manager.has(ws.id), None);
    assert!(
        e.db.get_workspace(e.org, ws.id).await.is_err(),
        "soft-deleted"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_written() {
    let e = env().await;
    e.cluster("c", 8000, 32, "r", Mode::Normal).await;
    for (req, what) in [
        (
            CreateWorkspace {
                image: "".into(),
                ..e.request("x", 1000, 1)
            },
            "image",
        ),
        (
            CreateWorkspace {
                cpu_millis: 0,
                ..e.request("x", 1000, 1)
            },
            "cpu",
        ),
        (
            CreateWorkspace {
                memory_bytes: -1,
                ..e.request("x", 1000, 1)
            },
            "memory",
        ),
    ] {
        let err = e
            .conductor
            .create_workspace(e.org, e.owner, req)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConductorError::InvalidArgument(_)),
            "{what}: {err}"
        );
    }
    let mut r = e.request("x", 1000, 1);
    r.cluster = Some("nope".into());
    let err: HrpcError = e
        .conductor
        .create_workspace(e.org, e.owner, r)
        .await
        .unwrap_err()
        .into();
    assert_eq!(err.code, Code::NotFound);
    assert!(e.db.list_workspaces(e.org).await.unwrap().is_empty());
}

#[tokio::test]
async fn placement_sees_a_cordon_at_once_through_the_change_feed() {
    let e = env().await;
    let (a, _) = e.cluster("a", 8000, 32, "r", Mode::Normal).await;
    let req = lapdev_conductor::placement::PlacementRequest {
        cpu_millis: 1000,
        memory_bytes: GIB,
        cluster: None,
        region: None,
    };
    assert_eq!(
        e.conductor.plan(e.org, &req).await.unwrap()[0].cluster_id,
        a
    );
    // No explicit invalidation: the write publishes a change the cache reads.
    e.db.set_cluster_cordoned(e.org, a, true).await.unwrap();
    assert!(e.conductor.plan(e.org, &req).await.is_err());
}
