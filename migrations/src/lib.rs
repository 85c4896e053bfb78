//! Lapdev's database migrations: one file per migration, each with `up` and `down`,
//! portable between PostgreSQL and SQLite.
//!
//! Portability rules every migration here follows:
//! - tables are created with their foreign keys inline, because SQLite cannot add a
//!   foreign key (or most other constraints) with `ALTER TABLE`; a later change to a
//!   table's constraints has to rebuild the table;
//! - uniqueness among live rows is a partial unique index (`WHERE deleted_at IS NULL`),
//!   which both databases support;
//! - columns have no server-side defaults for timestamps: the application writes them
//!   in UTC, so both databases store the same representation.
//!
//! `down` drops what `up` created (indexes go with their table), so `up`, `down`, `up`
//! round-trips on both databases.
//!
//! Expand, then contract: during a rolling upgrade the previous release keeps serving
//! the database the new release migrated, and a rollback starts it there again
//! (`lapdev-db`'s `schema` module serves a database whose extra migrations all sort
//! after the build's newest). So a migration only adds what the previous release can
//! ignore: new tables, nullable columns or columns with a default, indexes that its
//! writes satisfy. Renaming or dropping a column, or tightening a constraint, takes
//! two releases: the first stops using it, the next removes it. The new release also
//! copes with rows the previous one writes during the rollout (its new columns left
//! NULL or at their default; a backfill does not cover them). So a rollback goes one
//! release back; further back, run the newer build's `down` first. Names sort in the
//! order the migrations run (a test checks it): a migration merged after a newer-named
//! one is renamed.

pub use sea_orm_migration::prelude::*;

mod m20251126_000001_create_organization;
mod m20251126_000002_create_user;
mod m20251126_000003_create_k8s_provider;
mod m20251126_000004_create_kube_cluster;
mod m20251126_000005_create_kube_cluster_token;
mod m20251126_000006_create_kube_workspace;
mod m20251126_000007_add_workspace_placement_constraints;
mod m20251129_000008_workspace_repair_and_cluster_profile;
mod m20251129_000009_people;
mod m20251130_000010_cluster_placement;
mod m20251130_000011_sessions_oidc;
mod m20251130_000012_workspace_observed_at;
mod m20251130_000013_oidc_pending;
mod m20251201_000014_workspace_quota;
mod m20251201_000015_workspace_timers;
mod m20251202_000016_lifetime_notice;
mod m20251202_000017_server_replica;
mod m20251203_000018_cluster_owner;

/// Every migration, in the order they run.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20251126_000001_create_organization::Migration),
            Box::new(m20251126_000002_create_user::Migration),
            Box::new(m20251126_000003_create_k8s_provider::Migration),
            Box::new(m20251126_000004_create_kube_cluster::Migration),
            Box::new(m20251126_000005_create_kube_cluster_token::Migration),
            Box::new(m20251126_000006_create_kube_workspace::Migration),
            Box::new(m20251126_000007_add_workspace_placement_constraints::Migration),
            Box::new(m20251129_000008_workspace_repair_and_cluster_profile::Migration),
            Box::new(m20251129_000009_people::Migration),
            Box::new(m20251130_000010_cluster_placement::Migration),
            Box::new(m20251130_000011_sessions_oidc::Migration),
            Box::new(m20251130_000012_workspace_observed_at::Migration),
            Box::new(m20251130_000013_oidc_pending::Migration),
            Box::new(m20251201_000014_workspace_quota::Migration),
            Box::new(m20251201_000015_workspace_timers::Migration),
            Box::new(m20251202_000016_lifetime_notice::Migration),
            Box::new(m20251202_000017_server_replica::Migration),
            Box::new(m20251203_000018_cluster_owner::Migration),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build serves a database whose unknown migrations all sort after its
    /// own newest (`lapdev-db`'s `schema` module), so the order they run in
    /// must be the order their names sort in: a migration written earlier
    /// but merged later is renamed to sort last.
    #[test]
    fn migrations_run_in_the_order_their_names_sort() {
        let names: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        for pair in names.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{} runs after {} but does not sort after it",
                pair[1],
                pair[0]
            );
        }
    }
}
