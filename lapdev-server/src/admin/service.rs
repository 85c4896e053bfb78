//! The implementation of [`AdminRpc`] on the database, the cluster server and the
//! manifest renderer, and the JWT layer in front of it.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use lapdev_common::status::CloudProvider;
use lapdev_common::status::SecurityProfile;
use lapdev_db::{Cluster, ClusterToken, CredentialKey, Db, DbError, NewCluster, NewClusterToken};
use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube::db_error;
use lapdev_kube::manifest::{ManifestParams, render_manifest};
use lapdev_kube::server::KubeClusterServer;
use uuid::Uuid;

use super::api::{
    AdminRpc, ClusterPage, ClusterPlacement, ClusterView, CreatedCluster, CreatedToken,
    ManifestWarningView, PageRequest, TokenView,
};
use super::paging::cut;
use crate::jwt::{AdminIdentity, JwtKeys};

/// At most this many live tokens per cluster: one in use, one being rolled out.
pub const MAX_LIVE_TOKENS_PER_CLUSTER: usize = 2;

/// What the install manifest needs besides the token.
#[derive(Debug, Clone)]
pub struct ManifestDefaults {
    /// The URL managers dial (`--public-url`).
    pub server_url: String,
    /// A CA managers should trust for it, if private.
    pub server_ca_pem: Option<String>,
    /// The manager image.
    pub image: String,
}

/// The admin API service.
#[derive(Clone)]
pub struct AdminService {
    db: Db,
    kube: KubeClusterServer,
    manifest: ManifestDefaults,
    credential_key: CredentialKey,
    conductor: Option<lapdev_conductor::Conductor>,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

impl AdminService {
    /// A service on these parts.
    pub fn new(
        db: Db,
        kube: KubeClusterServer,
        manifest: ManifestDefaults,
        credential_key: CredentialKey,
    ) -> Self {
        Self {
            db,
            kube,
            manifest,
            credential_key,
            conductor: None,
        }
    }

    /// The conductor that forgets workspaces for `cluster delete --force`.
    /// (Placement learns of cluster changes through the database's change feed.)
    pub fn with_conductor(mut self, conductor: lapdev_conductor::Conductor) -> Self {
        self.conductor = Some(conductor);
        self
    }

    /// What install manifests are rendered with (the provider service installs
    /// managers with the same).
    pub fn manifest_defaults(&self) -> &ManifestDefaults {
        &self.manifest
    }

    /// The key provider credentials are encrypted with.
    pub fn credential_key(&self) -> &CredentialKey {
        &self.credential_key
    }

    /// The manifest and what is worth telling the admin about it (see
    /// [`lapdev_kube::manifest::ManifestWarning`]).
    fn render(
        &self,
        cluster: &Cluster,
        token: &str,
    ) -> Result<(String, Vec<ManifestWarningView>), HrpcError> {
        let params = ManifestParams {
            server_ca_pem: self.manifest.server_ca_pem.clone(),
            image: self.manifest.image.clone(),
            security_profile: cluster.security_profile,
            capacity_mode: cluster.placement.capacity_mode,
            ..ManifestParams::new(&self.manifest.server_url, token, &cluster.name)
        };
        let failed = |e: lapdev_kube::manifest::ManifestError| {
            tracing::error!(error = %e, "could not render the install manifest");
            HrpcError::failed_precondition(format!("could not render the install manifest: {e}"))
        };
        let warnings = params.validate().map_err(failed)?;
        let manifest = render_manifest(&params).map_err(failed)?;
        let warnings = warnings
            .iter()
            .map(|w| ManifestWarningView {
                code: w.code().to_owned(),
                message: w.to_string(),
            })
            .collect();
        Ok((manifest, warnings))
    }

    async fn cluster(&self, who: AdminIdentity, name: &str) -> Result<Cluster, HrpcError> {
        self.db
            .get_cluster_by_name(who.organization_id, name)
            .await
            .map_err(db_error)
    }

    async fn new_token(
        &self,
        who: AdminIdentity,
        cluster: &Cluster,
        name: String,
        expires_in: Option<Duration>,
    ) -> Result<CreatedToken, HrpcError> {
        let now = Utc::now();
        let live = self
            .db
            .list_cluster_tokens(who.organization_id, cluster.id)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now))
            .count();
        if live >= MAX_LIVE_TOKENS_PER_CLUSTER {
            return Err(HrpcError::failed_precondition(format!(
                "cluster {:?} already has {live} live tokens; revoke one first",
                cluster.name
            )));
        }
        let expires_at = match expires_in {
            Some(d) => Some(
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| HrpcError::invalid_argument("expires_in_secs is too large"))?,
            ),
            None => None,
        };
        let created = self
            .db
            .create_cluster_token(
                who.organization_id,
                cluster.id,
                NewClusterToken {
                    name,
                    created_by: Some(who.user_id),
                    expires_at,
                },
            )
            .await
            .map_err(db_error)?;
        let (manifest, warnings) = self.render(cluster, created.secret.expose())?;
        Ok(CreatedToken {
            token: token_view(created.token),
            token_secret: created.secret.expose().to_owned(),
            manifest,
            warnings,
        })
    }
}

fn who(ctx: &Context) -> Result<AdminIdentity, HrpcError> {
    ctx.extension::<AdminIdentity>()
        .copied()
        .ok_or_else(|| HrpcError::unauthenticated("no admin identity on this request"))
}

/// The view of a cluster the admin API returns.
/// Validates the admin's placement settings (`invalid_argument` naming the
/// setting that is wrong).
fn checked_placement(p: ClusterPlacement) -> Result<lapdev_db::PlacementSettings, HrpcError> {
    p.scheduling
        .validate()
        .map_err(|e| HrpcError::invalid_argument(e.to_string()))?;
    if let Some(a) = &p.autoscaling
        && (a.max_node_cpu_millis <= 0 || a.max_node_memory_bytes <= 0 || a.max_nodes == Some(0))
    {
        return Err(HrpcError::invalid_argument(
            "autoscaling: max-node-cpu, max-node-memory and max-nodes must be positive",
        ));
    }
    Ok(lapdev_db::PlacementSettings {
        capacity_mode: p.capacity_mode,
        scheduling: p.scheduling,
        autoscaling: p.autoscaling,
    })
}

pub fn cluster_view(c: Cluster) -> ClusterView {
    let reported = c.last_reported_at.is_some();
    let region = c.effective_region().map(str::to_owned);
    ClusterView {
        id: c.id,
        status: c.status,
        kubernetes_version: c.kubernetes_version,
        node_count: reported.then_some(c.node_count),
        cpu_capacity_millis: reported.then_some(c.cpu_capacity_millis),
        cpu_allocatable_millis: reported.then_some(c.cpu_allocatable_millis),
        memory_capacity_bytes: reported.then_some(c.memory_capacity_bytes),
        memory_allocatable_bytes: reported.then_some(c.memory_allocatable_bytes),
        provider: c.cloud_provider.unwrap_or(CloudProvider::Unknown),
        region,
        manager_version: c.manager_version,
        last_reported_at: c.last_reported_at,
        cordoned: c.cordoned,
        declared_region: c.declared_region,
        connected_at: c.connected_at,
        last_seen_at: c.last_seen_at,
        created_at: Some(c.created_at),
        deleted_at: c.deleted_at,
        security_profile: c.security_profile,
        manifest_revision: c.manifest_revision,
        placement: ClusterPlacement {
            capacity_mode: c.placement.capacity_mode,
            scheduling: c.placement.scheduling,
            autoscaling: c.placement.autoscaling,
        },
        detected_autoscaling: c.detected_autoscaling,
        nodes: c.nodes,
        name: c.name,
    }
}

fn token_view(t: ClusterToken) -> TokenView {
    TokenView {
        id: t.id,
        name: t.name,
        display_prefix: t.display_prefix,
        created_at: t.created_at,
        last_used_at: t.last_used_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
    }
}

impl AdminRpc for AdminService {
    async fn create_cluster(
        &self,
        ctx: Context,
        name: String,
        region: Option<String>,
        security_profile: Option<SecurityProfile>,
        placement: Option<ClusterPlacement>,
    ) -> Result<CreatedCluster, HrpcError> {
        let who = who(&ctx)?;
        crate::check_name("name", lapdev_common::name::NameKind::Cluster, &name)?;
        let placement = checked_placement(placement.unwrap_or_default())?;
        // One transaction: the row, its first token and the manifest carrying
        // it, so a failed render leaves neither a row nor a live token.
        let (cluster, created, (manifest, warnings)) = self
            .db
            .create_cluster_with_token(
                who.organization_id,
                NewCluster {
                    declared_region: region,
                    security_profile: security_profile.unwrap_or_default(),
                    placement,
                    ..NewCluster::named(name)
                },
                NewClusterToken {
                    name: "initial".to_owned(),
                    created_by: Some(who.user_id),
                    expires_at: None,
                },
                |cluster, secret| self.render(cluster, secret.expose()),
            )
            .await
            .map_err(|e| match e {
                lapdev_db::CreateWithTokenError::Db(e) => db_error(e),
                lapdev_db::CreateWithTokenError::Finish(e) => e,
            })?;
        Ok(CreatedCluster {
            cluster: cluster_view(cluster),
            token: token_view(created.token),
            token_secret: created.secret.expose().to_owned(),
            manifest,
            warnings,
        })
    }

    async fn list_clusters(
        &self,
        ctx: Context,
        include_deleted: bool,
    ) -> Result<Vec<ClusterView>, HrpcError> {
        let who = who(&ctx)?;
        let clusters = if include_deleted {
            self.db
                .list_clusters_including_deleted(who.organization_id)
                .await
        } else {
            self.db.list_clusters(who.organization_id).await
        }
        .map_err(db_error)?;
        Ok(clusters.into_iter().map(cluster_view).collect())
    }

    async fn list_clusters_page(
        &self,
        ctx: Context,
        page: PageRequest,
    ) -> Result<ClusterPage, HrpcError> {
        let who = who(&ctx)?;
        let (cursor, limit) = (page.cursor(), page.limit());
        // One more than a page says whether there is another in that direction.
        let rows = self
            .db
            .list_clusters_page(who.organization_id, cursor, limit + 1)
            .await
            .map_err(db_error)?;
        let (rows, next, previous) = cut(rows, cursor, limit, |c| &c.name);
        Ok(ClusterPage {
            clusters: rows.into_iter().map(cluster_view).collect(),
            next,
            previous,
        })
    }

    async fn get_cluster(&self, ctx: Context, name: String) -> Result<ClusterView, HrpcError> {
        let who = who(&ctx)?;
        Ok(cluster_view(self.cluster(who, &name).await?))
    }

    async fn delete_cluster(&self, ctx: Context, name: String) -> Result<(), HrpcError> {
        let who = who(&ctx)?;
        let cluster = self.cluster(who, &name).await?;
        if cluster.provider_id.is_some() {
            // Deleting only the row would leave a cluster running (and billed) in
            // the provider; ProviderRpc::delete_cluster asks which is meant.
            return Err(HrpcError::failed_precondition(format!(
                "cluster {name:?} is managed by a cloud provider: delete it with \
                 ProviderRpc.delete_cluster (`lapdev cluster delete {name} --yes`, or \
                 `--keep-in-provider` to only forget it)"
            )));
        }
        if let Err(e) = self
            .db
            .delete_cluster(who.organization_id, cluster.id)
            .await
        {
            return Err(cluster_delete_error(&self.db, who.organization_id, &cluster, e).await);
        }
        self.kube.cluster_deleted(cluster.id);
        Ok(())
    }

    async fn set_cluster_security_profile(
        &self,
        ctx: Context,
        name: String,
        security_profile: SecurityProfile,
    ) -> Result<ClusterView, HrpcError> {
        let who = who(&ctx)?;
        let cluster = self.cluster(who, &name).await?;
        self.db
            .set_cluster_security_profile(who.organization_id, cluster.id, security_profile)
            .await
            .map_err(db_error)?;
        Ok(cluster_view(self.cluster(who, &name).await?))
    }

    async fn set_cluster_placement(
        &self,
        ctx: Context,
        name: String,
        placement: ClusterPlacement,
    ) -> Result<ClusterView, HrpcError> {
        let who = who(&ctx)?;
        let placement = checked_placement(placement)?;
        let cluster = self.cluster(who, &name).await?;
        self.db
            .set_cluster_placement(who.organization_id, cluster.id, &placement)
            .await
            .map_err(db_error)?;
        Ok(cluster_view(self.cluster(who, &name).await?))
    }

    async fn forget_cluster_workspaces(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<Vec<String>, HrpcError> {
        let who = who(&ctx)?;
        let cluster = self.cluster(who, &name).await?;
        let conductor = self
            .conductor
            .as_ref()
            .ok_or_else(|| HrpcError::unavailable("workspaces are not served here"))?;
        let forgotten = conductor
            .forget_cluster_workspaces(who.organization_id, cluster.id)
            .await?;
        // With the manager connected, its objects go now, before the cluster (and
        // with it the manager's access) is deleted.
        conductor.clean_tombstones().await;
        Ok(forgotten.into_iter().map(|w| w.name).collect())
    }

    async fn set_cluster_cordoned(
        &self,
        ctx: Context,
        name: String,
        cordoned: bool,
    ) -> Result<ClusterView, HrpcError> {
        let who = who(&ctx)?;
        let cluster = self.cluster(who, &name).await?;
        self.db
            .set_cluster_cordoned(who.organization_id, cluster.id, cordoned)
            .await
            .map_err(db_error)?;
        Ok(cluster_view(self.cluster(who, &name).await?))
    }

    async fn create_cluster_token(
        &self,
        ctx: Context,
        cluster: String,
        name: String,
        expires_in_secs: Option<u64>,
    ) -> Result<CreatedToken, HrpcError> {
        let who = who(&ctx)?;
        crate::check_name("name", lapdev_common::name::NameKind::Token, &name)?;
        let cluster = self.cluster(who, &cluster).await?;
        self.new_token(
            who,
            &cluster,
            name,
            expires_in_secs.map(Duration::from_secs),
        )
        .await
    }

    async fn list_cluster_tokens(
        &self,
        ctx: Context,
        cluster: String,
    ) -> Result<Vec<TokenView>, HrpcError> {
        let who = who(&ctx)?;
        let cluster = self.cluster(who, &cluster).await?;
        let tokens = self
            .db
            .list_cluster_tokens(who.organization_id, cluster.id)
            .await
            .map_err(db_error)?;
        Ok(tokens.into_iter().map(token_view).collect())
    }

    async fn revoke_cluster_token(
        &self,
        ctx: Context,
        cluster: String,
        token_id: Uuid,
    ) -> Result<(), HrpcError> {
        let who = who(&ctx)?;
        let cluster = self.cluster(who, &cluster).await?;
        let belongs = self
            .db
            .list_cluster_tokens(who.organization_id, cluster.id)
            .await
            .map_err(db_error)?
            .iter()
            .any(|t| t.id == token_id);
        if !belongs {
            return Err(HrpcError::not_found(format!(
                "token {token_id} not found on cluster {:?}",
                cluster.name
            )));
        }
        self.db
            .revoke_cluster_token(who.organization_id, token_id)
            .await
            .map_err(db_error)?;
        self.kube.token_revoked(token_id);
        Ok(())
    }
}

/// axum middleware kept for the routes that were mounted with it: the caller was
/// authenticated and the method's role checked by the one authorization layer
/// ([`crate::auth::authorize`]); a request that did not pass through it is refused.
pub async fn require_admin(State(_keys): State<JwtKeys>, request: Request, next: Next) -> Response {
    if request.extensions().get::<crate::auth::Caller>().is_none() {
        return HrpcError::unauthenticated("this method is not behind the authorization layer")
            .into_response();
    }
    next.run(request).await
}

/// The error for a cluster delete that failed with `e`: a cluster that still
/// has workspaces is named, with its workspaces (up to five) and what to do.
pub(crate) async fn cluster_delete_error(
    db: &Db,
    org_id: Uuid,
    cluster: &Cluster,
    e: DbError,
) -> HrpcError {
    if !matches!(e, DbError::InUse { .. }) {
        return db_error(e);
    }
    let names = db
        .list_cluster_workspaces(org_id, cluster.id)
        .await
        .map(|ws| ws.into_iter().map(|w| w.name).collect::<Vec<_>>())
        .unwrap_or_default();
    cluster_in_use(&cluster.name, &names)
}

/// "cluster "c" still has 2 workspaces (a, b): …", with what to do.
pub(crate) fn cluster_in_use(cluster: &str, workspaces: &[String]) -> HrpcError {
    const SHOWN: usize = 5;
    let mut list = workspaces
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if workspaces.len() > SHOWN {
        list.push_str(&format!(" and {} more", workspaces.len() - SHOWN));
    }
    let count = match workspaces.len() {
        1 => "1 workspace".to_owned(),
        n => format!("{n} workspaces"),
    };
    HrpcError::failed_precondition(format!(
        "cluster {cluster:?} still has {count} ({list}): delete them first \
         (`lapdev workspace delete NAME`), or forget them with \
         `lapdev cluster delete {cluster} --force` if the cluster is gone"
    ))
}
