//! The cluster-info check, shared by the `cluster_info` fuzz target and the
//! corpus replay in `lapdev-kube-manager/tests/fuzz_corpus.rs`.
//!
//! An input is JSON: an array of Kubernetes `Node` objects (input that is not
//! one is skipped, as the API client would refuse it). Each node is summarised
//! and the summaries are folded into the cluster info.
//!
//! Invariants: no panic on any node; the node count is the number of nodes; a
//! quantity error is reported exactly for a quantity that does not parse; with
//! no negative values the totals are the exact (saturated) sums; the provider
//! and region are ones some node named, and unknown/none only when none did.

use k8s_openapi::api::core::v1::Node;
use lapdev_common::kube::KubeClusterInfo;
use lapdev_common::status::CloudProvider;
use lapdev_kube_manager::cluster_info::{ManagerIdentity, cluster_info, summarize_node};

/// Runs one input through the builder; returns the info, or `None` for input
/// that is not a list of nodes.
pub fn check(data: &[u8]) -> Option<KubeClusterInfo> {
    let Ok(nodes) = serde_json::from_slice::<Vec<Node>>(data) else {
        return None;
    };
    let identity = ManagerIdentity {
        manager_version: "fuzz".to_owned(),
        ..Default::default()
    };
    let mut summaries = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let (summary, errors) = summarize_node(node);
        let status = node.status.as_ref();
        let quantity = |map: Option<&std::collections::BTreeMap<_, _>>, key: &str| {
            map.and_then(|m: &std::collections::BTreeMap<String, _>| m.get(key))
                .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
        };
        let fields = [
            (
                "status.capacity.cpu",
                quantity(status.and_then(|s| s.capacity.as_ref()), "cpu"),
                true,
            ),
            (
                "status.capacity.memory",
                quantity(status.and_then(|s| s.capacity.as_ref()), "memory"),
                false,
            ),
            (
                "status.allocatable.cpu",
                quantity(status.and_then(|s| s.allocatable.as_ref()), "cpu"),
                true,
            ),
            (
                "status.allocatable.memory",
                quantity(status.and_then(|s| s.allocatable.as_ref()), "memory"),
                false,
            ),
        ];
        for (field, value, cpu) in fields {
            let bad = value.is_some_and(|v| {
                if cpu {
                    lapdev_common::quantity::parse_cpu_millis(&v).is_err()
                } else {
                    lapdev_common::quantity::parse_bytes(&v).is_err()
                }
            });
            let reported = errors.iter().filter(|e| e.field == field).count();
            assert_eq!(reported, usize::from(bad), "{field}: {errors:?}");
        }
        summaries.push(summary);
    }
    let info = cluster_info("v1.33.0", &summaries, &identity);
    assert_eq!(u64::from(info.node_count), summaries.len() as u64);
    let exact = |pick: fn(&lapdev_kube_manager::cluster_info::NodeSummary) -> i64| {
        let values: Vec<i64> = summaries.iter().map(pick).collect();
        if values.iter().all(|v| *v >= 0) {
            let sum: i128 = values.iter().map(|v| i128::from(*v)).sum();
            Some(sum.min(i128::from(i64::MAX)) as i64)
        } else {
            None
        }
    };
    for (got, want) in [
        (info.cpu_capacity_millis, exact(|s| s.cpu_capacity_millis)),
        (
            info.cpu_allocatable_millis,
            exact(|s| s.cpu_allocatable_millis),
        ),
        (
            info.memory_capacity_bytes,
            exact(|s| s.memory_capacity_bytes),
        ),
        (
            info.memory_allocatable_bytes,
            exact(|s| s.memory_allocatable_bytes),
        ),
    ] {
        if let Some(want) = want {
            assert_eq!(got, want);
        }
    }
    let providers: Vec<CloudProvider> = summaries.iter().filter_map(|s| s.provider).collect();
    if providers.is_empty() {
        assert_eq!(info.provider, CloudProvider::Unknown);
    } else {
        assert!(
            providers.contains(&info.provider),
            "{:?} named by no node",
            info.provider
        );
    }
    match &info.region {
        None => assert!(summaries.iter().all(|s| s.region.is_none())),
        Some(r) => assert!(summaries.iter().any(|s| s.region.as_ref() == Some(r))),
    }
    assert_eq!(info.manager_version, "fuzz");
    Some(info)
}
