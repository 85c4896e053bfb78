//! Migrations: up → down → up round trip on PostgreSQL and SQLite, and the schema
//! rules that live in the database (partial unique indexes, foreign keys).

use lapdev_db::test_support::TestDatabase;
use migrations::{Migrator, MigratorTrait, SchemaManager};

const TABLES: [&str; 13] = [
    "kube_cluster_owner",
    "server_replica",
    "organization",
    "user",
    "k8s_provider",
    "kube_cluster",
    "kube_cluster_token",
    "kube_workspace",
    "personal_access_token",
    "audit_log",
    "browser_session",
    "oidc_provider",
    "user_identity",
];

fn migration_count() -> usize {
    Migrator::migrations().len()
}

async fn assert_tables(test: &TestDatabase, present: bool) {
    let manager = SchemaManager::new(test.db().connection());
    for table in TABLES {
        assert_eq!(
            manager.has_table(table).await.unwrap(),
            present,
            "table {table} present should be {present}"
        );
    }
}

async fn round_trip(test: TestDatabase) {
    let conn = test.db().connection();
    assert_tables(&test, false).await;
    assert_eq!(
        Migrator::get_pending_migrations(conn).await.unwrap().len(),
        Migrator::migrations().len()
    );

    Migrator::up(conn, None).await.unwrap();
    assert_tables(&test, true).await;
    assert!(
        Migrator::get_pending_migrations(conn)
            .await
            .unwrap()
            .is_empty()
    );

    Migrator::down(conn, None).await.unwrap();
    assert_tables(&test, false).await;
    assert_eq!(
        Migrator::get_pending_migrations(conn).await.unwrap().len(),
        Migrator::migrations().len()
    );

    Migrator::up(conn, None).await.unwrap();
    assert_tables(&test, true).await;

    // The schema works after the round trip, constraints included.
    let db = test.db();
    let org = db.create_organization("acme").await.unwrap();
    db.create_cluster(org.id, lapdev_db::NewCluster::named("c1"))
        .await
        .unwrap();
    assert!(matches!(
        db.create_cluster(org.id, lapdev_db::NewCluster::named("c1"))
            .await,
        Err(lapdev_db::DbError::AlreadyExists { .. })
    ));
}

#[tokio::test]
async fn up_down_up_postgres() {
    round_trip(TestDatabase::empty_postgres().await).await;
}

#[tokio::test]
async fn up_down_up_sqlite() {
    round_trip(TestDatabase::empty_sqlite().await).await;
}

#[tokio::test]
async fn step_by_step_down_and_up_postgres() {
    let test = TestDatabase::empty_postgres().await;
    let conn = test.db().connection();
    Migrator::up(conn, None).await.unwrap();
    for remaining in (0..migration_count()).rev() {
        Migrator::down(conn, Some(1)).await.unwrap();
        assert_eq!(
            Migrator::get_applied_migrations(conn).await.unwrap().len(),
            remaining
        );
    }
    for applied in 1..=migration_count() {
        Migrator::up(conn, Some(1)).await.unwrap();
        assert_eq!(
            Migrator::get_applied_migrations(conn).await.unwrap().len(),
            applied
        );
    }
}

#[tokio::test]
async fn step_by_step_down_and_up_sqlite() {
    let test = TestDatabase::empty_sqlite().await;
    let conn = test.db().connection();
    Migrator::up(conn, None).await.unwrap();
    Migrator::down(conn, Some(3)).await.unwrap();
    assert_eq!(
        Migrator::get_applied_migrations(conn).await.unwrap().len(),
        Migrator::migrations().len() - 3
    );
    Migrator::up(conn, None).await.unwrap();
    assert_tables(&test, true).await;
}

#[tokio::test]
async fn foreign_keys_are_enforced_postgres() {
    foreign_keys_are_enforced(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn foreign_keys_are_enforced_sqlite() {
    foreign_keys_are_enforced(TestDatabase::sqlite().await).await;
}

async fn foreign_keys_are_enforced(test: TestDatabase) {
    use sea_orm::{ConnectionTrait, Statement};
    let conn = test.db().connection();
    // A cluster row pointing at an organisation that does not exist is refused by the
    // database itself, not only by the repository's checks.
    let sql = "INSERT INTO kube_cluster_token (id, cluster_id, name, token_hash, display_prefix, created_at) \
               VALUES ($1, $2, 'x', 'h', 'p', $3)";
    let backend = conn.get_database_backend();
    let sql = if backend == sea_orm::DatabaseBackend::Sqlite {
        sql.replace('$', "?")
    } else {
        sql.to_owned()
    };
    let err = conn
        .execute_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [
                uuid::Uuid::new_v4().into(),
                uuid::Uuid::new_v4().into(),
                chrono::Utc::now().fixed_offset().into(),
            ],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.sql_err(),
            Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn workspaces_placed_before_migration_8_keep_their_volume_postgres() {
    placed_rows_are_marked_as_having_a_volume(TestDatabase::empty_postgres().await).await;
}

#[tokio::test]
async fn workspaces_placed_before_migration_8_keep_their_volume_sqlite() {
    placed_rows_are_marked_as_having_a_volume(TestDatabase::empty_sqlite().await).await;
}

/// Rows that existed before `volume_created` did: a placed workspace may have a
/// volume, so the migration marks it (it must never be moved); an unplaced one
/// has none.
async fn placed_rows_are_marked_as_having_a_volume(test: TestDatabase) {
    use lapdev_common::status::{DesiredState, WorkspaceStatus};
    // Migrations go over one connection of their own, as the server's do: a
    // pooled SQLite connection that last read through the repository may still
    // see an older schema.
    let migrations = test.migration_connection().await;
    let conn = &migrations;
    Migrator::up(conn, None).await.unwrap();
    let db = test.db();
    let org = db.create_organization("acme").await.unwrap().id;
    let user = db
        .create_user(
            org,
            lapdev_db::NewUser {
                name: "dev".into(),
                email: None,
            },
        )
        .await
        .unwrap()
        .id;
    let cluster = db
        .create_cluster(org, lapdev_db::NewCluster::named("c1"))
        .await
        .unwrap()
        .id;
    let new = |name: &str| lapdev_db::NewWorkspace {
        owner_id: user,
        name: name.into(),
        image: "img".into(),
        cpu_millis: 1,
        memory_bytes: 1,
        storage_bytes: 1,
        desired_state: DesiredState::Running,
        placement_cluster: None,
        placement_region: None,
    };
    let placed = db.create_workspace(org, new("placed")).await.unwrap();
    let placed = db
        .transition_workspace(
            org,
            placed.id,
            placed.version,
            lapdev_db::WorkspaceTransition::to(WorkspaceStatus::Scheduling),
        )
        .await
        .unwrap();
    db.place_workspace(org, placed.id, placed.version, cluster, "ns")
        .await
        .unwrap();
    let unplaced = db.create_workspace(org, new("unplaced")).await.unwrap();

    // Back to the schema before migration 8 (every later migration runs after
    // it: the first seven stay), and up again.
    let after_seven = u32::try_from(migration_count() - 7).unwrap();
    Migrator::down(conn, Some(after_seven)).await.unwrap();
    Migrator::up(conn, None).await.unwrap();
    assert!(
        db.get_workspace(org, placed.id)
            .await
            .unwrap()
            .volume_created
    );
    assert!(
        !db.get_workspace(org, unplaced.id)
            .await
            .unwrap()
            .volume_created
    );
    assert_eq!(
        db.get_cluster(org, cluster).await.unwrap().security_profile,
        lapdev_common::status::SecurityProfile::Baseline
    );
}

/// What a newer release's expand-only migration might do: a table and a
/// nullable column this build does not know, recorded as applied under a
/// name that sorts after every migration of this build.
const NEWER_MIGRATION: &str = "m20991231_000999_a_newer_release";

/// Applies every migration of this build, over a connection of its own.
async fn migrate_fully(test: &TestDatabase) {
    let migrations = test.migration_connection().await;
    Migrator::up(&migrations, None).await.unwrap();
    migrations.close().await.unwrap();
}

async fn migrate_as_a_newer_release(test: &TestDatabase) {
    migrate_fully(test).await;
    for sql in [
        "CREATE TABLE newer_release_thing (id INTEGER PRIMARY KEY)",
        "ALTER TABLE kube_cluster ADD COLUMN newer_release_note TEXT",
        &format!(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{NEWER_MIGRATION}', 0)"
        ),
    ] {
        lapdev_db::test_support::execute_sql(test.db(), sql)
            .await
            .unwrap();
    }
}

async fn applied(test: &TestDatabase) -> Vec<String> {
    let mut v: Vec<String> = Migrator::get_migration_models(test.db().connection())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.version)
        .collect();
    v.sort();
    v
}

async fn connect_again(test: &TestDatabase) -> lapdev_db::DbResult<lapdev_db::Db> {
    lapdev_db::Db::connect_with(&lapdev_db::ConnectConfig::new(test.url().to_owned())).await
}

/// A rolling upgrade's previous release (or a rollback) starting on a
/// database the newer release migrated: it serves it, unchanged, and its
/// writes and reads work around the newer schema's additions.
async fn a_database_migrated_by_a_newer_release_is_served(test: TestDatabase) {
    migrate_as_a_newer_release(&test).await;
    let before = applied(&test).await;
    assert_eq!(before.len(), migration_count() + 1);
    // sea-orm's own migrator refuses it: what the server used to do.
    let refused = Migrator::up(test.db().connection(), None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("is missing"), "{refused}");

    let db = connect_again(&test).await.expect("served");
    assert_eq!(applied(&test).await, before, "nothing migrated or undone");
    let org = db.create_organization("acme").await.unwrap().id;
    let cluster = db
        .create_cluster(org, lapdev_db::NewCluster::named("c1"))
        .await
        .unwrap();
    assert_eq!(db.get_cluster(org, cluster.id).await.unwrap().name, "c1");
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_release_is_served_postgres() {
    a_database_migrated_by_a_newer_release_is_served(TestDatabase::empty_postgres().await).await;
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_release_is_served_sqlite() {
    a_database_migrated_by_a_newer_release_is_served(TestDatabase::empty_sqlite().await).await;
}

/// Migrations this build does not know that are not simply newer: one that
/// sorts among this build's, or one applied while this build's newest is
/// not. Refused with both lists named, and nothing changed.
async fn unknown_migrations_not_all_newer_are_refused(test: TestDatabase) {
    migrate_fully(&test).await;
    let stray = "m20251126_000099_from_a_branch";
    lapdev_db::test_support::execute_sql(
        test.db(),
        &format!("INSERT INTO seaql_migrations (version, applied_at) VALUES ('{stray}', 0)"),
    )
    .await
    .unwrap();
    let before = applied(&test).await;
    let Err(err) = connect_again(&test).await else {
        panic!("served a database with unknown migrations not all newer")
    };
    assert!(
        matches!(&err, lapdev_db::DbError::SchemaDiverged { unknown, pending }
            if unknown == &[stray.to_owned()] && pending.is_empty()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(stray), "{message}");
    assert_eq!(applied(&test).await, before);

    // This build's newest not applied, a newer one applied: refused too,
    // and the pending migration is not applied.
    let newest = Migrator::migrations().last().unwrap().name().to_owned();
    for sql in [
        format!("DELETE FROM seaql_migrations WHERE version IN ('{stray}', '{newest}')"),
        format!(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{NEWER_MIGRATION}', 0)"
        ),
    ] {
        lapdev_db::test_support::execute_sql(test.db(), &sql)
            .await
            .unwrap();
    }
    let before = applied(&test).await;
    let Err(err) = connect_again(&test).await else {
        panic!("served a database with unknown migrations not all newer")
    };
    assert!(
        matches!(&err, lapdev_db::DbError::SchemaDiverged { unknown, pending }
            if unknown == &[NEWER_MIGRATION.to_owned()] && pending == std::slice::from_ref(&newest)),
        "{err:?}"
    );
    assert_eq!(applied(&test).await, before);
}

#[tokio::test]
async fn unknown_migrations_not_all_newer_are_refused_postgres() {
    unknown_migrations_not_all_newer_are_refused(TestDatabase::empty_postgres().await).await;
}

#[tokio::test]
async fn unknown_migrations_not_all_newer_are_refused_sqlite() {
    unknown_migrations_not_all_newer_are_refused(TestDatabase::empty_sqlite().await).await;
}
