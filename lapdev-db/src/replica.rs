//! Several server replicas on one PostgreSQL database: the replica registry,
//! leases in the database's clock, the generation that fences a replica that
//! lost its lease, and the startup lock that serialises migrations and
//! first-start bootstrap.
//!
//! A replica registers once at start ([`Db::register_replica`]) and renews its
//! lease on every heartbeat ([`Db::renew_replica_lease`]). Every time is the
//! database's `now()`, never a replica's clock, so replicas whose clocks
//! disagree still agree on who is alive. A lease is at least
//! [`MIN_HEARTBEATS_PER_LEASE`] heartbeats long, so one slow heartbeat does not
//! lose it. A replica that misses its lease cannot renew it: it must register
//! again, which bumps its `generation`; a write fenced with the old generation
//! ([`Db::check_replica_lease`]) is then refused, so a replica that was paused
//! past its lease cannot act on ownership it no longer holds.
//!
//! The statements are written by hand rather than through a generated entity
//! because every one of them computes with the database's `now()`.
//!
//! SQLite is single-replica: the registry functions return
//! [`DbError::PostgresOnly`], and [`Db::startup_lock`] holds nothing there
//! (SQLite's `BEGIN IMMEDIATE` already serialises writers of one file, and the
//! server refuses a second serving process on it).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
use uuid::Uuid;

use crate::db::Db;
use crate::error::{DbError, DbResult};

/// A lease lasts at least this many heartbeats.
pub const MIN_HEARTBEATS_PER_LEASE: u32 = 3;

/// The advisory lock key held while migrating and bootstrapping (an arbitrary
/// constant: `'lapdev'` as ASCII).
const STARTUP_LOCK_KEY: i64 = 0x6c61_7064_6576;

/// What a replica tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Chosen by the process at start.
    pub id: Uuid,
    /// Where other replicas reach its internal endpoint (`host:port`).
    pub address: String,
    /// Its `lapdev-server` version.
    pub version: String,
}

/// A held lease: the replica and the generation its writes are fenced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLease {
    /// The replica.
    pub id: Uuid,
    /// Bumped every time the replica registers again after losing its lease.
    pub generation: i64,
    /// When the lease runs out, in the database's clock.
    pub expires_at: DateTime<Utc>,
}

/// A row of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// What the replica said about itself.
    pub info: ReplicaInfo,
    /// When it first registered under this id.
    pub started_at: DateTime<Utc>,
    /// Its last renewal.
    pub heartbeat_at: DateTime<Utc>,
    /// Its lease and generation.
    pub lease: ReplicaLease,
}

/// A lease length that is not at least [`MIN_HEARTBEATS_PER_LEASE`] heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a replica lease of {lease:?} is shorter than {MIN_HEARTBEATS_PER_LEASE} heartbeats of {heartbeat:?}"
)]
pub struct LeaseTooShort {
    /// The heartbeat interval.
    pub heartbeat: Duration,
    /// The lease asked for.
    pub lease: Duration,
}

/// How often a replica renews its lease and how long the lease lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    heartbeat: Duration,
    lease: Duration,
}

impl LeaseTiming {
    /// `lease` must be at least [`MIN_HEARTBEATS_PER_LEASE`] × `heartbeat`.
    pub fn new(heartbeat: Duration, lease: Duration) -> Result<Self, LeaseTooShort> {
        if heartbeat.is_zero() || lease < heartbeat * MIN_HEARTBEATS_PER_LEASE {
            return Err(LeaseTooShort { heartbeat, lease });
        }
        Ok(Self { heartbeat, lease })
    }

    /// How often to renew.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// How long a renewal lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}

impl Default for LeaseTiming {
    /// A heartbeat every 5 s, a 20 s lease (four heartbeats).
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            lease: Duration::from_secs(20),
        }
    }
}

/// The startup advisory lock, held on a connection of its own until
/// [`StartupLock::release`] (or until the process dies: PostgreSQL drops a
/// session's advisory locks with its connection).
#[must_use = "the lock is held until released"]
pub struct StartupLock {
    conn: Option<sea_orm::sqlx::PgConnection>,
}

impl std::fmt::Debug for StartupLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupLock")
            .field("held", &self.conn.is_some())
            .finish()
    }
}

impl StartupLock {
    /// Gives the lock back and closes its connection.
    pub async fn release(mut self) -> DbResult<()> {
        use sea_orm::sqlx::Connection as _;
        if let Some(mut conn) = self.conn.take() {
            sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(STARTUP_LOCK_KEY)
                .execute(&mut conn)
                .await
                .map_err(DbError::StartupLock)?;
            conn.close().await.map_err(DbError::StartupLock)?;
        }
        Ok(())
    }
}

impl Db {
    /// Waits for and takes the startup lock (PostgreSQL's session-level
    /// `pg_advisory_lock`, on a connection taken out of the pool so it can
    /// never go back to the pool still holding the lock). Replicas started
    /// together run their migrations and first-start bootstrap one after the
    /// other under it. A no-op on SQLite.
    pub async fn startup_lock(&self) -> DbResult<StartupLock> {
        if self.conn.get_database_backend() != DbBackend::Postgres {
            return Ok(StartupLock { conn: None });
        }
        let mut conn = self
            .conn
            .get_postgres_connection_pool()
            .acquire()
            .await
            .map_err(DbError::StartupLock)?
            .detach();
        sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(STARTUP_LOCK_KEY)
            .execute(&mut conn)
            .await
            .map_err(DbError::StartupLock)?;
        Ok(StartupLock { conn: Some(conn) })
    }

    /// True on PostgreSQL, where several replicas may share the database.
    pub fn supports_replicas(&self) -> bool {
        self.conn.get_database_backend() == DbBackend::Postgres
    }

    fn require_postgres(&self, what: &'static str) -> DbResult<()> {
        match self.conn.get_database_backend() {
            DbBackend::Postgres => Ok(()),
            _ => Err(DbError::PostgresOnly(what)),
        }
    }

    /// Registers `info` with a fresh lease, or takes the lease again under a
    /// new generation when the row exists (a replica that lost its lease).
    pub async fn register_replica(
        &self,
        info: &ReplicaInfo,
        timing: LeaseTiming,
    ) -> DbResult<ReplicaLease> {
        self.require_postgres("the replica registry")?;
        let row = self
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO server_replica \
                   (id, address, version, started_at, heartbeat_at, lease_expires_at, generation) \
                 VALUES ($1, $2, $3, now(), now(), now() + $4 * interval '1 millisecond', 1) \
                 ON CONFLICT (id) DO UPDATE SET \
                   address = EXCLUDED.address, version = EXCLUDED.version, \
                   heartbeat_at = EXCLUDED.heartbeat_at, \
                   lease_expires_at = EXCLUDED.lease_expires_at, \
                   generation = server_replica.generation + 1 \
                 RETURNING generation, lease_expires_at",
                [
                    info.id.into(),
                    info.address.clone().into(),
                    info.version.clone().into(),
                    millis(timing.lease).into(),
                ],
            ))
            .await?
            .ok_or_else(|| DbError::Query(sea_orm::DbErr::RecordNotInserted))?;
        Ok(ReplicaLease {
            id: info.id,
            generation: row.try_get_by_index(0)?,
            expires_at: row.try_get_by_index(1)?,
        })
    }

    /// Extends `lease` by the timing's lease length from the database's now.
    /// `None` when the lease is lost: it had run out (the others may have
    /// acted on that), or a newer registration took it. The replica must then
    /// drop whatever it owned and [`register_replica`](Self::register_replica)
    /// again.
    pub async fn renew_replica_lease(
        &self,
        lease: &ReplicaLease,
        timing: LeaseTiming,
    ) -> DbResult<Option<ReplicaLease>> {
        self.require_postgres("the replica registry")?;
        let row = self
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE server_replica SET heartbeat_at = now(), \
                   lease_expires_at = now() + $3 * interval '1 millisecond' \
                 WHERE id = $1 AND generation = $2 AND lease_expires_at > now() \
                 RETURNING lease_expires_at",
                [
                    lease.id.into(),
                    lease.generation.into(),
                    millis(timing.lease).into(),
                ],
            ))
            .await?;
        Ok(match row {
            Some(row) => Some(ReplicaLease {
                expires_at: row.try_get_by_index(0)?,
                ..*lease
            }),
            None => None,
        })
    }

    /// Refuses ([`DbError::LeaseLost`]) unless `lease` is still held, checked
    /// on `conn` (a write's own transaction, so the check and the write commit
    /// together). Every write a replica makes on the strength of its lease
    /// (ownership of a cluster) is fenced by it.
    pub async fn check_replica_lease(
        conn: &impl sea_orm::ConnectionTrait,
        lease: &ReplicaLease,
    ) -> DbResult<()> {
        let held = conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM server_replica \
                 WHERE id = $1 AND generation = $2 AND lease_expires_at > now() FOR SHARE",
                [lease.id.into(), lease.generation.into()],
            ))
            .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(DbError::LeaseLost {
                generation: lease.generation,
            }),
        }
    }

    /// [`check_replica_lease`](Self::check_replica_lease) on its own.
    pub async fn replica_lease_held(&self, lease: &ReplicaLease) -> DbResult<()> {
        self.require_postgres("the replica registry")?;
        Self::check_replica_lease(&self.conn, lease).await
    }

    /// The replicas whose lease has not run out, oldest first.
    pub async fn live_replicas(&self) -> DbResult<Vec<Replica>> {
        self.require_postgres("the replica registry")?;
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT id, address, version, started_at, heartbeat_at, lease_expires_at, \
                   generation FROM server_replica WHERE lease_expires_at > now() \
                 ORDER BY started_at, id",
            ))
            .await?;
        rows.iter()
            .map(|row| {
                let id: Uuid = row.try_get_by_index(0)?;
                Ok(Replica {
                    info: ReplicaInfo {
                        id,
                        address: row.try_get_by_index(1)?,
                        version: row.try_get_by_index(2)?,
                    },
                    started_at: row.try_get_by_index(3)?,
                    heartbeat_at: row.try_get_by_index(4)?,
                    lease: ReplicaLease {
                        id,
                        expires_at: row.try_get_by_index(5)?,
                        generation: row.try_get_by_index(6)?,
                    },
                })
            })
            .collect()
    }

    /// Leaves the registry at shutdown (only while `lease` is still ours).
    pub async fn leave_replica(&self, lease: &ReplicaLease) -> DbResult<()> {
        self.require_postgres("the replica registry")?;
        self.conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM server_replica WHERE id = $1 AND generation = $2",
                [lease.id.into(), lease.generation.into()],
            ))
            .await?;
        Ok(())
    }

    /// Removes replicas whose lease ran out more than `grace` ago (a crashed
    /// replica's row); returns how many.
    pub async fn reap_replicas(&self, grace: Duration) -> DbResult<u64> {
        self.require_postgres("the replica registry")?;
        let done = self
            .conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM server_replica \
                 WHERE lease_expires_at < now() - $1 * interval '1 millisecond'",
                [millis(grace).into()],
            ))
            .await?;
        Ok(done.rows_affected())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
