//! Idle auto-stop and lifetimes on the server: which workspaces are in use
//! ([`activity`]: the sessions through this server), the policy and
//! keep-alive API ([`api`]), and the periodic sweep ([`IdleSweeper`], around
//! the conductor's [`TimerSweeper`], which holds the rules: see
//! `lapdev_conductor::idle`), and the purge of kept home volumes after their
//! retention window (`lapdev_conductor::retention`). The sweep runs every
//! [`IdleConfig::sweep_interval`] and counts its stops in
//! `lapdev_workspace_timer_stops_total{kind}`.

pub mod activity;
pub mod api;

use std::sync::Arc;
use std::time::Duration;

use lapdev_conductor::Conductor;
use lapdev_conductor::idle::{SessionActivity, TimerSweeper};
use lapdev_conductor::retention::{PurgeOutcome, VolumePurger};
use lapdev_db::{DbResult, TimerKind};

pub use activity::{InUse, WorkspaceActivity};
pub use lapdev_conductor::idle::SweepOutcome;

impl SessionActivity for WorkspaceActivity {
    fn open_sessions(&self, workspace_id: uuid::Uuid) -> usize {
        WorkspaceActivity::open_sessions(self, workspace_id)
    }
}

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

/// Stops workspaces whose deadlines have passed ([`TimerSweeper`]), counting
/// the stops in `lapdev_workspace_timer_stops_total{kind}`, and deletes the
/// kept home volumes whose retention window has ended ([`VolumePurger`]).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct IdleSweeper {
    sweeper: TimerSweeper,
    purger: VolumePurger,
    config: IdleConfig,
}

impl IdleSweeper {
    /// A sweeper of `conductor`'s workspaces, asking `activity` which are in
    /// use.
    pub fn new(conductor: Conductor, activity: WorkspaceActivity, config: IdleConfig) -> Self {
        Self {
            purger: VolumePurger::new(conductor.clone(), config.batch),
            sweeper: TimerSweeper::new(conductor, Arc::new(activity), config.batch),
            config,
        }
    }

    /// Acts on every deadline due now.
    pub async fn sweep_once(&self) -> DbResult<SweepOutcome> {
        let outcome = self.sweeper.sweep_once().await?;
        for (kind, n) in [
            (TimerKind::Idle, outcome.idle_stopped),
            (TimerKind::Lifetime, outcome.lifetime_stopped),
        ] {
            if n > 0 {
                metrics::counter!("lapdev_workspace_timer_stops_total", "kind" => kind.as_str())
                    .increment(n as u64);
            }
        }
        Ok(outcome)
    }

    /// Deletes (a batch of) the kept volumes whose window has ended.
    pub async fn purge_volumes_once(&self) -> DbResult<PurgeOutcome> {
        self.purger.purge_once().await
    }

    /// Sweeps (and purges) every [`IdleConfig::sweep_interval`] until
    /// `shutdown` resolves.
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
                    if let Err(e) = self.purge_volumes_once().await {
                        tracing::warn!(error = %e, "kept-volume purge failed");
                    }
                }
            }
        }
    }
}
