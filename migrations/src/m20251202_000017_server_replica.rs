//! The replica registry: one row per running `lapdev-server` process on a
//! shared PostgreSQL database.
//!
//! `server_replica`: the replica's id (chosen by the process at start), the
//! internal address other replicas reach it on, its version, when it started,
//! its last heartbeat and the end of its lease (both in the database's clock,
//! never a replica's), and a `generation` bumped every time the replica takes
//! its lease again after losing it, so a write fenced by `(id, generation)`
//! from before the loss is refused. Expired rows are reaped by the live
//! replicas. The table is purely additive (expand-only), so a server version
//! that does not know it runs beside one that does. SQLite databases get the
//! table too (migrations stay portable) but never use it: SQLite is
//! single-replica.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ServerReplica::Table)
                    .col(pk_uuid(ServerReplica::Id))
                    .col(string(ServerReplica::Address))
                    .col(string(ServerReplica::Version))
                    .col(timestamp_with_time_zone(ServerReplica::StartedAt))
                    .col(timestamp_with_time_zone(ServerReplica::HeartbeatAt))
                    .col(timestamp_with_time_zone(ServerReplica::LeaseExpiresAt))
                    .col(big_integer(ServerReplica::Generation))
                    .to_owned(),
            )
            .await?;
        // Listing the live replicas and reaping the expired ones.
        manager
            .create_index(
                Index::create()
                    .name("ix_server_replica_lease_expires_at")
                    .table(ServerReplica::Table)
                    .col(ServerReplica::LeaseExpiresAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServerReplica::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ServerReplica {
    Table,
    Id,
    Address,
    Version,
    StartedAt,
    HeartbeatAt,
    LeaseExpiresAt,
    Generation,
}
