//! Shared test setup: the real `lapdev-kube-manager` binary as a child process,
//! pointed at a Kubernetes API double (`KUBECONFIG`) and a server.

#![allow(dead_code)]

pub mod fake_server;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapdev_common::kube::WorkspaceSpec;
use lapdev_kube_double::{KubeDouble, NodeSpec};
use uuid::Uuid;

pub const NAMESPACE: &str = "lapdev-workspaces";

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A double with the workspace namespace and one node.
pub async fn double() -> KubeDouble {
    let double = KubeDouble::start().await.unwrap();
    double.handle().create_namespace(NAMESPACE).unwrap();
    double.handle().create_namespace("lapdev").unwrap();
    double
        .handle()
        .add_node("node-1", NodeSpec::default())
        .unwrap();
    double
}

/// The manager binary, killed when dropped; its log is printed if the test failed.
pub struct ManagerProcess {
    pub child: Child,
    pub health: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ManagerProcess {
    pub fn spawn(double: &KubeDouble, server_url: &str, token: &str) -> ManagerProcess {
        Self::spawn_with(double, server_url, token, &[])
    }

    pub fn spawn_with(
        double: &KubeDouble,
        server_url: &str,
        token: &str,
        extra_env: &[(&str, &str)],
    ) -> ManagerProcess {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        double.write_kubeconfig(&kubeconfig).unwrap();
        Self::spawn_kubeconfig(dir, kubeconfig, server_url, token, extra_env)
    }

    pub fn spawn_kubeconfig(
        dir: tempfile::TempDir,
        kubeconfig: PathBuf,
        server_url: &str,
        token: &str,
        extra_env: &[(&str, &str)],
    ) -> ManagerProcess {
        let log = dir.path().join("manager.log");
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lapdev-kube-manager"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig)
            .env("LAPDEV_SERVER_URL", server_url)
            .env("LAPDEV_KUBE_CLUSTER_TOKEN", token)
            .env("LAPDEV_WORKSPACE_NAMESPACE", NAMESPACE)
            .env("LAPDEV_MANAGER_NAMESPACE", "lapdev")
            .env("LAPDEV_KUBE_PROBE_SECS", "0.3")
            .env("LAPDEV_RECONNECT_MAX_SECS", "1")
            .env("LAPDEV_KUBE_TIMEOUT_SECS", "3")
            .env(
                "RUST_LOG",
                "info,lapdev_kube_manager=debug,kube_client=warn,kube_runtime=warn",
            )
            .args(["--listen", &health.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning lapdev-kube-manager");
        ManagerProcess {
            child,
            health,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.log.with_file_name("stderr.log")).unwrap_or_default(),
        );
        s
    }

    /// GETs a path on the health port: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.health).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- lapdev-kube-manager log ----\n{}", self.log());
        }
    }
}

/// Polls `f` until it holds, with a bounded deadline.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn spec(id: Uuid) -> WorkspaceSpec {
    WorkspaceSpec {
        workspace_id: id,
        name: "my workspace".into(),
        image: "ghcr.io/lapdev/workspace:latest".into(),
        cpu_millis: 500,
        memory_bytes: 1 << 30,
        storage_bytes: 5 << 30,
        env: BTreeMap::new(),
        scheduling: Default::default(),
    }
}
