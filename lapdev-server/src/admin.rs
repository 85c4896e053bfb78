//! The admin API: the `AdminRpc` trait and messages (`api`), its implementation
//! and the JWT layer in front of it (`service`); workspaces (`workspaces`).

pub mod api;
pub mod providers;
pub mod service;
pub mod workspaces;
