//! Organisations and users: enough to scope every other row and to name token
//! subjects. Roles, disabling and passwords: `people.rs`.

use chrono::{DateTime, Utc};
use lapdev_common::role::Role;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use crate::db::{Db, now};
use crate::entities::{organization, user};
use crate::error::{DbError, DbResult, EntityKind, parse_stored, unique_violation};
use crate::util::{check_name, tz, utc};

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Primary key.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// An organisation's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrgSettings {
    /// Admins may open shells into other users' workspaces (default off; every
    /// such session is audited).
    pub admins_may_open_shells: bool,
}

/// A member of one organisation; `id` is the subject of their JWTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Primary key.
    pub id: Uuid,
    /// The organisation the user belongs to.
    pub organization_id: Uuid,
    /// Unique among the organisation's live users.
    pub name: String,
    /// Contact address, if known.
    pub email: Option<String>,
    /// What they may do in the organisation.
    pub role: Role,
    /// When they were disabled: their tokens are refused from then on.
    pub disabled_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What [`Db::create_user`] needs.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique among the organisation's live users.
    pub name: String,
    /// Contact address, if known.
    pub email: Option<String>,
}

impl From<organization::Model> for Organization {
    fn from(m: organization::Model) -> Self {
        Organization {
            id: m.id,
            name: m.name,
            created_at: utc(m.created_at),
            updated_at: utc(m.updated_at),
        }
    }
}

impl TryFrom<user::Model> for User {
    type Error = DbError;

    fn try_from(m: user::Model) -> DbResult<Self> {
        Ok(User {
            id: m.id,
            organization_id: m.organization_id,
            name: m.name,
            email: m.email,
            role: parse_stored("user", "role", &m.role)?,
            disabled_at: m.disabled_at.map(utc),
            created_at: utc(m.created_at),
            updated_at: utc(m.updated_at),
        })
    }
}

impl Db {
    /// Creates an organisation.
    pub async fn create_organization(&self, name: &str) -> DbResult<Organization> {
        check_name("organization name", name)?;
        let at = tz(now());
        let model = organization::ActiveModel {
            id: Set(Uuid::new_v4()),
            name: Set(name.to_owned()),
            created_at: Set(at),
            updated_at: Set(at),
            deleted_at: Set(None),
            admins_may_open_shells: Set(false),
        }
        .insert(&self.conn)
        .await?;
        Ok(model.into())
    }

    /// A live organisation by id.
    pub async fn get_organization(&self, id: Uuid) -> DbResult<Organization> {
        organization::Entity::find_by_id(id)
            .filter(organization::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .map(Organization::from)
            .ok_or_else(|| DbError::not_found(EntityKind::Organization, id))
    }

    /// `id`'s settings.
    pub async fn org_settings(&self, id: Uuid) -> DbResult<OrgSettings> {
        organization::Entity::find_by_id(id)
            .filter(organization::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .map(|m| OrgSettings {
                admins_may_open_shells: m.admins_may_open_shells,
            })
            .ok_or_else(|| DbError::not_found(EntityKind::Organization, id))
    }

    /// Changes `id`'s settings and writes `audit` in the same transaction.
    pub async fn set_org_settings(
        &self,
        id: Uuid,
        settings: OrgSettings,
        audit: crate::NewAuditEntry,
    ) -> DbResult<OrgSettings> {
        let txn = self.begin_write().await?;
        let done = organization::Entity::update_many()
            .col_expr(
                organization::Column::AdminsMayOpenShells,
                sea_orm::sea_query::Expr::value(settings.admins_may_open_shells),
            )
            .col_expr(
                organization::Column::UpdatedAt,
                sea_orm::sea_query::Expr::value(tz(now())),
            )
            .filter(organization::Column::Id.eq(id))
            .filter(organization::Column::DeletedAt.is_null())
            .exec(&txn)
            .await?;
        if done.rows_affected == 0 {
            return Err(DbError::not_found(EntityKind::Organization, id));
        }
        crate::audit::insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(settings)
    }

    /// Every live organisation, oldest first.
    pub async fn list_organizations(&self) -> DbResult<Vec<Organization>> {
        Ok(organization::Entity::find()
            .filter(organization::Column::DeletedAt.is_null())
            .order_by_asc(organization::Column::CreatedAt)
            .order_by_asc(organization::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(Organization::from)
            .collect())
    }

    /// Creates a `member` in `org_id`.
    pub async fn create_user(&self, org_id: Uuid, new: NewUser) -> DbResult<User> {
        check_name("user name", &new.name)?;
        self.get_organization(org_id).await?;
        let at = tz(now());
        let model = user::ActiveModel {
            id: Set(Uuid::new_v4()),
            organization_id: Set(org_id),
            name: Set(new.name.clone()),
            email: Set(new.email),
            created_at: Set(at),
            updated_at: Set(at),
            deleted_at: Set(None),
            // The least power; `Db::create_user_with_role` (people.rs) gives more.
            role: Set(Role::Member.as_str().to_owned()),
            disabled_at: Set(None),
            password_hash: Set(None),
        }
        .insert(&self.conn)
        .await
        .map_err(unique_violation(EntityKind::User, &new.name))?;
        model.try_into()
    }

    /// A live user of `org_id` by id.
    pub async fn get_user(&self, org_id: Uuid, user_id: Uuid) -> DbResult<User> {
        user::Entity::find_by_id(user_id)
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::User, user_id))?
            .try_into()
    }

    /// A live user of `org_id` by name.
    pub async fn get_user_by_name(&self, org_id: Uuid, name: &str) -> DbResult<User> {
        user::Entity::find()
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::Name.eq(name))
            .filter(user::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::User, name))?
            .try_into()
    }

    /// The live users of `org_id`, by name.
    pub async fn list_users(&self, org_id: Uuid) -> DbResult<Vec<User>> {
        user::Entity::find()
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::DeletedAt.is_null())
            .order_by_asc(user::Column::Name)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(User::try_from)
            .collect()
    }
}
