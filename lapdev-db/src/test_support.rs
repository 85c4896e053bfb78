//! Throwaway databases for tests (feature `test-support`), usable by every crate's
//! tests.
//!
//! [`TestDatabase::postgres`] creates `lapdev_test_<uuid>` on the server named by
//! `LAPDEV_TEST_DATABASE_URL` (set in `.cargo/config.toml`), migrates it and drops it
//! (`WITH (FORCE)`) when the value is dropped, also when the test panics.
//! [`TestDatabase::sqlite`] does the same with a file in the temp directory.

use uuid::Uuid;

use crate::db::{ConnectConfig, Db};

/// Environment variable naming the PostgreSQL server tests use (an admin URL).
pub const TEST_DATABASE_URL_ENV: &str = "LAPDEV_TEST_DATABASE_URL";

enum Backing {
    Postgres { admin_url: String, name: String },
    Sqlite { path: std::path::PathBuf },
}

/// A database that exists for one test.
pub struct TestDatabase {
    db: Db,
    url: String,
    backing: Backing,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("url", &self.url)
            .finish()
    }
}

fn admin_url() -> String {
    std::env::var(TEST_DATABASE_URL_ENV).unwrap_or_else(|_| {
        panic!("{TEST_DATABASE_URL_ENV} must name a PostgreSQL server for database tests")
    })
}

/// `postgres://u@h:p/db?x` with the database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

async fn admin_execute(admin_url: &str, sql: &str) -> Result<(), sea_orm::DbErr> {
    use sea_orm::ConnectionTrait;
    let mut options = sea_orm::ConnectOptions::new(admin_url.to_owned());
    options.max_connections(1).sqlx_logging(false);
    let conn = sea_orm::Database::connect(options).await?;
    conn.execute_unprepared(sql).await?;
    conn.close().await
}

impl TestDatabase {
    /// A fresh, migrated PostgreSQL database.
    pub async fn postgres() -> TestDatabase {
        Self::postgres_with(true).await
    }

    /// A fresh PostgreSQL database with no tables (for migration tests).
    pub async fn empty_postgres() -> TestDatabase {
        Self::postgres_with(false).await
    }

    async fn postgres_with(run_migrations: bool) -> TestDatabase {
        let admin_url = admin_url();
        let name = format!("lapdev_test_{}", Uuid::new_v4().simple());
        admin_execute(&admin_url, &format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name} failed: {e}"));
        let url = with_database(&admin_url, &name);
        // From here on, dropping `guard` removes the database even if connecting fails.
        let backing = Backing::Postgres { admin_url, name };
        Self::open(url, backing, run_migrations).await
    }

    /// A fresh, migrated SQLite database file.
    pub async fn sqlite() -> TestDatabase {
        Self::sqlite_with(true).await
    }

    /// A fresh SQLite database file with no tables (for migration tests).
    pub async fn empty_sqlite() -> TestDatabase {
        Self::sqlite_with(false).await
    }

    async fn sqlite_with(run_migrations: bool) -> TestDatabase {
        let path = std::env::temp_dir().join(format!("lapdev_test_{}.db", Uuid::new_v4().simple()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::open(url, Backing::Sqlite { path }, run_migrations).await
    }

    async fn open(url: String, backing: Backing, run_migrations: bool) -> TestDatabase {
        let mut guard = TestDatabase {
            db: Db::from_connection(sea_orm::DatabaseConnection::default()),
            url,
            backing,
        };
        let mut config = ConnectConfig::new(guard.url.clone());
        config.run_migrations = run_migrations;
        config.max_connections = 8;
        guard.db = Db::connect_with(&config)
            .await
            .unwrap_or_else(|e| panic!("opening test database {} failed: {e:?}", guard.url));
        guard
    }

    /// Makes the database unavailable (`false`: new connections refused, open
    /// ones terminated, as in an outage) or available again (`true`).
    /// PostgreSQL only.
    pub async fn set_available(&self, available: bool) {
        let Backing::Postgres { admin_url, name } = &self.backing else {
            panic!("set_available needs a PostgreSQL test database");
        };
        admin_execute(
            admin_url,
            &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {available}"),
        )
        .await
        .unwrap_or_else(|e| panic!("changing the availability of {name} failed: {e}"));
        if !available {
            admin_execute(
                admin_url,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("ending the connections to {name} failed: {e}"));
        }
    }

    /// The repository handle.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// A pool of one connection to this database, as the server's SQLite
    /// migrations use ([`Db::migration_connection`]): what tests that step
    /// migrations down and up between data writes migrate over, since a
    /// pooled SQLite connection may still read an older schema.
    pub async fn migration_connection(&self) -> sea_orm::DatabaseConnection {
        Db::migration_connection(&ConnectConfig::new(self.url.clone()))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "opening a migration connection to {} failed: {e:?}",
                    self.url
                )
            })
    }

    /// The database URL (to hand to a binary under test).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.backing {
            Backing::Postgres { admin_url, name } => {
                // Drop runs inside the test's runtime, which cannot be blocked on, so
                // the cleanup gets a thread and a runtime of its own. FORCE ends the
                // pool's connections that are still open.
                let admin_url = admin_url.clone();
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let result = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for dropping the test database");
                    runtime.block_on(admin_execute(&admin_url, &sql))
                })
                .join();
                if !matches!(result, Ok(Ok(()))) {
                    eprintln!("warning: could not drop test database {name}");
                }
            }
            Backing::Sqlite { path } => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}

/// One workspace for [`seed_placed_workspaces`].
#[derive(Debug, Clone, Copy)]
pub struct SeedWorkspace {
    /// The cluster it is placed on.
    pub cluster_id: Uuid,
    /// Requested CPU in millicores.
    pub cpu_millis: i64,
    /// Requested memory in bytes.
    pub memory_bytes: i64,
}

/// An organisation `org` with one cluster `c` and a cluster token for each
/// of `names` (no expiry): `(organization id, cluster id, tokens)`.
pub async fn cluster_with_tokens(
    db: &Db,
    names: &[&str],
) -> (Uuid, Uuid, Vec<crate::CreatedClusterToken>) {
    let org = db.create_organization("org").await.unwrap().id;
    let cluster = db
        .create_cluster(org, crate::NewCluster::named("c"))
        .await
        .unwrap()
        .id;
    let mut tokens = Vec::new();
    for name in names {
        let new = crate::NewClusterToken {
            name: (*name).to_owned(),
            created_by: None,
            expires_at: None,
        };
        tokens.push(db.create_cluster_token(org, cluster, new).await.unwrap());
    }
    (org, cluster, tokens)
}

/// Inserts many `running` workspaces at once (batched `INSERT`s), for benchmarks
/// that need realistic table sizes; the repository API inserts one at a time.
pub async fn seed_placed_workspaces(
    db: &Db,
    org_id: Uuid,
    owner_id: Uuid,
    workspaces: &[SeedWorkspace],
) -> crate::DbResult<()> {
    use sea_orm::EntityTrait;

    use crate::entities::kube_workspace;

    let at = crate::util::tz(crate::db::now());
    for chunk in workspaces.chunks(1000) {
        let models = chunk.iter().map(|w| {
            let id = Uuid::new_v4();
            let name = format!("seed-{id}");
            let (cpu, mem) = (w.cpu_millis, w.memory_bytes);
            running_model(id, org_id, owner_id, name, w.cluster_id, cpu, mem, at)
        });
        kube_workspace::Entity::insert_many(models)
            .exec(db.connection())
            .await?;
    }
    Ok(())
}

/// A seeded workspace's `(idle_deadline, lifetime_deadline)`.
pub type Deadlines = (
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Inserts many running workspaces with armed timers (batched `INSERT`s): one
/// per `(idle_deadline, lifetime_deadline)` pair, placed on `cluster_id`.
/// Returns their ids in order.
pub async fn seed_timed_workspaces(
    db: &Db,
    org_id: Uuid,
    owner_id: Uuid,
    cluster_id: Uuid,
    deadlines: &[Deadlines],
) -> crate::DbResult<Vec<Uuid>> {
    use sea_orm::{ActiveValue::Set, EntityTrait};

    use crate::entities::{kube_workspace, workspace_timer};
    use crate::util::tz;

    let at = tz(crate::db::now());
    let mut ids = Vec::with_capacity(deadlines.len());
    for chunk in deadlines.chunks(1000) {
        let chunk_ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::new_v4()).collect();
        let workspaces = chunk_ids.iter().map(|&id| {
            let name = format!("timed-{id}");
            running_model(id, org_id, owner_id, name, cluster_id, 100, 1 << 28, at)
        });
        kube_workspace::Entity::insert_many(workspaces)
            .exec(db.connection())
            .await?;
        let timers = chunk_ids.iter().zip(chunk).map(|(&id, (idle, lifetime))| {
            workspace_timer::ActiveModel {
                workspace_id: Set(id),
                organization_id: Set(org_id),
                idle_timeout_secs: Set(None),
                last_active_at: Set(Some(at)),
                idle_deadline: Set(idle.map(tz)),
                lifetime_deadline: Set(lifetime.map(tz)),
                stop_reason: Set(None),
                stopped_at: Set(None),
                volume_retained_until: Set(None),
                volume_deleted_at: Set(None),
                lifetime_notice_at: Set(None),
                lifetime_noticed_at: Set(None),
            }
        });
        workspace_timer::Entity::insert_many(timers)
            .exec(db.connection())
            .await?;
        ids.extend(chunk_ids);
    }
    Ok(ids)
}

/// Runs raw SQL on `db` (tests that break the database on purpose, e.g. to see
/// that a failed audit write loses no action), so test crates need no sea-orm.
pub async fn execute_sql(db: &Db, sql: &str) -> Result<(), sea_orm::DbErr> {
    use sea_orm::ConnectionTrait as _;
    db.connection().execute_unprepared(sql).await.map(|_| ())
}

/// A running, placed workspace row with a volume, for seeding.
#[allow(clippy::too_many_arguments)]
fn running_model(
    id: Uuid,
    org_id: Uuid,
    owner_id: Uuid,
    name: String,
    cluster_id: Uuid,
    cpu_millis: i64,
    memory_bytes: i64,
    at: sea_orm::prelude::DateTimeWithTimeZone,
) -> crate::entities::kube_workspace::ActiveModel {
    use lapdev_common::status::{DesiredState, WorkspaceStatus};
    use sea_orm::ActiveValue::Set;
    crate::entities::kube_workspace::ActiveModel {
        id: Set(id),
        organization_id: Set(org_id),
        owner_id: Set(owner_id),
        name: Set(name),
        cluster_id: Set(Some(cluster_id)),
        namespace: Set(Some("lapdev-workspaces".to_owned())),
        image: Set("seed".to_owned()),
        cpu_millis: Set(cpu_millis),
        memory_bytes: Set(memory_bytes),
        storage_bytes: Set(1 << 30),
        desired_state: Set(DesiredState::Running.as_str().to_owned()),
        status: Set(WorkspaceStatus::Running.as_str().to_owned()),
        status_message: Set(None),
        pod_name: Set(None),
        version: Set(1),
        created_at: Set(at),
        updated_at: Set(at),
        deleted_at: Set(None),
        placement_cluster: Set(None),
        placement_region: Set(None),
        status_reason: Set(None),
        repair_attempts: Set(0),
        next_attempt_at: Set(None),
        volume_created: Set(true),
        forgotten_at: Set(None),
        observed_at: Set(None),
    }
}

/// Ends replica `id`'s lease now, in the database's clock, as if it had
/// missed its heartbeats (PostgreSQL).
pub async fn expire_replica_lease(db: &Db, id: Uuid) -> crate::DbResult<()> {
    use sea_orm::ConnectionTrait as _;
    db.connection()
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "UPDATE server_replica SET lease_expires_at = now() - interval '1 second' \
             WHERE id = $1",
            [id.into()],
        ))
        .await?;
    Ok(())
}
