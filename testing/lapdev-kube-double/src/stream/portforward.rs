//! `pods/portforward`: per requested port, a TCP connection to the loopback
//! address registered for the pod's port, framed on channels 2i (data) and
//! 2i+1 (error) as the kubelet's WebSocket handler does.

use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::socket::{self, frame};
use crate::error::ApiError;

/// Parses `ports=8080,9090` (or repeated `ports=`), as the API server does.
pub(crate) fn parse_ports(query: &[(String, String)]) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (_, v) in query.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unable to parse \"{p}\" as a port: port must be in the range 1-65535"
                    )));
                }
            }
        }
    }
    // Two channels per port, numbered by one byte.
    if ports.len() > 128 {
        return Err(ApiError::bad_request(
            "the number of ports cannot be more than 128",
        ));
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request(
            "at least one port must be specified (query parameter \"ports\")",
        ));
    }
    Ok(ports)
}

/// A stand-in for the pod sandbox's id (64 hex digits from the pod's uid),
/// which the real error messages name.
pub(crate) fn sandbox_id(pod: &Value) -> String {
    let uid: String = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    let mut id = uid.repeat(2);
    id.truncate(64);
    id
}

/// One port-forward connection.
pub(crate) struct Session {
    pub ports: Vec<u16>,
    /// The registered address of each port, if any.
    pub targets: Vec<Option<SocketAddr>>,
    pub sandbox: String,
    pub running: bool,
}

impl Session {
    /// The containerd/kubelet message for a port nothing listens on.
    fn refused(&self, port: u16) -> String {
        let s = &self.sandbox;
        format!(
            "error forwarding port {port} to pod {s}, uid : failed to execute portforward in network namespace \"/var/run/netns/cni-{s}\": failed to connect to localhost:{port} inside namespace \"{s}\", IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6 [::1]:{port}: connect: connection refused "
        )
    }

    fn not_running(&self, port: u16) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid : rpc error: code = NotFound desc = failed to find sandbox \"{}\" in store: not found",
            self.sandbox, self.sandbox
        )
    }

    pub(crate) async fn run(self, ws: WebSocket) {
        let (mut incoming, out) = socket::split(ws);
        let tx = out.tx;
        // Each channel opens with its port, 2 bytes little-endian.
        for (i, port) in self.ports.iter().enumerate() {
            let Some(data) = u8::try_from(2 * i).ok() else {
                break;
            };
            let _ = tx.send(frame(data, &port.to_le_bytes())).await;
            let _ = tx.send(frame(data + 1, &port.to_le_bytes())).await;
        }
        let (done_tx, mut done_rx) = mpsc::channel::<usize>(self.ports.len().max(1));
        let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::new();
        let mut readers = Vec::new();
        let mut open = 0usize;
        for (i, (port, target)) in self.ports.iter().zip(&self.targets).enumerate() {
            let data = u8::try_from(2 * i).unwrap_or(u8::MAX - 1);
            let conn = match target {
                Some(addr) if self.running => tokio::net::TcpStream::connect(addr).await.ok(),
                _ => None,
            };
            let Some(conn) = conn else {
                let msg = if self.running {
                    self.refused(*port)
                } else {
                    self.not_running(*port)
                };
                let _ = tx.send(frame(data + 1, msg.as_bytes())).await;
                writers.push(None);
                continue;
            };
            let _ = conn.set_nodelay(true);
            let (read, write) = conn.into_split();
            writers.push(Some(write));
            open += 1;
            readers.push(tokio::spawn(pump(
                i,
                data,
                read,
                tx.clone(),
                done_tx.clone(),
            )));
        }
        drop(done_tx);
        while open > 0 {
            tokio::select! {
                msg = incoming.next() => {
                    let Some(Ok(msg)) = msg else { break };
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                    if let Some((ch, payload)) = socket::channel_of(&msg)
                        && ch % 2 == 0
                        && !payload.is_empty()
                        && let Some(Some(w)) = writers.get_mut(usize::from(ch / 2))
                        && w.write_all(payload).await.is_err()
                    {
                        writers[usize::from(ch / 2)] = None;
                    }
                }
                ended = done_rx.recv() => match ended {
                    Some(i) => {
                        if let Some(w) = writers.get_mut(i) {
                            *w = None;
                        }
                        open -= 1;
                    }
                    None => break,
                },
            }
        }
        for w in writers.iter_mut().flatten() {
            let _ = w.shutdown().await;
        }
        for r in readers {
            r.abort();
        }
        drop(tx);
        let _ = out.task.await;
    }
}

/// Copies what the target sends to the port's data channel; reports the end.
async fn pump(
    index: usize,
    channel: u8,
    mut read: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::Sender<Message>,
    done: mpsc::Sender<usize>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = done.send(index).await;
}
