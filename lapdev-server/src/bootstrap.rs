//! First start: create the first organisation and its `admin` user as `owner`,
//! mint an owner personal access token, and write it to `<data-dir>/admin-token`
//! (mode 0600) so a new user can call the admin API at once. Nothing long-lived
//! goes to the logs.

use chrono::Utc;
use lapdev_common::role::Role;
use lapdev_db::{Db, NewAuditEntry, NewUser};

use crate::datadir::DataDir;

/// Name of the first organisation.
pub const DEFAULT_ORGANIZATION: &str = "default";
/// Name of the first organisation's owner.
pub const ADMIN_USER: &str = "admin";
/// File in the data directory holding the last minted owner token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Creates the first organisation and owner when the database has none and
/// returns a freshly minted owner token; `None` when they existed already.
pub async fn ensure_first_admin(
    db: &Db,
    data_dir: &DataDir,
    token_days: u64,
) -> anyhow::Result<Option<String>> {
    if !db.list_organizations().await?.is_empty() {
        return Ok(None);
    }
    let org = db.create_organization(DEFAULT_ORGANIZATION).await?;
    db.create_user_with_role(
        org.id,
        NewUser {
            name: ADMIN_USER.to_owned(),
            email: None,
        },
        Role::Owner,
        NewAuditEntry {
            organization_id: Some(org.id),
            action: "user.create".into(),
            target: Some(ADMIN_USER.into()),
            outcome: "success".into(),
            detail: Some("first start".into()),
            ..Default::default()
        },
    )
    .await?;
    let token = mint_admin_token(db, data_dir, token_days).await?;
    Ok(Some(token))
}

/// Mints a personal access token for the first organisation's oldest owner and
/// writes it to the data directory.
pub async fn mint_admin_token(
    db: &Db,
    data_dir: &DataDir,
    token_days: u64,
) -> anyhow::Result<String> {
    let org = db
        .list_organizations()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no organisation exists yet in the database of {}: start the server once with this --data-dir and --database-url",
                data_dir.path().display()
            )
        })?;
    let owner = db.first_owner(org.id).await?;
    let days = i64::try_from(token_days.clamp(1, 3650)).unwrap_or(30);
    let created = db
        .create_pat(
            org.id,
            owner.id,
            ADMIN_TOKEN_FILE,
            Utc::now() + chrono::Duration::days(days),
            NewAuditEntry {
                organization_id: Some(org.id),
                actor_id: Some(owner.id),
                actor_name: Some(owner.name.clone()),
                action: "token.create".into(),
                target: Some(ADMIN_TOKEN_FILE.into()),
                outcome: "success".into(),
                detail: Some("minted by lapdev-server".into()),
                ..Default::default()
            },
        )
        .await?;
    data_dir.write_private(ADMIN_TOKEN_FILE, format!("{}\n", created.secret).as_bytes())?;
    Ok(created.secret)
}
