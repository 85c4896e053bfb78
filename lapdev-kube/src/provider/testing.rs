//! A local stand-in for the GKE REST API (`/v1/projects/*/locations/*/clusters`,
//! `.../operations`) and Google's OAuth token endpoint, for tests that run the real
//! `google-cloud-container-v1` client (feature `test-support`).
//!
//! - [`TestKey`]: a fresh RSA-2048 service-account key, generated at test time (no
//!   private key is committed). One key is generated per process and shared.
//! - [`GkeStandIn::start`] serves on `127.0.0.1:0`. Every API call must carry a
//!   self-signed JWT (what `google-cloud-auth` sends) whose signature verifies with
//!   the key's public half and whose issuer is the account; otherwise `401
//!   UNAUTHENTICATED`. Another project is `403 PERMISSION_DENIED`, as on GKE.
//! - `POST /token` serves the JWT-bearer grant: it verifies the assertion the same
//!   way (and its `aud`) and hands out access tokens (`ya29.stand-in-N`).
//! - Creating or deleting a cluster returns a `RUNNING` operation that is `DONE`
//!   after [`GkeStandIn::set_operation_polls`] polls; created clusters then become
//!   `RUNNING` with the endpoint set by [`GkeStandIn::set_cluster_endpoint`] (e.g. a
//!   Kubernetes API test double) and deleted ones disappear.
//! - [`GkeStandIn::fail_next`] makes the next call of a method fail with a
//!   Google-style error body; [`GkeStandIn::fail_next_operation`] makes the next
//!   create finish with an operation error.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use serde_json::{Value, json};

/// The project the stand-in serves.
pub const PROJECT: &str = "lapdev-test";
/// The service account's email.
pub const CLIENT_EMAIL: &str = "lapdev@lapdev-test.iam.gserviceaccount.com";
/// The key id.
pub const KEY_ID: &str = "0123456789abcdef";

/// An RSA key pair for a test service account.
#[derive(Clone)]
pub struct TestKey {
    private_pkcs8_pem: String,
    public_pkcs1_der: Vec<u8>,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestKey(<rsa-2048>)")
    }
}

impl TestKey {
    /// The process's shared test key, generated on first use (a few seconds in
    /// debug builds).
    pub fn shared() -> TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(TestKey::generate).clone()
    }

    /// A fresh RSA-2048 key.
    pub fn generate() -> TestKey {
        let mut rng = rsa::rand_core::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key generation");
        let private_pkcs8_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 PEM")
            .to_string();
        let public_pkcs1_der = private
            .to_public_key()
            .to_pkcs1_der()
            .expect("PKCS#1 DER")
            .as_bytes()
            .to_vec();
        TestKey {
            private_pkcs8_pem,
            public_pkcs1_der,
        }
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_pem(&self) -> &str {
        &self.private_pkcs8_pem
    }

    /// A service-account key file for this key whose `token_uri` is `token_uri`.
    pub fn service_account_json(&self, token_uri: &str) -> Vec<u8> {
        serde_json::to_vec_pretty(&json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": KEY_ID,
            "private_key": self.private_pkcs8_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        }))
        .expect("JSON")
    }

    /// Whether `jwt` is signed (RS256) by this key; returns its claims.
    pub fn verify_jwt(&self, jwt: &str) -> Option<Value> {
        let mut parts = jwt.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: Value = serde_json::from_slice(&b64.decode(header).ok()?).ok()?;
        if header.get("alg")?.as_str()? != "RS256" {
            return None;
        }
        let signature = b64.decode(signature).ok()?;
        let signed = &jwt[..jwt.rfind('.')?];
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &self.public_pkcs1_der,
        )
        .verify(signed.as_bytes(), &signature)
        .ok()?;
        let claims: Value = serde_json::from_slice(&b64.decode(claims).ok()?).ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        if claims.get("exp")?.as_u64()? + 60 < now {
            return None;
        }
        Some(claims)
    }
}

/// A Google-style API error to inject.
#[derive(Debug, Clone)]
pub struct InjectedError {
    /// HTTP status.
    pub http: u16,
    /// Canonical status name (`PERMISSION_DENIED`, ...).
    pub status: String,
    /// The message.
    pub message: String,
}

#[derive(Debug, Clone)]
struct PendingOp {
    op: Value,
    polls_left: u32,
    // What happens when it completes.
    finish: Finish,
}

#[derive(Debug, Clone)]
enum Finish {
    Created {
        key: (String, String),
    },
    Deleted {
        key: (String, String),
    },
    Failed {
        key: (String, String),
        message: String,
    },
}

#[derive(Default)]
struct Inner {
    clusters: BTreeMap<(String, String), Value>,
    operations: HashMap<String, PendingOp>,
    failures: HashMap<String, VecDeque<InjectedError>>,
    fail_operation: Option<String>,
    operation_polls: u32,
    cluster_endpoint: Option<String>,
    cluster_ca_pem: Option<String>,
    token_expires_in: u64,
    tokens_issued: u64,
    api_calls: HashMap<String, u64>,
    next_op: u64,
    last_auth: Option<String>,
}

struct Shared {
    key: TestKey,
    base_url: String,
    inner: Mutex<Inner>,
}

/// The running stand-in. Dropping it stops the server.
pub struct GkeStandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for GkeStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GkeStandIn")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for GkeStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GkeStandIn {
    /// Starts on a random loopback port with the shared [`TestKey`].
    pub async fn start() -> std::io::Result<GkeStandIn> {
        Self::start_with_key(TestKey::shared()).await
    }

    /// Starts on a random loopback port accepting JWTs signed by `key`.
    pub async fn start_with_key(key: TestKey) -> std::io::Result<GkeStandIn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            key,
            base_url: format!("http://{addr}"),
            inner: Mutex::new(Inner {
                operation_polls: 1,
                token_expires_in: 3600,
                ..Inner::default()
            }),
        });
        let app = Router::new()
            .route(
                "/v1/projects/{project}/locations/{location}/clusters",
                get(list_clusters).post(create_cluster),
            )
            .route(
                "/v1/projects/{project}/locations/{location}/clusters/{name}",
                get(get_cluster).delete(delete_cluster),
            )
            .route(
                "/v1/projects/{project}/locations/{location}/operations/{op}",
                get(get_operation),
            )
            .route("/token", post(token))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(GkeStandIn { shared, addr, task })
    }

    /// `http://127.0.0.1:PORT`: the API endpoint to configure.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The token endpoint named in the key file.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.shared.base_url)
    }

    /// A service-account key file for [`PROJECT`] whose `token_uri` is this stand-in.
    pub fn key_json(&self) -> Vec<u8> {
        self.shared.key.service_account_json(&self.token_uri())
    }

    /// The provider config for this stand-in: project and endpoint (and
    /// `location` when given).
    pub fn config_json(&self, location: Option<&str>) -> Value {
        let mut v = json!({"project": PROJECT, "endpoint": self.url()});
        if let Some(l) = location {
            v["location"] = json!(l);
        }
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a `RUNNING` cluster.
    pub fn add_cluster(&self, location: &str, name: &str, version: &str, nodes: i32) {
        let mut inner = self.lock();
        let mut cluster = cluster_json(&self.shared.base_url, location, name, &inner);
        cluster["status"] = json!("RUNNING");
        cluster["currentMasterVersion"] = json!(version);
        cluster["currentNodeCount"] = json!(nodes);
        cluster["nodePools"] = json!([{
            "name": "default-pool",
            "initialNodeCount": nodes,
            "config": {"machineType": "e2-standard-4"},
            "status": "RUNNING",
        }]);
        inner
            .clusters
            .insert((location.to_owned(), name.to_owned()), cluster);
    }

    /// Adds a `RUNNING` GKE Autopilot cluster: `autopilot.enabled` and no node
    /// pools of its own, as the real API shows one.
    pub fn add_autopilot_cluster(&self, location: &str, name: &str, version: &str) {
        let mut inner = self.lock();
        let mut cluster = cluster_json(&self.shared.base_url, location, name, &inner);
        cluster["status"] = json!("RUNNING");
        cluster["currentMasterVersion"] = json!(version);
        cluster["currentNodeCount"] = json!(0);
        cluster["autopilot"] = json!({"enabled": true});
        inner
            .clusters
            .insert((location.to_owned(), name.to_owned()), cluster);
    }

    /// The cluster JSON as stored, if present.
    pub fn cluster(&self, location: &str, name: &str) -> Option<Value> {
        self.lock()
            .clusters
            .get(&(location.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Sets a cluster's status (`RUNNING`, `ERROR`, ...) and message, as if GKE
    /// had moved it on its own; a `RUNNING` cluster gets the configured endpoint.
    pub fn set_cluster_status(&self, location: &str, name: &str, status: &str, message: &str) {
        let mut inner = self.lock();
        let endpoint = inner.cluster_endpoint.clone();
        if let Some(c) = inner
            .clusters
            .get_mut(&(location.to_owned(), name.to_owned()))
        {
            c["status"] = json!(status);
            c["statusMessage"] = json!(message);
            if status == "RUNNING"
                && let Some(e) = endpoint
            {
                c["endpoint"] = json!(e);
            }
        }
    }

    /// Removes a cluster, as if GKE had finished deleting it.
    pub fn remove_cluster(&self, location: &str, name: &str) {
        self.lock()
            .clusters
            .remove(&(location.to_owned(), name.to_owned()));
    }

    /// How many polls an operation takes to be `DONE` (default 1: the first poll
    /// sees it done).
    pub fn set_operation_polls(&self, polls: u32) {
        self.lock().operation_polls = polls;
    }

    /// The endpoint (IP, host or URL) and CA created clusters get when they turn
    /// `RUNNING`.
    pub fn set_cluster_endpoint(&self, endpoint: &str, ca_pem: Option<&str>) {
        let mut inner = self.lock();
        inner.cluster_endpoint = Some(endpoint.to_owned());
        inner.cluster_ca_pem = ca_pem.map(str::to_owned);
        let endpoint = endpoint.to_owned();
        for cluster in inner.clusters.values_mut() {
            cluster["endpoint"] = json!(endpoint);
        }
    }

    /// The `expires_in` of issued access tokens (default 3600).
    pub fn set_token_expires_in(&self, secs: u64) {
        self.lock().token_expires_in = secs;
    }

    /// How many access tokens the token endpoint issued.
    pub fn tokens_issued(&self) -> u64 {
        self.lock().tokens_issued
    }

    /// How many calls of `method` (`list`, `get`, `create`, `delete`, `operation`)
    /// reached the API (authenticated or not).
    pub fn api_calls(&self, method: &str) -> u64 {
        self.lock().api_calls.get(method).copied().unwrap_or(0)
    }

    /// The claims of the last JWT the API accepted.
    pub fn last_auth_claims(&self) -> Option<Value> {
        let jwt = self.lock().last_auth.clone()?;
        self.shared.key.verify_jwt(&jwt)
    }

    /// The next call of `method` (`list`, `get`, `create`, `delete`, `operation`,
    /// `token`) fails with this error.
    pub fn fail_next(&self, method: &str, http: u16, status: &str, message: &str) {
        self.lock()
            .failures
            .entry(method.to_owned())
            .or_default()
            .push_back(InjectedError {
                http,
                status: status.to_owned(),
                message: message.to_owned(),
            });
    }

    /// The next created cluster's operation finishes with this error and leaves
    /// the cluster in `ERROR`.
    pub fn fail_next_operation(&self, message: &str) {
        self.lock().fail_operation = Some(message.to_owned());
    }
}

fn cluster_json(base: &str, location: &str, name: &str, inner: &Inner) -> Value {
    let mut v = json!({
        "name": name,
        "location": location,
        "zone": location,
        "selfLink": format!("https://container.googleapis.com/v1/projects/{PROJECT}/locations/{location}/clusters/{name}"),
        "status": "PROVISIONING",
        "currentNodeCount": 0,
        "masterAuth": {},
    });
    let _ = base;
    if let Some(endpoint) = &inner.cluster_endpoint {
        v["endpoint"] = json!(endpoint);
    }
    if let Some(ca) = &inner.cluster_ca_pem {
        v["masterAuth"] = json!({
            "clusterCaCertificate": base64::engine::general_purpose::STANDARD.encode(ca),
        });
    }
    v
}

fn google_error(http: u16, status: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        axum::Json(json!({"error": {"code": http, "message": message, "status": status}})),
    )
        .into_response()
}

/// Counts the call, applies an injected failure, checks the JWT and the project.
fn admit(
    shared: &Shared,
    method: &str,
    headers: &HeaderMap,
    project: &str,
) -> Result<(), Box<Response>> {
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    *inner.api_calls.entry(method.to_owned()).or_default() += 1;
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let claims = jwt.as_deref().and_then(|j| shared.key.verify_jwt(j));
    let Some(claims) = claims else {
        return Err(Box::new(google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )));
    };
    if claims.get("iss").and_then(Value::as_str) != Some(CLIENT_EMAIL) {
        return Err(Box::new(google_error(
            401,
            "UNAUTHENTICATED",
            "The JWT issuer is not the service account.",
        )));
    }
    inner.last_auth = jwt;
    if let Some(e) = inner.failures.get_mut(method).and_then(VecDeque::pop_front) {
        return Err(Box::new(google_error(e.http, &e.status, &e.message)));
    }
    if project != PROJECT {
        return Err(Box::new(google_error(
            403,
            "PERMISSION_DENIED",
            &format!(
                "Permission 'container.clusters.list' denied on resource 'projects/{project}' (or it may not exist)."
            ),
        )));
    }
    Ok(())
}

fn not_found(location: &str, name: &str) -> Response {
    google_error(
        404,
        "NOT_FOUND",
        &format!("Not found: projects/{PROJECT}/locations/{location}/clusters/{name}."),
    )
}

async fn list_clusters(
    State(shared): State<Arc<Shared>>,
    Path((project, location)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, "list", &headers, &project) {
        return *r;
    }
    let inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let clusters: Vec<Value> = inner
        .clusters
        .iter()
        .filter(|((l, _), _)| location == "-" || *l == location)
        .map(|(_, c)| c.clone())
        .collect();
    axum::Json(json!({"clusters": clusters})).into_response()
}

async fn get_cluster(
    State(shared): State<Arc<Shared>>,
    Path((project, location, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, "get", &headers, &project) {
        return *r;
    }
    let inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    match inner.clusters.get(&(location.clone(), name.clone())) {
        Some(c) => axum::Json(c.clone()).into_response(),
        None => not_found(&location, &name),
    }
}

fn new_operation(inner: &mut Inner, location: &str, kind: &str, target: &str) -> (String, Value) {
    inner.next_op += 1;
    let id = format!("operation-{}-{:04}", kind.to_lowercase(), inner.next_op);
    let op = json!({
        "name": id,
        "zone": location,
        "location": location,
        "operationType": kind,
        "status": "RUNNING",
        "selfLink": format!("https://container.googleapis.com/v1/projects/{PROJECT}/locations/{location}/operations/{id}"),
        "targetLink": target,
    });
    (id, op)
}

async fn create_cluster(
    State(shared): State<Arc<Shared>>,
    Path((project, location)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = admit(&shared, "create", &headers, &project) {
        return *r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let Some(cluster) = body.get("cluster") else {
        return google_error(400, "INVALID_ARGUMENT", "Cluster is required.");
    };
    let name = cluster
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return google_error(400, "INVALID_ARGUMENT", "Cluster.name is required.");
    }
    let autopilot = cluster
        .pointer("/autopilot/enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pools = cluster.get("nodePools").cloned().unwrap_or(json!([]));
    if !autopilot && pools.as_array().is_none_or(Vec::is_empty) {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Cluster.node_pools must be set for a Standard cluster.",
        );
    }
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let key = (location.clone(), name.clone());
    if inner.clusters.contains_key(&key) {
        return google_error(
            409,
            "ALREADY_EXISTS",
            &format!("Already exists: projects/{PROJECT}/locations/{location}/clusters/{name}."),
        );
    }
    let mut stored = cluster_json(&shared.base_url, &location, &name, &inner);
    stored.as_object_mut().map(|o| o.remove("endpoint"));
    if autopilot {
        stored["autopilot"] = json!({"enabled": true});
    } else {
        let mut pools = pools;
        if let Some(list) = pools.as_array_mut() {
            for p in list.iter_mut() {
                p["status"] = json!("PROVISIONING");
            }
        }
        stored["nodePools"] = pools;
    }
    let target = stored["selfLink"].as_str().unwrap_or_default().to_owned();
    inner.clusters.insert(key.clone(), stored);
    let (id, op) = new_operation(&mut inner, &location, "CREATE_CLUSTER", &target);
    let finish = match inner.fail_operation.take() {
        Some(message) => Finish::Failed { key, message },
        None => Finish::Created { key },
    };
    let polls_left = inner.operation_polls;
    inner.operations.insert(
        id,
        PendingOp {
            op: op.clone(),
            polls_left,
            finish,
        },
    );
    axum::Json(op).into_response()
}

async fn delete_cluster(
    State(shared): State<Arc<Shared>>,
    Path((project, location, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, "delete", &headers, &project) {
        return *r;
    }
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let key = (location.clone(), name.clone());
    let Some(cluster) = inner.clusters.get_mut(&key) else {
        return not_found(&location, &name);
    };
    cluster["status"] = json!("STOPPING");
    let target = cluster["selfLink"].as_str().unwrap_or_default().to_owned();
    let (id, op) = new_operation(&mut inner, &location, "DELETE_CLUSTER", &target);
    let polls_left = inner.operation_polls;
    inner.operations.insert(
        id,
        PendingOp {
            op: op.clone(),
            polls_left,
            finish: Finish::Deleted { key },
        },
    );
    axum::Json(op).into_response()
}

async fn get_operation(
    State(shared): State<Arc<Shared>>,
    Path((project, location, op_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, "operation", &headers, &project) {
        return *r;
    }
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pending) = inner.operations.get_mut(&op_id) else {
        return google_error(
            404,
            "NOT_FOUND",
            &format!("Not found: projects/{PROJECT}/locations/{location}/operations/{op_id}."),
        );
    };
    if pending.polls_left > 1 {
        pending.polls_left -= 1;
        return axum::Json(pending.op.clone()).into_response();
    }
    if pending.op["status"] == "DONE" {
        return axum::Json(pending.op.clone()).into_response();
    }
    pending.op["status"] = json!("DONE");
    let finish = pending.finish.clone();
    let endpoint = inner.cluster_endpoint.clone();
    match finish {
        Finish::Created { key } => {
            if let Some(c) = inner.clusters.get_mut(&key) {
                c["status"] = json!("RUNNING");
                c["currentMasterVersion"] = json!("1.33.5-gke.1000000");
                let mut nodes = 0;
                if let Some(pools) = c.get_mut("nodePools").and_then(Value::as_array_mut) {
                    for p in pools {
                        p["status"] = json!("RUNNING");
                        nodes += p["initialNodeCount"].as_i64().unwrap_or(0);
                    }
                }
                c["currentNodeCount"] = json!(nodes);
                if let Some(e) = endpoint {
                    c["endpoint"] = json!(e);
                }
            }
        }
        Finish::Deleted { key } => {
            inner.clusters.remove(&key);
        }
        Finish::Failed { key, message } => {
            if let Some(c) = inner.clusters.get_mut(&key) {
                c["status"] = json!("ERROR");
                c["statusMessage"] = json!(message);
            }
            if let Some(p) = inner.operations.get_mut(&op_id) {
                p.op["error"] = json!({"code": 8, "message": message});
            }
        }
    }
    let op = inner.operations[&op_id].op.clone();
    axum::Json(op).into_response()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token_error = |code: StatusCode, error: &str, description: &str| {
        (
            code,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    *inner.api_calls.entry("token".to_owned()).or_default() += 1;
    if let Some(e) = inner
        .failures
        .get_mut("token")
        .and_then(VecDeque::pop_front)
    {
        return token_error(
            StatusCode::from_u16(e.http).unwrap_or(StatusCode::BAD_REQUEST),
            &e.status,
            &e.message,
        );
    }
    if form.get("grant_type").map(String::as_str) != Some(super::token::JWT_BEARER_GRANT) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type.",
        );
    }
    let Some(claims) = form.get("assertion").and_then(|a| shared.key.verify_jwt(a)) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT Signature.",
        );
    };
    let expected_aud = format!("{}/token", shared.base_url);
    if claims.get("aud").and_then(Value::as_str) != Some(expected_aud.as_str())
        || claims.get("iss").and_then(Value::as_str) != Some(CLIENT_EMAIL)
    {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: aud or iss does not match.",
        );
    }
    inner.tokens_issued += 1;
    let token = format!("ya29.stand-in-{}", inner.tokens_issued);
    axum::Json(json!({
        "access_token": token,
        "expires_in": inner.token_expires_in,
        "token_type": "Bearer",
    }))
    .into_response()
}
