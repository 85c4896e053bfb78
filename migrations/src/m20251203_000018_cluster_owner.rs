//! Cluster ownership across replicas: which replica holds a cluster's tunnel.
//!
//! `kube_cluster_owner`: one row per cluster whose manager has opened a tunnel
//! on a replica of a shared PostgreSQL database. It names the replica that
//! claimed the cluster (`replica_id`), the replica generation the claim was
//! made under (a claim is fenced by the replica's lease), and an `epoch` bumped
//! by every claim, so the newest tunnel is the one with the highest epoch and
//! a replica holding an older one closes it. Only the owner writes the
//! cluster's status.
//!
//! A table of its own rather than columns on `kube_cluster`: purely additive
//! (expand-only), so a server version that does not know it runs beside one
//! that does, and the generated `kube_cluster` entity stays as it is. The row
//! goes with its cluster (`ON DELETE CASCADE`). SQLite databases get the table
//! too (migrations stay portable) but never use it: SQLite is single-replica.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KubeClusterOwner::Table)
                    .col(pk_uuid(KubeClusterOwner::ClusterId))
                    .col(uuid(KubeClusterOwner::ReplicaId))
                    .col(big_integer(KubeClusterOwner::Generation))
                    .col(big_integer(KubeClusterOwner::Epoch))
                    .col(timestamp_with_time_zone(KubeClusterOwner::ClaimedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_cluster_owner_cluster")
                            .from(KubeClusterOwner::Table, KubeClusterOwner::ClusterId)
                            .to(KubeCluster::Table, KubeCluster::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KubeClusterOwner::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum KubeClusterOwner {
    Table,
    ClusterId,
    ReplicaId,
    Generation,
    Epoch,
    ClaimedAt,
}

#[derive(DeriveIden)]
enum KubeCluster {
    Table,
    Id,
}
