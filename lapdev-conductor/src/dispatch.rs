//! The reconciler's dispatcher: runs one step per workspace, at most
//! [`ConductorConfig::max_concurrent_steps`](crate::ConductorConfig) at a time
//! and at most `max_concurrent_steps_per_org` for any one organisation,
//! organisations served in turn.
//!
//! A round of the reconciler only *queues* the workspaces that are due; it never
//! waits for their steps. A step runs as its own task and frees its slot when it
//! ends, which starts the next queued step. So a manager whose calls take their
//! whole deadline (30 s) holds only the slots of its own organisation's
//! workspaces: other organisations keep the rest and are reconciled on time. A
//! workspace is queued or running at most once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use lapdev_db::Workspace;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{Conductor, lock};

/// Queued and running steps, by organisation.
pub(crate) struct Dispatcher {
    state: Mutex<State>,
    /// Bumped whenever a step ends (what [`Conductor::reconcile_once`] waits on).
    finished: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Workspaces waiting for a slot, per organisation.
    queued: HashMap<Uuid, VecDeque<Workspace>>,
    /// Organisations with queued workspaces, in the order they are served next.
    turn: VecDeque<Uuid>,
    /// Every workspace queued or running.
    busy: HashSet<Uuid>,
    /// Running steps per organisation.
    running: HashMap<Uuid, usize>,
    running_total: usize,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            finished: watch::channel(0).0,
        }
    }
}

impl Dispatcher {
    /// Whether `workspace_id` is queued or running.
    pub(crate) fn is_busy(&self, workspace_id: Uuid) -> bool {
        lock(&self.state).busy.contains(&workspace_id)
    }
}

impl Conductor {
    /// Queues a step for each workspace not already queued or running, starts
    /// what the caps allow, and returns the ids it queued.
    pub(crate) fn enqueue(&self, workspaces: Vec<Workspace>) -> Vec<Uuid> {
        let mut queued = Vec::new();
        {
            let mut state = lock(&self.inner.dispatch.state);
            for ws in workspaces {
                if !state.busy.insert(ws.id) {
                    continue;
                }
                queued.push(ws.id);
                let org = ws.organization_id;
                let queue = state.queued.entry(org).or_default();
                queue.push_back(ws);
                if queue.len() == 1 && !state.turn.contains(&org) {
                    state.turn.push_back(org);
                }
            }
        }
        self.pump(&queued);
        queued
    }

    /// Waits until none of `ids` is queued or running.
    pub(crate) async fn wait_finished(&self, ids: &[Uuid]) {
        let mut finished = self.inner.dispatch.finished.subscribe();
        loop {
            finished.borrow_and_update();
            if !ids.iter().any(|id| self.inner.dispatch.is_busy(*id)) {
                return;
            }
            if finished.changed().await.is_err() {
                return;
            }
        }
    }

    /// Starts queued steps while slots are free: organisations in turn, each
    /// below its own cap. `fresh` are the workspaces queued just now (read from
    /// the database this instant).
    fn pump(&self, fresh: &[Uuid]) {
        let max_total = self.inner.config.max_concurrent_steps.max(1);
        let max_org = self.inner.config.max_concurrent_steps_per_org.max(1);
        let mut start = Vec::new();
        {
            let mut state = lock(&self.inner.dispatch.state);
            let mut skipped = 0;
            while state.running_total < max_total && skipped < state.turn.len() {
                let Some(org) = state.turn.pop_front() else {
                    break;
                };
                if state.running.get(&org).copied().unwrap_or(0) >= max_org {
                    // At its own cap: its turn comes again when a step ends.
                    state.turn.push_back(org);
                    skipped += 1;
                    continue;
                }
                skipped = 0;
                let Some(ws) = state.queued.get_mut(&org).and_then(VecDeque::pop_front) else {
                    continue;
                };
                if state.queued.get(&org).is_some_and(|q| !q.is_empty()) {
                    state.turn.push_back(org);
                } else {
                    state.queued.remove(&org);
                }
                *state.running.entry(org).or_default() += 1;
                state.running_total += 1;
                start.push(ws);
            }
        }
        for ws in start {
            let this = self.clone();
            let waited = !fresh.contains(&ws.id);
            tokio::spawn(async move {
                let (id, org) = (ws.id, ws.organization_id);
                // Ends the step's bookkeeping even if the step panics.
                let _done = StepDone {
                    conductor: this.clone(),
                    id,
                    org,
                };
                this.drive_fresh(ws, waited).await;
            });
        }
    }

    /// Drives `ws` unless its row changed while it waited in the queue (then
    /// it may no longer be due: the next round lists it again if it is).
    async fn drive_fresh(&self, ws: Workspace, waited: bool) {
        if waited {
            match self.inner.db.get_workspace(ws.organization_id, ws.id).await {
                Ok(current) if current.version == ws.version => {}
                _ => return,
            }
        }
        self.drive(ws).await;
    }
}

/// Frees a step's slot and starts the next one when dropped.
struct StepDone {
    conductor: Conductor,
    id: Uuid,
    org: Uuid,
}

impl Drop for StepDone {
    fn drop(&mut self) {
        let dispatch = &self.conductor.inner.dispatch;
        {
            let mut state = lock(&dispatch.state);
            state.busy.remove(&self.id);
            state.running_total = state.running_total.saturating_sub(1);
            if let Some(n) = state.running.get_mut(&self.org) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.running.remove(&self.org);
                }
            }
        }
        dispatch.finished.send_modify(|n| *n = n.wrapping_add(1));
        self.conductor.pump(&[]);
    }
}
