//! HRPC: Lapdev's HTTP RPC layer.
//!
//! A Rust trait is the API. `#[lapdev_hrpc::service]` on a trait of `async fn`s
//! generates, for `trait Foo`:
//!
//! - `FooClient`: a typed client over any [`Transport`] (real HTTP, an in-process
//!   router, the reverse tunnel); each method returns
//!   `Result<T, CallError<E>>`, keeping the server's errors apart from transport
//!   failures;
//! - `FooServer<S>`: wraps any `S: Foo` and becomes an `axum::Router` with the
//!   methods at `/Foo/{method}` ([`IntoRoutes`], `FooServer::into_router`);
//! - `FooClient::DESCRIPTOR` / `FooServer::DESCRIPTOR`: a [`ServiceDescriptor`]
//!   listing the methods, their paths and the role each declares with
//!   `#[hrpc(role = "...")]` on the method (the macro consumes the attribute;
//!   what a role means is the server's business).
//!
//! ```
//! use lapdev_hrpc::{Client, Context, HrpcError};
//!
//! #[lapdev_hrpc::service]
//! pub trait Greeter {
//!     /// Says hello.
//!     async fn greet(&self, ctx: Context, name: String) -> Result<String, HrpcError>;
//! }
//!
//! struct Hello;
//!
//! impl Greeter for Hello {
//!     async fn greet(&self, _ctx: Context, name: String) -> Result<String, HrpcError> {
//!         if name.is_empty() {
//!             return Err(HrpcError::invalid_argument("name is empty"));
//!         }
//!         Ok(format!("hello {name}"))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // In production the router is served by axum and the client uses
//! // `Client::http("https://host/rpc")`; in-process works the same.
//! let router = GreeterServer::new(Hello).into_router();
//! let client = GreeterClient::new(Client::in_process(router));
//! assert_eq!(client.greet("ada".into()).await.unwrap(), "hello ada");
//! assert!(client.greet(String::new()).await.is_err());
//! # });
//! ```
//!
//! Rules for the trait: every method is `async fn` with `&self`, plain identifier
//! arguments and a `Result<T, E>` return type; `T` is serde-serialisable and `E`
//! converts to and from [`HrpcError`]. A first argument of type `Context` (by that
//! name) receives the request [`Context`] and is not sent on the wire. The trait's
//! futures are `Send`, so implementations can be served by axum.
//!
//! # Wire protocol (version 1)
//!
//! Any HTTP client can call a service; with `curl`:
//!
//! ```text
//! curl -sS -X POST http://127.0.0.1:8080/rpc/KubeClusterRpc/heartbeat \
//!      -H 'content-type: application/json' \
//!      -H 'x-lapdev-cluster-token: lapdev_ct_...' \
//!      -d '{"health": {"state": "ok"}}'
//! ```
//!
//! **Request.** `POST {base}/{Service}/{method}` with `Content-Type:
//! application/json` and a body that is a JSON object of the named arguments
//! (`{"info": {...}}`; `{}` or an empty body for none). Unknown fields anywhere in
//! the body are ignored, so a newer client can call an older server as long as it
//! only adds fields; a missing field the server needs is an error (message types
//! give new fields a default for the opposite direction).
//!
//! Request headers, all optional:
//!
//! | header | meaning |
//! |---|---|
//! | `hrpc-version` | protocol major version (`1`); absent means the current one. Another major gets `412 failed_precondition` naming both versions. |
//! | `hrpc-timeout-ms` | the caller's deadline in milliseconds: 1 to 10 ASCII digits, above zero (no sign, no spaces; anything else is `400 invalid_argument`). The server drops the handler when it passes and answers `504 deadline_exceeded`. |
//! | `x-request-id` | correlates logs; generated when absent (or longer than 128 characters or not printable ASCII) and echoed on every response. |
//!
//! **Success.** `200` with the JSON of the method's `Ok` value (`null` for `()`).
//!
//! **Failure.** A non-2xx status and a JSON body
//! `{"code": "...", "message": "...", "details": ...}` (`details` optional). An
//! application error is never a `200`. Codes and statuses:
//!
//! | code | status | | code | status |
//! |---|---|---|---|---|
//! | `invalid_argument` | 400 | | `resource_exhausted` | 429 (413 for an oversized body) |
//! | `unauthenticated` | 401 | | `cancelled` | 499 |
//! | `permission_denied` | 403 | | `internal`, `unknown`, `data_loss` | 500 |
//! | `not_found`, `unimplemented` | 404 | | `unavailable` | 503 |
//! | `already_exists`, `aborted` | 409 | | `deadline_exceeded` | 504 |
//! | `failed_precondition` | 412 | | `out_of_range` | 400 |
//!
//! A code a client does not know decodes as `unknown`.
//!
//! **Bad input** never panics and never gets a `200`: a method path with a verb
//! other than `POST` gets `405` (with `allow: POST`); an unknown method `404
//! unimplemented`; a missing or non-JSON content type `415`; a body over the limit
//! (default 4 MiB, [`ServerConfig::max_body_bytes`]) `413 resource_exhausted`;
//! malformed JSON or a missing argument `400 invalid_argument` with the JSON path
//! that failed in the message and in `details.path`; a malformed
//! `hrpc-timeout-ms` `400`. A panic inside a method becomes `500 internal`.
//!
//! Responses carry `content-type: application/json`, `hrpc-version` and
//! `x-request-id`.
//!
//! **Clients** distinguish three failures ([`CallError`]): the server's error
//! (`Service`), no answer at all (`Transport`: refused, reset, timed out), and an
//! answer that is not HRPC (`Protocol`, e.g. a proxy's HTML page or a server of
//! another major version).
//!
//! # Reverse tunnel
//!
//! The server calls a cluster's manager, which it cannot reach directly, over a
//! WebSocket connection the manager opened (`GET /rpc/_tunnel`). The manager
//! serves the calls with its generated router; on the server the tunnel is one
//! more [`Transport`], so generated clients work over it unchanged and see the
//! same error model (a lost tunnel is `unavailable`). [`tunnel`] has both ends, a
//! registry of live tunnels, and the frame format.

mod client;
mod context;
mod descriptor;
mod error;
pub mod protocol;
pub mod proxy;
mod server;
pub mod tunnel;

#[doc(hidden)]
pub mod __private;

pub use client::{
    BoxError, BuildError, CallError, CallOptions, Client, HttpTransport, HttpTransportConfig,
    ProtocolError, ServiceTransport, TlsConfigError, Transport, TransportError,
};
pub use context::Context;
pub use descriptor::{IntoRoutes, MethodDescriptor, RpcRouter, ServiceDescriptor};
pub use error::{Code, HrpcError};
pub use http;
pub use lapdev_hrpc_proc_macro::service;
pub use server::{ServerConfig, error_response, json_response, unimplemented_fallback};
