//! Getting into a workspace, through real HTTP: the `lapdev` CLI (or a raw
//! WebSocket where a test drives a terminal) → the server on PostgreSQL → the
//! real manager's stream routes (served in process through
//! `InProcessStreams`, standing in for the tunnel's streams) → the Kubernetes
//! API test double running the command as a local process. Also: disabling a
//! user, revoking a token or a browser session ends the sessions they opened.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{FakeManager, TestServer, dial, eventually, observation, sample_info};
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use lapdev_common::role::Role;
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_kube_double::{KubeDouble, NodeSpec};
use lapdev_kube_manager::access::{Access, AccessSettings};
use lapdev_kube_rpc::ManagerHealth;
use lapdev_kube_rpc::stream::{Frame, FrameDecoder, TerminalSize};
use lapdev_server::access::InProcessStreams;
use lapdev_server::auth::api::{OrgSettingsView, PeopleRpcClient};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

#[path = "access/ssh.rs"]
mod ssh;

const NAMESPACE: &str = "lapdev-workspaces";

struct Env {
    t: TestServer,
    double: KubeDouble,
    workspace: Uuid,
    pod: String,
    tunnel: tokio::task::JoinHandle<()>,
    fake: Arc<FakeManager>,
    /// The manager's side of the cluster API.
    manager_api: lapdev_kube_rpc::KubeClusterRpcClient,
    /// The cluster token the manager's tunnel uses.
    token_id: Uuid,
}

/// A running workspace `box` with its pod in the double (local exec on);
/// streams reach the manager's routes in process.
async fn env() -> Env {
    env_with(false).await
}

/// [`env`], with streams through the real tunnel (v2) when `tunnel`.
async fn env_with(tunnel: bool) -> Env {
    let streams = InProcessStreams::default();
    let t = if tunnel {
        TestServer::postgres().await
    } else {
        TestServer::postgres_with_streams(Arc::new(streams.clone())).await
    };
    let double = KubeDouble::start().await.unwrap();
    let access = lapdev_kube_manager::access::router(Access::new(
        double.client().await.unwrap(),
        AccessSettings {
            namespace: NAMESPACE.into(),
            max_sessions_per_workspace: 8,
            max_forwards_per_workspace: 128,
        },
    ));
    let admin = t.admin();
    let created = admin
        .create_cluster("dev".into(), None, None, None)
        .await
        .unwrap();
    let manager_api = t.cluster_client(&created.token_secret);
    manager_api
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let fake = Arc::new(FakeManager::default());
    let session = if tunnel {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-lapdev-cluster-token",
            created.token_secret.parse().unwrap(),
        );
        lapdev_hrpc::tunnel::connect(
            &format!("{}/rpc/_tunnel", t.base()),
            headers,
            lapdev_kube_rpc::KubeManagerRpcServer::from_arc(fake.clone())
                .into_router()
                .merge(access.clone()),
            lapdev_hrpc::tunnel::TunnelClientConfig::default(),
        )
        .await
        .unwrap()
    } else {
        dial(&t, &created.token_secret, fake.clone()).await.unwrap()
    };
    let tunnel = tokio::spawn(async move {
        let _ = session.run().await;
    });
    eventually("cluster connected", || {
        let admin = admin.clone();
        async move {
            admin.get_cluster("dev".into()).await.unwrap().status == ClusterStatus::Connected
        }
    })
    .await;
    manager_api.heartbeat(ManagerHealth::Ok).await.unwrap();
    let out = lapdev(
        &t,
        &[
            "workspace",
            "create",
            "box",
            "--image",
            "ubuntu",
            "--cpu",
            "100m",
            "--memory",
            "128Mi",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let ws: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let workspace: Uuid = ws["id"].as_str().unwrap().parse().unwrap();
    eventually("the manager got the create", || {
        let fake = fake.clone();
        async move { fake.has(workspace).is_some() }
    })
    .await;
    manager_api
        .report_workspace_status(observation(workspace, WorkspaceStatus::Running))
        .await
        .unwrap();

    double.add_node("n1", NodeSpec::default()).unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).unwrap();
    double.create(&ns).unwrap();
    let pod = format!("ws-{workspace}");
    let spec: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pod, "namespace": NAMESPACE,
                     "labels": {"lapdev.dev/workspace-id": workspace.to_string()}},
        "spec": {"nodeName": "n1", "containers": [{"name": "workspace", "image": "ubuntu"}]},
    }))
    .unwrap();
    double
        .seed_running_pod(&spec)
        .unwrap_or_else(|e| panic!("seeding the pod: {e}"));
    double.enable_local_exec();
    streams.insert(created.cluster.id, access);
    Env {
        t,
        double,
        workspace,
        pod,
        tunnel,
        fake,
        manager_api,
        token_id: created.token.id,
    }
}

fn lapdev_cmd(t: &TestServer, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapdev"));
    cmd.args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &t.admin_token)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The CLI with stdin, stdout and stderr all piped.
fn spawn_piped(t: &TestServer, args: &[&str]) -> tokio::process::Child {
    lapdev_cmd(t, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn lapdev(t: &TestServer, args: &[&str]) -> std::process::Output {
    lapdev_cmd(t, args).output().await.unwrap()
}

/// A raw WebSocket session, as the CLI opens it.
async fn session(
    t: &TestServer,
    token: &str,
    path: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = format!("ws://{}/api/v1/workspaces/{path}", t.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

fn frame(f: Frame) -> Message {
    Message::Binary(f.to_bytes())
}

/// Reads frames until `done` holds for the output so far; returns the output
/// and the last frame (exit or error), if one came.
async fn read_until(
    ws: &mut (
             impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
         ),
    mut done: impl FnMut(&[u8]) -> bool,
) -> (Vec<u8>, Option<Frame>) {
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Binary(b) = msg else { continue };
            decoder.push(&b);
            while let Some(f) = decoder.next_frame().unwrap() {
                match f {
                    Frame::Stdout(d) | Frame::Stderr(d) => out.extend_from_slice(&d),
                    last => return (std::mem::take(&mut out), Some(last)),
                }
                if done(&out) {
                    return (std::mem::take(&mut out), None);
                }
            }
        }
        (std::mem::take(&mut out), None)
    })
    .await
    .expect("the session answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_keeps_streams_apart_and_exits_with_the_remote_code() {
    let e = env().await;
    let out = lapdev(
        &e.t,
        &[
            "workspace",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let out = lapdev(&e.t, &["workspace", "exec", "box", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The session is in the audit log with the program's name only. The
    // entry is written when the server sees the session end, which can come
    // after the CLI has its exit code.
    let t = &e.t;
    eventually("the session's audit entry", || async move {
        let audit = lapdev(t, &["audit", "list", "-o", "json"]).await;
        String::from_utf8_lossy(&audit.stdout).contains("workspace.exec")
    })
    .await;
    let audit = lapdev(&e.t, &["audit", "list", "-o", "json"]).await;
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        !text.contains("echo out"),
        "arguments must not be audited: {text}"
    );
    // `/metrics` labels the session by its route template, not `other`.
    let metrics = http_get(&e.t, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lapdev_http_requests_total")
                && l.contains(r#"route="/api/v1/workspaces/{workspace}/exec""#)),
        "{metrics}"
    );
}

/// A plain `GET` on the server, its body as text.
async fn http_get(t: &TestServer, path: &str) -> String {
    use lapdev_hrpc::Transport as _;
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let response = transport
        .send(
            http::Request::get(format!("{}{path}", t.base()))
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    String::from_utf8_lossy(response.body()).into_owned()
}

/// `shell` with input that is not a terminal runs without a TTY (as
/// `kubectl exec -it` does), so the shell reads the piped commands, sees their
/// end and exits instead of waiting forever; with no input at all it ends at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_whose_input_is_not_a_terminal_runs_without_a_tty_and_ends() {
    let e = env().await;
    let mut child = spawn_piped(&e.t, &["workspace", "shell", "box"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"echo from-the-pipe; exit 4\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the shell ended with its input")
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-the-pipe"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a terminal"),
        "{out:?}"
    );
    // No input at all (`</dev/null`): the shell sees its end at once.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        lapdev(&e.t, &["workspace", "shell", "box"]),
    )
    .await
    .expect("the shell ended without input");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// A forward to a port nothing listens on ends the CLI with the whole
/// reason, cause included: the kubelet's message is longer than a WebSocket
/// close frame holds (123 bytes), so the server sends it whole in a text
/// message before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_forward_ends_the_cli_with_the_whole_reason() {
    let e = env().await;
    // Input stays open: only the refusal can end the session (an input that
    // ends at once may end it first, cleanly).
    let mut child = spawn_piped(&e.t, &["workspace", "proxy", "box", "9999"]);
    let _input = child.stdin.take();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the proxy ended")
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The cause is at the end of the kubelet's message, past 123 bytes.
    assert!(
        err.trim_end()
            .ends_with("[::1]:9999: connect: connection refused"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_mib_through_exec_stdin_arrive_intact() {
    let e = env().await;
    let mut data = vec![0u8; 12 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let sent = Sha256::digest(&data);
    let mut child = spawn_piped(&e.t, &["workspace", "exec", "-i", "box", "--", "cat"]);
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        stdin.write_all(&data).await.unwrap();
        drop(stdin);
    });
    let out = child.wait_with_output().await.unwrap();
    writer.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 12 * 1024 * 1024);
    assert_eq!(Sha256::digest(&out.stdout), sent);
}

/// A loopback server that echoes every connection.
async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn round_trip(addr: std::net::SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = conn.into_split();
    let len = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w
    });
    let mut back = vec![0u8; len];
    r.read_exact(&mut back).await.unwrap();
    drop(writer.await.unwrap());
    back
}

/// `lapdev workspace port-forward box 0:8080`, its stdout and stderr piped,
/// and the local address its "Forwarding from ADDR -> 8080" line names.
async fn forward_box_8080(e: &Env) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = spawn_piped(&e.t, &["workspace", "port-forward", "box", "0:8080"]);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("port-forward started")
        .unwrap()
        .expect("a Forwarding line");
    let addr = line
        .strip_prefix("Forwarding from ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_carries_twelve_mib_and_fifty_concurrent_connections() {
    let e = env().await;
    e.double
        .register_pod_port(NAMESPACE, &e.pod, 8080, echo_server().await);
    let (mut child, addr) = forward_box_8080(&e).await;
    assert!(addr.ip().is_loopback());

    let mut data = vec![0u8; 12 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let sent = Sha256::digest(&data);
    assert_eq!(Sha256::digest(round_trip(addr, data).await), sent);

    let tasks: Vec<_> = (0..50u8)
        .map(|i| {
            tokio::spawn(async move {
                let mut data = vec![0u8; 64 * 1024];
                rand::rng().fill_bytes(&mut data);
                data[0] = i;
                let back = round_trip(addr, data.clone()).await;
                assert!(back == data, "connection {i} got other bytes back");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_remote_port_is_a_clear_error() {
    let e = env().await;
    let out = lapdev(&e.t, &["workspace", "proxy", "box", "9"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The API server's reason, cut to a WebSocket close reason, on one line.
    assert!(
        err.starts_with("error: error forwarding port 9 to pod"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_on_an_api_server_without_v5_is_a_clear_error() {
    let e = env().await;
    e.double.set_exec_v5(false);
    let mut child = spawn_piped(&e.t, &["workspace", "exec", "-i", "box", "--", "cat"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("no hang")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("v5.channel.k8s.io"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tty_session_sees_the_resize() {
    let e = env().await;
    let mut ws = session(
        &e.t,
        &e.t.admin_token,
        "box/exec?cmd=sh&cmd=-c&cmd=while%20read%20l%3B%20do%20stty%20size%3B%20done&tty=1&stdin=1&cols=80&rows=24",
    )
    .await
    .unwrap();
    ws.send(frame(Frame::Resize(TerminalSize {
        cols: 123,
        rows: 45,
    })))
    .await
    .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("45 123") {
        ws.send(frame(Frame::Stdin(Bytes::from_static(b"x\n"))))
            .await
            .unwrap();
        let (out, last) = read_until(&mut ws, |o| o.ends_with(b"\n")).await;
        assert!(last.is_none(), "the session ended: {last:?}");
        seen.extend_from_slice(&out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_resets_only_its_stream() {
    let e = env().await;
    let mut bad = session(&e.t, &e.t.admin_token, "box/exec?cmd=cat&stdin=1")
        .await
        .unwrap();
    let mut ok = session(&e.t, &e.t.admin_token, "box/exec?cmd=cat&stdin=1")
        .await
        .unwrap();
    bad.send(Message::Binary(Bytes::from_static(&[0x7f, 0, 0, 0, 0])))
        .await
        .unwrap();
    let (_, last) = read_until(&mut bad, |_| false).await;
    match last {
        Some(Frame::Error(m)) => assert!(m.contains("unknown stream frame type"), "{m}"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // An oversized frame is refused the same way.
    let mut big = session(&e.t, &e.t.admin_token, "box/exec?cmd=cat&stdin=1")
        .await
        .unwrap();
    big.send(Message::Binary(Bytes::from_static(&[0, 0, 2, 0, 0])))
        .await
        .unwrap();
    let (_, last) = read_until(&mut big, |_| false).await;
    assert!(
        matches!(&last, Some(Frame::Error(m)) if m.contains("limit")),
        "{last:?}"
    );
    // The other session and the RPCs are untouched.
    ok.send(frame(Frame::Stdin(Bytes::from_static(b"still here"))))
        .await
        .unwrap();
    ok.send(frame(Frame::StdinEnd)).await.unwrap();
    let (out, last) = read_until(&mut ok, |_| false).await;
    assert_eq!(out, b"still here");
    assert_eq!(last, Some(Frame::Exit(0)));
    let got = lapdev(&e.t, &["workspace", "get", "box", "-o", "json"]).await;
    assert!(got.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organisations_workspace_is_not_found() {
    let e = env().await;
    let db = &e.t.server.state.db;
    let org = db.create_organization("other").await.unwrap();
    let user = db
        .create_user(
            org.id,
            lapdev_db::NewUser {
                name: "mallory".into(),
                email: None,
            },
        )
        .await
        .unwrap();
    let pat = db
        .create_pat(
            org.id,
            user.id,
            "cli",
            chrono::Utc::now() + chrono::Duration::days(1),
            lapdev_db::NewAuditEntry {
                action: "pat.create".into(),
                outcome: "success".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for path in [
        "box/exec?cmd=true".to_owned(),
        format!("{}/exec?cmd=true", e.workspace),
        format!("{}/portforward?port=22", e.workspace),
    ] {
        match session(&e.t, &pat.secret, &path).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 404, "{path}")
            }
            Err(other) => panic!("{path}: {other}"),
            Ok(_) => panic!("{path}: another organisation opened a session"),
        }
    }
    // No token at all: 401.
    match session(&e.t, "", "box/exec?cmd=true").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// `port-forward` ends, non-zero with the reason, when the workspace stops:
/// the server closes the open connection, and the CLI's next try is refused
/// for the workspace, not for one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_workspace_ends_a_port_forward_with_the_reason() {
    let e = env().await;
    e.double
        .register_pod_port(NAMESPACE, &e.pod, 8080, echo_server().await);
    let (mut child, addr) = forward_box_8080(&e).await;
    // One connection open through it.
    let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    open.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");

    let out = lapdev(&e.t, &["workspace", "stop", "box"]).await;
    assert!(out.status.success(), "{out:?}");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("port-forward ends by itself")
        .unwrap();
    assert!(!status.success(), "{status:?}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(
        err.contains("error: port-forward ended: ")
            && err.contains("is stopped; start it with `lapdev workspace start box`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_workspace_ends_its_sessions_and_refuses_new_ones() {
    let e = env().await;
    let mut ws = session(&e.t, &e.t.admin_token, "box/exec?cmd=cat&stdin=1")
        .await
        .unwrap();
    ws.send(frame(Frame::Stdin(Bytes::from_static(b"ping"))))
        .await
        .unwrap();
    let (out, _) = read_until(&mut ws, |o| o == b"ping").await;
    assert_eq!(out, b"ping");
    // The open session keeps the workspace from idling.
    let activity = e.t.server.state.activity.clone();
    assert_eq!(activity.open_sessions(e.workspace), 1);
    let out = lapdev(&e.t, &["workspace", "stop", "box"]).await;
    assert!(out.status.success(), "{out:?}");
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(Some(f))) = msg {
                return f.reason.to_string();
            }
        }
        String::new()
    })
    .await
    .expect("the session ends");
    assert!(closed.contains("stopped"), "{closed}");
    eventually("the session no longer counts as use", || {
        let activity = activity.clone();
        let workspace = e.workspace;
        async move { activity.open_sessions(workspace) == 0 }
    })
    .await;
    eventually("the workspace stopped", || {
        let fake = e.fake.clone();
        let workspace = e.workspace;
        async move { fake.has(workspace) == Some(WorkspaceStatus::Stopped) }
    })
    .await;
    let t = &e.t;
    eventually("the server saw it stop", || async move {
        let got = lapdev(t, &["workspace", "get", "box", "-o", "json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap_or_default();
        v["status"] == "stopped"
    })
    .await;
    let out = lapdev(&e.t, &["workspace", "exec", "box", "--", "true"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is stopped; start it with `lapdev workspace start box`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_config_names_the_proxy_command() {
    let e = env().await;
    let out = lapdev(&e.t, &["workspace", "ssh-config", "box"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Host lapdev-box\n"), "{text}");
    assert!(text.contains("workspace proxy box 22"), "{text}");
    assert!(
        text.contains(&format!("HostKeyAlias lapdev-{}", e.workspace)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_real_tunnel_exec_and_port_forward_work_and_a_drop_ends_the_cli() {
    let e = env_with(true).await;
    let out = lapdev(
        &e.t,
        &[
            "workspace",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );

    e.double
        .register_pod_port(NAMESPACE, &e.pod, 8080, echo_server().await);
    let mut child = spawn_piped(&e.t, &["workspace", "proxy", "box", "8080"]);
    let mut data = vec![0u8; 12 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let sent = Sha256::digest(&data);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let writer = tokio::spawn(async move {
        stdin.write_all(&data).await.unwrap();
        stdin
    });
    let mut back = vec![0u8; 12 * 1024 * 1024];
    stdout.read_exact(&mut back).await.unwrap();
    assert_eq!(Sha256::digest(&back), sent);
    let stdin = writer.await.unwrap();

    // The tunnel drops mid-session: the CLI ends non-zero with the reason.
    e.tunnel.abort();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the CLI ends when the tunnel drops")
        .unwrap();
    drop(stdin);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:"), "{err}");
}

// ---- Revocation ends open sessions -------------------------------------------

const ORIGIN: &str = "https://lapdev.example.com";

fn people_api(t: &TestServer, token: &str) -> PeopleRpcClient {
    PeopleRpcClient::new(
        lapdev_hrpc::Client::http(&format!("{}/rpc", t.base()))
            .unwrap()
            .with_timeout(Duration::from_secs(20))
            .with_header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            ),
    )
}

/// Creates `name` with `role` and a password; returns a signed-in token.
async fn user_with_token(t: &TestServer, name: &str, role: Role) -> String {
    let owner = people_api(t, &t.admin_token);
    owner
        .create_user(name.into(), None, role, Some(format!("{name}-password")))
        .await
        .unwrap();
    let anon =
        PeopleRpcClient::new(lapdev_hrpc::Client::http(&format!("{}/rpc", t.base())).unwrap());
    anon.sign_in(None, name.into(), format!("{name}-password"), None)
        .await
        .unwrap()
        .token
        .token_secret
}

/// `lapdev ARGS` as the holder of `token`.
async fn lapdev_as(t: &TestServer, token: &str, args: &[&str]) -> std::process::Output {
    lapdev_cmd(t, args)
        .env("LAPDEV_TOKEN", token)
        .output()
        .await
        .unwrap()
}

/// Opens `cat` in `box` and checks that it echoes.
async fn live_cat(
    request: http::Request<()>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(frame(Frame::Stdin(Bytes::from_static(b"ping"))))
        .await
        .unwrap();
    let (out, last) = read_until(&mut ws, |o| o == b"ping").await;
    assert_eq!((out.as_slice(), last), (&b"ping"[..], None));
    ws
}

fn cat_request(t: &TestServer, token: &str) -> http::Request<()> {
    let mut req = format!("ws://{}/api/v1/workspaces/box/exec?cmd=cat&stdin=1", t.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// The close frame's code and reason, waiting at most 60 s for it.
async fn closed(
    ws: &mut (
             impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
         ),
) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        panic!("the session ended without a close reason")
    })
    .await
    .expect("the session ends at once")
}

async fn still_echoes(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    ws.send(frame(Frame::Stdin(Bytes::from_static(b"again"))))
        .await
        .unwrap();
    let (out, last) = read_until(ws, |o| o == b"again").await;
    assert_eq!((out.as_slice(), last), (&b"again"[..], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_ends_their_sessions_and_stops_their_workspaces() {
    let e = env().await;
    let t = &e.t;
    let owner = people_api(t, &t.admin_token);
    owner
        .set_org_settings(OrgSettingsView {
            admins_may_open_shells: true,
        })
        .await
        .unwrap();
    let ada = user_with_token(t, "ada", Role::Admin).await;
    let bob = user_with_token(t, "bob", Role::Member).await;
    // Bob's own workspace, running on the cluster.
    let out = lapdev_as(
        t,
        &bob,
        &[
            "workspace",
            "create",
            "bobs",
            "--image",
            "ubuntu",
            "--cpu",
            "100m",
            "--memory",
            "128Mi",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bobs: Uuid = v["id"].as_str().unwrap().parse().unwrap();
    eventually("the manager got bob's create", || {
        let fake = e.fake.clone();
        async move { fake.has(bobs).is_some() }
    })
    .await;
    e.manager_api
        .report_workspace_status(observation(bobs, WorkspaceStatus::Running))
        .await
        .unwrap();

    let mut ada_shell = live_cat(cat_request(t, &ada)).await;
    let mut owner_shell = live_cat(cat_request(t, &t.admin_token)).await;
    assert_eq!(t.server.state.auth.live.count(), 2);

    let out = lapdev(t, &["user", "disable", "ada"]).await;
    assert!(out.status.success(), "{out:?}");
    let (code, reason) = closed(&mut ada_shell).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("disabled"), "{reason}");
    // Only hers ended; her token is refused from now on.
    still_echoes(&mut owner_shell).await;
    match session(t, &ada, "box/exec?cmd=true").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a disabled user opened a session: {:?}", other.map(|_| ())),
    }

    // Disabling bob stops his running workspace (kept), not the owner's.
    let out = lapdev(t, &["user", "disable", "bob"]).await;
    assert!(out.status.success(), "{out:?}");
    eventually("bob's workspace stopped", || {
        let fake = e.fake.clone();
        async move { fake.has(bobs) == Some(WorkspaceStatus::Stopped) }
    })
    .await;
    let got = lapdev(t, &["workspace", "get", "bobs", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(v["desired_state"], "stopped", "{v}");
    let got = lapdev(t, &["workspace", "get", "box", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(v["desired_state"], "running", "{v}");
    still_echoes(&mut owner_shell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoting_an_admin_or_disallowing_admin_shells_ends_their_sessions_in_others_workspaces() {
    let e = env().await;
    let t = &e.t;
    let owner = people_api(t, &t.admin_token);
    owner
        .set_org_settings(OrgSettingsView {
            admins_may_open_shells: true,
        })
        .await
        .unwrap();
    let ada = user_with_token(t, "ada", Role::Admin).await;
    let carl = user_with_token(t, "carl", Role::Admin).await;
    // `box` is the owner's: ada and carl are in another user's workspace.
    let mut ada_shell = live_cat(cat_request(t, &ada)).await;
    let mut carl_shell = live_cat(cat_request(t, &carl)).await;
    let mut owner_shell = live_cat(cat_request(t, &t.admin_token)).await;

    owner
        .set_user_role("ada".into(), Role::Member)
        .await
        .unwrap();
    let (code, reason) = closed(&mut ada_shell).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("role"), "{reason}");
    still_echoes(&mut carl_shell).await;
    still_echoes(&mut owner_shell).await;

    owner
        .set_org_settings(OrgSettingsView {
            admins_may_open_shells: false,
        })
        .await
        .unwrap();
    let (code, reason) = closed(&mut carl_shell).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("organisation"), "{reason}");
    // The owner's session in their own workspace stays.
    still_echoes(&mut owner_shell).await;
    assert_eq!(t.server.state.auth.live.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_or_browser_session_ends_only_the_sessions_it_opened() {
    let e = env().await;
    let t = &e.t;
    people_api(t, &t.admin_token)
        .set_org_settings(OrgSettingsView {
            admins_may_open_shells: true,
        })
        .await
        .unwrap();
    let ada1 = user_with_token(t, "ada", Role::Admin).await;
    let ada2 = people_api(t, &ada1)
        .create_token("second".into(), None)
        .await
        .unwrap()
        .token_secret;
    let mut by_first = live_cat(cat_request(t, &ada1)).await;
    let mut by_second = live_cat(cat_request(t, &ada2)).await;

    // A browser session of ada's: the upgrade needs our Origin.
    let client: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let signed_in = client
        .request(
            http::Request::post(format!("{}/auth/session", t.base()))
                .header("content-type", "application/json")
                .header("origin", ORIGIN)
                .header("x-lapdev-csrf", "1")
                .body(Full::new(Bytes::from_static(
                    br#"{"user":"ada","password":"ada-password"}"#,
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 200);
    let cookie = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-lapdev_session="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let browser_request = |origin: Option<&str>| {
        let mut req = format!("ws://{}/api/v1/workspaces/box/exec?cmd=cat&stdin=1", t.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        req
    };
    match tokio_tungstenite::connect_async(browser_request(None)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a cookie upgrade without Origin: {:?}", other.map(|_| ())),
    }
    let mut by_browser = live_cat(browser_request(Some(ORIGIN))).await;

    // `lapdev session list` shows both kinds, which one holds what open.
    let out = lapdev_as(t, &ada2, &["session", "list", "-o", "json"]).await;
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    let browser = sessions
        .iter()
        .find(|s| s["kind"] == "browser")
        .expect("the browser session is listed");
    assert_eq!(browser["open_sessions"], 1, "{list}");
    let tokens: Vec<_> = sessions.iter().filter(|s| s["kind"] == "token").collect();
    assert_eq!(tokens.len(), 2, "{list}");
    let current = tokens
        .iter()
        .find(|s| s["current"] == true)
        .expect("this call's token");
    assert_eq!(current["name"], "second");
    assert!(current["last_used_at"].is_string(), "{list}");
    let first = tokens.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(first["open_sessions"], 1, "{list}");

    // A member cannot see or revoke ada's.
    let mel = user_with_token(t, "mel", Role::Member).await;
    let out = lapdev_as(
        t,
        &mel,
        &["session", "revoke", first["id"].as_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no session or token"),
        "{out:?}"
    );
    let out = lapdev_as(t, &mel, &["session", "list", "--user", "ada"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("owner"),
        "{out:?}"
    );

    // Ada revokes her first token: only its session ends.
    let out = lapdev_as(
        t,
        &ada2,
        &["session", "revoke", first["id"].as_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let (code, reason) = closed(&mut by_first).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("personal access token"), "{reason}");
    still_echoes(&mut by_second).await;
    still_echoes(&mut by_browser).await;

    // The owner revokes ada's browser session: only its session ends.
    let out = lapdev(t, &["session", "revoke", browser["id"].as_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    let (code, reason) = closed(&mut by_browser).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("browser session"), "{reason}");
    still_echoes(&mut by_second).await;

    // Both revocations are in the audit log.
    let audit = lapdev(t, &["audit", "list", "-o", "json"]).await;
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains("token.revoke") && text.contains("session.revoke"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_cluster_token_ends_open_sessions_with_the_reason() {
    let e = env_with(true).await;
    e.double
        .register_pod_port(NAMESPACE, &e.pod, 8080, echo_server().await);
    let spawn = |args: &[&str]| spawn_piped(&e.t, args);
    // An open exec session and an open forwarded connection, each shown live
    // by a round trip.
    let mut exec = spawn(&["workspace", "exec", "-i", "box", "--", "cat"]);
    let mut proxy = spawn(&["workspace", "proxy", "box", "8080"]);
    let mut inputs = Vec::new();
    for child in [&mut exec, &mut proxy] {
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        stdin.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(60), stdout.read_exact(&mut back))
            .await
            .expect("the session answered")
            .unwrap();
        assert_eq!(&back, b"ping");
        // Kept open: the sessions end only because of the revocation.
        inputs.push((stdin, stdout));
    }

    let out = lapdev(
        &e.t,
        &["cluster", "token", "revoke", "dev", &e.token_id.to_string()],
    )
    .await;
    assert!(out.status.success(), "{out:?}");

    for (what, child) in [("exec", exec), ("proxy", proxy)] {
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{what} still runs after the revocation"))
            .unwrap();
        assert!(!out.status.success(), "{what}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim_end(),
            "error: the cluster's token was revoked",
            "{what}"
        );
    }
    drop(inputs);
    // The revoked token's tunnel is gone, so a new session is refused with
    // a reason, not a hang.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        lapdev(&e.t, &["workspace", "exec", "box", "--", "true"]),
    )
    .await
    .expect("no hang");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: "),
        "{out:?}"
    );
}
