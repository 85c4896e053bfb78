//! `user`: a member of one organisation; its id is the subject of admin JWTs.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000001_create_organization::Organization;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(User::Table)
                    .col(pk_uuid(User::Id))
                    .col(uuid(User::OrganizationId))
                    .col(string(User::Name))
                    .col(string_null(User::Email))
                    .col(timestamp_with_time_zone(User::CreatedAt))
                    .col(timestamp_with_time_zone(User::UpdatedAt))
                    .col(timestamp_with_time_zone_null(User::DeletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_organization")
                            .from(User::Table, User::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        // Users are looked up by name inside their organisation; a name is unique there
        // among live users.
        manager
            .create_index(
                Index::create()
                    .name("uq_user_organization_name_live")
                    .table(User::Table)
                    .col(User::OrganizationId)
                    .col(User::Name)
                    .unique()
                    .and_where(Expr::col(User::DeletedAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(User::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub(crate) enum User {
    Table,
    Id,
    OrganizationId,
    Name,
    Email,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}
