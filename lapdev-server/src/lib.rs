//! Lapdev's central server: configuration, wiring and the HTTP surface.
//!
//! `main.rs` parses flags ([`config::Cli`]) and calls [`Server::start`]; tests
//! start the same server in-process or build the router alone with [`app`].
//!
//! HTTP surface:
//! - `/healthz` (process up), `/readyz` (database reachable), `/metrics`
//!   (Prometheus);
//! - `/rpc/KubeClusterRpc/*` and `GET /rpc/_tunnel`: managers, authenticated by
//!   cluster token;
//! - `/rpc/AdminRpc/*`, `/rpc/ProviderRpc/*`, `/rpc/WorkspaceRpc/*`,
//!   `/rpc/PeopleRpc/*`: the admin API, behind one authorization layer
//!   ([`auth`]): a personal access token (or a legacy admin JWT), the user's role
//!   looked up per request, and the role each method declares.

pub mod admin;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod connector;
pub mod datadir;
pub mod jwt;
pub mod lifecycle_metrics;
pub mod metrics;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use lapdev_db::{CredentialKey, Db};
use lapdev_hrpc::{IntoRoutes as _, RpcRouter};
use lapdev_kube::server::{KubeClusterServer, KubeClusterServerConfig};
use tokio::sync::watch;

use crate::admin::api::AdminRpcServer;
use crate::admin::service::{AdminService, ManifestDefaults, require_admin};
use crate::admin::workspaces::{WorkspaceRpcServer, WorkspaceService};
use crate::config::ServerConfig;
use crate::connector::TunnelConnector;
use crate::datadir::DataDir;
use crate::jwt::JwtKeys;
use lapdev_conductor::{Conductor, ConductorConfig};
use std::sync::Arc;

/// Everything the HTTP surface needs.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// The manager side.
    pub kube: KubeClusterServer,
    /// Admin token keys.
    pub jwt: JwtKeys,
    /// The admin API.
    pub admin: AdminService,
    /// The workspace API.
    pub workspaces: WorkspaceService,
    /// Placement and lifecycle.
    pub conductor: Conductor,
    /// The authorization layer's state.
    pub auth: auth::AuthState,
    /// Users, tokens, sign-in and the audit log.
    pub people: auth::service::PeopleService,
}

/// The server's whole HTTP surface.
pub fn app(state: AppState) -> Router {
    // Install the metrics recorder before the first request is counted.
    let _ = metrics::handle();
    let jwt = || axum::middleware::from_fn_with_state(state.jwt.clone(), require_admin);
    let admin = AdminRpcServer::new(state.admin.clone())
        .into_routes()
        .route_layer(jwt());
    let workspaces = WorkspaceRpcServer::new(state.workspaces.clone())
        .into_routes()
        .route_layer(jwt());
    let rpc = RpcRouter::new()
        .merge(state.kube.routes())
        .merge(admin::providers::routes(&state))
        .merge(admin)
        .merge(workspaces)
        .merge(auth::api::PeopleRpcServer::new(state.people.clone()).into_routes())
        .into_router()
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authorize,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .with_state(state)
        .nest("/rpc", rpc)
        .layer(axum::middleware::from_fn(metrics::track))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

async fn metrics_endpoint(State(state): State<AppState>) -> impl IntoResponse {
    ::metrics::gauge!("lapdev_connected_clusters")
        .set(state.kube.connected_clusters().len() as f64);
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::handle().render(),
    )
}

/// Secrets resolved from flags, environment or the data directory.
pub struct Secrets {
    /// Admin token keys.
    pub jwt: JwtKeys,
    /// Provider credential key.
    pub encryption_key: CredentialKey,
}

/// Resolves the JWT secret and encryption key: flags and environment first, the
/// data directory (generated on first start) otherwise.
pub fn load_secrets(config: &ServerConfig, data_dir: &DataDir) -> anyhow::Result<Secrets> {
    let jwt_secret = match (&config.jwt_secret, &config.jwt_secret_file) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(file)) => std::fs::read(file)
            .with_context(|| format!("reading the JWT secret from {}", file.display()))?
            .trim_ascii()
            .to_vec(),
        (None, None) => data_dir.secret("jwt-secret")?.0,
    };
    let jwt = JwtKeys::from_secret(&jwt_secret).context("the JWT signing secret")?;
    let key_bytes = match &config.encryption_key {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("LAPDEV_ENCRYPTION_KEY must be base64 of 32 bytes")?,
        None => data_dir.secret("encryption-key")?.0,
    };
    let encryption_key = CredentialKey::from_bytes(&key_bytes)
        .context("LAPDEV_ENCRYPTION_KEY must be base64 of 32 bytes")?;
    Ok(Secrets {
        jwt,
        encryption_key,
    })
}

/// A started server.
pub struct Server {
    /// Where it listens.
    pub local_addr: SocketAddr,
    /// Its state (tests reach the database and the cluster server through it).
    pub state: AppState,
    /// The admin token minted on first start, if this was the first start.
    pub first_admin_token: Option<String>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the data directory and database (running migrations), checks the
    /// encryption key, bootstraps the first organisation, binds and starts
    /// serving. Returns once the listener is bound.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        let data_dir = DataDir::open(&config.data_dir)?;
        let secrets = load_secrets(&config, &data_dir)?;
        let url = config
            .database_url
            .clone()
            .unwrap_or_else(|| data_dir.sqlite_url());
        let db = lapdev_db::connect(&url)
            .await
            .with_context(|| format!("opening the database at {}", redact_url(&url)))?;
        db.check_credential_key(&secrets.encryption_key)
            .await
            .context(
                "the credential-encryption key does not match the one this database was \
                 written with; start with the original LAPDEV_ENCRYPTION_KEY (or data \
                 directory)",
            )?;
        // Tunnels live in memory: after a restart no manager is connected until
        // it dials in again.
        let stale = db
            .mark_connected_clusters_disconnected()
            .await
            .context("resetting cluster connection status")?;
        if stale > 0 {
            tracing::info!(
                clusters = stale,
                "marked clusters disconnected until their managers reconnect"
            );
        }
        let bootstrap = bootstrap::ensure_first_admin(&db, &data_dir, config.admin_token_days)
            .await
            .context("creating the first organisation and owner")?;

        let kube = KubeClusterServer::new(
            db.clone(),
            KubeClusterServerConfig {
                heartbeat_interval: config.heartbeat_interval(),
                ..Default::default()
            },
        );
        let public_ca = match &config.public_ca_file {
            Some(f) => Some(
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            ),
            None => None,
        };
        let conductor = Conductor::new(
            db.clone(),
            Arc::new(TunnelConnector(kube.clone())),
            ConductorConfig::default(),
        );
        let admin = AdminService::new(
            db.clone(),
            kube.clone(),
            ManifestDefaults {
                server_url: config.public_url(),
                server_ca_pem: public_ca,
                image: config.manager_image.clone(),
            },
            secrets.encryption_key.clone(),
        )
        .with_conductor(conductor.clone());
        let auth = auth::AuthState::new(db.clone(), secrets.jwt.clone())
            .with_trusted_proxies(config.trusted_proxies.clone());
        let people = auth::service::PeopleService::new(
            db.clone(),
            auth.clone(),
            auth::password::Passwords::new(config.password_hash_concurrency())
                .context("preparing the password hasher")?,
            auth::service::TokenPolicy {
                default_days: 30.min(config.max_token_days),
                max_days: config.max_token_days,
            },
        );
        let state = AppState {
            auth,
            people,
            db: db.clone(),
            kube: kube.clone(),
            jwt: secrets.jwt.clone(),
            admin,
            workspaces: WorkspaceService::new(db.clone(), conductor.clone()),
            conductor: conductor.clone(),
        };
        let router = app(state.clone());

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let signal = {
            let mut rx = shutdown_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let sweeper = {
            let kube = kube.clone();
            let mut rx = shutdown_rx.clone();
            tokio::spawn(async move {
                kube.run_sweeper(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await;
            })
        };
        let flusher = {
            let db = db.clone();
            let mut rx = shutdown_rx.clone();
            tokio::spawn(async move {
                db.run_token_usage_flusher(Duration::from_secs(5), async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await;
            })
        };

        let lifecycle = {
            let db = db.clone();
            let mut rx = shutdown_rx.clone();
            tokio::spawn(async move {
                lifecycle_metrics::run(db, async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await;
            })
        };
        let reconciler = {
            let mut rx = shutdown_rx.clone();
            tokio::spawn(async move {
                conductor
                    .run(async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    })
                    .await;
            })
        };

        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let task = tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<auth::layer::ClientAddr>();
            let served = match tls {
                Some(tls) => {
                    axum::serve(tls::TlsListener::new(listener, tls)?, service)
                        .with_graceful_shutdown(signal)
                        .await
                }
                None => {
                    axum::serve(listener, service)
                        .with_graceful_shutdown(signal)
                        .await
                }
            };
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
            let _ = sweeper.await;
            let _ = flusher.await;
            let _ = reconciler.await;
            let _ = lifecycle.await;
            served.context("serving HTTP")
        });
        Ok(Server {
            local_addr,
            state,
            first_admin_token: bootstrap,
            shutdown,
            task,
        })
    }

    /// Asks the server to stop: no new connections, in-flight requests finish,
    /// background loops flush and end.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task panicked")?
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((creds, host)) => {
                let user = creds.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
