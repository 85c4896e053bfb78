//! The admin API: the `AdminRpc` trait and messages (`api`), its implementation
//! and the JWT layer in front of it (`service`); workspaces (`workspaces`);
//! keyset pages by name for the dashboard's lists (`paging`).

pub mod api;
pub mod paging;
pub mod providers;
pub mod service;
pub mod workspaces;
