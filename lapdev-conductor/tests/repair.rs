//! Self-repair with persisted backoff, volumes that never move, one placement per
//! workspace under a deterministic interleaving, and tombstones, on PostgreSQL.
//! Time is driven by the conductor's injectable clock, never by sleeping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Env, Mode, env_with};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::{DesiredState, WorkspaceStatus};
use lapdev_conductor::{Conductor, ConductorConfig, backoff};
use lapdev_db::{Backoff, WorkspaceTransition};
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

fn config() -> ConductorConfig {
    ConductorConfig {
        rpc_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(600),
        ..Default::default()
    }
}

impl Env {
    /// A running workspace on a fresh cluster.
    async fn running(&self, name: &str) -> (Uuid, Uuid, Arc<common::FakeManager>) {
        let (cluster, manager) = self
            .cluster(&format!("{name}-cluster"), 8000, 32, "r", Mode::Normal)
            .await;
        let mut req = self.request(name, 1000, 1);
        req.cluster = Some(format!("{name}-cluster"));
        let ws = self
            .conductor
            .create_workspace(self.org, self.owner, req)
            .await
            .unwrap();
        self.conductor.reconcile_once().await;
        self.report(ws.id, WorkspaceStatus::Running, None, None)
            .await;
        (ws.id, cluster, manager)
    }

    /// What the server records when the manager reports (as `workspace_reports`
    /// does: a new failure is due at once, the attempt count is kept).
    async fn report(
        &self,
        id: Uuid,
        status: WorkspaceStatus,
        reason: Option<WorkspaceReason>,
        message: Option<&str>,
    ) {
        let current = self.get(id).await;
        let newly_failed =
            status == WorkspaceStatus::Failed && current.status != WorkspaceStatus::Failed;
        self.db
            .transition_workspace(
                self.org,
                id,
                current.version,
                WorkspaceTransition {
                    status_message: message.map(str::to_owned),
                    backoff: newly_failed.then_some(Backoff {
                        attempts: current.repair_attempts,
                        next_attempt_at: None,
                    }),
                    ..WorkspaceTransition::to(status).reason(reason)
                },
            )
            .await
            .unwrap();
    }

    fn count(manager: &common::FakeManager, call: &str) -> usize {
        manager.calls().iter().filter(|c| *c == call).count()
    }
}

#[tokio::test]
async fn an_evicted_workspace_gets_a_new_pod_after_its_backoff() {
    let e = env_with(config()).await;
    let (id, _, manager) = e.running("w").await;
    e.report(
        id,
        WorkspaceStatus::Failed,
        Some(WorkspaceReason::Evicted),
        Some("the node was low on memory"),
    )
    .await;

    // First look: the retry is announced, not made.
    e.conductor.reconcile_once().await;
    let ws = e.get(id).await;
    assert_eq!(ws.status, WorkspaceStatus::Failed);
    assert_eq!(ws.repair_attempts, 1);
    // The plan is stored as an absolute time, true however late it is read.
    assert_eq!(
        ws.status_message.unwrap(),
        format!(
            "pod evicted: the node was low on memory; new pod at {} (attempt 1)",
            backoff::at(ws.next_attempt_at)
        )
    );
    assert_eq!(Env::count(&manager, "start"), 0);

    // Not due yet: rounds cost nothing.
    for _ in 0..3 {
        assert_eq!(e.conductor.reconcile_once().await, 0);
    }
    assert_eq!(Env::count(&manager, "start"), 0);

    // Past the delay (10 s plus at most a quarter of jitter): a new pod.
    e.conductor.clock().advance(Duration::from_secs(13));
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "start"), 1);
    let ws = e.get(id).await;
    assert_eq!(ws.status, WorkspaceStatus::Creating);
    assert_eq!(
        e.conductor.reconcile_once().await,
        0,
        "the recheck waits too"
    );

    // Evicted again: the next delay doubles.
    e.report(
        id,
        WorkspaceStatus::Failed,
        Some(WorkspaceReason::Evicted),
        None,
    )
    .await;
    e.conductor.reconcile_once().await;
    let ws = e.get(id).await;
    assert_eq!(ws.repair_attempts, 2);
    assert_eq!(
        ws.status_message.unwrap(),
        format!(
            "pod evicted; new pod at {} (attempt 2)",
            backoff::at(ws.next_attempt_at)
        )
    );
    e.conductor.clock().advance(Duration::from_secs(13));
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "start"), 1, "20 s have not passed");
    e.conductor.clock().advance(Duration::from_secs(13));
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "start"), 2);

    // Running again resets the count.
    e.report(id, WorkspaceStatus::Running, None, None).await;
    let ws = e.get(id).await;
    assert_eq!((ws.repair_attempts, ws.next_attempt_at), (0, None));
}

#[tokio::test]
async fn the_backoff_survives_a_conductor_restart() {
    let e = env_with(config()).await;
    let (id, _, manager) = e.running("w").await;
    e.report(
        id,
        WorkspaceStatus::Failed,
        Some(WorkspaceReason::OOMKilled),
        None,
    )
    .await;
    e.conductor.reconcile_once().await;
    assert_eq!(e.get(id).await.repair_attempts, 1);

    // A new conductor (a restarted server) with its own clock.
    let restarted = Conductor::new(e.db.clone(), e.connector.clone(), config());
    assert_eq!(restarted.reconcile_once().await, 0, "still waiting");
    assert_eq!(Env::count(&manager, "start"), 0);
    restarted.clock().advance(Duration::from_secs(13));
    restarted.reconcile_once().await;
    assert_eq!(Env::count(&manager, "start"), 1);
    assert_eq!(
        e.get(id).await.repair_attempts,
        1,
        "not reset by the restart"
    );
}

#[tokio::test]
async fn a_terminal_reason_is_not_retried_until_the_user_starts_again() {
    let e = env_with(config()).await;
    let (id, _, manager) = e.running("w").await;
    e.report(
        id,
        WorkspaceStatus::Failed,
        Some(WorkspaceReason::InvalidImage),
        Some("invalid image name"),
    )
    .await;
    let calls = manager.calls().len();
    e.conductor.clock().advance(Duration::from_secs(3600));
    e.conductor.reconcile_once().await;
    assert_eq!(manager.calls().len(), calls);
    assert_eq!(e.get(id).await.status, WorkspaceStatus::Failed);

    e.conductor
        .set_desired_state(e.org, id, DesiredState::Running)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(
        manager.calls().len(),
        calls + 1,
        "the user's start is obeyed"
    );
}

#[tokio::test]
async fn a_refused_restart_keeps_the_workspace_on_its_cluster() {
    let e = env_with(config()).await;
    let (id, cluster, manager) = e.running("w").await;
    // An emptier cluster that would win any new placement.
    let (_, other) = e.cluster("roomy", 64000, 256, "r", Mode::Normal).await;
    e.conductor
        .set_desired_state(e.org, id, DesiredState::Stopped)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(e.get(id).await.status, WorkspaceStatus::Stopped);

    *manager.mode.lock().unwrap() = Mode::Refuse;
    e.conductor
        .set_desired_state(e.org, id, DesiredState::Running)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    let ws = e.get(id).await;
    assert_eq!(ws.cluster_id, Some(cluster), "its volume is there");
    assert_eq!(ws.status, WorkspaceStatus::Failed);
    assert_eq!(ws.status_reason, Some(WorkspaceReason::CreateRefused));
    let message = ws.status_message.unwrap();
    assert!(
        message.contains("exceeded quota")
            && message.contains(&format!("retry at {}", backoff::at(ws.next_attempt_at))),
        "{message}"
    );
    assert_eq!(Env::count(&manager, "delete"), 0, "nothing is removed");

    // Retried on the same cluster, after the backoff, until it accepts.
    e.conductor.clock().advance(Duration::from_secs(13));
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "create"), 2);
    assert_eq!(e.get(id).await.repair_attempts, 2);
    *manager.mode.lock().unwrap() = Mode::Normal;
    e.conductor.clock().advance(Duration::from_secs(30));
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "create"), 3);
    let ws = e.get(id).await;
    assert_eq!(ws.cluster_id, Some(cluster));
    assert_eq!(ws.status, WorkspaceStatus::Creating);
    assert!(other.calls().is_empty(), "the other cluster never saw it");
}

#[tokio::test]
async fn the_api_and_the_reconciler_place_a_workspace_once() {
    let e = env_with(config()).await;
    let (a, manager_a) = e.cluster("a", 16000, 64, "r", Mode::Normal).await;
    let (b, manager_b) = e.cluster("b", 8000, 32, "r", Mode::Normal).await;
    // Replica 1 serves the API; its placement stops between choosing a cluster
    // and writing the choice until the test lets it go on.
    let reached = Arc::new(Notify::new());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(std::sync::Mutex::new(Some(release_rx)));
    {
        let reached = reached.clone();
        e.conductor.set_placement_hook(Arc::new(move |_| {
            let reached = reached.clone();
            let release = release.lock().unwrap().take();
            Box::pin(async move {
                reached.notify_one();
                if let Some(release) = release {
                    let _ = release.await;
                }
            })
        }));
    }
    let api = {
        let conductor = e.conductor.clone();
        let req = e.request("w", 1000, 1);
        let (org, owner) = (e.org, e.owner);
        tokio::spawn(async move { conductor.create_workspace(org, owner, req).await })
    };
    tokio::time::timeout(Duration::from_secs(10), reached.notified())
        .await
        .expect("the API's placement reaches its write");

    // Replica 2's reconciler sees the same unplaced workspace and places it.
    // It is made to prefer the other cluster, so two placements would show.
    let reconciler = Conductor::new(e.db.clone(), e.connector.clone(), config());
    e.db.set_cluster_cordoned(e.org, a, true).await.unwrap();
    assert_eq!(reconciler.reconcile_once().await, 1);
    let ws = e.db.get_workspace_by_name(e.org, "w").await.unwrap();
    assert_eq!(ws.cluster_id, Some(b));

    // The API's placement goes on with its stale decision (cluster a) and loses.
    release_tx.send(()).unwrap();
    let from_api = tokio::time::timeout(Duration::from_secs(10), api)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        from_api.cluster_id,
        Some(b),
        "the winner's choice is returned"
    );
    assert_eq!(e.get(ws.id).await.cluster_id, Some(b));
    e.conductor.clock().advance(Duration::from_secs(3600));
    e.conductor.reconcile_once().await;
    assert!(
        manager_a.calls().is_empty(),
        "nothing was made on cluster a"
    );
    assert!(manager_b.calls().iter().all(|c| c == "create"));
}

#[tokio::test]
async fn a_forgotten_workspace_is_removed_when_its_cluster_reconnects() {
    let e = env_with(config()).await;
    let (id, cluster, manager) = e.running("w").await;
    // While connected, forgetting is refused: a normal delete works.
    assert!(e.conductor.forget_workspace(e.org, id).await.is_err());

    e.connector.disconnect(cluster);
    let tomb = e.conductor.forget_workspace(e.org, id).await.unwrap();
    assert_eq!(tomb.status, WorkspaceStatus::Deleted);
    assert_eq!(tomb.status_reason, Some(WorkspaceReason::ClusterGone));
    assert!(
        e.db.get_workspace(e.org, id).await.is_err(),
        "gone for users"
    );
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "delete"), 0, "nobody to ask yet");

    e.connector.connect(cluster, manager.clone());
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "delete"), 1);
    assert_eq!(manager.has(id), None, "the manager removed its objects");
    assert!(
        e.db.list_forgotten_workspaces(cluster)
            .await
            .unwrap()
            .is_empty()
    );
    e.conductor.reconcile_once().await;
    assert_eq!(Env::count(&manager, "delete"), 1, "done once");
}

#[tokio::test]
async fn failing_workspaces_cost_a_bounded_number_of_calls() {
    // 50 workspaces whose pods keep getting evicted, for ten simulated minutes in
    // 5 s rounds: the calls they cost are bounded by the backoff, not the rounds.
    let e = env_with(config()).await;
    let (_, manager) = e.cluster("c", 64000, 256, "r", Mode::Normal).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let ws = e
            .conductor
            .create_workspace(e.org, e.owner, e.request(&format!("w{i}"), 100, 1))
            .await;
        ids.push(ws.unwrap().id);
    }
    e.conductor.reconcile_once().await;
    let before = manager.calls().len();
    for _round in 0..120 {
        for &id in &ids {
            let ws = e.get(id).await;
            if ws.status != WorkspaceStatus::Failed {
                e.report(
                    id,
                    WorkspaceStatus::Failed,
                    Some(WorkspaceReason::Evicted),
                    None,
                )
                .await;
            }
        }
        e.conductor.reconcile_once().await;
        e.conductor.clock().advance(Duration::from_secs(5));
    }
    let starts = manager.calls().len() - before;
    // Delays 10, 20, 40, 80, 160, 320 s (+≤25 %) fit at most 6 repairs into
    // 600 s; without backoff it would be one per workspace per round (120).
    assert!(starts <= 50 * 6, "{starts} calls");
    assert!(starts >= 50 * 3, "{starts} calls: repairs did happen");
}

/// A manager whose pod fails while its answer to `create` is on the way: the
/// failure report (newer than the answer) reaches the database first.
struct FailsWhileAnswering {
    inner: Arc<common::FakeManager>,
    db: lapdev_db::Db,
    org: Uuid,
}

impl lapdev_kube_rpc::KubeManagerRpc for FailsWhileAnswering {
    async fn create_workspace(
        &self,
        spec: lapdev_common::kube::WorkspaceSpec,
    ) -> Result<lapdev_kube_rpc::WorkspaceObservation, lapdev_hrpc::HrpcError> {
        let id = spec.workspace_id;
        let answer = self.inner.create_workspace(spec).await?;
        for (status, reason, later) in [
            (WorkspaceStatus::Running, None, 1),
            (WorkspaceStatus::Failed, Some(WorkspaceReason::Evicted), 2),
        ] {
            let current = self.db.get_workspace(self.org, id).await.unwrap();
            self.db
                .transition_workspace(
                    self.org,
                    id,
                    current.version,
                    WorkspaceTransition {
                        observed_at: Some(answer.observed_at + chrono::Duration::seconds(later)),
                        status_message: reason
                            .as_ref()
                            .map(|_| "the node was low on memory".into()),
                        backoff: reason.as_ref().map(|_| Backoff {
                            attempts: current.repair_attempts,
                            next_attempt_at: None,
                        }),
                        ..WorkspaceTransition::to(status).reason(reason)
                    },
                )
                .await
                .unwrap();
        }
        Ok(answer)
    }
    async fn start_workspace(
        &self,
        spec: lapdev_common::kube::WorkspaceSpec,
    ) -> Result<lapdev_kube_rpc::WorkspaceObservation, lapdev_hrpc::HrpcError> {
        self.inner.start_workspace(spec).await
    }
    async fn stop_workspace(
        &self,
        id: Uuid,
    ) -> Result<lapdev_kube_rpc::WorkspaceObservation, lapdev_hrpc::HrpcError> {
        self.inner.stop_workspace(id).await
    }
    async fn delete_workspace_keeping_volume(
        &self,
        keep: lapdev_kube_rpc::KeepVolume,
    ) -> Result<lapdev_kube_rpc::WorkspaceObservation, lapdev_hrpc::HrpcError> {
        self.inner.delete_workspace_keeping_volume(keep).await
    }
    async fn purge_workspace_volume(
        &self,
        id: Uuid,
    ) -> Result<lapdev_kube_rpc::WorkspaceObservation, lapdev_hrpc::HrpcError> {
        self.inner.purge_workspace_volume(id).await
    }
    async fn delete_workspace(
        &self,
        id: Uuid,
    ) -> Result<lapdev_kube_rpc::WorkspaceObservation, lapdev_hrpc::HrpcError> {
        self.inner.delete_workspace(id).await
    }
    async fn get_workspace_status(
        &self,
        id: Uuid,
    ) -> Result<lapdev_kube_rpc::WorkspaceObservation, lapdev_hrpc::HrpcError> {
        self.inner.get_workspace_status(id).await
    }
    async fn list_workspaces(
        &self,
    ) -> Result<Vec<lapdev_kube_rpc::WorkspaceObservation>, lapdev_hrpc::HrpcError> {
        self.inner.list_workspaces().await
    }
    async fn get_cluster_info(
        &self,
    ) -> Result<lapdev_common::kube::KubeClusterInfo, lapdev_hrpc::HrpcError> {
        self.inner.get_cluster_info().await
    }
}

/// A failure reported while the conductor's own call was still answering is
/// newer news: the step's recheck must not push it back, so the next look
/// announces the repair (CI once saw the announcement never come).
#[tokio::test]
async fn a_failure_reported_during_a_create_is_announced_at_the_next_look() {
    let e = env_with(config()).await;
    let (cluster, fake) = e.cluster("c", 8000, 32, "r", Mode::Normal).await;
    e.connector.connect(
        cluster,
        Arc::new(FailsWhileAnswering {
            inner: fake.clone(),
            db: e.db.clone(),
            org: e.org,
        }),
    );
    let mut req = e.request("w", 1000, 1);
    req.cluster = Some("c".into());
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, req)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    let got = e.get(ws.id).await;
    assert_eq!(
        (got.status, got.status_reason.clone()),
        (WorkspaceStatus::Failed, Some(WorkspaceReason::Evicted)),
        "the stale answer does not overwrite the failure"
    );
    e.conductor.reconcile_once().await;
    let got = e.get(ws.id).await;
    let message = got.status_message.unwrap_or_default();
    assert!(
        message.starts_with("pod evicted: the node was low on memory; new pod at "),
        "{message}"
    );
    assert_eq!(got.repair_attempts, 1);
    assert_eq!(Env::count(&fake, "start"), 0, "announced, not yet made");
}
