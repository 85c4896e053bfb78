//! The install manifest for `lapdev-kube-manager`.
//!
//! An admin who registers a cluster gets one YAML file to `kubectl apply -f`: the two
//! namespaces (`lapdev` for the manager, under the *restricted* Pod Security Standard;
//! `lapdev-workspaces` for workspaces, under *baseline*), the manager's ServiceAccount,
//! its least-privilege RBAC, a Secret carrying the manager's env contract
//! (`LAPDEV_SERVER_URL`, `LAPDEV_KUBE_CLUSTER_TOKEN`, optional `LAPDEV_SERVER_CA`) and
//! the Deployment, then the NetworkPolicies that isolate workspaces (`network.rs`:
//! no ingress to workspace pods; no egress to the cloud metadata service or the
//! manager's namespace).
//!
//! The objects are built as typed [`k8s_openapi`] structs and written with a YAML
//! serializer ([`serde_saphyr`]), never with string formatting, so no input (a cluster
//! name, a URL, a CA bundle) can add keys or documents: everything the caller gives ends
//! up as a scalar, quoted or block-escaped as YAML requires. Inputs are validated first
//! ([`ManifestParams::validate`]); what is rejected gets a [`ManifestError`] that says
//! why without echoing the secret.
//!
//! With the default namespaces and image, every object but the Secret is identical to
//! the kustomize base in `deploy/kube-manager/` (the tests compare them), so the two
//! install paths cannot drift apart. [`manifest_objects`] returns the same objects as
//! JSON values, in apply order, for a server-side apply through a provider's API.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Namespace, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lapdev_common::status::{CapacityMode, SecurityProfile};
use lapdev_common::token::is_well_formed_cluster_token;
use serde::Serialize;

mod network;

pub use network::{
    DENY_INGRESS_POLICY, EGRESS_POLICY, MANAGER_POLICY, METADATA_CIDR_V4, METADATA_CIDR_V6,
};

/// Namespace the manager runs in (restricted Pod Security Standard).
pub const DEFAULT_MANAGER_NAMESPACE: &str = "lapdev";
/// Namespace workspaces run in (baseline Pod Security Standard).
pub const DEFAULT_WORKSPACE_NAMESPACE: &str = "lapdev-workspaces";
/// Name of every named manager object: ServiceAccount, ClusterRole(Binding),
/// Role(Binding), Secret and Deployment.
pub const MANAGER_NAME: &str = "lapdev-kube-manager";
/// Image repository of the manager; the default tag is this crate's version.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/lapdev/lapdev-kube-manager";
/// Port of the manager's `/healthz`, `/readyz` and `/metrics`.
pub const MANAGER_HTTP_PORT: i32 = 8081;
/// UID and GID the manager runs as (distroless `nonroot`).
pub const MANAGER_UID: i64 = 65532;
/// Annotation on the Secret that names the cluster the token belongs to.
pub const CLUSTER_NAME_ANNOTATION: &str = "lapdev.io/cluster-name";

/// Env var: base URL of the Lapdev server.
pub const ENV_SERVER_URL: &str = "LAPDEV_SERVER_URL";
/// Env var: the cluster token.
pub const ENV_CLUSTER_TOKEN: &str = "LAPDEV_KUBE_CLUSTER_TOKEN";
/// Env var: PEM of an extra CA to trust for the server (optional).
pub const ENV_SERVER_CA: &str = "LAPDEV_SERVER_CA";
/// Env var: namespace the manager creates workspaces in.
pub const ENV_WORKSPACE_NAMESPACE: &str = "LAPDEV_WORKSPACE_NAMESPACE";
/// Env var: the cluster's security profile for workspace pods (`baseline` or
/// `restricted`); the workspace namespace's Pod Security label follows it.
pub const ENV_SECURITY_PROFILE: &str = "LAPDEV_SECURITY_PROFILE";
/// Env var: the revision of this manifest, reported back by the manager so an
/// admin can tell an install that predates what the server now renders.
pub const ENV_MANIFEST_REVISION: &str = "LAPDEV_MANIFEST_REVISION";
/// Env var: what the nodes' reported requests count (`nodes` or `pods`); with
/// `pods` the ClusterRole also grants a cluster-wide pod list/watch.
pub const ENV_CAPACITY: &str = "LAPDEV_CAPACITY";
/// Env var (optional Secret key): the proxy for `https://` server URLs.
pub const ENV_HTTPS_PROXY: &str = "HTTPS_PROXY";
/// Env var (optional Secret key): the proxy for `http://` server URLs.
pub const ENV_HTTP_PROXY: &str = "HTTP_PROXY";
/// Env var (optional Secret key): hosts reached directly, curl's syntax.
pub const ENV_NO_PROXY: &str = "NO_PROXY";
/// Annotation on the ClusterRole saying why it may read every pod.
pub const PODS_RULE_REASON_ANNOTATION: &str = "lapdev.dev/pods-access-reason";
/// The revision of the manifest this build renders. Bump it whenever the
/// rendered objects change in a way an installed cluster should re-apply
/// (RBAC rules, env contract, namespace labels).
pub const MANIFEST_REVISION: &str = "6";

/// Longest accepted cluster name, in characters.
pub const MAX_CLUSTER_NAME_CHARS: usize = 253;
/// Longest accepted server URL, in bytes.
pub const MAX_SERVER_URL_BYTES: usize = 2048;
/// Largest accepted CA bundle, in bytes.
pub const MAX_SERVER_CA_BYTES: usize = 64 * 1024;
/// Longest accepted image reference, in bytes.
pub const MAX_IMAGE_BYTES: usize = 512;

/// The default manager image: [`DEFAULT_IMAGE_REPOSITORY`] tagged with this crate's version.
pub fn default_image() -> String {
    format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// What the install manifest is rendered from.
///
/// `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ManifestParams {
    /// Base URL the manager dials, `https://` (or, with a warning, `http://`).
    pub server_url: String,
    /// The cluster token (`lapdev_ct_...`). Written only into the Secret.
    pub cluster_token: String,
    /// PEM of an extra CA the manager should trust for the server, if any.
    pub server_ca_pem: Option<String>,
    /// Manager image reference.
    pub image: String,
    /// Display name of the cluster; only written as an annotation on the Secret.
    pub cluster_name: String,
    /// Namespace for workspaces (default [`DEFAULT_WORKSPACE_NAMESPACE`]).
    pub workspace_namespace: String,
    /// Namespace for the manager (default [`DEFAULT_MANAGER_NAMESPACE`]).
    pub manager_namespace: String,
    /// How locked down workspace pods are; the workspace namespace's Pod
    /// Security level follows it.
    pub security_profile: SecurityProfile,
    /// What the nodes' free room counts; `pods` adds the cluster-wide pod watch.
    pub capacity_mode: CapacityMode,
}

impl ManifestParams {
    /// Parameters with the default image and namespaces and no extra CA.
    pub fn new(
        server_url: impl Into<String>,
        cluster_token: impl Into<String>,
        cluster_name: impl Into<String>,
    ) -> Self {
        Self {
            server_url: server_url.into(),
            cluster_token: cluster_token.into(),
            server_ca_pem: None,
            image: default_image(),
            cluster_name: cluster_name.into(),
            workspace_namespace: DEFAULT_WORKSPACE_NAMESPACE.to_owned(),
            manager_namespace: DEFAULT_MANAGER_NAMESPACE.to_owned(),
            security_profile: SecurityProfile::default(),
            capacity_mode: CapacityMode::default(),
        }
    }

    /// Checks every input; returns the warnings worth showing the admin (e.g. plain
    /// `http://`), or the first problem that makes the manifest unusable or unsafe.
    pub fn validate(&self) -> Result<Vec<ManifestWarning>, ManifestError> {
        let mut warnings = Vec::new();
        if !is_well_formed_cluster_token(&self.cluster_token) {
            return Err(ManifestError::MalformedToken);
        }
        validate_server_url(&self.server_url, &self.cluster_token, &mut warnings)?;
        if let Some(pem) = &self.server_ca_pem {
            validate_server_ca(pem)?;
        }
        validate_cluster_name(&self.cluster_name)?;
        validate_namespace(
            "manager_namespace",
            &self.manager_namespace,
            &self.cluster_token,
        )?;
        validate_namespace(
            "workspace_namespace",
            &self.workspace_namespace,
            &self.cluster_token,
        )?;
        if self.manager_namespace == self.workspace_namespace {
            return Err(ManifestError::SameNamespace);
        }
        validate_image(&self.image)?;
        Ok(warnings)
    }
}

impl fmt::Debug for ManifestParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestParams")
            .field("server_url", &self.server_url)
            .field("cluster_token", &"<redacted>")
            .field(
                "server_ca_pem",
                &self.server_ca_pem.as_ref().map(|_| "<pem>"),
            )
            .field("image", &self.image)
            .field("cluster_name", &self.cluster_name)
            .field("workspace_namespace", &self.workspace_namespace)
            .field("manager_namespace", &self.manager_namespace)
            .field("security_profile", &self.security_profile)
            .finish()
    }
}

/// Something allowed but worth telling the admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestWarning {
    /// The server URL is plain `http://`: the token would cross the network unencrypted
    /// unless something else (a mesh, a private link) protects it.
    InsecureServerUrl,
    /// The server URL names this machine (`localhost`, a loopback address, or
    /// the unspecified `0.0.0.0`/`::`): a manager in a cluster dials its own pod
    /// there. Right only for a manager on the server's machine.
    LoopbackServerUrl,
}

impl ManifestWarning {
    /// A stable snake_case code for scripts (the message may be reworded).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InsecureServerUrl => "insecure_server_url",
            Self::LoopbackServerUrl => "loopback_server_url",
        }
    }
}

impl fmt::Display for ManifestWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InsecureServerUrl => f.write_str(
                "the server URL uses plain http: the cluster token will travel unencrypted",
            ),
            Self::LoopbackServerUrl => f.write_str(
                "the server URL names the server's own machine (a loopback or \
                 unspecified address): a manager in a cluster would dial its own pod there, \
                 so manifests from this server work only for a manager on that machine; to \
                 connect a real cluster, set the server's public URL \
                 (lapdev-server --public-url) to an address the cluster reaches",
            ),
        }
    }
}

/// Why a manifest could not be rendered. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The token does not have the `lapdev_ct_` shape.
    #[error(
        "the cluster token is malformed (expected lapdev_ct_ followed by 43 base64url characters)"
    )]
    MalformedToken,
    /// The server URL is unusable.
    #[error("invalid server URL: {0}")]
    InvalidServerUrl(&'static str),
    /// The server URL is not `http` or `https`.
    #[error("invalid server URL: scheme {0:?} is not supported, use https:// (or http://)")]
    UnsupportedScheme(String),
    /// The CA bundle is unusable.
    #[error("invalid server CA: {0}")]
    InvalidServerCa(&'static str),
    /// The cluster name is unusable.
    #[error("invalid cluster name: {0}")]
    InvalidClusterName(&'static str),
    /// A namespace is not a DNS-1123 label.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidNamespace {
        /// Which parameter.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// Both namespaces are the same; they need different Pod Security levels.
    #[error(
        "manager_namespace and workspace_namespace must differ: the manager's is restricted, the workspaces' baseline"
    )]
    SameNamespace,
    /// The image reference is unusable.
    #[error("invalid image reference: {0}")]
    InvalidImage(&'static str),
    /// The YAML serializer failed.
    #[error("could not serialise the manifest as YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
    /// Conversion to JSON values failed.
    #[error("could not convert the manifest to JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn validate_server_url(
    raw: &str,
    token: &str,
    warnings: &mut Vec<ManifestWarning>,
) -> Result<(), ManifestError> {
    use ManifestError::InvalidServerUrl as Bad;
    if raw.is_empty() {
        return Err(Bad("it is empty"));
    }
    if raw.len() > MAX_SERVER_URL_BYTES {
        return Err(Bad("it is longer than 2048 bytes"));
    }
    // The URL parser silently drops tabs and newlines and trims spaces; reject them so
    // what is written is exactly what was validated.
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Bad("it contains whitespace or control characters"));
    }
    if raw.contains(token) {
        return Err(Bad(
            "it contains the cluster token; the token belongs only in the Secret",
        ));
    }
    let url = url::Url::parse(raw).map_err(|_| Bad("it is not an absolute URL"))?;
    let plain = match url.scheme() {
        "https" => false,
        "http" => true,
        other => return Err(ManifestError::UnsupportedScheme(other.to_owned())),
    };
    match url.host() {
        None => return Err(Bad("it has no host")),
        // Plain http that never leaves the machine is not worth a warning of
        // its own.
        Some(host) if names_this_machine(&host) => {
            warnings.push(ManifestWarning::LoopbackServerUrl);
        }
        Some(_) if plain => warnings.push(ManifestWarning::InsecureServerUrl),
        Some(_) => {}
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Bad(
            "it contains credentials; the manager authenticates with the token",
        ));
    }
    if url.query().is_some() || raw.contains('?') {
        return Err(Bad("it has a query string"));
    }
    if url.fragment().is_some() || raw.contains('#') {
        return Err(Bad("it has a fragment"));
    }
    Ok(())
}

/// `localhost` (RFC 6761 reserves it and its subdomains for loopback), a
/// loopback address, or the unspecified address.
fn names_this_machine(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => ip.is_loopback() || ip.is_unspecified(),
        url::Host::Ipv6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
    }
}

fn validate_server_ca(pem: &str) -> Result<(), ManifestError> {
    use ManifestError::InvalidServerCa as Bad;
    if pem.len() > MAX_SERVER_CA_BYTES {
        return Err(Bad("it is larger than 64 KiB"));
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") || !pem.contains("-----END CERTIFICATE-----") {
        return Err(Bad(
            "it is not a PEM certificate bundle (no BEGIN/END CERTIFICATE)",
        ));
    }
    if pem.contains('\0') {
        return Err(Bad("it contains a NUL byte"));
    }
    Ok(())
}

fn validate_cluster_name(name: &str) -> Result<(), ManifestError> {
    use ManifestError::InvalidClusterName as Bad;
    if name.trim().is_empty() {
        return Err(Bad("it is empty"));
    }
    if name.chars().count() > MAX_CLUSTER_NAME_CHARS {
        return Err(Bad("it is longer than 253 characters"));
    }
    if name.contains('\0') {
        return Err(Bad("it contains a NUL character"));
    }
    Ok(())
}

/// Checks a namespace; its error quotes the value, unless the value holds the
/// cluster token (a paste into the wrong field must not put the token into an
/// error message; `_` makes such a value invalid anyway).
fn validate_namespace(field: &'static str, value: &str, token: &str) -> Result<(), ManifestError> {
    let shown = if value.contains(token) {
        "<redacted: it contains the cluster token>".to_owned()
    } else {
        value.to_owned()
    };
    let bad = |reason| ManifestError::InvalidNamespace {
        field,
        value: shown.clone(),
        reason,
    };
    if value.is_empty() || value.len() > 63 {
        return Err(bad("must be 1 to 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("may contain only lowercase letters, digits and '-'"));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(bad("must start and end with a letter or digit"));
    }
    Ok(())
}

fn validate_image(image: &str) -> Result<(), ManifestError> {
    use ManifestError::InvalidImage as Bad;
    if image.is_empty() {
        return Err(Bad("it is empty"));
    }
    if image.len() > MAX_IMAGE_BYTES {
        return Err(Bad("it is longer than 512 bytes"));
    }
    // A reference is registry/path[:tag][@digest]: printable ASCII, no spaces.
    if !image.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Bad("it may contain only printable ASCII without spaces"));
    }
    if !image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"./:@_-".contains(&b))
    {
        return Err(Bad("it may contain only letters, digits and . / : @ _ -"));
    }
    Ok(())
}

/// The manager's objects, typed, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerManifest {
    /// `lapdev`, restricted.
    pub manager_namespace: Namespace,
    /// `lapdev-workspaces`, baseline.
    pub workspace_namespace: Namespace,
    /// The manager's identity.
    pub service_account: ServiceAccount,
    /// Cluster-wide: read nodes.
    pub cluster_role: ClusterRole,
    /// Binds [`Self::cluster_role`] to the ServiceAccount.
    pub cluster_role_binding: ClusterRoleBinding,
    /// In the workspace namespace: pods and PVCs.
    pub role: Role,
    /// Binds [`Self::role`] to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The env contract: server URL, token, optional CA.
    pub secret: Secret,
    /// The manager itself.
    pub deployment: Deployment,
    /// Workspace isolation: deny ingress, restricted egress, and the manager
    /// closed to workspaces (see `network.rs`).
    pub network_policies: [NetworkPolicy; 3],
}

/// One object of [`ManagerManifest`], serialised as itself.
#[derive(Serialize)]
#[serde(untagged)]
enum AnyObject<'a> {
    Namespace(&'a Namespace),
    ServiceAccount(&'a ServiceAccount),
    ClusterRole(&'a ClusterRole),
    ClusterRoleBinding(&'a ClusterRoleBinding),
    Role(&'a Role),
    RoleBinding(&'a RoleBinding),
    Secret(&'a Secret),
    Deployment(&'a Deployment),
    NetworkPolicy(&'a NetworkPolicy),
}

impl ManagerManifest {
    fn objects(&self) -> [AnyObject<'_>; 12] {
        [
            AnyObject::Namespace(&self.manager_namespace),
            AnyObject::Namespace(&self.workspace_namespace),
            AnyObject::ServiceAccount(&self.service_account),
            AnyObject::ClusterRole(&self.cluster_role),
            AnyObject::ClusterRoleBinding(&self.cluster_role_binding),
            AnyObject::Role(&self.role),
            AnyObject::RoleBinding(&self.role_binding),
            AnyObject::Secret(&self.secret),
            AnyObject::Deployment(&self.deployment),
            AnyObject::NetworkPolicy(&self.network_policies[0]),
            AnyObject::NetworkPolicy(&self.network_policies[1]),
            AnyObject::NetworkPolicy(&self.network_policies[2]),
        ]
    }

    /// The objects as JSON values, in apply order.
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, ManifestError> {
        self.objects()
            .iter()
            .map(|o| serde_json::to_value(o).map_err(ManifestError::from))
            .collect()
    }

    /// The objects as one multi-document YAML stream.
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        let mut out = String::from(YAML_HEADER);
        out.push_str(&serde_saphyr::to_string_multiple_with_options(
            &self.objects(),
            yaml_options(),
        )?);
        Ok(out)
    }
}

/// Serializer options. Block scalars (`|`, `>`) are off: in them a character such as
/// NEL (U+0085) is written raw, and the libyaml-derived parsers `kubectl` and PyYAML
/// use read it as a line break. Double-quoted scalars escape everything that is not
/// plainly printable, so every YAML reader gets the same string back.
fn yaml_options() -> serde_saphyr::SerializerOptions {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    options
}

/// A fixed comment (no input is ever written into it) and the first document marker.
const YAML_HEADER: &str = "\
# Lapdev kube-manager install manifest: kubectl apply -f this-file.yaml
# It contains the cluster token in a Secret: keep it private.
---
";

/// Validates `params` and builds the typed objects.
pub fn manager_manifest(params: &ManifestParams) -> Result<ManagerManifest, ManifestError> {
    params.validate()?;
    Ok(build(params))
}

/// Validates `params` and returns the objects as JSON values, in apply order (for a
/// server-side apply).
pub fn manifest_objects(params: &ManifestParams) -> Result<Vec<serde_json::Value>, ManifestError> {
    manager_manifest(params)?.to_values()
}

/// Validates `params` and renders the install manifest as a multi-document YAML stream.
pub fn render_manifest(params: &ManifestParams) -> Result<String, ManifestError> {
    manager_manifest(params)?.to_yaml()
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn strings(vs: &[&str]) -> Vec<String> {
    vs.iter().map(|v| s(v)).collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
}

/// `app.kubernetes.io/*` labels on every object. No `managed-by`: kustomize and the
/// server both apply these objects and must produce the same ones.
fn common_labels() -> BTreeMap<String, String> {
    map(&[
        ("app.kubernetes.io/name", MANAGER_NAME),
        ("app.kubernetes.io/component", "kube-manager"),
        ("app.kubernetes.io/part-of", "lapdev"),
        ("app.kubernetes.io/version", env!("CARGO_PKG_VERSION")),
    ])
}

/// The Deployment's selector: a stable subset of [`common_labels`] (no version: a
/// selector is immutable).
fn selector_labels() -> BTreeMap<String, String> {
    map(&[
        ("app.kubernetes.io/name", MANAGER_NAME),
        ("app.kubernetes.io/component", "kube-manager"),
    ])
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(s(name)),
        namespace: namespace.map(s),
        labels: Some(common_labels()),
        ..Default::default()
    }
}

fn namespace(name: &str, pod_security_level: &str) -> Namespace {
    let mut labels = common_labels();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            s(pod_security_level),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            s("latest"),
        );
    }
    Namespace {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..meta(name, None)
        },
        ..Default::default()
    }
}

fn rule(api_group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![s(api_group)]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

fn service_account_subject(manager_ns: &str) -> Subject {
    Subject {
        kind: s("ServiceAccount"),
        name: s(MANAGER_NAME),
        namespace: Some(s(manager_ns)),
        ..Default::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(s(path)),
            port: IntOrString::String(s("http")),
            scheme: Some(s("HTTP")),
            ..Default::default()
        }),
        initial_delay_seconds: Some(5),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn secret_env(name: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: s(name),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s(MANAGER_NAME),
                key: s(name),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    [
        (s("cpu"), Quantity(s(cpu))),
        (s("memory"), Quantity(s(memory))),
    ]
    .into_iter()
    .collect()
}

fn deployment(params: &ManifestParams) -> Deployment {
    let runtime_default = || SeccompProfile {
        type_: s("RuntimeDefault"),
        ..Default::default()
    };
    let container = Container {
        name: s("manager"),
        image: Some(params.image.clone()),
        image_pull_policy: Some(s("IfNotPresent")),
        args: Some(strings(&[
            "--listen",
            &format!("0.0.0.0:{MANAGER_HTTP_PORT}"),
            "--log-format",
            "json",
        ])),
        env: Some(vec![
            secret_env(ENV_SERVER_URL, false),
            secret_env(ENV_CLUSTER_TOKEN, false),
            secret_env(ENV_SERVER_CA, true),
            EnvVar {
                name: s(ENV_WORKSPACE_NAMESPACE),
                value: Some(params.workspace_namespace.clone()),
                ..Default::default()
            },
            EnvVar {
                name: s(ENV_SECURITY_PROFILE),
                value: Some(s(params.security_profile.as_str())),
                ..Default::default()
            },
            EnvVar {
                name: s(ENV_MANIFEST_REVISION),
                value: Some(s(MANIFEST_REVISION)),
                ..Default::default()
            },
            EnvVar {
                name: s(ENV_CAPACITY),
                value: Some(s(params.capacity_mode.as_str())),
                ..Default::default()
            },
            // An egress proxy for the dial-out (HTTP CONNECT, the tunnel's
            // WebSocket included): add these keys to the Secret when needed.
            secret_env(ENV_HTTPS_PROXY, true),
            secret_env(ENV_HTTP_PROXY, true),
            secret_env(ENV_NO_PROXY, true),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(s("http")),
            container_port: MANAGER_HTTP_PORT,
            protocol: Some(s("TCP")),
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 20, 3)),
        readiness_probe: Some(http_probe("/readyz", 10, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("50m", "64Mi")),
            limits: Some(quantities("500m", "256Mi")),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(strings(&["ALL"])),
                ..Default::default()
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(MANAGER_UID),
            run_as_group: Some(MANAGER_UID),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: s("tmp"),
            mount_path: s("/tmp"),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(MANAGER_NAME, Some(&params.manager_namespace)),
        spec: Some(DeploymentSpec {
            // One manager per cluster: never two connected with the same token.
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some(s("Recreate")),
                ..Default::default()
            }),
            revision_history_limit: Some(5),
            selector: LabelSelector {
                match_labels: Some(selector_labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(common_labels()),
                    annotations: Some(map(&[(
                        "kubectl.kubernetes.io/default-container",
                        "manager",
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(s(MANAGER_NAME)),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    node_selector: Some(map(&[("kubernetes.io/os", "linux")])),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(MANAGER_UID),
                        run_as_group: Some(MANAGER_UID),
                        seccomp_profile: Some(runtime_default()),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: s("tmp"),
                        empty_dir: Some(EmptyDirVolumeSource {
                            size_limit: Some(Quantity(s("16Mi"))),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The manager's cluster-wide rights: read nodes; with `capacity: pods` also
/// list and watch every pod, for their requests only (the manager decodes node,
/// phase and requests and keeps nothing else), which the annotation says.
fn cluster_role(capacity: CapacityMode) -> ClusterRole {
    let mut rules = vec![rule("", &["nodes"], &["list", "watch"])];
    let mut metadata = meta(MANAGER_NAME, None);
    if capacity == CapacityMode::Pods {
        rules.push(rule("", &["pods"], &["list", "watch"]));
        metadata.annotations = Some(map(&[(
            PODS_RULE_REASON_ANNOTATION,
            "capacity: pods - other workloads' pod requests are counted per node; only node, phase and requests are read",
        )]));
    }
    ClusterRole {
        metadata,
        rules: Some(rules),
        ..Default::default()
    }
}

fn build(params: &ManifestParams) -> ManagerManifest {
    let manager_ns = params.manager_namespace.as_str();
    let workspace_ns = params.workspace_namespace.as_str();

    let mut string_data = map(&[
        (ENV_SERVER_URL, &params.server_url),
        (ENV_CLUSTER_TOKEN, &params.cluster_token),
    ]);
    if let Some(pem) = &params.server_ca_pem {
        string_data.insert(s(ENV_SERVER_CA), pem.clone());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            annotations: Some(map(&[(CLUSTER_NAME_ANNOTATION, &params.cluster_name)])),
            ..meta(MANAGER_NAME, Some(manager_ns))
        },
        type_: Some(s("Opaque")),
        string_data: Some(string_data),
        ..Default::default()
    };

    ManagerManifest {
        manager_namespace: namespace(manager_ns, "restricted"),
        workspace_namespace: namespace(workspace_ns, params.security_profile.as_str()),
        service_account: ServiceAccount {
            metadata: meta(MANAGER_NAME, Some(manager_ns)),
            automount_service_account_token: Some(true),
            ..Default::default()
        },
        cluster_role: cluster_role(params.capacity_mode),
        cluster_role_binding: ClusterRoleBinding {
            metadata: meta(MANAGER_NAME, None),
            role_ref: RoleRef {
                api_group: s("rbac.authorization.k8s.io"),
                kind: s("ClusterRole"),
                name: s(MANAGER_NAME),
            },
            subjects: Some(vec![service_account_subject(manager_ns)]),
        },
        role: Role {
            metadata: meta(MANAGER_NAME, Some(workspace_ns)),
            rules: Some(vec![
                // Workspace pods and home volumes: created when absent (never
                // patched), read, watched, deleted.
                rule(
                    "",
                    &["pods", "persistentvolumeclaims"],
                    &["create", "get", "list", "watch", "delete"],
                ),
                // Read only: volume attach and mount failures and the cluster
                // autoscaler's scale-up decisions exist only as Events, so the
                // manager reads them to say why a workspace is not starting.
                rule("", &["events"], &["get", "list", "watch"]),
                // Shells, exec and port-forwards into workspace pods. Both verbs:
                // API servers before 1.35 authorise the WebSocket upgrade as
                // `get`, newer ones as `create`.
                rule("", &["pods/exec", "pods/portforward"], &["get", "create"]),
            ]),
        },
        role_binding: RoleBinding {
            metadata: meta(MANAGER_NAME, Some(workspace_ns)),
            role_ref: RoleRef {
                api_group: s("rbac.authorization.k8s.io"),
                kind: s("Role"),
                name: s(MANAGER_NAME),
            },
            subjects: Some(vec![service_account_subject(manager_ns)]),
        },
        secret,
        deployment: deployment(params),
        network_policies: network::policies(manager_ns, workspace_ns),
    }
}
