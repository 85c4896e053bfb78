//! Roles, disabling, deleting and passwords of users. Every change writes its
//! audit row in the same transaction; disabling and deleting revoke the user's
//! personal access tokens and browser sessions in that transaction too, and set
//! their running workspaces to stop (kept, volumes included; an owner or admin
//! may start or delete them, and re-enabling does not restart them).
//!
//! An organisation always keeps one enabled owner: demoting, disabling or deleting
//! the last one is refused (`failed_precondition` at the API), so nobody can lock
//! an organisation out of its own user management.

use lapdev_common::role::Role;
use lapdev_common::status::DesiredState;
use sea_orm::sea_query::{Condition, Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter,
};
use uuid::Uuid;

use crate::audit::{NewAuditEntry, insert_audit};
use crate::db::{Db, now};
use crate::entities::{kube_workspace, personal_access_token, user};
use crate::error::{DbError, DbResult, EntityKind};
use crate::org::{NewUser, User};
use crate::util::tz;

/// What can be done to a user's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// Give them this role.
    SetRole(Role),
    /// Refuse their tokens and sessions from now on and stop their running
    /// workspaces (the row, the workspaces and their volumes are kept).
    Disable,
    /// Allow them again (their revoked tokens stay revoked).
    Enable,
    /// Soft-delete them (their workspaces are stopped and kept, as for
    /// [`UserChange::Disable`]).
    Delete,
}

/// The stored password hash of a user found for sign-in.
#[derive(Debug, Clone)]
pub struct SignInCandidate {
    /// The user.
    pub user: User,
    /// Their PHC-format hash, if they have a password.
    pub password_hash: Option<String>,
}

impl Db {
    /// Creates a user with `role` and writes `audit` in the same transaction.
    pub async fn create_user_with_role(
        &self,
        org_id: Uuid,
        new: NewUser,
        role: Role,
        audit: NewAuditEntry,
    ) -> DbResult<User> {
        let created = self.create_user(org_id, new).await?;
        if role == Role::Member {
            self.record_audit(audit).await?;
            return Ok(created);
        }
        self.change_user(org_id, created.id, UserChange::SetRole(role), audit)
            .await
    }

    /// Applies `change` to a live user of `org_id`, revoking their tokens when
    /// disabling or deleting, and writes `audit`, all in one transaction.
    pub async fn change_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        change: UserChange,
        audit: NewAuditEntry,
    ) -> DbResult<User> {
        let txn = self.begin_write().await?;
        let row = user::Entity::find_by_id(user_id)
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::DeletedAt.is_null())
            .one(&txn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::User, user_id))?;
        let current = User::try_from(row.clone())?;
        let loses_owner = current.role == Role::Owner
            && current.disabled_at.is_none()
            && match change {
                UserChange::SetRole(r) => r != Role::Owner,
                UserChange::Disable | UserChange::Delete => true,
                UserChange::Enable => false,
            };
        if loses_owner && enabled_owners(&txn, org_id).await? <= 1 {
            return Err(DbError::InvalidInput {
                field: "user",
                reason: "this is the organisation's last enabled owner",
            });
        }
        let at = tz(now());
        let mut active: user::ActiveModel = row.into();
        active.updated_at = Set(at);
        match change {
            UserChange::SetRole(r) => active.role = Set(r.as_str().to_owned()),
            UserChange::Disable => active.disabled_at = Set(Some(at)),
            UserChange::Enable => active.disabled_at = Set(None),
            UserChange::Delete => active.deleted_at = Set(Some(at)),
        }
        let updated = active.update(&txn).await?;
        if matches!(change, UserChange::Disable | UserChange::Delete) {
            crate::session::revoke_user_sessions(&txn, user_id, crate::util::utc(at)).await?;
            personal_access_token::Entity::update_many()
                .col_expr(
                    personal_access_token::Column::RevokedAt,
                    Expr::value(Some(at)),
                )
                .filter(personal_access_token::Column::UserId.eq(user_id))
                .filter(personal_access_token::Column::RevokedAt.is_null())
                .exec(&txn)
                .await?;
        }
        let stopped = if matches!(change, UserChange::Disable | UserChange::Delete) {
            stop_workspaces_of(&txn, org_id, user_id, at).await?
        } else {
            Vec::new()
        };
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        for id in stopped {
            if let Ok(ws) = self.get_workspace(org_id, id).await {
                self.publish_workspace(Some(ws.status), &ws, false);
            }
        }
        User::try_from(updated)
    }

    /// Sets (or clears) a user's password hash (PHC string).
    pub async fn set_password_hash(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        hash: Option<String>,
    ) -> DbResult<()> {
        let done = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(hash))
            .col_expr(user::Column::UpdatedAt, Expr::value(tz(now())))
            .filter(user::Column::Id.eq(user_id))
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        if done.rows_affected == 0 {
            return Err(DbError::not_found(EntityKind::User, user_id));
        }
        Ok(())
    }

    /// A live user of `org_id` by name with their password hash, for sign-in.
    pub async fn find_sign_in_candidate(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> DbResult<Option<SignInCandidate>> {
        let row = user::Entity::find()
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::Name.eq(name))
            .filter(user::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?;
        row.map(|m| {
            let password_hash = m.password_hash.clone();
            Ok(SignInCandidate {
                user: User::try_from(m)?,
                password_hash,
            })
        })
        .transpose()
    }

    /// The oldest live owner of `org_id` (the one the first start created, unless
    /// it was changed).
    pub async fn first_owner(&self, org_id: Uuid) -> DbResult<User> {
        use sea_orm::QueryOrder as _;
        user::Entity::find()
            .filter(user::Column::OrganizationId.eq(org_id))
            .filter(user::Column::Role.eq(Role::Owner.as_str()))
            .filter(user::Column::DeletedAt.is_null())
            .filter(user::Column::DisabledAt.is_null())
            .order_by_asc(user::Column::CreatedAt)
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::User, "owner"))?
            .try_into()
    }
}

/// Sets every live workspace of `user_id` that is desired `running` to
/// `stopped` (volumes are kept; the reconciler stops the pods); returns their
/// ids.
async fn stop_workspaces_of(
    txn: &DatabaseTransaction,
    org_id: Uuid,
    user_id: Uuid,
    at: sea_orm::prelude::DateTimeWithTimeZone,
) -> DbResult<Vec<Uuid>> {
    use kube_workspace::Column as W;
    let running = || {
        Condition::all()
            .add(W::OrganizationId.eq(org_id))
            .add(W::OwnerId.eq(user_id))
            .add(W::DeletedAt.is_null())
            .add(W::DesiredState.eq(DesiredState::Running.as_str()))
    };
    let ids: Vec<Uuid> = kube_workspace::Entity::find()
        .filter(running())
        .all(txn)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect();
    if ids.is_empty() {
        return Ok(ids);
    }
    kube_workspace::Entity::update_many()
        .col_expr(W::DesiredState, Expr::value(DesiredState::Stopped.as_str()))
        .col_expr(W::RepairAttempts, Expr::value(0))
        .col_expr(
            W::NextAttemptAt,
            Expr::value(Option::<sea_orm::prelude::DateTimeWithTimeZone>::None),
        )
        .col_expr(W::Version, Expr::col(W::Version).add(1))
        .col_expr(W::UpdatedAt, Expr::value(at))
        .filter(running())
        .filter(W::Id.is_in(ids.clone()))
        .exec(txn)
        .await?;
    crate::timers::disarm_many(txn, &ids).await?;
    Ok(ids)
}

async fn enabled_owners(txn: &DatabaseTransaction, org_id: Uuid) -> DbResult<u64> {
    Ok(user::Entity::find()
        .filter(user::Column::OrganizationId.eq(org_id))
        .filter(user::Column::Role.eq(Role::Owner.as_str()))
        .filter(user::Column::DeletedAt.is_null())
        .filter(user::Column::DisabledAt.is_null())
        .count(txn)
        .await?)
}
