//! Ordering a manager's observations of a workspace.
//!
//! `kube_workspace` gains `observed_at`: when the manager saw the status stored
//! in the row (its `WorkspaceObservation::observed_at`), `NULL` until a
//! manager's observation has been applied. An observation older than the stored
//! one is not applied, so the observation a create or start command's reply
//! carries cannot overwrite a newer report that arrived before the reply.
//!
//! One nullable column, so SQLite's `ALTER TABLE` can do it.

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
                    .add_column(timestamp_with_time_zone_null(KubeWorkspace::ObservedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(KubeWorkspace::Table)
                    .drop_column(KubeWorkspace::ObservedAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum KubeWorkspace {
    Table,
    ObservedAt,
}
