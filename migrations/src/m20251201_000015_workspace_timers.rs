//! Idle auto-stop, lifetimes and the home-volume retention window.
//!
//! `workspace_policy`: one row per organisation that changed a default
//! (`NULL` is the built-in default): the idle timeout of its workspaces
//! (`NULL`: none), the longest per-workspace override, the longest a
//! workspace may run per start (`NULL`: no limit), and how long a deleted
//! workspace's home volume is kept (`NULL`: 7 days).
//!
//! `workspace_timer`: one row per workspace that ever ran. The deadlines are
//! set when it is created or started, pushed by use (`last_active_at`), and
//! cleared when it stops or is deleted, so a non-`NULL` deadline always
//! belongs to a workspace that should be running; the sweeps read only the
//! due ones through their indexes. `stop_reason`/`stopped_at` say why the
//! server stopped it. `volume_retained_until`/`volume_deleted_at` record a
//! deleted workspace's kept volume.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000001_create_organization::Organization;
use crate::m20251126_000006_create_kube_workspace::KubeWorkspace;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WorkspacePolicy::Table)
                    .col(pk_uuid(WorkspacePolicy::OrganizationId))
                    .col(big_integer_null(WorkspacePolicy::IdleTimeoutSecs))
                    .col(big_integer_null(WorkspacePolicy::MaxIdleTimeoutSecs))
                    .col(big_integer_null(WorkspacePolicy::MaxLifetimeSecs))
                    .col(big_integer_null(WorkspacePolicy::VolumeRetentionSecs))
                    .col(timestamp_with_time_zone(WorkspacePolicy::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_workspace_policy_organization")
                            .from(WorkspacePolicy::Table, WorkspacePolicy::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WorkspaceTimer::Table)
                    .col(pk_uuid(WorkspaceTimer::WorkspaceId))
                    .col(uuid(WorkspaceTimer::OrganizationId))
                    .col(big_integer_null(WorkspaceTimer::IdleTimeoutSecs))
                    .col(timestamp_with_time_zone_null(WorkspaceTimer::LastActiveAt))
                    .col(timestamp_with_time_zone_null(WorkspaceTimer::IdleDeadline))
                    .col(timestamp_with_time_zone_null(
                        WorkspaceTimer::LifetimeDeadline,
                    ))
                    .col(string_null(WorkspaceTimer::StopReason))
                    .col(timestamp_with_time_zone_null(WorkspaceTimer::StoppedAt))
                    .col(timestamp_with_time_zone_null(
                        WorkspaceTimer::VolumeRetainedUntil,
                    ))
                    .col(timestamp_with_time_zone_null(
                        WorkspaceTimer::VolumeDeletedAt,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_workspace_timer_workspace")
                            .from(WorkspaceTimer::Table, WorkspaceTimer::WorkspaceId)
                            .to(KubeWorkspace::Table, KubeWorkspace::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_workspace_timer_organization")
                            .from(WorkspaceTimer::Table, WorkspaceTimer::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            (
                "ix_workspace_timer_idle_deadline",
                WorkspaceTimer::IdleDeadline,
            ),
            (
                "ix_workspace_timer_lifetime_deadline",
                WorkspaceTimer::LifetimeDeadline,
            ),
            (
                "ix_workspace_timer_volume_retained_until",
                WorkspaceTimer::VolumeRetainedUntil,
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(WorkspaceTimer::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WorkspaceTimer::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(WorkspacePolicy::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum WorkspacePolicy {
    Table,
    OrganizationId,
    IdleTimeoutSecs,
    MaxIdleTimeoutSecs,
    MaxLifetimeSecs,
    VolumeRetentionSecs,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum WorkspaceTimer {
    Table,
    WorkspaceId,
    OrganizationId,
    IdleTimeoutSecs,
    LastActiveAt,
    IdleDeadline,
    LifetimeDeadline,
    StopReason,
    StoppedAt,
    VolumeRetainedUntil,
    VolumeDeletedAt,
}
