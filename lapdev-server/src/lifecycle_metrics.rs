//! Workspace lifecycle metrics, read from the database's change feed (so they
//! count what was written, whoever wrote it: the conductor or a manager report).
//!
//! - `lapdev_workspace_start_seconds` (histogram): from a workspace entering
//!   `creating` (a create, a start or a repair) to `running`, as seen by this
//!   process;
//! - `lapdev_workspace_failures_total{reason}`: workspaces entering `failed`, by
//!   reason. The label is one of the known `WorkspaceReason` strings or `other`
//!   (unknown reasons and none), so its cardinality is bounded;
//! - `lapdev_workspace_repairs_total`: self-repairs (a new pod after one ended).

use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::WorkspaceStatus;
use lapdev_db::{Change, Db, WorkspaceChange};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

/// The histogram's name (its buckets are set in [`crate::metrics`]).
pub const WORKSPACE_START_SECONDS: &str = "lapdev_workspace_start_seconds";

/// The label value for a failure reason: known reasons as themselves, anything
/// else `other`.
pub fn reason_label(reason: Option<&WorkspaceReason>) -> &'static str {
    reason
        .and_then(|r| WorkspaceReason::KNOWN.iter().find(|k| *k == r))
        .map_or("other", |k| k.as_str())
}

/// Records lifecycle metrics until `shutdown` resolves.
pub async fn run(db: Db, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut changes = db.subscribe();
    let mut tracker = Tracker::default();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            change = changes.recv() => match change {
                Ok(Change::Workspace(w)) => tracker.apply(&w),
                // Missed events: start times may be wrong, so forget them.
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => tracker.started.clear(),
                Ok(_) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Start times of workspaces on their way to `running`.
#[derive(Default)]
struct Tracker {
    started: HashMap<Uuid, Instant>,
}

impl Tracker {
    fn apply(&mut self, w: &WorkspaceChange) {
        let entered = |s| w.status == s && w.previous_status != Some(s);
        if entered(WorkspaceStatus::Creating) {
            self.started.insert(w.workspace_id, Instant::now());
        }
        if entered(WorkspaceStatus::Running)
            && let Some(at) = self.started.remove(&w.workspace_id)
        {
            metrics::histogram!(WORKSPACE_START_SECONDS).record(at.elapsed().as_secs_f64());
        }
        if entered(WorkspaceStatus::Failed) {
            metrics::counter!(
                "lapdev_workspace_failures_total",
                "reason" => reason_label(w.reason.as_ref())
            )
            .increment(1);
        }
        if w.repair {
            metrics::counter!("lapdev_workspace_repairs_total").increment(1);
        }
        if matches!(
            w.status,
            WorkspaceStatus::Deleted | WorkspaceStatus::Stopped
        ) {
            self.started.remove(&w.workspace_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_bounded() {
        for r in WorkspaceReason::KNOWN {
            assert_eq!(reason_label(Some(r)), r.as_str());
        }
        assert_eq!(
            reason_label(Some(&WorkspaceReason::Other("Surprise".into()))),
            "other"
        );
        assert_eq!(reason_label(None), "other");
    }
}
