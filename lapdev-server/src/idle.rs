//! Idle auto-stop and lifetimes: the sweep that stops workspaces whose idle or
//! lifetime deadline has passed.
//!
//! The deadlines live in the database (`lapdev_db`'s `timers.rs`): armed when
//! a workspace is created or started, pushed by use ([`activity`]) and by
//! `lapdev workspace keep-alive` ([`api`]), cleared when it stops. Every
//! [`IdleConfig::sweep_interval`] the [`IdleSweeper`] reads the due deadlines
//! through their indexes and, for each one:
//! - an idle deadline of a workspace with a session open in this process is
//!   postponed by its idle timeout (an open session keeps it running);
//! - otherwise the workspace is stopped: its desired state becomes `stopped`,
//!   the reason (`IdleStopped`, `LifetimeExpired`) is recorded beside the
//!   timers, and the conductor is woken to stop the pod.
//!
//! The stop is conditional on the deadline the sweep read
//! ([`lapdev_db::Db::stop_for_timer`]), so two sweeps, a restart in the
//! middle, or a keep-alive racing the sweep never stop a workspace twice or
//! stop one that was just kept alive. Time comes from the conductor's
//! [`Clock`], which tests move forward instead of sleeping.

pub mod activity;
pub mod api;

use std::time::Duration;

use lapdev_conductor::Conductor;
use lapdev_conductor::backoff::Clock;
use lapdev_db::{Db, DbResult, TimerKind};

pub use activity::{InUse, WorkspaceActivity};

/// Settings of the sweep.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// How often due deadlines are looked for (the longest a stop lags its
    /// deadline, plus the sweep's own time).
    pub sweep_interval: Duration,
    /// Due deadlines read per query.
    pub batch: u64,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_secs(15),
            batch: 500,
        }
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
    /// For each stop, how long after its deadline it happened.
    pub stop_delays: Vec<Duration>,
}

/// Stops workspaces whose deadlines have passed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IdleSweeper {
    db: Db,
    conductor: Conductor,
    activity: WorkspaceActivity,
    config: IdleConfig,
}

impl IdleSweeper {
    /// A sweeper on `db`, waking `conductor` after stops, asking `activity`
    /// which workspaces are in use.
    pub fn new(
        db: Db,
        conductor: Conductor,
        activity: WorkspaceActivity,
        config: IdleConfig,
    ) -> Self {
        Self {
            db,
            conductor,
            activity,
            config,
        }
    }

    fn clock(&self) -> &Clock {
        self.conductor.clock()
    }

    /// Acts on every deadline due now.
    pub async fn sweep_once(&self) -> DbResult<SweepOutcome> {
        let mut outcome = SweepOutcome::default();
        loop {
            let now = self.clock().now();
            let due = self.db.due_workspace_timers(now, self.config.batch).await?;
            let full = due.len() as u64 >= self.config.batch;
            let mut acted = 0;
            for timer in &due {
                if timer.kind == TimerKind::Idle
                    && self.activity.open_sessions(timer.workspace_id) > 0
                {
                    let timeout = self
                        .db
                        .effective_idle_timeout(timer.organization_id, timer.workspace_id)
                        .await?
                        .unwrap_or(0)
                        .max(1);
                    let next = now + chrono::Duration::seconds(timeout);
                    if self.db.postpone_idle_deadline(timer, next).await? {
                        outcome.postponed += 1;
                        acted += 1;
                    }
                    continue;
                }
                let at = self.clock().now();
                if let Some(ws) = self.db.stop_for_timer(timer, at).await? {
                    acted += 1;
                    match timer.kind {
                        TimerKind::Idle => outcome.idle_stopped += 1,
                        TimerKind::Lifetime => outcome.lifetime_stopped += 1,
                    }
                    outcome
                        .stop_delays
                        .push((at - timer.deadline).to_std().unwrap_or_default());
                    metrics::counter!(
                        "lapdev_workspace_timer_stops_total",
                        "kind" => timer.kind.as_str()
                    )
                    .increment(1);
                    tracing::info!(
                        workspace = %ws.name, organization = %ws.organization_id,
                        reason = %timer.kind.reason(), deadline = %timer.deadline,
                        "stopping workspace"
                    );
                }
            }
            // Another batch only when this one was full and made progress
            // (a batch of rows someone else changed meanwhile is re-read).
            if !full || acted == 0 {
                break;
            }
        }
        if outcome.idle_stopped + outcome.lifetime_stopped > 0 {
            self.conductor.wake();
        }
        Ok(outcome)
    }

    /// Sweeps every [`IdleConfig::sweep_interval`] until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // The first sweep one interval after the start, not at once.
        let period = self.config.sweep_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.sweep_once().await {
                        tracing::warn!(error = %e, "idle and lifetime sweep failed");
                    }
                }
            }
        }
    }
}
