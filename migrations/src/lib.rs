//! Lapdev's database migrations: one file per migration, each with `up` and `down`,
//! portable between PostgreSQL and SQLite.
