//! `QuotaRpc`: workspace quotas. Owners set them (`lapdev quota set`), admins
//! read them (`lapdev quota get`), every member reads their own limits and
//! usage (`lapdev whoami`).
//!
//! The check itself runs in the database transaction that creates or starts a
//! workspace (`lapdev_db`'s `quota.rs`); refusals reach the user as
//! `resource_exhausted` with the numbers, and are counted in
//! `lapdev_quota_refusals_total` ([`count_refusal`]).

use lapdev_common::quota::{QuotaExceeded, QuotaLimits, QuotaScope, QuotaUsage};
use lapdev_db::Db;
use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube::db_error;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;

/// Whose quota a call is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaTarget {
    /// The organisation's total.
    Organization,
    /// The default of every member without their own.
    EachMember,
    /// One member (by user name).
    Member(String),
}

/// One quota as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaView {
    /// `organization`, `each_member`, or the member's user name.
    pub target: String,
    /// The limits (`null`: none).
    pub limits: QuotaLimits,
    /// What is requested now under this quota (`each_member`: nothing; it is
    /// a default, counted per member).
    pub usage: Option<QuotaUsage>,
}

/// A member's own limits and usage, and the organisation's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MyQuotaView {
    /// The limits that apply to the caller (their own, else the default).
    pub member: QuotaLimits,
    /// What the caller's workspaces request.
    pub member_usage: QuotaUsage,
    /// The organisation's total.
    pub organization: QuotaLimits,
    /// What the organisation's workspaces request.
    pub organization_usage: QuotaUsage,
}

/// Workspace quotas of the caller's organisation.
#[lapdev_hrpc::service]
pub trait QuotaRpc {
    /// Sets a quota; every limit `null` removes it.
    #[hrpc(role = "owner")]
    async fn set_quota(
        &self,
        ctx: Context,
        target: QuotaTarget,
        limits: QuotaLimits,
    ) -> Result<QuotaView, HrpcError>;

    /// Every quota of the organisation, with usage.
    #[hrpc(role = "admin")]
    async fn list_quotas(&self, ctx: Context) -> Result<Vec<QuotaView>, HrpcError>;

    /// The caller's own limits and usage.
    #[hrpc(role = "member")]
    async fn my_quota(&self, ctx: Context) -> Result<MyQuotaView, HrpcError>;
}

/// The implementation of [`QuotaRpc`].
#[derive(Debug, Clone)]
pub struct QuotaService {
    db: Db,
}

impl QuotaService {
    /// A service on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn caller(ctx: &Context) -> Result<&Caller, HrpcError> {
    ctx.extension::<Caller>()
        .ok_or_else(|| HrpcError::unauthenticated("no caller on this request"))
}

/// Sets the per-organisation gauges of what running workspaces request
/// (`lapdev_org_running_workspaces`, `lapdev_org_requested_cpu_millis`,
/// `lapdev_org_requested_memory_bytes`, labelled `organization` by id), read
/// at scrape time with one grouped query; organisations with nothing running
/// read 0.
pub async fn export_usage(db: &Db) {
    let (orgs, usage) = match (
        db.list_organizations().await,
        db.usage_by_organization().await,
    ) {
        (Ok(orgs), Ok(usage)) => (orgs, usage),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot read workspace usage for /metrics");
            return;
        }
    };
    for org in orgs {
        let u = usage.get(&org.id).copied().unwrap_or_default();
        let id = org.id.to_string();
        metrics::gauge!("lapdev_org_running_workspaces", "organization" => id.clone())
            .set(u.running_workspaces as f64);
        metrics::gauge!("lapdev_org_requested_cpu_millis", "organization" => id.clone())
            .set(u.cpu_millis as f64);
        metrics::gauge!("lapdev_org_requested_memory_bytes", "organization" => id)
            .set(u.memory_bytes as f64);
    }
}

/// Counts a refusal in `lapdev_quota_refusals_total{holder, resource}`.
pub fn count_refusal(q: &QuotaExceeded) {
    metrics::counter!(
        "lapdev_quota_refusals_total",
        "holder" => q.holder.as_str(),
        "resource" => q.resource.as_str()
    )
    .increment(1);
}

impl QuotaService {
    async fn view(
        &self,
        org: uuid::Uuid,
        target: String,
        scope: QuotaScope,
        limits: QuotaLimits,
    ) -> Result<QuotaView, HrpcError> {
        let usage = match scope {
            QuotaScope::Organization => Some(self.db.quota_usage(org, None).await),
            QuotaScope::Member(user) => Some(self.db.quota_usage(org, Some(user)).await),
            QuotaScope::EachMember => None,
        }
        .transpose()
        .map_err(db_error)?;
        Ok(QuotaView {
            target,
            limits,
            usage,
        })
    }
}

impl QuotaRpc for QuotaService {
    async fn set_quota(
        &self,
        ctx: Context,
        target: QuotaTarget,
        limits: QuotaLimits,
    ) -> Result<QuotaView, HrpcError> {
        let org = caller(&ctx)?.organization_id;
        let (name, scope) = match target {
            QuotaTarget::Organization => ("organization".to_owned(), QuotaScope::Organization),
            QuotaTarget::EachMember => ("each_member".to_owned(), QuotaScope::EachMember),
            QuotaTarget::Member(name) => {
                let user = self
                    .db
                    .get_user_by_name(org, &name)
                    .await
                    .map_err(db_error)?;
                (name, QuotaScope::Member(user.id))
            }
        };
        self.db
            .set_quota(org, scope, limits)
            .await
            .map_err(db_error)?;
        self.view(org, name, scope, limits).await
    }

    async fn list_quotas(&self, ctx: Context) -> Result<Vec<QuotaView>, HrpcError> {
        let org = caller(&ctx)?.organization_id;
        let quotas = self.db.quotas(org).await.map_err(db_error)?;
        let mut views = vec![
            self.view(
                org,
                "organization".into(),
                QuotaScope::Organization,
                quotas.organization,
            )
            .await?,
            self.view(
                org,
                "each_member".into(),
                QuotaScope::EachMember,
                quotas.each_member,
            )
            .await?,
        ];
        let users = self.db.list_users(org).await.map_err(db_error)?;
        for user in users {
            if let Some(limits) = quotas.members.get(&user.id) {
                views.push(
                    self.view(org, user.name, QuotaScope::Member(user.id), *limits)
                        .await?,
                );
            }
        }
        Ok(views)
    }

    async fn my_quota(&self, ctx: Context) -> Result<MyQuotaView, HrpcError> {
        let me = caller(&ctx)?;
        let org = me.organization_id;
        let quotas = self.db.quotas(org).await.map_err(db_error)?;
        Ok(MyQuotaView {
            member: quotas.member(me.user_id),
            member_usage: self
                .db
                .quota_usage(org, Some(me.user_id))
                .await
                .map_err(db_error)?,
            organization: quotas.organization,
            organization_usage: self.db.quota_usage(org, None).await.map_err(db_error)?,
        })
    }
}
