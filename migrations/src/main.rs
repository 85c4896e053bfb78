//! `migrations` CLI: `up`, `down`, `status`, `fresh` against `DATABASE_URL` (or `-u`).
//!
//! `lapdev-db/run_migration.sh` wraps it with Lapdev's default database URL.

#[tokio::main]
async fn main() {
    sea_orm_migration::cli::run_cli(migrations::Migrator).await;
}
