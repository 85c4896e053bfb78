//! Which workspaces are in use: the open shell, exec, port-forward and
//! SSH-proxy sessions through this server, per workspace.
//!
//! A session registers when its stream opens and unregisters when it ends;
//! both moments record use in the database ([`lapdev_db::Db::touch_workspace`]),
//! so the idle deadline counts from the end of the last session and survives
//! a restart. While a session is open the idle sweep postpones the deadline
//! instead of stopping the workspace. The registry is per process, like
//! `access::LiveSessions`: with several replicas each one postpones for its
//! own sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapdev_conductor::backoff::Clock;
use lapdev_db::Db;
use uuid::Uuid;

/// Open sessions per workspace. Cheap to clone (shared).
#[derive(Clone)]
pub struct WorkspaceActivity {
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
    db: Db,
    clock: Clock,
}

impl std::fmt::Debug for WorkspaceActivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceActivity").finish_non_exhaustive()
    }
}

impl WorkspaceActivity {
    /// A registry recording use in `db` at `clock`'s time.
    pub fn new(db: Db, clock: Clock) -> Self {
        Self {
            open: Arc::default(),
            db,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, usize>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session into the workspace and records the use; it counts
    /// as open until [`InUse::end`] (or the guard's drop).
    pub async fn open(&self, org_id: Uuid, workspace_id: Uuid) -> InUse {
        *self.lock().entry(workspace_id).or_default() += 1;
        let guard = InUse {
            activity: self.clone(),
            org_id,
            workspace_id,
            ended: false,
        };
        self.touch(org_id, workspace_id).await;
        guard
    }

    /// How many sessions into the workspace are open in this process.
    pub fn open_sessions(&self, workspace_id: Uuid) -> usize {
        self.lock().get(&workspace_id).copied().unwrap_or(0)
    }

    fn release(&self, workspace_id: Uuid) {
        let mut open = self.lock();
        if let Some(n) = open.get_mut(&workspace_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&workspace_id);
            }
        }
    }

    async fn touch(&self, org_id: Uuid, workspace_id: Uuid) {
        if let Err(e) = self
            .db
            .touch_workspace(org_id, workspace_id, self.clock.now())
            .await
        {
            tracing::warn!(workspace = %workspace_id, error = %e, "cannot record workspace use");
        }
    }
}

/// A session's registration.
#[derive(Debug)]
pub struct InUse {
    activity: WorkspaceActivity,
    org_id: Uuid,
    workspace_id: Uuid,
    ended: bool,
}

impl InUse {
    /// Unregisters the session and records the use (the idle timeout counts
    /// from now).
    pub async fn end(mut self) {
        self.ended = true;
        self.activity.release(self.workspace_id);
        self.activity.touch(self.org_id, self.workspace_id).await;
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.activity.release(self.workspace_id);
        // Dropped without `end` (the task was cancelled): record the use in
        // the background if a runtime is still there.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let activity = self.activity.clone();
            let (org, ws) = (self.org_id, self.workspace_id);
            rt.spawn(async move { activity.touch(org, ws).await });
        }
    }
}
