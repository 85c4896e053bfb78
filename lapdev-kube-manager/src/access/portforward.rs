//! Port-forward: one connection to a pod port through the API server's
//! `pods/portforward` WebSocket (kube's `Api::portforward`), relayed as raw
//! bytes. An error the API server reports for the port (nothing listens
//! there, the pod went away) ends the response with the
//! `x-lapdev-stream-error` trailer.

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use http_body::Frame;
use http_body_util::StreamBody;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::stream::{PortForwardRequest, STREAM_ERROR_TRAILER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Access, Slot, kube_error};

/// Read size from the pod's side.
const CHUNK: usize = 16 * 1024;

/// Opens the connection; the response carries the port's bytes.
pub(super) async fn start(
    access: &Access,
    req: PortForwardRequest,
    body: Body,
    slot: Slot,
) -> Result<Response, HrpcError> {
    let pod = access.running_pod(req.workspace_id).await?;
    let pods: Api<Pod> = Api::namespaced(access.client.clone(), &access.settings.namespace);
    let mut forwarder = pods
        .portforward(&pod, &[req.port])
        .await
        .map_err(|e| kube_error("opening the port-forward", e))?;
    let stream = forwarder
        .take_stream(req.port)
        .ok_or_else(|| HrpcError::internal("kube gave no stream for the port"))?;
    let error = forwarder.take_error(req.port);
    let (mut from_pod, mut to_pod) = tokio::io::split(stream);
    let (mut out, rx) = mpsc::channel::<Frame<Bytes>>(4);
    let port = req.port;
    let workspace = req.workspace_id;
    tracing::debug!(workspace_id = %workspace, %pod, port, "port-forward open");

    // Client → pod; the client's end of input ends the connection (as kubectl's).
    let mut body = body.into_data_stream();
    let upload = tokio::spawn(async move {
        while let Some(Ok(chunk)) = body.next().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    tokio::spawn(async move {
        let _slot = slot;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out
                        .send(Frame::data(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        upload.abort();
                        forwarder.abort();
                        return;
                    }
                }
            }
        }
        upload.abort();
        // The API server's error for the port comes before its close on the
        // one ordered WebSocket, so it has been delivered by now if there was
        // one; ending the forwarder resolves the receiver either way.
        forwarder.abort();
        let reason = match error {
            Some(e) => e.await,
            None => None,
        };
        if let Some(msg) = reason {
            tracing::info!(workspace_id = %workspace, port, error = %msg, "port-forward failed");
            let mut trailers = http::HeaderMap::new();
            let clean: String = msg.chars().filter(|c| !c.is_control()).take(512).collect();
            if let Ok(v) = http::HeaderValue::from_str(&clean) {
                trailers.insert(STREAM_ERROR_TRAILER, v);
                let _ = out.send(Frame::trailers(trailers)).await;
            }
        }
    });
    Ok(Response::new(Body::new(StreamBody::new(
        rx.map(Ok::<_, Infallible>),
    ))))
}
