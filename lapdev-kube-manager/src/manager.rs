//! The connection loop: dial the server's tunnel, then report (heartbeat with
//! the manager's health, cluster info, a full workspace snapshot, then every
//! change) until the connection ends; reconnect with capped exponential backoff
//! and jitter; stop cleanly on shutdown.
//!
//! Nothing here needs an inbound port: the manager opens the tunnel
//! (`GET {server}/rpc/_tunnel`) and calls the server over HTTP
//! (`POST {server}/rpc/KubeClusterRpc/...`), both with the cluster token header.
//! After every (re)connect the first reports are the cluster info and a full
//! snapshot, so nothing that changed while disconnected is lost.
//!
//! The tunnel offers protocol version 2 (HTTP/2 streams beside the calls) and
//! falls back to version 1 with a server that chooses no version (see
//! `lapdev_hrpc::tunnel`); the version is logged when the tunnel opens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use lapdev_common::headers::KUBE_CLUSTER_TOKEN_HEADER;
use lapdev_common::kube::KubeClusterInfo;
use lapdev_hrpc::tunnel::{self, CloseReason, TunnelClientConfig, TunnelSessionHandle};
use lapdev_hrpc::{CallError, Client, Code, HrpcError, HttpTransport, HttpTransportConfig};
use lapdev_kube_rpc::{KubeClusterRpcClient, ManagerHealth, WorkspaceObservation};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::tracker::Tracker;
use crate::watch::error_chain;

/// Most workspaces sent in one snapshot call (a snapshot may take several).
const SNAPSHOT_CHUNK: usize = 2_000;
/// Workspace status reports in flight at once.
const REPORT_CONCURRENCY: usize = 8;
/// How long the first heartbeat waits for the first Kubernetes API probe.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(5);
/// How long one call to the server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// HRPC base, `{server}/rpc`.
    pub rpc_base: String,
    /// Tunnel endpoint, `{server}/rpc/_tunnel`.
    pub tunnel_url: String,
    /// The cluster token.
    pub token: String,
    /// An extra CA (PEM).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Longest wait between reconnect attempts.
    pub reconnect_max: Duration,
}

/// The manager could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The token cannot be sent as a header.
    #[error("the cluster token is not a valid HTTP header value")]
    InvalidToken(#[source] http::header::InvalidHeaderValue),
    /// The extra CA could not be used.
    #[error("the server CA cannot be used")]
    Tls(#[from] lapdev_hrpc::TlsConfigError),
    /// The server URL is not usable.
    #[error("the server URL cannot be used")]
    Url(#[from] lapdev_hrpc::BuildError),
}

/// Whether the manager is connected to the server (for `/readyz`).
#[derive(Debug, Default)]
pub struct Connection {
    connected: AtomicBool,
}

impl Connection {
    /// Whether a tunnel is up and the server answered.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sets the state (tests of the health endpoints).
    #[doc(hidden)]
    pub fn set_for_tests(&self, up: bool) {
        self.set(up);
    }

    fn set(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        metrics::gauge!("lapdev_manager_connected").set(if up { 1.0 } else { 0.0 });
    }
}

/// The connection loop's parts.
pub struct Manager {
    settings: ServerSettings,
    client: KubeClusterRpcClient,
    headers: HeaderMap,
    router: axum::Router,
    tracker: Arc<Tracker>,
    connection: Arc<Connection>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("tunnel_url", &self.settings.tunnel_url)
            .finish_non_exhaustive()
    }
}

/// Why a session ended.
#[derive(Debug)]
enum Ended {
    /// The tunnel closed.
    Closed(CloseReason),
    /// A call to the server failed.
    Call(String),
    /// Shutdown was requested.
    Shutdown,
}

impl Manager {
    /// A manager that serves `router` (the `KubeManagerRpc` routes) down its tunnel.
    pub fn new(
        settings: ServerSettings,
        router: axum::Router,
        tracker: Arc<Tracker>,
        connection: Arc<Connection>,
    ) -> Result<Self, SetupError> {
        let token = HeaderValue::from_str(&settings.token).map_err(SetupError::InvalidToken)?;
        let mut token_sensitive = token.clone();
        token_sensitive.set_sensitive(true);
        let name = HeaderName::from_static(KUBE_CLUSTER_TOKEN_HEADER);
        let transport = HttpTransport::new(HttpTransportConfig {
            extra_root_certificates_pem: settings.extra_ca_pem.clone(),
            ..Default::default()
        })?;
        let client = KubeClusterRpcClient::new(
            Client::new(&settings.rpc_base, transport)?.with_timeout(CALL_TIMEOUT),
        )
        .with_header(name.clone(), token_sensitive.clone());
        let mut headers = HeaderMap::new();
        headers.insert(name, token_sensitive);
        Ok(Self {
            settings,
            client,
            headers,
            router,
            tracker,
            connection,
        })
    }

    /// Connects, reports and reconnects until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(250), self.settings.reconnect_max);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let config = TunnelClientConfig {
                extra_root_certificates_pem: self.settings.extra_ca_pem.clone(),
                ..Default::default()
            };
            let connect = tunnel::connect(
                &self.settings.tunnel_url,
                self.headers.clone(),
                self.router.clone(),
                config,
            );
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = connect => r,
            };
            let ended = match connected {
                Ok(session) => {
                    metrics::counter!("lapdev_manager_connects_total").increment(1);
                    tracing::info!(
                        url = %self.settings.tunnel_url,
                        protocol_version = session.protocol_version(),
                        "tunnel open"
                    );
                    let handle = session.handle();
                    let run = tokio::spawn(session.run());
                    let ended = self.session(&handle, &shutdown, &mut backoff).await;
                    self.connection.set(false);
                    if !handle.is_closed() {
                        handle.close(match &ended {
                            Ended::Shutdown => "manager shutting down",
                            _ => "manager reconnecting",
                        });
                    }
                    let _ = run.await;
                    ended
                }
                Err(e) => Ended::Call(format!("could not open the tunnel: {}", error_chain(&e))),
            };
            match ended {
                Ended::Shutdown => return,
                Ended::Closed(reason) => {
                    tracing::warn!(%reason, "tunnel closed; reconnecting");
                }
                Ended::Call(reason) => {
                    tracing::warn!(error = %reason, "lost the server; reconnecting");
                }
            }
            let delay = backoff.next_delay();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "waiting before reconnecting"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connected session: reports until the tunnel or a call fails.
    async fn session(
        &self,
        handle: &TunnelSessionHandle,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Ended {
        let started = Instant::now();
        let mut closed = std::pin::pin!(handle.closed());
        let mut info_rx = self.tracker.info();
        let mut health_rx = self.tracker.health();
        let mut synced_rx = self.tracker.synced();
        let mut sent_info: Option<KubeClusterInfo> = None;
        let mut snapshot_sent = false;
        let mut next_heartbeat = Instant::now();
        // The first heartbeat says how things are, not "unknown yet": wait
        // (briefly) for the first probe of the Kubernetes API.
        if !self.tracker.probed() {
            let first_probe = async {
                while !self.tracker.probed() {
                    if health_rx.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                reason = &mut closed => return Ended::Closed(reason),
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::timeout(FIRST_PROBE_WAIT, first_probe) => {}
            }
        }
        loop {
            if Instant::now() >= next_heartbeat {
                let health = match health_rx.borrow_and_update().clone() {
                    None => ManagerHealth::Ok,
                    Some(reason) => ManagerHealth::Degraded { reason },
                };
                let interval = match self.client.heartbeat(health).await {
                    Ok(reply) => {
                        self.connection.set(true);
                        Duration::from_secs(u64::from(reply.interval_secs.clamp(1, 300)))
                    }
                    Err(e) => return Ended::Call(format!("heartbeat: {e}")),
                };
                next_heartbeat = Instant::now() + interval;
            }
            let info = info_rx.borrow_and_update().clone();
            if info.is_some() && info != sent_info {
                if let Err(e) = self.client.report_cluster_info(info.clone().unwrap()).await {
                    return Ended::Call(format!("reporting cluster info: {e}"));
                }
                tracing::info!(
                    nodes = info.as_ref().map(|i| i.node_count),
                    "cluster info reported"
                );
                sent_info = info;
            }
            if !snapshot_sent && *synced_rx.borrow_and_update() {
                let snapshot = self.tracker.take_snapshot();
                let count = snapshot.len();
                // An empty snapshot is still sent: it says "nothing here".
                let chunks: Vec<&[WorkspaceObservation]> = if snapshot.is_empty() {
                    vec![&[]]
                } else {
                    snapshot.chunks(SNAPSHOT_CHUNK).collect()
                };
                for chunk in chunks {
                    if let Err(e) = self.client.report_workspace_snapshot(chunk.to_vec()).await {
                        self.tracker.requeue(snapshot);
                        return Ended::Call(format!("reporting the workspace snapshot: {e}"));
                    }
                }
                snapshot_sent = true;
                backoff.reset();
                let elapsed = started.elapsed();
                metrics::gauge!("lapdev_manager_first_report_seconds").set(elapsed.as_secs_f64());
                tracing::info!(
                    workspaces = count,
                    cluster_info = sent_info.is_some(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "workspace snapshot reported"
                );
            }
            if snapshot_sent && let Err(e) = self.report_changes().await {
                return e;
            }
            tokio::select! {
                reason = &mut closed => return Ended::Closed(reason),
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep_until(next_heartbeat) => {}
                r = health_rx.changed() => {
                    if r.is_ok() {
                        // Say at once that the health changed.
                        next_heartbeat = Instant::now();
                    }
                }
                _ = info_rx.changed() => {}
                _ = synced_rx.changed() => {}
                _ = self.tracker.changed().notified() => {}
            }
        }
    }

    /// Sends the queued workspace changes. A change the server refuses (e.g.
    /// a workspace it does not know) is dropped; a failed call puts the rest
    /// back and ends the session.
    async fn report_changes(&self) -> Result<(), Ended> {
        let changes = self.tracker.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let results: Vec<(WorkspaceObservation, Result<(), CallError<HrpcError>>)> =
            futures::stream::iter(changes)
                .map(|obs| async move {
                    let r = self.client.report_workspace_status(obs.clone()).await;
                    (obs, r)
                })
                .buffer_unordered(REPORT_CONCURRENCY)
                .collect()
                .await;
        let mut failed = Vec::new();
        let mut reason = None;
        for (obs, r) in results {
            match r {
                Ok(()) => {
                    metrics::counter!("lapdev_manager_status_reports_total").increment(1);
                }
                Err(CallError::Service(e)) if !is_connection_error(e.code) => {
                    tracing::warn!(workspace_id = %obs.workspace_id, code = e.code.as_str(), error = %e.message, "the server refused a workspace report");
                }
                Err(e) => {
                    reason.get_or_insert_with(|| format!("reporting workspace status: {e}"));
                    failed.push(obs);
                }
            }
        }
        if let Some(reason) = reason {
            self.tracker.requeue(failed);
            return Err(Ended::Call(reason));
        }
        Ok(())
    }
}

/// Codes after which the session is not worth keeping.
fn is_connection_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::Unimplemented
    )
}
