//! Cloud providers: the [`K8sProvider`] trait and its implementations.
//!
//! An organisation connects a cloud account once (a `k8s_provider` row with an
//! encrypted credential); the server then builds a provider from that row with
//! [`connect`] and uses it to list the account's clusters, import one, create and
//! delete clusters, follow the provider's long-running operations, and reach a
//! cluster's own API server to install the manager ([`install`]).
//!
//! - [`endpoints`]: which hosts the server may call for a provider (Google's by
//!   default; local stand-ins only with an explicit policy).
//! - [`gcp`]: GKE through the official `google-cloud-container-v1` client, with a
//!   service-account key.
//! - [`install`]: builds a `kube::Client` from a [`ClusterAccess`] and applies the
//!   manager's objects with server-side apply.
//! - [`token`]: OAuth access tokens for a cluster's API server (the JWT-bearer grant
//!   at the key's `token_uri`), cached and refreshed before they expire.
//! - `testing` (feature `test-support`): a local stand-in for the GKE REST API and the
//!   OAuth token endpoint, so tests run the real client.
//!
//! Errors are [`ProviderError`]s named after the step that failed; an API failure
//! keeps the message of Google's structured error status ([`ApiError`]), and any
//! other upstream answer is summarised as its HTTP status and a fixed text, never
//! its body. No error or `Debug` output ever contains a credential or an access
//! token.

pub mod endpoints;
pub mod gcp;
pub mod install;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod token;

use std::fmt;
use std::time::Duration;

use lapdev_common::status::K8sProviderKind;
use serde::{Deserialize, Serialize};

pub use endpoints::EndpointPolicy;
pub use gcp::{GcpConfig, GcpProvider, ServiceAccountKey};

/// How often [`K8sProvider::wait_operation`] asks for an operation's state by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// What the provider says about a cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderClusterStatus {
    /// Being created.
    Provisioning,
    /// Up and usable.
    Running,
    /// Being changed (upgrade, resize); still usable.
    Reconciling,
    /// Being deleted.
    Stopping,
    /// Unusable; see the status message.
    Error,
    /// Usable but impaired; see the status message.
    Degraded,
    /// A state this version does not know.
    Unknown,
}

impl ProviderClusterStatus {
    /// The lowercase name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Running => "running",
            Self::Reconciling => "reconciling",
            Self::Stopping => "stopping",
            Self::Error => "error",
            Self::Degraded => "degraded",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ProviderClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node pool of a provider cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePoolInfo {
    /// Pool name.
    pub name: String,
    /// Machine type of its nodes (e.g. `e2-standard-4`), when set.
    pub machine_type: Option<String>,
    /// Nodes per zone the pool was created with.
    pub initial_node_count: i32,
    /// The pool's state as the provider names it (e.g. `RUNNING`).
    pub status: String,
}

/// A cluster as the provider describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCluster {
    /// The provider's stable id for it (for GKE the self link); stored as the
    /// cluster's `external_id`.
    pub external_id: String,
    /// Cluster name within its location.
    pub name: String,
    /// Region or zone.
    pub location: String,
    /// State.
    pub status: ProviderClusterStatus,
    /// The provider's explanation of the state, if any.
    pub status_message: Option<String>,
    /// Control-plane Kubernetes version.
    pub kubernetes_version: Option<String>,
    /// Address of the API server (an IP or host name, or a URL), when provisioned.
    pub endpoint: Option<String>,
    /// Current number of nodes.
    pub node_count: i32,
    /// Whether the provider manages nodes itself (GKE Autopilot).
    pub autopilot: bool,
    /// Node pools (empty for Autopilot).
    pub node_pools: Vec<NodePoolInfo>,
    /// PEM of the cluster's CA (public), when the provider gives one.
    pub ca_pem: Option<String>,
}

/// How a new cluster's nodes are managed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ClusterMode {
    /// The provider manages nodes (GKE Autopilot).
    Autopilot,
    /// One node pool of fixed-size machines.
    Standard {
        /// Machine type (e.g. `e2-standard-4`).
        machine_type: String,
        /// Nodes in the pool (per zone for regional clusters).
        node_count: i32,
    },
}

/// What [`K8sProvider::create_cluster`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProviderCluster {
    /// Cluster name (DNS label, at most 40 characters for GKE).
    pub name: String,
    /// Region or zone; the provider's default location when `None`.
    pub location: Option<String>,
    /// Autopilot or a standard node pool.
    pub mode: ClusterMode,
}

/// Where a long-running provider operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Accepted, not started.
    Pending,
    /// In progress.
    Running,
    /// Finished (successfully unless [`ProviderOperation::error`] is set).
    Done,
    /// Being cancelled.
    Aborting,
    /// A state this version does not know.
    Unknown,
}

/// A long-running provider operation (cluster creation or deletion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderOperation {
    /// The operation's full resource name (what [`K8sProvider::get_operation`] takes).
    pub name: String,
    /// What it does (e.g. `CREATE_CLUSTER`).
    pub kind: String,
    /// Where it is.
    pub state: OperationState,
    /// The provider's message when it failed.
    pub error: Option<String>,
    /// The resource it acts on (for GKE the cluster's self link), when known.
    pub target: Option<String>,
}

impl ProviderOperation {
    /// Finished, with or without an error.
    pub fn is_done(&self) -> bool {
        self.state == OperationState::Done
    }
}

/// Everything needed to talk to a cluster's own API server. `Debug` hides the token.
#[derive(Clone)]
pub struct ClusterAccess {
    /// API server URL (`https://<endpoint>`, or the endpoint as given when it is a URL).
    pub server_url: String,
    /// PEM of the cluster's CA, when the provider gives one.
    pub ca_pem: Option<String>,
    /// An OAuth access token the API server accepts.
    pub access_token: String,
}

impl fmt::Debug for ClusterAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAccess")
            .field("server_url", &self.server_url)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("access_token", &"<redacted>")
            .finish()
    }
}

/// The kind of an API failure, from the provider's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorKind {
    /// The credentials were not accepted.
    Unauthenticated,
    /// The account may not do this.
    PermissionDenied,
    /// No such project, location, cluster or operation.
    NotFound,
    /// It exists already.
    AlreadyExists,
    /// A quota or rate limit was hit.
    ResourceExhausted,
    /// The request was rejected as invalid.
    InvalidArgument,
    /// The resource is not in a state that allows this.
    FailedPrecondition,
    /// The service could not be reached or is unavailable.
    Unavailable,
    /// The call timed out.
    DeadlineExceeded,
    /// Anything else.
    Other,
}

impl ApiErrorKind {
    /// A short fixed text for the kind, used where the upstream's own words are
    /// not repeated.
    pub fn summary(self) -> &'static str {
        match self {
            Self::Unauthenticated => "credentials not accepted",
            Self::PermissionDenied => "permission denied",
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::ResourceExhausted => "quota or rate limit",
            Self::InvalidArgument => "request rejected",
            Self::FailedPrecondition => "not possible in the current state",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "timed out",
            Self::Other => "unexpected answer",
        }
    }
}

/// A failed provider API call: its kind and the provider's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({kind:?})")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ApiErrorKind,
    /// The provider's message.
    pub message: String,
}

/// Why a provider step failed. Named after the step; never contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The credential is not a usable key (checked before any call).
    #[error("malformed credentials: {0}")]
    MalformedCredentials(String),
    /// The provider's non-secret config is unusable.
    #[error("invalid provider config: {0}")]
    InvalidConfig(String),
    /// A request was rejected before it was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The API client could not be built.
    #[error("building the API client: {0}")]
    BuildClient(String),
    /// Checking the credentials against the API failed.
    #[error("validating credentials: {0}")]
    ValidateCredentials(#[source] ApiError),
    /// Listing clusters failed.
    #[error("listing clusters: {0}")]
    ListClusters(#[source] ApiError),
    /// Reading a cluster failed.
    #[error("getting cluster {cluster}: {source}")]
    GetCluster {
        /// `location/name`.
        cluster: String,
        /// The API failure.
        #[source]
        source: ApiError,
    },
    /// Creating a cluster failed.
    #[error("creating cluster {cluster}: {source}")]
    CreateCluster {
        /// `location/name`.
        cluster: String,
        /// The API failure.
        #[source]
        source: ApiError,
    },
    /// Deleting a cluster failed.
    #[error("deleting cluster {cluster}: {source}")]
    DeleteCluster {
        /// `location/name`.
        cluster: String,
        /// The API failure.
        #[source]
        source: ApiError,
    },
    /// Reading an operation failed.
    #[error("polling operation {operation}: {source}")]
    GetOperation {
        /// The operation's name.
        operation: String,
        /// The API failure.
        #[source]
        source: ApiError,
    },
    /// The operation finished with an error.
    #[error("operation {operation} failed: {message}")]
    OperationFailed {
        /// The operation's name.
        operation: String,
        /// The provider's message.
        message: String,
    },
    /// The operation did not finish before the deadline.
    #[error("operation {operation} did not finish within {waited:?}")]
    OperationDeadline {
        /// The operation's name.
        operation: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The cluster has no API endpoint yet (still provisioning?).
    #[error("cluster {0} has no API endpoint yet")]
    NoEndpoint(String),
    /// Getting an access token for the cluster's API server failed.
    #[error("getting an access token: {0}")]
    AccessToken(String),
    /// Building the Kubernetes client for the cluster failed.
    #[error("building the Kubernetes client: {0}")]
    KubeClient(String),
    /// Applying the manager's objects failed.
    #[error("applying {object}: {message}")]
    Apply {
        /// `Kind/name` of the object.
        object: String,
        /// What the API server said.
        message: String,
    },
}

impl ProviderError {
    /// The API failure behind this error, if it came from the provider's API.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::ValidateCredentials(e) | Self::ListClusters(e) => Some(e),
            Self::GetCluster { source, .. }
            | Self::CreateCluster { source, .. }
            | Self::DeleteCluster { source, .. }
            | Self::GetOperation { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The provider's own message when the API said something, else this error's text.
    pub fn provider_message(&self) -> String {
        match self {
            Self::OperationFailed { message, .. } => message.clone(),
            other => match other.api_error() {
                Some(e) => e.message.clone(),
                None => other.to_string(),
            },
        }
    }
}

/// A cloud account that hosts Kubernetes clusters.
#[async_trait::async_trait]
pub trait K8sProvider: Send + Sync + fmt::Debug {
    /// Which cloud.
    fn kind(&self) -> K8sProviderKind;

    /// Checks the credentials against the API (a cheap authenticated read).
    async fn validate_credentials(&self) -> Result<(), ProviderError>;

    /// The account's clusters in every location.
    async fn list_clusters(&self) -> Result<Vec<ProviderCluster>, ProviderError>;

    /// One cluster.
    async fn get_cluster(
        &self,
        location: &str,
        name: &str,
    ) -> Result<ProviderCluster, ProviderError>;

    /// Starts creating a cluster; returns the operation to follow.
    async fn create_cluster(
        &self,
        spec: &NewProviderCluster,
    ) -> Result<ProviderOperation, ProviderError>;

    /// Starts deleting a cluster; returns the operation to follow.
    async fn delete_cluster(
        &self,
        location: &str,
        name: &str,
    ) -> Result<ProviderOperation, ProviderError>;

    /// The current state of an operation (by [`ProviderOperation::name`]).
    async fn get_operation(&self, name: &str) -> Result<ProviderOperation, ProviderError>;

    /// Polls an operation every `interval` until it is done, or fails with
    /// [`ProviderError::OperationDeadline`] after `deadline`. An operation that
    /// finishes with an error is [`ProviderError::OperationFailed`] with the
    /// provider's message.
    async fn wait_operation(
        &self,
        operation: &ProviderOperation,
        deadline: Duration,
        interval: Duration,
    ) -> Result<ProviderOperation, ProviderError> {
        let started = tokio::time::Instant::now();
        let mut current = operation.clone();
        loop {
            if current.is_done() {
                return match &current.error {
                    Some(message) => Err(ProviderError::OperationFailed {
                        operation: current.name.clone(),
                        message: message.clone(),
                    }),
                    None => Ok(current),
                };
            }
            let elapsed = started.elapsed();
            if elapsed >= deadline {
                return Err(ProviderError::OperationDeadline {
                    operation: current.name.clone(),
                    waited: elapsed,
                });
            }
            tokio::time::sleep(interval.min(deadline - elapsed)).await;
            current = self.get_operation(&operation.name).await?;
        }
    }

    /// What is needed to reach the cluster's own API server: endpoint, CA and a
    /// fresh access token.
    async fn cluster_access(
        &self,
        cluster: &ProviderCluster,
    ) -> Result<ClusterAccess, ProviderError>;
}

/// Builds the provider of `kind` from its stored non-secret `config` and decrypted
/// `credential`. The credential is checked for shape, and every endpoint against
/// `policy`, here, before any call.
pub async fn connect(
    kind: K8sProviderKind,
    config: &serde_json::Value,
    credential: &[u8],
    policy: EndpointPolicy,
) -> Result<Box<dyn K8sProvider>, ProviderError> {
    match kind {
        K8sProviderKind::GCP => {
            let config = GcpConfig::from_value(config)?;
            let key = ServiceAccountKey::parse(credential)?;
            Ok(Box::new(GcpProvider::new(config, key, policy).await?))
        }
    }
}
