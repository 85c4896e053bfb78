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
use lapdev_common::status::{CapacityMode, SecurityProfile};

use crate::objects::{CpuLimit, WorkspaceSettings};
use crate::observe::ObserveConfig;

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

    /// The cluster's security profile for workspace pods: `baseline` (root
    /// allowed, default capabilities, `sudo` works) or `restricted` (non-root,
    /// all capabilities dropped, no privilege escalation). The install manifest
    /// sets it together with the namespace's Pod Security label.
    #[arg(long, env = "LAPDEV_SECURITY_PROFILE", default_value = "baseline")]
    pub security_profile: SecurityProfile,

    /// The revision of the install manifest this manager was deployed from,
    /// reported in the cluster info.
    #[arg(long, env = "LAPDEV_MANIFEST_REVISION")]
    pub manifest_revision: Option<String>,

    /// The workspace pods' `fsGroup`: the home volume is writable by this group.
    #[arg(long, env = "LAPDEV_WORKSPACE_FS_GROUP", default_value_t = 1000)]
    pub workspace_fs_group: i64,

    /// CPU limit of workspace containers: `none` (default), a factor of the
    /// request (`2x`), or a quantity (`4`, `3500m`).
    #[arg(long, env = "LAPDEV_WORKSPACE_CPU_LIMIT", default_value = "none")]
    pub workspace_cpu_limit: CpuLimit,

    /// `ephemeral-storage` request of workspace pods.
    #[arg(long, env = "LAPDEV_WORKSPACE_EPHEMERAL_STORAGE_REQUEST", default_value = "2Gi", value_parser = storage_quantity)]
    pub workspace_ephemeral_storage_request: String,

    /// `ephemeral-storage` limit of workspace pods.
    #[arg(long, env = "LAPDEV_WORKSPACE_EPHEMERAL_STORAGE_LIMIT", default_value = "8Gi", value_parser = storage_quantity)]
    pub workspace_ephemeral_storage_limit: String,

    /// A start that makes no progress (scheduled, image pulled, container
    /// started) for this many seconds is `failed` (`StartDeadlineExceeded`).
    #[arg(
        long,
        env = "LAPDEV_WORKSPACE_START_DEADLINE_SECS",
        default_value_t = 600.0
    )]
    pub workspace_start_deadline_secs: f64,

    /// A pod whose deletion is stuck on a node that has not been Ready for this
    /// many seconds is force-deleted (sooner when the node is removed or
    /// tainted out-of-service).
    #[arg(
        long,
        env = "LAPDEV_NODE_LOST_FORCE_DELETE_SECS",
        default_value_t = 300.0
    )]
    pub node_lost_force_delete_secs: f64,

    /// Longest wait before a failed watch is retried, in seconds.
    #[arg(long, env = "LAPDEV_WATCH_RETRY_MAX_SECS", default_value_t = 30.0)]
    pub watch_retry_max_secs: f64,

    /// Kubernetes API requests per second the manager allows itself (sustained).
    #[arg(long, env = "LAPDEV_KUBE_QPS", default_value_t = 20.0)]
    pub kube_qps: f64,

    /// Most exec sessions (shells, commands) open at once per workspace.
    #[arg(long, env = "LAPDEV_MAX_EXEC_SESSIONS", default_value_t = 16)]
    pub max_exec_sessions: usize,

    /// Most forwarded connections open at once per workspace.
    #[arg(long, env = "LAPDEV_MAX_FORWARDED_CONNECTIONS", default_value_t = 256)]
    pub max_forwarded_connections: usize,

    /// Kubernetes API requests the manager may make at once above the rate.
    #[arg(long, env = "LAPDEV_KUBE_BURST", default_value_t = 40)]
    pub kube_burst: u32,

    /// Run workspace containers as this user id (and require non-root). Unset:
    /// the image's own user (`restricted`: the fsGroup's id).
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

    /// What the nodes' reported requests count: `nodes` (Lapdev's own pods) or
    /// `pods` (every pod: needs the manifest's cluster-wide pod watch).
    #[arg(long, env = "LAPDEV_CAPACITY", default_value = "nodes")]
    pub capacity: CapacityMode,

    /// Pod churn republishes the per-node capacity at most this often, in
    /// seconds.
    #[arg(long, env = "LAPDEV_CAPACITY_REPORT_SECS", default_value_t = 5.0)]
    pub capacity_report_secs: f64,
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
    /// Refuses a cluster token that cannot be one (see
    /// [`lapdev_common::token`]): no server would accept it, so the manager
    /// stops at once and says which value is wrong rather than asking the
    /// server every few minutes. Names a personal access token as such, the
    /// likeliest mix-up.
    pub fn check_cluster_token(&self) -> Result<(), String> {
        let token = self.cluster_token.as_str();
        if lapdev_common::token::is_well_formed_cluster_token(token) {
            return Ok(());
        }
        let what = if token.is_empty() {
            "it is empty".to_owned()
        } else if token.starts_with(lapdev_common::role::PAT_PREFIX) {
            format!(
                "it is a personal access token ({}…), which signs a person in to the \
                 API; the manager needs the cluster's token",
                lapdev_common::role::PAT_PREFIX
            )
        } else {
            format!(
                "it does not have a cluster token's shape ({}… and {} characters in all)",
                lapdev_common::token::CLUSTER_TOKEN_PREFIX,
                lapdev_common::token::CLUSTER_TOKEN_LEN
            )
        };
        Err(format!(
            "--cluster-token / LAPDEV_KUBE_CLUSTER_TOKEN is not a cluster token: {what}. \
             Use the token `lapdev cluster create` printed, or a new one from `lapdev \
             cluster manifest NAME` (its manifest carries it)"
        ))
    }

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

impl Config {
    /// How workspace objects are built.
    pub fn access_settings(&self) -> crate::access::AccessSettings {
        crate::access::AccessSettings {
            namespace: self.workspace_namespace.clone(),
            max_sessions_per_workspace: self.max_exec_sessions,
            max_forwards_per_workspace: self.max_forwarded_connections,
        }
    }

    /// The settings of workspace objects.
    pub fn workspace_settings(&self) -> WorkspaceSettings {
        WorkspaceSettings {
            namespace: self.workspace_namespace.clone(),
            security_profile: self.security_profile,
            run_as_user: self.workspace_run_as_user,
            run_as_non_root: self.workspace_run_as_non_root,
            fs_group: self.workspace_fs_group,
            storage_class: self.workspace_storage_class.clone(),
            cpu_limit: self.workspace_cpu_limit,
            ephemeral_storage_request: self.workspace_ephemeral_storage_request.clone(),
            ephemeral_storage_limit: self.workspace_ephemeral_storage_limit.clone(),
        }
    }

    /// The deadlines of observations.
    pub fn observe_config(&self) -> ObserveConfig {
        ObserveConfig {
            start_deadline: secs(self.workspace_start_deadline_secs, 600.0),
            node_lost_after: secs(self.node_lost_force_delete_secs, 300.0),
        }
    }

    /// The watchers' retry cap.
    pub fn watch_retry_max(&self) -> Duration {
        secs(self.watch_retry_max_secs, 30.0)
    }

    /// How per-node capacity reports are coalesced.
    pub fn coalescing(&self) -> crate::capacity::Coalescing {
        crate::capacity::Coalescing {
            min_interval: secs(self.capacity_report_secs, 5.0),
            ..Default::default()
        }
    }

    /// How often time-dependent observations are re-evaluated: a tenth of the
    /// shortest deadline, between 100 ms and 5 s.
    pub fn tick(&self) -> Duration {
        let o = self.observe_config();
        (o.start_deadline.min(o.node_lost_after) / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

fn storage_quantity(s: &str) -> Result<String, String> {
    match lapdev_common::quantity::parse_bytes(s) {
        Ok(b) if b > 0 => Ok(s.trim().to_owned()),
        _ => Err(format!(
            "{s:?} is not a positive storage quantity (e.g. 2Gi)"
        )),
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
    fn a_cluster_token_must_have_the_shape_of_one() {
        let with = |token: &str| {
            parse(&[
                "--server-url",
                "https://l.example",
                "--cluster-token",
                token,
            ])
            .check_cluster_token()
        };
        assert!(with(&format!("lapdev_ct_{}", "a".repeat(43))).is_ok());
        let pat = with(&format!("lapdev_pat_{}", "a".repeat(43))).unwrap_err();
        assert!(pat.contains("personal access token"), "{pat}");
        let short = with("lapdev_ct_short").unwrap_err();
        assert!(
            short.contains("shape") && short.contains("53 characters"),
            "{short}"
        );
        let empty = with("").unwrap_err();
        assert!(empty.contains("it is empty"), "{empty}");
        let spaced = with(&format!(" lapdev_ct_{}\n", "a".repeat(43))).unwrap_err();
        assert!(spaced.contains("LAPDEV_KUBE_CLUSTER_TOKEN"), "{spaced}");
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
        let w = c.workspace_settings();
        assert_eq!(w, WorkspaceSettings::default());
        assert_eq!(c.observe_config(), ObserveConfig::default());
        assert_eq!(c.watch_retry_max(), Duration::from_secs(30));
        assert_eq!(c.tick(), Duration::from_secs(5));
        assert_eq!(c.manifest_revision, None);
    }

    #[test]
    fn workspace_settings_from_flags() {
        let c = parse(&[
            "--server-url",
            "http://s",
            "--cluster-token",
            "t",
            "--security-profile",
            "restricted",
            "--workspace-fs-group",
            "2000",
            "--workspace-cpu-limit",
            "2x",
            "--workspace-ephemeral-storage-limit",
            "10Gi",
            "--node-lost-force-delete-secs",
            "2",
            "--manifest-revision",
            "3",
        ]);
        let w = c.workspace_settings();
        assert_eq!(w.security_profile, SecurityProfile::Restricted);
        assert_eq!(w.fs_group, 2000);
        assert_eq!(w.cpu_limit, CpuLimit::Times(2.0));
        assert_eq!(w.ephemeral_storage_limit, "10Gi");
        assert_eq!(c.observe_config().node_lost_after, Duration::from_secs(2));
        assert_eq!(c.tick(), Duration::from_millis(200));
        assert_eq!(c.manifest_revision.as_deref(), Some("3"));
        let bad = Config::try_parse_from([
            "m",
            "--server-url",
            "http://s",
            "--cluster-token",
            "t",
            "--workspace-ephemeral-storage-request",
            "lots",
        ]);
        assert!(bad.is_err());
        let bad = Config::try_parse_from([
            "m",
            "--server-url",
            "http://s",
            "--cluster-token",
            "t",
            "--security-profile",
            "privileged",
        ]);
        assert!(bad.is_err());
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
