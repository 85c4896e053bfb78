//! Routing between replicas: a call for a cluster made on a replica that does
//! not hold the cluster's manager tunnel is forwarded to the replica that
//! does (its owner, see `lapdev_kube::server::owner`).
//!
//! - [`auth`]: the key (HKDF-SHA256 of the shared credential-encryption key)
//!   and the per-request HMAC-SHA256 with the sender's time.
//! - [`owners`]: which live replica owns each cluster, cached for the
//!   conductor's synchronous questions.
//! - [`forward`]: the caller's side ([`RoutedConnector`] for the conductor's
//!   manager calls, [`RoutedStreams`] for exec and port-forward streams) over
//!   HTTP/2 with prior knowledge, one pooled connection per peer; [`body`]
//!   keeps a request's body for the one retry.
//! - [`internal`]: the receiver's router, served on the internal listener
//!   (`--internal-listen`) that the public Service and Ingress must not
//!   route. It allows only a cluster's `KubeManagerRpc` calls and stream
//!   opens: no generic proxy.
//!
//! PostgreSQL only: SQLite serves one replica, which holds every tunnel.

pub mod auth;
pub mod body;
pub mod forward;
pub mod internal;
pub mod owners;

pub use forward::{RoutedConnector, RoutedStreams, Routing};
