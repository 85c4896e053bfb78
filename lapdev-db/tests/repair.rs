//! Reasons, persisted backoff, volume ownership, one placement, tombstones, the
//! cluster-deletion/placement exclusion and the change feed, on PostgreSQL and
//! SQLite.

use chrono::{Duration, Utc};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::{DesiredState, SecurityProfile, WorkspaceStatus};
use lapdev_db::test_support::TestDatabase;
use lapdev_db::{
    Backoff, Change, Db, DbError, NewCluster, NewUser, NewWorkspace, Workspace, WorkspaceTransition,
};
use uuid::Uuid;

macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let test = super::TestDatabase::postgres().await;
                    super::$name(test.db().clone()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let test = super::TestDatabase::sqlite().await;
                    super::$name(test.db().clone()).await;
                }
            }
        )+
    };
}

on_both!(
    reason_and_backoff_are_stored,
    a_workspace_with_a_volume_is_never_placed_again,
    of_two_placements_exactly_one_wins,
    forgetting_leaves_a_tombstone,
    a_cluster_with_a_placement_is_not_deleted,
    changes_are_published_once,
    a_transition_that_clears_the_next_attempt_is_published_due,
    security_profile_is_stored,
);

async fn setup(db: &Db) -> (Uuid, Uuid, Uuid) {
    let org = db.create_organization("acme").await.unwrap().id;
    let user = db
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
        .create_cluster(org, NewCluster::named("c1"))
        .await
        .unwrap()
        .id;
    (org, user, cluster)
}

async fn scheduling(db: &Db, org: Uuid, user: Uuid, name: &str) -> Workspace {
    let ws = db
        .create_workspace(
            org,
            NewWorkspace {
                owner_id: user,
                name: name.into(),
                image: "img".into(),
                cpu_millis: 100,
                memory_bytes: 100,
                storage_bytes: 100,
                desired_state: DesiredState::Running,
                placement_cluster: None,
                placement_region: None,
            },
        )
        .await
        .unwrap();
    db.transition_workspace(
        org,
        ws.id,
        ws.version,
        WorkspaceTransition::to(WorkspaceStatus::Scheduling),
    )
    .await
    .unwrap()
}

async fn reason_and_backoff_are_stored(db: Db) {
    let (org, user, cluster) = setup(&db).await;
    let ws = scheduling(&db, org, user, "w").await;
    let ws = db
        .place_workspace(org, ws.id, ws.version, cluster, "ns")
        .await
        .unwrap();
    let later = Utc::now() + Duration::seconds(40);
    let failed = db
        .transition_workspace(
            org,
            ws.id,
            ws.version,
            WorkspaceTransition {
                backoff: Some(Backoff {
                    attempts: 3,
                    next_attempt_at: Some(later),
                }),
                ..WorkspaceTransition::to(WorkspaceStatus::Failed)
                    .message("pod evicted")
                    .reason(Some(WorkspaceReason::Evicted))
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.status_reason, Some(WorkspaceReason::Evicted));
    assert_eq!(failed.repair_attempts, 3);
    assert!(failed.next_attempt_at.is_some());
    // Not due before its time, due after.
    let due = |at| {
        let db = db.clone();
        async move {
            db.list_unsettled_workspaces(at)
                .await
                .unwrap()
                .iter()
                .any(|w| w.id == ws.id)
        }
    };
    assert!(!due(Utc::now()).await);
    assert!(due(later + Duration::seconds(1)).await);
    // An unknown reason read back is kept, not refused.
    let other = db
        .transition_workspace(
            org,
            ws.id,
            failed.version,
            WorkspaceTransition::to(WorkspaceStatus::Failed)
                .reason(Some(WorkspaceReason::Other("SomethingNew".into()))),
        )
        .await
        .unwrap();
    assert_eq!(
        other.status_reason,
        Some(WorkspaceReason::Other("SomethingNew".into()))
    );
    assert_eq!(other.repair_attempts, 3, "kept when not given");
    // Running resets the backoff and marks the volume.
    let creating = db
        .transition_workspace(
            org,
            ws.id,
            other.version,
            WorkspaceTransition::to(WorkspaceStatus::Creating),
        )
        .await
        .unwrap();
    let running = db
        .transition_workspace(
            org,
            ws.id,
            creating.version,
            WorkspaceTransition::to(WorkspaceStatus::Running),
        )
        .await
        .unwrap();
    assert_eq!(running.repair_attempts, 0);
    assert_eq!(running.next_attempt_at, None);
    assert_eq!(running.status_reason, None);
    assert!(running.volume_created);
}

async fn a_workspace_with_a_volume_is_never_placed_again(db: Db) {
    let (org, user, cluster) = setup(&db).await;
    let other = db
        .create_cluster(org, NewCluster::named("c2"))
        .await
        .unwrap()
        .id;
    let ws = scheduling(&db, org, user, "w").await;
    let ws = db
        .place_workspace(org, ws.id, ws.version, cluster, "ns")
        .await
        .unwrap();
    let failed = db
        .transition_workspace(
            org,
            ws.id,
            ws.version,
            WorkspaceTransition {
                volume_created: true,
                ..WorkspaceTransition::to(WorkspaceStatus::Failed)
            },
        )
        .await
        .unwrap();
    assert!(failed.volume_created);
    let err = db
        .place_workspace(org, ws.id, failed.version, other, "ns")
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::InvalidInput { .. }), "{err}");
    assert_eq!(
        db.get_workspace(org, ws.id).await.unwrap().cluster_id,
        Some(cluster)
    );
}

async fn of_two_placements_exactly_one_wins(db: Db) {
    let (org, user, cluster) = setup(&db).await;
    let other = db
        .create_cluster(org, NewCluster::named("c2"))
        .await
        .unwrap()
        .id;
    let ws = scheduling(&db, org, user, "w").await;
    // Both placers read the same row; the first write wins, the second (same
    // version, and the workspace is `creating` now) is refused.
    db.place_workspace(org, ws.id, ws.version, cluster, "ns")
        .await
        .unwrap();
    let err = db
        .place_workspace(org, ws.id, ws.version, other, "ns")
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Conflict { .. }), "{err}");
    // Re-reading does not help either: a `creating` workspace is not placeable.
    let current = db.get_workspace(org, ws.id).await.unwrap();
    let err = db
        .place_workspace(org, ws.id, current.version, other, "ns")
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::InvalidTransition { .. }), "{err}");
    assert_eq!(
        db.get_workspace(org, ws.id).await.unwrap().cluster_id,
        Some(cluster)
    );
}

async fn forgetting_leaves_a_tombstone(db: Db) {
    let (org, user, cluster) = setup(&db).await;
    let ws = scheduling(&db, org, user, "w").await;
    let ws = db
        .place_workspace(org, ws.id, ws.version, cluster, "ns")
        .await
        .unwrap();
    let tomb = db.forget_workspace(org, ws.id, ws.version).await.unwrap();
    assert_eq!(tomb.status, WorkspaceStatus::Deleted);
    assert_eq!(tomb.status_reason, Some(WorkspaceReason::ClusterGone));
    assert!(tomb.forgotten_at.is_some() && tomb.deleted_at.is_some());
    assert!(
        db.get_workspace(org, ws.id).await.is_err(),
        "gone for users"
    );
    assert_eq!(
        db.clusters_with_forgotten_workspaces().await.unwrap(),
        vec![cluster]
    );
    assert_eq!(
        db.list_forgotten_workspaces(cluster).await.unwrap()[0].id,
        ws.id
    );
    // The name is free again, and the cluster can go.
    scheduling(&db, org, user, "w").await;
    db.clear_forgotten(ws.id).await.unwrap();
    assert!(
        db.list_forgotten_workspaces(cluster)
            .await
            .unwrap()
            .is_empty()
    );
    // An unplaced workspace has nothing anywhere: no tombstone.
    let unplaced = db.get_workspace_by_name(org, "w").await.unwrap();
    let gone = db
        .forget_workspace(org, unplaced.id, unplaced.version)
        .await
        .unwrap();
    assert_eq!(gone.forgotten_at, None);
    db.delete_cluster(org, cluster).await.unwrap();
}

async fn a_cluster_with_a_placement_is_not_deleted(db: Db) {
    let (org, user, cluster) = setup(&db).await;
    let ws = scheduling(&db, org, user, "w").await;
    db.place_workspace(org, ws.id, ws.version, cluster, "ns")
        .await
        .unwrap();
    assert!(matches!(
        db.delete_cluster(org, cluster).await,
        Err(DbError::InUse { .. })
    ));
    // And the other order: a deleted cluster takes no placement.
    let empty = db
        .create_cluster(org, NewCluster::named("c2"))
        .await
        .unwrap()
        .id;
    db.delete_cluster(org, empty).await.unwrap();
    let ws2 = scheduling(&db, org, user, "w2").await;
    assert!(matches!(
        db.place_workspace(org, ws2.id, ws2.version, empty, "ns")
            .await,
        Err(DbError::NotFound { .. })
    ));
    assert_eq!(
        db.get_workspace(org, ws2.id).await.unwrap().cluster_id,
        None
    );
}

async fn changes_are_published_once(db: Db) {
    let mut feed = db.subscribe();
    let (org, user, cluster) = setup(&db).await;
    let ws = scheduling(&db, org, user, "w").await;
    db.place_workspace(org, ws.id, ws.version, cluster, "ns")
        .await
        .unwrap();
    let token = db
        .create_cluster_token(
            org,
            cluster,
            lapdev_db::NewClusterToken {
                name: "t".into(),
                created_by: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    db.revoke_cluster_token(org, token.token.id).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(change) = feed.try_recv() {
        seen.push(change);
    }
    let kinds: Vec<String> = seen
        .iter()
        .map(|c| match c {
            Change::Workspace(w) => format!("workspace {}", w.status),
            Change::ClusterChanged { .. } => "cluster changed".into(),
            Change::ClusterDeleted { .. } => "cluster deleted".into(),
            Change::TokenRevoked { .. } => "token revoked".into(),
            Change::Revoked(_) => "revoked".into(),
            Change::Resync => "resync".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "cluster changed",
            "workspace pending",
            "workspace scheduling",
            "workspace creating",
            "token revoked"
        ]
    );
}

/// `due` tells the conductor to look now: only a transition whose backoff
/// clears the next attempt time says it (not the reset `running` implies).
async fn a_transition_that_clears_the_next_attempt_is_published_due(db: Db) {
    let (org, user, cluster) = setup(&db).await;
    let ws = scheduling(&db, org, user, "w").await;
    let ws = db
        .place_workspace(org, ws.id, ws.version, cluster, "ns")
        .await
        .unwrap();
    let mut feed = db.subscribe();
    let due_of = |change: WorkspaceTransition, version: i64| {
        let db = db.clone();
        async move {
            let written = db
                .transition_workspace(org, ws.id, version, change)
                .await
                .unwrap();
            (written.version, written.next_attempt_at)
        }
    };
    let (v, _) = due_of(
        WorkspaceTransition::to(WorkspaceStatus::Running),
        ws.version,
    )
    .await;
    let later = Backoff {
        attempts: 1,
        next_attempt_at: Some(Utc::now() + Duration::seconds(60)),
    };
    let (v, next) = due_of(
        WorkspaceTransition {
            backoff: Some(later),
            ..WorkspaceTransition::to(WorkspaceStatus::Failed)
        },
        v,
    )
    .await;
    assert!(next.is_some());
    let now = Backoff {
        attempts: 1,
        next_attempt_at: None,
    };
    let (_, next) = due_of(
        WorkspaceTransition {
            backoff: Some(now),
            ..WorkspaceTransition::to(WorkspaceStatus::Failed)
        },
        v,
    )
    .await;
    assert!(next.is_none());
    let mut due = Vec::new();
    while let Ok(change) = feed.try_recv() {
        if let Change::Workspace(w) = change {
            due.push((w.status.to_string(), w.due));
        }
    }
    assert_eq!(
        due,
        [
            ("running".to_owned(), false),
            ("failed".to_owned(), false),
            ("failed".to_owned(), true),
        ]
    );
}

async fn security_profile_is_stored(db: Db) {
    let (org, _, cluster) = setup(&db).await;
    assert_eq!(
        db.get_cluster(org, cluster).await.unwrap().security_profile,
        SecurityProfile::Baseline
    );
    db.set_cluster_security_profile(org, cluster, SecurityProfile::Restricted)
        .await
        .unwrap();
    assert_eq!(
        db.get_cluster(org, cluster).await.unwrap().security_profile,
        SecurityProfile::Restricted
    );
    let mut new = NewCluster::named("r");
    new.security_profile = SecurityProfile::Restricted;
    assert_eq!(
        db.create_cluster(org, new).await.unwrap().security_profile,
        SecurityProfile::Restricted
    );
}
