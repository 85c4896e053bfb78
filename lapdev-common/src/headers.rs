//! HTTP header names that are part of Lapdev's wire contract.
//!
//! They are fixed: managers in the field and scripts with `curl` send them, so a
//! rename is a protocol break.

/// Header carrying a cluster token on every manager-to-server call and on the
/// tunnel upgrade. The token never travels in a URL.
pub const KUBE_CLUSTER_TOKEN_HEADER: &str = "x-lapdev-cluster-token";
