//! Lapdev's central server: configuration, wiring and the HTTP surface.
//!
//! `main.rs` parses flags ([`config::Cli`]) and calls [`Server::start`]; tests
//! start the same server in-process or build the router alone with [`app`].
//!
//! HTTP surface:
//! - `/healthz` (process up), `/readyz` (database reachable), `/metrics`
//!   (Prometheus; on its own listener with `--metrics-listen`, behind a bearer
//!   token with `--metrics-token-file`; labels from a closed set, see
//!   [`metrics`]);
//! - `/rpc/KubeClusterRpc/*` and `GET /rpc/_tunnel`: managers, authenticated by
//!   cluster token;
//! - `/rpc/AdminRpc/*`, `/rpc/ProviderRpc/*`, `/rpc/WorkspaceRpc/*`,
//!   `/rpc/PeopleRpc/*`: the admin API, behind one authorization layer
//!   ([`auth`]): a personal access token (or a legacy admin JWT), the user's role
//!   looked up per request, and the role each method declares; a browser
//!   session cookie is accepted instead of a token with the CSRF header and
//!   the server's own `Origin`;
//! - `/auth/…`: password and OpenID Connect sign-in for browsers and the CLI
//!   ([`auth::web`]); WebSocket upgrades from another `Origin` are refused.
//! - `/api/v1/workspaces/{name}/exec` and `/portforward`: WebSocket sessions
//!   into workspaces for the CLI ([`access`]), bridged to streams on managers.
//! - `/`, `/sign-in`, `/workspaces/…`, `/clusters`, `/connect`, `/tokens`,
//!   `/users`, `/audit`, `/providers`, `/assets/…`, `/events`: the web
//!   dashboard ([`web`]).
//!
//! On PostgreSQL a second listener (`--internal-listen`) serves only the other
//! replicas: a cluster's forwarded manager calls and stream opens, signed
//! ([`routing`]). The public router has no `/internal` route.

pub mod access;
pub mod admin;
pub mod auth;
pub mod background;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod conn_class;
pub mod connector;
pub mod datadir;
pub mod idle;
pub mod jwt;
pub mod lifecycle_metrics;
pub mod metrics;
pub mod quota;
pub mod replica;
pub mod replica_changes;
pub mod routing;
pub mod secret_file;
pub mod serve;
pub mod tls;
pub mod web;

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
use crate::config::{LimitsConfig, ServerConfig};
use crate::connector::TunnelConnector;
use crate::datadir::DataDir;
use crate::jwt::JwtKeys;
use crate::metrics::{KnownRoutes, MetricsAccess};
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
    /// Which endpoints cloud providers may use.
    pub provider_endpoints: lapdev_kube::provider::EndpointPolicy,
    /// Cloud providers and the clusters they manage (`ProviderRpc`).
    pub providers: admin::providers::ProviderService,
    /// How exec and port-forward streams reach managers.
    pub streams: Arc<dyn access::StreamOpener>,
    /// The browser and CLI sign-in endpoints (`/auth/`).
    pub web: auth::web::WebState,
    /// Work requests leave running (provider operations); ends with the server.
    pub background: background::Background,
    /// Open sessions per workspace (what keeps a workspace from idling).
    pub activity: idle::WorkspaceActivity,
    /// The idle and lifetime sweep (tests call `sweep_once`).
    pub idle: idle::IdleSweeper,
    /// Workspace quotas.
    pub quota: quota::QuotaService,
    /// Idle, lifetime and retention policy; keep-alive.
    pub timers: idle::api::WorkspaceTimerService,
    /// The dashboard's live updates.
    pub events: web::events::EventHub,
    /// This replica's place in the replica registry (`/readyz` reads it).
    pub replica: replica::ReplicaStatus,
    /// Forwarding to other replicas (PostgreSQL; `None` on SQLite).
    pub routing: Option<routing::Routing>,
}

/// How the HTTP surface is put together beyond its state.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Serve `/metrics` on the public router (false when it has a listener of
    /// its own).
    pub metrics_on_public: bool,
    /// Who may read `/metrics`.
    pub metrics_access: MetricsAccess,
    /// The longest a unary request may take.
    pub request_timeout: Duration,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            metrics_on_public: true,
            metrics_access: MetricsAccess::default(),
            request_timeout: LimitsConfig::default().request_timeout(),
        }
    }
}

/// The server's whole HTTP surface, with default [`AppOptions`].
pub fn app(state: AppState) -> Router {
    app_with(state, &AppOptions::default())
}

/// The routes that get a metrics label of their own: the fixed endpoints, the
/// sign-in endpoints, the session endpoints (by their route templates, so a
/// workspace's name never becomes a label) and every HRPC method the
/// descriptors list.
pub fn known_routes() -> KnownRoutes {
    KnownRoutes::new(
        ["/healthz", "/readyz", "/metrics", "/rpc/_tunnel"]
            .into_iter()
            .chain(auth::web::ROUTES)
            .chain(access::ROUTES),
        "/rpc",
        &[
            lapdev_kube_rpc::KubeClusterRpcClient::DESCRIPTOR,
            admin::api::AdminRpcClient::DESCRIPTOR,
            admin::workspaces::WorkspaceRpcClient::DESCRIPTOR,
            admin::providers::ProviderRpcClient::DESCRIPTOR,
            auth::api::PeopleRpcClient::DESCRIPTOR,
            quota::QuotaRpcClient::DESCRIPTOR,
            idle::api::WorkspaceTimerRpcClient::DESCRIPTOR,
        ],
    )
}

/// The server's whole HTTP surface.
pub fn app_with(state: AppState, options: &AppOptions) -> Router {
    // Install the metrics recorder before the first request is counted.
    let _ = metrics::handle();
    let jwt = || axum::middleware::from_fn_with_state(state.jwt.clone(), require_admin);
    let admin = AdminRpcServer::new(state.admin.clone())
        .into_routes()
        .route_layer(jwt());
    let workspaces = WorkspaceRpcServer::new(state.workspaces.clone())
        .into_routes()
        .route_layer(jwt());
    let quotas = quota::QuotaRpcServer::new(state.quota.clone())
        .into_routes()
        .route_layer(jwt());
    let timers = idle::api::WorkspaceTimerRpcServer::new(state.timers.clone())
        .into_routes()
        .route_layer(jwt());
    let rpc = RpcRouter::new()
        .merge(state.kube.routes())
        .merge(admin::providers::routes(&state))
        .merge(admin)
        .merge(workspaces)
        .merge(quotas)
        .merge(timers)
        .merge(auth::api::PeopleRpcServer::new(state.people.clone()).into_routes())
        .into_router()
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            options.request_timeout,
            unary_timeout,
        ))
        .layer(axum::middleware::map_response(web::security::no_store));
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if options.metrics_on_public {
        router = router.merge(metrics_router(
            state.kube.clone(),
            state.db.clone(),
            options.metrics_access.clone(),
        ));
    }
    let access = access::routes(access::AccessState {
        db: state.db.clone(),
        auth: state.auth.clone(),
        streams: state.streams.clone(),
        activity: state.activity.clone(),
    });
    let web = auth::web::routes(state.web.clone());
    router
        .with_state(state.clone())
        .merge(access)
        .merge(web)
        .merge(web::routes(state.clone()))
        .nest("/rpc", rpc)
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::upgrade_origin,
        ))
        .layer(axum::middleware::from_fn_with_state(
            known_routes(),
            metrics::track,
        ))
}

/// `/metrics` alone, for the public router or a listener of its own.
pub fn metrics_router<S: Clone + Send + Sync + 'static>(
    kube: KubeClusterServer,
    db: Db,
    access: MetricsAccess,
) -> Router<S> {
    Router::new().route(
        "/metrics",
        get(move |headers: http::HeaderMap| {
            let kube = kube.clone();
            let db = db.clone();
            let access = access.clone();
            async move {
                if !access.allows(&headers) {
                    return MetricsAccess::refusal();
                }
                quota::export_usage(&db).await;
                ::metrics::gauge!("lapdev_connected_clusters")
                    .set(kube.connected_clusters().len() as f64);
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics::handle().render(),
                )
                    .into_response()
            }
        }),
    )
}

/// axum middleware: a unary request (every HRPC method) gets at most `limit`
/// to produce its response, then `504 deadline_exceeded`. A WebSocket upgrade
/// (the manager tunnel) is exempt, and a streamed response body is never cut:
/// the limit covers the time to the response head only.
pub async fn unary_timeout(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let upgrade = request.method() == http::Method::GET
        && request.headers().contains_key(http::header::UPGRADE);
    if upgrade {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => lapdev_hrpc::HrpcError::deadline_exceeded(format!(
            "the server's request timeout ({} s) passed",
            limit.as_secs()
        ))
        .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !state.replica.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered in the replica registry",
        )
            .into_response();
    }
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

/// Checks a name against `lapdev-common`'s rules ([`lapdev_common::name`]):
/// `invalid_argument` naming the request `field` in `details.field`.
pub fn check_name(
    field: &'static str,
    kind: lapdev_common::name::NameKind,
    name: &str,
) -> Result<(), lapdev_hrpc::HrpcError> {
    lapdev_common::name::validate(kind, name).map_err(|e| {
        lapdev_hrpc::HrpcError::invalid_argument(e.to_string())
            .with_details(serde_json::json!({ "field": field }))
    })
}

/// Secrets resolved from flags, environment or the data directory.
pub struct Secrets {
    /// Admin token keys.
    pub jwt: JwtKeys,
    /// Provider credential key.
    pub encryption_key: CredentialKey,
}

/// Binds the public listener; a port in use says what to do about it.
async fn bind_public(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another process listens there: stop it, or start on another port with \
             --listen (LAPDEV_LISTEN), e.g. --listen 127.0.0.1:8081"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("binding {addr}{hint}"))
    })
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
    /// Where `/metrics` listens when it has a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the internal listener (forwarding between replicas) listens;
    /// `None` on SQLite.
    pub internal_addr: Option<SocketAddr>,
    /// Its state (tests reach the database and the cluster server through it).
    pub state: AppState,
    /// The admin token minted on first start, if this was the first start.
    pub first_admin_token: Option<String>,
    shutdown: watch::Sender<bool>,
    drain: Duration,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the data directory and database (running migrations), checks the
    /// encryption key, bootstraps the first organisation, binds and starts
    /// serving, with default [`LimitsConfig`]. Returns once the listener is
    /// bound.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        Self::start_with(config, LimitsConfig::default()).await
    }

    /// [`Server::start`] with explicit limits and policies.
    pub async fn start_with(config: ServerConfig, limits: LimitsConfig) -> anyhow::Result<Server> {
        Self::start_with_streams(config, limits, None).await
    }

    /// [`Server::start_with`] whose exec and port-forward streams reach
    /// managers through `streams` (tests: [`access::InProcessStreams`]) instead
    /// of their tunnels.
    pub async fn start_with_streams(
        config: ServerConfig,
        limits: LimitsConfig,
        streams: Option<Arc<dyn access::StreamOpener>>,
    ) -> anyhow::Result<Server> {
        // First, so a port in use fails before the data directory, the
        // database or the first organisation is created (a retry on another
        // port is then a first start, with its hints).
        let listener = bind_public(config.listen).await?;
        let data_dir = DataDir::open(&config.data_dir)?;
        let secrets = load_secrets(&config, &data_dir)?;
        let url = match &config.database_url {
            Some(url) => url.clone(),
            None => data_dir.sqlite_url()?,
        };
        let lease_timing = limits.lease_timing()?;
        let (initial_backoff, max_backoff) = limits.workspace_retry()?;
        // SQLite is single-replica: only one serving process per file.
        let serve_lock = replica::ServeLock::take(&url)?;
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
        // Other replicas' changes reach this one's feed, and this one's theirs.
        let relay = if db.supports_replicas() {
            Some(
                db.start_change_relay()
                    .await
                    .context("listening for other replicas' changes")?,
            )
        } else {
            None
        };
        // Replicas started together bootstrap one after the other, so only
        // one creates the first organisation.
        let startup = db.startup_lock().await.context("taking the startup lock")?;
        // Tunnels live in memory: after a restart no manager is connected until
        // it dials in again. With other live replicas the connected clusters
        // are theirs, not stale.
        let alone = !db.supports_replicas()
            || db
                .live_replicas()
                .await
                .context("reading the replica registry")?
                .is_empty();
        if alone {
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
        }
        let bootstrap = bootstrap::ensure_first_admin(
            &db,
            &data_dir,
            config.admin_token_days.min(config.max_token_days),
        )
        .await
        .context("creating the first organisation and owner")?;
        startup
            .release()
            .await
            .context("releasing the startup lock")?;
        let replica_status = if db.supports_replicas() {
            replica::ReplicaStatus::unregistered()
        } else {
            replica::ReplicaStatus::single()
        };

        let kube_config = KubeClusterServerConfig {
            heartbeat_interval: config.heartbeat_interval(),
            token_cache_ttl: Duration::from_secs(limits.token_cache_ttl_secs),
            token_stale_if_error: Duration::from_secs(limits.token_stale_if_error_secs),
            ..Default::default()
        };
        // Several replicas: each owns the clusters whose tunnels it holds.
        let kube = if db.supports_replicas() {
            let status = replica_status.clone();
            KubeClusterServer::replicated(db.clone(), kube_config, Arc::new(move || status.lease()))
        } else {
            KubeClusterServer::new(db.clone(), kube_config)
        };
        let public_ca = match &config.public_ca_file {
            Some(f) => Some(
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            ),
            None => None,
        };
        // Several replicas: calls for clusters whose tunnels are elsewhere are
        // forwarded to their owners.
        let replica_id = uuid::Uuid::new_v4();
        let routing = db.supports_replicas().then(|| {
            routing::Routing::new(
                kube.clone(),
                routing::owners::Owners::new(db.clone()),
                routing::auth::ReplicaKey::derive(secrets.encryption_key.as_bytes()),
                replica_id,
            )
        });
        let connector: Arc<dyn lapdev_conductor::ManagerConnector> = match &routing {
            Some(r) => Arc::new(routing::RoutedConnector(r.clone())),
            None => Arc::new(TunnelConnector(kube.clone())),
        };
        let conductor = Conductor::new(
            db.clone(),
            connector,
            ConductorConfig {
                initial_backoff,
                max_backoff,
                ..ConductorConfig::default()
            },
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
        let web_policy = auth::web_policy::WebPolicy::new(
            &config.public_url(),
            lapdev_db::SessionLifetime {
                idle: chrono::Duration::minutes(
                    i64::try_from(limits.session_idle_minutes).unwrap_or(i64::MAX / 60_000),
                ),
                absolute: chrono::Duration::hours(
                    i64::try_from(limits.session_max_hours).unwrap_or(i64::MAX / 3_600_000),
                ),
            },
        );
        let auth = auth::AuthState::new(db.clone(), secrets.jwt.clone())
            .with_trusted_proxies(config.trusted_proxies.clone())
            .with_web_policy(web_policy.clone());
        let egress = if limits.allow_provider_test_endpoints {
            auth::oidc::http::Egress::AllowLoopbackHttp
        } else {
            auth::oidc::http::Egress::HttpsOnly
        };
        let oidc_transport = lapdev_hrpc::HttpTransport::new(lapdev_hrpc::HttpTransportConfig {
            max_response_bytes: 1024 * 1024,
            ..Default::default()
        })
        .context("building the OpenID Connect HTTP client")?;
        let people = auth::service::PeopleService::new(
            db.clone(),
            auth.clone(),
            auth::password::Passwords::new(config.password_hash_concurrency())
                .context("preparing the password hasher")?,
            auth::service::TokenPolicy {
                default_days: 30.min(config.max_token_days),
                max_days: config.max_token_days,
            },
        )
        .with_oidc(secrets.encryption_key.clone(), egress, &config.public_url())
        .with_conductor(conductor.clone());
        let web = auth::web::WebState {
            people: people.clone(),
            oidc: auth::oidc::OidcLogins::new(
                db.clone(),
                secrets.encryption_key.clone(),
                auth::oidc::http::EgressClient::new(oidc_transport, egress),
                &config.public_url(),
            ),
            auth: auth.clone(),
            policy: web_policy,
        };
        let streams = streams.unwrap_or_else(|| match &routing {
            Some(r) => Arc::new(routing::RoutedStreams(r.clone())),
            None => Arc::new(access::TunnelStreams(kube.clone())),
        });
        let activity = idle::WorkspaceActivity::new(db.clone(), conductor.clock().clone());
        let idle = idle::IdleSweeper::new(
            conductor.clone(),
            activity.clone(),
            idle::IdleConfig::default(),
        );
        let background = background::Background::default();
        let provider_endpoints = if limits.allow_provider_test_endpoints {
            tracing::warn!(
                "--allow-provider-test-endpoints: providers may call any https URL or \
                 loopback http; use this only with local stand-ins"
            );
            lapdev_kube::provider::EndpointPolicy::AllowTestStandIns
        } else {
            lapdev_kube::provider::EndpointPolicy::GoogleOnly
        };
        let providers = admin::providers::ProviderService::new(
            db.clone(),
            kube.clone(),
            admin.manifest_defaults().clone(),
            admin.credential_key().clone(),
            admin::providers::ProviderSettings {
                endpoints: provider_endpoints,
                ..admin::providers::ProviderSettings::default()
            },
        )
        .with_background(background.clone());
        let state = AppState {
            quota: quota::QuotaService::new(db.clone()),
            timers: idle::api::WorkspaceTimerService::new(db.clone(), conductor.clock().clone()),
            idle: idle.clone(),
            activity,
            background,
            events: web::events::EventHub::default(),
            replica: replica_status.clone(),
            routing: routing.clone(),
            streams,
            web,
            auth,
            people,
            db: db.clone(),
            kube: kube.clone(),
            jwt: secrets.jwt.clone(),
            admin,
            workspaces: WorkspaceService::new(db.clone(), conductor.clone()),
            conductor: conductor.clone(),
            provider_endpoints,
            providers,
        };
        let metrics_access = MetricsAccess {
            token: match &limits.metrics_token_file {
                Some(f) => {
                    let token = std::fs::read_to_string(f)
                        .with_context(|| format!("reading the metrics token {}", f.display()))?;
                    let token = token.trim();
                    anyhow::ensure!(
                        !token.is_empty(),
                        "the metrics token file {} is empty",
                        f.display()
                    );
                    Some(token.into())
                }
                None => None,
            },
        };
        let router = app_with(
            state.clone(),
            &AppOptions {
                metrics_on_public: limits.metrics_listen.is_none(),
                metrics_access: metrics_access.clone(),
                request_timeout: limits.request_timeout(),
            },
        );
        let metrics_listener = match limits.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener {addr}"))?,
            ),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let local_addr = listener.local_addr()?;
        let internal_listener = match &routing {
            Some(_) => {
                let addr = limits
                    .internal_listen
                    .unwrap_or_else(|| SocketAddr::new(config.listen.ip(), 0));
                Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the internal listener {addr}"))?,
                )
            }
            None => None,
        };
        let internal_addr = match &internal_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let signal = {
            let mut rx = shutdown_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        // The relay stops last, once everything else has (see the task below):
        // the writes of the shutdown itself (the drained tunnels' status) still
        // reach the other replicas.
        let (relay_stop, relay_stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = relay.map(|relay| {
            let relay_task = tokio::spawn(relay.run(async move {
                let _ = relay_stopped.await;
            }));
            let mut rx = shutdown_rx.clone();
            let apply_task = tokio::spawn(replica_changes::run(
                db.clone(),
                state.auth.clone(),
                kube.clone(),
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                },
            ));
            (relay_task, apply_task)
        });
        if limits.replica_address.is_none()
            && let Some(addr) = internal_addr
            && addr.ip().is_unspecified()
        {
            tracing::warn!(
                %addr,
                "the internal listener is bound to an unspecified address and no \
                 --replica-address is set: other replicas cannot reach this one; set \
                 --replica-address to this replica's reachable address (in Kubernetes \
                 the pod IP and the internal port)"
            );
        }
        let keeper = if db.supports_replicas() {
            let info = lapdev_db::ReplicaInfo {
                id: replica_id,
                address: limits.replica_address.clone().unwrap_or_else(|| {
                    internal_addr.map_or_else(|| local_addr.to_string(), |a| a.to_string())
                }),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            };
            let keeper = replica_status
                .register(&db, info, lease_timing)
                .await
                .context("registering in the replica registry")?
                .on_lease_lost({
                    let kube = kube.clone();
                    move |generation| {
                        kube.lease_lost(generation);
                    }
                });
            let mut rx = shutdown_rx.clone();
            Some(tokio::spawn(keeper.run(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })))
        } else {
            None
        };

        let owners_task = match &routing {
            Some(r) => {
                if let Err(e) = r.owners().refresh_all().await {
                    tracing::warn!(error = %e, "could not read the clusters' owners");
                }
                let mut rx = shutdown_rx.clone();
                Some(tokio::spawn(r.owners().clone().run(
                    lease_timing.heartbeat(),
                    async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    },
                )))
            }
            None => None,
        };
        let internal_task = match (&routing, internal_listener) {
            (Some(r), Some(listener)) => {
                let router = routing::internal::router(r, limits.request_timeout());
                let config = serve::ServeConfig::from_limits(&limits, None);
                let mut rx = shutdown_rx.clone();
                Some(tokio::spawn(serve::serve(
                    listener,
                    router,
                    config,
                    async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    },
                )))
            }
            _ => None,
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
        let idle_sweeper = {
            let mut rx = shutdown_rx.clone();
            tokio::spawn(async move {
                idle.run(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await;
            })
        };
        let events = {
            let hub = state.events.clone();
            let db = db.clone();
            let mut rx = shutdown_rx.clone();
            tokio::spawn(hub.run(db, async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }))
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
        let serve_config = serve::ServeConfig::from_limits(&limits, tls);
        let metrics_task = metrics_listener.map(|listener| {
            let router = metrics_router::<()>(kube.clone(), db.clone(), metrics_access);
            let config = serve::ServeConfig {
                tls: None,
                ..serve_config.clone()
            };
            let mut rx = shutdown_rx.clone();
            tokio::spawn(serve::serve(listener, router, config, async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }))
        });
        let background = state.background.clone();
        let task = tokio::spawn(async move {
            serve::serve(listener, router, serve_config, signal).await;
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
            background.stop();
            background.stopped().await;
            if let Some(metrics) = metrics_task {
                let _ = metrics.await;
            }
            if let Some(internal) = internal_task {
                let _ = internal.await;
            }
            if let Some(owners) = owners_task {
                let _ = owners.await;
            }
            let _ = sweeper.await;
            let _ = flusher.await;
            let _ = reconciler.await;
            let _ = idle_sweeper.await;
            let _ = lifecycle.await;
            let _ = events.await;
            if let Some(keeper) = keeper {
                let _ = keeper.await;
            }
            let _ = relay_stop.send(());
            if let Some((relay, apply)) = relay {
                let _ = relay.await;
                let _ = apply.await;
            }
            drop(serve_lock);
            Ok(())
        });
        Ok(Server {
            local_addr,
            metrics_addr,
            internal_addr,
            state,
            first_admin_token: bootstrap,
            shutdown,
            drain: limits.shutdown_drain(),
            task,
        })
    }

    /// Asks the server to stop: no new connections, in-flight requests finish,
    /// background loops flush and end.
    ///
    /// Readiness fails first, so the load balancer stops sending work; then
    /// the managers' tunnels close one at a time over the drain window
    /// (`--shutdown-drain-secs`, [`KubeClusterServer::drain`]) and only then
    /// does the listener stop. [`Server::wait`] returns after both.
    pub fn shutdown(&self) {
        self.state.replica.withdraw();
        let kube = self.state.kube.clone();
        let stop = self.shutdown.clone();
        let over = self.drain;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let closed = kube.drain(over).await;
                    if closed > 0 {
                        tracing::info!(tunnels = closed, "drained the managers' tunnels");
                    }
                    let _ = stop.send(true);
                });
            }
            // No runtime (a drop at exit): nothing left to spread the closes on.
            Err(_) => {
                let _ = stop.send(true);
            }
        }
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
