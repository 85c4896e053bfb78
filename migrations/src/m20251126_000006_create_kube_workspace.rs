//! `kube_workspace`: a developer workspace, its requested resources, where it was
//! placed, what the user wants (`desired_state`) and what was last observed
//! (`status`). `version` is bumped on every change for optimistic concurrency.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000001_create_organization::Organization;
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
                    .table(KubeWorkspace::Table)
                    .col(pk_uuid(KubeWorkspace::Id))
                    .col(uuid(KubeWorkspace::OrganizationId))
                    .col(uuid(KubeWorkspace::OwnerId))
                    .col(string(KubeWorkspace::Name))
                    .col(uuid_null(KubeWorkspace::ClusterId))
                    .col(string_null(KubeWorkspace::Namespace))
                    .col(string(KubeWorkspace::Image))
                    .col(big_integer(KubeWorkspace::CpuMillis))
                    .col(big_integer(KubeWorkspace::MemoryBytes))
                    .col(big_integer(KubeWorkspace::StorageBytes))
                    .col(string(KubeWorkspace::DesiredState))
                    .col(string(KubeWorkspace::Status))
                    .col(text_null(KubeWorkspace::StatusMessage))
                    .col(string_null(KubeWorkspace::PodName))
                    .col(big_integer(KubeWorkspace::Version))
                    .col(timestamp_with_time_zone(KubeWorkspace::CreatedAt))
                    .col(timestamp_with_time_zone(KubeWorkspace::UpdatedAt))
                    .col(timestamp_with_time_zone_null(KubeWorkspace::DeletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_workspace_organization")
                            .from(KubeWorkspace::Table, KubeWorkspace::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_workspace_owner")
                            .from(KubeWorkspace::Table, KubeWorkspace::OwnerId)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_workspace_cluster")
                            .from(KubeWorkspace::Table, KubeWorkspace::ClusterId)
                            .to(KubeCluster::Table, KubeCluster::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        // Workspace names are unique in an organisation among live workspaces; the index
        // also serves "list the organisation's workspaces".
        manager
            .create_index(
                Index::create()
                    .name("uq_kube_workspace_organization_name_live")
                    .table(KubeWorkspace::Table)
                    .col(KubeWorkspace::OrganizationId)
                    .col(KubeWorkspace::Name)
                    .unique()
                    .and_where(Expr::col(KubeWorkspace::DeletedAt).is_null())
                    .to_owned(),
            )
            .await?;
        // Placement sums the requests of the live workspaces on each cluster, and the
        // manager's reports are matched against a cluster's workspaces.
        manager
            .create_index(
                Index::create()
                    .name("ix_kube_workspace_cluster_live")
                    .table(KubeWorkspace::Table)
                    .col(KubeWorkspace::ClusterId)
                    .and_where(Expr::col(KubeWorkspace::DeletedAt).is_null())
                    .to_owned(),
            )
            .await?;
        // The reconciler scans live workspaces by status after a restart.
        manager
            .create_index(
                Index::create()
                    .name("ix_kube_workspace_status_live")
                    .table(KubeWorkspace::Table)
                    .col(KubeWorkspace::Status)
                    .and_where(Expr::col(KubeWorkspace::DeletedAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KubeWorkspace::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub(crate) enum KubeWorkspace {
    Table,
    Id,
    OrganizationId,
    OwnerId,
    Name,
    ClusterId,
    Namespace,
    Image,
    CpuMillis,
    MemoryBytes,
    StorageBytes,
    DesiredState,
    Status,
    StatusMessage,
    PodName,
    Version,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}
