//! One file per page. Each renders from the services' own answers; text that
//! came from a user or a cluster is only ever spliced as escaped text.

pub mod audit;
pub mod cluster;
pub mod clusters;
pub mod connect;
pub mod providers;
pub mod sign_in;
pub mod terminal;
pub mod tokens;
pub mod users;
pub mod workspace;
pub mod workspaces;
