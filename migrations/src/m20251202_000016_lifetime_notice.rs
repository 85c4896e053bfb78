//! The notice before a lifetime stop.
//!
//! `workspace_policy` gains `lifetime_notice_secs`: how long before a
//! lifetime stop the workspace gets its notice (`NULL`: 15 minutes).
//! `workspace_timer` gains `lifetime_notice_at`, when the notice is due (set
//! with the lifetime deadline, cleared when the notice is given or the
//! timers are cleared; the sweep reads the due ones through its index), and
//! `lifetime_noticed_at`, when it was given (so `workspace get` can say it).
//!
//! Nullable columns added one statement each, so SQLite's `ALTER TABLE` can
//! do it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WorkspacePolicy::Table)
                    .add_column(big_integer_null(WorkspacePolicy::LifetimeNoticeSecs))
                    .to_owned(),
            )
            .await?;
        for column in [
            WorkspaceTimer::LifetimeNoticeAt,
            WorkspaceTimer::LifetimeNoticedAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(WorkspaceTimer::Table)
                        .add_column(timestamp_with_time_zone_null(column))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_workspace_timer_lifetime_notice_at")
                    .table(WorkspaceTimer::Table)
                    .col(WorkspaceTimer::LifetimeNoticeAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_workspace_timer_lifetime_notice_at")
                    .table(WorkspaceTimer::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            WorkspaceTimer::LifetimeNoticedAt,
            WorkspaceTimer::LifetimeNoticeAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(WorkspaceTimer::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(WorkspacePolicy::Table)
                    .drop_column(WorkspacePolicy::LifetimeNoticeSecs)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum WorkspacePolicy {
    Table,
    LifetimeNoticeSecs,
}

#[derive(DeriveIden, Clone, Copy)]
enum WorkspaceTimer {
    Table,
    LifetimeNoticeAt,
    LifetimeNoticedAt,
}
