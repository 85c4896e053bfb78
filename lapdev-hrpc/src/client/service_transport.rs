//! [`ServiceTransport`]: calls an in-process `tower` service (an `axum::Router`)
//! without sockets.

use std::convert::Infallible;

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::{Transport, TransportError};

/// A transport that hands each request to a clone of an in-process service.
#[derive(Clone)]
pub struct ServiceTransport<S> {
    service: S,
}

impl<S> std::fmt::Debug for ServiceTransport<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTransport").finish_non_exhaustive()
    }
}

impl<S> ServiceTransport<S> {
    /// Wraps `service`; each call uses a clone of it.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S> Transport for ServiceTransport<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn send(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Response<Bytes>, TransportError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let response = match service.oneshot(request.map(Body::from)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| TransportError::Closed(Box::new(e)))?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        })
    }
}
