//! `kube_workspace.placement_cluster` and `placement_region`: the cluster name or
//! region a user asked a workspace to run in. Stored so that the conductor, after a
//! crash or restart, places an unplaced workspace under the same constraint.
//!
//! One column per statement, both nullable, so SQLite's `ALTER TABLE` can do it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(KubeWorkspace::Table)
                    .add_column(string_null(KubeWorkspace::PlacementCluster))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(KubeWorkspace::Table)
                    .add_column(string_null(KubeWorkspace::PlacementRegion))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(KubeWorkspace::Table)
                    .drop_column(KubeWorkspace::PlacementRegion)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(KubeWorkspace::Table)
                    .drop_column(KubeWorkspace::PlacementCluster)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum KubeWorkspace {
    Table,
    PlacementCluster,
    PlacementRegion,
}
