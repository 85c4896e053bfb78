//! Cloud providers (`k8s_provider`): create, list, get, soft-delete, and decrypting the
//! credential on purpose. No function returns the credential except
//! [`Db::provider_credential`].

use chrono::{DateTime, Utc};
use lapdev_common::status::K8sProviderKind;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;

use crate::crypto::{CredentialKey, ProviderCredential, decrypt_credential, encrypt_credential};
use crate::db::{Db, now};
use crate::entities::{k8s_provider, kube_cluster};
use crate::error::{DbError, DbResult, EntityKind, parse_stored, unique_violation};
use crate::util::{check_named, tz, utc};

/// A registered cloud provider account, without its credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// Primary key.
    pub id: Uuid,
    /// Owning organisation.
    pub organization_id: Uuid,
    /// Unique among the organisation's live providers.
    pub name: String,
    /// Which cloud.
    pub kind: K8sProviderKind,
    /// Non-secret settings (e.g. project and default location for GCP).
    pub config: serde_json::Value,
    /// Who registered it.
    pub created_by: Option<Uuid>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What [`Db::create_provider`] needs.
#[derive(Debug, Clone)]
pub struct NewProvider {
    /// Unique among the organisation's live providers.
    pub name: String,
    /// Which cloud.
    pub kind: K8sProviderKind,
    /// Non-secret settings.
    pub config: serde_json::Value,
    /// The secret (e.g. a service-account key), stored encrypted.
    pub credential: ProviderCredential,
    /// Who registered it.
    pub created_by: Option<Uuid>,
}

fn provider_from_model(m: k8s_provider::Model) -> DbResult<Provider> {
    Ok(Provider {
        kind: parse_stored("k8s_provider", "kind", &m.kind)?,
        id: m.id,
        organization_id: m.organization_id,
        name: m.name,
        config: m.config,
        created_by: m.created_by,
        created_at: utc(m.created_at),
        updated_at: utc(m.updated_at),
    })
}

impl Db {
    /// Registers a provider; `key` encrypts the credential.
    pub async fn create_provider(
        &self,
        org_id: Uuid,
        new: NewProvider,
        key: &CredentialKey,
    ) -> DbResult<Provider> {
        check_named(lapdev_common::name::NameKind::Provider, &new.name)?;
        self.get_organization(org_id).await?;
        if let Some(user_id) = new.created_by {
            self.get_user(org_id, user_id).await?;
        }
        let id = Uuid::new_v4();
        let ciphertext = encrypt_credential(key, id, &new.credential)?;
        let at = tz(now());
        let model = k8s_provider::ActiveModel {
            id: Set(id),
            organization_id: Set(org_id),
            name: Set(new.name.clone()),
            kind: Set(new.kind.as_str().to_owned()),
            config: Set(new.config),
            credential_ciphertext: Set(ciphertext),
            created_by: Set(new.created_by),
            created_at: Set(at),
            updated_at: Set(at),
            deleted_at: Set(None),
        }
        .insert(&self.conn)
        .await
        .map_err(unique_violation(EntityKind::Provider, &new.name))?;
        provider_from_model(model)
    }

    /// The live providers of `org_id`, by name.
    pub async fn list_providers(&self, org_id: Uuid) -> DbResult<Vec<Provider>> {
        k8s_provider::Entity::find()
            .filter(k8s_provider::Column::OrganizationId.eq(org_id))
            .filter(k8s_provider::Column::DeletedAt.is_null())
            .order_by_asc(k8s_provider::Column::Name)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(provider_from_model)
            .collect()
    }

    async fn find_provider(&self, org_id: Uuid, id: Uuid) -> DbResult<k8s_provider::Model> {
        k8s_provider::Entity::find_by_id(id)
            .filter(k8s_provider::Column::OrganizationId.eq(org_id))
            .filter(k8s_provider::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Provider, id))
    }

    /// A live provider of `org_id`.
    pub async fn get_provider(&self, org_id: Uuid, id: Uuid) -> DbResult<Provider> {
        provider_from_model(self.find_provider(org_id, id).await?)
    }

    /// Decrypts a provider's credential. Fails with `Credential(Decrypt)` when `key` is
    /// not the key it was stored with.
    pub async fn provider_credential(
        &self,
        org_id: Uuid,
        id: Uuid,
        key: &CredentialKey,
    ) -> DbResult<ProviderCredential> {
        let model = self.find_provider(org_id, id).await?;
        Ok(decrypt_credential(key, id, &model.credential_ciphertext)?)
    }

    /// Soft-deletes a provider. Refused (`InUse`) while live clusters refer to it.
    pub async fn delete_provider(&self, org_id: Uuid, id: Uuid) -> DbResult<()> {
        self.find_provider(org_id, id).await?;
        let clusters = kube_cluster::Entity::find()
            .filter(kube_cluster::Column::ProviderId.eq(id))
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .count(&self.conn)
            .await?;
        if clusters > 0 {
            return Err(DbError::InUse {
                entity: EntityKind::Provider,
                id,
                users: clusters,
                user_kind: EntityKind::Cluster,
            });
        }
        let at = tz(now());
        let result = k8s_provider::Entity::update_many()
            .col_expr(k8s_provider::Column::DeletedAt, Expr::value(Some(at)))
            .col_expr(k8s_provider::Column::UpdatedAt, Expr::value(at))
            .filter(k8s_provider::Column::Id.eq(id))
            .filter(k8s_provider::Column::OrganizationId.eq(org_id))
            .filter(k8s_provider::Column::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        if result.rows_affected == 0 {
            return Err(DbError::not_found(EntityKind::Provider, id));
        }
        Ok(())
    }

    /// Checks that `key` decrypts the stored credentials (one is enough: they are all
    /// written with the same key). The server calls this on start and refuses to run
    /// with a key that does not match the database. `Ok` when no credential is stored.
    pub async fn check_credential_key(&self, key: &CredentialKey) -> DbResult<()> {
        let any = k8s_provider::Entity::find()
            .filter(k8s_provider::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?;
        if let Some(model) = any {
            decrypt_credential(key, model.id, &model.credential_ciphertext)?;
        }
        Ok(())
    }
}
