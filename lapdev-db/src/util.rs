//! Small conversions shared by the repository modules.

use chrono::{DateTime, FixedOffset, Utc};

use crate::error::{DbError, DbResult};

/// A UTC time as the entities store it.
pub(crate) fn tz(at: DateTime<Utc>) -> DateTime<FixedOffset> {
    at.fixed_offset()
}

/// A stored time as UTC.
pub(crate) fn utc(at: DateTime<FixedOffset>) -> DateTime<Utc> {
    at.with_timezone(&Utc)
}

/// Names are shown in lists and used in URLs: non-empty, at most 253 characters, no
/// leading or trailing whitespace.
pub(crate) fn check_name(field: &'static str, name: &str) -> DbResult<()> {
    if name.is_empty() {
        return Err(DbError::InvalidInput {
            field,
            reason: "must not be empty",
        });
    }
    if name.len() > 253 {
        return Err(DbError::InvalidInput {
            field,
            reason: "must be at most 253 characters",
        });
    }
    if name.trim() != name {
        return Err(DbError::InvalidInput {
            field,
            reason: "must not start or end with whitespace",
        });
    }
    Ok(())
}

/// Checks a name against `lapdev-common`'s rules (the API checks them first;
/// this is the last line of defence for other callers).
pub(crate) fn check_named(kind: lapdev_common::name::NameKind, name: &str) -> DbResult<()> {
    lapdev_common::name::validate(kind, name).map_err(|e| DbError::InvalidInput {
        field: e.kind.as_str(),
        reason: e.rule.reason(),
    })
}

pub(crate) fn check_non_negative(field: &'static str, value: i64) -> DbResult<()> {
    if value < 0 {
        return Err(DbError::InvalidInput {
            field,
            reason: "must not be negative",
        });
    }
    Ok(())
}
