//! Idle auto-stop and lifetimes: the sweep that stops workspaces whose idle or
//! lifetime deadline has passed.
//!
//! The deadlines live in the database (`lapdev_db`'s `timers.rs`): armed when
//! a workspace is created or started, pushed by use and by keep-alive, cleared
//! when it stops. [`TimerSweeper::sweep_once`] reads the due deadlines through
//! their indexes and, for each one:
//! - an idle deadline of a workspace with a session open
//!   ([`SessionActivity`]) is postponed by its idle timeout (an open session
//!   keeps it running);
//! - otherwise the workspace is stopped: its desired state becomes `stopped`,
//!   the reason (`IdleStopped`, `LifetimeExpired`) is recorded beside the
//!   timers, and the reconciler is woken to stop the pod.
//!
//! Before that, workspaces whose lifetime notice is due (some time before the
//! lifetime deadline: `lapdev_db`'s `notice.rs`) are told, once, when they
//! will stop and that keep-alive cannot extend a lifetime.
//!
//! The stops of one batch are one transaction, each conditional on the
//! deadline the sweep read ([`lapdev_db::Db::stop_for_timers`]), so two sweeps (two replicas, or a
//! restart in the middle) or a keep-alive racing the sweep never stop a
//! workspace twice or stop one that was just kept alive. Time comes from the
//! conductor's [`Clock`](crate::backoff::Clock).

use std::sync::Arc;
use std::time::Duration;

use lapdev_db::{DbResult, TimerKind};
use uuid::Uuid;

use crate::Conductor;

/// Which workspaces have sessions open (the server's access registry).
pub trait SessionActivity: Send + Sync + 'static {
    /// Sessions into `workspace_id` open now.
    fn open_sessions(&self, workspace_id: Uuid) -> usize;
}

/// No session is ever open (tests and benchmarks without an access layer).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSessions;

impl SessionActivity for NoSessions {
    fn open_sessions(&self, _: Uuid) -> usize {
        0
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Workspaces stopped as idle.
    pub idle_stopped: usize,
    /// Workspaces stopped at the end of their lifetime.
    pub lifetime_stopped: usize,
    /// Idle deadlines postponed because a session was open.
    pub postponed: usize,
    /// Workspaces told that their lifetime ends soon.
    pub noticed: usize,
    /// For each stop, how long after its deadline it happened.
    pub stop_delays: Vec<Duration>,
}

/// Stops workspaces whose deadlines have passed. Cheap to clone.
#[derive(Clone)]
pub struct TimerSweeper {
    conductor: Conductor,
    activity: Arc<dyn SessionActivity>,
    batch: u64,
}

impl std::fmt::Debug for TimerSweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerSweeper")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl TimerSweeper {
    /// A sweeper for `conductor`'s workspaces, asking `activity` which are in
    /// use, reading `batch` due deadlines per query.
    pub fn new(conductor: Conductor, activity: Arc<dyn SessionActivity>, batch: u64) -> Self {
        Self {
            conductor,
            activity,
            batch: batch.max(1),
        }
    }

    /// Acts on every deadline due now.
    pub async fn sweep_once(&self) -> DbResult<SweepOutcome> {
        let db = &self.conductor.inner.db;
        let clock = self.conductor.clock();
        let mut outcome = SweepOutcome::default();
        // Notices first: a workspace whose notice and stop are both due is
        // told, then stopped.
        loop {
            let due = db.due_lifetime_notices(clock.now(), self.batch).await?;
            let mut given = 0;
            for notice in &due {
                if let Some((ws, deadline)) = db.give_lifetime_notice(notice, clock.now()).await? {
                    given += 1;
                    tracing::info!(
                        workspace = %ws.name, organization = %ws.organization_id,
                        %deadline, "the workspace's lifetime ends soon"
                    );
                }
            }
            outcome.noticed += given;
            if (due.len() as u64) < self.batch || given == 0 {
                break;
            }
        }
        loop {
            let now = clock.now();
            let due = db.due_workspace_timers(now, self.batch).await?;
            let full = due.len() as u64 >= self.batch;
            let mut acted = 0;
            let mut to_stop = Vec::with_capacity(due.len());
            for timer in &due {
                if timer.kind == TimerKind::Idle
                    && self.activity.open_sessions(timer.workspace_id) > 0
                {
                    let timeout = db
                        .effective_idle_timeout(timer.organization_id, timer.workspace_id)
                        .await?
                        .unwrap_or(0)
                        .max(1);
                    let next = now + chrono::Duration::seconds(timeout);
                    if db.postpone_idle_deadline(timer, next).await? {
                        outcome.postponed += 1;
                        acted += 1;
                    }
                    continue;
                }
                to_stop.push(*timer);
            }
            // One transaction for the batch's stops.
            let at = clock.now();
            for (timer, ws) in db.stop_for_timers(&to_stop, at).await? {
                acted += 1;
                match timer.kind {
                    TimerKind::Idle => outcome.idle_stopped += 1,
                    TimerKind::Lifetime => outcome.lifetime_stopped += 1,
                }
                outcome
                    .stop_delays
                    .push((at - timer.deadline).to_std().unwrap_or_default());
                tracing::info!(
                    workspace = %ws.name, organization = %ws.organization_id,
                    reason = %timer.kind.reason(), deadline = %timer.deadline,
                    "stopping workspace"
                );
            }
            // Another batch only when this one was full and made progress
            // (rows someone else changed meanwhile are not due any more).
            if !full || acted == 0 {
                break;
            }
        }
        if outcome.idle_stopped + outcome.lifetime_stopped > 0 {
            self.conductor.wake();
        }
        Ok(outcome)
    }
}
