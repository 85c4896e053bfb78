//! Issue 11 through the real server on PostgreSQL: reasons on the wire and in the
//! CLI, self-repair driven by the conductor's clock, force deletes with tombstones
//! cleaned on reconnect, `cluster delete --force`, security profiles, lifecycle
//! metrics, and today's manager protocol (no `reason`, `node_name` or
//! `manifest_revision`) accepted by the new server.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{FakeManager, TestServer, dial, eventually, observation, sample_info};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_hrpc::Transport as _;
use lapdev_hrpc::tunnel::TunnelSession;
use serde_json::{Value, json};
use uuid::Uuid;

fn lapdev(t: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &t.admin_token)
        .output()
        .expect("the lapdev binary runs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "lapdev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(out: Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// POSTs a raw JSON body to an HRPC method, as a manager of today would.
async fn post(base: &str, path: &str, token: &str, body: Value) -> (u16, String) {
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let response = transport
        .send(
            http::Request::post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .header("x-lapdev-cluster-token", token)
                .body(bytes::Bytes::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    (
        response.status().as_u16(),
        String::from_utf8_lossy(response.body()).into_owned(),
    )
}

struct Connected {
    token: String,
    fake: Arc<FakeManager>,
    run: tokio::task::JoinHandle<()>,
}

/// A registered cluster `name` with a fake manager on a real tunnel.
async fn connected_cluster(t: &TestServer, name: &str) -> Connected {
    let admin = t.admin();
    let created = admin
        .create_cluster(name.into(), None, None, None)
        .await
        .unwrap();
    t.cluster_client(&created.token_secret)
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let fake = Arc::new(FakeManager::default());
    let run = reconnect(t, &created.token_secret, fake.clone()).await;
    let c = Connected {
        token: created.token_secret,
        fake,
        run,
    };
    wait_status(t, name, ClusterStatus::Connected).await;
    c
}

async fn reconnect(
    t: &TestServer,
    token: &str,
    fake: Arc<FakeManager>,
) -> tokio::task::JoinHandle<()> {
    let session: TunnelSession = dial(t, token, fake).await.unwrap();
    tokio::spawn(async move {
        let _ = session.run().await;
    })
}

async fn wait_status(t: &TestServer, name: &str, status: ClusterStatus) {
    let admin = t.admin();
    eventually(&format!("cluster {name} {status}"), || {
        let admin = admin.clone();
        let name = name.to_owned();
        async move { admin.get_cluster(name).await.unwrap().status == status }
    })
    .await;
}

fn create_workspace(t: &TestServer, name: &str, cluster: &str) -> Uuid {
    let ws = json_of(lapdev(
        t,
        &[
            "workspace",
            "create",
            name,
            "--image",
            "ubuntu",
            "--cpu",
            "100m",
            "--memory",
            "128Mi",
            "--cluster",
            cluster,
            "-o",
            "json",
        ],
    ));
    ws["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todays_manager_protocol_is_accepted() {
    let t = TestServer::postgres().await;
    let c = connected_cluster(&t, "old").await;
    let id = create_workspace(&t, "w", "old");
    eventually("created", || {
        let fake = c.fake.clone();
        async move { fake.has(id).is_some() }
    })
    .await;
    // Exactly what a manager built before reasons sends: no `reason`, no
    // `node_name`, no `manifest_revision`.
    let (status, body) = post(
        &t.base(),
        "/rpc/KubeClusterRpc/report_cluster_info",
        &c.token,
        json!({"info": {
            "kubernetes_version": "v1.28.3",
            "node_count": 2,
            "cpu_capacity_millis": 4000,
            "cpu_allocatable_millis": 3800,
            "memory_capacity_bytes": 8589934592u64,
            "memory_allocatable_bytes": 8000000000u64,
            "provider": "gcp",
            "region": "europe-west1",
            "manager_version": "0.1.0",
            "manager_namespace": "lapdev",
            "workspace_namespace": "lapdev-workspaces"
        }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &t.base(),
        "/rpc/KubeClusterRpc/report_workspace_status",
        &c.token,
        json!({"status": {
            "workspace_id": id,
            "status": "running",
            "message": null,
            "pod_name": format!("ws-{id}"),
            // Now: an observation older than the create reply's is stale.
            "observed_at": chrono::Utc::now().to_rfc3339()
        }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = json_of(lapdev(&t, &["workspace", "get", "w", "-o", "json"]));
    assert_eq!(got["status"], "running");
    assert_eq!(got["reason"], Value::Null);
    let cluster = json_of(lapdev(&t, &["cluster", "get", "old", "-o", "json"]));
    assert_eq!(cluster["kubernetes_version"], "v1.28.3");
    assert_eq!(cluster["manifest_revision"], Value::Null);
    c.run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_is_shown_with_its_reason_and_repaired_after_the_backoff() {
    let t = TestServer::postgres().await;
    let c = connected_cluster(&t, "dev").await;
    let api = t.cluster_client(&c.token);
    let id = create_workspace(&t, "w", "dev");
    eventually("created", || {
        let fake = c.fake.clone();
        async move { fake.has(id).is_some() }
    })
    .await;
    api.report_workspace_status(observation(id, WorkspaceStatus::Running))
        .await
        .unwrap();
    let mut evicted = observation(id, WorkspaceStatus::Failed);
    evicted.reason = Some(WorkspaceReason::Evicted);
    evicted.message = Some("The node was low on resource: memory".into());
    evicted.node_name = Some("node-1".into());
    api.report_workspace_status(evicted.clone()).await.unwrap();

    // The reconciler announces the repair; the CLI shows reason and message.
    eventually("repair announced", || async {
        let got = json_of(lapdev(&t, &["workspace", "get", "w", "-o", "json"]));
        got["message"]
            .as_str()
            .is_some_and(|m| m.contains("new pod at"))
    })
    .await;
    let got = json_of(lapdev(&t, &["workspace", "get", "w", "-o", "json"]));
    assert_eq!(got["reason"], "Evicted");
    assert_eq!(got["status"], "failed");
    let message = got["message"].as_str().unwrap();
    assert!(
        message.starts_with("pod evicted: The node was low on resource: memory; new pod at 20"),
        "{message}"
    );
    // The same report again (a snapshot after a reconnect) writes nothing and
    // keeps the announcement.
    let before = t
        .server
        .state
        .db
        .get_workspace_by_name(org(&t).await, "w")
        .await
        .unwrap();
    api.report_workspace_status(evicted).await.unwrap();
    let after = t
        .server
        .state
        .db
        .get_workspace_by_name(org(&t).await, "w")
        .await
        .unwrap();
    assert_eq!(before, after, "no write for a repeated report");
    let table = ok(lapdev(&t, &["workspace", "list"]));
    assert!(
        table.contains("REASON") && table.contains("Evicted"),
        "{table}"
    );
    assert_eq!(
        c.fake.has(id),
        Some(WorkspaceStatus::Creating),
        "no new pod yet"
    );

    // Time passes (the conductor's clock, not a sleep): a new pod is asked for.
    t.server
        .state
        .conductor
        .clock()
        .advance(Duration::from_secs(60));
    t.server.state.conductor.reconcile_once().await;
    let got = json_of(lapdev(&t, &["workspace", "get", "w", "-o", "json"]));
    assert_eq!(got["status"], "creating", "{got}");
    let row = t
        .server
        .state
        .db
        .get_workspace_by_name(org(&t).await, "w")
        .await
        .unwrap();
    assert_eq!(row.repair_attempts, 1);
    assert!(row.next_attempt_at.is_some(), "the recheck waits too");
    api.report_workspace_status(observation(id, WorkspaceStatus::Running))
        .await
        .unwrap();

    // Lifecycle metrics saw the failure and the repair.
    let transport =
        lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig::default()).unwrap();
    let metrics = transport
        .send(
            http::Request::get(format!("{}/metrics", t.base()))
                .body(bytes::Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = String::from_utf8_lossy(metrics.body()).into_owned();
    assert!(
        body.lines()
            .any(|l| l.starts_with("lapdev_workspace_failures_total")
                && l.contains("reason=\"Evicted\"")),
        "{body}"
    );
    assert!(body.contains("lapdev_workspace_repairs_total"), "{body}");
    assert!(body.contains("lapdev_workspace_start_seconds"), "{body}");
    c.run.abort();
}

async fn org(t: &TestServer) -> Uuid {
    t.server.state.db.list_organizations().await.unwrap()[0].id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_delete_leaves_a_tombstone_cleaned_on_reconnect() {
    let t = TestServer::postgres().await;
    let c = connected_cluster(&t, "dev").await;
    let id = create_workspace(&t, "w", "dev");
    eventually("created", || {
        let fake = c.fake.clone();
        async move { fake.has(id).is_some() }
    })
    .await;

    // Connected: --force is refused, a normal delete is the way.
    let out = lapdev(&t, &["workspace", "delete", "w", "--force"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without --force"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    c.run.abort();
    wait_status(&t, "dev", ClusterStatus::Disconnected).await;
    let tomb = json_of(lapdev(
        &t,
        &["workspace", "delete", "w", "--force", "-o", "json"],
    ));
    assert_eq!(tomb["status"], "deleted");
    assert_eq!(tomb["reason"], "ClusterGone");
    assert!(tomb["forgotten_at"].is_string(), "{tomb}");
    assert_eq!(
        json_of(lapdev(&t, &["workspace", "list", "-o", "json"])),
        json!([])
    );
    // The name is free at once.
    assert_eq!(c.fake.has(id), Some(WorkspaceStatus::Creating));

    // The manager comes back: the server removes the forgotten workspace's objects.
    let _run = reconnect(&t, &c.token, c.fake.clone()).await;
    eventually("objects removed on reconnect", || {
        let fake = c.fake.clone();
        async move { fake.has(id).is_none() }
    })
    .await;
    eventually("tombstone cleared", || async {
        let all = json_of(lapdev(&t, &["workspace", "list", "--all", "-o", "json"]));
        all[0]["forgotten_at"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_delete_force_forgets_and_lists_its_workspaces() {
    let t = TestServer::postgres().await;
    let c = connected_cluster(&t, "gone").await;
    let a = create_workspace(&t, "a", "gone");
    let b = create_workspace(&t, "b", "gone");
    eventually("created", || {
        let fake = c.fake.clone();
        async move { fake.has(a).is_some() && fake.has(b).is_some() }
    })
    .await;
    c.run.abort();
    wait_status(&t, "gone", ClusterStatus::Disconnected).await;

    let out = lapdev(&t, &["cluster", "delete", "gone"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Named by name, with its workspaces and what to do; no ids, no "rows".
    assert!(
        err.contains(r#"cluster "gone" still has 2 workspaces (a, b)"#)
            && err.contains("lapdev workspace delete NAME")
            && err.contains("lapdev cluster delete gone --force"),
        "{err}"
    );
    assert!(!err.contains("row"), "{err}");

    let printed = ok(lapdev(&t, &["cluster", "delete", "gone", "--force"]));
    assert!(
        printed.contains("workspace a forgotten")
            && printed.contains("workspace b forgotten")
            && printed.contains("cluster gone deleted"),
        "{printed}"
    );
    let all = json_of(lapdev(&t, &["workspace", "list", "--all", "-o", "json"]));
    for w in all.as_array().unwrap() {
        assert_eq!(w["reason"], "ClusterGone", "{w}");
        assert!(w["deleted_at"].is_string());
    }
    assert!(
        json_of(lapdev(&t, &["cluster", "list", "-o", "json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_is_chosen_stored_rendered_and_shown() {
    let t = TestServer::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.yaml");
    let token_file = dir.path().join("token");
    ok(lapdev(
        &t,
        &[
            "cluster",
            "create",
            "locked",
            "--security-profile",
            "restricted",
            "--manifest-out",
            manifest.to_str().unwrap(),
            "--token-out",
            token_file.to_str().unwrap(),
        ],
    ));
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        yaml.contains("pod-security.kubernetes.io/enforce: restricted"),
        "{yaml}"
    );
    let got = json_of(lapdev(&t, &["cluster", "get", "locked", "-o", "json"]));
    assert_eq!(got["security_profile"], "restricted");

    // The manager reports the revision it was installed from.
    let token = std::fs::read_to_string(&token_file).unwrap();
    let mut info = sample_info();
    info.manifest_revision = Some("rev-1".into());
    t.cluster_client(token.trim())
        .report_cluster_info(info)
        .await
        .unwrap();
    let got = json_of(lapdev(&t, &["cluster", "get", "locked", "-o", "json"]));
    assert_eq!(got["manifest_revision"], "rev-1");
    assert_eq!(got["manager_version"], "0.1.0");

    let again = dir.path().join("m2.yaml");
    let printed = ok(lapdev(
        &t,
        &[
            "cluster",
            "set",
            "locked",
            "--security-profile",
            "baseline",
            "--manifest-out",
            again.to_str().unwrap(),
        ],
    ));
    assert!(printed.contains("kubectl apply"), "{printed}");
    let yaml = std::fs::read_to_string(&again).unwrap();
    assert!(
        yaml.contains("pod-security.kubernetes.io/enforce: baseline"),
        "{yaml}"
    );
    let out = lapdev(
        &t,
        &["cluster", "set", "locked", "--security-profile", "root"],
    );
    assert!(!out.status.success(), "an unknown profile is refused");
}
