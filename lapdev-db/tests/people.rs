//! People in the database: the audit log refuses UPDATE and DELETE on both
//! engines, the migration makes the first user of an organisation its owner,
//! the last owner cannot be demoted, disabling revokes tokens in the same
//! transaction, and personal access tokens verify, expire and revoke.

use chrono::{Duration, Utc};
use lapdev_common::role::Role;
use lapdev_db::test_support::TestDatabase;
use lapdev_db::{AuditQuery, DbError, NewAuditEntry, NewUser, TokenRejection, UserChange};
use migrations::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;

fn entry(action: &str) -> NewAuditEntry {
    NewAuditEntry {
        organization_id: None,
        action: action.into(),
        outcome: "success".into(),
        ..Default::default()
    }
}

fn oe(org: uuid::Uuid, action: &str) -> NewAuditEntry {
    NewAuditEntry {
        organization_id: Some(org),
        ..entry(action)
    }
}

async fn audit_is_append_only(test: TestDatabase) {
    let db = test.db();
    let org = db.create_organization("o").await.unwrap();
    db.record_audit(NewAuditEntry {
        organization_id: Some(org.id),
        ..entry("cluster.delete")
    })
    .await
    .unwrap();
    let conn = db.connection();
    let update = conn
        .execute_unprepared("UPDATE audit_log SET outcome = 'forged'")
        .await;
    assert!(update.is_err(), "UPDATE must be refused");
    let delete = conn.execute_unprepared("DELETE FROM audit_log").await;
    assert!(delete.is_err(), "DELETE must be refused");
    let rows = db
        .list_audit(
            org.id,
            &AuditQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].entry.outcome, "success");
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete_on_postgres() {
    audit_is_append_only(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete_on_sqlite() {
    audit_is_append_only(TestDatabase::sqlite().await).await;
}

async fn first_user_becomes_owner(test: TestDatabase) {
    let db = test.db();
    // Back to before the people migration (the ninth; later ones run after
    // it), with two users in one organisation.
    // Migrations and the rows written under the old schema go over one
    // connection of their own, as the server's migrations do: a pooled SQLite
    // connection may still see the schema it last read.
    let migrations = test.migration_connection().await;
    let conn = &migrations;
    let total = Migrator::migrations().len() as u32;
    Migrator::down(conn, Some(total - 8)).await.unwrap();
    let org = uuid::Uuid::new_v4();
    let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let now = Utc::now();
    for (sql, values) in [
        (
            r#"INSERT INTO organization (id, name, created_at, updated_at) VALUES ($1, 'o', $2, $2)"#,
            vec![org.into(), now.into()],
        ),
        (
            r#"INSERT INTO "user" (id, organization_id, name, created_at, updated_at) VALUES ($1, $2, 'first', $3, $3)"#,
            vec![first.into(), org.into(), (now - Duration::hours(1)).into()],
        ),
        (
            r#"INSERT INTO "user" (id, organization_id, name, created_at, updated_at) VALUES ($1, $2, 'second', $3, $3)"#,
            vec![second.into(), org.into(), now.into()],
        ),
    ] {
        // `$N` parameters work on both engines (SQLite reads them as named ones).
        conn.execute_raw(sea_orm::Statement::from_sql_and_values(
            conn.get_database_backend(),
            sql,
            values,
        ))
        .await
        .unwrap();
    }
    Migrator::up(conn, None).await.unwrap();
    assert_eq!(
        Migrator::get_applied_migrations(conn).await.unwrap().len() as u32,
        total
    );
    assert_eq!(db.get_user(org, first).await.unwrap().role, Role::Owner);
    assert_eq!(db.get_user(org, second).await.unwrap().role, Role::Member);
}

#[tokio::test]
async fn existing_data_migrates_on_postgres() {
    first_user_becomes_owner(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn existing_data_migrates_on_sqlite() {
    first_user_becomes_owner(TestDatabase::sqlite().await).await;
}

#[tokio::test]
async fn tokens_roles_and_disabling() {
    let test = TestDatabase::postgres().await;
    let db = test.db();
    let org = db.create_organization("o").await.unwrap();
    let owner = db
        .create_user_with_role(
            org.id,
            NewUser {
                name: "boss".into(),
                email: None,
            },
            Role::Owner,
            oe(org.id, "user.create"),
        )
        .await
        .unwrap();
    // The last owner can be neither demoted nor disabled.
    let refused = db
        .change_user(
            org.id,
            owner.id,
            UserChange::SetRole(Role::Member),
            oe(org.id, "x"),
        )
        .await;
    assert!(matches!(refused, Err(DbError::InvalidInput { .. })));
    let dev = db
        .create_user(
            org.id,
            NewUser {
                name: "dev".into(),
                email: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(dev.role, Role::Member);
    let token = db
        .create_pat(
            org.id,
            dev.id,
            "laptop",
            Utc::now() + Duration::days(1),
            oe(org.id, "token.create"),
        )
        .await
        .unwrap();
    assert!(token.secret.starts_with("lapdev_pat_"));
    assert!(!format!("{token:?}").contains(&token.secret));
    let verified = db.verify_pat(&token.secret).await.unwrap();
    assert_eq!(verified.user_id, dev.id);
    assert!(
        db.list_pats(org.id, dev.id).await.unwrap()[0]
            .last_used_at
            .is_some()
    );
    // Disabling revokes every token in the same transaction.
    db.change_user(
        org.id,
        dev.id,
        UserChange::Disable,
        oe(org.id, "user.disable"),
    )
    .await
    .unwrap();
    assert!(matches!(
        db.verify_pat(&token.secret).await,
        Err(DbError::InvalidToken(TokenRejection::Revoked))
    ));
    let expired = db
        .create_pat(
            org.id,
            owner.id,
            "old",
            Utc::now() - Duration::seconds(1),
            oe(org.id, "token.create"),
        )
        .await
        .unwrap();
    assert!(matches!(
        db.verify_pat(&expired.secret).await,
        Err(DbError::InvalidToken(TokenRejection::Expired))
    ));
    assert!(matches!(
        db.verify_pat("lapdev_pat_nope").await,
        Err(DbError::InvalidToken(TokenRejection::Malformed))
    ));
    // The audit rows of those changes were written with them.
    let actions: Vec<_> = db
        .list_audit(
            org.id,
            &AuditQuery {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.entry.action)
        .collect();
    for action in ["user.create", "token.create", "user.disable"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
}
