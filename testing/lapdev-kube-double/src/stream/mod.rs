//! `pods/exec` and `pods/portforward` over the WebSocket subprotocols the real
//! API server offers kube clients.
//!
//! Both are a `GET` upgraded to a WebSocket whose binary frames start with a
//! channel byte (`k8s.io/apimachinery/pkg/util/httpstream/wsstream`):
//!
//! - exec ([`exec`]): subprotocol `v5.channel.k8s.io` (preferred when offered;
//!   API servers from 1.30) or `v4.channel.k8s.io`, taken in the client's order.
//!   Channels 0 stdin, 1 stdout, 2 stderr, 3 the final `Status` JSON, 4 resize
//!   (`{"Width":..,"Height":..}`); v5 adds 255, where `[255, 0]` closes stdin.
//!   The command runs as a local process in a per-pod scratch directory, on a
//!   pseudo-terminal when `tty=true`. Off unless enabled
//!   ([`crate::DoubleHandle::enable_local_exec`]): the double has no
//!   authentication of its own, and exec runs arbitrary local commands.
//! - port-forward ([`portforward`]): subprotocol `v4.channel.k8s.io` (also
//!   `channel.k8s.io` and `portforward.k8s.io`, same framing); the i-th port
//!   has data channel 2i and error channel 2i+1, and the server opens each with
//!   the port as 2 little-endian bytes. A connection goes to the loopback
//!   address registered for the pod's port
//!   ([`crate::DoubleHandle::register_pod_port`]). kubectl 1.31+ asks for
//!   `SPDY/3.1+portforward.k8s.io` (SPDY tunnelled in WebSocket) and then falls
//!   back to SPDY: neither is served, so `kubectl port-forward` does not work
//!   against the double (`kubectl exec` does: it speaks v5).
//!
//! Before the upgrade, the real API server's checks answer as it does: 404 for
//! a missing pod, 400 for an unknown container (`container c is not valid for
//! pod p`), a pod without a node (`pod p does not have a host assigned`), no
//! command, or no stream; then the double's own 403 when local exec is off.
//! A pod whose container is not running gets the upgrade and then the
//! `InternalError` the real server's stream translator relays from the kubelet
//! (`unable to upgrade connection: container not found ("c")`) on the status
//! channel.

pub(crate) mod exec;
pub(crate) mod portforward;
mod process;
mod socket;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use serde_json::Value;

use crate::error::ApiError;
use crate::resource;
use crate::server::AppState;

/// The exec subprotocol with the close-stdin signal (API servers from 1.30).
pub(crate) const V5: &str = "v5.channel.k8s.io";
/// The exec subprotocol whose channel 3 carries a JSON `Status`.
pub(crate) const V4: &str = "v4.channel.k8s.io";

/// The answer to SPDY, and to SPDY tunnelled in a WebSocket (kubectl port-forward).
const NO_SPDY: &str = "Upgrade request required: the Kubernetes API double serves pods/exec and pods/portforward over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only, not SPDY (kubectl port-forward needs SPDY)";

/// Which streaming subresource a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `pods/exec`.
    Exec,
    /// `pods/portforward`.
    PortForward,
}

/// One streaming request, already routed, counted and authorised.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub kind: Kind,
    pub namespace: &'a str,
    pub pod: &'a str,
}

/// What the streaming subresources are allowed to do, set through the handle.
#[derive(Debug)]
pub(crate) struct Streams {
    local_exec: AtomicBool,
    offer_v5: AtomicBool,
    /// (namespace, pod, port) → the loopback address that plays it.
    ports: Mutex<HashMap<(String, String, u16), SocketAddr>>,
    /// Where a port nobody registered goes (the same port on this host), if anywhere.
    unregistered: Mutex<Option<IpAddr>>,
    /// Where the per-pod scratch directories live; removed when the double stops.
    pub(crate) scratch_root: PathBuf,
}

impl Streams {
    pub(crate) fn new(local_exec: bool) -> Self {
        Self {
            local_exec: AtomicBool::new(local_exec),
            offer_v5: AtomicBool::new(true),
            ports: Mutex::default(),
            unregistered: Mutex::default(),
            scratch_root: std::env::temp_dir().join(format!(
                "lapdev-kube-double-{}",
                uuid::Uuid::new_v4().simple()
            )),
        }
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, u16), SocketAddr>> {
        self.ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_local_exec(&self, on: bool) {
        self.local_exec.store(on, Ordering::SeqCst);
    }

    pub(crate) fn set_offer_v5(&self, on: bool) {
        self.offer_v5.store(on, Ordering::SeqCst);
    }

    pub(crate) fn register_port(&self, ns: &str, pod: &str, port: u16, addr: SocketAddr) {
        self.ports()
            .insert((ns.to_owned(), pod.to_owned(), port), addr);
    }

    pub(crate) fn unregister_port(&self, ns: &str, pod: &str, port: u16) {
        self.ports().remove(&(ns.to_owned(), pod.to_owned(), port));
    }

    pub(crate) fn set_unregistered(&self, host: Option<IpAddr>) {
        *self
            .unregistered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = host;
    }

    fn port(&self, ns: &str, pod: &str, port: u16) -> Option<SocketAddr> {
        let registered = self
            .ports()
            .get(&(ns.to_owned(), pod.to_owned(), port))
            .copied();
        registered.or_else(|| {
            self.unregistered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .map(|ip| SocketAddr::new(ip, port))
        })
    }

    /// The scratch directory of a pod (not created here).
    pub(crate) fn scratch_dir(&self, ns: &str, pod: &str) -> PathBuf {
        self.scratch_root.join(ns).join(pod)
    }
}

/// The query of a request as pairs, keeping repeated keys (`command=a&command=b`).
fn query_pairs(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The subprotocols the client offers, in its order of preference.
fn offered_protocols(req: &Request) -> Vec<String> {
    req.headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first protocol the client offers that the server supports, as the
/// real server's handshake picks it.
fn choose(offered: &[String], supported: &[&'static str]) -> Result<&'static str, ApiError> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "requested protocol(s) are not supported: {offered:?}; supports {supported:?}"
            ))
        })
}

/// Serves `pods/NAME/exec` or `pods/NAME/portforward` (after counting and RBAC).
pub(crate) async fn serve(
    st: &AppState,
    call: Call<'_>,
    req: Request,
) -> Result<Response, ApiError> {
    let pods = resource::core_resource("pods");
    let pod = st.store.get(pods, call.namespace, call.pod)?.value();
    let query = query_pairs(&req);
    let streams = st.handle.streams.clone();
    let is_upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|u| u.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let offered = offered_protocols(&req);
    match call.kind {
        Kind::Exec => {
            let opts = exec::Options::parse(&query, &pod, call.pod)?;
            if !streams.local_exec.load(Ordering::SeqCst) {
                return Err(ApiError::local_exec_off());
            }
            let upgrade = upgrade(req, is_upgrade).await?;
            let mut supported = vec![V4];
            if streams.offer_v5.load(Ordering::SeqCst) {
                supported.insert(0, V5);
            }
            let protocol = choose(&offered, &supported)?;
            let session = exec::Session {
                running: exec::running_check(&pod, &opts.container),
                opts,
                v5: protocol == V5,
                dir: streams.scratch_dir(call.namespace, call.pod),
            };
            Ok(accept(upgrade, protocol, move |ws| session.run(ws)))
        }
        Kind::PortForward => {
            let supported = [V4, "channel.k8s.io", "portforward.k8s.io"];
            let spdy = offered.iter().any(|p| p.starts_with("SPDY/"));
            if !is_upgrade || (spdy && choose(&offered, &supported).is_err()) {
                return Err(ApiError::bad_request(NO_SPDY));
            }
            let ports = portforward::parse_ports(&query)?;
            no_host_check(&pod, call.pod)?;
            let upgrade = upgrade(req, is_upgrade).await?;
            let protocol = choose(&offered, &supported)?;
            let targets = ports
                .iter()
                .map(|p| streams.port(call.namespace, call.pod, *p))
                .collect();
            let session = portforward::Session {
                ports,
                targets,
                sandbox: portforward::sandbox_id(&pod),
                running: pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running"),
            };
            Ok(accept(upgrade, protocol, move |ws| session.run(ws)))
        }
    }
}

/// The real registry's check before it asks a kubelet: the pod must be bound.
pub(crate) fn no_host_check(pod: &Value, name: &str) -> Result<(), ApiError> {
    match pod.pointer("/spec/nodeName").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        ))),
    }
}

async fn upgrade(req: Request, is_upgrade: bool) -> Result<WebSocketUpgrade, ApiError> {
    if !is_upgrade {
        // POST is the SPDY path (kubectl's fallback), which the double does not speak.
        return Err(ApiError::bad_request(NO_SPDY));
    }
    let (mut parts, _body) = req.into_parts();
    WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| {
            ApiError::bad_request(format!("unable to upgrade connection: {}", e.body_text()))
        })
}

fn accept<F, Fut>(upgrade: WebSocketUpgrade, protocol: &'static str, run: F) -> Response
where
    F: FnOnce(axum::extract::ws::WebSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut upgrade = upgrade
        .max_message_size(16 * 1024 * 1024)
        .write_buffer_size(64 * 1024);
    upgrade.set_selected_protocol(HeaderValue::from_static(protocol));
    upgrade.on_upgrade(run).into_response()
}
