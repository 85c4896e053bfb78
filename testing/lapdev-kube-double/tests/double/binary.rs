//! The dev binary: says what it is, serves the API, writes a kubeconfig, seeds
//! nodes, starts new pods and (when allowed) runs `kubectl exec` locally.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lapdev-kube-double");

#[test]
fn help_says_it_is_not_a_cluster() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("stand-in for a Kubernetes API server"),
        "{help}"
    );
    assert!(help.contains("NOT a Kubernetes cluster"), "{help}");
    assert!(help.contains("--allow-local-exec"), "{help}");
    assert!(help.contains("run arbitrary commands here"), "{help}");
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_seeds_nodes_and_runs_pods() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _child = Child(
        Command::new(BIN)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--nodes",
                "2",
                "--pods",
                "3",
                "--kubelet-delay-ms",
                "50",
                "--allow-local-exec",
            ])
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kubeconfig.exists() || !kubectl(&["get", "nodes"]).0 {
        assert!(Instant::now() < deadline, "the double did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, nodes) = kubectl(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ws\nspec:\n  containers:\n  - name: main\n    image: ubuntu:24.04\n").unwrap();
    assert!(kubectl(&["apply", "-f", manifest.to_str().unwrap()]).0);
    let running = kubectl(&[
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "pod/ws",
        "--timeout=10s",
    ]);
    assert!(running.0, "{}", running.1);
    let exec = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["exec", "ws", "--", "sh", "-c", "echo local; exit 4"])
        .output()
        .unwrap();
    assert_eq!(exec.status.code(), Some(4), "{exec:?}");
    assert_eq!(exec.stdout, b"local\n");
    let (_, background) = kubectl(&["get", "pods", "-n", "background", "--no-headers"]);
    assert_eq!(
        background.lines().filter(|l| l.contains("Running")).count(),
        3,
        "{background}"
    );
    // Stdout carries only the greeting; the log goes to stderr, plain text
    // when it is not a terminal.
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(
        stdout.starts_with("Kubernetes API stand-in (not a cluster) serving on"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(log.contains("local exec is ON"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes: {log:?}");
}
