//! OpenID Connect logins in flight, in the database instead of one server's
//! memory, so they survive a restart and any replica can finish them.
//!
//! `oidc_pending`: one row per started login (`kind = 'login'`, found by the
//! SHA-256 of its `state`) or per CLI one-time code (`kind = 'cli_code'`,
//! found by the SHA-256 of the code). What the step needs later (nonce, PKCE
//! verifier, the pre-login cookie's hash, the CLI's port and challenge; or the
//! user and the CLI's challenge) is sealed with the credential key like
//! provider credentials. A row is taken (deleted) by the step that uses it, so
//! it is single-use; `expires_at` bounds it, and expired rows are pruned.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OidcPending::Table)
                    .col(pk_uuid(OidcPending::Id))
                    .col(string(OidcPending::Kind))
                    .col(string_uniq(OidcPending::LookupHash))
                    .col(binary(OidcPending::Sealed))
                    .col(timestamp_with_time_zone(OidcPending::CreatedAt))
                    .col(timestamp_with_time_zone(OidcPending::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        // Pruning expired rows.
        manager
            .create_index(
                Index::create()
                    .name("ix_oidc_pending_expires_at")
                    .table(OidcPending::Table)
                    .col(OidcPending::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OidcPending::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum OidcPending {
    Table,
    Id,
    Kind,
    LookupHash,
    Sealed,
    CreatedAt,
    ExpiresAt,
}
