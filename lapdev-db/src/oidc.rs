//! OpenID Connect sign-in: the server's provider (`oidc_provider`, its client
//! secret sealed like provider credentials) and the links between users and
//! provider accounts (`user_identity`, unique by (issuer, subject)).
//!
//! The rules of linking are the caller's (the server's OIDC module); this module
//! only stores and finds.

use chrono::{DateTime, Utc};
use lapdev_common::role::Role;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::audit::{NewAuditEntry, insert_audit};
use crate::crypto::{CredentialKey, OIDC_AAD_CONTEXT, ProviderCredential, open, seal};
use crate::db::{Db, now};
use crate::entities::{oidc_provider, user, user_identity};
use crate::error::{DbError, DbResult, parse_stored};
use crate::org::{NewUser, User};
use crate::util::{check_name, tz, utc};

/// What [`Db::set_oidc_provider`] stores.
#[derive(Clone)]
pub struct NewOidcProvider {
    /// The organisation signed-in users join.
    pub organization_id: Uuid,
    /// The issuer URL, exactly as the provider's ID tokens name it.
    pub issuer: String,
    /// This server's client id at the provider.
    pub client_id: String,
    /// The client secret (stored encrypted).
    pub client_secret: ProviderCredential,
    /// Email domains whose verified addresses may be linked to an account.
    pub allowed_domains: Vec<String>,
    /// The role of users created at their first sign-in.
    pub default_role: Role,
}

impl std::fmt::Debug for NewOidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOidcProvider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The stored provider, the secret decrypted.
#[derive(Clone)]
pub struct OidcProvider {
    /// Primary key.
    pub id: Uuid,
    /// What was stored (the secret decrypted).
    pub config: NewOidcProvider,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn domains(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Db {
    /// Stores the server's OpenID provider, replacing any other, and writes
    /// `audit` in the same transaction.
    pub async fn set_oidc_provider(
        &self,
        key: &CredentialKey,
        new: NewOidcProvider,
        audit: NewAuditEntry,
    ) -> DbResult<OidcProvider> {
        check_name("issuer", &new.issuer)?;
        check_name("client_id", &new.client_id)?;
        let mut allowed: Vec<String> = new
            .allowed_domains
            .iter()
            .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
            .collect();
        allowed.retain(|d| !d.is_empty());
        if allowed.iter().any(|d| d.contains(',') || d.contains('@')) {
            return Err(DbError::InvalidInput {
                field: "allowed_domains",
                reason: "must be domain names",
            });
        }
        self.get_organization(new.organization_id).await?;
        let id = Uuid::new_v4();
        let ciphertext = seal(key, OIDC_AAD_CONTEXT, id, &new.client_secret)?;
        let at = now();
        let txn = self.begin_write().await?;
        oidc_provider::Entity::delete_many().exec(&txn).await?;
        oidc_provider::ActiveModel {
            id: Set(id),
            organization_id: Set(new.organization_id),
            issuer: Set(new.issuer.clone()),
            client_id: Set(new.client_id.clone()),
            client_secret_ciphertext: Set(ciphertext),
            allowed_domains: Set(allowed.join(",")),
            default_role: Set(new.default_role.as_str().to_owned()),
            created_at: Set(tz(at)),
            updated_at: Set(tz(at)),
        }
        .insert(&txn)
        .await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(OidcProvider {
            id,
            config: NewOidcProvider {
                allowed_domains: allowed,
                ..new
            },
            updated_at: at,
        })
    }

    /// The server's OpenID provider, if one is set, its secret decrypted with
    /// `key`.
    pub async fn oidc_provider(&self, key: &CredentialKey) -> DbResult<Option<OidcProvider>> {
        let Some(m) = oidc_provider::Entity::find().one(&self.conn).await? else {
            return Ok(None);
        };
        let secret = open(key, OIDC_AAD_CONTEXT, m.id, &m.client_secret_ciphertext)?;
        Ok(Some(OidcProvider {
            id: m.id,
            config: NewOidcProvider {
                organization_id: m.organization_id,
                issuer: m.issuer,
                client_id: m.client_id,
                client_secret: secret,
                allowed_domains: domains(&m.allowed_domains),
                default_role: parse_stored("oidc_provider", "default_role", &m.default_role)?,
            },
            updated_at: utc(m.updated_at),
        }))
    }

    /// Removes the server's OpenID provider (linked identities are kept, so
    /// setting it again restores sign-in) and writes `audit` with it.
    pub async fn clear_oidc_provider(&self, audit: NewAuditEntry) -> DbResult<bool> {
        let txn = self.begin_write().await?;
        let done = oidc_provider::Entity::delete_many().exec(&txn).await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(done.rows_affected > 0)
    }

    /// The live user linked to (issuer, subject), with the email stored at the
    /// first link.
    pub async fn user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> DbResult<Option<(User, Option<String>)>> {
        use user_identity::Column as I;
        let Some(link) = user_identity::Entity::find()
            .filter(I::Issuer.eq(issuer))
            .filter(I::Subject.eq(subject))
            .one(&self.conn)
            .await?
        else {
            return Ok(None);
        };
        let Some(u) = user::Entity::find_by_id(link.user_id)
            .filter(user::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((User::try_from(u)?, link.email_at_link)))
    }

    /// The live user of `org_id` whose email is `email` (case-insensitive), if
    /// exactly one has it.
    pub async fn user_by_email(&self, org_id: Uuid, email: &str) -> DbResult<Option<User>> {
        let wanted = email.to_ascii_lowercase();
        let rows = user::Entity::find()
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::DeletedAt.is_null())
            .filter(user::Column::Email.is_not_null())
            .all(&self.conn)
            .await?;
        let mut found = rows
            .into_iter()
            .filter(|u| u.email.as_deref().map(str::to_ascii_lowercase) == Some(wanted.clone()));
        match (found.next(), found.next()) {
            (Some(one), None) => Ok(Some(User::try_from(one)?)),
            _ => Ok(None),
        }
    }

    /// Links (issuer, subject) to an existing user and writes `audit` with it.
    pub async fn link_identity(
        &self,
        user_id: Uuid,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        audit: NewAuditEntry,
    ) -> DbResult<()> {
        let txn = self.begin_write().await?;
        insert_link(&txn, user_id, issuer, subject, email).await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Creates a user with `role`, linked to (issuer, subject), and writes
    /// `audit`, in one transaction.
    pub async fn create_linked_user(
        &self,
        org_id: Uuid,
        new: NewUser,
        role: Role,
        issuer: &str,
        subject: &str,
        audit: NewAuditEntry,
    ) -> DbResult<User> {
        let email = new.email.clone();
        let created = self.create_user(org_id, new).await?;
        let txn = self.begin_write().await?;
        if role != Role::Member {
            user::Entity::update_many()
                .col_expr(
                    user::Column::Role,
                    sea_orm::sea_query::Expr::value(role.as_str()),
                )
                .filter(user::Column::Id.eq(created.id))
                .exec(&txn)
                .await?;
        }
        insert_link(&txn, created.id, issuer, subject, email.as_deref()).await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        self.get_user(org_id, created.id).await
    }
}

async fn insert_link(
    txn: &sea_orm::DatabaseTransaction,
    user_id: Uuid,
    issuer: &str,
    subject: &str,
    email: Option<&str>,
) -> DbResult<()> {
    user_identity::ActiveModel {
        id: Set(Uuid::new_v4()),
        user_id: Set(user_id),
        issuer: Set(issuer.to_owned()),
        subject: Set(subject.to_owned()),
        email_at_link: Set(email.map(str::to_owned)),
        created_at: Set(tz(now())),
    }
    .insert(txn)
    .await
    .map_err(crate::error::unique_violation(
        crate::error::EntityKind::User,
        subject,
    ))?;
    Ok(())
}
