//! First start: create the first organisation and its `admin` user, mint an admin
//! token, and write it to `<data-dir>/admin-token` so a new user can call the
//! admin API at once.

use std::time::Duration;

use lapdev_db::{Db, NewUser};

use crate::datadir::DataDir;
use crate::jwt::JwtKeys;

/// Name of the first organisation.
pub const DEFAULT_ORGANIZATION: &str = "default";
/// Name of the first organisation's admin user.
pub const ADMIN_USER: &str = "admin";
/// File in the data directory holding the last minted admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Creates the first organisation and admin when the database has none and
/// returns a freshly minted admin token; `None` when they existed already.
pub async fn ensure_first_admin(
    db: &Db,
    jwt: &JwtKeys,
    data_dir: &DataDir,
    token_days: u64,
) -> anyhow::Result<Option<String>> {
    if !db.list_organizations().await?.is_empty() {
        return Ok(None);
    }
    let org = db.create_organization(DEFAULT_ORGANIZATION).await?;
    db.create_user(
        org.id,
        NewUser {
            name: ADMIN_USER.to_owned(),
            email: None,
        },
    )
    .await?;
    let token = mint_admin_token(db, jwt, data_dir, token_days).await?;
    Ok(Some(token))
}

/// Mints a token for the first organisation's admin user and writes it to the
/// data directory.
pub async fn mint_admin_token(
    db: &Db,
    jwt: &JwtKeys,
    data_dir: &DataDir,
    token_days: u64,
) -> anyhow::Result<String> {
    let org = db
        .list_organizations()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no organisation exists yet; start the server once"))?;
    let user = db.get_user_by_name(org.id, ADMIN_USER).await?;
    let ttl = Duration::from_secs(token_days.saturating_mul(24 * 3600));
    let token = jwt.mint(user.id, org.id, ttl)?;
    data_dir.write_private(ADMIN_TOKEN_FILE, format!("{token}\n").as_bytes())?;
    Ok(token)
}
