//! The `lapdev-kube-manager` binary: parses the config, builds the Kubernetes
//! client (`kube::Config::infer()`: in-cluster, else `KUBECONFIG`), starts the
//! watchers, the health port and the connection loop, and stops them all on
//! SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use lapdev_kube_manager::access::{self, Access};
use lapdev_kube_manager::cluster_info::ManagerIdentity;
use lapdev_kube_manager::config::{Config, LogFormat};
use lapdev_kube_manager::health::{self, HealthState};
use lapdev_kube_manager::manager::{Connection, Manager, ServerSettings};
use lapdev_kube_manager::ratelimit::RateLimitLayer;
use lapdev_kube_manager::rpc::ManagerRpc;
use lapdev_kube_manager::tracker::Tracker;
use lapdev_kube_manager::watch::{self, WatchSettings};
use lapdev_kube_manager::workspace::Workspaces;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    // ring is the one rustls crypto provider (see ARCHITECTURE.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::parse();
    init_logging(config.log_format);
    config.check_cluster_token().map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?
        .block_on(run(config))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into());
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

fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    Some(handle)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = metrics_handle();
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));

    let mut kube_config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster service account or KUBECONFIG)")?;
    // Command calls retry by themselves, bounded and classified
    // (`error::call`); kube's own retries of 429/503/504 would hide throttling
    // past the conductor's deadline.
    kube_config.default_retry = false;
    let client = kube::client::ClientBuilder::try_from(kube_config)
        .context("building the Kubernetes client")?
        .with_layer(&RateLimitLayer::new(config.kube_qps, config.kube_burst))
        .build();

    let identity = ManagerIdentity {
        manager_version: env!("CARGO_PKG_VERSION").to_owned(),
        manager_namespace: config.manager_namespace(),
        workspace_namespace: config.workspace_namespace.clone(),
        manifest_revision: config.manifest_revision.clone(),
        capacity_mode: config.capacity,
    };
    let tracker = Tracker::new(identity, config.observe_config());
    tracker.set_coalescing(config.coalescing());
    let settings = config.workspace_settings();
    let watchers = watch::spawn(
        client.clone(),
        tracker.clone(),
        WatchSettings {
            workspace: settings.clone(),
            probe_interval: config.kube_probe_interval(),
            timeout: config.kube_timeout(),
            retry_cap: config.watch_retry_max(),
            tick: config.tick(),
            capacity_mode: config.capacity,
        },
        shutdown.clone(),
    );

    let access = access::router(Access::new(client.clone(), config.access_settings()));
    let workspaces = Workspaces::new(client, settings, config.kube_timeout(), tracker.clone());
    let router = ManagerRpc::new(workspaces, tracker.clone())
        .into_router()
        .merge(access);
    let connection = Arc::new(Connection::default());
    let manager = Manager::new(
        ServerSettings {
            rpc_base: config.rpc_base(),
            tunnel_url: config.tunnel_url(),
            token: config.cluster_token.clone(),
            extra_ca_pem: config.server_ca_pem()?,
            reconnect_max: config.reconnect_max(),
            // HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as curl reads them.
            proxy: Some(lapdev_hrpc::proxy::ProxyRules::from_env()),
        },
        router,
        tracker.clone(),
        connection.clone(),
    )
    .context("setting up the server connection")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr().unwrap_or(config.listen),
        server = %config.server_url,
        namespace = %config.workspace_namespace,
        security_profile = %config.security_profile,
        "lapdev-kube-manager starting"
    );
    let app = health::app(HealthState {
        connection,
        kube: tracker.health(),
        metrics,
    });
    let health_shutdown = shutdown.clone();
    let health = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(health_shutdown.cancelled_owned())
            .await
    });

    manager.run(shutdown.clone()).await;
    shutdown.cancel();
    for w in watchers {
        let _ = w.await;
    }
    health
        .await
        .context("the health server task failed")?
        .context("serving the health port")?;
    tracing::info!("lapdev-kube-manager stopped");
    Ok(())
}

async fn signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}
