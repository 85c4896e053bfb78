//! The admin API: the `AdminRpc` trait and messages (`api`), its implementation
//! and the JWT layer in front of it (`service`).

pub mod api;
pub mod service;
