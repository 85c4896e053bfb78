//! Placement that matches the scheduler.
//!
//! `kube_cluster` gains:
//! - `capacity_mode`: `nodes` (free room is allocatable minus Lapdev's own
//!   requests) or `pods` (minus every pod's requests; the manifest then grants a
//!   cluster-wide pod watch);
//! - `scheduling`: the admin's scheduling settings as JSON (node selector,
//!   tolerations, architecture, image pull secrets, priority class; see
//!   `lapdev_common::scheduling::SchedulingSettings`), `NULL` for none;
//! - `autoscaling`: the largest node an autoscaler can add, as declared by the
//!   admin (JSON, `NULL` for a fixed-size cluster);
//! - `detected_autoscaling`: the same, detected by the manager (GKE Autopilot);
//! - `nodes`: the manager's last per-node capacity report (JSON list), `NULL`
//!   until a manager that reports nodes has connected.
//!
//! One column per statement, each nullable or with a default, so SQLite's
//! `ALTER TABLE` can do it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = [
            string(KubeCluster::CapacityMode)
                .default("nodes")
                .to_owned(),
            json_binary_null(KubeCluster::Scheduling),
            json_binary_null(KubeCluster::Autoscaling),
            json_binary_null(KubeCluster::DetectedAutoscaling),
            json_binary_null(KubeCluster::Nodes),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(KubeCluster::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            KubeCluster::Nodes,
            KubeCluster::DetectedAutoscaling,
            KubeCluster::Autoscaling,
            KubeCluster::Scheduling,
            KubeCluster::CapacityMode,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(KubeCluster::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum KubeCluster {
    Table,
    CapacityMode,
    Scheduling,
    Autoscaling,
    DetectedAutoscaling,
    Nodes,
}
