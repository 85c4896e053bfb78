//! The caller's side: a cluster whose tunnel is on another replica is reached
//! through that replica's internal endpoint.
//!
//! [`RoutedConnector`] (the conductor's `ManagerConnector`) and
//! [`RoutedStreams`] (the sessions' `StreamOpener`) use the local tunnel when
//! this replica holds it, and otherwise the live owner from the [`Owners`]
//! cache: a manager call becomes `POST {owner}/internal/v1/clusters/{id}/
//! KubeManagerRpc/{method}` (a `KubeManagerRpcClient` over [`RemoteCalls`], a
//! transport that signs each request), a stream open `POST {owner}/internal/
//! v1/clusters/{id}/stream/{exec|portforward}` with both bodies streaming.
//! Replicas talk HTTP/2 with prior knowledge (h2c) over one pooled
//! connection per peer, so a stream's request and response bodies flow at
//! once.
//!
//! When the owner answers that it does not hold the tunnel (`503` with
//! [`NOT_OWNER_HEADER`]) the caller reads the owner from the database once and
//! retries once at the new owner (a stream only if none of its request body
//! was sent yet); otherwise the answer (`unavailable`) stands, except that a
//! manager call whose tunnel has come to this replica meanwhile (before it
//! was sent, or the owner read again is this replica) goes through that
//! tunnel instead. An owner that cannot be reached is `unavailable` and its
//! route is read again; the conductor's reconciler retries such calls later.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use lapdev_conductor::ManagerConnector;
use lapdev_hrpc::protocol::{
    CONTENT_TYPE_JSON, DEFAULT_MAX_RESPONSE_BYTES, REQUEST_ID_HEADER, TIMEOUT_HEADER,
    VERSION_HEADER,
};
use lapdev_hrpc::{Transport, TransportError};
use lapdev_kube::server::KubeClusterServer;
use lapdev_kube_rpc::KubeManagerRpcClient;
use lapdev_kube_rpc::stream::STREAM_REQUEST_HEADER;
use uuid::Uuid;

use super::auth::{
    CONTENT_HEADER, MAC_HEADER, ReplicaKey, SENDER_HEADER, Signed, TIME_HEADER, USER_HEADER,
};
use super::body::{Payload, Reclaimable};
use super::owners::{Owners, Route};
use crate::access::{OpenFuture, StreamOpenError, StreamOpener};

/// The internal endpoint's path prefix; a cluster's id follows.
pub const PREFIX: &str = "/internal/v1/clusters";
/// On a `503`: the answering replica does not hold the cluster's tunnel.
pub const NOT_OWNER_HEADER: &str = "x-lapdev-not-owner";
/// How long a forwarded stream open waits for the manager's response head.
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The headers the owner passes on to the manager.
pub const CARRIED_TO_MANAGER: [&str; 5] = [
    "content-type",
    VERSION_HEADER,
    TIMEOUT_HEADER,
    REQUEST_ID_HEADER,
    STREAM_REQUEST_HEADER,
];

/// The headers a forwarded request carries (besides the signature's).
const CARRIED: [&str; 6] = [
    "content-type",
    VERSION_HEADER,
    TIMEOUT_HEADER,
    REQUEST_ID_HEADER,
    USER_HEADER,
    STREAM_REQUEST_HEADER,
];

/// Why a forward failed before an owner answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No live replica owns the cluster.
    #[error("no live replica holds the cluster's tunnel")]
    NoOwner,
    /// The owner could not be reached.
    #[error("the replica holding the cluster's tunnel could not be reached: {0}")]
    Unreachable(String),
    /// The owner's answer could not be read.
    #[error("the answer of the replica holding the cluster's tunnel could not be read: {0}")]
    Answer(String),
}

/// What a forward is, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A unary manager call.
    Call,
    /// A stream open.
    Stream,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Stream => "stream",
        }
    }
}

fn count(kind: Kind, outcome: &'static str) {
    metrics::counter!("lapdev_forwarded_total", "kind" => kind.as_str(), "outcome" => outcome)
        .increment(1);
}

/// Reaching other replicas' clusters. Cheap to clone.
#[derive(Clone)]
pub struct Routing {
    inner: Arc<Inner>,
}

struct Inner {
    kube: KubeClusterServer,
    owners: Owners,
    key: ReplicaKey,
    id: Uuid,
    peers: HyperClient<HttpConnector, Body>,
    served: super::internal::Served,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("replica", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Routing {
    /// Routing for the replica `id`, signing with `key`.
    pub fn new(kube: KubeClusterServer, owners: Owners, key: ReplicaKey, id: Uuid) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let peers = HyperClient::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1)
            .http2_keep_alive_interval(Some(Duration::from_secs(20)))
            .build(connector);
        Self {
            inner: Arc::new(Inner {
                kube,
                owners,
                key,
                id,
                peers,
                served: super::internal::Served::default(),
            }),
        }
    }

    /// The owners cache.
    pub fn owners(&self) -> &Owners {
        &self.inner.owners
    }

    /// This replica's id.
    pub fn replica_id(&self) -> Uuid {
        self.inner.id
    }

    /// The signing key.
    pub fn key(&self) -> &ReplicaKey {
        &self.inner.key
    }

    /// The cluster server.
    pub fn kube(&self) -> &KubeClusterServer {
        &self.inner.kube
    }

    /// What this replica's internal endpoint served for others.
    pub fn served(&self) -> &super::internal::Served {
        &self.inner.served
    }

    /// The cluster's owner when it is another live replica.
    pub fn remote(&self, cluster_id: Uuid) -> Option<Route> {
        self.inner
            .owners
            .route(cluster_id)
            .filter(|r| r.replica_id != self.inner.id)
    }

    /// Forwards one request (`path` below the cluster's prefix, e.g.
    /// `/KubeManagerRpc/create_workspace`) to the cluster's owner, retrying
    /// once at a new owner when the first says it is not the owner.
    pub async fn forward(
        &self,
        cluster_id: Uuid,
        kind: Kind,
        path: &str,
        headers: &HeaderMap,
        payload: Payload,
    ) -> Result<Response<Incoming>, ForwardError> {
        let Some(route) = self.remote(cluster_id) else {
            count(kind, "no_owner");
            return Err(ForwardError::NoOwner);
        };
        let path = format!("{PREFIX}/{cluster_id}{path}");
        let mut headers = carried(headers);
        if !headers.contains_key(REQUEST_ID_HEADER) {
            headers.insert(
                REQUEST_ID_HEADER,
                HeaderValue::from_str(&Uuid::new_v4().to_string()).expect("a uuid is a header"),
            );
        }
        let body = match &payload {
            Payload::Bytes(b) => Some(b.as_ref()),
            Payload::Stream(_) => None,
        };
        headers.insert(
            CONTENT_HEADER,
            header(&super::auth::content_digest(&headers, body)),
        );
        let first = self
            .send_once(&route, &path, &headers, payload.body())
            .await;
        let response = match first {
            Ok(r) if r.headers().contains_key(NOT_OWNER_HEADER) => r,
            Ok(r) => {
                count(kind, "ok");
                return Ok(r);
            }
            Err(e) => {
                count(kind, "unreachable");
                self.refresh_later(cluster_id);
                return Err(e);
            }
        };
        // The owner moved: read it again, once, and retry once.
        let fresh = self.inner.owners.refresh(cluster_id).await;
        let again = payload.again();
        match (fresh, again) {
            (Some(fresh), Some(body)) if fresh.replica_id != self.inner.id && fresh != route => {
                match self.send_once(&fresh, &path, &headers, body).await {
                    Ok(r) => {
                        let outcome = if r.headers().contains_key(NOT_OWNER_HEADER) {
                            "not_owner"
                        } else {
                            "retried_ok"
                        };
                        count(kind, outcome);
                        Ok(r)
                    }
                    Err(e) => {
                        count(kind, "unreachable");
                        self.refresh_later(cluster_id);
                        Err(e)
                    }
                }
            }
            _ => {
                count(kind, "not_owner");
                Ok(response)
            }
        }
    }

    fn refresh_later(&self, cluster_id: Uuid) {
        let owners = self.inner.owners.clone();
        tokio::spawn(async move {
            owners.refresh(cluster_id).await;
        });
    }

    async fn send_once(
        &self,
        route: &Route,
        path: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, ForwardError> {
        let uri: http::Uri = format!("http://{}{path}", route.address)
            .parse()
            .map_err(|e| ForwardError::Unreachable(format!("bad replica address: {e}")))?;
        let time = super::auth::now_secs();
        let user = headers.get(USER_HEADER).and_then(|v| v.to_str().ok());
        let content = headers
            .get(CONTENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mac = self.inner.key.sign(&Signed {
            time,
            method: "POST",
            path,
            sender: self.inner.id,
            user,
            content,
        });
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let h = request.headers_mut();
        h.extend(headers.clone());
        h.insert(SENDER_HEADER, header(&self.inner.id.to_string()));
        h.insert(TIME_HEADER, HeaderValue::from(time));
        h.insert(MAC_HEADER, header(&mac));
        self.inner
            .peers
            .request(request)
            .await
            .map_err(|e| ForwardError::Unreachable(error_chain(&e)))
    }
}

fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ids, numbers and hex are header values")
}

fn carried(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in CARRIED {
        if let Some(v) = from.get(name) {
            out.insert(name, v.clone());
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A transport for a `KubeManagerRpcClient` whose calls go to the cluster's
/// owner's internal endpoint.
pub struct RemoteCalls {
    routing: Routing,
    cluster_id: Uuid,
}

impl Transport for RemoteCalls {
    fn send(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Response<Bytes>, TransportError>> {
        let routing = self.routing.clone();
        let cluster_id = self.cluster_id;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // The client's path is `{PREFIX}/{cluster}/KubeManagerRpc/{method}`.
            let prefix = format!("{PREFIX}/{cluster_id}");
            let path = parts
                .uri
                .path()
                .strip_prefix(prefix.as_str())
                .unwrap_or(parts.uri.path())
                .to_owned();
            // The cluster's tunnel may have come to this replica since the
            // client was made: call through it.
            if let Some(local) = routing.kube().tunnel(cluster_id) {
                return send_local(local, parts, &path, body).await;
            }
            let response = routing
                .forward(
                    cluster_id,
                    Kind::Call,
                    &path,
                    &parts.headers,
                    Payload::Bytes(body.clone()),
                )
                .await;
            let response = match response {
                Ok(r) if !r.headers().contains_key(NOT_OWNER_HEADER) => r,
                // Refused by an owner that let go of the tunnel, or no other
                // replica owns it: it may have come here meanwhile (the owner
                // read again was this replica).
                other => match routing.kube().tunnel(cluster_id) {
                    Some(local) => return send_local(local, parts, &path, body).await,
                    None => other.map_err(|e| TransportError::Unavailable(e.to_string()))?,
                },
            };
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, DEFAULT_MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(TransportError::Closed)?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// Sends a manager call (`path` below the cluster's prefix) through this
/// replica's own tunnel to the cluster.
async fn send_local(
    tunnel: lapdev_hrpc::tunnel::TunnelTransport,
    parts: http::request::Parts,
    path: &str,
    body: Bytes,
) -> Result<Response<Bytes>, TransportError> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = format!("http://manager.tunnel{path}")
        .parse()
        .map_err(|e| TransportError::Unavailable(format!("bad path: {e}")))?;
    *request.headers_mut() = parts.headers;
    tunnel.send(request).await
}

/// The conductor's connector: the local tunnel, else the owner elsewhere.
#[derive(Debug, Clone)]
pub struct RoutedConnector(pub Routing);

impl ManagerConnector for RoutedConnector {
    fn manager(&self, cluster_id: Uuid) -> Option<KubeManagerRpcClient> {
        if let Some(local) = self.0.kube().manager_client(cluster_id) {
            return Some(local);
        }
        self.0.remote(cluster_id)?;
        let transport = RemoteCalls {
            routing: self.0.clone(),
            cluster_id,
        };
        let base = format!("http://replica.internal{PREFIX}/{cluster_id}");
        let client = lapdev_hrpc::Client::new(&base, transport).ok()?;
        Some(KubeManagerRpcClient::new(client))
    }

    fn is_connected(&self, cluster_id: Uuid) -> bool {
        self.0.kube().is_tunnel_up(cluster_id) || self.0.remote(cluster_id).is_some()
    }

    fn driven_elsewhere(&self, cluster_id: Uuid) -> bool {
        !self.0.kube().is_tunnel_up(cluster_id) && self.0.remote(cluster_id).is_some()
    }

    fn refresh<'a>(
        &'a self,
        cluster_ids: &'a [Uuid],
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match cluster_ids {
                [] => {}
                [one] => {
                    self.0.owners().refresh(*one).await;
                }
                // One read of every owner rather than one per cluster.
                _ => {
                    if let Err(e) = self.0.owners().refresh_all().await {
                        tracing::warn!(error = %e, "could not read the clusters' owners");
                    }
                }
            }
        })
    }
}

/// The sessions' stream opener: the local tunnel, else the owner elsewhere.
#[derive(Debug, Clone)]
pub struct RoutedStreams(pub Routing);

impl StreamOpener for RoutedStreams {
    fn send_streaming(&self, cluster_id: Uuid, request: Request<Body>) -> OpenFuture {
        let routing = self.0.clone();
        let local = routing.kube().tunnel(cluster_id);
        Box::pin(async move {
            if let Some(tunnel) = local {
                return tunnel
                    .send_streaming(request)
                    .await
                    .map_err(|e| StreamOpenError::Transport(e.to_string()));
            }
            let (parts, body) = request.into_parts();
            // `/_stream/exec` → `/stream/exec`.
            let path = parts.uri.path();
            let path = format!("/{}", path.trim_start_matches('/').trim_start_matches('_'));
            let mut headers = parts.headers;
            headers.insert(
                TIMEOUT_HEADER,
                HeaderValue::from(STREAM_OPEN_TIMEOUT.as_millis() as u64),
            );
            headers
                .entry(http::header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static(CONTENT_TYPE_JSON));
            let open = routing.forward(
                cluster_id,
                Kind::Stream,
                &path,
                &headers,
                Payload::Stream(Reclaimable::new(body)),
            );
            let response = tokio::time::timeout(STREAM_OPEN_TIMEOUT, open)
                .await
                .map_err(|_| {
                    StreamOpenError::Transport(
                        "the replica holding the cluster's tunnel did not answer in time"
                            .to_owned(),
                    )
                })?
                .map_err(|e| match e {
                    ForwardError::NoOwner => StreamOpenError::NotConnected,
                    other => StreamOpenError::Transport(other.to_string()),
                })?;
            Ok(response.map(Body::new))
        })
    }
}
