//! Self-repair, volume ownership, tombstones and per-cluster security profiles.
//!
//! `kube_workspace` gains:
//! - `status_reason`: the machine-readable reason beside `status_message`
//!   (`Evicted`, `ImagePullFailing`, …; see `lapdev_common::reason`);
//! - `repair_attempts` and `next_attempt_at`: the conductor's retry backoff, kept in
//!   the row so a restart (or another replica) does not reset it;
//! - `volume_created`: the workspace has had a volume on its cluster, so it may never
//!   be placed elsewhere (its data would stay behind). Rows already placed when this
//!   migration runs are marked `true`: they may have a volume, and keeping a
//!   workspace on its cluster is the safe side;
//! - `forgotten_at`: a tombstone. The workspace was force-deleted while its cluster
//!   was unreachable; the server removes its objects when the manager reconnects and
//!   then clears it.
//!
//! `kube_cluster` gains `security_profile` (`baseline` or `restricted`, what the
//! install manifest renders) and `manifest_revision` (the revision the manager says
//! it was installed from).
//!
//! One column per statement, each nullable or with a default, so SQLite's
//! `ALTER TABLE` can do it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let workspace_columns = [
            text_null(KubeWorkspace::StatusReason),
            integer(KubeWorkspace::RepairAttempts).default(0).to_owned(),
            timestamp_with_time_zone_null(KubeWorkspace::NextAttemptAt),
            boolean(KubeWorkspace::VolumeCreated)
                .default(false)
                .to_owned(),
            timestamp_with_time_zone_null(KubeWorkspace::ForgottenAt),
        ];
        for mut column in workspace_columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(KubeWorkspace::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .exec_stmt(
                Query::update()
                    .table(KubeWorkspace::Table)
                    .value(KubeWorkspace::VolumeCreated, true)
                    .and_where(Expr::col(KubeWorkspace::ClusterId).is_not_null())
                    .to_owned(),
            )
            .await?;
        let cluster_columns = [
            string(KubeCluster::SecurityProfile)
                .default("baseline")
                .to_owned(),
            string_null(KubeCluster::ManifestRevision),
        ];
        for mut column in cluster_columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(KubeCluster::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // The conductor looks for tombstones every round; there are few of them, so
        // a partial index keeps that lookup from scanning the table.
        manager
            .create_index(
                Index::create()
                    .name("ix_kube_workspace_forgotten")
                    .table(KubeWorkspace::Table)
                    .col(KubeWorkspace::ClusterId)
                    .and_where(Expr::col(KubeWorkspace::ForgottenAt).is_not_null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_kube_workspace_forgotten")
                    .table(KubeWorkspace::Table)
                    .to_owned(),
            )
            .await?;
        for column in [KubeCluster::ManifestRevision, KubeCluster::SecurityProfile] {
            manager
                .alter_table(
                    Table::alter()
                        .table(KubeCluster::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in [
            KubeWorkspace::ForgottenAt,
            KubeWorkspace::VolumeCreated,
            KubeWorkspace::NextAttemptAt,
            KubeWorkspace::RepairAttempts,
            KubeWorkspace::StatusReason,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(KubeWorkspace::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum KubeWorkspace {
    Table,
    ClusterId,
    StatusReason,
    RepairAttempts,
    NextAttemptAt,
    VolumeCreated,
    ForgottenAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum KubeCluster {
    Table,
    SecurityProfile,
    ManifestRevision,
}
