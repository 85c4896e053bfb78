//! Routing between replicas: two in-process servers on one PostgreSQL
//! database; the cluster's tunnel (a stand-in manager) is on A, the calls are
//! made on B and forwarded to A over A's internal endpoint.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use common::{FakeManager, TestServer};
use http_body_util::BodyExt as _;
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_conductor::ManagerConnector as _;
use lapdev_db::test_support::{TestDatabase, expire_replica_lease};
use lapdev_hrpc::Transport as _;
use lapdev_hrpc::tunnel::{TunnelClientConfig, TunnelSession};
use lapdev_kube_rpc::stream::{PORTFORWARD_PATH, STREAM_REQUEST_HEADER};
use lapdev_kube_rpc::{KubeManagerRpcServer, ManagerHealth};
use lapdev_server::Server;
use lapdev_server::admin::workspaces::{NewWorkspaceRequest, WorkspaceRpcClient};
use lapdev_server::routing::auth::{MAC_HEADER, SENDER_HEADER, Signed, TIME_HEADER};
use lapdev_server::routing::{RoutedConnector, Routing};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

struct Env {
    a: TestServer,
    b: TestServer,
    cluster_id: Uuid,
    token: String,
    fake: Arc<FakeManager>,
    tunnel: tokio::task::JoinHandle<()>,
}

fn routing(t: &TestServer) -> Routing {
    t.server.state.routing.clone().expect("PostgreSQL routes")
}

/// A port-forward route that echoes its request body as its response body.
fn echo_router() -> axum::Router {
    axum::Router::new().route(
        PORTFORWARD_PATH,
        axum::routing::post(|request: axum::extract::Request| async move {
            http::Response::new(request.into_body())
        }),
    )
}

/// A stand-in manager: the fake's RPCs plus `streams` (its stream routes).
fn manager_router(fake: Arc<FakeManager>, streams: axum::Router) -> axum::Router {
    KubeManagerRpcServer::from_arc(fake)
        .into_router()
        .merge(streams)
}

async fn dial(t: &TestServer, token: &str, router: axum::Router) -> TunnelSession {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-lapdev-cluster-token", token.parse().unwrap());
    lapdev_hrpc::tunnel::connect(
        &format!("{}/rpc/_tunnel", t.base()),
        headers,
        router,
        TunnelClientConfig::default(),
    )
    .await
    .unwrap()
}

/// A and B on one database; a connected cluster whose tunnel is on A (its
/// manager echoes port-forward streams); B knows A owns it.
async fn env() -> Env {
    env_with(echo_router()).await
}

/// [`env`] whose manager serves `streams`.
async fn env_with(streams: axum::Router) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let database = TestDatabase::postgres().await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = common::config(
        data_dir.path().join("data"),
        Some(database.url().to_owned()),
    );
    let server = Server::start(config.clone()).await.unwrap();
    let a = TestServer {
        addr: server.local_addr,
        admin_token: server.first_admin_token.clone().unwrap(),
        server,
        data_dir,
        database: Some(database),
    };
    let server = Server::start(config).await.unwrap();
    let b = TestServer {
        addr: server.local_addr,
        server,
        admin_token: a.admin_token.clone(),
        data_dir: tempfile::tempdir().unwrap(),
        database: None,
    };
    let created = a
        .admin()
        .create_cluster("c1".into(), None, None, None)
        .await
        .unwrap();
    let cluster_id = created.cluster.id;
    let fake = Arc::new(FakeManager::default());
    let session = dial(
        &a,
        &created.token_secret,
        manager_router(fake.clone(), streams),
    )
    .await;
    let tunnel = tokio::spawn(async move {
        let _ = session.run().await;
    });
    // Reports count once A owns the cluster and holds the tunnel.
    common::eventually("A claims the cluster", || {
        let kube = a.server.state.kube.clone();
        async move { kube.owner_claim(cluster_id).is_some() && kube.is_tunnel_up(cluster_id) }
    })
    .await;
    let manager_api = a.cluster_client(&created.token_secret);
    manager_api
        .report_cluster_info(common::sample_info())
        .await
        .unwrap();
    // Heartbeats at a manager's pace until the cluster shows connected.
    let admin = a.admin();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        manager_api.heartbeat(ManagerHealth::Ok).await.unwrap();
        let status = admin.get_cluster("c1".into()).await.unwrap().status;
        if status == ClusterStatus::Connected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster is {status:?}, not connected, after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let on_b = routing(&b);
    common::eventually("B knows A owns the cluster", || {
        let on_b = on_b.clone();
        async move { on_b.remote(cluster_id).is_some() }
    })
    .await;
    assert!(!b.server.state.kube.is_tunnel_up(cluster_id));
    assert_eq!(
        on_b.remote(cluster_id).unwrap().replica_id,
        routing(&a).replica_id()
    );
    Env {
        a,
        b,
        cluster_id,
        token: created.token_secret,
        fake,
        tunnel,
    }
}

/// A caller on `on`'s tunnels with replica id `id`, whose owners cache is
/// filled once, now, and never refreshed by itself: it keeps the owner it
/// read until a forward reads it again.
async fn stale_caller(on: &TestServer, id: Uuid) -> Routing {
    let owners = lapdev_server::routing::owners::Owners::new(on.server.state.db.clone());
    owners.refresh_all().await.unwrap();
    Routing::new(
        on.server.state.kube.clone(),
        owners,
        routing(on).key().clone(),
        id,
    )
}

/// The manager's newer tunnel (a second token) opens on B, and A closes its
/// own: returns B's manager stand-in and its session.
async fn tunnel_moves_to_b(e: &Env) -> (Arc<FakeManager>, tokio::task::JoinHandle<()>) {
    let token =
        e.a.admin()
            .create_cluster_token("c1".into(), "second".into(), None)
            .await
            .unwrap();
    let fake_b = Arc::new(FakeManager::default());
    let session = dial(
        &e.b,
        &token.token_secret,
        manager_router(fake_b.clone(), echo_router()),
    )
    .await;
    let on_b = tokio::spawn(async move {
        let _ = session.run().await;
    });
    common::eventually("B owns the cluster and A let go", || {
        let (a, b) = (e.a.server.state.kube.clone(), e.b.server.state.kube.clone());
        let cluster_id = e.cluster_id;
        async move {
            b.owner_claim(cluster_id).is_some()
                && b.is_tunnel_up(cluster_id)
                && !a.is_tunnel_up(cluster_id)
        }
    })
    .await;
    (fake_b, on_b)
}

/// Creates the workspace `box` through `t`'s public API. `t` learns the
/// cluster's status (written by its owner on another replica) through
/// `NOTIFY`, so its placement may briefly still see it pending: placement's
/// "no cluster" refusal is retried for a bounded time.
async fn create_on(t: &TestServer) -> lapdev_server::admin::workspaces::WorkspaceView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let created = workspaces(t)
            .create_workspace(NewWorkspaceRequest {
                name: "box".into(),
                image: "ubuntu".into(),
                cpu_millis: 100,
                memory_bytes: 128 << 20,
                storage_bytes: 1 << 30,
                cluster: None,
                region: None,
            })
            .await;
        match created {
            Err(lapdev_hrpc::CallError::Service(e))
                if e.code == lapdev_hrpc::Code::ResourceExhausted
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.unwrap(),
        }
    }
}

fn workspaces(t: &TestServer) -> WorkspaceRpcClient {
    WorkspaceRpcClient::new(
        lapdev_hrpc::Client::http(&format!("{}/rpc", t.base()))
            .unwrap()
            .with_header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", t.admin_token).parse().unwrap(),
            ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_created_and_stopped_on_b_reaches_the_manager_whose_tunnel_is_on_a() {
    let e = env().await;
    assert!(
        RoutedConnector(routing(&e.b)).is_connected(e.cluster_id),
        "B's placement sees the cluster as connected"
    );
    let served = routing(&e.a).served().calls();
    let ws = create_on(&e.b).await;
    common::eventually("the manager got the create", || {
        let fake = e.fake.clone();
        async move { fake.has(ws.id) == Some(WorkspaceStatus::Creating) }
    })
    .await;
    // Either replica's reconciler may have driven that create (B forwards it,
    // A, woken by the change, uses its own tunnel); a manager call made on B
    // always goes through A.
    RoutedConnector(routing(&e.b))
        .manager(e.cluster_id)
        .expect("routed to A")
        .get_cluster_info()
        .await
        .unwrap();
    assert!(
        routing(&e.a).served().calls() > served,
        "B's call was forwarded to A"
    );
    // Both sides count it (one process: one recorder for A and B).
    let metrics = raw_get(e.b.addr, "/metrics").await;
    for series in [
        r#"lapdev_forwarded_total{kind="call",outcome="ok"}"#,
        r#"lapdev_internal_requests_total{kind="call",outcome="ok"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing in\n{metrics}");
    }
    workspaces(&e.b).stop_workspace("box".into()).await.unwrap();
    common::eventually("the manager got the stop", || {
        let fake = e.fake.clone();
        async move { fake.has(ws.id) == Some(WorkspaceStatus::Stopped) }
    })
    .await;
    e.tunnel.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_on_b_carries_a_mebibyte_both_ways_through_a() {
    let e = env().await;
    let served = routing(&e.a).served().streams();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let request = http::Request::post(PORTFORWARD_PATH)
        .header(STREAM_REQUEST_HEADER, "{}")
        .body(Body::from_stream(tokio_stream_of(rx)))
        .unwrap();
    let response =
        e.b.server
            .state
            .streams
            .send_streaming(e.cluster_id, request)
            .await
            .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut data = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut data);
    let sent = Sha256::digest(&data);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(16 * 1024) {
            tx.send(Ok(Bytes::copy_from_slice(chunk))).await.unwrap();
        }
    });
    let mut body = response.into_body();
    let mut back = Vec::with_capacity(1 << 20);
    let read = async {
        while back.len() < 1 << 20 {
            let frame = body.frame().await.expect("the echo goes on").unwrap();
            if let Ok(data) = frame.into_data() {
                back.extend_from_slice(&data);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the echo arrives");
    writer.await.unwrap();
    assert_eq!(back.len(), 1 << 20);
    assert_eq!(Sha256::digest(&back), sent);
    assert_eq!(routing(&e.a).served().streams(), served + 1);
    e.tunnel.abort();
}

/// A body stream from a channel.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_is_gone_a_call_on_b_fails_unavailable_promptly() {
    let e = env().await;
    let connector = RoutedConnector(routing(&e.b));
    // Taken while A owns the cluster; A then goes away.
    let manager = connector.manager(e.cluster_id).expect("routed to A");
    assert_eq!(
        manager.get_cluster_info().await.unwrap().manager_version,
        "0.1.0",
        "forwarded while A is up"
    );
    e.a.server.shutdown();
    let Env { a, b, tunnel, .. } = e;
    let database = a.database;
    a.server.wait().await.unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), manager.get_cluster_info())
        .await
        .expect("no hang")
        .unwrap_err();
    let failed = lapdev_hrpc::HrpcError::from(failed);
    assert_eq!(failed.code, lapdev_hrpc::Code::Unavailable, "{failed:?}");
    // Once B reads the owners again the cluster is not connected for it.
    routing(&b).owners().refresh_all().await.unwrap();
    assert!(!connector.is_connected(e.cluster_id));
    assert!(connector.manager(e.cluster_id).is_none());
    tunnel.abort();
    drop(b);
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_lease_expired_is_no_route() {
    let e = env().await;
    let connector = RoutedConnector(routing(&e.b));
    assert!(connector.is_connected(e.cluster_id));
    let a_id = routing(&e.a).replica_id();
    expire_replica_lease(&e.a.server.state.db, a_id)
        .await
        .unwrap();
    routing(&e.b).owners().refresh_all().await.unwrap();
    assert!(!connector.is_connected(e.cluster_id));
    assert!(connector.manager(e.cluster_id).is_none());
    e.tunnel.abort();
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let response = transport
        .send(
            http::Request::get(format!("http://{addr}{path}"))
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    String::from_utf8_lossy(response.body()).into_owned()
}

/// What a test changes of a signed request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Nothing,
    /// The MAC.
    Mac,
    /// The body, after it was signed (a replay with another body).
    Body,
}

/// A raw request to `addr`, signed by `signer` (sender `sender`) at `time`.
async fn raw(
    addr: std::net::SocketAddr,
    path: &str,
    sign: Option<(&Routing, i64)>,
    tamper: Tamper,
) -> http::Response<Bytes> {
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    if let Some((signer, time)) = sign {
        let sender = signer.replica_id();
        let content =
            lapdev_server::routing::auth::content_digest(request.headers(), Some(request.body()));
        let mut mac = signer.key().sign(&Signed {
            time,
            method: "POST",
            path,
            sender,
            user: None,
            content: &content,
        });
        if tamper == Tamper::Mac {
            mac = mac.chars().rev().collect();
        }
        if tamper == Tamper::Body {
            *request.body_mut() = Bytes::from_static(b"{\"other\":1}");
        }
        let h = request.headers_mut();
        h.insert(
            lapdev_server::routing::auth::CONTENT_HEADER,
            content.parse().unwrap(),
        );
        h.insert(SENDER_HEADER, sender.to_string().parse().unwrap());
        h.insert(TIME_HEADER, time.into());
        h.insert(MAC_HEADER, mac.parse().unwrap());
    }
    transport.send(request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_endpoint_refuses_what_it_must_and_the_ports_stay_apart() {
    let e = env().await;
    let internal_a = e.a.server.internal_addr.expect("an internal listener");
    let signer = routing(&e.b);
    let now = chrono::Utc::now().timestamp();
    let call = format!(
        "/internal/v1/clusters/{}/KubeManagerRpc/get_cluster_info",
        e.cluster_id
    );
    // The control: signed by B, now.
    let ok = raw(internal_a, &call, Some((&signer, now)), Tamper::Nothing).await;
    assert_eq!(ok.status(), 200, "{:?}", ok.body());
    // Not signed, a bad MAC, a stale time, a signed request replayed with
    // another body: 401 and nothing more.
    for (sign, tamper) in [
        (None, Tamper::Nothing),
        (Some((&signer, now)), Tamper::Mac),
        (Some((&signer, now - 120)), Tamper::Nothing),
        (Some((&signer, now + 120)), Tamper::Nothing),
        (Some((&signer, now)), Tamper::Body),
    ] {
        let refused = raw(internal_a, &call, sign, tamper).await;
        assert_eq!(refused.status(), 401);
        assert!(refused.body().is_empty());
    }
    // Outside the allowed set, even when signed: 404.
    for path in [
        format!(
            "/internal/v1/clusters/{}/AdminRpc/list_clusters",
            e.cluster_id
        ),
        format!(
            "/internal/v1/clusters/{}/KubeManagerRpc/no_such_method",
            e.cluster_id
        ),
        format!("/internal/v1/clusters/{}/stream/shell", e.cluster_id),
        "/rpc/AdminRpc/list_clusters".to_owned(),
        "/healthz".to_owned(),
    ] {
        let refused = raw(internal_a, &path, Some((&signer, now)), Tamper::Nothing).await;
        assert_eq!(refused.status(), 404, "{path}");
    }
    // B does not hold the tunnel: 503 unavailable.
    let internal_b = e.b.server.internal_addr.unwrap();
    let elsewhere = raw(
        internal_b,
        &call,
        Some((&routing(&e.a), now)),
        Tamper::Nothing,
    )
    .await;
    assert_eq!(elsewhere.status(), 503);
    let error: lapdev_hrpc::HrpcError = serde_json::from_slice(elsewhere.body()).unwrap();
    assert_eq!(error.code, lapdev_hrpc::Code::Unavailable);
    assert!(error.message.contains("does not hold the cluster's tunnel"));
    // The public port does not serve the internal endpoint.
    let public = raw(e.a.addr, &call, Some((&signer, now)), Tamper::Nothing).await;
    assert_eq!(public.status(), 404);
    e.tunnel.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_stale_owner_reads_it_again_and_retries_once_at_the_new_owner() {
    let e = env().await;
    // A caller that keeps believing A owns the cluster.
    let caller = stale_caller(&e.a, Uuid::new_v4()).await;
    assert_eq!(
        caller.remote(e.cluster_id).unwrap().replica_id,
        routing(&e.a).replica_id()
    );
    let (_, on_b) = tunnel_moves_to_b(&e).await;
    assert_eq!(
        caller.remote(e.cluster_id).unwrap().replica_id,
        routing(&e.a).replica_id(),
        "still stale"
    );
    let (served_a, served_b) = (
        routing(&e.a).served().calls(),
        routing(&e.b).served().calls(),
    );
    let info = RoutedConnector(caller.clone())
        .manager(e.cluster_id)
        .unwrap()
        .get_cluster_info()
        .await
        .unwrap();
    assert_eq!(info.manager_version, "0.1.0");
    assert_eq!(routing(&e.a).served().calls(), served_a, "A refused it");
    assert_eq!(routing(&e.b).served().calls(), served_b + 1, "B served it");
    assert_eq!(
        caller.remote(e.cluster_id).unwrap().replica_id,
        routing(&e.b).replica_id(),
        "the caller read the owner again"
    );
    on_b.abort();
    e.tunnel.abort();
}

/// A call made while the cluster's tunnel moves to the calling replica: the
/// client was made on B when A held the tunnel (a route to A), the tunnel
/// then came to B, and the call goes through B's own tunnel instead of to A
/// (which would refuse it) and failing `unavailable`.
#[tokio::test]
async fn a_call_whose_owner_turns_out_to_be_the_caller_goes_through_its_own_tunnel() {
    let e = env().await;
    // B, believing A owns the cluster.
    let caller = stale_caller(&e.b, routing(&e.b).replica_id()).await;
    let client = RoutedConnector(caller.clone())
        .manager(e.cluster_id)
        .expect("a route to A");
    let (fake_b, on_b) = tunnel_moves_to_b(&e).await;
    assert_eq!(
        caller.remote(e.cluster_id).unwrap().replica_id,
        routing(&e.a).replica_id(),
        "still stale"
    );
    let (served_a, served_b) = (
        routing(&e.a).served().calls(),
        routing(&e.b).served().calls(),
    );
    let workspace = Uuid::new_v4();
    let seen = client
        .stop_workspace(workspace)
        .await
        .expect("served through B's own tunnel");
    assert_eq!(seen.workspace_id, workspace);
    assert_eq!(routing(&e.a).served().calls(), served_a, "A refused it");
    assert_eq!(
        routing(&e.b).served().calls(),
        served_b,
        "not through B's internal endpoint"
    );
    assert_eq!(
        fake_b.has(workspace),
        Some(WorkspaceStatus::Stopped),
        "B's manager got it"
    );
    assert!(e.fake.has(workspace).is_none(), "A's manager did not");
    on_b.abort();
    e.tunnel.abort();
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

fn lapdev_cmd(t: &TestServer, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapdev"));
    cmd.args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &t.admin_token)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_on_b_execs_and_proxies_into_a_workspace_whose_tunnel_is_on_a() {
    use lapdev_kube_double::{KubeDouble, NodeSpec};
    use lapdev_kube_manager::access::{Access, AccessSettings};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const NAMESPACE: &str = "lapdev-workspaces";
    let double = KubeDouble::start().await.unwrap();
    let access = lapdev_kube_manager::access::router(Access::new(
        double.client().await.unwrap(),
        AccessSettings {
            namespace: NAMESPACE.into(),
            max_sessions_per_workspace: 8,
            max_forwards_per_workspace: 128,
        },
    ));
    let e = env_with(access).await;
    let ws = create_on(&e.b).await;
    common::eventually("the manager got the create", || {
        let fake = e.fake.clone();
        async move { fake.has(ws.id).is_some() }
    })
    .await;
    e.b.cluster_client(&e.token)
        .report_workspace_status(common::observation(ws.id, WorkspaceStatus::Running))
        .await
        .unwrap();
    double.add_node("n1", NodeSpec::default()).unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).unwrap();
    double.create(&ns).unwrap();
    let pod = format!("ws-{}", ws.id);
    let spec: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pod, "namespace": NAMESPACE,
                     "labels": {"lapdev.dev/workspace-id": ws.id.to_string()}},
        "spec": {"nodeName": "n1", "containers": [{"name": "workspace", "image": "ubuntu"}]},
    }))
    .unwrap();
    double.seed_running_pod(&spec).unwrap();
    double.enable_local_exec();
    let served = routing(&e.a).served().streams();

    // exec on B: output and exit code come back through A.
    let out = lapdev_cmd(
        &e.b,
        &[
            "workspace",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; exit 3",
        ],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, b"out\n");

    // A port-forward on B carries 1 MiB both ways intact.
    double.register_pod_port(NAMESPACE, &pod, 8080, echo_server().await);
    let mut child = lapdev_cmd(&e.b, &["workspace", "proxy", "box", "8080"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut data = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut data);
    let sent = Sha256::digest(&data);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let writer = tokio::spawn(async move {
        stdin.write_all(&data).await.unwrap();
        stdin
    });
    let mut back = vec![0u8; 1 << 20];
    tokio::time::timeout(Duration::from_secs(60), stdout.read_exact(&mut back))
        .await
        .expect("the echo arrives")
        .unwrap();
    assert_eq!(Sha256::digest(&back), sent);
    drop(writer.await.unwrap());
    let _ = child.kill().await;
    assert_eq!(
        routing(&e.a).served().streams(),
        served + 2,
        "both through A"
    );
    e.tunnel.abort();
}
