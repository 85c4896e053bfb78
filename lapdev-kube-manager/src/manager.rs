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
//! A call the server *answers* with an error saying it cannot serve it now
//! (`unavailable`, `internal`, …: its database is away, say) does not end the
//! session: the tunnel stays up, the report is kept and sent again after a
//! short, growing delay ([`BUSY_RETRY_MIN`] doubling to [`BUSY_RETRY_MAX`]), and
//! heartbeats go on. Only a lost connection (transport error, tunnel closed)
//! makes the manager redial. A server that rejects the token (`401`/`403`: the
//! cluster was deleted or its token revoked) is said so once in the log and
//! asked again only every [`REJECTED_RETRY`].
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
/// First wait before a report the server could not take now is sent again.
pub const BUSY_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest such wait.
pub const BUSY_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long to wait before dialling again after the server rejected the token.
pub const REJECTED_RETRY: Duration = Duration::from_secs(300);

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
    /// `HTTPS_PROXY`/`NO_PROXY` rules for the calls and the tunnel (see
    /// `lapdev_hrpc::proxy`); `None` dials directly.
    pub proxy: Option<lapdev_hrpc::proxy::ProxyRules>,
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
    /// The server rejected the cluster token (deleted cluster, revoked token).
    Rejected(String),
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
            proxy: settings.proxy.clone(),
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
        // Whether the current streak of token rejections has been logged.
        let mut rejection_logged = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let config = TunnelClientConfig {
                extra_root_certificates_pem: self.settings.extra_ca_pem.clone(),
                proxy: self.settings.proxy.clone(),
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
                Err(e)
                    if matches!(
                        e.code(),
                        Some(Code::Unauthenticated | Code::PermissionDenied)
                    ) =>
                {
                    Ended::Rejected(format!("the tunnel was refused: {}", error_chain(&e)))
                }
                Err(e) => Ended::Call(format!("could not open the tunnel: {}", error_chain(&e))),
            };
            let delay = match ended {
                Ended::Shutdown => return,
                Ended::Closed(reason) => {
                    rejection_logged = false;
                    tracing::warn!(%reason, "tunnel closed; reconnecting");
                    backoff.next_delay()
                }
                Ended::Call(reason) => {
                    rejection_logged = false;
                    tracing::warn!(error = %reason, "lost the server; reconnecting");
                    backoff.next_delay()
                }
                Ended::Rejected(reason) => {
                    if !rejection_logged {
                        rejection_logged = true;
                        tracing::error!(
                            error = %reason,
                            retry_secs = REJECTED_RETRY.as_secs(),
                            "the server rejects this cluster's token: the cluster was deleted or \
                             its token revoked or expired. Install a new token (`lapdev cluster \
                             token create`); until then the manager asks again every few minutes"
                        );
                    }
                    REJECTED_RETRY
                }
            };
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
        // While the server answers "not now", reports wait until this time.
        let mut busy = Busy::default();
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
                    Err(e) => match busy.failed("heartbeat", e) {
                        Ok(delay) => delay,
                        Err(ended) => return ended,
                    },
                };
                next_heartbeat = Instant::now() + interval;
            }
            let info = info_rx.borrow_and_update().clone();
            if !busy.holding() && info.is_some() && info != sent_info {
                match self.client.report_cluster_info(info.clone().unwrap()).await {
                    Ok(()) => {
                        busy.answered();
                        tracing::info!(
                            nodes = info.as_ref().map(|i| i.node_count),
                            "cluster info reported"
                        );
                        sent_info = info;
                    }
                    Err(e) => {
                        if let Err(ended) = busy.failed("reporting cluster info", e) {
                            return ended;
                        }
                    }
                }
            }
            if !busy.holding() && !snapshot_sent && *synced_rx.borrow_and_update() {
                let snapshot = self.tracker.take_snapshot();
                let count = snapshot.len();
                // An empty snapshot is still sent: it says "nothing here".
                let chunks: Vec<&[WorkspaceObservation]> = if snapshot.is_empty() {
                    vec![&[]]
                } else {
                    snapshot.chunks(SNAPSHOT_CHUNK).collect()
                };
                let mut failed = None;
                for chunk in chunks {
                    if let Err(e) = self.client.report_workspace_snapshot(chunk.to_vec()).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    self.tracker.requeue(snapshot);
                    // Sent whole again when the server can take it.
                    match busy.failed("reporting the workspace snapshot", e) {
                        Ok(_) => continue,
                        Err(ended) => return ended,
                    }
                }
                busy.answered();
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
            if snapshot_sent && !busy.holding() {
                match self.report_changes().await {
                    Ok(0) => {}
                    Ok(_) => busy.answered(),
                    Err(e) => {
                        if let Err(ended) = busy.failed("reporting workspace status", e) {
                            return ended;
                        }
                    }
                }
            }
            let wake = busy
                .until()
                .map_or(next_heartbeat, |t| t.min(next_heartbeat));
            tokio::select! {
                reason = &mut closed => return Ended::Closed(reason),
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep_until(wake) => {}
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
    /// back and returns the first failure. Returns how many were answered.
    async fn report_changes(&self) -> Result<usize, CallError<HrpcError>> {
        let changes = self.tracker.take_changes();
        if changes.is_empty() {
            return Ok(0);
        }
        let count = changes.len();
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
                    if reason.is_none() {
                        reason = Some(e);
                    }
                    failed.push(obs);
                }
            }
        }
        if let Some(reason) = reason {
            self.tracker.requeue(failed);
            return Err(reason);
        }
        Ok(count)
    }
}

/// The server answered "not now": when reports may be sent again.
#[derive(Debug, Default)]
struct Busy {
    /// Reports wait until then.
    until: Option<Instant>,
    /// The current wait (doubling while the server stays busy).
    delay: Option<Duration>,
}

impl Busy {
    /// Whether reports wait now.
    fn holding(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }

    fn until(&self) -> Option<Instant> {
        self.until.filter(|t| Instant::now() < *t)
    }

    /// A report went through: the server is back.
    fn answered(&mut self) {
        if self.delay.take().is_some() {
            tracing::info!("the server takes reports again");
        }
        self.until = None;
    }

    /// Decides what a failed call means: the server answered that it cannot
    /// do it now (keep the session, wait the returned delay), or the session
    /// is over (lost connection, rejected token).
    fn failed(&mut self, what: &str, e: CallError<HrpcError>) -> Result<Duration, Ended> {
        match e {
            CallError::Service(h) if server_busy(h.code) => {
                let delay = match self.delay {
                    None => {
                        tracing::warn!(
                            code = h.code.as_str(),
                            error = %h.message,
                            "{what}: the server cannot take it now; keeping the tunnel and trying again"
                        );
                        BUSY_RETRY_MIN
                    }
                    Some(d) => (d * 2).min(BUSY_RETRY_MAX),
                };
                self.delay = Some(delay);
                self.until = Some(Instant::now() + delay);
                metrics::counter!("lapdev_manager_server_busy_total").increment(1);
                Ok(delay)
            }
            CallError::Service(h)
                if matches!(h.code, Code::Unauthenticated | Code::PermissionDenied) =>
            {
                Err(Ended::Rejected(format!("{what}: {}", h.message)))
            }
            e => Err(Ended::Call(format!("{what}: {e}"))),
        }
    }
}

/// Codes with which a reachable server says it cannot serve a call now.
fn server_busy(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    )
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
