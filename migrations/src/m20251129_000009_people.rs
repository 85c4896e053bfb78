//! People: roles and disabling on `user`, password hashes, personal access tokens
//! (`personal_access_token`, only the SHA-256 stored) and the append-only
//! `audit_log`.
//!
//! Existing data: every user gets the role `member`, then the oldest user of each
//! organisation (the one the first start created) becomes its `owner`.
//!
//! `audit_log` refuses `UPDATE` and `DELETE` in the database itself: a trigger
//! function on PostgreSQL (also refusing `TRUNCATE`), `RAISE(ABORT)` triggers on
//! SQLite. Retention is therefore a deliberate operator job (see ARCHITECTURE.md),
//! never something the application can do by accident.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000001_create_organization::Organization;
use crate::m20251126_000002_create_user::User;

#[derive(DeriveMigrationName)]
pub struct Migration;

const PG_APPEND_ONLY: &[&str] = &[
    "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
    "CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log \
     FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log \
     FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
];

const SQLITE_APPEND_ONLY: &[&str] = &[
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log \
     BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log \
     BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement, so SQLite's `ALTER TABLE` can do it.
        for column in [
            string(People::Role).default("member").to_owned(),
            timestamp_with_time_zone_null(People::DisabledAt),
            string_null(People::PasswordHash),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(User::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .get_connection()
            .execute_unprepared(
                r#"UPDATE "user" SET role = 'owner' WHERE id IN (
                     SELECT u.id FROM "user" u WHERE u.deleted_at IS NULL AND u.created_at = (
                       SELECT MIN(o.created_at) FROM "user" o
                       WHERE o.organization_id = u.organization_id AND o.deleted_at IS NULL))"#,
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PersonalAccessToken::Table)
                    .col(pk_uuid(PersonalAccessToken::Id))
                    .col(uuid(PersonalAccessToken::OrganizationId))
                    .col(uuid(PersonalAccessToken::UserId))
                    .col(string(PersonalAccessToken::Name))
                    // The lookup key of every authenticated call: unique, hence indexed.
                    .col(string_uniq(PersonalAccessToken::TokenHash))
                    .col(string(PersonalAccessToken::DisplayPrefix))
                    .col(timestamp_with_time_zone(PersonalAccessToken::CreatedAt))
                    .col(timestamp_with_time_zone(PersonalAccessToken::ExpiresAt))
                    .col(timestamp_with_time_zone_null(
                        PersonalAccessToken::LastUsedAt,
                    ))
                    .col(timestamp_with_time_zone_null(
                        PersonalAccessToken::RevokedAt,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_personal_access_token_organization")
                            .from(
                                PersonalAccessToken::Table,
                                PersonalAccessToken::OrganizationId,
                            )
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_personal_access_token_user")
                            .from(PersonalAccessToken::Table, PersonalAccessToken::UserId)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Listing (and revoking all of) a user's tokens.
        manager
            .create_index(
                Index::create()
                    .name("ix_personal_access_token_user")
                    .table(PersonalAccessToken::Table)
                    .col(PersonalAccessToken::UserId)
                    .to_owned(),
            )
            .await?;

        // No foreign keys: an audit row outlives what it names.
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(pk_uuid(AuditLog::Id))
                    .col(uuid_null(AuditLog::OrganizationId))
                    .col(uuid_null(AuditLog::ActorId))
                    .col(string_null(AuditLog::ActorName))
                    .col(string(AuditLog::Action))
                    .col(string_null(AuditLog::Target))
                    .col(string(AuditLog::Outcome))
                    .col(string_null(AuditLog::SourceAddr))
                    .col(string_null(AuditLog::RequestId))
                    .col(string_null(AuditLog::Detail))
                    .col(timestamp_with_time_zone(AuditLog::OccurredAt))
                    .to_owned(),
            )
            .await?;
        // `lapdev audit list`: an organisation's rows, newest first.
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_log_org_time")
                    .table(AuditLog::Table)
                    .col(AuditLog::OrganizationId)
                    .col(AuditLog::OccurredAt)
                    .to_owned(),
            )
            .await?;
        let statements = match manager.get_database_backend() {
            DbBackend::Postgres => PG_APPEND_ONLY,
            _ => SQLITE_APPEND_ONLY,
        };
        for sql in statements {
            manager.get_connection().execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping the table drops its triggers on both engines.
        manager
            .drop_table(Table::drop().table(AuditLog::Table).to_owned())
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS audit_log_append_only()")
                .await?;
        }
        manager
            .drop_table(Table::drop().table(PersonalAccessToken::Table).to_owned())
            .await?;
        for column in [People::PasswordHash, People::DisabledAt, People::Role] {
            manager
                .alter_table(
                    Table::alter()
                        .table(User::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// The new columns of `user`.
#[derive(DeriveIden)]
enum People {
    Role,
    DisabledAt,
    PasswordHash,
}

#[derive(DeriveIden)]
enum PersonalAccessToken {
    Table,
    Id,
    OrganizationId,
    UserId,
    Name,
    TokenHash,
    DisplayPrefix,
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    OrganizationId,
    ActorId,
    ActorName,
    Action,
    Target,
    Outcome,
    SourceAddr,
    RequestId,
    Detail,
    OccurredAt,
}
