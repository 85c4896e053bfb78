//! How the server opens a stream on a cluster's manager.
//!
//! [`StreamOpener`] sends one streaming HTTP request (`lapdev_kube_rpc::stream`
//! routes) to the manager of a cluster and returns its response as soon as the
//! head arrives; both bodies then stream. [`TunnelStreams`] is production on
//! one replica (with several, `crate::routing::RoutedStreams` also forwards
//! to the replica holding the tunnel): it
//! rides the manager's tunnel (an HTTP/2 stream on a v2 tunnel; a v1 tunnel
//! refuses, saying the manager is too old). [`InProcessStreams`] calls managers' routers in
//! this process (tower's `oneshot` streams bodies both ways), for tests and
//! benches.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Request, Response};
use lapdev_kube::server::KubeClusterServer;
use tower::ServiceExt as _;
use uuid::Uuid;

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamOpenError {
    /// The cluster's manager holds no tunnel now.
    #[error("the workspace's cluster is not connected (its manager is offline)")]
    NotConnected,
    /// The transport failed.
    #[error("the stream to the cluster's manager failed: {0}")]
    Transport(String),
}

/// A boxed future of a manager's response.
pub type OpenFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, StreamOpenError>> + Send + 'static>>;

/// Opens streaming requests on managers.
pub trait StreamOpener: Send + Sync + 'static {
    /// Sends `request` to the manager of `cluster_id`; resolves with the
    /// response head, its body streaming.
    fn send_streaming(&self, cluster_id: Uuid, request: Request<Body>) -> OpenFuture;
}

/// Production: streams ride the cluster's tunnel.
#[derive(Clone)]
pub struct TunnelStreams(pub KubeClusterServer);

impl StreamOpener for TunnelStreams {
    fn send_streaming(&self, cluster_id: Uuid, request: Request<Body>) -> OpenFuture {
        let tunnel = self.0.tunnel(cluster_id);
        Box::pin(async move {
            let tunnel = tunnel.ok_or(StreamOpenError::NotConnected)?;
            // A version 1 tunnel refuses at once, saying the manager is too old.
            tunnel
                .send_streaming(request)
                .await
                .map_err(|e| StreamOpenError::Transport(e.to_string()))
        })
    }
}

/// Managers' routers in this process, by cluster.
#[derive(Clone, Default)]
pub struct InProcessStreams {
    routers: Arc<Mutex<HashMap<Uuid, axum::Router>>>,
}

impl InProcessStreams {
    /// Serves `cluster_id`'s streams with `router` (the manager's).
    pub fn insert(&self, cluster_id: Uuid, router: axum::Router) {
        self.routers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster_id, router);
    }

    /// Disconnects `cluster_id`.
    pub fn remove(&self, cluster_id: Uuid) {
        self.routers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cluster_id);
    }
}

impl StreamOpener for InProcessStreams {
    fn send_streaming(&self, cluster_id: Uuid, request: Request<Body>) -> OpenFuture {
        let router = self
            .routers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cluster_id)
            .cloned();
        Box::pin(async move {
            let router = router.ok_or(StreamOpenError::NotConnected)?;
            router
                .oneshot(request)
                .await
                .map_err(|e| StreamOpenError::Transport(e.to_string()))
        })
    }
}
