//! The real `lapdev` binary's `provider` commands against a real server, the GKE
//! stand-in and the Kubernetes API test double; then a manager reports from the
//! created cluster (with the token the server installed there) and it turns
//! `connected`.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::{FakeManager, TestServer, dial, sample_info};
use k8s_openapi::api::core::v1::Secret;
use lapdev_kube::provider::testing::GkeStandIn;
use lapdev_kube_double::KubeDouble;
use serde_json::Value;

fn lapdev(t: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &t.admin_token)
        .output()
        .expect("the lapdev binary runs")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "lapdev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn status(t: &TestServer, name: &str) -> Option<String> {
    t.admin()
        .get_cluster(name.to_owned())
        .await
        .ok()
        .map(|c| c.status.to_string())
}

async fn wait_status(t: &TestServer, name: &str, want: Option<&str>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = status(t, name).await;
        if now.as_deref() == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster token the server wrote into the manager's Secret.
fn installed_token(double: &KubeDouble) -> String {
    let secret: Secret = double
        .handle()
        .get("lapdev", "lapdev-kube-manager")
        .unwrap();
    if let Some(t) = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get("LAPDEV_KUBE_CLUSTER_TOKEN"))
    {
        return t.clone();
    }
    let bytes = &secret.data.as_ref().unwrap()["LAPDEV_KUBE_CLUSTER_TOKEN"].0;
    String::from_utf8(bytes.clone())
        .ok()
        .filter(|s| s.starts_with("lapdev_ct_"))
        .unwrap_or_else(|| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(bytes)
                    .unwrap(),
            )
            .unwrap()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_commands_create_import_connect_and_delete() {
    let double = KubeDouble::start().await.unwrap();
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_cluster_endpoint(&double.url(), None);
    gke.add_cluster("us-central1-a", "existing", "1.32.9-gke.100", 2);
    // The GKE stand-in listens on loopback http.
    let t = TestServer::embedded_with(lapdev_server::config::LimitsConfig {
        allow_provider_test_endpoints: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    // A malformed key is refused by the CLI before anything is sent.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, br#"{"type": "service_account", "private_key": "x"}"#).unwrap();
    let endpoint = gke.url();
    let add = |key: &std::path::Path| {
        lapdev(
            &t,
            &[
                "provider",
                "add",
                "gcp",
                "--kind",
                "gcp",
                "--credentials",
                key.to_str().unwrap(),
                "--project",
                "lapdev-test",
                "--location",
                "europe-west1",
                "--endpoint",
                &endpoint,
                "-o",
                "json",
            ],
        )
    };
    let err = failed(&add(&bad));
    assert!(err.contains("is not a usable key"), "{err}");
    assert_eq!(gke.api_calls("list"), 0);

    let key = dir.path().join("key.json");
    std::fs::write(&key, gke.key_json()).unwrap();
    let out = add(&key);
    let added = json(&out);
    assert_eq!(added["credentials_checked"], true);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));

    let listed = json(&lapdev(&t, &["provider", "list", "-o", "json"]));
    assert_eq!(listed[0]["name"], "gcp");
    assert_eq!(listed[0]["config"]["project"], "lapdev-test");
    let table = lapdev(&t, &["provider", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("lapdev-test"));

    let remote = json(&lapdev(&t, &["provider", "clusters", "gcp", "-o", "json"]));
    assert_eq!(remote[0]["name"], "existing");
    assert_eq!(remote[0]["kubernetes_version"], "1.32.9-gke.100");

    let imported = json(&lapdev(
        &t,
        &["provider", "import", "gcp", "existing", "-o", "json"],
    ));
    assert_eq!(imported["status"], "pending");
    assert_eq!(imported["managed_by"], "gcp");
    assert_eq!(
        imported["provider_cluster"]["kubernetes_version"],
        "1.32.9-gke.100"
    );

    let existing_token = installed_token(&double);

    let created = json(&lapdev(
        &t,
        &[
            "provider",
            "create-cluster",
            "gcp",
            "made",
            "--location",
            "europe-west1",
            "--autopilot",
            "-o",
            "json",
        ],
    ));
    assert_eq!(created["status"], "provisioning");
    wait_status(&t, "made", Some("pending")).await;

    // The manager the server installed reports with the token it was given (the
    // install follows `pending`: wait for the new cluster's token).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let token = loop {
        let token = installed_token(&double);
        if token != existing_token {
            break token;
        }
        assert!(tokio::time::Instant::now() < deadline, "no install");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    t.cluster_client(&token)
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let _tunnel = dial(&t, &token, Arc::new(FakeManager::default()))
        .await
        .unwrap();
    wait_status(&t, "made", Some("connected")).await;

    // Deleting a provider-managed cluster needs --yes; then it goes in GKE too.
    let err = failed(&lapdev(&t, &["cluster", "delete", "made"]));
    assert!(err.contains("--yes"), "{err}");
    let out = lapdev(&t, &["cluster", "delete", "made", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_status(&t, "made", None).await;
    assert!(gke.cluster("europe-west1", "made").is_none());

    let out = lapdev(&t, &["cluster", "delete", "existing", "--keep-in-provider"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(gke.cluster("us-central1-a", "existing").is_some());
    let out = lapdev(&t, &["provider", "delete", "gcp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
