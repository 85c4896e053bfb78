//! Browser sessions, OpenID Connect sign-in and the organisation's settings.
//!
//! - `browser_session`: a browser's signed-in session. Only the SHA-256 of the
//!   cookie's random id is stored; each row has an idle expiry (moved on use) and
//!   an absolute one, and can be revoked.
//! - `oidc_provider`: the server's OpenID Connect provider (at most one row per
//!   issuer): issuer, client id, the client secret encrypted at rest like provider
//!   credentials, allowed email domains, the role new users get, and the
//!   organisation they join.
//! - `user_identity`: a user's link to an OpenID provider account, by
//!   (issuer, subject), unique.
//! - `organization.admins_may_open_shells`: whether admins may open shells into
//!   other users' workspaces (default off).

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000001_create_organization::Organization;
use crate::m20251126_000002_create_user::User;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Organization::Table)
                    .add_column(boolean(Settings::AdminsMayOpenShells).default(false))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(BrowserSession::Table)
                    .col(pk_uuid(BrowserSession::Id))
                    .col(uuid(BrowserSession::OrganizationId))
                    .col(uuid(BrowserSession::UserId))
                    // The lookup key of every cookie-authenticated call.
                    .col(string_uniq(BrowserSession::SessionHash))
                    .col(timestamp_with_time_zone(BrowserSession::CreatedAt))
                    .col(timestamp_with_time_zone(BrowserSession::IdleExpiresAt))
                    .col(timestamp_with_time_zone(BrowserSession::ExpiresAt))
                    .col(timestamp_with_time_zone_null(BrowserSession::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_browser_session_organization")
                            .from(BrowserSession::Table, BrowserSession::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_browser_session_user")
                            .from(BrowserSession::Table, BrowserSession::UserId)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Revoking all of a user's sessions (disable, delete).
        manager
            .create_index(
                Index::create()
                    .name("ix_browser_session_user")
                    .table(BrowserSession::Table)
                    .col(BrowserSession::UserId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OidcProvider::Table)
                    .col(pk_uuid(OidcProvider::Id))
                    .col(uuid(OidcProvider::OrganizationId))
                    .col(string_uniq(OidcProvider::Issuer))
                    .col(string(OidcProvider::ClientId))
                    .col(binary(OidcProvider::ClientSecretCiphertext))
                    // Comma-separated, lower case; empty means none is allowed.
                    .col(string(OidcProvider::AllowedDomains))
                    .col(string(OidcProvider::DefaultRole))
                    .col(timestamp_with_time_zone(OidcProvider::CreatedAt))
                    .col(timestamp_with_time_zone(OidcProvider::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_oidc_provider_organization")
                            .from(OidcProvider::Table, OidcProvider::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UserIdentity::Table)
                    .col(pk_uuid(UserIdentity::Id))
                    .col(uuid(UserIdentity::UserId))
                    .col(string(UserIdentity::Issuer))
                    .col(string(UserIdentity::Subject))
                    .col(string_null(UserIdentity::EmailAtLink))
                    .col(timestamp_with_time_zone(UserIdentity::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_identity_user")
                            .from(UserIdentity::Table, UserIdentity::UserId)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_user_identity_issuer_subject")
                    .table(UserIdentity::Table)
                    .col(UserIdentity::Issuer)
                    .col(UserIdentity::Subject)
                    .unique()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            UserIdentity::Table.into_iden(),
            OidcProvider::Table.into_iden(),
            BrowserSession::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Organization::Table)
                    .drop_column(Settings::AdminsMayOpenShells)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// The new column of `organization`.
#[derive(DeriveIden)]
enum Settings {
    AdminsMayOpenShells,
}

#[derive(DeriveIden)]
enum BrowserSession {
    Table,
    Id,
    OrganizationId,
    UserId,
    SessionHash,
    CreatedAt,
    IdleExpiresAt,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum OidcProvider {
    Table,
    Id,
    OrganizationId,
    Issuer,
    ClientId,
    ClientSecretCiphertext,
    AllowedDomains,
    DefaultRole,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum UserIdentity {
    Table,
    Id,
    UserId,
    Issuer,
    Subject,
    EmailAtLink,
    CreatedAt,
}
