//! Quotas on what workspaces request: `workspace_quota`, one row per
//! organisation and subject.
//!
//! `subject` is `organization` (the organisation's total), `each_member` (the
//! default limit of every member) or a user's id (that member's own limit,
//! replacing the default). Each limit column is nullable: `NULL` means no
//! limit. Limits cover running workspaces (desired state `running`), the CPU
//! and memory they request, and the storage all live workspaces request.

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
                    .table(WorkspaceQuota::Table)
                    .col(uuid(WorkspaceQuota::OrganizationId))
                    .col(string(WorkspaceQuota::Subject))
                    .col(uuid_null(WorkspaceQuota::UserId))
                    .col(big_integer_null(WorkspaceQuota::MaxRunningWorkspaces))
                    .col(big_integer_null(WorkspaceQuota::MaxCpuMillis))
                    .col(big_integer_null(WorkspaceQuota::MaxMemoryBytes))
                    .col(big_integer_null(WorkspaceQuota::MaxStorageBytes))
                    .col(timestamp_with_time_zone(WorkspaceQuota::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(WorkspaceQuota::OrganizationId)
                            .col(WorkspaceQuota::Subject),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_workspace_quota_organization")
                            .from(WorkspaceQuota::Table, WorkspaceQuota::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_workspace_quota_user")
                            .from(WorkspaceQuota::Table, WorkspaceQuota::UserId)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // The usage sums a quota check runs: live workspaces of an organisation
        // (and of one owner).
        manager
            .create_index(
                Index::create()
                    .name("ix_kube_workspace_org_owner_live")
                    .table(KubeWorkspace::Table)
                    .col(KubeWorkspace::OrganizationId)
                    .col(KubeWorkspace::OwnerId)
                    .col(KubeWorkspace::DeletedAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_kube_workspace_org_owner_live")
                    .table(KubeWorkspace::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(WorkspaceQuota::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum WorkspaceQuota {
    Table,
    OrganizationId,
    Subject,
    UserId,
    MaxRunningWorkspaces,
    MaxCpuMillis,
    MaxMemoryBytes,
    MaxStorageBytes,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum KubeWorkspace {
    Table,
    OrganizationId,
    OwnerId,
    DeletedAt,
}
