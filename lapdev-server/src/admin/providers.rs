//! `ProviderRpc`: cloud providers and the clusters they manage, an HRPC service
//! under `/rpc` behind the same JWT layer as `AdminRpc`.
//!
//! - Providers: add (the credential's shape is checked, then, where the API is
//!   reachable, the credentials themselves), list, get, delete. The credential is
//!   encrypted at rest and never returned or logged.
//! - A provider's clusters as the provider sees them (`list_provider_clusters`),
//!   and importing one as a `kube_cluster` row (external id = the GKE self link).
//! - Creating a cluster through the provider: the row is written first
//!   (`provisioning`, named by location and cluster: the intent), then GKE is
//!   asked; a refusal removes the row, so a failed insert never leaves a
//!   cluster nobody tracks and a stop in between is picked up by `resume`. The
//!   row stays `provisioning` while GKE works, `pending` once GKE says it is running, and `connected` when the manager
//!   reports. The manager is installed automatically: the server builds a kube client
//!   from the cluster's endpoint, CA and an access token from the service account,
//!   and applies the manager's objects with server-side apply.
//! - Deleting a provider-managed cluster deletes it in the provider too (it must be
//!   confirmed): `deleting`, then the row is gone. A failed step leaves the cluster
//!   `error`, and the provider's message is shown by `get_managed_cluster` (kept in
//!   memory: it is lost on restart).
//! - After a restart, [`ProviderService::resume`] follows the clusters left
//!   `provisioning` or `deleting` by asking the provider for the cluster itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapdev_common::scheduling::Autoscaling;
use lapdev_common::status::{ClusterStatus, K8sProviderKind};
use lapdev_db::{
    Cluster, CredentialKey, Db, DbError, NewCluster, NewClusterToken, NewProvider, Provider,
    ProviderCredential,
};
use lapdev_hrpc::{Code, Context, HrpcError};
use lapdev_kube::db_error;
use lapdev_kube::manifest::{ManifestParams, manifest_objects};
use lapdev_kube::provider::{
    ApiErrorKind, ClusterMode, K8sProvider, NewProviderCluster, NodePoolInfo, OperationState,
    ProviderCluster, ProviderClusterStatus, ProviderError, ProviderOperation, connect,
    install::install_manager,
};
use lapdev_kube::server::KubeClusterServer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::api::{ClusterView, ProviderView};
use super::service::{ManifestDefaults, cluster_delete_error, cluster_in_use, cluster_view};
use crate::background::Background;
use crate::jwt::AdminIdentity;

/// How long adding a provider waits for the credential check.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest accepted credential.
pub const MAX_CREDENTIAL_BYTES: usize = 64 * 1024;

/// A provider just added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedProvider {
    pub provider: ProviderView,
    /// Whether the credentials were checked against the provider's API.
    pub credentials_checked: bool,
    /// Why they could not be checked, if they were not.
    pub warning: Option<String>,
}

/// A cluster as the provider describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderClusterView {
    pub name: String,
    pub location: String,
    /// The provider's id (GKE self link).
    pub external_id: String,
    pub status: ProviderClusterStatus,
    pub status_message: Option<String>,
    pub kubernetes_version: Option<String>,
    pub endpoint: Option<String>,
    pub node_count: i32,
    pub autopilot: bool,
    pub node_pools: Vec<NodePoolInfo>,
    /// The Lapdev cluster it is imported as, if any.
    pub imported_as: Option<String>,
}

/// A Lapdev cluster with what its provider knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedClusterView {
    pub cluster: ClusterView,
    /// The provider's name, for provider-managed clusters.
    pub provider: Option<String>,
    /// The provider's id for it.
    pub external_id: Option<String>,
    /// The last provider failure (e.g. GKE's error), while the cluster is `error`.
    pub message: Option<String>,
    /// What the provider reported at import or creation (version, location, nodes),
    /// shown until the manager reports its own.
    pub provider_cluster: Option<ProviderClusterView>,
}

/// Provider management. Every call is scoped to the caller's organisation.
#[lapdev_hrpc::service]
pub trait ProviderRpc {
    /// Registers a provider. The credential's shape is checked first; with
    /// `validate`, the credentials are also tried against the API (a provider that
    /// cannot be reached is still added, with a warning).
    #[hrpc(role = "admin")]
    async fn create_provider(
        &self,
        ctx: Context,
        name: String,
        kind: K8sProviderKind,
        config: serde_json::Value,
        credential: String,
        validate: bool,
    ) -> Result<CreatedProvider, HrpcError>;

    /// The organisation's providers.
    #[hrpc(role = "admin")]
    async fn list_providers(&self, ctx: Context) -> Result<Vec<ProviderView>, HrpcError>;

    /// One provider by name.
    #[hrpc(role = "admin")]
    async fn get_provider(&self, ctx: Context, name: String) -> Result<ProviderView, HrpcError>;

    /// Deletes a provider (refused while clusters refer to it).
    #[hrpc(role = "admin")]
    async fn delete_provider(&self, ctx: Context, name: String) -> Result<(), HrpcError>;

    /// The clusters the provider has, in every location.
    #[hrpc(role = "admin")]
    async fn list_provider_clusters(
        &self,
        ctx: Context,
        provider: String,
    ) -> Result<Vec<ProviderClusterView>, HrpcError>;

    /// Imports one of the provider's clusters as a Lapdev cluster (named `name`, or
    /// like the provider's cluster). With `install`, the manager is installed
    /// into it right away.
    #[hrpc(role = "admin")]
    async fn import_cluster(
        &self,
        ctx: Context,
        provider: String,
        cluster: String,
        location: Option<String>,
        name: Option<String>,
        install: bool,
    ) -> Result<ManagedClusterView, HrpcError>;

    /// Creates a cluster through the provider; returns at once with the cluster
    /// `provisioning`. It becomes `pending` when the provider has it running and
    /// the manager is installed, then `connected` when the manager reports.
    #[hrpc(role = "admin")]
    async fn create_cluster(
        &self,
        ctx: Context,
        provider: String,
        name: String,
        location: Option<String>,
        mode: ClusterMode,
    ) -> Result<ManagedClusterView, HrpcError>;

    /// Deletes a cluster. A provider-managed one is deleted in the provider too
    /// and needs `confirm` (or `keep_in_provider` to only forget it here); it is
    /// `deleting` until the provider is done, then gone.
    #[hrpc(role = "admin")]
    async fn delete_cluster(
        &self,
        ctx: Context,
        name: String,
        confirm: bool,
        keep_in_provider: bool,
    ) -> Result<Option<ManagedClusterView>, HrpcError>;

    /// A cluster with its provider's details and last provider failure.
    #[hrpc(role = "admin")]
    async fn get_managed_cluster(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<ManagedClusterView, HrpcError>;
}

/// How long and how often the service follows provider operations.
#[derive(Debug, Clone, Copy)]
pub struct ProviderSettings {
    /// Give up on an operation after this long (GKE creates take 5 to 15 minutes).
    pub operation_deadline: Duration,
    /// First wait between polls; doubled up to [`Self::max_poll_interval`].
    pub first_poll_interval: Duration,
    /// Longest wait between polls.
    pub max_poll_interval: Duration,
    /// Which endpoints providers may use (Google's hosts unless the server runs
    /// with `--allow-provider-test-endpoints`).
    pub endpoints: lapdev_kube::provider::EndpointPolicy,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            operation_deadline: Duration::from_secs(45 * 60),
            first_poll_interval: Duration::from_millis(200),
            max_poll_interval: Duration::from_secs(10),
            endpoints: lapdev_kube::provider::EndpointPolicy::default(),
        }
    }
}

struct Inner {
    db: Db,
    kube: KubeClusterServer,
    manifest: ManifestDefaults,
    credential_key: CredentialKey,
    settings: ProviderSettings,
    messages: Mutex<HashMap<Uuid, String>>,
    detected: Mutex<HashMap<Uuid, ProviderClusterView>>,
    /// Where operations are followed after a reply: they end with the server.
    background: Background,
}

/// The `ProviderRpc` service. Cheap to clone.
#[derive(Clone)]
pub struct ProviderService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProviderService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderService")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn who(ctx: &Context) -> Result<AdminIdentity, HrpcError> {
    ctx.extension::<AdminIdentity>()
        .copied()
        .ok_or_else(|| HrpcError::unauthenticated("no admin identity on this request"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A provider failure as an API error; the provider's own message is kept.
pub fn provider_error(e: ProviderError) -> HrpcError {
    let message = e.to_string();
    match &e {
        ProviderError::MalformedCredentials(_)
        | ProviderError::InvalidConfig(_)
        | ProviderError::InvalidRequest(_) => HrpcError::invalid_argument(message),
        ProviderError::OperationFailed { .. } | ProviderError::NoEndpoint(_) => {
            HrpcError::failed_precondition(message)
        }
        ProviderError::OperationDeadline { .. } => HrpcError::deadline_exceeded(message),
        other => match other.api_error().map(|a| a.kind) {
            Some(ApiErrorKind::PermissionDenied) => HrpcError::permission_denied(message),
            Some(ApiErrorKind::Unauthenticated) => HrpcError::failed_precondition(format!(
                "the provider rejected its credentials: {message}"
            )),
            Some(ApiErrorKind::NotFound) => HrpcError::not_found(message),
            Some(ApiErrorKind::AlreadyExists) => HrpcError::already_exists(message),
            Some(ApiErrorKind::ResourceExhausted) => {
                HrpcError::new(Code::ResourceExhausted, message)
            }
            Some(ApiErrorKind::InvalidArgument) => HrpcError::invalid_argument(message),
            Some(ApiErrorKind::FailedPrecondition) => HrpcError::failed_precondition(message),
            Some(ApiErrorKind::DeadlineExceeded) => HrpcError::deadline_exceeded(message),
            _ => HrpcError::unavailable(message),
        },
    }
}

fn provider_view(p: Provider) -> ProviderView {
    ProviderView {
        id: p.id,
        name: p.name,
        kind: p.kind,
        config: p.config,
        created_at: p.created_at,
    }
}

fn cluster_view_of(c: &ProviderCluster, imported_as: Option<String>) -> ProviderClusterView {
    ProviderClusterView {
        name: c.name.clone(),
        location: c.location.clone(),
        external_id: c.external_id.clone(),
        status: c.status,
        status_message: c.status_message.clone(),
        kubernetes_version: c.kubernetes_version.clone(),
        endpoint: c.endpoint.clone(),
        node_count: c.node_count,
        autopilot: c.autopilot,
        node_pools: c.node_pools.clone(),
        imported_as,
    }
}

/// `(location, name)` from a GKE self link
/// (`.../projects/P/locations/L/clusters/N` or `.../zones/L/clusters/N`).
pub fn parse_self_link(link: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = link.trim_end_matches('/').split('/').collect();
    let n = parts.len();
    if n < 4 || parts[n - 2] != "clusters" || !matches!(parts[n - 4], "locations" | "zones") {
        return None;
    }
    let (location, name) = (parts[n - 3], parts[n - 1]);
    (!location.is_empty() && !name.is_empty()).then(|| (location.to_owned(), name.to_owned()))
}

/// The provider id a cluster row carries between its intent and the
/// provider's answer: enough for [`parse_self_link`] to follow it by name.
pub fn intent_link(location: &str, name: &str) -> String {
    format!("locations/{location}/clusters/{name}")
}

/// The name of the tokens manager installs mint.
pub const INSTALL_TOKEN_NAME: &str = "provider-install";

impl ProviderService {
    /// A service on these parts.
    pub fn new(
        db: Db,
        kube: KubeClusterServer,
        manifest: ManifestDefaults,
        credential_key: CredentialKey,
        settings: ProviderSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                kube,
                manifest,
                credential_key,
                settings,
                messages: Mutex::default(),
                detected: Mutex::default(),
                background: Background::default(),
            }),
        }
    }

    /// Follows operations under `background`, so they end when the server
    /// stops instead of writing outcomes behind a newer server's back.
    pub fn with_background(mut self, background: Background) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.background = background;
        }
        self
    }

    async fn provider_row(&self, who: AdminIdentity, name: &str) -> Result<Provider, HrpcError> {
        self.inner
            .db
            .list_providers(who.organization_id)
            .await
            .map_err(db_error)?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| HrpcError::not_found(format!("provider {name:?} not found")))
    }

    async fn client_for(&self, row: &Provider) -> Result<Box<dyn K8sProvider>, HrpcError> {
        let credential = self
            .inner
            .db
            .provider_credential(row.organization_id, row.id, &self.inner.credential_key)
            .await
            .map_err(db_error)?;
        connect(
            row.kind,
            &row.config,
            credential.expose(),
            self.inner.settings.endpoints,
        )
        .await
        .map_err(provider_error)
    }

    fn managed_view(&self, cluster: Cluster, provider: Option<&Provider>) -> ManagedClusterView {
        let id = cluster.id;
        ManagedClusterView {
            provider: provider.map(|p| p.name.clone()),
            external_id: cluster.external_id.clone(),
            message: lock(&self.inner.messages).get(&id).cloned(),
            provider_cluster: lock(&self.inner.detected).get(&id).cloned(),
            cluster: cluster_view(cluster),
        }
    }

    async fn set_status(&self, org: Uuid, id: Uuid, status: ClusterStatus) {
        if let Err(e) = self.inner.db.set_cluster_status(org, id, status).await {
            tracing::warn!(cluster_id = %id, error = %e, "could not record cluster status");
        }
    }

    /// The provider's API says the cluster is GKE Autopilot: its per-pod
    /// maximums apply to placement (see `lapdev_conductor::placement`).
    async fn record_autopilot(&self, org: Uuid, id: Uuid) {
        if let Err(e) = self
            .inner
            .db
            .set_detected_autoscaling(org, id, Some(&Autoscaling::GKE_AUTOPILOT))
            .await
        {
            tracing::warn!(cluster_id = %id, error = %e, "could not record GKE Autopilot");
        }
    }

    async fn fail(&self, org: Uuid, id: Uuid, step: &str, message: String) {
        tracing::warn!(cluster_id = %id, step, %message, "provider step failed");
        lock(&self.inner.messages).insert(id, format!("{step}: {message}"));
        self.set_status(org, id, ClusterStatus::Error).await;
    }

    /// Polls `op` until done, waiting a little longer each time.
    async fn follow(
        &self,
        provider: &dyn K8sProvider,
        op: &ProviderOperation,
    ) -> Result<ProviderOperation, ProviderError> {
        let settings = self.inner.settings;
        let started = tokio::time::Instant::now();
        let mut interval = settings.first_poll_interval;
        let mut current = op.clone();
        loop {
            if current.state == OperationState::Done {
                return match &current.error {
                    Some(message) => Err(ProviderError::OperationFailed {
                        operation: current.name.clone(),
                        message: message.clone(),
                    }),
                    None => Ok(current),
                };
            }
            if started.elapsed() >= settings.operation_deadline {
                return Err(ProviderError::OperationDeadline {
                    operation: current.name.clone(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(settings.max_poll_interval);
            current = provider.get_operation(&op.name).await?;
        }
    }

    /// Installs the manager into `cluster` (a fresh token, the manager's objects by
    /// server-side apply).
    async fn install(
        &self,
        org: Uuid,
        created_by: Option<Uuid>,
        cluster: &Cluster,
        provider: &dyn K8sProvider,
        remote: &ProviderCluster,
    ) -> Result<(), String> {
        let (token, previous) = self.install_token(org, created_by, cluster).await?;
        let params = ManifestParams {
            server_ca_pem: self.inner.manifest.server_ca_pem.clone(),
            image: self.inner.manifest.image.clone(),
            security_profile: cluster.security_profile,
            capacity_mode: cluster.placement.capacity_mode,
            ..ManifestParams::new(
                &self.inner.manifest.server_url,
                token.secret.expose(),
                &cluster.name,
            )
        };
        let objects =
            manifest_objects(&params).map_err(|e| format!("rendering the manifest: {e}"))?;
        let access = provider
            .cluster_access(remote)
            .await
            .map_err(|e| e.to_string())?;
        let applied = install_manager(&access, &objects)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(cluster_id = %cluster.id, objects = applied.len(), "manager installed");
        // The manager now runs with the new token: the previous install's goes.
        self.revoke_tokens(org, &previous).await;
        Ok(())
    }

    /// Mints the token a manager install uses, keeping the two-live-tokens rule:
    /// the previous install tokens are returned, to be revoked once the new
    /// install is applied; if the cluster is already at the limit, they are
    /// revoked first (and if none of its live tokens is an install token, the
    /// install is refused).
    pub async fn install_token(
        &self,
        org: Uuid,
        created_by: Option<Uuid>,
        cluster: &Cluster,
    ) -> Result<(lapdev_db::CreatedClusterToken, Vec<Uuid>), String> {
        let now = chrono::Utc::now();
        let live: Vec<_> = self
            .inner
            .db
            .list_cluster_tokens(org, cluster.id)
            .await
            .map_err(|e| format!("listing the cluster's tokens: {e}"))?
            .into_iter()
            .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now))
            .collect();
        let mut previous: Vec<Uuid> = live
            .iter()
            .filter(|t| t.name == INSTALL_TOKEN_NAME)
            .map(|t| t.id)
            .collect();
        if live.len() >= super::service::MAX_LIVE_TOKENS_PER_CLUSTER {
            if previous.is_empty() {
                return Err(format!(
                    "cluster {:?} already has {} live tokens; revoke one first",
                    cluster.name,
                    live.len()
                ));
            }
            self.revoke_tokens(org, &previous).await;
            previous.clear();
        }
        let token = self
            .inner
            .db
            .create_cluster_token(
                org,
                cluster.id,
                NewClusterToken {
                    name: INSTALL_TOKEN_NAME.to_owned(),
                    created_by,
                    expires_at: None,
                },
            )
            .await
            .map_err(|e| format!("creating the cluster token: {e}"))?;
        Ok((token, previous))
    }

    async fn revoke_tokens(&self, org: Uuid, tokens: &[Uuid]) {
        for &token_id in tokens {
            match self.inner.db.revoke_cluster_token(org, token_id).await {
                Ok(()) => self.inner.kube.token_revoked(token_id),
                Err(e) => {
                    tracing::warn!(%token_id, error = %e, "could not revoke a previous install token")
                }
            }
        }
    }

    /// After a create: wait for the provider, then install the manager.
    async fn finish_create(
        self,
        who: AdminIdentity,
        cluster: Cluster,
        provider: Box<dyn K8sProvider>,
        op: ProviderOperation,
        location: String,
        remote_name: String,
    ) {
        let org = who.organization_id;
        if let Err(e) = self.follow(provider.as_ref(), &op).await {
            return self
                .fail(
                    org,
                    cluster.id,
                    "creating the cluster",
                    e.provider_message(),
                )
                .await;
        }
        let remote = match provider.get_cluster(&location, &remote_name).await {
            Ok(r) => r,
            Err(e) => {
                return self
                    .fail(
                        org,
                        cluster.id,
                        "reading the new cluster",
                        e.provider_message(),
                    )
                    .await;
            }
        };
        self.running(org, Some(who.user_id), &cluster, provider.as_ref(), &remote)
            .await;
    }

    /// The provider has the cluster running: `pending`, then install the manager.
    async fn running(
        &self,
        org: Uuid,
        created_by: Option<Uuid>,
        cluster: &Cluster,
        provider: &dyn K8sProvider,
        remote: &ProviderCluster,
    ) {
        lock(&self.inner.detected).insert(cluster.id, cluster_view_of(remote, None));
        self.set_status(org, cluster.id, ClusterStatus::Pending)
            .await;
        if let Err(message) = self
            .install(org, created_by, cluster, provider, remote)
            .await
        {
            self.fail(org, cluster.id, "installing the manager", message)
                .await;
        }
    }

    /// Picks up provider work a restart interrupted: every `provisioning` cluster is
    /// followed until the provider has it running (then the manager is installed),
    /// every `deleting` one until the provider no longer has it. Returns how many
    /// clusters it follows.
    pub async fn resume(&self) -> usize {
        let orgs = match self.inner.db.list_organizations().await {
            Ok(orgs) => orgs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot resume provider operations");
                return 0;
            }
        };
        let mut resumed = 0;
        for org in orgs {
            let clusters = match self.inner.db.list_clusters(org.id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resume provider operations");
                    continue;
                }
            };
            for cluster in clusters {
                if cluster.provider_id.is_some()
                    && matches!(
                        cluster.status,
                        ClusterStatus::Provisioning | ClusterStatus::Deleting
                    )
                {
                    resumed += 1;
                    self.inner
                        .background
                        .spawn(self.clone().resume_one(org.id, cluster));
                }
            }
        }
        resumed
    }

    async fn resume_one(self, org: Uuid, cluster: Cluster) {
        let step = if cluster.status == ClusterStatus::Deleting {
            "deleting the cluster"
        } else {
            "creating the cluster"
        };
        let Some(provider_id) = cluster.provider_id else {
            return;
        };
        let row = match self.inner.db.get_provider(org, provider_id).await {
            Ok(row) => row,
            Err(e) => return self.fail(org, cluster.id, step, e.to_string()).await,
        };
        let client = match self.client_for(&row).await {
            Ok(c) => c,
            Err(e) => return self.fail(org, cluster.id, step, e.message).await,
        };
        let Some((location, name)) = cluster.external_id.as_deref().and_then(parse_self_link)
        else {
            return self
                .fail(org, cluster.id, step, "no provider id to follow".into())
                .await;
        };
        tracing::info!(cluster_id = %cluster.id, step, "resuming a provider operation");
        let settings = self.inner.settings;
        let started = tokio::time::Instant::now();
        let mut interval = settings.first_poll_interval;
        loop {
            match client.get_cluster(&location, &name).await {
                Err(e) if e.api_error().map(|a| a.kind) == Some(ApiErrorKind::NotFound) => {
                    if cluster.status == ClusterStatus::Deleting {
                        return self.forget(org, cluster.id).await;
                    }
                    // An intent whose create never reached the provider (the
                    // server stopped first), or a cluster removed there.
                    let message = format!(
                        "the provider has no cluster {name:?} in {location}: its creation did not \
                         reach the provider or it was removed there; remove it here with \
                         `lapdev cluster delete {} --keep-in-provider`",
                        cluster.name
                    );
                    return self.fail(org, cluster.id, step, message).await;
                }
                Err(e) => {
                    tracing::warn!(cluster_id = %cluster.id, error = %e, "polling the provider");
                }
                Ok(remote) if cluster.status == ClusterStatus::Provisioning => {
                    match remote.status {
                        ProviderClusterStatus::Running | ProviderClusterStatus::Reconciling => {
                            return self
                                .running(org, row.created_by, &cluster, client.as_ref(), &remote)
                                .await;
                        }
                        ProviderClusterStatus::Error | ProviderClusterStatus::Degraded => {
                            let message = remote
                                .status_message
                                .unwrap_or_else(|| format!("the provider says {}", remote.status));
                            return self.fail(org, cluster.id, step, message).await;
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
            }
            if started.elapsed() >= settings.operation_deadline {
                return self
                    .fail(
                        org,
                        cluster.id,
                        step,
                        format!(
                            "the provider did not finish within {}s",
                            settings.operation_deadline.as_secs()
                        ),
                    )
                    .await;
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(settings.max_poll_interval);
        }
    }

    /// After a delete: wait for the provider, then remove the row.
    async fn finish_delete(
        self,
        org: Uuid,
        cluster: Cluster,
        provider: Box<dyn K8sProvider>,
        op: ProviderOperation,
    ) {
        if let Err(e) = self.follow(provider.as_ref(), &op).await {
            return self
                .fail(
                    org,
                    cluster.id,
                    "deleting the cluster",
                    e.provider_message(),
                )
                .await;
        }
        self.forget(org, cluster.id).await;
    }

    async fn forget(&self, org: Uuid, id: Uuid) {
        match self.inner.db.delete_cluster(org, id).await {
            Ok(()) | Err(DbError::NotFound { .. }) => {}
            Err(e) => {
                return self
                    .fail(org, id, "removing the cluster", e.to_string())
                    .await;
            }
        }
        self.inner.kube.cluster_deleted(id);
        lock(&self.inner.messages).remove(&id);
        lock(&self.inner.detected).remove(&id);
    }
}

impl ProviderRpc for ProviderService {
    async fn create_provider(
        &self,
        ctx: Context,
        name: String,
        kind: K8sProviderKind,
        config: serde_json::Value,
        credential: String,
        validate: bool,
    ) -> Result<CreatedProvider, HrpcError> {
        let who = who(&ctx)?;
        crate::check_name("name", lapdev_common::name::NameKind::Provider, &name)?;
        if credential.len() > MAX_CREDENTIAL_BYTES {
            return Err(HrpcError::invalid_argument(
                "the credential is larger than 64 KiB",
            ));
        }
        // Shape first: a malformed key or config never reaches the database or the API.
        let client = connect(
            kind,
            &config,
            credential.as_bytes(),
            self.inner.settings.endpoints,
        )
        .await
        .map_err(provider_error)?;
        let mut checked = false;
        let mut warning = None;
        if validate {
            match tokio::time::timeout(VALIDATE_TIMEOUT, client.validate_credentials()).await {
                Err(_) => {
                    warning = Some(format!(
                        "the credentials could not be checked: the API did not answer within {}s",
                        VALIDATE_TIMEOUT.as_secs()
                    ));
                }
                Ok(Ok(())) => checked = true,
                Ok(Err(e)) => match e.api_error().map(|a| a.kind) {
                    Some(ApiErrorKind::Unavailable | ApiErrorKind::DeadlineExceeded) => {
                        warning = Some(format!(
                            "the credentials could not be checked (the API is unreachable): {}",
                            e.provider_message()
                        ));
                    }
                    _ => return Err(provider_error(e)),
                },
            }
        }
        let provider = self
            .inner
            .db
            .create_provider(
                who.organization_id,
                NewProvider {
                    name,
                    kind,
                    config,
                    credential: ProviderCredential::new(credential.into_bytes()),
                    created_by: Some(who.user_id),
                },
                &self.inner.credential_key,
            )
            .await
            .map_err(db_error)?;
        Ok(CreatedProvider {
            provider: provider_view(provider),
            credentials_checked: checked,
            warning,
        })
    }

    async fn list_providers(&self, ctx: Context) -> Result<Vec<ProviderView>, HrpcError> {
        let who = who(&ctx)?;
        let providers = self
            .inner
            .db
            .list_providers(who.organization_id)
            .await
            .map_err(db_error)?;
        Ok(providers.into_iter().map(provider_view).collect())
    }

    async fn get_provider(&self, ctx: Context, name: String) -> Result<ProviderView, HrpcError> {
        let who = who(&ctx)?;
        Ok(provider_view(self.provider_row(who, &name).await?))
    }

    async fn delete_provider(&self, ctx: Context, name: String) -> Result<(), HrpcError> {
        let who = who(&ctx)?;
        let provider = self.provider_row(who, &name).await?;
        self.inner
            .db
            .delete_provider(who.organization_id, provider.id)
            .await
            .map_err(db_error)
    }

    async fn list_provider_clusters(
        &self,
        ctx: Context,
        provider: String,
    ) -> Result<Vec<ProviderClusterView>, HrpcError> {
        let who = who(&ctx)?;
        let row = self.provider_row(who, &provider).await?;
        let client = self.client_for(&row).await?;
        let remote = client.list_clusters().await.map_err(provider_error)?;
        let imported: HashMap<String, String> = self
            .inner
            .db
            .list_clusters(who.organization_id)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|c| c.provider_id == Some(row.id))
            .filter_map(|c| Some((c.external_id?, c.name)))
            .collect();
        Ok(remote
            .iter()
            .map(|c| cluster_view_of(c, imported.get(&c.external_id).cloned()))
            .collect())
    }

    async fn import_cluster(
        &self,
        ctx: Context,
        provider: String,
        cluster: String,
        location: Option<String>,
        name: Option<String>,
        install: bool,
    ) -> Result<ManagedClusterView, HrpcError> {
        let who = who(&ctx)?;
        if let Some(name) = &name {
            crate::check_name("name", lapdev_common::name::NameKind::Cluster, name)?;
        }
        let row = self.provider_row(who, &provider).await?;
        let client = self.client_for(&row).await?;
        let remote = match location {
            Some(l) => client
                .get_cluster(&l, &cluster)
                .await
                .map_err(provider_error)?,
            None => {
                let mut matches: Vec<ProviderCluster> = client
                    .list_clusters()
                    .await
                    .map_err(provider_error)?
                    .into_iter()
                    .filter(|c| c.name == cluster)
                    .collect();
                match matches.len() {
                    0 => {
                        return Err(HrpcError::not_found(format!(
                            "provider {provider:?} has no cluster named {cluster:?}"
                        )));
                    }
                    1 => matches.remove(0),
                    _ => {
                        return Err(HrpcError::invalid_argument(format!(
                            "provider {provider:?} has clusters named {cluster:?} in several locations; pass the location"
                        )));
                    }
                }
            }
        };
        let created = self
            .inner
            .db
            .create_cluster(
                who.organization_id,
                NewCluster {
                    name: name.unwrap_or_else(|| remote.name.clone()),
                    status: ClusterStatus::Pending,
                    provider_id: Some(row.id),
                    external_id: Some(remote.external_id.clone()),
                    declared_region: Some(remote.location.clone()),
                    labels: Default::default(),
                    security_profile: Default::default(),
                    placement: Default::default(),
                },
            )
            .await
            .map_err(db_error)?;
        if remote.autopilot {
            self.record_autopilot(who.organization_id, created.id).await;
        }
        lock(&self.inner.detected).insert(created.id, cluster_view_of(&remote, None));
        if install
            && let Err(message) = self
                .install(
                    who.organization_id,
                    Some(who.user_id),
                    &created,
                    client.as_ref(),
                    &remote,
                )
                .await
        {
            self.fail(
                who.organization_id,
                created.id,
                "installing the manager",
                message,
            )
            .await;
        }
        let fresh = self
            .inner
            .db
            .get_cluster(who.organization_id, created.id)
            .await
            .map_err(db_error)?;
        Ok(self.managed_view(fresh, Some(&row)))
    }

    async fn create_cluster(
        &self,
        ctx: Context,
        provider: String,
        name: String,
        location: Option<String>,
        mode: ClusterMode,
    ) -> Result<ManagedClusterView, HrpcError> {
        let who = who(&ctx)?;
        crate::check_name("name", lapdev_common::name::NameKind::Cluster, &name)?;
        let row = self.provider_row(who, &provider).await?;
        match self
            .inner
            .db
            .get_cluster_by_name(who.organization_id, &name)
            .await
        {
            Ok(_) => {
                return Err(HrpcError::already_exists(format!(
                    "a cluster named {name:?} already exists"
                )));
            }
            Err(DbError::NotFound { .. }) => {}
            Err(e) => return Err(db_error(e)),
        }
        let location = location
            .or_else(|| {
                row.config
                    .get("location")
                    .and_then(|l| l.as_str())
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                HrpcError::invalid_argument(
                    "no location given and the provider has no default location",
                )
            })?;
        let client = self.client_for(&row).await?;
        // The intent first: a row `provisioning` that names the cluster the
        // provider is about to create. If this insert fails, nothing was asked
        // of the provider; if the server stops after the provider accepted,
        // `resume` finds the row and follows the cluster by its name.
        let org = who.organization_id;
        let cluster = self
            .inner
            .db
            .create_cluster(
                org,
                NewCluster {
                    name: name.clone(),
                    status: ClusterStatus::Provisioning,
                    provider_id: Some(row.id),
                    external_id: Some(intent_link(&location, &name)),
                    declared_region: Some(location.clone()),
                    labels: Default::default(),
                    security_profile: Default::default(),
                    placement: Default::default(),
                },
            )
            .await
            .map_err(db_error)?;
        if mode == ClusterMode::Autopilot {
            self.record_autopilot(org, cluster.id).await;
        }
        let op = match client
            .create_cluster(&NewProviderCluster {
                name: name.clone(),
                location: Some(location.clone()),
                mode,
            })
            .await
        {
            Ok(op) => op,
            Err(e) => {
                // Refused: nothing is billed, so the intent goes too.
                if let Err(db) = self.inner.db.delete_cluster(org, cluster.id).await {
                    tracing::warn!(cluster_id = %cluster.id, error = %db, "cannot remove the intent of a refused create");
                    self.fail(
                        org,
                        cluster.id,
                        "creating the cluster",
                        e.provider_message(),
                    )
                    .await;
                }
                return Err(provider_error(e));
            }
        };
        let cluster = match op.target.as_deref() {
            Some(target) if parse_self_link(target).is_some() => {
                if let Err(e) = self
                    .inner
                    .db
                    .set_cluster_external_id(org, cluster.id, target)
                    .await
                {
                    // The intent's name still finds it (on resume too).
                    tracing::warn!(cluster_id = %cluster.id, error = %e, "cannot record the provider's id");
                }
                Cluster {
                    external_id: Some(target.to_owned()),
                    ..cluster
                }
            }
            _ => cluster,
        };
        let view = self.managed_view(cluster.clone(), Some(&row));
        self.inner.background.spawn(
            self.clone()
                .finish_create(who, cluster, client, op, location, name),
        );
        Ok(view)
    }

    async fn delete_cluster(
        &self,
        ctx: Context,
        name: String,
        confirm: bool,
        keep_in_provider: bool,
    ) -> Result<Option<ManagedClusterView>, HrpcError> {
        let who = who(&ctx)?;
        let org = who.organization_id;
        let cluster = self
            .inner
            .db
            .get_cluster_by_name(org, &name)
            .await
            .map_err(db_error)?;
        let Some(provider_id) = cluster.provider_id.filter(|_| !keep_in_provider) else {
            if let Err(e) = self.inner.db.delete_cluster(org, cluster.id).await {
                return Err(cluster_delete_error(&self.inner.db, org, &cluster, e).await);
            }
            self.inner.kube.cluster_deleted(cluster.id);
            return Ok(None);
        };
        let row = self
            .inner
            .db
            .get_provider(org, provider_id)
            .await
            .map_err(db_error)?;
        if !confirm {
            return Err(HrpcError::failed_precondition(format!(
                "cluster {name:?} is managed by provider {:?}: confirm to delete it there too, or keep it there and only remove it from Lapdev",
                row.name
            )));
        }
        let Some((location, remote_name)) =
            cluster.external_id.as_deref().and_then(parse_self_link)
        else {
            return Err(HrpcError::failed_precondition(format!(
                "cluster {name:?} has no provider id to delete it by; remove it from Lapdev only"
            )));
        };
        let workspaces = self
            .inner
            .db
            .list_cluster_workspaces(org, cluster.id)
            .await
            .map_err(db_error)?;
        if !workspaces.is_empty() {
            let names: Vec<String> = workspaces.into_iter().map(|w| w.name).collect();
            return Err(cluster_in_use(&name, &names));
        }
        let client = self.client_for(&row).await?;
        self.set_status(org, cluster.id, ClusterStatus::Deleting)
            .await;
        let op = match client.delete_cluster(&location, &remote_name).await {
            Ok(op) => op,
            Err(e) if e.api_error().map(|a| a.kind) == Some(ApiErrorKind::NotFound) => {
                // Already gone in the provider.
                self.forget(org, cluster.id).await;
                return Ok(None);
            }
            Err(e) => {
                self.fail(
                    org,
                    cluster.id,
                    "deleting the cluster",
                    e.provider_message(),
                )
                .await;
                return Err(provider_error(e));
            }
        };
        let fresh = self
            .inner
            .db
            .get_cluster(org, cluster.id)
            .await
            .map_err(db_error)?;
        let view = self.managed_view(fresh, Some(&row));
        self.inner
            .background
            .spawn(self.clone().finish_delete(org, cluster, client, op));
        Ok(Some(view))
    }

    async fn get_managed_cluster(
        &self,
        ctx: Context,
        name: String,
    ) -> Result<ManagedClusterView, HrpcError> {
        let who = who(&ctx)?;
        let cluster = self
            .inner
            .db
            .get_cluster_by_name(who.organization_id, &name)
            .await
            .map_err(db_error)?;
        let provider = match cluster.provider_id {
            Some(id) => Some(
                self.inner
                    .db
                    .get_provider(who.organization_id, id)
                    .await
                    .map_err(db_error)?,
            ),
            None => None,
        };
        Ok(self.managed_view(cluster, provider.as_ref()))
    }
}

/// The `ProviderRpc` routes for the server's state, behind the admin JWT layer (to
/// be merged into the `/rpc` router).
pub fn routes(state: &crate::AppState) -> axum::Router {
    use lapdev_hrpc::IntoRoutes as _;
    let service = state.providers.clone();
    // Provider operations a restart interrupted go on in the background.
    if tokio::runtime::Handle::try_current().is_ok() {
        let resuming = service.clone();
        state.background.spawn(async move {
            resuming.resume().await;
        });
    }
    ProviderRpcServer::new(service)
        .into_routes()
        .route_layer(axum::middleware::from_fn_with_state(
            state.jwt.clone(),
            super::service::require_admin,
        ))
}
