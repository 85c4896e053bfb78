//! Benchmark: getting into a workspace (issue 14), one run, side by side, in
//! four parts. Each stack is real processes: the `lapdev-kube-double` binary
//! (with `--allow-local-exec --forward-ports-to 127.0.0.1`, so a pod's port P
//! is this host's port P), the `lapdev-kube-manager` binary on a cluster token,
//! the `lapdev` CLI, and the server.
//!
//! 1. **Port-forward throughput**: 128 MiB pushed through 1 connection and
//!    through 8 connections (16 MiB each) into a loopback sink that counts
//!    bytes, the CLI path (`lapdev workspace port-forward` → server → tunnel →
//!    manager → double → sink) against kube's own `Api::portforward` straight
//!    to the same double. Floor: 0.4× kube's MB/s.
//! 2. **Interactive latency**: one byte echoed by `stty raw -echo; exec cat`
//!    in a TTY session, through the server's exec endpoint (a WebSocket, as the
//!    CLI's `shell` opens it) against kube's `Api::exec` with a TTY straight to
//!    the double; samples interleaved. Floor: p50 added ≤ 1 ms.
//! 3. **Memory per idle forwarded connection**: 200 connections opened through
//!    the CLI's listener and left idle; resident memory (`VmRSS`) of the
//!    server, the manager, the double and the CLI before and after, ÷ 200.
//!    Floor: the server ≤ 64 KiB. Parts 1–3 run the `lapdev-server` binary.
//! 4. **Fairness on a constrained link**: the manager dials the server (here in
//!    process, to call its manager clients) through a user-space link written
//!    for the bench: 20 MB/s each way, 10 ms each way (20 ms RTT), shallow
//!    socket buffers. Four port-forwards saturate it (pushing to the sink, so
//!    the server → manager direction) while a tunnel ping (an HTTP/2 request
//!    to an unrouted path, answered 404 by the manager's router: the smallest
//!    round trip the tunnel carries) and a `get_workspace_status` call are
//!    timed every 20 ms for 10 s. Bound on their p99: RTT + the receive windows
//!    in flight ÷ bandwidth + 10 ms, the windows being
//!    `min(4 × stream window, connection window)` of `StreamLimits::default()`.
//!
//! Run (the first command builds the manager's and the double's binaries with
//! the bench in one feature resolution, so nothing is built twice; cargo
//! builds this package's own `lapdev-server` and `lapdev` for the bench):
//!
//! ```sh
//! cargo build --profile bench -p lapdev-server -p lapdev-kube-manager -p lapdev-kube-double \
//!     -p lapdev-hrpc --bins --bench access_cost --bench tunnel
//! target/release/deps/access_cost-<hash> --bench   # the executable the build printed
//! ```
//!
//! (`cargo bench -p lapdev-server --bench access_cost` works too once the two
//! binaries exist, at the price of its own feature resolution.)
//! `LAPDEV_BENCH_BIN_DIR` names where the manager and double binaries are
//! (default: next to this bench's executable). Knobs: `BENCH_MIB` (128),
//! `BENCH_ECHOES` (1000), `BENCH_IDLE` (200), `BENCH_FAIR_SECS` (10);
//! `BENCH_ONLY=fairness` runs part 4 alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_hrpc::{Client, Transport as _};
use lapdev_kube_rpc::stream::{Frame, FrameDecoder};
use lapdev_server::admin::api::AdminRpcClient;
use lapdev_server::admin::workspaces::{NewWorkspaceRequest, WorkspaceRpcClient};
use lapdev_server::config::{LogFormat, ServerConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use uuid::Uuid;

const NAMESPACE: &str = "lapdev-workspaces";
const MIB: usize = 1024 * 1024;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the manager's and the double's binaries are: `LAPDEV_BENCH_BIN_DIR`
/// (relative to the workspace root, or absolute), else next to this bench's
/// own executable (`target/release` for `cargo bench`).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAPDEV_BENCH_BIN_DIR") {
        // Relative to the workspace root (cargo runs benches in the package's directory).
        return Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    }
    // target/<profile>/deps/access_cost-… → target/<profile>
    let exe = std::env::current_exe().expect("the bench knows its path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the bench runs from a target dir")
        .to_owned()
}

/// A binary of another workspace package, built beforehand in the same
/// cargo invocation as this bench (see the module docs): building it from
/// here would resolve that package's features alone and rebuild half the
/// workspace in release.
fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with this bench in one command (module docs), or set LAPDEV_BENCH_BIN_DIR",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn rpc_client(base: &str, token: &str) -> Client {
    Client::http(&format!("{base}/rpc"))
        .expect("a client")
        .with_timeout(Duration::from_secs(60))
        .with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header"),
        )
}

/// Reads `child`'s stdout lines until one holds `marker`; returns it.
async fn line_with(child: &mut Child, marker: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if line.contains(marker) {
                return line;
            }
        }
        panic!("no line with {marker:?}");
    })
    .await
    .expect("the process started in time");
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// The double's process and an admin client for it.
struct Double {
    child: Child,
    kubeconfig: PathBuf,
    client: kube::Client,
}

async fn start_double(dir: &Path) -> Double {
    let bin = binary("lapdev-kube-double");
    let kubeconfig = dir.join("double.kubeconfig");
    let mut child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .args([
            "--nodes",
            "1",
            "--kubelet-delay-ms",
            "100",
            "--allow-local-exec",
            "--forward-ports-to",
            "127.0.0.1",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the double starts");
    line_with(&mut child, "serving on").await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("the kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("a kube config");
    let client = kube::Client::try_from(config).expect("a kube client");
    Double {
        child,
        kubeconfig,
        client,
    }
}

/// A registered cluster with its manager, and a running workspace `w`.
struct Stack {
    base: String,
    token: String,
    double: Double,
    manager: Child,
    cluster_id: Uuid,
    workspace_id: Uuid,
    pod: String,
}

async fn start_stack(base: String, token: String, manager_url: &str, dir: &Path) -> Stack {
    let double = start_double(dir).await;
    let admin = AdminRpcClient::new(rpc_client(&base, &token));
    let workspaces = WorkspaceRpcClient::new(rpc_client(&base, &token));
    let created = admin
        .create_cluster("bench".into(), None, None, None)
        .await
        .expect("a cluster");
    let manager = Command::new(binary("lapdev-kube-manager"))
        .args(["--listen", "127.0.0.1:0"])
        .env("LAPDEV_SERVER_URL", manager_url)
        .env("LAPDEV_KUBE_CLUSTER_TOKEN", &created.token_secret)
        .env("LAPDEV_WORKSPACE_NAMESPACE", NAMESPACE)
        .env("LAPDEV_MAX_FORWARDED_CONNECTIONS", "1024")
        .env("KUBECONFIG", &double.kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the manager starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = admin
            .get_cluster("bench".into())
            .await
            .expect("the cluster");
        if c.status == ClusterStatus::Connected && c.node_count == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the manager never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ws = workspaces
        .create_workspace(NewWorkspaceRequest {
            name: "w".into(),
            image: "ubuntu".into(),
            cpu_millis: 100,
            memory_bytes: 128 << 20,
            storage_bytes: 1 << 30,
            cluster: Some("bench".into()),
            region: None,
        })
        .await
        .expect("a workspace");
    loop {
        let got = workspaces
            .get_workspace("w".into())
            .await
            .expect("the workspace");
        if got.status == WorkspaceStatus::Running {
            break;
        }
        assert!(Instant::now() < deadline, "the workspace never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods: Api<Pod> = Api::namespaced(double.client.clone(), NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels(&format!("lapdev.dev/workspace-id={}", ws.id)))
        .await
        .expect("the pods");
    let pod = list.items[0].metadata.name.clone().expect("a pod name");
    Stack {
        base,
        token,
        double,
        manager,
        cluster_id: created.cluster.id,
        workspace_id: ws.id,
        pod,
    }
}

/// `lapdev workspace port-forward w 0:PORT`: the child and its local address.
async fn cli_forward(stack: &Stack, port: u16) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(["workspace", "port-forward", "w", &format!("0:{port}")])
        .env("LAPDEV_SERVER", &stack.base)
        .env("LAPDEV_TOKEN", &stack.token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the CLI starts");
    let line = line_with(&mut child, "Forwarding from ").await;
    let addr = line
        .strip_prefix("Forwarding from ")
        .and_then(|r| r.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (child, addr)
}

/// A loopback sink: counts what every connection sends, answers nothing.
#[derive(Clone)]
struct Sink {
    port: u16,
    received: Arc<AtomicU64>,
    accepted: Arc<AtomicUsize>,
}

async fn start_sink() -> Sink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a sink");
    let sink = Sink {
        port: listener.local_addr().expect("an address").port(),
        received: Arc::default(),
        accepted: Arc::default(),
    };
    let s = sink.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::Relaxed);
            let received = s.received.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    sink
}

impl Sink {
    async fn wait_for(&self, target: u64) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.received.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the sink never got everything");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

static CHUNK: [u8; 64 * 1024] = [0x5a; 64 * 1024];

async fn write_n(w: &mut (impl tokio::io::AsyncWrite + Unpin), bytes: usize) {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK.len());
        w.write_all(&CHUNK[..n]).await.expect("a write");
        left -= n;
    }
    w.flush().await.expect("a flush");
}

/// MB/s of `conns` connections pushing `total` bytes together into the sink,
/// through the CLI's listener or kube's port-forward.
async fn throughput(
    sink: &Sink,
    via: Option<SocketAddr>,
    kube: &Api<Pod>,
    pod: &str,
    conns: usize,
    total: usize,
) -> f64 {
    let each = total / conns;
    let start_count = sink.received.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let kube = kube.clone();
        let pod = pod.to_owned();
        let port = sink.port;
        tasks.push(tokio::spawn(async move {
            match via {
                Some(addr) => {
                    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    conn.set_nodelay(true).expect("nodelay");
                    write_n(&mut conn, each).await;
                    Box::new(conn) as Box<dyn std::any::Any + Send>
                }
                None => {
                    let mut pf = kube.portforward(&pod, &[port]).await.expect("portforward");
                    let mut stream = pf.take_stream(port).expect("a stream");
                    write_n(&mut stream, each).await;
                    Box::new((pf, stream)) as Box<dyn std::any::Any + Send>
                }
            }
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.expect("a writer"));
    }
    sink.wait_for(start_count + (each * conns) as u64).await;
    let secs = started.elapsed().as_secs_f64();
    drop(held);
    (each * conns) as f64 / 1e6 / secs
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

const ECHO_CMD: &str = "stty raw -echo; echo ready; exec cat";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A TTY exec session through the server's endpoint, past its `ready`.
async fn cli_tty(stack: &Stack) -> (Ws, FrameDecoder) {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("cmd", "sh")
        .append_pair("cmd", "-c")
        .append_pair("cmd", ECHO_CMD)
        .append_pair("tty", "1")
        .append_pair("stdin", "1")
        .append_pair("cols", "80")
        .append_pair("rows", "24");
    let url = format!(
        "{}/api/v1/workspaces/w/exec?{}",
        stack.base.replace("http://", "ws://"),
        q.finish()
    );
    let mut req = url.into_client_request().expect("a request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", stack.token).parse().expect("a header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("a session");
    let mut decoder = FrameDecoder::default();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("ready") {
        seen.extend(cli_read(&mut ws, &mut decoder).await);
    }
    (ws, decoder)
}

async fn cli_read(ws: &mut Ws, decoder: &mut FrameDecoder) -> Vec<u8> {
    loop {
        if let Some(f) = decoder.next_frame().expect("a frame") {
            match f {
                Frame::Stdout(d) | Frame::Stderr(d) => return d.to_vec(),
                other => panic!("the session ended: {other:?}"),
            }
        }
        match ws.next().await.expect("open").expect("a message") {
            Message::Binary(b) => decoder.push(&b),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

async fn interactive(stack: &Stack, samples: usize) {
    let (mut ws, mut decoder) = cli_tty(stack).await;
    let pods: Api<Pod> = Api::namespaced(stack.double.client.clone(), NAMESPACE);
    let mut attached = pods
        .exec(
            &stack.pod,
            ["sh", "-c", ECHO_CMD],
            &AttachParams::interactive_tty(),
        )
        .await
        .expect("kube exec");
    let mut k_in = attached.stdin().expect("stdin");
    let mut k_out = attached.stdout().expect("stdout");
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let n = k_out.read(&mut buf).await.expect("a read");
        assert!(n > 0, "kube exec ended");
        seen.extend_from_slice(&buf[..n]);
    }
    let (mut cli, mut kube) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let t = Instant::now();
        ws.send(Message::Binary(
            Frame::Stdin(Bytes::from_static(b"x")).to_bytes(),
        ))
        .await
        .expect("a send");
        let mut got = 0;
        while got < 1 {
            got += cli_read(&mut ws, &mut decoder).await.len();
        }
        cli.push(t.elapsed());
        let t = Instant::now();
        k_in.write_all(b"x").await.expect("a write");
        k_in.flush().await.expect("a flush");
        let n = k_out.read(&mut buf).await.expect("a read");
        assert!(n > 0);
        kube.push(t.elapsed());
    }
    cli.sort();
    kube.sort();
    let (c50, c99, k50, k99) = (
        percentile(&cli, 0.5),
        percentile(&cli, 0.99),
        percentile(&kube, 0.5),
        percentile(&kube, 0.99),
    );
    println!(
        "interactive latency, one byte echoed in a TTY ({samples} samples each, interleaved):"
    );
    println!("  path                         p50 ms   p99 ms");
    println!(
        "  server+tunnel+manager (WS) {:>8.3} {:>8.3}",
        ms(c50),
        ms(c99)
    );
    println!(
        "  kube exec to the double    {:>8.3} {:>8.3}",
        ms(k50),
        ms(k99)
    );
    println!(
        "  added by Lapdev: p50 {:.3} ms (floor ≤ 1 ms: {}), p99 {:.3} ms",
        ms(c50) - ms(k50),
        if ms(c50) - ms(k50) <= 1.0 {
            "met"
        } else {
            "MISSED"
        },
        ms(c99) - ms(k99)
    );
}

/// Opens `n` idle connections through the CLI's listener and reports each
/// process's resident memory per connection.
async fn idle_memory(sink: &Sink, via: SocketAddr, n: usize, procs: &[(&str, u32)]) {
    let before: Vec<u64> = procs.iter().map(|(_, pid)| rss(*pid)).collect();
    let accepted = sink.accepted.load(Ordering::Relaxed);
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(tokio::net::TcpStream::connect(via).await.expect("connect"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.accepted.load(Ordering::Relaxed) < accepted + n {
        assert!(
            Instant::now() < deadline,
            "the connections never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the last sessions settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("memory per idle forwarded connection ({n} connections, VmRSS after − before):");
    for ((name, pid), b) in procs.iter().zip(before) {
        let after = rss(*pid);
        let per = (after as f64 - b as f64) / n as f64 / 1024.0;
        let floor = if *name == "server" {
            format!(
                " (floor ≤ 64 KiB: {})",
                if per <= 64.0 { "met" } else { "MISSED" }
            )
        } else {
            String::new()
        };
        println!(
            "  {name:<8} {:>8.1} MiB → {:>8.1} MiB: {per:>7.1} KiB per connection{floor}",
            b as f64 / MIB as f64,
            after as f64 / MIB as f64
        );
    }
    drop(conns);
}

/// A user-space link to `target`: `rate` bytes/s and `one_way` delay in each
/// direction, with shallow socket buffers so the queue is the link's.
async fn shaped_link(target: SocketAddr, rate: f64, one_way: Duration) -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let listener = socket.listen(64).expect("listen");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let out = tokio::net::TcpSocket::new_v4().expect("a socket");
                out.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
                out.set_send_buffer_size(64 * 1024).expect("sndbuf");
                let Ok(outbound) = out.connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(shaped_pipe(ir, ow, rate, one_way));
                tokio::spawn(shaped_pipe(or, iw, rate, one_way));
            });
        }
    });
    addr
}

/// One direction of the link: each chunk is serialised at `rate` (reading
/// waits until the previous one is on the wire), then delivered `one_way`
/// later.
///
/// The serialisation clock (`free_at`) runs on from the previous chunk while
/// the link is busy: tokio's timer fires up to a millisecond late, and a
/// 16 KiB chunk takes 0.8 ms at 20 MB/s, so restarting the clock at "now"
/// after each sleep would lose most of a chunk's time on every chunk (the
/// link then delivered 8 MB/s, not 20). Only a link idle for longer than
/// `IDLE` restarts it, so a burst after a pause is not sent faster than `rate`.
async fn shaped_pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    rate: f64,
    one_way: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Bytes)>(4096);
    tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    const IDLE: Duration = Duration::from_millis(2);
    let mut free_at = tokio::time::Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = tokio::time::Instant::now();
        let start = if now > free_at + IDLE { now } else { free_at };
        free_at = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(free_at).await;
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        if tx.send((free_at + one_way, chunk)).await.is_err() {
            return;
        }
    }
}

async fn fairness(secs: u64) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = lapdev_server::Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir: dir.path().join("data"),
        database_url: None,
        public_url: None,
        public_ca_file: None,
        log_format: LogFormat::Text,
        tls_cert: None,
        tls_key: None,
        jwt_secret: None,
        jwt_secret_file: None,
        encryption_key: None,
        manager_image: "ghcr.io/lapdev/lapdev-kube-manager:bench".into(),
        heartbeat_interval_secs: 10,
        admin_token_days: 1,
        max_token_days: 365,
        trusted_proxies: Vec::new(),
    })
    .await
    .expect("the server starts");
    let base = format!("http://{}", server.local_addr);
    let token = server.first_admin_token.clone().expect("an admin token");
    let rate = 20e6;
    let one_way = Duration::from_millis(10);
    let link = shaped_link(server.local_addr, rate, one_way).await;
    let stack = start_stack(base, token, &format!("http://{link}"), dir.path()).await;
    let sink = start_sink().await;
    let (_cli, via) = cli_forward(&stack, sink.port).await;
    let kube = &server.state.kube;
    let manager = kube
        .manager_client(stack.cluster_id)
        .expect("a manager client");
    let tunnel = kube.tunnel(stack.cluster_id).expect("the tunnel");

    let stop = Arc::new(AtomicBool::new(false));
    let mut pushers = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        pushers.push(tokio::spawn(async move {
            let mut conn = tokio::net::TcpStream::connect(via).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&CHUNK).await.expect("a write");
            }
            conn
        }));
    }
    // Saturated before timing starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let timed_from = sink.received.load(Ordering::Relaxed);
    let started = Instant::now();
    let (mut pings, mut statuses) = (Vec::new(), Vec::new());
    while started.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        let response = tunnel
            .send(
                http::Request::post("http://manager.tunnel/_bench/ping")
                    .body(Bytes::new())
                    .expect("a request"),
            )
            .await
            .expect("a ping");
        assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
        pings.push(t.elapsed());
        let t = Instant::now();
        manager
            .get_workspace_status(stack.workspace_id)
            .await
            .expect("a status");
        statuses.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = sink.received.load(Ordering::Relaxed) - timed_from;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for p in pushers {
        drop(p.await);
    }
    let limits = lapdev_hrpc::tunnel::StreamLimits::default();
    let windows = (4 * limits.stream_window_bytes).min(limits.connection_window_bytes) as f64;
    let bound = 2.0 * ms(one_way) + windows / rate * 1e3 + 10.0;
    println!(
        "fairness: link {:.0} MB/s each way, RTT {:.0} ms; 4 port-forwards moved {:.1} MB/s while timed ({:.0} s)",
        rate / 1e6,
        2.0 * ms(one_way),
        moved as f64 / 1e6 / elapsed,
        elapsed
    );
    println!(
        "  bound: RTT {:.0} ms + windows in flight min(4 × {} KiB, {} KiB) = {:.0} KiB ÷ {:.0} MB/s = {:.1} ms + 10 ms = {:.1} ms",
        2.0 * ms(one_way),
        limits.stream_window_bytes / 1024,
        limits.connection_window_bytes / 1024,
        windows / 1024.0,
        rate / 1e6,
        windows / rate * 1e3,
        bound
    );
    for (name, samples) in [
        ("tunnel ping", &mut pings),
        ("get_workspace_status", &mut statuses),
    ] {
        samples.sort();
        let p99 = ms(percentile(samples, 0.99));
        println!(
            "  {name:<21} n={:>4} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms ({})",
            samples.len(),
            ms(percentile(samples, 0.5)),
            p99,
            ms(*samples.last().expect("samples")),
            if p99 <= bound { "within" } else { "OVER" }
        );
    }
    drop(stack);
    server.shutdown();
}

async fn main_async() {
    let total = env_or("BENCH_MIB", 128usize) * MIB;
    let echoes = env_or("BENCH_ECHOES", 1000usize);
    let idle = env_or("BENCH_IDLE", 200usize);
    let fair_secs = env_or("BENCH_FAIR_SECS", 10u64);
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "fairness") {
        fairness(fair_secs).await;
        return;
    }

    // Parts 1–3: the server binary.
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_lapdev-server"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let line = line_with(&mut server, "listening on").await;
    let base = line
        .rsplit(' ')
        .next()
        .expect("an address")
        .trim()
        .to_owned();
    let token = std::fs::read_to_string(dir.path().join("data/admin-token"))
        .expect("the admin token")
        .trim()
        .to_owned();
    let stack = start_stack(base.clone(), token, &base, dir.path()).await;
    let sink = start_sink().await;
    let (cli, via) = cli_forward(&stack, sink.port).await;
    let pods: Api<Pod> = Api::namespaced(stack.double.client.clone(), NAMESPACE);

    println!(
        "port-forward throughput, {} MiB in total into a loopback sink:",
        total / MIB
    );
    println!("  conns   CLI path MB/s   kube MB/s   ratio (floor 0.4)");
    for conns in [1usize, 8] {
        // Warm both paths once (connections, allocator) with 8 MiB.
        let _ = throughput(&sink, Some(via), &pods, &stack.pod, conns, 8 * MIB).await;
        let _ = throughput(&sink, None, &pods, &stack.pod, conns, 8 * MIB).await;
        let lapdev = throughput(&sink, Some(via), &pods, &stack.pod, conns, total).await;
        let kube = throughput(&sink, None, &pods, &stack.pod, conns, total).await;
        println!(
            "  {conns:>5}   {lapdev:>13.1}   {kube:>9.1}   {:.2}× ({})",
            lapdev / kube,
            if lapdev / kube >= 0.4 {
                "met"
            } else {
                "MISSED"
            }
        );
    }

    interactive(&stack, echoes).await;

    let procs = [
        ("server", server.id().expect("a pid")),
        ("manager", stack.manager.id().expect("a pid")),
        ("double", stack.double.child.id().expect("a pid")),
        ("CLI", cli.id().expect("a pid")),
    ];
    idle_memory(&sink, via, idle, &procs).await;
    drop(cli);
    drop(stack);
    drop(server);

    // Part 4: the server in process, the manager behind the link.
    fairness(fair_secs).await;
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(main_async());
}
