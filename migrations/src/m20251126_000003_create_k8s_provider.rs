//! `k8s_provider`: a cloud account clusters can be listed, imported, created and
//! deleted through. The credential column holds AEAD ciphertext only.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000001_create_organization::Organization;
use crate::m20251126_000002_create_user::User;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(K8sProvider::Table)
                    .col(pk_uuid(K8sProvider::Id))
                    .col(uuid(K8sProvider::OrganizationId))
                    .col(string(K8sProvider::Name))
                    .col(string(K8sProvider::Kind))
                    .col(json_binary(K8sProvider::Config))
                    .col(binary(K8sProvider::CredentialCiphertext))
                    .col(uuid_null(K8sProvider::CreatedBy))
                    .col(timestamp_with_time_zone(K8sProvider::CreatedAt))
                    .col(timestamp_with_time_zone(K8sProvider::UpdatedAt))
                    .col(timestamp_with_time_zone_null(K8sProvider::DeletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_k8s_provider_organization")
                            .from(K8sProvider::Table, K8sProvider::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_k8s_provider_created_by")
                            .from(K8sProvider::Table, K8sProvider::CreatedBy)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        // Listing an organisation's providers and the name rule both use this index.
        manager
            .create_index(
                Index::create()
                    .name("uq_k8s_provider_organization_name_live")
                    .table(K8sProvider::Table)
                    .col(K8sProvider::OrganizationId)
                    .col(K8sProvider::Name)
                    .unique()
                    .and_where(Expr::col(K8sProvider::DeletedAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(K8sProvider::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub(crate) enum K8sProvider {
    Table,
    Id,
    OrganizationId,
    Name,
    Kind,
    Config,
    CredentialCiphertext,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}
