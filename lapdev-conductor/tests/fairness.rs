//! The reconciler under a slow cluster: steps run per workspace under a total
//! and a per-organisation cap, so a manager whose calls take their whole
//! deadline delays nobody else; and user actions retry version conflicts
//! instead of handing them to the user.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Mode, env, env_with, wait_until};
use lapdev_common::status::{DesiredState, WorkspaceStatus};
use lapdev_conductor::ConductorConfig;
use lapdev_db::Backoff;

/// Calls of the slow cluster never answer within the test: each takes the
/// whole 30 s deadline.
fn slow_config(total: usize, per_org: usize) -> ConductorConfig {
    ConductorConfig {
        rpc_timeout: Duration::from_secs(30),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        max_concurrent_steps: total,
        max_concurrent_steps_per_org: per_org,
        ..Default::default()
    }
}

/// How long a step on a healthy cluster may take on a loaded test machine;
/// far below the slow cluster's 30 s.
const BOUND: Duration = Duration::from_secs(10);

fn creates(manager: &common::FakeManager) -> usize {
    manager.calls().iter().filter(|c| *c == "create").count()
}

#[tokio::test]
async fn a_slow_manager_does_not_delay_another_organisations_reconcile() {
    let e = env_with(slow_config(64, 16)).await;
    let (_, slow) = e
        .cluster("slow", 8000, 32, "europe-west1", Mode::Hang)
        .await;
    let stuck = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("stuck", 1000, 2))
        .await
        .unwrap();

    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = e.conductor.clone();
    let run = tokio::spawn(async move {
        runner
            .run(async {
                let _ = shutdown_rx.await;
            })
            .await
    });
    assert!(
        wait_until(BOUND, || creates(&slow) == 1).await,
        "the slow cluster is asked to create"
    );

    // Now another organisation, with a healthy cluster, creates a workspace
    // while the slow call is still pending.
    let (org_b, owner_b) = e.other_org("globex").await;
    let (_, healthy) = e
        .cluster_in(org_b, "healthy", 8000, 32, "europe-west1", Mode::Normal)
        .await;
    let ws = e
        .conductor
        .create_workspace(org_b, owner_b, e.request("quick", 1000, 2))
        .await
        .unwrap();
    assert!(
        wait_until(BOUND, || healthy.has(ws.id).is_some()).await,
        "the healthy cluster's workspace was not created while the slow call was pending"
    );
    assert_eq!(
        e.db.get_workspace(org_b, ws.id).await.unwrap().status,
        WorkspaceStatus::Creating
    );
    // The slow call is still the only one it got, and still pending.
    assert_eq!(creates(&slow), 1);
    assert_eq!(slow.has(stuck.id), None);

    shutdown_tx.send(()).unwrap();
    tokio::time::timeout(BOUND, run)
        .await
        .expect("the run loop stops at shutdown")
        .unwrap();
}

#[tokio::test]
async fn one_organisation_never_holds_more_than_its_share_of_steps() {
    let e = env_with(slow_config(3, 2)).await;
    let (_, slow) = e
        .cluster("slow", 16000, 64, "europe-west1", Mode::Hang)
        .await;
    for i in 0..5 {
        e.conductor
            .create_workspace(e.org, e.owner, e.request(&format!("stuck-{i}"), 500, 1))
            .await
            .unwrap();
    }
    let (org_b, owner_b) = e.other_org("globex").await;
    let (_, healthy) = e
        .cluster_in(org_b, "healthy", 8000, 32, "europe-west1", Mode::Normal)
        .await;
    let quick = e
        .conductor
        .create_workspace(org_b, owner_b, e.request("quick", 1000, 2))
        .await
        .unwrap();

    // One round queues all six; only two of the slow organisation's may run,
    // and the other organisation's gets a slot at once.
    let conductor = e.conductor.clone();
    let round = tokio::spawn(async move { conductor.reconcile_once().await });
    assert!(
        wait_until(BOUND, || healthy.has(quick.id).is_some()).await,
        "the other organisation's workspace waited for the slow one's"
    );
    assert!(wait_until(BOUND, || creates(&slow) == 2).await);
    assert_eq!(
        creates(&slow),
        2,
        "the slow organisation runs at most its per-organisation cap"
    );
    assert!(!round.is_finished(), "the round waits for what it queued");
    round.abort();
}

#[tokio::test]
async fn a_user_action_retries_a_conflicting_reconciler_write() {
    let e = env().await;
    let (_, manager) = e
        .cluster("c1", 8000, 32, "europe-west1", Mode::Normal)
        .await;
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("w1", 1000, 2))
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(manager.has(ws.id), Some(WorkspaceStatus::Creating));

    // Between the action's read and its write, the reconciler writes the same
    // row (here: its backoff), the first two times.
    let db = e.db.clone();
    let org = e.org;
    let seen = Arc::new(AtomicUsize::new(0));
    let hook_seen = seen.clone();
    e.conductor.set_action_hook(Arc::new(move |id| {
        let db = db.clone();
        let n = hook_seen.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if n < 2 {
                let current = db.get_workspace(org, id).await.unwrap();
                db.set_workspace_backoff(
                    org,
                    id,
                    current.version,
                    Backoff {
                        attempts: 1,
                        next_attempt_at: Some(chrono::Utc::now()),
                    },
                )
                .await
                .unwrap();
            }
        })
    }));

    let stopped = e
        .conductor
        .set_desired_state(e.org, ws.id, DesiredState::Stopped)
        .await
        .expect("the conflict is retried, not returned");
    assert_eq!(stopped.desired_state, DesiredState::Stopped);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "two conflicts, then a write"
    );
    assert_eq!(e.get(ws.id).await.desired_state, DesiredState::Stopped);
}
