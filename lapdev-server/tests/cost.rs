//! Cost controls through the real server and the real `lapdev` CLI: quotas
//! (`lapdev quota`, `lapdev whoami`), idle auto-stop and lifetimes
//! (`lapdev workspace-policy`, `lapdev workspace keep-alive`, the sweep), with
//! time moved by the conductor's clock instead of sleeping.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{FakeManager, TestServer, dial, eventually, observation, sample_info};
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_kube_rpc::{KubeClusterRpcClient, ManagerHealth};
use serde_json::Value;
use uuid::Uuid;

fn lapdev_as(t: &TestServer, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", token)
        .output()
        .expect("the lapdev binary runs")
}

fn lapdev(t: &TestServer, args: &[&str]) -> Output {
    lapdev_as(t, &t.admin_token, args)
}

fn json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "lapdev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn failure(out: Output) -> String {
    assert!(!out.status.success(), "lapdev should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A connected cluster `dev` whose manager is a stand-in on a real tunnel.
async fn connected(t: &TestServer) -> (KubeClusterRpcClient, Arc<FakeManager>) {
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
    let session = dial(t, &created.token_secret, fake.clone()).await.unwrap();
    tokio::spawn(session.run());
    eventually("cluster connected", || {
        let admin = admin.clone();
        async move { admin.get_cluster("dev".into()).await.unwrap().status == ClusterStatus::Connected }
    })
    .await;
    manager_api.heartbeat(ManagerHealth::Ok).await.unwrap();
    (manager_api, fake)
}

fn create(t: &TestServer, name: &str, cpu: &str) -> Output {
    lapdev(
        t,
        &[
            "workspace",
            "create",
            name,
            "--image",
            "ubuntu",
            "--cpu",
            cpu,
            "--memory",
            "1Gi",
            "--storage",
            "5Gi",
            "-o",
            "json",
        ],
    )
}

/// Creates `name` and has the manager report it running; returns its id.
async fn running(
    t: &TestServer,
    api: &KubeClusterRpcClient,
    fake: &FakeManager,
    name: &str,
) -> Uuid {
    let ws = json(create(t, name, "1"));
    let id: Uuid = ws["id"].as_str().unwrap().parse().unwrap();
    eventually("the manager got the create", || async move {
        fake.has(id) == Some(WorkspaceStatus::Creating)
    })
    .await;
    api.report_workspace_status(observation(id, WorkspaceStatus::Running))
        .await
        .unwrap();
    id
}

fn get(t: &TestServer, name: &str) -> Value {
    json(lapdev(t, &["workspace", "get", name, "-o", "json"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_through_the_cli() {
    let t = TestServer::postgres().await;
    let _cluster = connected(&t).await;

    let set = json(lapdev(
        &t,
        &[
            "quota",
            "set",
            "--each-member",
            "--cpu",
            "2",
            "--running",
            "5",
            "-o",
            "json",
        ],
    ));
    assert_eq!(set["quota"], "each_member");
    assert_eq!(set["limits"]["cpu_millis"], 2000);
    json(create(&t, "a", "1"));
    json(create(&t, "b", "1"));
    let err = failure(create(&t, "c", "1"));
    assert!(
        err.contains(
            "your running workspaces request 2 of 2 CPU; this one needs 1 (resource_exhausted)"
        ),
        "{err}"
    );
    // Refused creates leave nothing behind.
    let list = json(lapdev(&t, &["workspace", "list", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 2);

    let me = json(lapdev(&t, &["whoami", "-o", "json"]));
    assert_eq!(me["quota"]["member"]["usage"]["cpu_millis"], 2000);
    assert_eq!(me["quota"]["member"]["usage"]["running_workspaces"], 2);
    assert_eq!(me["quota"]["member"]["limits"]["cpu_millis"], 2000);
    assert_eq!(
        me["quota"]["organization"]["usage"]["storage_bytes"],
        10i64 << 30
    );
    let table = lapdev(&t, &["whoami"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("running 2 / 5, CPU 2 / 2"), "{table}");

    // An organisation total on top; `quota get` shows both with usage.
    json(lapdev(
        &t,
        &["quota", "set", "--memory", "64Gi", "-o", "json"],
    ));
    let all = json(lapdev(&t, &["quota", "get", "-o", "json"]));
    let org = &all.as_array().unwrap()[0];
    assert_eq!(org["quota"], "organization");
    assert_eq!(org["limits"]["memory_bytes"], 64i64 << 30);
    assert_eq!(org["usage"]["memory_bytes"], 2i64 << 30);
    // A bad quantity is refused before any call.
    assert!(failure(lapdev(&t, &["quota", "set", "--cpu", "lots"])).contains("--cpu"));

    // Stop one, and the start of the other is admitted only while it fits.
    json(lapdev(&t, &["workspace", "stop", "a", "-o", "json"]));
    json(create(&t, "c", "1"));
    let err = failure(lapdev(&t, &["workspace", "start", "a"]));
    assert!(err.contains("2 of 2 CPU; this one needs 1"), "{err}");

    let metrics = metrics_page(&t).await;
    assert!(
        metrics.contains("lapdev_quota_refusals_total{holder=\"member\",resource=\"cpu\"}"),
        "{metrics}"
    );
    // b and c run: 2 workspaces, 2 CPU, 2 GiB.
    let org = org_of(&t).await;
    for (name, value) in [
        ("lapdev_org_running_workspaces", 2i64),
        ("lapdev_org_requested_cpu_millis", 2000),
        ("lapdev_org_requested_memory_bytes", 2 << 30),
    ] {
        let line = format!("{name}{{organization=\"{org}\"}} {value}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

/// The server's `/metrics` page.
async fn metrics_page(t: &TestServer) -> String {
    let stream = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = send
        .send_request(
            http::Request::get("/metrics")
                .header("host", "localhost")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_workspace_stops_after_its_timeout_and_an_open_session_keeps_it() {
    let t = TestServer::postgres().await;
    let (api, fake) = connected(&t).await;
    let policy = json(lapdev(
        &t,
        &[
            "workspace-policy",
            "set",
            "--idle-timeout",
            "2h",
            "--max-idle-timeout",
            "4h",
            "--max-lifetime",
            "12h",
            "-o",
            "json",
        ],
    ));
    assert_eq!(policy["idle_timeout"], "2h");
    assert_eq!(policy["volume_retention"], "7days");
    let id = running(&t, &api, &fake, "idle").await;
    let org = org_of(&t).await;
    let clock = t.server.state.conductor.clock().clone();
    let sweeper = t.server.state.idle.clone();

    let ws = get(&t, "idle");
    assert_eq!(ws["stops_for"], "IdleStopped");
    let stops_at: chrono::DateTime<chrono::Utc> = ws["stops_at"].as_str().unwrap().parse().unwrap();
    let in_2h = clock.now() + chrono::Duration::hours(2);
    assert!(
        (in_2h - stops_at).num_seconds().abs() < 60,
        "{stops_at} vs {in_2h}"
    );

    // Not before the timeout.
    clock.advance(HOUR + 59 * MINUTE);
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!(swept.idle_stopped, 0);
    assert_eq!(get(&t, "idle")["desired_state"], "running");

    // A session is open past the deadline (opening it counts as use, so two
    // hours on): the deadline moves instead.
    let session = t.server.state.activity.open(org, id).await;
    clock.advance(2 * HOUR + MINUTE);
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!((swept.idle_stopped, swept.postponed), (0, 1));
    clock.advance(HOUR);
    session.end().await;
    // Idle counts from the session's end.
    clock.advance(HOUR + 59 * MINUTE);
    assert_eq!(sweeper.sweep_once().await.unwrap().idle_stopped, 0);

    // keep-alive restarts the timeout; an own timeout above the maximum is refused.
    let err = failure(lapdev(
        &t,
        &["workspace", "keep-alive", "idle", "--idle-timeout", "10h"],
    ));
    assert!(err.contains("maximum idle timeout"), "{err}");
    let kept = json(lapdev(
        &t,
        &[
            "workspace",
            "keep-alive",
            "idle",
            "--idle-timeout",
            "3h",
            "-o",
            "json",
        ],
    ));
    assert_eq!(kept["idle_timeout"], "3h");
    clock.advance(2 * HOUR + 59 * MINUTE);
    assert_eq!(sweeper.sweep_once().await.unwrap().idle_stopped, 0);

    // Past it, with no session: stopped once, with the reason.
    clock.advance(2 * MINUTE);
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!(swept.idle_stopped, 1);
    assert!(swept.stop_delays[0] < 2 * MINUTE);
    assert_eq!(
        sweeper.sweep_once().await.unwrap().idle_stopped,
        0,
        "never twice"
    );
    let metrics = metrics_page(&t).await;
    assert!(
        metrics.contains("lapdev_workspace_timer_stops_total{kind=\"idle\"} 1"),
        "{metrics}"
    );
    eventually("the manager stopped it", || {
        let fake = fake.clone();
        async move { fake.has(id) == Some(WorkspaceStatus::Stopped) }
    })
    .await;
    eventually("stopped with the reason", || async {
        let ws = get(&t, "idle");
        ws["status"] == "stopped" && ws["reason"] == "IdleStopped"
    })
    .await;
    let ws = get(&t, "idle");
    assert!(
        ws["message"]
            .as_str()
            .unwrap()
            .starts_with("IdleStopped: stopped by the server"),
        "{ws}"
    );
    assert_eq!(ws["stops_at"], Value::Null);
    // keep-alive of a stopped workspace says to start it.
    assert!(failure(lapdev(&t, &["workspace", "keep-alive", "idle"])).contains("start it"));
    // Starting it again clears the reason and arms the timers anew.
    json(lapdev(&t, &["workspace", "start", "idle", "-o", "json"]));
    let ws = get(&t, "idle");
    assert_eq!(ws["stops_for"], "IdleStopped");
    assert_ne!(ws["reason"], "IdleStopped");
}

async fn org_of(t: &TestServer) -> Uuid {
    t.server.state.db.list_organizations().await.unwrap()[0].id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_timers_survive_a_restart_and_stop_once() {
    let t = TestServer::embedded().await;
    let (api, fake) = connected(&t).await;
    json(lapdev(
        &t,
        &[
            "workspace-policy",
            "set",
            "--max-lifetime",
            "1h",
            "-o",
            "json",
        ],
    ));
    running(&t, &api, &fake, "short").await;
    let clock = t.server.state.conductor.clock().clone();
    clock.advance(30 * MINUTE);
    assert_eq!(
        t.server
            .state
            .idle
            .sweep_once()
            .await
            .unwrap()
            .lifetime_stopped,
        0
    );
    // Use does not extend a lifetime.
    json(lapdev(
        &t,
        &["workspace", "keep-alive", "short", "-o", "json"],
    ));
    assert_eq!(get(&t, "short")["stops_for"], "LifetimeExpired");

    let t = t.restart_with(Default::default()).await;
    // The new server's clock starts from the real time again.
    t.server.state.conductor.clock().advance(HOUR + MINUTE);
    let sweeper = t.server.state.idle.clone();
    let (a, b) = tokio::join!(sweeper.sweep_once(), sweeper.sweep_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.lifetime_stopped + b.lifetime_stopped,
        1,
        "exactly one sweep stops it"
    );
    let ws = get(&t, "short");
    assert_eq!(ws["desired_state"], "stopped");
    assert_eq!(ws["reason"], "LifetimeExpired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_stop_is_announced_before_it_once() {
    let t = TestServer::postgres().await;
    let (api, fake) = connected(&t).await;
    let policy = json(lapdev(
        &t,
        &[
            "workspace-policy",
            "set",
            "--max-lifetime",
            "8h",
            "-o",
            "json",
        ],
    ));
    assert_eq!(policy["lifetime_notice"], "15m");
    let id = running(&t, &api, &fake, "long").await;
    let clock = t.server.state.conductor.clock().clone();
    let sweeper = t.server.state.idle.clone();
    let mut feed = t.server.state.db.subscribe();

    // Not before the notice time (8 h - 15 min).
    clock.advance(7 * HOUR + 44 * MINUTE);
    assert_eq!(sweeper.sweep_once().await.unwrap().noticed, 0);
    assert_ne!(get(&t, "long")["reason"], "LifetimeEnding");

    clock.advance(2 * MINUTE);
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!((swept.noticed, swept.lifetime_stopped), (1, 0));
    let ws = get(&t, "long");
    assert_eq!(ws["status"], "running");
    assert_eq!(ws["reason"], "LifetimeEnding");
    let stops_at: chrono::DateTime<chrono::Utc> = ws["stops_at"].as_str().unwrap().parse().unwrap();
    let message = ws["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "stops at {} UTC (lifetime 8 h); `lapdev workspace keep-alive` cannot extend a lifetime",
            stops_at.format("%H:%M")
        )),
        "{message}"
    );
    // On the change feed, for the dashboard's live updates.
    let announced = loop {
        match feed.try_recv() {
            Ok(lapdev_db::Change::Workspace(w))
                if w.workspace_id == id
                    && w.reason == Some(lapdev_common::reason::WorkspaceReason::LifetimeEnding) =>
            {
                break true;
            }
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    assert!(announced, "the notice is published");

    // Once; keep-alive does not move the lifetime, and the stop comes on time.
    assert_eq!(sweeper.sweep_once().await.unwrap().noticed, 0);
    json(lapdev(
        &t,
        &["workspace", "keep-alive", "long", "-o", "json"],
    ));
    assert_eq!(get(&t, "long")["stops_at"], ws["stops_at"]);
    clock.advance(15 * MINUTE);
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!((swept.noticed, swept.lifetime_stopped), (0, 1));
    let ws = get(&t, "long");
    assert_eq!(ws["reason"], "LifetimeExpired");

    // A new start arms a new lifetime and a new notice.
    json(lapdev(&t, &["workspace", "start", "long", "-o", "json"]));
    clock.advance(7 * HOUR + 46 * MINUTE);
    assert_eq!(sweeper.sweep_once().await.unwrap().noticed, 1);
}
