//! [`Db`]: the connection pool plus the in-memory state the repository keeps
//! (the cluster-token `last_used_at` coalescer), and connect-and-migrate.
//!
//! SQLite (the embedded default) is opened in WAL mode, so readers never wait
//! for the writer and a write never waits for readers, with `synchronous =
//! NORMAL` (durable across a process crash; WAL's usual pairing) and a busy
//! timeout ([`ConnectConfig::sqlite_busy_timeout`], 10 s by default) so
//! concurrent writers queue instead of failing with `SQLITE_BUSY`.
//!
//! SQLite migrations run over a pool of their own with one connection
//! ([`Db::migration_connection`]), closed before the serving pool opens. In
//! WAL mode a pooled connection that still holds a read snapshot (a statement
//! its driver has not reset yet) parses against the schema of that snapshot,
//! so with several connections one migration's `ALTER TABLE` on one of them
//! can be invisible to the next migration on another (`duplicate column
//! name`, `no such column`). One connection sees every change it made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use uuid::Uuid;

use crate::changes::{Change, ChangeFeed};
use crate::error::{DbError, DbResult};

/// How to open the database.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// `postgres://user@host:port/db` or `sqlite://path/to/file.db?mode=rwc`.
    pub url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// Apply pending migrations before returning (what the server does on start).
    pub run_migrations: bool,
    /// SQLite only: how long a statement waits for another connection's write
    /// lock before failing.
    pub sqlite_busy_timeout: Duration,
}

impl ConnectConfig {
    /// Defaults for `url`: a pool of 16 connections, migrations applied, a
    /// 10 s SQLite busy timeout.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectConfig {
            url: url.into(),
            max_connections: 16,
            run_migrations: true,
            sqlite_busy_timeout: Duration::from_secs(10),
        }
    }
}

/// Handle to Lapdev's database. Cheap to clone; all clones share the pool and the
/// token-usage coalescer.
#[derive(Clone)]
pub struct Db {
    pub(crate) conn: DatabaseConnection,
    pub(crate) token_usage: Arc<TokenUsage>,
    pub(crate) changes: ChangeFeed,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

fn is_sqlite_file(url: &str) -> bool {
    url.starts_with("sqlite:") && !url.contains(":memory:") && !url.contains("mode=memory")
}

fn connect_options(config: &ConnectConfig, max_connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    let busy_timeout = config.sqlite_busy_timeout;
    options.map_sqlx_sqlite_opts(move |sqlite| {
        use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
        sqlite
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
    });
    options
}

/// Connects to `url` and applies pending migrations.
pub async fn connect(url: &str) -> DbResult<Db> {
    Db::connect_with(&ConnectConfig::new(url)).await
}

impl Db {
    /// Connects as `config` says.
    pub async fn connect_with(config: &ConnectConfig) -> DbResult<Db> {
        create_sqlite_parent_dir(&config.url)?;
        // An in-memory database lives in its connections: it migrates on its pool.
        let sqlite_file = is_sqlite_file(&config.url);
        if config.run_migrations && sqlite_file {
            // One connection for the whole run (see the module docs).
            let conn = Self::migration_connection(config).await?;
            let migrated = crate::schema::migrate(&conn).await;
            conn.close().await?;
            migrated?;
        }
        let conn = Database::connect(connect_options(config, config.max_connections))
            .await
            .map_err(DbError::Connect)?;
        let db = Db::from_connection(conn);
        if config.run_migrations && !sqlite_file {
            // Replicas started together migrate one after the other.
            let lock = db.startup_lock().await?;
            let migrated = crate::schema::migrate(&db.conn).await;
            lock.release().await?;
            migrated?;
        }
        Ok(db)
    }

    /// A pool of one connection to `config.url`, with the same settings as the
    /// serving pool: what SQLite migrations run over (see the module docs), and
    /// what tests that step migrations down and up use. The caller closes it.
    pub async fn migration_connection(config: &ConnectConfig) -> DbResult<DatabaseConnection> {
        Database::connect(connect_options(config, 1))
            .await
            .map_err(DbError::Connect)
    }

    /// Wraps an existing connection without migrating it.
    pub fn from_connection(conn: DatabaseConnection) -> Db {
        Db {
            conn,
            token_usage: Arc::new(TokenUsage::default()),
            changes: ChangeFeed::default(),
        }
    }

    /// The underlying SeaORM connection, for migrations and tests. Application code
    /// uses the repository methods instead.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// A receiver of every change written through this `Db` (and its clones) from
    /// now on. See [`crate::changes`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Checks that the database answers (for readiness probes).
    pub async fn ping(&self) -> DbResult<()> {
        self.conn.ping().await?;
        Ok(())
    }

    /// Writes pending token usage and closes the pool.
    pub async fn close(self) -> DbResult<()> {
        self.flush_token_usage().await?;
        self.conn.close().await?;
        Ok(())
    }
}

/// Why [`Db::create_cluster_with_token`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum CreateWithTokenError<E> {
    /// The database refused (or failed).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The caller's last step failed; the transaction was rolled back.
    #[error("{0}")]
    Finish(E),
}

impl Db {
    /// Starts a transaction that writes. On SQLite it takes the write lock at
    /// `BEGIN` (`BEGIN IMMEDIATE`): a default (deferred) transaction that reads
    /// first and writes later must upgrade its lock, and SQLite refuses that
    /// upgrade with `SQLITE_BUSY` at once, without waiting out the busy timeout,
    /// whenever another connection is writing
    /// (<https://www.sqlite.org/lang_transaction.html>, "Read transactions versus
    /// write transactions"). Taking the lock first makes writers queue on the
    /// busy timeout instead. PostgreSQL ignores the mode.
    pub(crate) async fn begin_write(&self) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
        use sea_orm::TransactionTrait as _;
        self.conn
            .begin_with_options(sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
    }

    /// Creates a cluster and its first token in one transaction, and runs
    /// `finish` (e.g. rendering the install manifest that carries the token)
    /// before committing: if any step fails, neither the cluster nor the token
    /// exists afterwards.
    pub async fn create_cluster_with_token<T, E>(
        &self,
        org_id: Uuid,
        new: crate::NewCluster,
        token: crate::NewClusterToken,
        finish: impl FnOnce(&crate::Cluster, &crate::ClusterTokenSecret) -> Result<T, E>,
    ) -> Result<(crate::Cluster, crate::CreatedClusterToken, T), CreateWithTokenError<E>> {
        self.check_new_cluster(org_id, &new).await?;
        self.check_new_cluster_token(org_id, &token).await?;
        let txn = self.begin_write().await.map_err(DbError::from)?;
        let cluster = self.insert_cluster(&txn, org_id, new).await?;
        let created = Self::insert_cluster_token(&txn, cluster.id, token).await?;
        let finished = match finish(&cluster, &created.secret) {
            Ok(v) => v,
            Err(e) => {
                txn.rollback().await.map_err(DbError::from)?;
                return Err(CreateWithTokenError::Finish(e));
            }
        };
        txn.commit().await.map_err(DbError::from)?;
        Ok((cluster, created, finished))
    }
}

/// A SQLite file in a directory that does not exist yet (the embedded default
/// `./lapdev-data/lapdev.db` on a fresh checkout) gets its directory created, so that
/// `cargo run` needs no setup.
fn create_sqlite_parent_dir(url: &str) -> DbResult<()> {
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Ok(());
    };
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    if path.is_empty() || path.starts_with(':') {
        return Ok(());
    }
    match std::path::Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::create_dir_all(dir)
            .map_err(|source| DbError::CreateDataDir {
                path: dir.to_owned(),
                source,
            }),
        _ => Ok(()),
    }
}

/// `last_used_at` of cluster tokens, kept in memory between flushes so that verifying a
/// token does not write to the database.
#[derive(Debug, Default)]
pub(crate) struct TokenUsage {
    pending: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

impl TokenUsage {
    pub(crate) fn record(&self, token_id: Uuid, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(token_id).or_insert(at);
        if *entry < at {
            *entry = at;
        }
    }

    pub(crate) fn get(&self, token_id: Uuid) -> Option<DateTime<Utc>> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(&token_id).copied()
    }

    pub(crate) fn take(&self) -> HashMap<Uuid, DateTime<Utc>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending)
    }

    /// Puts back entries a failed flush could not write, keeping newer ones.
    pub(crate) fn restore(&self, entries: impl IntoIterator<Item = (Uuid, DateTime<Utc>)>) {
        for (id, at) in entries {
            self.record(id, at);
        }
    }
}

/// The current time at the precision both databases keep (microseconds).
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait as _, Statement};

    async fn pragma(db: &Db, name: &str) -> String {
        let row = db
            .connection()
            .query_one_raw(Statement::from_string(
                db.connection().get_database_backend(),
                format!("PRAGMA {name}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<String>(0)
            .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_finish_rolls_back_the_cluster_and_its_token() {
        use sea_orm::{EntityTrait as _, PaginatorTrait as _};
        for test_db in [
            crate::test_support::TestDatabase::postgres().await,
            crate::test_support::TestDatabase::sqlite().await,
        ] {
            let db = test_db.db().clone();
            let org = db.create_organization("org").await.unwrap();
            let token = || crate::NewClusterToken {
                name: "initial".into(),
                created_by: None,
                expires_at: None,
            };
            let failed = db
                .create_cluster_with_token(
                    org.id,
                    crate::NewCluster::named("doomed".to_owned()),
                    token(),
                    |_, _| Err::<(), _>("render failed"),
                )
                .await;
            assert!(matches!(
                failed,
                Err(CreateWithTokenError::Finish("render failed"))
            ));
            let clusters = crate::entities::kube_cluster::Entity::find()
                .count(db.connection())
                .await
                .unwrap();
            let tokens = crate::entities::kube_cluster_token::Entity::find()
                .count(db.connection())
                .await
                .unwrap();
            assert_eq!((clusters, tokens), (0, 0));
            // The same name then works, with its token.
            let (cluster, created, rendered) = db
                .create_cluster_with_token(
                    org.id,
                    crate::NewCluster::named("doomed".to_owned()),
                    token(),
                    |c, secret| Ok::<_, ()>(format!("{}:{}", c.name, secret.expose().len())),
                )
                .await
                .unwrap();
            assert_eq!(created.token.cluster_id, cluster.id);
            assert!(rendered.starts_with("doomed:"));
            db.verify_cluster_token(created.secret.expose())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn sqlite_runs_in_wal_mode_with_a_busy_timeout() {
        let dir = std::env::temp_dir().join(format!("lapdev-db-wal-{}", Uuid::new_v4()));
        let url = format!("sqlite://{}/lapdev.db?mode=rwc", dir.display());
        let db = connect(&url).await.unwrap();
        assert_eq!(pragma(&db, "journal_mode").await, "wal");
        assert_eq!(pragma(&db, "busy_timeout").await, "10000");
        // NORMAL is 1.
        assert_eq!(pragma(&db, "synchronous").await, "1");
        db.close().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
