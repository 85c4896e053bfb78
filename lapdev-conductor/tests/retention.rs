//! The home-volume grace period: delete keeps the volume for the
//! organisation's retention window, restore brings the workspace back stopped
//! within it, the purge deletes the volume after it. Time moves by the
//! conductor's clock, never by sleeping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeManager, Mode, env};
use lapdev_common::kube::{KubeClusterInfo, WorkspaceSpec};
use lapdev_common::status::{DesiredState, WorkspaceStatus};
use lapdev_conductor::retention::VolumePurger;
use lapdev_db::{DbError, RestoreRefusal, WorkspacePolicy};
use lapdev_hrpc::{Code, HrpcError};
use lapdev_kube_rpc::{KeepVolume, KubeManagerRpc, WorkspaceObservation};
use uuid::Uuid;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Creates `name` on cluster `c`, lets the manager make it, then deletes it.
async fn created_then_deleted(e: &common::Env, name: &str) -> Uuid {
    let ws = e
        .conductor
        .create_workspace(e.org, e.owner, e.request(name, 1000, 1))
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert!(e.get(ws.id).await.volume_created);
    e.conductor
        .set_desired_state(e.org, ws.id, DesiredState::Deleted)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    ws.id
}

#[tokio::test]
async fn delete_keeps_the_volume_restore_brings_it_back_and_the_purge_ends_it() {
    let e = env().await;
    let (_, manager) = e.cluster("c", 8000, 32, "eu", Mode::Normal).await;
    let clock = e.conductor.clock().clone();
    let id = created_then_deleted(&e, "w").await;
    let deleted_at = clock.now();

    // Deleted for its users, its volume kept for the default 7 days.
    assert!(matches!(
        e.db.get_workspace(e.org, id).await,
        Err(DbError::NotFound { .. })
    ));
    let timer = e.db.workspace_timer(e.org, id).await.unwrap().unwrap();
    let until = timer.volume_retained_until.expect("the volume is kept");
    assert!(
        (until - (deleted_at + chrono::Duration::days(7)))
            .num_seconds()
            .abs()
            <= 1
    );
    assert_eq!(timer.volume_deleted_at, None);
    assert!(manager.calls().contains(&"delete".to_owned()));

    // Six days later: restored, stopped, same row; start runs it again on
    // its cluster (the manager's start reuses the volume).
    clock.advance(6 * DAY);
    let restored =
        e.db.restore_workspace(e.org, id, None, clock.now())
            .await
            .unwrap();
    assert_eq!(restored.id, id);
    assert_eq!(restored.status, WorkspaceStatus::Stopped);
    assert_eq!(restored.desired_state, DesiredState::Stopped);
    assert!(restored.volume_created);
    let timer = e.db.workspace_timer(e.org, id).await.unwrap().unwrap();
    assert_eq!(timer.volume_retained_until, None);
    e.conductor
        .set_desired_state(e.org, id, DesiredState::Running)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    assert_eq!(manager.calls().last().map(String::as_str), Some("start"));
    assert_eq!(manager.has(id), Some(WorkspaceStatus::Creating));

    // Deleted again; nothing happens before the window ends...
    e.conductor
        .set_desired_state(e.org, id, DesiredState::Deleted)
        .await
        .unwrap();
    e.conductor.reconcile_once().await;
    let purger = VolumePurger::new(e.conductor.clone(), 100);
    clock.advance(7 * DAY - Duration::from_secs(60));
    assert_eq!(purger.purge_once().await.unwrap().purged, 0);
    assert!(!manager.calls().contains(&"purge".to_owned()));

    // ...and after it the volume is deleted and the row says so.
    clock.advance(Duration::from_secs(120));
    let outcome = purger.purge_once().await.unwrap();
    assert_eq!(outcome.purged, 1);
    assert!(manager.calls().contains(&"purge".to_owned()));
    let timer = e.db.workspace_timer(e.org, id).await.unwrap().unwrap();
    let purged_at = timer.volume_deleted_at.expect("recorded");
    let row =
        e.db.find_deleted_workspace_by_name(e.org, "w")
            .await
            .unwrap();
    assert!(
        row.status_message
            .as_deref()
            .is_some_and(|m| m.contains("home volume was deleted")),
        "{row:?}"
    );
    // Once only.
    assert_eq!(purger.purge_once().await.unwrap().purged, 0);

    // A restore after the window is refused, saying why.
    let refused =
        e.db.restore_workspace(e.org, id, None, clock.now())
            .await
            .unwrap_err();
    match &refused {
        DbError::NotRestorable {
            why: RestoreRefusal::WindowEnded { deleted_at, .. },
            ..
        } => assert_eq!(*deleted_at, Some(purged_at)),
        other => panic!("{other:?}"),
    }
    assert!(refused.to_string().contains("retention window ended"));

    // An unknown name is not found.
    assert!(matches!(
        e.db.find_deleted_workspace_by_name(e.org, "nope").await,
        Err(DbError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_new_workspace_may_take_the_name_and_restore_then_needs_another() {
    let e = env().await;
    e.cluster("c", 8000, 32, "eu", Mode::Normal).await;
    let now = e.conductor.clock().now();
    let old = created_then_deleted(&e, "api").await;
    let new = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("api", 1000, 1))
        .await
        .expect("the name is free at once");
    let refused =
        e.db.restore_workspace(e.org, old, None, now)
            .await
            .unwrap_err();
    assert!(
        matches!(
            refused,
            DbError::NotRestorable {
                why: RestoreRefusal::NameTaken,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("--as"), "{refused}");
    let restored =
        e.db.restore_workspace(e.org, old, Some("api-old"), now)
            .await
            .unwrap();
    assert_eq!(restored.name, "api-old");
    assert_eq!(e.get(new.id).await.name, "api");
}

#[tokio::test]
async fn the_retention_window_is_the_organisations_setting() {
    let e = env().await;
    e.cluster("c", 8000, 32, "eu", Mode::Normal).await;
    e.db.set_workspace_policy(
        e.org,
        WorkspacePolicy {
            volume_retention_secs: Some(3600),
            ..WorkspacePolicy::default()
        },
    )
    .await
    .unwrap();
    let clock = e.conductor.clock().clone();
    let at = clock.now();
    let id = created_then_deleted(&e, "w").await;
    let until =
        e.db.workspace_timer(e.org, id)
            .await
            .unwrap()
            .unwrap()
            .volume_retained_until
            .unwrap();
    assert!(
        (until - (at + chrono::Duration::hours(1)))
            .num_seconds()
            .abs()
            <= 1
    );
    clock.advance(Duration::from_secs(3601));
    assert!(matches!(
        e.db.restore_workspace(e.org, id, None, clock.now()).await,
        Err(DbError::NotRestorable {
            why: RestoreRefusal::WindowEnded {
                deleted_at: None,
                ..
            },
            ..
        })
    ));
}

/// A manager from before the grace period: it lacks both new methods.
struct Older(Arc<FakeManager>);

impl KubeManagerRpc for Older {
    async fn create_workspace(&self, s: WorkspaceSpec) -> Result<WorkspaceObservation, HrpcError> {
        self.0.create_workspace(s).await
    }
    async fn start_workspace(&self, s: WorkspaceSpec) -> Result<WorkspaceObservation, HrpcError> {
        self.0.start_workspace(s).await
    }
    async fn stop_workspace(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        self.0.stop_workspace(id).await
    }
    async fn delete_workspace(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        self.0.delete_workspace(id).await
    }
    async fn get_workspace_status(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        self.0.get_workspace_status(id).await
    }
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceObservation>, HrpcError> {
        self.0.list_workspaces().await
    }
    async fn get_cluster_info(&self) -> Result<KubeClusterInfo, HrpcError> {
        self.0.get_cluster_info().await
    }
    async fn delete_workspace_keeping_volume(
        &self,
        _: KeepVolume,
    ) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "no such method"))
    }
    async fn purge_workspace_volume(&self, _: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        Err(HrpcError::new(Code::Unimplemented, "no such method"))
    }
}

#[tokio::test]
async fn an_older_manager_keeps_the_volume_by_stopping_and_purges_by_deleting() {
    let e = env().await;
    let (cluster, inner) = e.cluster("c", 8000, 32, "eu", Mode::Normal).await;
    e.connector.connect(cluster, Arc::new(Older(inner.clone())));
    let clock = e.conductor.clock().clone();
    let id = created_then_deleted(&e, "w").await;
    assert_eq!(inner.calls(), ["create", "stop"], "stop leaves the volume");
    let timer = e.db.workspace_timer(e.org, id).await.unwrap().unwrap();
    assert!(timer.volume_retained_until.is_some());
    clock.advance(8 * DAY);
    let outcome = VolumePurger::new(e.conductor.clone(), 10)
        .purge_once()
        .await
        .unwrap();
    assert_eq!(outcome.purged, 1);
    assert_eq!(inner.calls(), ["create", "stop", "delete"]);
}
