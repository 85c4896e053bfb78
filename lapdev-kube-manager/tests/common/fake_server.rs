//! A recording stand-in for the Lapdev server's manager side: the real HRPC
//! routes of `KubeClusterRpc` (answered from memory, every call recorded) and
//! the real tunnel endpoint, on a loopback port that can be stopped and
//! started again (a server restart). Tests and the benchmark share it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lapdev_common::kube::KubeClusterInfo;
use lapdev_hrpc::tunnel::{TunnelConfig, TunnelTransport};
use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube_rpc::{
    HeartbeatReply, KubeClusterRpc, KubeClusterRpcServer, KubeManagerRpcClient, ManagerHealth,
    WorkspaceObservation,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Well-formed (the manager refuses one that is not at start).
pub const TOKEN: &str = "lapdev_ct_test-token-0123456789abcdefghijklmnopqrstuv";

/// Everything one server instance received.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    pub infos: Vec<KubeClusterInfo>,
    pub heartbeats: Vec<ManagerHealth>,
    pub statuses: Vec<WorkspaceObservation>,
    pub snapshots: Vec<Vec<WorkspaceObservation>>,
    pub tunnels: usize,
    /// When the first tunnel was accepted.
    pub first_tunnel_at: Option<Instant>,
    /// When the first snapshot arrived.
    pub first_snapshot_at: Option<Instant>,
    /// When the first cluster info arrived.
    pub first_info_at: Option<Instant>,
}

struct Shared {
    recorded: Mutex<Recorded>,
    changed: watch::Sender<u64>,
    tunnel: Mutex<Option<TunnelTransport>>,
    heartbeat_secs: u32,
}

impl Shared {
    fn record(&self, f: impl FnOnce(&mut Recorded)) {
        f(&mut self.recorded.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
    }
}

#[derive(Clone)]
struct Rpc(Arc<Shared>);

impl KubeClusterRpc for Rpc {
    async fn report_cluster_info(
        &self,
        _ctx: Context,
        info: KubeClusterInfo,
    ) -> Result<(), HrpcError> {
        self.0.record(|r| {
            r.first_info_at.get_or_insert_with(Instant::now);
            r.infos.push(info);
        });
        Ok(())
    }

    async fn heartbeat(
        &self,
        _ctx: Context,
        health: ManagerHealth,
    ) -> Result<HeartbeatReply, HrpcError> {
        self.0.record(|r| r.heartbeats.push(health));
        Ok(HeartbeatReply {
            interval_secs: self.0.heartbeat_secs,
        })
    }

    async fn report_workspace_status(
        &self,
        _ctx: Context,
        status: WorkspaceObservation,
    ) -> Result<(), HrpcError> {
        self.0.record(|r| r.statuses.push(status));
        Ok(())
    }

    async fn report_workspace_snapshot(
        &self,
        _ctx: Context,
        workspaces: Vec<WorkspaceObservation>,
    ) -> Result<(), HrpcError> {
        self.0.record(|r| {
            r.first_snapshot_at.get_or_insert_with(Instant::now);
            r.snapshots.push(workspaces);
        });
        Ok(())
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(lapdev_common::headers::KUBE_CLUSTER_TOKEN_HEADER)
        .is_some_and(|v| v == TOKEN)
}

/// One running instance.
pub struct FakeServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    /// Starts on `addr` (port 0: any).
    pub async fn start(addr: SocketAddr) -> FakeServer {
        Self::start_with(addr, 1).await
    }

    /// Starts with a heartbeat interval.
    pub async fn start_with(addr: SocketAddr, heartbeat_secs: u32) -> FakeServer {
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Recorded::default()),
            changed: watch::channel(0).0,
            tunnel: Mutex::new(None),
            heartbeat_secs,
        });
        let stop = CancellationToken::new();
        let rpc = KubeClusterRpcServer::new(Rpc(shared.clone())).into_router();
        let tunnel_shared = shared.clone();
        let tunnel_stop = stop.clone();
        let rpc = rpc
            .route(
                "/_tunnel",
                get(move |headers: HeaderMap, ws: WebSocketUpgrade| {
                    let shared = tunnel_shared.clone();
                    let stop = tunnel_stop.clone();
                    async move {
                        if !authorized(&headers) {
                            return (StatusCode::UNAUTHORIZED, "bad token").into_response();
                        }
                        let config = TunnelConfig::default();
                        config
                            .configure_upgrade(ws)
                            .on_upgrade(move |socket| async move {
                                let (transport, task) = lapdev_hrpc::tunnel::accept(socket, config);
                                *shared.tunnel.lock().unwrap() = Some(transport.clone());
                                shared.record(|r| {
                                    r.tunnels += 1;
                                    r.first_tunnel_at.get_or_insert_with(Instant::now);
                                });
                                tokio::select! {
                                    _ = task.run() => {}
                                    _ = stop.cancelled() => transport.close("server stopping"),
                                }
                            })
                    }
                }),
            )
            .layer(axum::middleware::from_fn(
                |req: axum::extract::Request, next: axum::middleware::Next| async move {
                    if !authorized(req.headers()) {
                        return Response::builder()
                            .status(401)
                            .header("content-type", "application/json")
                            .body(axum::body::Body::from(
                                r#"{"code":"unauthenticated","message":"bad cluster token"}"#,
                            ))
                            .unwrap();
                    }
                    next.run(req).await
                },
            ));
        let app = axum::Router::new().nest("/rpc", rpc);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve_stop = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(serve_stop.cancelled_owned())
                .await;
        });
        FakeServer {
            addr,
            shared,
            stop,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving: the tunnel closes and the port is released.
    pub async fn stop(self) -> SocketAddr {
        self.stop.cancel();
        if let Some(t) = self.shared.tunnel.lock().unwrap().take() {
            t.close("server stopping");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        self.addr
    }

    pub fn recorded(&self) -> Recorded {
        self.shared.recorded.lock().unwrap().clone()
    }

    /// Waits (bounded) until `f` holds for what was recorded; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Recorded) -> bool,
    ) -> Recorded {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            {
                let r = self.shared.recorded.lock().unwrap();
                if f(&r) {
                    return r.clone();
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "timed out after {timeout:?} waiting for: {what}\nrecorded: {:#?}",
                    summary(&self.recorded())
                ),
            }
        }
    }

    /// A client calling the manager down its tunnel.
    pub fn manager(&self) -> KubeManagerRpcClient {
        let transport = self
            .shared
            .tunnel
            .lock()
            .unwrap()
            .clone()
            .expect("the manager has a tunnel");
        let client =
            lapdev_hrpc::Client::with_shared_transport("http://tunnel", Arc::new(transport))
                .unwrap()
                .with_timeout(Duration::from_secs(20));
        KubeManagerRpcClient::new(client)
    }
}

fn summary(r: &Recorded) -> String {
    format!(
        "{} infos (last {:?}), {} heartbeats (last {:?}), {} statuses (last 5 {:?}), {} snapshots (sizes {:?}), {} tunnels",
        r.infos.len(),
        r.infos
            .last()
            .map(|i| (i.node_count, i.cpu_capacity_millis)),
        r.heartbeats.len(),
        r.heartbeats.last(),
        r.statuses.len(),
        r.statuses
            .iter()
            .rev()
            .take(5)
            .map(|s| (s.workspace_id, s.status, s.message.clone()))
            .collect::<Vec<_>>(),
        r.snapshots.len(),
        r.snapshots.iter().map(Vec::len).collect::<Vec<_>>(),
        r.tunnels
    )
}
