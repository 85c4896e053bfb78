//! Domain types shared by every Lapdev crate: cluster info, statuses, workspace
//! specs, quantities, roles, the rules for names, the cluster- and personal-token
//! formats and the HTTP
//! header names.
//!
//! This crate does no I/O. It depends on serde and a few small pure crates only, so
//! the in-cluster manager, the server and the CLI can all share it cheaply.

pub mod headers;
pub mod kube;
pub mod logs;
pub mod name;
pub mod quantity;
pub mod quota;
pub mod reason;
pub mod role;
pub mod scheduling;
pub mod status;
pub mod time;
pub mod token;
