//! Cluster info from the nodes: pure functions from `Node` objects to a compact
//! [`NodeSummary`] and from summaries to the [`KubeClusterInfo`] the server
//! stores. The watcher in [`crate::watch`] keeps one summary per node (a few
//! dozen bytes) instead of the nodes themselves.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use lapdev_common::kube::KubeClusterInfo;
use lapdev_common::quantity::{QuantityError, parse_bytes, parse_cpu_millis};
use lapdev_common::status::CloudProvider;

/// The region label every cloud sets on its nodes.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The region label of older clusters.
pub const LEGACY_REGION_LABEL: &str = "failure-domain.beta.kubernetes.io/region";

/// What the manager keeps of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSummary {
    /// CPU capacity, millicores.
    pub cpu_capacity_millis: i64,
    /// Allocatable CPU, millicores.
    pub cpu_allocatable_millis: i64,
    /// Memory capacity, bytes.
    pub memory_capacity_bytes: i64,
    /// Allocatable memory, bytes.
    pub memory_allocatable_bytes: i64,
    /// The cloud the node runs on.
    pub provider: Option<CloudProvider>,
    /// The node's region label.
    pub region: Option<String>,
    /// Whether the node is Ready, and out-of-service taint (for lost nodes).
    pub health: crate::observe::NodeHealth,
    /// Cordon, OS, blocking taints and labels (for per-node capacity).
    pub placement: crate::capacity::NodePlacementFacts,
}

/// A node reported a quantity that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node}: {field} is not a valid quantity")]
pub struct NodeQuantityError {
    /// The node's name.
    pub node: String,
    /// Which field, e.g. `status.capacity.cpu`.
    pub field: &'static str,
    /// Why.
    #[source]
    pub source: QuantityError,
}

/// Summarises a node. A malformed quantity (which a real API server never
/// stores) counts as 0 and is returned alongside, so the caller can log it.
pub fn summarize_node(node: &Node) -> (NodeSummary, Vec<NodeQuantityError>) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.as_ref();
    let capacity = status.and_then(|s| s.capacity.as_ref());
    let allocatable = status.and_then(|s| s.allocatable.as_ref());
    let mut errors = Vec::new();
    let mut get = |map: Option<&BTreeMap<String, Quantity>>,
                   key: &str,
                   field: &'static str,
                   parse: fn(&str) -> Result<i64, QuantityError>| {
        match map.and_then(|m| m.get(key)) {
            None => 0,
            Some(q) => parse(&q.0).unwrap_or_else(|source| {
                errors.push(NodeQuantityError {
                    node: name.clone(),
                    field,
                    source,
                });
                0
            }),
        }
    };
    let cpu_capacity_millis = get(capacity, "cpu", "status.capacity.cpu", parse_cpu_millis);
    let memory_capacity_bytes = get(capacity, "memory", "status.capacity.memory", parse_bytes);
    // A node without allocatable reports its capacity as allocatable.
    let cpu_allocatable_millis = if allocatable.is_some_and(|a| a.contains_key("cpu")) {
        get(
            allocatable,
            "cpu",
            "status.allocatable.cpu",
            parse_cpu_millis,
        )
    } else {
        cpu_capacity_millis
    };
    let memory_allocatable_bytes = if allocatable.is_some_and(|a| a.contains_key("memory")) {
        get(
            allocatable,
            "memory",
            "status.allocatable.memory",
            parse_bytes,
        )
    } else {
        memory_capacity_bytes
    };
    let labels = node.metadata.labels.as_ref();
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
    let empty = BTreeMap::new();
    let provider = detect_provider(provider_id, labels.unwrap_or(&empty));
    let region = labels
        .and_then(|l| l.get(REGION_LABEL).or_else(|| l.get(LEGACY_REGION_LABEL)))
        .filter(|r| !r.is_empty())
        .cloned();
    (
        NodeSummary {
            cpu_capacity_millis,
            cpu_allocatable_millis,
            memory_capacity_bytes,
            memory_allocatable_bytes,
            provider,
            region,
            health: crate::observe::NodeHealth::from_node(node),
            placement: crate::capacity::NodePlacementFacts::from_node(node),
        },
        errors,
    )
}

/// The cloud a node runs on: from `spec.providerID`'s scheme, else from labels
/// only that cloud's managed node pools set. `None` when nothing says.
pub fn detect_provider(
    provider_id: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Option<CloudProvider> {
    if let Some(id) = provider_id {
        let scheme = id.split_once("://").map_or("", |(s, _)| s);
        match scheme.to_ascii_lowercase().as_str() {
            "gce" => return Some(CloudProvider::Gcp),
            "aws" => return Some(CloudProvider::Aws),
            "azure" => return Some(CloudProvider::Azure),
            _ => {}
        }
    }
    const BY_LABEL: &[(&str, CloudProvider)] = &[
        ("cloud.google.com/", CloudProvider::Gcp),
        ("eks.amazonaws.com/", CloudProvider::Aws),
        ("alpha.eksctl.io/", CloudProvider::Aws),
        ("k8s.io/cloud-provider-aws", CloudProvider::Aws),
        ("kubernetes.azure.com/", CloudProvider::Azure),
    ];
    for key in labels.keys() {
        for (prefix, provider) in BY_LABEL {
            if key.starts_with(prefix) {
                return Some(*provider);
            }
        }
    }
    None
}

/// Who the manager is, for the parts of the info that do not come from nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagerIdentity {
    /// The manager's version.
    pub manager_version: String,
    /// The namespace the manager runs in.
    pub manager_namespace: String,
    /// The namespace workspaces run in.
    pub workspace_namespace: String,
    /// The install manifest's revision, when the manifest set it.
    pub manifest_revision: Option<String>,
    /// What the nodes' requests count (`LAPDEV_CAPACITY`).
    pub capacity_mode: lapdev_common::status::CapacityMode,
}

/// The cluster info from the API server version and every node's summary.
/// Provider and region are the most common among the nodes that say (ties go
/// to the alphabetically first, so the result does not depend on order).
pub fn cluster_info<'a>(
    kubernetes_version: &str,
    nodes: impl IntoIterator<Item = &'a NodeSummary>,
    identity: &ManagerIdentity,
) -> KubeClusterInfo {
    let mut info = KubeClusterInfo {
        kubernetes_version: kubernetes_version.to_owned(),
        node_count: 0,
        cpu_capacity_millis: 0,
        cpu_allocatable_millis: 0,
        memory_capacity_bytes: 0,
        memory_allocatable_bytes: 0,
        provider: CloudProvider::Unknown,
        region: None,
        manager_version: identity.manager_version.clone(),
        manager_namespace: identity.manager_namespace.clone(),
        workspace_namespace: identity.workspace_namespace.clone(),
        manifest_revision: identity.manifest_revision.clone(),
        nodes: None,
        capacity_mode: Some(identity.capacity_mode),
        autoscaling: None,
    };
    let mut providers: HashMap<CloudProvider, u32> = HashMap::new();
    let mut regions: HashMap<&str, u32> = HashMap::new();
    for n in nodes {
        info.node_count = info.node_count.saturating_add(1);
        info.cpu_capacity_millis = info
            .cpu_capacity_millis
            .saturating_add(n.cpu_capacity_millis);
        info.cpu_allocatable_millis = info
            .cpu_allocatable_millis
            .saturating_add(n.cpu_allocatable_millis);
        info.memory_capacity_bytes = info
            .memory_capacity_bytes
            .saturating_add(n.memory_capacity_bytes);
        info.memory_allocatable_bytes = info
            .memory_allocatable_bytes
            .saturating_add(n.memory_allocatable_bytes);
        if let Some(p) = n.provider {
            *providers.entry(p).or_default() += 1;
        }
        if let Some(r) = n.region.as_deref() {
            *regions.entry(r).or_default() += 1;
        }
    }
    if let Some((p, _)) = providers
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.as_str().cmp(a.0.as_str())))
    {
        info.provider = p;
    }
    info.region = regions
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(r, _)| r.to_owned());
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(
        name: &str,
        cpu: &str,
        mem: &str,
        alloc: Option<(&str, &str)>,
        provider_id: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Node {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect::<BTreeMap<_, _>>()
        };
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: provider_id.map(str::to_owned),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(q(&[("cpu", cpu), ("memory", mem), ("pods", "110")])),
                allocatable: alloc.map(|(c, m)| q(&[("cpu", c), ("memory", m)])),
                ..Default::default()
            }),
        }
    }

    fn id() -> ManagerIdentity {
        ManagerIdentity {
            manager_version: "0.1.0".into(),
            manager_namespace: "lapdev".into(),
            workspace_namespace: "lapdev-workspaces".into(),
            manifest_revision: None,
            capacity_mode: Default::default(),
        }
    }

    #[test]
    fn quantities_in_every_notation_are_summed_exactly() {
        let nodes = [
            node("a", "4", "15963568Ki", Some(("3800m", "14Gi")), None, &[]),
            node("b", "1.5", "2Gi", None, None, &[]),
            node("c", "1e3", "500M", Some(("999", "1e3")), None, &[]),
        ];
        let summaries: Vec<_> = nodes
            .iter()
            .map(|n| {
                let (s, errors) = summarize_node(n);
                assert!(errors.is_empty());
                s
            })
            .collect();
        let info = cluster_info("v1.33.0", &summaries, &id());
        assert_eq!(info.node_count, 3);
        assert_eq!(info.cpu_capacity_millis, 4000 + 1500 + 1_000_000);
        assert_eq!(info.cpu_allocatable_millis, 3800 + 1500 + 999_000);
        assert_eq!(
            info.memory_capacity_bytes,
            15_963_568 * 1024 + (2 << 30) + 500_000_000
        );
        assert_eq!(info.memory_allocatable_bytes, (14 << 30) + (2 << 30) + 1000);
        assert_eq!(info.kubernetes_version, "v1.33.0");
        assert_eq!(info.provider, CloudProvider::Unknown);
        assert_eq!(info.region, None);
        assert_eq!(info.workspace_namespace, "lapdev-workspaces");
    }

    #[test]
    fn a_bad_quantity_is_reported_not_silently_zero() {
        let n = node("bad", "lots", "1Gi", None, None, &[]);
        let (s, errors) = summarize_node(&n);
        assert_eq!(s.cpu_capacity_millis, 0);
        assert_eq!(s.memory_capacity_bytes, 1 << 30);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "status.capacity.cpu");
        assert!(errors[0].to_string().contains("bad"));
    }

    #[test]
    fn providers_and_regions_of_each_cloud() {
        let cases = [
            (
                node(
                    "gke",
                    "4",
                    "16Gi",
                    None,
                    Some("gce://my-project/europe-west1-b/gke-pool-1-abcd"),
                    &[
                        (REGION_LABEL, "europe-west1"),
                        ("cloud.google.com/gke-nodepool", "pool-1"),
                    ],
                ),
                CloudProvider::Gcp,
                Some("europe-west1"),
            ),
            (
                node(
                    "eks",
                    "4",
                    "16Gi",
                    None,
                    Some("aws:///us-east-1a/i-0123456789abcdef0"),
                    &[
                        (REGION_LABEL, "us-east-1"),
                        ("eks.amazonaws.com/nodegroup", "ng"),
                    ],
                ),
                CloudProvider::Aws,
                Some("us-east-1"),
            ),
            (
                node(
                    "aks",
                    "4",
                    "16Gi",
                    None,
                    Some(
                        "azure:///subscriptions/x/resourceGroups/mc_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-1/virtualMachines/0",
                    ),
                    &[
                        (REGION_LABEL, "westeurope"),
                        ("kubernetes.azure.com/agentpool", "nodepool1"),
                    ],
                ),
                CloudProvider::Azure,
                Some("westeurope"),
            ),
            (
                node(
                    "kind",
                    "4",
                    "16Gi",
                    None,
                    Some("kind://docker/kind/kind-control-plane"),
                    &[],
                ),
                CloudProvider::Unknown,
                None,
            ),
            (
                node(
                    "metal",
                    "4",
                    "16Gi",
                    None,
                    None,
                    &[(LEGACY_REGION_LABEL, "dc-1")],
                ),
                CloudProvider::Unknown,
                Some("dc-1"),
            ),
            // No provider id: the managed node pool labels say.
            (
                node(
                    "gke-labels",
                    "4",
                    "16Gi",
                    None,
                    None,
                    &[("cloud.google.com/gke-nodepool", "p")],
                ),
                CloudProvider::Gcp,
                None,
            ),
            (
                node(
                    "eks-labels",
                    "4",
                    "16Gi",
                    None,
                    None,
                    &[("eks.amazonaws.com/compute-type", "ec2")],
                ),
                CloudProvider::Aws,
                None,
            ),
            (
                node(
                    "aks-labels",
                    "4",
                    "16Gi",
                    None,
                    Some(""),
                    &[("kubernetes.azure.com/cluster", "c")],
                ),
                CloudProvider::Azure,
                None,
            ),
        ];
        for (n, provider, region) in cases {
            let (s, _) = summarize_node(&n);
            let info = cluster_info("v1", [&s], &id());
            let name = n.metadata.name.unwrap();
            assert_eq!(info.provider, provider, "{name}");
            assert_eq!(info.region.as_deref(), region, "{name}");
        }
    }

    #[test]
    fn the_majority_wins_and_order_does_not_matter() {
        let a = NodeSummary {
            provider: Some(CloudProvider::Aws),
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        let b = NodeSummary {
            provider: Some(CloudProvider::Gcp),
            region: Some("europe-west1".into()),
            ..Default::default()
        };
        let none = NodeSummary::default();
        let info = cluster_info("v1", [&a, &b, &b, &none], &id());
        assert_eq!(info.provider, CloudProvider::Gcp);
        assert_eq!(info.region.as_deref(), Some("europe-west1"));
        let tie1 = cluster_info("v1", [&a, &b], &id());
        let tie2 = cluster_info("v1", [&b, &a], &id());
        assert_eq!(tie1, tie2);
        assert_eq!(cluster_info("v1", [], &id()).node_count, 0);
    }
}
