//! Installing the manager into a provider cluster without kubectl.
//!
//! [`kube_client`] builds a `kube::Client` from a [`ClusterAccess`] (the cluster's
//! endpoint, its CA and an OAuth access token); [`apply_objects`] applies the
//! manager's objects ([`crate::manifest::manifest_objects`]) with server-side apply
//! under the field manager [`FIELD_MANAGER`], in order. Applying the same objects
//! again changes nothing, so an install can be retried safely.
//!
//! This is the one place the server dials into a cluster, and only through a
//! provider's API on purpose.

use std::time::Duration;

use base64::Engine as _;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};

use super::{ClusterAccess, ProviderError};

/// The field manager of the server's applies.
pub const FIELD_MANAGER: &str = "lapdev-server";

/// One applied object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedObject {
    /// Its kind (`Deployment`, ...).
    pub kind: String,
    /// Its namespace, for namespaced objects.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its resourceVersion after the apply.
    pub resource_version: Option<String>,
}

/// The DER certificates of a PEM bundle.
fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, ProviderError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let body_start = start + BEGIN.len();
        let len = rest[body_start..].find(END).ok_or_else(|| {
            ProviderError::KubeClient("the cluster CA has no END CERTIFICATE line".into())
        })?;
        let body: String = rest[body_start..body_start + len]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        certs.push(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| ProviderError::KubeClient("the cluster CA is not valid PEM".into()))?,
        );
        rest = &rest[body_start + len + END.len()..];
    }
    if certs.is_empty() {
        return Err(ProviderError::KubeClient(
            "the cluster CA holds no certificate".into(),
        ));
    }
    Ok(certs)
}

/// A Kubernetes client for the cluster: its endpoint, trusting only its CA (when
/// given), authenticating with the access token.
pub fn kube_client(access: &ClusterAccess) -> Result<kube::Client, ProviderError> {
    super::gcp::ensure_crypto_provider();
    let uri: http::Uri = access.server_url.parse().map_err(|_| {
        ProviderError::KubeClient(format!("{:?} is not a valid URL", access.server_url))
    })?;
    let mut config = kube::Config::new(uri);
    if let Some(pem) = &access.ca_pem {
        config.root_cert = Some(pem_certificates(pem)?);
    }
    config.auth_info.token = Some(access.access_token.clone().into());
    config.connect_timeout = Some(Duration::from_secs(15));
    config.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(config).map_err(|e| ProviderError::KubeClient(e.to_string()))
}

/// Applies `objects` (JSON values with `apiVersion`, `kind` and `metadata`) in
/// order with server-side apply, taking ownership of conflicting fields.
pub async fn apply_objects(
    client: &kube::Client,
    objects: &[serde_json::Value],
) -> Result<Vec<AppliedObject>, ProviderError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = Vec::with_capacity(objects.len());
    for object in objects {
        let text = |path: &[&str]| {
            let mut v = object;
            for p in path {
                v = v.get(p)?;
            }
            v.as_str().map(str::to_owned)
        };
        let (Some(api_version), Some(kind), Some(name)) = (
            text(&["apiVersion"]),
            text(&["kind"]),
            text(&["metadata", "name"]),
        ) else {
            return Err(ProviderError::Apply {
                object: "<unnamed>".into(),
                message: "the object has no apiVersion, kind or metadata.name".into(),
            });
        };
        let namespace = text(&["metadata", "namespace"]);
        let (group, version) = api_version
            .rsplit_once('/')
            .unwrap_or(("", api_version.as_str()));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let label = match &namespace {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        };
        let result = api
            .patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| ProviderError::Apply {
                object: label.clone(),
                message: e.to_string(),
            })?;
        tracing::info!(object = %label, "applied");
        applied.push(AppliedObject {
            kind,
            namespace,
            name,
            resource_version: result.metadata.resource_version,
        });
    }
    Ok(applied)
}

/// Builds a client from `access` and applies `objects`.
pub async fn install_manager(
    access: &ClusterAccess,
    objects: &[serde_json::Value],
) -> Result<Vec<AppliedObject>, ProviderError> {
    let client = kube_client(access)?;
    apply_objects(&client, objects).await
}
