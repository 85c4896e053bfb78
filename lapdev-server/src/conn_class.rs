//! Connection budgets per class, so that a flood of one kind of client cannot
//! take the connections another kind needs.
//!
//! Every connection counts against the accept loop's `max_connections`. Its
//! *class* is set by its first request and held until it closes:
//!
//! | class | first request | budget (flag) |
//! |---|---|---|
//! | tunnel | `GET …/_tunnel` with `upgrade`, answered `101` | `--max-tunnel-connections` |
//! | api | carries `authorization`, a cluster token or the dashboard's session cookie | `--max-api-connections` |
//! | unauthenticated | neither | `--max-unauthenticated-connections` |
//!
//! A request whose class is full is answered `503 unavailable` with
//! `connection: close`, which frees the socket at once. A tunnel upgrade that
//! is refused (a bad token) gives its tunnel slot back and closes the
//! connection, so forged upgrades cannot hold tunnel slots. With the defaults
//! (5,000 + 4,000 + 500 of 10,000) API and unauthenticated clients together can
//! hold at most 4,500 connections: the tunnels' share stays free for them.
//! Connections that have not sent a request yet are bounded by the header read
//! timeout.

use std::sync::{Arc, Mutex};

use lapdev_common::headers::KUBE_CLUSTER_TOKEN_HEADER;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a connection is used for, from its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnClass {
    /// A manager tunnel (an upgraded connection).
    Tunnel,
    /// Requests with credentials: the admin and manager APIs, streams.
    Api,
    /// Requests without credentials.
    Unauthenticated,
}

impl ConnClass {
    /// The class of a connection whose first request is `request`.
    pub fn of<B>(request: &http::Request<B>) -> ConnClass {
        let headers = request.headers();
        if request.method() == http::Method::GET
            && headers.contains_key(http::header::UPGRADE)
            && request.uri().path().ends_with("/_tunnel")
        {
            ConnClass::Tunnel
        } else if headers.contains_key(http::header::AUTHORIZATION)
            || headers.contains_key(KUBE_CLUSTER_TOKEN_HEADER)
            || carries_session_cookie(headers)
        {
            ConnClass::Api
        } else {
            ConnClass::Unauthenticated
        }
    }

    /// For logs and the refusal message.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnClass::Tunnel => "tunnel",
            ConnClass::Api => "api",
            ConnClass::Unauthenticated => "unauthenticated",
        }
    }
}

/// Whether a request carries the dashboard's session cookie (either name; see
/// `auth::web_policy`): a signed-in browser's event stream and pages are API
/// traffic, not anonymous.
fn carries_session_cookie(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, _)| name == "lapdev_session" || name == "__Host-lapdev_session")
}

/// The budgets of the classes.
#[derive(Debug, Clone)]
pub struct ClassBudgets {
    tunnel: Arc<Semaphore>,
    api: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
}

impl ClassBudgets {
    /// Budgets of `tunnel`, `api` and `unauthenticated` connections.
    pub fn new(tunnel: usize, api: usize, unauthenticated: usize) -> Self {
        Self {
            tunnel: Arc::new(Semaphore::new(tunnel.max(1))),
            api: Arc::new(Semaphore::new(api.max(1))),
            unauthenticated: Arc::new(Semaphore::new(unauthenticated.max(1))),
        }
    }

    fn semaphore(&self, class: ConnClass) -> &Arc<Semaphore> {
        match class {
            ConnClass::Tunnel => &self.tunnel,
            ConnClass::Api => &self.api,
            ConnClass::Unauthenticated => &self.unauthenticated,
        }
    }

    /// Free slots of `class` now (tests and metrics).
    pub fn available(&self, class: ConnClass) -> usize {
        self.semaphore(class).available_permits()
    }
}

/// One connection's class and the slot it holds; shared by the connection's
/// request handler and its socket, so an upgraded tunnel keeps its slot for
/// as long as the socket lives.
#[derive(Debug, Default)]
pub struct ClassSlot {
    held: Mutex<Option<(ConnClass, OwnedSemaphorePermit)>>,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it.
    Serve,
    /// The class is full: refuse and close.
    Full(ConnClass),
}

impl ClassSlot {
    /// Admits a request: the connection's first request takes a slot of its
    /// class; later requests ride on it.
    pub fn admit<B>(&self, budgets: &ClassBudgets, request: &http::Request<B>) -> Admission {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return Admission::Serve;
        }
        let class = ConnClass::of(request);
        match budgets.semaphore(class).clone().try_acquire_owned() {
            Ok(permit) => {
                *held = Some((class, permit));
                Admission::Serve
            }
            Err(_) => Admission::Full(class),
        }
    }

    /// The connection's class, once it has one.
    pub fn class(&self) -> Option<ConnClass> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(c, _)| *c)
    }

    /// Gives the slot back (a tunnel upgrade that was refused).
    pub fn release(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_first_request_sets_the_class_and_a_full_class_is_refused() {
        let budgets = ClassBudgets::new(1, 1, 1);
        let tunnel = request("GET", "/rpc/_tunnel", &[("upgrade", "websocket")]);
        let api = request(
            "POST",
            "/rpc/AdminRpc/list_clusters",
            &[("authorization", "Bearer x")],
        );
        let anon = request("GET", "/healthz", &[]);
        assert_eq!(ConnClass::of(&tunnel), ConnClass::Tunnel);
        assert_eq!(ConnClass::of(&api), ConnClass::Api);
        assert_eq!(ConnClass::of(&anon), ConnClass::Unauthenticated);
        // A signed-in browser (its event stream included) is API traffic.
        let browser = request("GET", "/events", &[("cookie", "a=1; lapdev_session=s")]);
        assert_eq!(ConnClass::of(&browser), ConnClass::Api);
        let other = request("GET", "/", &[("cookie", "not_lapdev_session=s")]);
        assert_eq!(ConnClass::of(&other), ConnClass::Unauthenticated);

        let first = ClassSlot::default();
        assert_eq!(first.admit(&budgets, &anon), Admission::Serve);
        // Later requests on the same connection ride on its slot.
        assert_eq!(first.admit(&budgets, &api), Admission::Serve);
        assert_eq!(first.class(), Some(ConnClass::Unauthenticated));
        let second = ClassSlot::default();
        assert_eq!(
            second.admit(&budgets, &anon),
            Admission::Full(ConnClass::Unauthenticated)
        );
        // A full class leaves the others alone.
        assert_eq!(second.admit(&budgets, &tunnel), Admission::Serve);
        second.release();
        assert_eq!(budgets.available(ConnClass::Tunnel), 1);
        drop(first);
        assert_eq!(budgets.available(ConnClass::Unauthenticated), 1);
    }
}
