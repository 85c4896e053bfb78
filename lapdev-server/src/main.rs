//! The `lapdev-server` binary: parses flags and runs [`lapdev_server::Server`]
//! until SIGTERM or Ctrl-C.

use anyhow::Context as _;
use clap::Parser as _;
use lapdev_server::config::{Cli, Command, LogFormat};
use lapdev_server::{Server, bootstrap, datadir::DataDir};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One rustls crypto provider for the whole process; see ARCHITECTURE.md.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.server.log_format);

    if let Some(Command::AdminToken { days }) = cli.command {
        require_data_dir(&cli.server)?;
        let data_dir = DataDir::open(&cli.server.data_dir)?;
        let url = match &cli.server.database_url {
            Some(url) => url.clone(),
            None => data_dir.sqlite_url()?,
        };
        let db = lapdev_db::connect(&url).await.with_context(|| {
            format!(
                "opening the database at {}",
                lapdev_server::redact_url(&url)
            )
        })?;
        let token =
            bootstrap::mint_admin_token(&db, &data_dir, days.min(cli.server.max_token_days))
                .await?;
        println!("{token}");
        return Ok(());
    }

    if let Some(Command::AuditPrune {
        before,
        older_than_days,
    }) = cli.command
    {
        let before = match (before, older_than_days) {
            (Some(t), None) => t,
            (None, Some(days)) => {
                chrono::Utc::now()
                    - chrono::Duration::days(i64::try_from(days).context("--older-than-days")?)
            }
            _ => anyhow::bail!("give exactly one of --before or --older-than-days"),
        };
        require_data_dir(&cli.server)?;
        let data_dir = DataDir::open(&cli.server.data_dir)?;
        let url = match cli.server.database_url.clone() {
            Some(url) => url,
            None => data_dir.sqlite_url()?,
        };
        let db = lapdev_db::connect(&url).await.with_context(|| {
            format!(
                "opening the database at {}",
                lapdev_server::redact_url(&url)
            )
        })?;
        let pruned = db
            .prune_audit(
                before,
                lapdev_db::NewAuditEntry {
                    actor_name: Some("lapdev-server audit-prune".into()),
                    action: "audit.prune".into(),
                    outcome: "success".into(),
                    ..Default::default()
                },
            )
            .await
            .context(
                "pruning the audit log (the database user must own audit_log to lift its \
                 append-only trigger)",
            )?;
        println!(
            "deleted {pruned} audit rows older than {}",
            lapdev_common::time::at(before)
        );
        return Ok(());
    }

    let server = Server::start_with(cli.server.clone(), cli.limits.clone()).await?;
    let scheme = if cli.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(addr = %server.local_addr, "lapdev-server listening");
    println!(
        "lapdev-server listening on {scheme}://{}",
        server.local_addr
    );
    if server.first_admin_token.is_some() {
        let file = cli.server.data_dir.join(bootstrap::ADMIN_TOKEN_FILE);
        println!(
            "\nFirst start: created organisation {:?} and its owner {:?}.\nAn owner personal access token was written to {} (mode 0600).\nUse it with the CLI:\n  export LAPDEV_SERVER={scheme}://{}\n  export LAPDEV_TOKEN=$(cat {})\n  lapdev cluster list\n(from a source checkout: cargo run --bin lapdev -- cluster list)\n",
            bootstrap::DEFAULT_ORGANIZATION,
            bootstrap::ADMIN_USER,
            file.display(),
            server.local_addr,
            file.display(),
        );
    }

    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown();
    server.wait().await
}

/// The one-shot commands work on an existing server's data: on the embedded
/// default (no `--database-url`), a missing data directory means the wrong
/// `--data-dir` (or none started yet), not an empty one to create.
fn require_data_dir(server: &lapdev_server::config::ServerConfig) -> anyhow::Result<()> {
    if server.database_url.is_none() && !server.data_dir.exists() {
        anyhow::bail!(
            "no data directory at {}: pass the server's --data-dir (or LAPDEV_DATA_DIR), or start the server once to create it",
            server.data_dir.display()
        );
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // See `lapdev_common::logs`: stderr, colour only on a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(lapdev_common::logs::colour());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
