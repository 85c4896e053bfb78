//! Applying a manager's workspace reports to the database.
//!
//! A report names a workspace id; it is applied only if that workspace belongs to
//! the reporting cluster (same organisation, placed on that cluster), so a
//! manager can never change another cluster's workspaces. Whether the reported
//! status may follow the stored one is decided by `lapdev_db`'s transition rules;
//! a report they refuse (for example a late `running` for a workspace already
//! `deleting`) is stale and ignored. A lost optimistic-concurrency race is
//! retried from a fresh read a few times.
//!
//! A `deleted` report ends the workspace when its user asked for that (the row is
//! soft-deleted); otherwise its objects vanished behind Lapdev's back, which is
//! recorded as `failed` so the conductor re-creates them (`deleted` is final).
//!
//! A report is written only when status, reason or message differ from what is
//! stored (or a pod name is new): the manager normalises the kubelet's retry
//! messages, so a pod in image-pull back-off costs no database writes. A report
//! that newly says `failed` makes the workspace due for the conductor at once
//! (`next_attempt_at` cleared, attempt count kept), so a self-repair is announced
//! without waiting for a recheck timer; the repair itself still waits out the
//! persisted backoff. The conductor annotates a failure's message with its retry
//! plan ("…; new pod at 2026-11-30T03:15:42Z (attempt 3)"); the same failure reported again (a
//! snapshot after a reconnect) is not a change and does not undo the annotation.
//!
//! A workspace deleted with its home volume kept is finished by the conductor
//! (which starts the retention window) once its pod is gone. When the pod goes,
//! the manager reports the claim alone as `stopped`; that report makes the
//! workspace due at once, so the deletion ends then rather than at the
//! conductor's next retry.
//!
//! A report older than the observation the row already reflects (by the
//! manager's `observed_at`, see `lapdev_db`'s observation order) is stale and
//! ignored, so a snapshot or a command's reply that was overtaken by a newer
//! report cannot undo it. Since an unchanged report is not written, the stored
//! time is that of the last change the manager reported.

use lapdev_common::status::{DesiredState, WorkspaceStatus};
use lapdev_db::{
    Backoff, Db, DbError, DbResult, EntityKind, WorkspaceTransition, workspace_transition_allowed,
};
use lapdev_kube_rpc::WorkspaceObservation;

use crate::server::ClusterIdentity;

const CONFLICT_RETRIES: usize = 3;

/// Applies one report. `NotFound` for a workspace the cluster does not own.
pub async fn record(
    db: &Db,
    identity: ClusterIdentity,
    report: &WorkspaceObservation,
) -> DbResult<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = db
            .get_workspace(identity.organization_id, report.workspace_id)
            .await?;
        if current.cluster_id != Some(identity.cluster_id) {
            return Err(DbError::NotFound {
                entity: EntityKind::Workspace,
                key: report.workspace_id.to_string(),
            });
        }
        if report.status == WorkspaceStatus::Deleted {
            if current.desired_state == DesiredState::Deleted {
                // Everything is gone, as asked: the row goes too. A workspace the
                // conductor has not moved to `deleting` yet (a create was in
                // flight) passes through it, since `deleted` may not follow every
                // status directly.
                let current = if current.status != WorkspaceStatus::Deleted
                    && !workspace_transition_allowed(current.status, WorkspaceStatus::Deleted)
                {
                    match db
                        .transition_workspace(
                            identity.organization_id,
                            report.workspace_id,
                            current.version,
                            WorkspaceTransition::to(WorkspaceStatus::Deleting),
                        )
                        .await
                    {
                        Ok(ws) => ws,
                        Err(DbError::Conflict { .. }) if attempt < CONFLICT_RETRIES => continue,
                        Err(e) => return Err(e),
                    }
                } else {
                    current
                };
                match db
                    .delete_workspace(
                        identity.organization_id,
                        report.workspace_id,
                        current.version,
                    )
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(DbError::Conflict { .. }) if attempt < CONFLICT_RETRIES => continue,
                    Err(e) => return Err(e),
                }
            }
            // Not asked for: the objects vanished (deleted by hand, a lost
            // namespace). `deleted` is final, so record a failure the conductor
            // repairs instead.
            if current.is_stale_observation(report.observed_at) {
                return Ok(());
            }
            let change = WorkspaceTransition {
                // Newly failed: due for the conductor at once.
                backoff: Some(Backoff {
                    attempts: current.repair_attempts,
                    next_attempt_at: None,
                }),
                ..WorkspaceTransition::to(WorkspaceStatus::Failed)
                    .message("the cluster no longer has any of the workspace's objects")
                    .observed_at(report.observed_at)
            };
            if current.status == WorkspaceStatus::Failed
                || !workspace_transition_allowed(current.status, WorkspaceStatus::Failed)
            {
                return Ok(());
            }
            match write(db, identity, report, &current, change, attempt).await? {
                Written::Done => return Ok(()),
                Written::LostRace => continue,
            }
        }
        if current.desired_state == DesiredState::Deleted
            && current.status == WorkspaceStatus::Deleting
            && current.volume_created
            && report.status == WorkspaceStatus::Stopped
            && !current.is_stale_observation(report.observed_at)
        {
            // The pod of a workspace deleted with its volume kept is gone (the
            // claim alone reads `stopped`): due now, so the conductor finishes
            // the deletion and starts the retention window instead of waiting
            // out its backoff. Status and reason stay.
            if current.next_attempt_at.is_none() {
                return Ok(());
            }
            let change = WorkspaceTransition {
                status_message: Some(
                    "the pod is gone; finishing the deletion (the home volume is kept)".to_owned(),
                ),
                backoff: Some(Backoff {
                    attempts: current.repair_attempts,
                    next_attempt_at: None,
                }),
                ..WorkspaceTransition::to(WorkspaceStatus::Deleting)
                    .reason(current.status_reason.clone())
            };
            match write(db, identity, report, &current, change, attempt).await? {
                Written::Done => return Ok(()),
                Written::LostRace => continue,
            }
        }
        if current.is_stale_observation(report.observed_at) {
            tracing::debug!(
                workspace_id = %report.workspace_id,
                observed_at = %report.observed_at,
                "ignoring a workspace report older than the stored observation"
            );
            return Ok(());
        }
        let unchanged = current.status == report.status
            && current.status_reason == report.reason
            && same_message(
                current.status,
                current.status_message.as_deref(),
                report.message.as_deref(),
            )
            && (report.pod_name.is_none() || current.pod_name == report.pod_name);
        if unchanged {
            return Ok(());
        }
        if !workspace_transition_allowed(current.status, report.status) {
            tracing::debug!(
                workspace_id = %report.workspace_id,
                from = current.status.as_str(),
                to = report.status.as_str(),
                "ignoring a stale workspace report"
            );
            return Ok(());
        }
        let newly_failed =
            report.status == WorkspaceStatus::Failed && current.status != WorkspaceStatus::Failed;
        let change = WorkspaceTransition {
            status_message: report.message.clone(),
            pod_name: report.pod_name.clone(),
            backoff: newly_failed.then_some(Backoff {
                attempts: current.repair_attempts,
                next_attempt_at: None,
            }),
            ..WorkspaceTransition::to(report.status)
                .reason(report.reason.clone())
                .observed_at(report.observed_at)
        };
        match write(db, identity, report, &current, change, attempt).await? {
            Written::Done => return Ok(()),
            Written::LostRace => continue,
        }
    }
}

/// What [`write`] did.
enum Written {
    /// Written, or refused as older than the stored observation: nothing
    /// more to do.
    Done,
    /// Another writer changed the row first: read it again and decide anew.
    LostRace,
}

/// Applies `change` over `current` (the report's row as read in attempt
/// number `attempt`); a lost race is an error once the retries are spent.
async fn write(
    db: &Db,
    identity: ClusterIdentity,
    report: &WorkspaceObservation,
    current: &lapdev_db::Workspace,
    change: WorkspaceTransition,
    attempt: usize,
) -> DbResult<Written> {
    match db
        .transition_workspace(
            identity.organization_id,
            report.workspace_id,
            current.version,
            change,
        )
        .await
    {
        Ok(_) | Err(DbError::StaleObservation { .. }) => Ok(Written::Done),
        Err(DbError::Conflict { .. }) if attempt < CONFLICT_RETRIES => Ok(Written::LostRace),
        Err(e) => Err(e),
    }
}

/// Whether a reported message says nothing new: equal, or a failure the
/// conductor has annotated with its retry plan.
fn same_message(status: WorkspaceStatus, stored: Option<&str>, reported: Option<&str>) -> bool {
    match (stored, reported) {
        (a, b) if a == b => true,
        (Some(stored), Some(reported)) => {
            status == WorkspaceStatus::Failed && stored.contains(&format!("{reported}; "))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_annotated_failure_is_the_same_message() {
        let failed = WorkspaceStatus::Failed;
        let annotated = "pod evicted: low memory; new pod in 40 s (attempt 3)";
        assert!(same_message(failed, Some(annotated), Some("low memory")));
        assert!(same_message(failed, None, None));
        assert!(!same_message(
            failed,
            Some(annotated),
            Some("disk pressure")
        ));
        assert!(!same_message(failed, Some("a"), None));
        assert!(!same_message(
            WorkspaceStatus::Creating,
            Some(annotated),
            Some("low memory")
        ));
    }
}
