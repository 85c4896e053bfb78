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
