//! Migrating on start, and what a build does with a database that a newer
//! build has migrated already.
//!
//! Migrations are expand-then-contract (see `migrations/src/lib.rs`): a
//! release only adds what the release before it can ignore, and removes only
//! what that release no longer used. So during a rolling upgrade the
//! previous release keeps serving a database the new release has migrated,
//! and a rollback can start the previous release on it again. sea-orm's
//! migrator refuses that ("Migration file of version … is missing"), which
//! would crash-loop every previous-release replica that restarts during the
//! rollout. [`compare`] tells that case apart from any other unknown
//! migration, which is still refused.
//!
//! The rule cannot tell how far ahead the database is: expand-then-contract
//! keeps it readable one release back only, so an older rollback must first
//! undo the newer release's migrations (its `migrations down`). Builds before
//! this module refuse any database a newer release migrated.

use std::collections::BTreeSet;

use migrations::{Migrator, MigratorTrait};
use sea_orm::DatabaseConnection;

use crate::error::{DbError, DbResult};

/// How a database's applied migrations relate to this build's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every migration applied is one of this build's; `pending` of this
    /// build's are not applied yet (empty: up to date).
    Known {
        /// This build's migrations not applied yet, in order.
        pending: Vec<String>,
    },
    /// Every migration of this build is applied, and a newer build applied
    /// `newer` too (each sorts after this build's newest): served as is.
    Ahead {
        /// The applied migrations this build does not know, in order.
        newer: Vec<String>,
    },
    /// Migrations this build does not know were applied where this build's
    /// history says otherwise: another branch's migration, or one that sorts
    /// among this build's, or this build's own missing under newer ones.
    /// Refused.
    Diverged {
        /// The applied migrations this build does not know, in order.
        unknown: Vec<String>,
        /// This build's migrations not applied, in order.
        pending: Vec<String>,
    },
}

/// Compares this build's migration names (`known`, in order) with those a
/// database records as applied. Names sort in the order they were written
/// (`mYYYYMMDD_NNNNNN_…`), which is what "newer" means here.
pub fn compare(known: &[String], applied: &[String]) -> SchemaState {
    let applied: BTreeSet<&str> = applied.iter().map(String::as_str).collect();
    let known_set: BTreeSet<&str> = known.iter().map(String::as_str).collect();
    let pending: Vec<String> = known
        .iter()
        .filter(|k| !applied.contains(k.as_str()))
        .cloned()
        .collect();
    let unknown: Vec<String> = applied
        .iter()
        .filter(|a| !known_set.contains(*a))
        .map(|a| (*a).to_owned())
        .collect();
    if unknown.is_empty() {
        return SchemaState::Known { pending };
    }
    let newest_known = known.iter().max().map(String::as_str).unwrap_or("");
    if pending.is_empty() && unknown.iter().all(|u| u.as_str() > newest_known) {
        SchemaState::Ahead { newer: unknown }
    } else {
        SchemaState::Diverged { unknown, pending }
    }
}

/// Applies this build's pending migrations to `conn`, or, when a newer build
/// migrated the database already ([`SchemaState::Ahead`]), leaves it as it is
/// and says so in the log. A [`SchemaState::Diverged`] database is refused
/// with [`DbError::SchemaDiverged`], untouched.
pub(crate) async fn migrate(conn: &DatabaseConnection) -> DbResult<()> {
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let applied: Vec<String> = Migrator::get_migration_models(conn)
        .await
        .map_err(DbError::Migrate)?
        .into_iter()
        .map(|m| m.version)
        .collect();
    match compare(&known, &applied) {
        SchemaState::Known { pending } if pending.is_empty() => {}
        SchemaState::Known { pending } => {
            tracing::info!(count = pending.len(), "applying database migrations");
            Migrator::up(conn, None).await.map_err(DbError::Migrate)?;
        }
        SchemaState::Ahead { newer } => tracing::warn!(
            newer = %newer.join(", "),
            "the database was migrated by a newer release; serving it unchanged \
             (expand-then-contract keeps it readable by this one)"
        ),
        SchemaState::Diverged { unknown, pending } => {
            return Err(DbError::SchemaDiverged { unknown, pending });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    const OURS: [&str; 3] = [
        "m20250101_000001_a",
        "m20250102_000002_b",
        "m20250103_000003_c",
    ];

    #[test]
    fn a_fresh_database_has_everything_pending() {
        assert_eq!(
            compare(&names(&OURS), &[]),
            SchemaState::Known {
                pending: names(&OURS)
            }
        );
    }

    #[test]
    fn a_database_behind_this_build_has_the_rest_pending() {
        assert_eq!(
            compare(&names(&OURS), &names(&OURS[..1])),
            SchemaState::Known {
                pending: names(&OURS[1..])
            }
        );
        assert_eq!(
            compare(&names(&OURS), &names(&OURS)),
            SchemaState::Known { pending: vec![] }
        );
    }

    #[test]
    fn newer_migrations_after_all_of_ours_are_ahead() {
        let mut applied = names(&OURS);
        applied.push("m20250201_000005_e".into());
        applied.push("m20250104_000004_d".into());
        assert_eq!(
            compare(&names(&OURS), &applied),
            SchemaState::Ahead {
                newer: names(&["m20250104_000004_d", "m20250201_000005_e"])
            }
        );
    }

    #[test]
    fn an_unknown_migration_with_ours_pending_is_diverged() {
        let applied = names(&[OURS[0], OURS[1], "m20250104_000004_d"]);
        assert_eq!(
            compare(&names(&OURS), &applied),
            SchemaState::Diverged {
                unknown: names(&["m20250104_000004_d"]),
                pending: names(&[OURS[2]]),
            }
        );
    }

    #[test]
    fn an_unknown_migration_older_than_our_newest_is_diverged() {
        let mut applied = names(&OURS);
        applied.push("m20250102_000099_elsewhere".into());
        assert_eq!(
            compare(&names(&OURS), &applied),
            SchemaState::Diverged {
                unknown: names(&["m20250102_000099_elsewhere"]),
                pending: vec![],
            }
        );
    }
}
