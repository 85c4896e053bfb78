//! The home-volume grace period end to end: the `lapdev` CLI, the server
//! (in-process, so the test moves its clock instead of sleeping through the
//! retention window) on PostgreSQL, a real `lapdev-kube-manager` and the
//! Kubernetes API double, which keeps the claim (and its uid) when the pod
//! goes.

mod common;
mod real;

use std::process::Output;
use std::time::Duration;

use lapdev_server::Server;
use lapdev_server::config::LimitsConfig;
use real::{Env, NAMESPACE, eventually, pod_name};
use serde_json::Value;

const DAY: Duration = Duration::from_secs(24 * 3600);

struct Cli {
    url: String,
    token: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_lapdev"))
            .args(args)
            .env("LAPDEV_SERVER", &self.url)
            .env("LAPDEV_TOKEN", &self.token)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lapdev {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "lapdev {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn get(&self, name: &str) -> Value {
        self.json(&["workspace", "get", name, "-o", "json"])
    }
}

fn claim_uid(env: &Env) -> String {
    let pvcs = env.pvcs();
    assert_eq!(pvcs.len(), 1, "one claim");
    pvcs[0].metadata.uid.clone().unwrap()
}

/// The kubelet's part of a delete: pods being deleted terminate.
fn terminate_deleted_pods(env: &Env) {
    for p in env.pods() {
        if p.metadata.deletion_timestamp.is_some() {
            let _ = env.double.handle().terminate_pod(NAMESPACE, &pod_name(&p));
        }
    }
}

async fn deleted(env: &Env, cli: &Cli, name: &str) {
    cli.json(&["workspace", "delete", name, "-o", "json"]);
    eventually("deleted", || {
        terminate_deleted_pods(env);
        cli.get(name)["status"] == "deleted"
    })
    .await;
}

async fn running(env: &Env, cli: &Cli, name: &str) {
    eventually("a pod", || env.pods().len() == 1).await;
    let pod = env.pods().remove(0);
    env.double
        .handle()
        .set_pod_phase(NAMESPACE, &pod_name(&pod), "Running", vec![])
        .unwrap();
    eventually("running", || cli.get(name)["status"] == "running").await;
}

/// The server in-process (its clock is the test's) with `limits`, and the
/// double's cluster registered through the CLI with its manager connected.
async fn connected(env: &Env, limits: LimitsConfig) -> (Server, Cli, real::Proc) {
    let server = Server::start_with(
        common::config(
            env.data_dir.path().join("in-process"),
            Some(env.database.url().to_owned()),
        ),
        limits,
    )
    .await
    .unwrap();
    let cli = Cli {
        url: format!("http://{}", server.local_addr),
        token: server.first_admin_token.clone().unwrap(),
    };
    let created = cli.json(&["cluster", "create", "e2e", "-o", "json"]);
    let manager = env.manager(&cli.url, created["token"].as_str().unwrap());
    eventually("the cluster connected", || {
        cli.json(&["cluster", "get", "e2e", "-o", "json"])["status"] == "connected"
    })
    .await;
    (server, cli, manager)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_keeps_the_volume_restore_and_start_reuse_it_and_the_window_ends_it() {
    let env = Env::new().await;
    let (server, cli, _manager) = connected(&env, LimitsConfig::default()).await;
    let clock = server.state.conductor.clock().clone();

    cli.json(&[
        "workspace",
        "create",
        "w1",
        "--image",
        "ghcr.io/lapdev/ws:1",
        "--cpu",
        "500m",
        "--memory",
        "1Gi",
        "--storage",
        "5Gi",
        "-o",
        "json",
    ]);
    running(&env, &cli, "w1").await;
    let uid = claim_uid(&env);

    // A workspace that is not deleted cannot be restored, and says so.
    let live = cli.fails(&["workspace", "restore", "w1"]);
    assert!(live.contains("is not deleted (it is running)"), "{live}");

    // Delete: the pod goes at once, the claim stays, the row says until when.
    deleted(&env, &cli, "w1").await;
    assert!(env.pods().is_empty(), "the pod is deleted");
    assert_eq!(claim_uid(&env), uid, "the volume is kept");
    let view = cli.get("w1");
    assert!(view["volume_kept_until"].is_string(), "{view}");
    assert!(
        view["message"]
            .as_str()
            .is_some_and(|m| m.contains("lapdev workspace restore w1")),
        "{view}"
    );

    let unknown = cli.fails(&["workspace", "restore", "nope"]);
    assert!(unknown.contains("no deleted workspace"), "{unknown}");

    // Three days later: restored stopped, then started on the same claim.
    clock.advance(3 * DAY);
    let restored = cli.json(&["workspace", "restore", "w1", "-o", "json"]);
    assert_eq!(restored["status"], "stopped", "{restored}");
    assert_eq!(restored["volume_kept_until"], Value::Null);
    cli.json(&["workspace", "start", "w1", "-o", "json"]);
    running(&env, &cli, "w1").await;
    assert_eq!(claim_uid(&env), uid, "the same volume");
    let pod = env.pods().remove(0);
    let mounted = pod.spec.unwrap().volumes.unwrap();
    assert!(
        mounted.iter().any(|v| v
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == env.pvcs()[0].metadata.name.clone().unwrap())),
        "the pod mounts the kept claim"
    );

    // Deleted again and past the window: the conductor deletes the volume.
    deleted(&env, &cli, "w1").await;
    assert_eq!(claim_uid(&env), uid);
    clock.advance(7 * DAY + Duration::from_secs(60));
    let idle = server.state.idle.clone();
    let mut purged = 0;
    for _ in 0..100 {
        purged += idle.purge_volumes_once().await.unwrap().purged;
        if purged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(purged, 1, "the kept volume is purged once");
    eventually("the claim is gone", || env.pvcs().is_empty()).await;
    let view = cli.get("w1");
    assert!(view["volume_deleted_at"].is_string(), "{view}");
    assert_eq!(view["volume_kept_until"], Value::Null);
    assert!(
        view["message"]
            .as_str()
            .is_some_and(|m| m.contains("home volume was deleted")),
        "{view}"
    );
    let late = cli.fails(&["workspace", "restore", "w1"]);
    assert!(late.contains("retention window ended"), "{late}");

    server.shutdown();
    let _ = server.wait().await;
}

/// A deletion that keeps the volume ends when the manager reports the pod
/// gone, not at the conductor's next retry: with retries an hour apart, only
/// that report can finish it within the test's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_ends_when_its_pod_is_gone_not_at_the_next_retry() {
    let env = Env::new().await;
    let hour = LimitsConfig {
        workspace_retry_initial_secs: 3600,
        workspace_retry_max_secs: 3600,
        ..LimitsConfig::default()
    };
    let (server, cli, _manager) = connected(&env, hour).await;
    cli.json(&[
        "workspace",
        "create",
        "w1",
        "--image",
        "ghcr.io/lapdev/ws:1",
        "--storage",
        "5Gi",
        "-o",
        "json",
    ]);
    // Bound to a node, so its deletion waits for the kubelet.
    eventually("a pod", || env.pods().len() == 1).await;
    let pod = pod_name(&env.pods()[0]);
    let h = env.double.handle();
    h.bind_pod(NAMESPACE, &pod, "node-0").unwrap();
    h.set_pod_phase(NAMESPACE, &pod, "Running", vec![]).unwrap();
    eventually("running", || cli.get("w1")["status"] == "running").await;
    let uid = claim_uid(&env);

    // The pod terminates (the double keeps it until its kubelet confirms)
    // and the conductor, told so, schedules its next look an hour away.
    cli.json(&["workspace", "delete", "w1", "-o", "json"]);
    eventually("the pod terminating and the retry an hour away", || {
        let terminating = env
            .pods()
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some());
        let view = cli.get("w1");
        terminating
            && view["status"] == "deleting"
            && view["message"]
                .as_str()
                .is_some_and(|m| m.contains("still deleting the pod"))
    })
    .await;

    // The kubelet confirms: the manager reports the claim alone, and the
    // deletion ends with the volume kept.
    terminate_deleted_pods(&env);
    eventually("deleted", || cli.get("w1")["status"] == "deleted").await;
    assert!(env.pods().is_empty());
    assert_eq!(claim_uid(&env), uid, "the volume is kept");
    let view = cli.get("w1");
    assert!(view["volume_kept_until"].is_string(), "{view}");

    server.shutdown();
    let _ = server.wait().await;
}
