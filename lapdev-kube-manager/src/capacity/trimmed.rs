//! The pod type of the cluster-wide pod watch (`capacity: pods`): it decodes a
//! Pod into its node, phase and requests only. Names of containers, images,
//! commands, environment values, volumes and annotations are skipped by the
//! decoder, so a cluster's 20,000 pods cost the manager a few dozen bytes each.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use super::{Requests, pod_requests};

/// A Pod, trimmed to what capacity needs.
#[derive(Debug, Clone, Deserialize)]
pub struct TrimmedPod {
    /// Name, namespace, uid and resource version only.
    #[serde(deserialize_with = "trimmed_meta")]
    pub metadata: ObjectMeta,
    /// The node and the requests.
    #[serde(default)]
    pub spec: TrimmedSpec,
    /// The phase.
    #[serde(default)]
    pub status: TrimmedStatus,
}

/// What is kept of `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "RawSpec")]
pub struct TrimmedSpec {
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// The requests by the scheduler's rule.
    pub requests: Requests,
}

/// What is kept of `status`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrimmedStatus {
    /// `status.phase`.
    #[serde(default)]
    pub phase: Option<String>,
}

impl TrimmedPod {
    /// The node it holds resources on, with its requests: `None` when it is
    /// not bound or has ended.
    pub fn bound(&self) -> Option<(&str, Requests)> {
        let phase = self.status.phase.as_deref().unwrap_or("Pending");
        let node = self.spec.node_name.as_deref()?;
        super::holds_resources(phase).then_some((node, self.spec.requests))
    }

    /// The key it is counted under.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

#[derive(Deserialize)]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

fn trimmed_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = RawMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..Default::default()
    })
}

#[derive(Deserialize, Default)]
struct RawResources {
    #[serde(default)]
    requests: Option<BTreeMap<String, Quantity>>,
    #[serde(default)]
    limits: Option<BTreeMap<String, Quantity>>,
}

#[derive(Deserialize)]
struct RawContainer {
    #[serde(default)]
    resources: Option<RawResources>,
    #[serde(default, rename = "restartPolicy")]
    restart_policy: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawSpec {
    #[serde(default, rename = "nodeName")]
    node_name: Option<String>,
    #[serde(default)]
    containers: Vec<RawContainer>,
    #[serde(default, rename = "initContainers")]
    init_containers: Vec<RawContainer>,
    #[serde(default)]
    overhead: Option<BTreeMap<String, Quantity>>,
}

impl From<RawSpec> for TrimmedSpec {
    fn from(raw: RawSpec) -> Self {
        let container = |c: RawContainer| Container {
            resources: c.resources.map(|r| ResourceRequirements {
                requests: r.requests,
                limits: r.limits,
                ..Default::default()
            }),
            restart_policy: c.restart_policy,
            ..Default::default()
        };
        let spec = PodSpec {
            containers: raw.containers.into_iter().map(container).collect(),
            init_containers: Some(raw.init_containers.into_iter().map(container).collect()),
            overhead: raw.overhead,
            ..Default::default()
        };
        TrimmedSpec {
            node_name: raw.node_name,
            requests: pod_requests(&spec),
        }
    }
}

impl kube::Resource for TrimmedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
