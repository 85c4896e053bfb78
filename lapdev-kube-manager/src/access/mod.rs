//! Getting into workspaces: exec and port-forward sessions the server opens
//! on this manager (`lapdev_kube_rpc::stream` has the contract: routes, the
//! request header, the exec frames).
//!
//! - [`router`]: `POST /_stream/exec` and `POST /_stream/portforward`, merged
//!   into the router the tunnel serves.
//! - `exec.rs`: a command in the workspace's pod through the API server's
//!   `pods/exec` WebSocket (`v5.channel.k8s.io`, `v4` fallback), relayed as
//!   frames.
//! - `portforward.rs`: one connection to a pod port through `pods/portforward`,
//!   relayed as raw bytes.
//!
//! The pod is always found from the workspace id's label in the workspace
//! namespace, never from a name sent over the wire. Open sessions and
//! forwarded connections are capped per workspace ([`AccessSettings`]).

mod exec;
mod portforward;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::stream::{
    EXEC_PATH, ExecRequest, PORTFORWARD_PATH, PortForwardRequest, STREAM_REQUEST_HEADER,
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::objects::WORKSPACE_ID_LABEL;

/// Limits and where workspaces live.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// The workspace namespace (the only one searched).
    pub namespace: String,
    /// Most exec sessions open at once per workspace.
    pub max_sessions_per_workspace: usize,
    /// Most forwarded connections open at once per workspace.
    pub max_forwards_per_workspace: usize,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            namespace: "lapdev-workspaces".into(),
            max_sessions_per_workspace: 16,
            max_forwards_per_workspace: 256,
        }
    }
}

/// What exec and port-forward need: the Kubernetes client, the settings and
/// the per-workspace counts.
#[derive(Clone)]
pub struct Access {
    client: kube::Client,
    settings: Arc<AccessSettings>,
    open: Arc<Mutex<HashMap<(Uuid, Kind), usize>>>,
}

/// A session's kind, for limits, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Exec,
    PortForward,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::PortForward => "portforward",
        }
    }
}

/// One open session's place in the count; released on drop.
struct Slot {
    open: Arc<Mutex<HashMap<(Uuid, Kind), usize>>>,
    key: (Uuid, Kind),
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
        metrics::gauge!("lapdev_manager_streams_open", "kind" => self.key.1.as_str()).decrement(1);
    }
}

impl Access {
    /// Sessions through `client` under `settings`.
    pub fn new(client: kube::Client, settings: AccessSettings) -> Self {
        Self {
            client,
            settings: Arc::new(settings),
            open: Arc::default(),
        }
    }

    /// Takes a place for a new session of `kind` in `workspace`, or says why not.
    fn slot(&self, workspace: Uuid, kind: Kind) -> Result<Slot, HrpcError> {
        let max = match kind {
            Kind::Exec => self.settings.max_sessions_per_workspace,
            Kind::PortForward => self.settings.max_forwards_per_workspace,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry((workspace, kind)).or_default();
        if *n >= max {
            let what = match kind {
                Kind::Exec => "exec sessions",
                Kind::PortForward => "forwarded connections",
            };
            return Err(HrpcError::new(
                lapdev_hrpc::Code::ResourceExhausted,
                format!(
                    "workspace {workspace} already has {max} {what} open (the manager's limit)"
                ),
            ));
        }
        *n += 1;
        metrics::gauge!("lapdev_manager_streams_open", "kind" => kind.as_str()).increment(1);
        Ok(Slot {
            open: self.open.clone(),
            key: (workspace, kind),
        })
    }

    /// The running pod of `workspace`, found by its label only.
    async fn running_pod(&self, workspace: Uuid) -> Result<String, HrpcError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("{WORKSPACE_ID_LABEL}={workspace}")))
            .await
            .map_err(|e| kube_error("finding the workspace's pod", e))?;
        let mut phase = None;
        for pod in list.items {
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let p = pod.status.as_ref().and_then(|s| s.phase.clone());
            if !deleting
                && p.as_deref() == Some("Running")
                && let Some(name) = pod.metadata.name
            {
                return Ok(name);
            }
            phase = Some(if deleting {
                "Terminating".to_owned()
            } else {
                p.unwrap_or_else(|| "Unknown".into())
            });
        }
        Err(match phase {
            None => HrpcError::failed_precondition(format!(
                "workspace {workspace} has no pod in this cluster; is it started?"
            )),
            Some(phase) => HrpcError::failed_precondition(format!(
                "the pod of workspace {workspace} is not running (it is {phase})"
            )),
        })
    }
}

/// The stream routes, to merge into the router the tunnel serves.
pub fn router(access: Access) -> axum::Router {
    axum::Router::new()
        .route(EXEC_PATH, post(exec_route))
        .route(PORTFORWARD_PATH, post(portforward_route))
        .with_state(access)
}

async fn exec_route(State(access): State<Access>, request: Request) -> Response {
    let result = async {
        let req: ExecRequest = stream_request(&request)?;
        if req.command.is_empty() || req.command.iter().any(|a| a.contains('\0')) {
            return Err(HrpcError::invalid_argument(
                "the command is empty or holds a NUL byte",
            ));
        }
        let slot = access.slot(req.workspace_id, Kind::Exec)?;
        exec::start(&access, req, request.into_body(), slot).await
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

async fn portforward_route(State(access): State<Access>, request: Request) -> Response {
    let result = async {
        let req: PortForwardRequest = stream_request(&request)?;
        if req.port == 0 {
            return Err(HrpcError::invalid_argument("port 0 cannot be forwarded"));
        }
        let slot = access.slot(req.workspace_id, Kind::PortForward)?;
        portforward::start(&access, req, request.into_body(), slot).await
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

/// The JSON request in [`STREAM_REQUEST_HEADER`].
fn stream_request<T: DeserializeOwned>(request: &Request) -> Result<T, HrpcError> {
    let value = request
        .headers()
        .get(STREAM_REQUEST_HEADER)
        .ok_or_else(|| HrpcError::invalid_argument(format!("no {STREAM_REQUEST_HEADER} header")))?;
    serde_json::from_slice(value.as_bytes()).map_err(|e| {
        HrpcError::invalid_argument(format!("the {STREAM_REQUEST_HEADER} header: {e}"))
    })
}

/// A Kubernetes error as the server's caller should read it.
fn kube_error(action: &str, e: kube::Error) -> HrpcError {
    match e {
        kube::Error::Api(s) => {
            let msg = format!("{action}: {}", s.message);
            match s.code {
                404 => HrpcError::not_found(msg),
                400 | 409 | 422 => HrpcError::failed_precondition(msg),
                401 | 403 => HrpcError::permission_denied(msg),
                429 => HrpcError::new(lapdev_hrpc::Code::ResourceExhausted, msg),
                _ => HrpcError::unavailable(msg),
            }
        }
        other => HrpcError::unavailable(format!("{action}: {other}")),
    }
}
