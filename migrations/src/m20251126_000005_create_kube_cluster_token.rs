//! `kube_cluster_token`: the credentials a cluster's manager authenticates with. Only
//! the SHA-256 of a token is stored, plus a short prefix to tell tokens apart.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000002_create_user::User;
use crate::m20251126_000004_create_kube_cluster::KubeCluster;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KubeClusterToken::Table)
                    .col(pk_uuid(KubeClusterToken::Id))
                    .col(uuid(KubeClusterToken::ClusterId))
                    .col(string(KubeClusterToken::Name))
                    // The lookup key of every manager call: unique, hence indexed.
                    .col(string_uniq(KubeClusterToken::TokenHash))
                    .col(string(KubeClusterToken::DisplayPrefix))
                    .col(uuid_null(KubeClusterToken::CreatedBy))
                    .col(timestamp_with_time_zone(KubeClusterToken::CreatedAt))
                    .col(timestamp_with_time_zone_null(KubeClusterToken::LastUsedAt))
                    .col(timestamp_with_time_zone_null(KubeClusterToken::ExpiresAt))
                    .col(timestamp_with_time_zone_null(KubeClusterToken::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_cluster_token_cluster")
                            .from(KubeClusterToken::Table, KubeClusterToken::ClusterId)
                            .to(KubeCluster::Table, KubeCluster::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_cluster_token_created_by")
                            .from(KubeClusterToken::Table, KubeClusterToken::CreatedBy)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        // Listing a cluster's tokens.
        manager
            .create_index(
                Index::create()
                    .name("ix_kube_cluster_token_cluster")
                    .table(KubeClusterToken::Table)
                    .col(KubeClusterToken::ClusterId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KubeClusterToken::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub(crate) enum KubeClusterToken {
    Table,
    Id,
    ClusterId,
    Name,
    TokenHash,
    DisplayPrefix,
    CreatedBy,
    CreatedAt,
    LastUsedAt,
    ExpiresAt,
    RevokedAt,
}
