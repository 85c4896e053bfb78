//! Lapdev's in-cluster agent. It dials out to the server, reports cluster info and
//! the workspace pods it manages, and executes the server's commands.
//!
//! - [`config`]: flags and environment.
//! - [`cluster_info`]: nodes → [`lapdev_common::kube::KubeClusterInfo`] (pure).
//! - [`workspace`]: a workspace's objects (pure builders) and the commands on them.
//! - [`watch`]: watchers on workspace pods, claims and nodes, the API probe, and
//!   the [`watch::Tracker`] they feed.
//! - [`rpc`]: the `KubeManagerRpc` implementation served down the tunnel.
//! - [`manager`]: the connection loop (tunnel, reports, heartbeats, backoff).
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`backoff`], [`error`]: small helpers.
//!
//! The crate links no database code: it talks to the server over HRPC only.

pub mod backoff;
pub mod cluster_info;
pub mod config;
pub mod error;
pub mod health;
pub mod manager;
pub mod rpc;
pub mod watch;
pub mod workspace;
