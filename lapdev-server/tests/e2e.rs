//! End to end, with every real binary: `lapdev-server` on PostgreSQL, the
//! Kubernetes API test double, `lapdev-kube-manager` talking to both, and the
//! `lapdev` CLI driving it all as an admin would.
//!
//! The binaries of other packages are built with the same cargo first (a no-op
//! when `.ci/run` has built them already).

mod real;

use std::time::Duration;

use real::{Env, NAMESPACE, eventually, pod_name};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_from_create_to_delete_with_real_binaries() {
    let env = Env::new().await;
    let (_server, url) = env.server(0);

    let created = env.json(&url, &["cluster", "create", "e2e", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let _manager = env.manager(&url, &token);

    eventually("the cluster connected", || {
        env.json(&url, &["cluster", "get", "e2e", "-o", "json"])["status"] == "connected"
    })
    .await;
    let cluster = env.json(&url, &["cluster", "get", "e2e", "-o", "json"]);
    let version = reqwest_free_version(&env.double.url());
    assert_eq!(cluster["kubernetes_version"], version);
    assert_eq!(cluster["node_count"], 3);
    assert_eq!(cluster["cpu_allocatable_millis"], 12_000);

    let ws = env.json(
        &url,
        &[
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
        ],
    );
    assert_eq!(ws["cluster"], "e2e");
    eventually("the pod and PVC exist", || {
        env.pods().len() == 1 && env.pvcs().len() == 1
    })
    .await;
    let pod = env.pods().remove(0);
    // The kubelet's part: the pod runs.
    env.double
        .handle()
        .set_pod_phase(NAMESPACE, &pod_name(&pod), "Running", vec![])
        .unwrap();
    eventually("running", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "running"
    })
    .await;

    env.json(&url, &["workspace", "stop", "w1", "-o", "json"]);
    eventually("the pod is being deleted", || {
        env.pods()
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    for p in env.pods() {
        env.double
            .handle()
            .terminate_pod(NAMESPACE, &pod_name(&p))
            .unwrap();
    }
    eventually("stopped", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "stopped"
    })
    .await;
    assert!(env.pods().is_empty(), "stop deletes the pod");
    assert_eq!(env.pvcs().len(), 1, "stop keeps the volume");

    env.json(&url, &["workspace", "start", "w1", "-o", "json"]);
    eventually("the pod is back", || env.pods().len() == 1).await;

    env.json(&url, &["workspace", "delete", "w1", "-o", "json"]);
    eventually("deleted", || {
        for p in env.pods() {
            if p.metadata.deletion_timestamp.is_some() {
                let _ = env.double.handle().terminate_pod(NAMESPACE, &pod_name(&p));
            }
        }
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "deleted"
    })
    .await;
    // The pod is gone; the home volume is kept for the retention window
    // (tests/volume_retention.rs follows it to its end).
    eventually("the pod is gone", || {
        for p in env.pods() {
            let _ = env.double.handle().terminate_pod(NAMESPACE, &pod_name(&p));
        }
        env.pods().is_empty()
    })
    .await;
    assert_eq!(env.pvcs().len(), 1, "delete keeps the volume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_create_still_ends_running() {
    let env = Env::new().await;
    let (mut server, url) = env.server(0);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let created = env.json(&url, &["cluster", "create", "e2e", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let _manager = env.manager(&url, &token);
    eventually("the cluster connected", || {
        env.json(&url, &["cluster", "get", "e2e", "-o", "json"])["status"] == "connected"
    })
    .await;

    // The Kubernetes API answers slowly, so the manager is still creating when
    // the server goes away.
    env.double.handle().set_latency(Duration::from_millis(300));
    env.json(
        &url,
        &[
            "workspace",
            "create",
            "w1",
            "--image",
            "ubuntu",
            "-o",
            "json",
        ],
    );
    server.kill();

    env.double.handle().set_latency(Duration::ZERO);
    let (_server, url) = env.server(port);
    eventually("the pod exists", || env.pods().len() == 1).await;
    let pod = env.pods().remove(0);
    env.double
        .handle()
        .set_pod_phase(NAMESPACE, &pod_name(&pod), "Running", vec![])
        .unwrap();
    eventually("running after the restart", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "running"
    })
    .await;
    assert_eq!(env.pods().len(), 1, "still exactly one pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_mid_create_converges_after_restart() {
    let env = Env::new().await;
    let (_server, url) = env.server(0);
    let created = env.json(&url, &["cluster", "create", "e2e", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let mut manager = env.manager(&url, &token);
    eventually("the cluster connected", || {
        env.json(&url, &["cluster", "get", "e2e", "-o", "json"])["status"] == "connected"
    })
    .await;

    env.double.handle().set_latency(Duration::from_millis(300));
    env.json(
        &url,
        &[
            "workspace",
            "create",
            "w1",
            "--image",
            "ubuntu",
            "-o",
            "json",
        ],
    );
    manager.kill();
    env.double.handle().set_latency(Duration::ZERO);
    let _manager = env.manager(&url, &token);
    eventually("the pod and PVC exist", || {
        env.pods().len() == 1 && env.pvcs().len() == 1
    })
    .await;
    let pod = env.pods().remove(0);
    env.double
        .handle()
        .set_pod_phase(NAMESPACE, &pod_name(&pod), "Running", vec![])
        .unwrap();
    eventually("running", || {
        env.json(&url, &["workspace", "get", "w1", "-o", "json"])["status"] == "running"
    })
    .await;
}

/// The double's `/version` gitVersion, read over plain HTTP.
fn reqwest_free_version(base: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /version HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    let v: Value = serde_json::from_str(&body[start..=end]).unwrap();
    v["gitVersion"].as_str().unwrap().to_owned()
}
