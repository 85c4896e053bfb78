//! `kubectl` (installed at /usr/bin/kubectl) against the generated kubeconfig.

use std::process::Command;

use lapdev_kube_double::{KubeDouble, NodeSpec};

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is installed (it is on CI too)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_pods_nodes_and_namespaces() {
    let double = KubeDouble::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig).unwrap();
    double.add_node("node-a", NodeSpec::default()).unwrap();
    double.create_namespace("lapdev-workspaces").unwrap();
    let mut ws = crate::pod("ws-1");
    ws.metadata.namespace = Some("lapdev-workspaces".into());
    double.create(&ws).unwrap();
    double.create(&crate::pod("web")).unwrap();
    double
        .set_pod_phase("default", "web", "Running", Vec::new())
        .unwrap();

    let (pods, nodes, namespaces, one) = tokio::task::spawn_blocking(move || {
        (
            kubectl(&kubeconfig, &["get", "pods", "-A"]),
            kubectl(&kubeconfig, &["get", "nodes"]),
            kubectl(&kubeconfig, &["get", "namespaces"]),
            kubectl(
                &kubeconfig,
                &["get", "pod", "web", "-o", "jsonpath={.status.phase}"],
            ),
        )
    })
    .await
    .unwrap();
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    assert!(
        pods.lines().any(|l| l.starts_with("lapdev-workspaces")
            && l.contains("ws-1")
            && l.contains("Pending")),
        "{pods}"
    );
    assert!(
        pods.lines().any(|l| l.starts_with("default")
            && l.contains("web")
            && l.contains("1/1")
            && l.contains("Running")),
        "{pods}"
    );
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("node-a") && l.contains("Ready") && l.contains("v1.33.0")),
        "{nodes}"
    );
    assert!(
        namespaces.contains("lapdev-workspaces") && namespaces.contains("Active"),
        "{namespaces}"
    );
    assert_eq!(one, "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_server_side_and_deletes() {
    let double = KubeDouble::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig).unwrap();
    let manifest = dir.path().join("ws.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lapdev\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: lapdev\ndata:\n  a: \"1\"\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: manager\n  namespace: lapdev\nspec:\n  selector:\n    matchLabels: {app: m}\n  template:\n    metadata:\n      labels: {app: m}\n    spec:\n      containers:\n      - name: m\n        image: lapdev/kube-manager:latest\n",
    )
    .unwrap();
    let (first, second, got, deleted) = tokio::task::spawn_blocking(move || {
        let m = manifest.to_str().unwrap().to_owned();
        (
            kubectl(&kubeconfig, &["apply", "--server-side", "-f", &m]),
            kubectl(&kubeconfig, &["apply", "--server-side", "-f", &m]),
            kubectl(
                &kubeconfig,
                &[
                    "get",
                    "configmap",
                    "settings",
                    "-n",
                    "lapdev",
                    "-o",
                    "jsonpath={.data.a}",
                ],
            ),
            kubectl(
                &kubeconfig,
                &["delete", "configmap", "settings", "-n", "lapdev"],
            ),
        )
    })
    .await
    .unwrap();
    assert!(
        first.contains("namespace/lapdev serverside-applied"),
        "{first}"
    );
    assert!(
        first.contains("deployment.apps/manager serverside-applied"),
        "{first}"
    );
    assert!(
        second.contains("configmap/settings serverside-applied"),
        "{second}"
    );
    assert_eq!(got, "1");
    assert!(
        deleted.contains("configmap \"settings\" deleted"),
        "{deleted}"
    );
}
