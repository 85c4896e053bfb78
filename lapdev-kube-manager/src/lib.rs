//! Lapdev's in-cluster agent. It dials out to the server, reports cluster info and
//! the workspace pods it manages, and executes the server's commands.
//!
//! - [`config`]: flags and environment.
//! - [`cluster_info`]: nodes → [`lapdev_common::kube::KubeClusterInfo`] (pure).
//! - [`objects`]: a workspace's objects (pure builders), the security profiles.
//! - [`observe`]: pod, claim, Events and node → status, reason, message (pure;
//!   the mapping table is in its docs).
//! - [`workspace`]: the commands on a workspace's objects.
//! - [`watch`]: watchers on workspace pods, claims, Events and nodes, the API
//!   probe, the tick that force-deletes pods stuck on lost nodes.
//! - [`tracker`]: the compact state they feed, from which reports are made.
//! - [`ratelimit`]: the client-side request rate limit of the Kubernetes client.
//! - [`rpc`]: the `KubeManagerRpc` implementation served down the tunnel.
//! - [`access`]: exec and port-forward sessions (streams beside the RPCs).
//! - [`manager`]: the connection loop (tunnel, reports, heartbeats, backoff).
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`backoff`], [`error`]: small helpers.
//!
//! The crate links no database code: it talks to the server over HRPC only.

pub mod access;
pub mod backoff;
pub mod capacity;
pub mod cluster_info;
pub mod config;
pub mod error;
pub mod health;
pub mod manager;
pub mod objects;
pub mod observe;
pub mod ratelimit;
pub mod rpc;
pub mod tracker;
pub mod watch;
pub mod workspace;
