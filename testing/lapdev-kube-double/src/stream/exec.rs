//! `pods/exec`: the options the real API server checks, and one session that
//! runs the command locally and speaks the v4/v5 channel protocol.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::process::{self, Input};
use super::socket::{self, frame};
use crate::error::ApiError;

const STDIN: u8 = 0;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[255, channel]` closes that channel (only stdin is closable).
const CLOSE: u8 = 255;

/// The `PodExecOptions` of a request.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub command: Vec<String>,
    pub container: String,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

fn is_true(v: &str) -> bool {
    matches!(v, "true" | "1" | "True" | "TRUE")
}

impl Options {
    /// Reads the query and resolves the container as the real registry does.
    pub(crate) fn parse(
        query: &[(String, String)],
        pod: &Value,
        name: &str,
    ) -> Result<Self, ApiError> {
        let get = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let flag = |k: &str| get(k).is_some_and(is_true);
        let command: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        let names = |key: &str| -> Vec<String> {
            pod.pointer(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        };
        let containers = names("/spec/containers");
        let container = match get("container").filter(|c| !c.is_empty()) {
            Some(c) => {
                let all = [containers.clone(), names("/spec/initContainers")].concat();
                if !all.iter().any(|x| x == c) {
                    return Err(ApiError::bad_request(format!(
                        "container {c} is not valid for pod {name}"
                    )));
                }
                c.to_owned()
            }
            None => match containers.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}"
                    )));
                }
                many => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        many.join(" ")
                    )));
                }
            },
        };
        super::no_host_check(pod, name)?;
        let opts = Self {
            command,
            container,
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        };
        if opts.command.is_empty() {
            return Err(ApiError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        if !opts.stdin && !opts.stdout && !opts.stderr {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        Ok(opts)
    }
}

/// Whether the kubelet would find the container running; its error otherwise.
pub(crate) fn running_check(pod: &Value, container: &str) -> Result<(), String> {
    let not_found = || format!("container not found (\"{container}\")");
    if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(not_found());
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    match statuses.and_then(|s| {
        s.iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
    }) {
        Some(s) if s.pointer("/state/running").is_none() => Err(not_found()),
        // A pod marked Running without container statuses counts as running.
        _ => Ok(()),
    }
}

/// One exec connection.
pub(crate) struct Session {
    pub opts: Options,
    pub v5: bool,
    pub dir: PathBuf,
    pub running: Result<(), String>,
}

/// The `Status` sent on channel 3 when the command ends.
fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn internal_error(message: &str) -> Value {
    let e = ApiError::internal(message);
    e.to_status()
}

fn status_frame(status: &Value) -> Message {
    frame(STATUS, &serde_json::to_vec(status).unwrap_or_default())
}

impl Session {
    pub(crate) async fn run(self, ws: WebSocket) {
        let (incoming, out) = socket::split(ws);
        // The real server's first frame: an empty one on the lowest channel it
        // writes, so the client knows the stream is up.
        let first = if self.opts.stdout {
            1
        } else if self.opts.stderr {
            2
        } else {
            STATUS
        };
        let _ = out.tx.send(frame(first, &[])).await;
        let status = match &self.running {
            Err(e) => internal_error(&format!("unable to upgrade connection: {e}")),
            Ok(()) => self.execute(incoming, &out.tx).await,
        };
        let _ = out.tx.send(status_frame(&status)).await;
        drop(out.tx);
        let _ = out.task.await;
    }

    /// Runs the command until it ends (its `Status`) or the client leaves.
    async fn execute(
        &self,
        incoming: futures::stream::SplitStream<WebSocket>,
        tx: &mpsc::Sender<Message>,
    ) -> Value {
        let plan = process::Plan {
            command: &self.opts.command,
            dir: &self.dir,
            stdin: self.opts.stdin,
            stdout: self.opts.stdout,
            stderr: self.opts.stderr,
            tty: self.opts.tty,
        };
        let spawned = match process::spawn(&plan) {
            Ok(s) => s,
            Err(e) => return exit_failure(&e),
        };
        let mut child = spawned.child;
        let mut group = spawned.group;
        let readers: Vec<_> = spawned
            .outputs
            .into_iter()
            .map(|(channel, reader)| tokio::spawn(pump(channel, reader, tx.clone())))
            .collect();
        let finished = async {
            let code = match child.wait().await {
                Ok(s) => exit_code(s),
                Err(_) => 1,
            };
            // What the command left in the background goes with it (a real
            // container would keep it until the pod stops); its outputs then close.
            group.kill();
            for mut r in readers {
                // Bounded all the same: a process that left the group may
                // still hold an output open.
                if tokio::time::timeout(Duration::from_secs(2), &mut r)
                    .await
                    .is_err()
                {
                    r.abort();
                }
            }
            code
        };
        tokio::select! {
            code = finished => exit_status(&self.opts.command, code),
            () = input(incoming, spawned.input, self.v5) => {
                // The client closed the connection: nobody is left to tell.
                exit_status(&self.opts.command, 1)
            }
        }
    }
}

fn exit_failure(message: &str) -> Value {
    let mut status = exit_status(&[], 126);
    status["message"] = json!(format!(
        "command terminated with non-zero exit code: {message}"
    ));
    status
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Copies one output of the process to its channel.
async fn pump(
    channel: u8,
    mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    tx: mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            // A terminal's master side reads EIO once the last process left it.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Handles the client's frames until it closes the connection.
async fn input(mut incoming: futures::stream::SplitStream<WebSocket>, mut stdin: Input, v5: bool) {
    while let Some(Ok(msg)) = incoming.next().await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
        match socket::channel_of(&msg) {
            Some((STDIN, data)) if !data.is_empty() => stdin.write(data).await,
            Some((CLOSE, [STDIN])) if v5 => stdin.close().await,
            Some((RESIZE, data)) => {
                if let Ok(size) = serde_json::from_slice::<Value>(data) {
                    let dim = |k: &str| {
                        size.get(k)
                            .and_then(Value::as_u64)
                            .and_then(|v| u16::try_from(v).ok())
                    };
                    if let (Some(w), Some(h)) = (dim("Width"), dim("Height")) {
                        stdin.resize(w, h);
                    }
                }
            }
            _ => {}
        }
    }
}
