//! `lapdev workspace shell | exec | port-forward | proxy | ssh-config`: the
//! server's WebSocket session endpoints (`lapdev_server::access`) from the
//! command line.
//!
//! Exec sessions speak `lapdev_kube_rpc::stream` frames; port-forwards and the
//! proxy carry raw bytes. A refusal is the server's one-line HRPC error; a
//! session cut short (workspace stopped, tunnel dropped, token revoked) ends
//! the command non-zero with the server's reason.

use std::net::{IpAddr, SocketAddr};

use super::stdout::write_error;
use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::stream::{Frame, FrameDecoder, MAX_FRAME_PAYLOAD, TerminalSize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

/// The remote command's exit code, to become the CLI's.
#[derive(Debug)]
pub struct ExitCode(pub i32);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with {}", self.0)
    }
}

impl std::error::Error for ExitCode {}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server's base URL (`http(s)://…`).
    pub server: String,
    /// The bearer token.
    pub token: String,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Endpoint {
    /// Opens `/api/v1/workspaces/{workspace}/{kind}?{query}`.
    async fn connect(&self, workspace: &str, kind: &str, query: &str) -> anyhow::Result<Ws> {
        let base = self.server.trim_end_matches('/');
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            bail!("--server must start with http:// or https://, not {base:?}");
        };
        let name: String = form_urlencoded::byte_serialize(workspace.as_bytes()).collect();
        let url = format!("{ws_base}/api/v1/workspaces/{name}/{kind}?{query}");
        let mut request = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("invalid URL {url}"))?;
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {}", self.token.trim()))
                .context("the token contains characters a header cannot carry")?,
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                match serde_json::from_slice::<HrpcError>(body) {
                    Ok(e) => Err(Refused(e).into()),
                    Err(_) => bail!("the server refused the session: {status}"),
                }
            }
            Err(e) => Err(anyhow::Error::new(e).context("cannot reach the server")),
        }
    }
}

/// The server refused to open a session, with its HRPC error.
#[derive(Debug)]
struct Refused(HrpcError);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0.message, self.0.code)
    }
}

impl std::error::Error for Refused {}

/// Whether a refusal is about the workspace or the caller, not one
/// connection: every later connection would be refused the same way
/// (stopped or deleted workspace, revoked or demoted token), so a
/// port-forward ends with it.
fn refuses_every_connection(e: &anyhow::Error) -> bool {
    use lapdev_hrpc::Code;
    e.downcast_ref::<Refused>().is_some_and(|r| {
        matches!(
            r.0.code,
            Code::FailedPrecondition
                | Code::NotFound
                | Code::Unauthenticated
                | Code::PermissionDenied
        )
    })
}

/// The reason a close frame gives, as an error unless it is a normal close.
/// What a close frame says: `Ok` for a normal close, else the reason. A
/// reason longer than a close frame holds (123 bytes) came whole in a text
/// message just before: `full`.
fn closed(frame: Option<CloseFrame>, full: Option<String>) -> anyhow::Result<()> {
    match frame {
        Some(f) if f.code != tungstenite::protocol::frame::coding::CloseCode::Normal => {
            let reason = f.reason.to_string();
            if let Some(full) = full.filter(|full| full.starts_with(&reason)) {
                bail!("{full}")
            }
            if reason.is_empty() {
                bail!("the session ended abnormally ({})", u16::from(f.code))
            }
            bail!("{reason}")
        }
        _ => Ok(()),
    }
}

/// Whether to ask for a TTY: only when `wanted` and stdin is a terminal. As
/// `kubectl exec -t` does, a session whose input is a pipe or a file runs
/// without one (with a warning): a remote TTY never sees such input end, so
/// the session would wait forever.
pub fn tty_for_stdin(wanted: bool) -> bool {
    use std::io::IsTerminal as _;
    if wanted && !std::io::stdin().is_terminal() {
        eprintln!("lapdev: stdin is not a terminal: running without a TTY");
        return false;
    }
    wanted
}

/// `lapdev workspace exec` and `shell`: runs `command`; the remote exit code
/// comes back as [`ExitCode`] when it is not 0.
pub async fn exec(
    endpoint: &Endpoint,
    workspace: &str,
    command: &[String],
    tty: bool,
    stdin: bool,
) -> anyhow::Result<()> {
    if command.is_empty() {
        bail!("no command: `lapdev workspace exec NAME -- CMD ARGS…`");
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for arg in command {
        query.append_pair("cmd", arg);
    }
    if tty {
        query.append_pair("tty", "1");
    }
    if stdin {
        query.append_pair("stdin", "1");
    }
    let size = if tty { terminal::size() } else { None };
    if let Some(s) = size {
        query.append_pair("cols", &s.cols.to_string());
        query.append_pair("rows", &s.rows.to_string());
    }
    let ws = endpoint.connect(workspace, "exec", &query.finish()).await?;
    // Raw mode from here on, restored when `_raw` drops (every return path,
    // and unwinding).
    let _raw = if tty {
        terminal::RawMode::enter()
    } else {
        None
    };
    let (mut tx, mut rx) = ws.split();
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Frame>(8);
    if stdin {
        let frames = frames_tx.clone();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; MAX_FRAME_PAYLOAD];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = frames.send(Frame::StdinEnd).await;
                        return;
                    }
                    Ok(n) => {
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        if frames.send(Frame::Stdin(data)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        tokio::spawn(terminal::watch_resize(frames_tx.clone()));
    }
    drop(frames_tx);
    // Each direction is its own future: a full pipe one way never stops the
    // other.
    let upload = async {
        while let Some(f) = frames_rx.recv().await {
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            if tx.send(Message::Binary(buf.freeze())).await.is_err() {
                break;
            }
        }
        // Nothing more to send; the command's exit ends the session.
        std::future::pending::<()>().await;
    };
    let download = async {
        let mut decoder = FrameDecoder::default();
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        let mut full_reason = None;
        loop {
            match rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    decoder.push(&b);
                    while let Some(frame) = decoder
                        .next_frame()
                        .context("the server sent a bad frame")?
                    {
                        match frame {
                            Frame::Stdout(d) => {
                                stdout.write_all(&d).await.map_err(write_error)?;
                                stdout.flush().await.map_err(write_error)?;
                            }
                            Frame::Stderr(d) => {
                                stderr.write_all(&d).await?;
                                stderr.flush().await?;
                            }
                            Frame::Exit(0) => return Ok(()),
                            Frame::Exit(code) => return Err(ExitCode(code).into()),
                            Frame::Error(m) => bail!("{m}"),
                            other => bail!("the server sent a client frame: {other:?}"),
                        }
                    }
                }
                Some(Ok(Message::Text(t))) => full_reason = Some(t.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    closed(frame, full_reason.take())?;
                    bail!("the session ended without the command's exit code");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(anyhow::Error::new(e).context("the session failed"));
                }
                None => bail!("the server closed the session without the command's exit code"),
            }
        }
    };
    let result: anyhow::Result<()> = tokio::select! {
        r = download => r,
        _ = upload => Ok(()),
    };
    result
}

/// Pumps `local` (a reader and a writer) through one forwarded connection.
/// The local side's end of input is sent as an empty binary message (the
/// remote side then finishes and closes).
async fn pump<R, W>(ws: Ws, mut reader: R, mut writer: W) -> anyhow::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let upload = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Message::Binary(Bytes::new())).await;
                    break;
                }
                Ok(n) => {
                    if tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        std::future::pending::<()>().await;
    };
    let download = async {
        let mut full_reason = None;
        loop {
            match rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    writer.write_all(&b).await?;
                    writer.flush().await?;
                }
                Some(Ok(Message::Text(t))) => full_reason = Some(t.to_string()),
                Some(Ok(Message::Close(frame))) => return closed(frame, full_reason),
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed)) | None => return Ok(()),
                Some(Err(e)) => {
                    return Err(anyhow::Error::new(e).context("the forwarded connection failed"));
                }
            }
        }
    };
    let result: anyhow::Result<()> = tokio::select! {
        r = download => r,
        _ = upload => Ok(()),
    };
    let _ = writer.shutdown().await;
    result
}

/// `lapdev workspace proxy NAME PORT`: stdin and stdout to one port.
pub async fn proxy(endpoint: &Endpoint, workspace: &str, port: u16) -> anyhow::Result<()> {
    let ws = endpoint
        .connect(workspace, "portforward", &format!("port={port}"))
        .await?;
    pump(ws, tokio::io::stdin(), tokio::io::stdout()).await
}

/// One `[LOCAL:]REMOTE` of `port-forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// The local port (0: any free one).
    pub local: u16,
    /// The workspace's port.
    pub remote: u16,
}

impl std::str::FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port (0–65535)"))
        };
        let (local, remote) = match s.split_once(':') {
            Some((l, r)) => (port(l)?, port(r)?),
            None => (port(s)?, port(s)?),
        };
        if remote == 0 {
            return Err("the remote port must not be 0".into());
        }
        Ok(PortSpec { local, remote })
    }
}

/// `lapdev workspace port-forward`: listens on `address` for each spec and
/// forwards every connection until interrupted, or until the server refuses
/// the workspace itself (it stopped or was deleted, the token was revoked):
/// then, as `kubectl port-forward` when its pod goes, it ends with that
/// reason. A connection the server closes abnormally is followed by one new
/// connection to learn which it was; one refused by the pod's port (nothing
/// listening) only ends itself.
pub async fn port_forward(
    endpoint: &Endpoint,
    workspace: &str,
    specs: &[PortSpec],
    address: IpAddr,
) -> anyhow::Result<()> {
    if specs.is_empty() {
        bail!("no ports: `lapdev workspace port-forward NAME [LOCAL:]REMOTE…`");
    }
    // Check the workspace before listening, so a stopped one fails at once.
    let probe = endpoint
        .connect(
            workspace,
            "portforward",
            &format!("port={}", specs[0].remote),
        )
        .await?;
    drop(probe);
    let (ended_tx, mut ended) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(address, spec.local))
            .await
            .with_context(|| format!("cannot listen on {address}:{} (in use?)", spec.local))?;
        let local = listener.local_addr()?;
        outln!("Forwarding from {local} -> {}", spec.remote)?;
        let endpoint = endpoint.clone();
        let workspace = workspace.to_owned();
        let remote = spec.remote;
        let ended_tx = ended_tx.clone();
        tasks.spawn(async move {
            let query = format!("port={remote}");
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let _ = conn.set_nodelay(true);
                let (endpoint, workspace, query) =
                    (endpoint.clone(), workspace.clone(), query.clone());
                let ended_tx = ended_tx.clone();
                tokio::spawn(async move {
                    let ws = match endpoint.connect(&workspace, "portforward", &query).await {
                        Ok(ws) => ws,
                        Err(e) if refuses_every_connection(&e) => {
                            let _ = ended_tx.try_send(e);
                            return;
                        }
                        Err(e) => {
                            eprintln!("port {remote}: {e:#}");
                            return;
                        }
                    };
                    let (r, w) = conn.into_split();
                    let Err(e) = pump(ws, r, w).await else { return };
                    eprintln!("port {remote}: {e:#}");
                    // Closed by the server: ask once whether it still
                    // serves this workspace.
                    if let Err(e) = endpoint.connect(&workspace, "portforward", &query).await
                        && refuses_every_connection(&e)
                    {
                        let _ = ended_tx.try_send(e);
                    }
                });
            }
        });
    }
    drop(ended_tx);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        Some(e) = ended.recv() => Err(e.context("port-forward ended")),
    };
    tasks.abort_all();
    result
}

/// `lapdev workspace ssh-config`: a `Host` block for OpenSSH (and VS Code
/// Remote-SSH, JetBrains Gateway) reaching the workspace's sshd through
/// `lapdev workspace proxy`. `HostKeyAlias` names the workspace by id, so its
/// host key stays known across restarts and a new workspace reusing the name
/// is not confused with the old one.
pub fn ssh_config(
    server: &str,
    lapdev: &str,
    workspace: &str,
    workspace_id: uuid::Uuid,
    user: &str,
    port: u16,
) -> String {
    format!(
        "Host lapdev-{workspace}\n  \
         User {user}\n  \
         ProxyCommand {lapdev} --server {server} workspace proxy {workspace} {port}\n  \
         HostKeyAlias lapdev-{workspace_id}\n  \
         ServerAliveInterval 30\n"
    )
}

/// The login shell a `shell` session starts: the user's `$SHELL` in the image,
/// else bash, else sh.
pub fn login_shell() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "if [ -n \"$SHELL\" ] && [ -x \"$SHELL\" ]; then exec \"$SHELL\" -l; \
         elif command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"
            .into(),
    ]
}

/// The local terminal: raw mode and size (Unix).
mod terminal {
    use super::{Frame, TerminalSize};

    /// The terminal's size, if stdout is one.
    pub fn size() -> Option<TerminalSize> {
        let ws = rustix::termios::tcgetwinsize(rustix::stdio::stdout()).ok()?;
        (ws.ws_col > 0 && ws.ws_row > 0).then_some(TerminalSize {
            cols: ws.ws_col,
            rows: ws.ws_row,
        })
    }

    /// Raw mode on stdin while held; the old settings come back on drop.
    pub struct RawMode(rustix::termios::Termios);

    impl RawMode {
        /// `None` when stdin is not a terminal (nothing to change).
        pub fn enter() -> Option<RawMode> {
            let fd = rustix::stdio::stdin();
            let saved = rustix::termios::tcgetattr(fd).ok()?;
            let mut raw = saved.clone();
            raw.make_raw();
            rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Flush, &raw).ok()?;
            Some(RawMode(saved))
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                &self.0,
            );
        }
    }

    /// Sends a resize frame on every `SIGWINCH`.
    pub async fn watch_resize(frames: tokio::sync::mpsc::Sender<Frame>) {
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(s) = size()
                && frames.send(Frame::Resize(s)).await.is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse() {
        assert_eq!(
            "8080".parse::<PortSpec>(),
            Ok(PortSpec {
                local: 8080,
                remote: 8080
            })
        );
        assert_eq!(
            "0:22".parse::<PortSpec>(),
            Ok(PortSpec {
                local: 0,
                remote: 22
            })
        );
        assert!("x:22".parse::<PortSpec>().is_err());
        assert!("22:0".parse::<PortSpec>().is_err());
        assert!("70000".parse::<PortSpec>().is_err());
    }

    #[test]
    fn the_ssh_config_names_the_proxy_and_a_stable_alias() {
        let id = uuid::Uuid::nil();
        let c = ssh_config("https://l.example", "lapdev", "dev", id, "lapdev", 22);
        assert!(c.starts_with("Host lapdev-dev\n"), "{c}");
        assert!(
            c.contains("ProxyCommand lapdev --server https://l.example workspace proxy dev 22"),
            "{c}"
        );
        assert!(c.contains(&format!("HostKeyAlias lapdev-{id}")), "{c}");
    }
}
