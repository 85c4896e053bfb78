//! Exec: the API server's `pods/exec` WebSocket relayed as
//! `lapdev_kube_rpc::stream` frames.
//!
//! kube's `Client::connect` offers `v5.channel.k8s.io` and `v4.channel.k8s.io`;
//! the channels are driven here rather than by `Api::exec` so that which one
//! the API server chose is known: end of stdin exists only in v5 (Kubernetes
//! 1.29+). On v4, a client's end of input ends the session with an error that
//! says so instead of leaving the command waiting forever.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;
use kube_tungstenite::Message;
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::stream::{ExecRequest, Frame, FrameDecoder, TerminalSize};

use super::{Access, Slot, kube_error};
use crate::objects::CONTAINER_NAME;

const STDIN_CHANNEL: u8 = 0;
const STDOUT_CHANNEL: u8 = 1;
const STDERR_CHANNEL: u8 = 2;
const STATUS_CHANNEL: u8 = 3;
const RESIZE_CHANNEL: u8 = 4;
const CLOSE_CHANNEL: u8 = 255;
/// Keeps proxies between the manager and the API server from cutting an idle
/// session.
const PING_EVERY: Duration = Duration::from_secs(30);

/// Starts the command; the response streams its frames.
pub(super) async fn start(
    access: &Access,
    req: ExecRequest,
    body: Body,
    slot: Slot,
) -> Result<Response, HrpcError> {
    let pod = access.running_pod(req.workspace_id).await?;
    let ap = AttachParams {
        container: Some(CONTAINER_NAME.to_owned()),
        stdin: req.stdin,
        stdout: true,
        stderr: !req.tty,
        tty: req.tty,
        ..AttachParams::default()
    };
    let request = kube::core::Request::new(format!(
        "/api/v1/namespaces/{}/pods",
        access.settings.namespace
    ))
    .exec(&pod, req.command.clone(), &ap)
    .map_err(|e| HrpcError::invalid_argument(format!("the exec request: {e}")))?;
    let connection = access
        .client
        .connect(request)
        .await
        .map_err(|e| kube_error("starting the command", e))?;
    let v5 = connection.supports_stream_close();
    let ws = connection.into_stream();
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(8);
    let program = req.command.first().cloned().unwrap_or_default();
    tracing::info!(workspace_id = %req.workspace_id, %pod, program, tty = req.tty, v5, "exec session open");
    let initial = if req.tty { req.size } else { None };
    tokio::spawn(async move {
        let _slot = slot;
        let outcome = relay(ws, body, out_tx.clone(), v5, initial).await;
        let last = match outcome {
            Ok(frame) => frame,
            Err(message) => Frame::Error(message),
        };
        tracing::info!(workspace_id = %req.workspace_id, outcome = ?last, "exec session closed");
        let mut out_tx = out_tx;
        let _ = out_tx.send(last.to_bytes()).await;
    });
    Ok(Response::new(Body::from_stream(
        out_rx.map(Ok::<_, std::convert::Infallible>),
    )))
}

/// Pumps both ways until the command ends: `Ok(Exit)` or the error to report.
/// Each direction is its own future, so a slow reader on one side never
/// stops the other (a command blocked writing stdout still gets its stdin).
async fn relay<W>(
    ws: W,
    body: Body,
    mut out: mpsc::Sender<Bytes>,
    v5: bool,
    initial: Option<TerminalSize>,
) -> Result<Frame, String>
where
    W: futures::Stream<Item = Result<Message, kube_tungstenite::Error>>
        + futures::Sink<Message, Error = kube_tungstenite::Error>,
{
    let (mut to_pod, mut from_pod) = ws.split();
    let download = async {
        loop {
            match from_pod.next().await {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    let frame = match b[0] {
                        STDOUT_CHANNEL => Frame::Stdout(b.slice(1..)),
                        STDERR_CHANNEL => Frame::Stderr(b.slice(1..)),
                        STATUS_CHANNEL => return Ok(exit_frame(&b[1..])),
                        _ => continue,
                    };
                    if out.send(frame.to_bytes()).await.is_err() {
                        return Err("the client went away".to_owned());
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(
                        "the API server closed the session without an exit status".to_owned()
                    );
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("the API server connection failed: {e}")),
            }
        }
    };
    let upload = async {
        let send_err =
            |e: kube_tungstenite::Error| format!("the API server connection failed: {e}");
        if let Some(size) = initial {
            to_pod.send(resize(size)).await.map_err(send_err)?;
        }
        let mut body = body.into_data_stream();
        let mut decoder = FrameDecoder::default();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = ping.tick() => {
                    to_pod.send(Message::Ping(Bytes::new())).await.map_err(send_err)?;
                    continue;
                }
            };
            let chunk = match chunk {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    return Err::<(), String>(format!("the client's stream failed: {e}"));
                }
                None => {
                    // The client went away without saying end of input.
                    decoder.finish().map_err(|e| e.to_string())?;
                    return Err("the client went away".to_owned());
                }
            };
            decoder.push(&chunk);
            while let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
                let message = match frame {
                    Frame::Stdin(b) => {
                        let mut v = BytesMut::with_capacity(b.len() + 1);
                        v.extend_from_slice(&[STDIN_CHANNEL]);
                        v.extend_from_slice(&b);
                        Message::Binary(v.freeze())
                    }
                    Frame::StdinEnd if v5 => {
                        Message::Binary(Bytes::from_static(&[CLOSE_CHANNEL, STDIN_CHANNEL]))
                    }
                    Frame::StdinEnd => {
                        return Err(
                            "this cluster's API server cannot pass end of input to a command \
                             (it needs v5.channel.k8s.io, Kubernetes 1.29 or newer); use a TTY \
                             session or a command that does not wait for end of input"
                                .to_owned(),
                        );
                    }
                    Frame::Resize(size) => resize(size),
                    other => return Err(format!("a client may not send {other:?} frames")),
                };
                to_pod.send(message).await.map_err(send_err)?;
            }
        }
    };
    // The upload only ever ends in an error (or the client leaving); the
    // command's status ends the session.
    let result = tokio::select! {
        r = download => r,
        Err(e) = upload => Err(e),
    };
    result
}

fn resize(size: TerminalSize) -> Message {
    let json = format!(r#"{{"Width":{},"Height":{}}}"#, size.cols, size.rows);
    let mut v = Vec::with_capacity(json.len() + 1);
    v.push(RESIZE_CHANNEL);
    v.extend_from_slice(json.as_bytes());
    Message::Binary(v.into())
}

/// The frame for the status channel's `Status`: the exit code, or an error.
fn exit_frame(json: &[u8]) -> Frame {
    let status: Status = match serde_json::from_slice(json) {
        Ok(s) => s,
        Err(e) => return Frame::Error(format!("the API server sent an unreadable status: {e}")),
    };
    if status.status.as_deref() == Some("Success") {
        return Frame::Exit(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.parse().ok());
        if let Some(code) = code {
            return Frame::Exit(code);
        }
    }
    Frame::Error(
        status
            .message
            .unwrap_or_else(|| "the command failed without a message".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_exit_codes_or_errors() {
        assert_eq!(exit_frame(br#"{"status":"Success"}"#), Frame::Exit(0));
        let failed = br#"{"status":"Failure","reason":"NonZeroExitCode","message":"command terminated with non-zero exit code","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_frame(failed), Frame::Exit(3));
        let err = br#"{"status":"Failure","message":"container not found (\"workspace\")"}"#;
        assert_eq!(
            exit_frame(err),
            Frame::Error("container not found (\"workspace\")".into())
        );
        assert!(matches!(exit_frame(b"{"), Frame::Error(_)));
    }
}
