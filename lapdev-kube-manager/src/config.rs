//! The manager's configuration: flags and environment variables, parsed once in
//! `main` and passed down explicitly.
//!
//! The environment contract (fed by the install manifest's Secret and
//! Deployment) is `LAPDEV_SERVER_URL`, `LAPDEV_KUBE_CLUSTER_TOKEN`,
//! `LAPDEV_WORKSPACE_NAMESPACE` (default `lapdev-workspaces`) and the optional
//! `LAPDEV_SERVER_CA`. Everything else has a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Where the manager's own namespace is written in a pod.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Lapdev's in-cluster agent: dials the Lapdev server, reports the cluster and its
/// workspaces, and runs the server's workspace commands.
#[derive(Debug, Clone, Parser)]
#[command(name = "lapdev-kube-manager", version)]
pub struct Config {
    /// Base URL of the Lapdev server, e.g. `https://lapdev.example.com`.
    #[arg(long, env = "LAPDEV_SERVER_URL")]
    pub server_url: String,

    /// The cluster token the server issued for this cluster.
    #[arg(long, env = "LAPDEV_KUBE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: String,

    /// Namespace workspaces are created in.
    #[arg(
        long,
        env = "LAPDEV_WORKSPACE_NAMESPACE",
        default_value = "lapdev-workspaces"
    )]
    pub workspace_namespace: String,

    /// An extra CA the server's certificate may be signed by: PEM data, or the
    /// path of a PEM file.
    #[arg(
        long,
        env = "LAPDEV_SERVER_CA",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub server_ca: Option<String>,

    /// Address of the health (`/healthz`, `/readyz`) and metrics (`/metrics`) port.
    #[arg(long, env = "LAPDEV_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Log format.
    #[arg(long, env = "LAPDEV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The namespace the manager runs in (reported to the server). Defaults to
    /// the service account's namespace, else `lapdev`.
    #[arg(long, env = "LAPDEV_MANAGER_NAMESPACE")]
    pub manager_namespace: Option<String>,

    /// Run workspace containers as this user id (and require non-root). Unset:
    /// the image's own user.
    #[arg(long, env = "LAPDEV_WORKSPACE_RUN_AS_USER")]
    pub workspace_run_as_user: Option<i64>,

    /// Refuse to start workspace containers whose image runs as root.
    #[arg(
        long,
        env = "LAPDEV_WORKSPACE_RUN_AS_NON_ROOT",
        default_value_t = false
    )]
    pub workspace_run_as_non_root: bool,

    /// Storage class of workspace volumes; unset: the cluster's default.
    #[arg(long, env = "LAPDEV_WORKSPACE_STORAGE_CLASS")]
    pub workspace_storage_class: Option<String>,

    /// Longest wait between reconnect attempts, in seconds.
    #[arg(long, env = "LAPDEV_RECONNECT_MAX_SECS", default_value_t = 30.0)]
    pub reconnect_max_secs: f64,

    /// How often the Kubernetes API is probed, in seconds.
    #[arg(long, env = "LAPDEV_KUBE_PROBE_SECS", default_value_t = 10.0)]
    pub kube_probe_secs: f64,

    /// How long one Kubernetes API call may take, in seconds.
    #[arg(long, env = "LAPDEV_KUBE_TIMEOUT_SECS", default_value_t = 20.0)]
    pub kube_timeout_secs: f64,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `LAPDEV_SERVER_CA` names a file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the server CA file {1}")]
pub struct ReadCaError(#[source] pub std::io::Error, pub PathBuf);

impl Config {
    /// The extra CA as PEM bytes: the value itself when it is PEM, else the
    /// contents of the file it names.
    pub fn server_ca_pem(&self) -> Result<Option<Vec<u8>>, ReadCaError> {
        match self.server_ca.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) if v.starts_with("-----BEGIN") => Ok(Some(v.as_bytes().to_vec())),
            Some(path) => std::fs::read(path)
                .map(Some)
                .map_err(|e| ReadCaError(e, PathBuf::from(path))),
        }
    }

    /// The namespace the manager runs in.
    pub fn manager_namespace(&self) -> String {
        if let Some(ns) = &self.manager_namespace {
            return ns.clone();
        }
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "lapdev".to_owned())
    }

    /// The server's HRPC base URL (`{server}/rpc`).
    pub fn rpc_base(&self) -> String {
        format!("{}/rpc", self.server_url.trim_end_matches('/'))
    }

    /// The tunnel endpoint (`{server}/rpc/_tunnel`).
    pub fn tunnel_url(&self) -> String {
        format!("{}{}", self.rpc_base(), lapdev_hrpc::tunnel::TUNNEL_PATH)
    }

    /// The reconnect backoff cap.
    pub fn reconnect_max(&self) -> Duration {
        secs(self.reconnect_max_secs, 30.0)
    }

    /// The Kubernetes probe interval.
    pub fn kube_probe_interval(&self) -> Duration {
        secs(self.kube_probe_secs, 10.0)
    }

    /// The per-call Kubernetes timeout.
    pub fn kube_timeout(&self) -> Duration {
        secs(self.kube_timeout_secs, 20.0)
    }
}

fn secs(v: f64, default: f64) -> Duration {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or_else(|| Duration::from_secs_f64(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["lapdev-kube-manager"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_and_urls() {
        let c = parse(&[
            "--server-url",
            "https://lapdev.example.com/",
            "--cluster-token",
            "t",
        ]);
        assert_eq!(c.workspace_namespace, "lapdev-workspaces");
        assert_eq!(c.listen, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.rpc_base(), "https://lapdev.example.com/rpc");
        assert_eq!(c.tunnel_url(), "https://lapdev.example.com/rpc/_tunnel");
        assert_eq!(c.reconnect_max(), Duration::from_secs(30));
        assert!(c.server_ca_pem().unwrap().is_none());
    }

    #[test]
    fn json_logs_and_pem_ca() {
        let c = parse(&[
            "--server-url",
            "http://s",
            "--cluster-token",
            "t",
            "--log-format",
            "json",
            "--server-ca",
            "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----",
        ]);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(
            c.server_ca_pem()
                .unwrap()
                .unwrap()
                .starts_with(b"-----BEGIN")
        );
        let missing = Config {
            server_ca: Some("/nonexistent/ca.pem".into()),
            ..c
        };
        assert!(missing.server_ca_pem().is_err());
    }

    #[test]
    fn token_and_url_are_required() {
        assert!(Config::try_parse_from(["lapdev-kube-manager"]).is_err());
    }
}
