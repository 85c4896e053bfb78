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
    /// How long an admin token minted on first start is valid, in days.
    #[arg(long, default_value_t = 30)]
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
