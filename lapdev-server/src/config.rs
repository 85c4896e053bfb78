//! Command-line flags and environment variables of `lapdev-server`, parsed once
//! with clap and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Lapdev's central server: connect Kubernetes clusters and run developer
/// workspaces on them. With no flags it starts on 127.0.0.1:8080 with an
/// embedded SQLite database and generated secrets in ./lapdev-data.
#[derive(Debug, Clone, Parser)]
#[command(name = "lapdev-server", version, about)]
pub struct Cli {
    /// What to do; the default is to serve.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings.
    #[command(flatten)]
    pub server: ServerConfig,
    /// Limits and policies against hostile or slow clients and untrusted
    /// endpoints.
    #[command(flatten)]
    pub limits: LimitsConfig,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Mint a fresh owner personal access token (`lapdev_pat_…`) for the first
    /// organisation's owner, print it and write it to <data-dir>/admin-token.
    AdminToken {
        /// How long the token is valid, in days.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Audit-log retention: delete every audit row older than `--before` (an
    /// RFC 3339 time) or `--older-than-days`, in one transaction that also
    /// records the pruning. The database user must own `audit_log`
    /// (PostgreSQL: `ALTER TABLE .. DISABLE TRIGGER`); run it from cron or a
    /// Kubernetes CronJob.
    AuditPrune {
        /// Delete rows older than this time.
        #[arg(long, conflicts_with = "older_than_days")]
        before: Option<chrono::DateTime<chrono::Utc>>,
        /// Delete rows older than this many days.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=36500))]
        older_than_days: Option<u64>,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the server needs to start.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "LAPDEV_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the embedded database and generated secrets.
    #[arg(
        long,
        env = "LAPDEV_DATA_DIR",
        default_value = "./lapdev-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Database URL (`postgres://…` in production). Default: SQLite in the data
    /// directory.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The URL managers dial to reach this server (put into install manifests).
    /// Default: http://<listen>.
    #[arg(long, env = "LAPDEV_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A PEM file with the CA managers should trust for --public-url (put into
    /// install manifests as LAPDEV_SERVER_CA).
    #[arg(long, env = "LAPDEV_PUBLIC_CA_FILE")]
    pub public_ca_file: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "LAPDEV_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// TLS certificate chain (PEM); with --tls-key the server terminates TLS.
    #[arg(long, env = "LAPDEV_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "LAPDEV_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// JWT signing secret (at least 32 bytes). Default: generated in the data
    /// directory.
    #[arg(long, env = "LAPDEV_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,
    /// File holding the JWT signing secret.
    #[arg(
        long,
        env = "LAPDEV_JWT_SECRET_FILE",
        conflicts_with = "jwt_secret",
        global = true
    )]
    pub jwt_secret_file: Option<PathBuf>,
    /// Credential-encryption key: 32 bytes, base64. Default: generated in the
    /// data directory. The server refuses to start if it does not match the key
    /// the database was written with.
    #[arg(
        long,
        env = "LAPDEV_ENCRYPTION_KEY",
        hide_env_values = true,
        global = true
    )]
    pub encryption_key: Option<String>,
    /// Manager image put into install manifests.
    #[arg(long, env = "LAPDEV_MANAGER_IMAGE", default_value = concat!("ghcr.io/lapdev/lapdev-kube-manager:", env!("CARGO_PKG_VERSION")))]
    pub manager_image: String,
    /// Heartbeat interval managers are told to keep, in seconds.
    #[arg(long, env = "LAPDEV_HEARTBEAT_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_interval_secs: u64,
    /// How long an admin token minted on first start is valid, in days (at most
    /// `--max-token-days`).
    #[arg(long, env = "LAPDEV_ADMIN_TOKEN_DAYS", default_value_t = 30)]
    pub admin_token_days: u64,
    /// The longest a personal access token may live, in days.
    #[arg(long, env = "LAPDEV_MAX_TOKEN_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub max_token_days: u64,
    /// Proxies whose `x-forwarded-for` is believed (comma-separated addresses);
    /// from any other peer the socket's address is the client's.
    #[arg(long, env = "LAPDEV_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl ServerConfig {
    /// Password hashes computed at once: half the cores (at least one), so
    /// sign-ins never take every core from the other RPCs.
    pub fn password_hash_concurrency(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2))
    }

    /// How often managers heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// The URL managers dial.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", self.listen)
            }
        }
    }
}

/// Limits and policies that protect the server from hostile or slow clients and
/// from untrusted endpoints. Kept apart from [`ServerConfig`] so
/// [`crate::Server::start`] keeps its defaults; [`crate::Server::start_with`]
/// takes them explicitly.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsConfig {
    /// Serve `/metrics` on this address instead of the public listener.
    #[arg(long, env = "LAPDEV_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// A file holding a token that `/metrics` then requires as
    /// `authorization: Bearer <token>`.
    #[arg(long, env = "LAPDEV_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// How long a client may take to send a request's headers, in seconds; an
    /// idle HTTP/1.1 keep-alive connection waiting for its next request is held
    /// no longer than this either.
    #[arg(long, env = "LAPDEV_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,
    /// Close a connection (HTTP/1.1 or HTTP/2) that moved no bytes and has no
    /// request in flight for this many seconds. Upgraded connections (the
    /// manager tunnel) are not affected: they have their own pings.
    #[arg(long, env = "LAPDEV_IDLE_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout_secs: u64,
    /// How long a client may take to complete a TLS handshake, in seconds.
    #[arg(long, env = "LAPDEV_TLS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub tls_handshake_timeout_secs: u64,
    /// At most this many TLS handshakes in progress at once; further
    /// connections wait to be accepted.
    #[arg(long, env = "LAPDEV_MAX_TLS_HANDSHAKES", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_tls_handshakes: u64,
    /// At most this many open client connections (requests, streams and
    /// manager tunnels alike); further connections wait to be accepted.
    #[arg(long, env = "LAPDEV_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: u64,
    /// Of those, at most this many manager tunnels (a connection's class is set
    /// by its first request: a tunnel upgrade that succeeds). Other classes
    /// cannot take these slots, so a flood of them cannot starve the tunnels.
    #[arg(long, env = "LAPDEV_MAX_TUNNEL_CONNECTIONS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_tunnel_connections: u64,
    /// Of those, at most this many connections whose first request carried
    /// credentials (`authorization` or a cluster token): the API and streams.
    #[arg(long, env = "LAPDEV_MAX_API_CONNECTIONS", default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_api_connections: u64,
    /// Of those, at most this many connections whose first request carried no
    /// credentials (sign-in, health checks, scanners).
    #[arg(long, env = "LAPDEV_MAX_UNAUTHENTICATED_CONNECTIONS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_unauthenticated_connections: u64,
    /// The longest a unary request (every HRPC method) may take before the
    /// server answers `504 deadline_exceeded`, in seconds. The tunnel upgrade
    /// and streamed response bodies are not cut by it.
    #[arg(long, env = "LAPDEV_REQUEST_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,
    /// Let cloud providers use any https endpoint and loopback http (local
    /// stand-ins in tests and development). Without it a provider's API
    /// endpoint must be on `*.googleapis.com` and its key's `token_uri` on
    /// Google's OAuth hosts.
    #[arg(long, env = "LAPDEV_ALLOW_PROVIDER_TEST_ENDPOINTS")]
    pub allow_provider_test_endpoints: bool,
    /// A browser session unused this long ends, in minutes.
    #[arg(long, env = "LAPDEV_SESSION_IDLE_MINUTES", default_value_t = 480, value_parser = clap::value_parser!(u64).range(1..=10080))]
    pub session_idle_minutes: u64,
    /// A browser session ends this long after sign-in however busy, in hours.
    #[arg(long, env = "LAPDEV_SESSION_MAX_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=8760))]
    pub session_max_hours: u64,
    /// How long a verified cluster token is trusted without asking the
    /// database again, in seconds (0: ask on every call). Revocations through
    /// this server apply at once regardless.
    #[arg(long, env = "LAPDEV_TOKEN_CACHE_TTL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub token_cache_ttl_secs: u64,
    /// While the database cannot answer, a cluster token it confirmed within
    /// the cache TTL plus this many seconds is still accepted, so a database
    /// outage shorter than this drops no tunnel and changes no cluster status.
    #[arg(long, env = "LAPDEV_TOKEN_STALE_IF_ERROR_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub token_stale_if_error_secs: u64,
    /// Several replicas (PostgreSQL only): how often this replica renews its
    /// lease in the replica registry, in seconds.
    #[arg(long, env = "LAPDEV_REPLICA_HEARTBEAT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub replica_heartbeat_secs: u64,
    /// How long a replica's lease lasts without a renewal, in seconds (in the
    /// database's clock; at least three heartbeats). Another replica takes
    /// over a dead one's clusters after this.
    #[arg(long, env = "LAPDEV_REPLICA_LEASE_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub replica_lease_secs: u64,
    /// Several replicas (PostgreSQL only): the internal listener other
    /// replicas forward a cluster's manager calls and streams to (only those;
    /// authenticated with a key derived from the encryption key). Never expose
    /// it through the public Service or Ingress. Default: the --listen IP with
    /// an ephemeral port (Kubernetes: `0.0.0.0:8081`).
    #[arg(long, env = "LAPDEV_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// The address (`host:port`) other replicas reach this one's internal
    /// listener on, as written in the replica registry (in Kubernetes: the
    /// pod's IP and the internal port). Default: the internal listener's
    /// bound address.
    #[arg(long, env = "LAPDEV_REPLICA_ADDRESS")]
    pub replica_address: Option<String>,
    /// At shutdown (SIGTERM), after readiness fails: close the managers'
    /// tunnels one at a time spread over this many seconds, so they redial
    /// the other replicas spread out rather than all at once; new tunnels are
    /// refused meanwhile. 0 closes them all at once. Keep it under the pod's
    /// `terminationGracePeriodSeconds`.
    #[arg(long, env = "LAPDEV_SHUTDOWN_DRAIN_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub shutdown_drain_secs: u64,
    /// How long the conductor waits before it retries a workspace step that
    /// failed or did not settle (a manager call refused or unanswered, a pod
    /// still terminating) and before it re-creates a pod that ended, in
    /// seconds. Each consecutive attempt doubles it, plus up to a quarter of
    /// jitter, up to --workspace-retry-max-secs. Reports from the manager
    /// (a pod running, ended or gone) are applied at once regardless.
    #[arg(long, env = "LAPDEV_WORKSPACE_RETRY_INITIAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub workspace_retry_initial_secs: u64,
    /// The longest wait between two attempts at one workspace, in seconds
    /// (at least --workspace-retry-initial-secs).
    #[arg(long, env = "LAPDEV_WORKSPACE_RETRY_MAX_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub workspace_retry_max_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            metrics_listen: None,
            metrics_token_file: None,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 120,
            tls_handshake_timeout_secs: 10,
            max_tls_handshakes: 256,
            max_connections: 10_000,
            max_tunnel_connections: 5_000,
            max_api_connections: 4_000,
            max_unauthenticated_connections: 500,
            request_timeout_secs: 60,
            allow_provider_test_endpoints: false,
            session_idle_minutes: 480,
            session_max_hours: 168,
            token_cache_ttl_secs: 5,
            token_stale_if_error_secs: 300,
            replica_heartbeat_secs: 5,
            replica_lease_secs: 20,
            internal_listen: None,
            replica_address: None,
            shutdown_drain_secs: 10,
            workspace_retry_initial_secs: 10,
            workspace_retry_max_secs: 600,
        }
    }
}

impl LimitsConfig {
    /// The header read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// The idle connection timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The TLS handshake timeout.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_secs)
    }

    /// The replica registry's heartbeat and lease, checked to be at least
    /// three heartbeats long.
    pub fn lease_timing(
        &self,
    ) -> Result<lapdev_db::LeaseTiming, lapdev_db::replica::LeaseTooShort> {
        lapdev_db::LeaseTiming::new(
            Duration::from_secs(self.replica_heartbeat_secs),
            Duration::from_secs(self.replica_lease_secs),
        )
    }

    /// How long shutdown spreads the tunnels' closes over.
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_secs)
    }

    /// The unary request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The conductor's first and longest retry delay, checked to be in order.
    pub fn workspace_retry(&self) -> Result<(Duration, Duration), RetryOutOfOrder> {
        if self.workspace_retry_max_secs < self.workspace_retry_initial_secs {
            return Err(RetryOutOfOrder {
                initial_secs: self.workspace_retry_initial_secs,
                max_secs: self.workspace_retry_max_secs,
            });
        }
        Ok((
            Duration::from_secs(self.workspace_retry_initial_secs),
            Duration::from_secs(self.workspace_retry_max_secs),
        ))
    }
}

/// `--workspace-retry-max-secs` is shorter than `--workspace-retry-initial-secs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--workspace-retry-max-secs / LAPDEV_WORKSPACE_RETRY_MAX_SECS ({max_secs}) is shorter than \
     --workspace-retry-initial-secs / LAPDEV_WORKSPACE_RETRY_INITIAL_SECS ({initial_secs}); the \
     longest retry delay must be at least the first"
)]
pub struct RetryOutOfOrder {
    /// The first delay asked for.
    pub initial_secs: u64,
    /// The longest delay asked for.
    pub max_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delays_must_be_in_order() {
        let cli = Cli::try_parse_from([
            "lapdev-server",
            "--workspace-retry-initial-secs",
            "30",
            "--workspace-retry-max-secs",
            "20",
        ])
        .unwrap();
        let e = cli.limits.workspace_retry().unwrap_err();
        assert!(
            e.to_string()
                .contains("LAPDEV_WORKSPACE_RETRY_MAX_SECS (20) is shorter"),
            "{e}"
        );
        let d = LimitsConfig::default().workspace_retry().unwrap();
        assert_eq!(d, (Duration::from_secs(10), Duration::from_secs(600)));
        let zero = Cli::try_parse_from(["lapdev-server", "--workspace-retry-initial-secs", "0"]);
        assert!(zero.is_err(), "a zero delay is refused by the parser");
    }

    #[test]
    fn the_flag_defaults_match_default() {
        let cli = Cli::try_parse_from(["lapdev-server"]).unwrap();
        let d = LimitsConfig::default();
        assert_eq!(
            format!("{:?}", cli.limits),
            format!("{d:?}"),
            "clap defaults and LimitsConfig::default() drifted apart"
        );
    }
}
