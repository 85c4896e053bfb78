//! This process as one replica among several on a shared PostgreSQL
//! database, or as the only one on SQLite.
//!
//! On PostgreSQL the server registers itself in the replica registry
//! (`lapdev_db::replica`) once it listens, renews its lease on every heartbeat
//! and registers again under a new generation when it finds the lease lost
//! (it was paused or cut off from the database past its lease); what it
//! claimed under the lost lease is given up at once
//! ([`ReplicaKeeper::on_lease_lost`]: the server closes those clusters'
//! tunnels so their managers dial again and claim afresh). `/readyz`
//! passes only while the replica holds a lease ([`ReplicaStatus`]), so a load
//! balancer sends nothing to a replica the others consider gone. At shutdown
//! the replica withdraws from readiness first and leaves the registry.
//!
//! On SQLite there is no registry: the serving process holds an exclusive lock
//! on a file beside the database ([`ServeLock`]), so a second serving process
//! on the same file refuses to start. `lapdev-server admin-token`, `audit-prune`
//! and the migration CLI do not take it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lapdev_db::{Db, LeaseTiming, ReplicaInfo, ReplicaLease};
use tokio::sync::{Notify, watch};

/// Whether this replica holds its lease, and which one. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    lease: Arc<watch::Sender<Registration>>,
    withdrawn: Arc<AtomicBool>,
    nudge: Arc<Notify>,
}

/// Where the replica stands in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Not registered yet, or lost its lease: not ready.
    Absent,
    /// SQLite: the only replica, ready once serving.
    Single,
    /// PostgreSQL: holding this lease.
    Leased(ReplicaLease),
}

impl ReplicaStatus {
    fn new(initial: Registration) -> Self {
        Self {
            lease: Arc::new(watch::Sender::new(initial)),
            withdrawn: Arc::new(AtomicBool::new(false)),
            nudge: Arc::new(Notify::new()),
        }
    }

    /// A status that is ready at once (a server without a registry: SQLite,
    /// and routers built in tests).
    pub fn single() -> Self {
        Self::new(Registration::Single)
    }

    /// True while `/readyz` should pass.
    pub fn is_ready(&self) -> bool {
        !self.withdrawn.load(Ordering::Acquire)
            && !matches!(*self.lease.borrow(), Registration::Absent)
    }

    /// The lease held now, if any.
    pub fn lease(&self) -> Option<ReplicaLease> {
        match *self.lease.borrow() {
            Registration::Leased(lease) => Some(lease),
            _ => None,
        }
    }

    /// Watches the registration (tests wait for a new generation with it).
    pub fn watch(&self) -> watch::Receiver<Registration> {
        self.lease.subscribe()
    }

    /// Fails readiness from now on (the first step of a shutdown, so the load
    /// balancer stops sending new work before anything closes).
    pub fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::Release);
    }

    /// Renews the lease now instead of at the next heartbeat.
    pub fn renew_now(&self) {
        self.nudge.notify_one();
    }
}

impl ReplicaStatus {
    /// A status that is not ready until [`register`](Self::register) succeeds.
    pub fn unregistered() -> Self {
        Self::new(Registration::Absent)
    }

    /// Registers `info` in the registry (readiness passes from here on) and
    /// returns the loop that keeps the lease.
    pub async fn register(
        &self,
        db: &Db,
        info: ReplicaInfo,
        timing: LeaseTiming,
    ) -> Result<ReplicaKeeper, lapdev_db::DbError> {
        let lease = db.register_replica(&info, timing).await?;
        tracing::info!(
            replica = %info.id,
            address = %info.address,
            generation = lease.generation,
            "registered in the replica registry"
        );
        self.lease.send_replace(Registration::Leased(lease));
        Ok(ReplicaKeeper {
            db: db.clone(),
            info,
            timing,
            status: self.clone(),
            on_lease_lost: None,
        })
    }
}

/// What to do with the generation of a lease that was lost.
type LeaseLostHook = Box<dyn Fn(i64) + Send + Sync>;

/// The heartbeat loop of one registered replica.
pub struct ReplicaKeeper {
    db: Db,
    info: ReplicaInfo,
    timing: LeaseTiming,
    status: ReplicaStatus,
    on_lease_lost: Option<LeaseLostHook>,
}

impl std::fmt::Debug for ReplicaKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaKeeper")
            .field("info", &self.info)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl ReplicaKeeper {
    /// Calls `hook` with the generation of a lease the keeper found lost,
    /// before it registers again: whatever was fenced by that generation
    /// (cluster claims) is void and must be given up.
    pub fn on_lease_lost(mut self, hook: impl Fn(i64) + Send + Sync + 'static) -> Self {
        self.on_lease_lost = Some(Box::new(hook));
        self
    }

    /// Renews the lease every heartbeat (or when nudged) until `shutdown`,
    /// registering again under a new generation when it was lost; then leaves
    /// the registry.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.timing.heartbeat()) => {}
                () = self.status.nudge.notified() => {}
            }
            self.beat().await;
        }
        self.status.withdraw();
        let held = self.status.lease();
        self.status.lease.send_replace(Registration::Absent);
        if let Some(lease) = held
            && let Err(e) = self.db.leave_replica(&lease).await
        {
            tracing::warn!(error = %e, "could not leave the replica registry");
        }
    }

    async fn beat(&self) {
        let held = self.status.lease();
        let renewed = match held {
            Some(lease) => self.db.renew_replica_lease(&lease, self.timing).await,
            None => Ok(None),
        };
        match renewed {
            Ok(Some(lease)) => {
                self.status.lease.send_replace(Registration::Leased(lease));
            }
            Ok(None) => {
                tracing::warn!(
                    replica = %self.info.id,
                    "this replica's lease was lost; registering again"
                );
                self.status.lease.send_replace(Registration::Absent);
                if let (Some(lost), Some(hook)) = (held, &self.on_lease_lost) {
                    hook(lost.generation);
                }
                match self.db.register_replica(&self.info, self.timing).await {
                    Ok(lease) => {
                        self.status.lease.send_replace(Registration::Leased(lease));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not register again"),
                }
            }
            // The lease may still hold; the next beat tries again before it
            // runs out (a lease is at least three heartbeats).
            Err(e) => tracing::warn!(error = %e, "could not renew the replica lease"),
        }
        if let Err(e) = self.db.reap_replicas(self.timing.lease()).await {
            tracing::debug!(error = %e, "could not reap expired replicas");
        }
    }
}

/// The SQLite serving lock: an exclusive lock on `<database>.serve-lock`,
/// held for the life of the serving process.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// Why the SQLite serving lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ServeLockError {
    /// Another process serves the same database file.
    #[error(
        "another lapdev-server is already serving the SQLite database {database} (it holds \
         {lock}); SQLite supports one server replica only: stop the other server, or use \
         PostgreSQL (--database-url) to run several replicas"
    )]
    Held {
        /// The database file.
        database: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("could not open or lock {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ServeLock {
    /// Takes the serving lock for the SQLite database at `url`; `None` for a
    /// database that is not a SQLite file (PostgreSQL, in-memory SQLite).
    pub fn take(url: &str) -> Result<Option<ServeLock>, ServeLockError> {
        let Some(database) = sqlite_file(url) else {
            return Ok(None);
        };
        let mut lock = database.clone().into_os_string();
        lock.push(".serve-lock");
        let lock = PathBuf::from(lock);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| ServeLockError::Io {
                path: lock.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ServeLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Err(ServeLockError::Held { database, lock }),
            Err(std::fs::TryLockError::Error(source)) => {
                Err(ServeLockError::Io { path: lock, source })
            }
        }
    }
}

/// The file of a `sqlite://path?…` URL.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    if path.is_empty() || path.starts_with(':') {
        return None;
    }
    Some(Path::new(path).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_serving_lock_on_one_sqlite_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/lapdev.db?mode=rwc", dir.path().display());
        let first = ServeLock::take(&url)
            .unwrap()
            .expect("a SQLite file is locked");
        let err = ServeLock::take(&url).unwrap_err();
        assert!(matches!(err, ServeLockError::Held { .. }));
        assert!(
            err.to_string()
                .contains("another lapdev-server is already serving the SQLite database"),
            "{err}"
        );
        drop(first);
        // Released with the process (here: the file).
        let _again = ServeLock::take(&url).unwrap().unwrap();
        assert!(ServeLock::take("postgres://u@h/db").unwrap().is_none());
        assert!(ServeLock::take("sqlite::memory:").unwrap().is_none());
    }
}
