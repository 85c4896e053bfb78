//! GKE through the official Google Cloud Rust client (`google-cloud-container-v1`),
//! authenticated with a service-account key.
//!
//! - Credentials: `google-cloud-auth`'s service-account credentials. For Google APIs
//!   they sign a JWT locally with the key (no token endpoint is called); the API
//!   verifies it with the key's public half.
//! - Clusters are listed across all of the project's locations (`locations/-`);
//!   the self link is the cluster's external id.
//! - Create and delete return GKE operations; [`K8sProvider::wait_operation`]
//!   polls them to completion with a deadline.
//! - [`K8sProvider::cluster_access`] gives the cluster's endpoint and CA plus an OAuth
//!   access token from the JWT-bearer grant at the key's `token_uri`
//!   ([`super::token`]), which a GKE API server accepts.
//!
//! The API endpoint is configurable ([`GcpConfig::endpoint`]) so tests run the real
//! client against a local stand-in; [`GcpProvider::new`] checks it, and the key's
//! `token_uri`, against an [`EndpointPolicy`] (Google's hosts unless told
//! otherwise).

use std::fmt;
use std::sync::Arc;

use google_cloud_container_v1::client::ClusterManager;
use google_cloud_container_v1::model;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt as _};
use lapdev_common::status::K8sProviderKind;
use ring::signature::RsaKeyPair;
use std::time::Duration;

use super::endpoints::EndpointPolicy;
use super::token::TokenSource;
use super::{
    ApiError, ApiErrorKind, ClusterAccess, ClusterMode, K8sProvider, NewProviderCluster,
    NodePoolInfo, OperationState, ProviderCluster, ProviderClusterStatus, ProviderError,
    ProviderOperation,
};

/// The public GKE API.
pub const DEFAULT_ENDPOINT: &str = "https://container.googleapis.com";
/// Google's OAuth token endpoint, when a key names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The OAuth scope for GKE and its clusters.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Largest accepted key file.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Attempts of one idempotent call before its error is returned.
pub const MAX_ATTEMPTS: u32 = 3;
/// Longest time spent retrying one call.
pub const RETRY_TIME_LIMIT: Duration = Duration::from_secs(20);
/// Longest GKE cluster name.
pub const MAX_CLUSTER_NAME_CHARS: usize = 40;

/// Non-secret settings of a GCP provider (the `config` JSON of its row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpConfig {
    /// The project whose clusters are managed.
    pub project: String,
    /// Location for new clusters when none is given (e.g. `europe-west1`).
    pub default_location: Option<String>,
    /// GKE API endpoint; [`DEFAULT_ENDPOINT`] when `None` (a private endpoint, or a
    /// local stand-in in tests).
    pub endpoint: Option<String>,
}

impl GcpConfig {
    /// Reads `{"project": "...", "location": "...", "endpoint": "..."}`;
    /// only `project` is required.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ProviderError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ProviderError::InvalidConfig("config must be a JSON object".into()))?;
        let text = |field: &str| -> Result<Option<String>, ProviderError> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    Ok(Some(s.trim().to_owned()))
                }
                Some(_) => Err(ProviderError::InvalidConfig(format!(
                    "{field} must be a non-empty string"
                ))),
            }
        };
        let project = text("project")?
            .ok_or_else(|| ProviderError::InvalidConfig("project is required".into()))?;
        check_path_segment("project", &project)?;
        let default_location = text("location")?;
        if let Some(l) = &default_location {
            check_path_segment("location", l)?;
        }
        let endpoint = text("endpoint")?;
        // The shape only; which hosts are allowed is the server's policy,
        // checked when the provider is built.
        if let Some(e) = &endpoint {
            EndpointPolicy::AllowTestStandIns.check_api_endpoint(e)?;
        }
        Ok(GcpConfig {
            project,
            default_location,
            endpoint,
        })
    }

    /// The JSON stored in the provider row.
    pub fn to_value(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("project".into(), self.project.clone().into());
        if let Some(l) = &self.default_location {
            obj.insert("location".into(), l.clone().into());
        }
        if let Some(e) = &self.endpoint {
            obj.insert("endpoint".into(), e.clone().into());
        }
        serde_json::Value::Object(obj)
    }
}

/// A Google service-account key (the JSON file `gcloud iam service-accounts keys
/// create` writes), checked for shape. `Debug` shows only the account and key id.
#[derive(Clone)]
pub struct ServiceAccountKey {
    json: serde_json::Value,
    client_email: String,
    private_key_id: String,
    project_id: String,
    token_uri: String,
    key_pair: Arc<RsaKeyPair>,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("project_id", &self.project_id)
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parses and checks a key file: `type` is `service_account`, the identity
    /// fields are present, `private_key` is a PKCS#8 RSA key, `token_uri` (if
    /// given) is an http(s) URL. Messages never quote the key.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProviderError> {
        use ProviderError::MalformedCredentials as Bad;
        if bytes.len() > MAX_KEY_BYTES {
            return Err(Bad("the key file is larger than 64 KiB".into()));
        }
        let json: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|_| Bad("the key is not JSON (expected a service-account key file)".into()))?;
        let obj = json
            .as_object()
            .ok_or_else(|| Bad("the key is not a JSON object".into()))?;
        let field = |name: &str| -> Result<String, ProviderError> {
            match obj.get(name) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(_) => Err(Bad(format!("{name} must be a non-empty string"))),
                None => Err(Bad(format!("{name} is missing"))),
            }
        };
        let kind = field("type")?;
        if kind != "service_account" {
            return Err(Bad(format!(
                "type is {kind:?}, expected \"service_account\""
            )));
        }
        let client_email = field("client_email")?;
        if !client_email.contains('@') {
            return Err(Bad("client_email is not an email address".into()));
        }
        let private_key_id = field("private_key_id")?;
        let project_id = field("project_id")?;
        let token_uri = match obj.get("token_uri") {
            None | Some(serde_json::Value::Null) => DEFAULT_TOKEN_URI.to_owned(),
            Some(_) => field("token_uri")?,
        };
        // The shape only, as for the endpoint.
        EndpointPolicy::AllowTestStandIns.check_token_uri(&token_uri)?;
        let der = pem_pkcs8(&field("private_key")?)?;
        let key_pair = RsaKeyPair::from_pkcs8(&der)
            .map_err(|_| Bad("private_key is not a PKCS#8 RSA key (2048 bits or more)".into()))?;
        Ok(ServiceAccountKey {
            json,
            client_email,
            private_key_id,
            project_id,
            token_uri,
            key_pair: Arc::new(key_pair),
        })
    }

    /// The service account's email.
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The key's id.
    pub fn private_key_id(&self) -> &str {
        &self.private_key_id
    }

    /// The project the account belongs to.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// Where OAuth access tokens are obtained.
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 SHA-256 (JWT `RS256`).
    pub(crate) fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let rng = ring::rand::SystemRandom::new();
        let mut signature = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                message,
                &mut signature,
            )
            .map_err(|_| ProviderError::AccessToken("signing the JWT failed".into()))?;
        Ok(signature)
    }
}

/// The DER of the first `PRIVATE KEY` block of a PEM text.
fn pem_pkcs8(pem: &str) -> Result<Vec<u8>, ProviderError> {
    use ProviderError::MalformedCredentials as Bad;
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem
        .find(BEGIN)
        .ok_or_else(|| Bad("private_key is not a PEM PKCS#8 key (BEGIN PRIVATE KEY)".into()))?
        + BEGIN.len();
    let len = pem[start..]
        .find(END)
        .ok_or_else(|| Bad("private_key has no END PRIVATE KEY line".into()))?;
    let body: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| Bad("private_key is not valid base64 PEM".into()))
}

fn check_path_segment(field: &str, value: &str) -> Result<(), ProviderError> {
    if value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ProviderError::InvalidConfig(format!(
            "{field} may contain only letters, digits and - _ . :"
        )));
    }
    Ok(())
}

fn check_request_segment(field: &str, value: &str) -> Result<(), ProviderError> {
    if value.is_empty()
        || value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ProviderError::InvalidRequest(format!(
            "{field} {value:?} may contain only letters, digits and - _ ."
        )));
    }
    Ok(())
}

/// Checks a new GKE cluster name: a lowercase DNS label of at most 40 characters
/// that starts with a letter.
pub fn check_cluster_name(name: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| ProviderError::InvalidRequest(format!("cluster name {name:?} {why}"));
    if name.is_empty() || name.len() > MAX_CLUSTER_NAME_CHARS {
        return Err(bad("must be 1 to 40 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("may contain only lowercase letters, digits and '-'"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.ends_with('-') {
        return Err(bad("must start with a letter and not end with '-'"));
    }
    Ok(())
}

/// GKE through `google-cloud-container-v1`.
#[derive(Clone)]
pub struct GcpProvider {
    config: GcpConfig,
    key: ServiceAccountKey,
    client: ClusterManager,
    tokens: TokenSource,
}

impl fmt::Debug for GcpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpProvider")
            .field("config", &self.config)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Installs ring as the process's rustls provider if none is installed yet (the
/// Google clients were built without their own and would otherwise panic).
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl GcpProvider {
    /// Builds the client for `config`'s endpoint with the key's credentials,
    /// after checking the endpoint and the key's `token_uri` against `policy`.
    /// Makes no call.
    pub async fn new(
        config: GcpConfig,
        key: ServiceAccountKey,
        policy: EndpointPolicy,
    ) -> Result<Self, ProviderError> {
        policy.check_api_endpoint(config.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT))?;
        policy.check_token_uri(&key.token_uri)?;
        ensure_crypto_provider();
        let credentials =
            google_cloud_auth::credentials::service_account::Builder::new(key.json.clone())
                .build()
                .map_err(|e| ProviderError::MalformedCredentials(e.to_string()))?;
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let client = ClusterManager::builder()
            .with_endpoint(endpoint)
            .with_credentials(credentials)
            // Retry what is safe to retry (reads that hit a transient failure), but
            // not for long: callers see an unreachable API within seconds.
            .with_retry_policy(
                Aip194Strict
                    .with_attempt_limit(MAX_ATTEMPTS)
                    .with_time_limit(RETRY_TIME_LIMIT),
            )
            .build()
            .await
            .map_err(|e| ProviderError::BuildClient(e.to_string()))?;
        let tokens = TokenSource::new(key.clone(), CLOUD_PLATFORM_SCOPE)?;
        Ok(GcpProvider {
            config,
            key,
            client,
            tokens,
        })
    }

    /// The provider's settings.
    pub fn config(&self) -> &GcpConfig {
        &self.config
    }

    /// The source of access tokens for cluster API servers.
    pub fn tokens(&self) -> &TokenSource {
        &self.tokens
    }

    fn location_path(&self, location: &str) -> String {
        format!("projects/{}/locations/{location}", self.config.project)
    }

    fn cluster_path(&self, location: &str, name: &str) -> String {
        format!("{}/clusters/{name}", self.location_path(location))
    }

    // GKE still fills the deprecated `zone` and `status_message` fields.
    #[allow(deprecated)]
    fn operation(&self, op: model::Operation) -> ProviderOperation {
        let name = if op.name.starts_with("projects/") {
            op.name.clone()
        } else {
            let location = if op.location.is_empty() {
                op.zone.as_str()
            } else {
                op.location.as_str()
            };
            format!("{}/operations/{}", self.location_path(location), op.name)
        };
        let state = match op.status {
            model::operation::Status::Pending => OperationState::Pending,
            model::operation::Status::Running => OperationState::Running,
            model::operation::Status::Done => OperationState::Done,
            model::operation::Status::Aborting => OperationState::Aborting,
            _ => OperationState::Unknown,
        };
        let error = match &op.error {
            Some(status) if !status.message.is_empty() || status.code != 0 => {
                Some(if status.message.is_empty() {
                    format!("error code {}", status.code)
                } else {
                    status.message.clone()
                })
            }
            _ if state == OperationState::Done && !op.status_message.is_empty() => {
                Some(op.status_message.clone())
            }
            _ => None,
        };
        ProviderOperation {
            name,
            kind: op.operation_type.name().unwrap_or("UNKNOWN").to_owned(),
            state,
            error,
            target: (!op.target_link.is_empty()).then(|| op.target_link.clone()),
        }
    }
}

/// A GKE cluster as a [`ProviderCluster`].
// GKE still fills the deprecated `zone`, `status_message` and `current_node_count`.
#[allow(deprecated)]
fn cluster(c: model::Cluster) -> ProviderCluster {
    use model::cluster::Status;
    let status = match c.status {
        Status::Provisioning => ProviderClusterStatus::Provisioning,
        Status::Running => ProviderClusterStatus::Running,
        Status::Reconciling => ProviderClusterStatus::Reconciling,
        Status::Stopping => ProviderClusterStatus::Stopping,
        Status::Error => ProviderClusterStatus::Error,
        Status::Degraded => ProviderClusterStatus::Degraded,
        _ => ProviderClusterStatus::Unknown,
    };
    let non_empty = |s: String| (!s.trim().is_empty()).then_some(s);
    let location = if c.location.is_empty() {
        c.zone.clone()
    } else {
        c.location.clone()
    };
    let node_pools = c
        .node_pools
        .iter()
        .map(|p| NodePoolInfo {
            name: p.name.clone(),
            machine_type: p
                .config
                .as_ref()
                .map(|cfg| cfg.machine_type.clone())
                .and_then(non_empty),
            initial_node_count: p.initial_node_count,
            status: p.status.name().unwrap_or("UNKNOWN").to_owned(),
        })
        .collect();
    let ca_pem = c
        .master_auth
        .as_ref()
        .map(|a| a.cluster_ca_certificate.clone())
        .and_then(non_empty)
        .and_then(|b64| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
        });
    let node_count = c.current_node_count;
    ProviderCluster {
        external_id: c.self_link.clone(),
        name: c.name.clone(),
        location,
        status,
        status_message: non_empty(c.status_message.clone()),
        kubernetes_version: non_empty(c.current_master_version.clone()),
        endpoint: non_empty(c.endpoint.clone()),
        node_count,
        autopilot: c.autopilot.as_ref().is_some_and(|a| a.enabled),
        node_pools,
        ca_pem,
    }
}

/// A gax error as the kind and message GKE gave.
fn api_error(e: google_cloud_gax::error::Error) -> ApiError {
    use google_cloud_gax::error::rpc::Code;
    if let Some(status) = e.status() {
        let kind = match status.code {
            Code::Unauthenticated => ApiErrorKind::Unauthenticated,
            Code::PermissionDenied => ApiErrorKind::PermissionDenied,
            Code::NotFound => ApiErrorKind::NotFound,
            Code::AlreadyExists => ApiErrorKind::AlreadyExists,
            Code::ResourceExhausted => ApiErrorKind::ResourceExhausted,
            Code::InvalidArgument | Code::OutOfRange => ApiErrorKind::InvalidArgument,
            Code::FailedPrecondition | Code::Aborted => ApiErrorKind::FailedPrecondition,
            Code::Unavailable => ApiErrorKind::Unavailable,
            Code::DeadlineExceeded => ApiErrorKind::DeadlineExceeded,
            _ => ApiErrorKind::Other,
        };
        return ApiError {
            kind,
            message: status.message.clone(),
        };
    }
    let kind = match e.http_status_code() {
        Some(401) => ApiErrorKind::Unauthenticated,
        Some(403) => ApiErrorKind::PermissionDenied,
        Some(404) => ApiErrorKind::NotFound,
        Some(409) => ApiErrorKind::AlreadyExists,
        Some(429) => ApiErrorKind::ResourceExhausted,
        Some(400) => ApiErrorKind::InvalidArgument,
        Some(503) => ApiErrorKind::Unavailable,
        _ if e.is_authentication() => ApiErrorKind::Unauthenticated,
        _ if e.is_timeout() => ApiErrorKind::DeadlineExceeded,
        _ if e.is_io() || e.is_connect() || e.is_transport() => ApiErrorKind::Unavailable,
        _ => ApiErrorKind::Other,
    };
    // Not a structured Google status: whatever answered is summarised, never
    // quoted (its body could be anything).
    tracing::debug!(error = %e, "provider API call failed without a status");
    let message = match e.http_status_code() {
        Some(code) => format!("the provider API answered HTTP {code} ({})", kind.summary()),
        None => format!("the provider API call failed ({})", kind.summary()),
    };
    ApiError { kind, message }
}

#[async_trait::async_trait]
impl K8sProvider for GcpProvider {
    fn kind(&self) -> K8sProviderKind {
        K8sProviderKind::GCP
    }

    async fn validate_credentials(&self) -> Result<(), ProviderError> {
        self.client
            .list_clusters()
            .set_parent(self.location_path("-"))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ProviderError::ValidateCredentials(api_error(e)))
    }

    async fn list_clusters(&self) -> Result<Vec<ProviderCluster>, ProviderError> {
        let response = self
            .client
            .list_clusters()
            .set_parent(self.location_path("-"))
            .send()
            .await
            .map_err(|e| ProviderError::ListClusters(api_error(e)))?;
        if !response.missing_zones.is_empty() {
            tracing::warn!(
                project = %self.config.project,
                missing = ?response.missing_zones,
                "GKE could not list clusters in some locations"
            );
        }
        let mut clusters: Vec<ProviderCluster> =
            response.clusters.into_iter().map(cluster).collect();
        clusters.sort_by(|a, b| (&a.location, &a.name).cmp(&(&b.location, &b.name)));
        Ok(clusters)
    }

    async fn get_cluster(
        &self,
        location: &str,
        name: &str,
    ) -> Result<ProviderCluster, ProviderError> {
        check_request_segment("location", location)?;
        check_request_segment("cluster name", name)?;
        self.client
            .get_cluster()
            .set_name(self.cluster_path(location, name))
            .send()
            .await
            .map(cluster)
            .map_err(|e| ProviderError::GetCluster {
                cluster: format!("{location}/{name}"),
                source: api_error(e),
            })
    }

    async fn create_cluster(
        &self,
        spec: &NewProviderCluster,
    ) -> Result<ProviderOperation, ProviderError> {
        check_cluster_name(&spec.name)?;
        let location = spec
            .location
            .clone()
            .or_else(|| self.config.default_location.clone())
            .ok_or_else(|| {
                ProviderError::InvalidRequest(
                    "no location given and the provider has no default location".into(),
                )
            })?;
        check_request_segment("location", &location)?;
        let mut new = model::Cluster::new().set_name(spec.name.clone());
        match &spec.mode {
            ClusterMode::Autopilot => {
                new = new.set_autopilot(model::Autopilot::new().set_enabled(true));
            }
            ClusterMode::Standard {
                machine_type,
                node_count,
            } => {
                if !(1..=1000).contains(node_count) {
                    return Err(ProviderError::InvalidRequest(
                        "node count must be between 1 and 1000".into(),
                    ));
                }
                check_request_segment("machine type", machine_type)?;
                new = new.set_node_pools([model::NodePool::new()
                    .set_name("default-pool")
                    .set_initial_node_count(*node_count)
                    .set_config(model::NodeConfig::new().set_machine_type(machine_type.clone()))]);
            }
        }
        let op = self
            .client
            .create_cluster()
            .set_parent(self.location_path(&location))
            .set_cluster(new)
            .send()
            .await
            .map_err(|e| ProviderError::CreateCluster {
                cluster: format!("{location}/{}", spec.name),
                source: api_error(e),
            })?;
        Ok(self.operation(op))
    }

    async fn delete_cluster(
        &self,
        location: &str,
        name: &str,
    ) -> Result<ProviderOperation, ProviderError> {
        check_request_segment("location", location)?;
        check_request_segment("cluster name", name)?;
        let op = self
            .client
            .delete_cluster()
            .set_name(self.cluster_path(location, name))
            .send()
            .await
            .map_err(|e| ProviderError::DeleteCluster {
                cluster: format!("{location}/{name}"),
                source: api_error(e),
            })?;
        Ok(self.operation(op))
    }

    async fn get_operation(&self, name: &str) -> Result<ProviderOperation, ProviderError> {
        let prefix = format!("projects/{}/locations/", self.config.project);
        if !name.starts_with(&prefix) || !name.contains("/operations/") {
            return Err(ProviderError::InvalidRequest(format!(
                "{name:?} is not an operation of project {}",
                self.config.project
            )));
        }
        let op = self
            .client
            .get_operation()
            .set_name(name)
            .send()
            .await
            .map_err(|e| ProviderError::GetOperation {
                operation: name.to_owned(),
                source: api_error(e),
            })?;
        Ok(self.operation(op))
    }

    async fn cluster_access(
        &self,
        cluster: &ProviderCluster,
    ) -> Result<ClusterAccess, ProviderError> {
        let endpoint = cluster
            .endpoint
            .as_deref()
            .ok_or_else(|| ProviderError::NoEndpoint(cluster.name.clone()))?;
        let server_url = if endpoint.starts_with("https://") || endpoint.starts_with("http://") {
            endpoint.to_owned()
        } else {
            format!("https://{endpoint}")
        };
        let access_token = self.tokens.access_token().await?;
        Ok(ClusterAccess {
            server_url,
            ca_pem: cluster.ca_pem.clone(),
            access_token,
        })
    }
}
