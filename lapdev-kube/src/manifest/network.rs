//! The install manifest's NetworkPolicies: static objects the admin applies
//! with the rest (the manager never creates, reads or changes them, so its
//! RBAC does not grow).
//!
//! - `lapdev-workspaces-deny-ingress` (workspace namespace): no pod reaches a
//!   workspace pod over the pod network, not even another workspace. Shells,
//!   exec and port-forwards go through the API server and the kubelet, not the
//!   pod network, so they keep working.
//! - `lapdev-workspaces-egress` (workspace namespace): workspaces reach pods in
//!   every namespace but the manager's, and every address but the cloud
//!   metadata service (169.254.169.254/32; AWS's IPv6 one, fd00:ec2::254/128).
//!   NetworkPolicies only ever add allowances, so restricting egress further
//!   means replacing this policy (same name) with a narrower one, e.g. only
//!   the company's CIDRs and DNS.
//! - `lapdev-kube-manager-deny-workspaces` (manager namespace): the manager's
//!   pods accept nothing from the workspace namespace. It closes the gap
//!   that the egress policy's `ipBlock` leaves on CNI plugins that match pod
//!   addresses against it. Kubelet probes are node traffic, always allowed.
//!
//! NetworkPolicy is enforced only by CNI plugins that implement it (Calico,
//! Cilium, GKE Dataplane V2, …); elsewhere these objects are accepted and do
//! nothing.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::{meta, s, strings};

/// Denies ingress to workspace pods.
pub const DENY_INGRESS_POLICY: &str = "lapdev-workspaces-deny-ingress";
/// Allows workspace egress but to the metadata service and the manager.
pub const EGRESS_POLICY: &str = "lapdev-workspaces-egress";
/// Denies the manager's pods anything from the workspace namespace.
pub const MANAGER_POLICY: &str = "lapdev-kube-manager-deny-workspaces";
/// The cloud metadata service (GCP, AWS, Azure), IPv4.
pub const METADATA_CIDR_V4: &str = "169.254.169.254/32";
/// AWS's metadata service over IPv6.
pub const METADATA_CIDR_V6: &str = "fd00:ec2::254/128";
/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Pods of every namespace but `namespace`.
fn namespaces_but(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: s(NAMESPACE_NAME_LABEL),
                operator: s("NotIn"),
                values: Some(vec![s(namespace)]),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ip_block(cidr: &str, except: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: s(cidr),
            except: Some(vec![s(except)]),
        }),
        ..Default::default()
    }
}

/// Every pod of the namespace.
fn all_pods() -> LabelSelector {
    LabelSelector::default()
}

/// The three policies, in apply order.
pub(super) fn policies(manager_ns: &str, workspace_ns: &str) -> [NetworkPolicy; 3] {
    [
        NetworkPolicy {
            metadata: meta(DENY_INGRESS_POLICY, Some(workspace_ns)),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(all_pods()),
                policy_types: Some(strings(&["Ingress"])),
                ingress: None,
                egress: None,
            }),
        },
        NetworkPolicy {
            metadata: meta(EGRESS_POLICY, Some(workspace_ns)),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(all_pods()),
                policy_types: Some(strings(&["Egress"])),
                ingress: None,
                egress: Some(vec![
                    NetworkPolicyEgressRule {
                        to: Some(vec![namespaces_but(manager_ns)]),
                        ports: None,
                    },
                    NetworkPolicyEgressRule {
                        to: Some(vec![
                            ip_block("0.0.0.0/0", METADATA_CIDR_V4),
                            ip_block("::/0", METADATA_CIDR_V6),
                        ]),
                        ports: None,
                    },
                ]),
            }),
        },
        NetworkPolicy {
            metadata: meta(MANAGER_POLICY, Some(manager_ns)),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(all_pods()),
                policy_types: Some(strings(&["Ingress"])),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![namespaces_but(workspace_ns)]),
                    ports: None,
                }]),
                egress: None,
            }),
        },
    ]
}
