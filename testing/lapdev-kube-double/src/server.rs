//! The HTTP surface: routing exactly as the real API lays out its paths,
//! discovery, the verbs, content negotiation (plain JSON, `Table` for kubectl,
//! `PartialObjectMetadata`) and watch streams.
//!
//! [`app`] builds the router from shared state, so tests can drive it without a
//! socket; [`crate::KubeDouble`] serves it on a loopback port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, Method, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::control::{Control, Verb};
use crate::error::ApiError;
use crate::object::Stored;
use crate::resource::{self, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Deleted, Event, EventType, Key, PatchKind, Preconditions, Store, WriteCtx};

/// The largest request body the real API server accepts (3 MiB).
const BODY_LIMIT: usize = 3 * 1024 * 1024;

/// Settings of the HTTP surface.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `/version`'s `gitVersion`, e.g. `v1.33.0`.
    pub git_version: String,
    /// How often watches with `allowWatchBookmarks=true` get a `BOOKMARK`.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` stays open.
    pub default_watch_timeout: Duration,
}

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The objects.
    pub store: Arc<Store>,
    /// Fault injection and counters.
    pub control: Arc<Control>,
    /// Settings.
    pub settings: Arc<ServerSettings>,
    /// The cluster parts that are not the API (scheduler, kubelets), which
    /// some requests reach (e.g. `pods/binding`).
    pub handle: crate::handle::DoubleHandle,
}

impl AppState {
    fn handle(&self) -> &crate::handle::DoubleHandle {
        &self.handle
    }
}

/// The router serving the whole API.
pub fn app(state: AppState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(st): State<AppState>, req: Request) -> Response {
    match handle(&st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// Where a request goes.
enum Route {
    Version,
    Health,
    OpenApiRoot,
    OpenApi(&'static str, &'static str),
    ApiVersions,
    ApiGroupList,
    ApiGroup(&'static str, &'static str),
    ResourceList(&'static str, &'static str),
    Resource(Target),
}

/// A request on a resource.
struct Target {
    res: &'static ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Ok(Route::Version),
        ["healthz" | "readyz" | "livez"] => Ok(Route::Health),
        ["openapi", "v3"] => Ok(Route::OpenApiRoot),
        ["openapi", "v3", "api", "v1"] => Ok(Route::OpenApi("", "v1")),
        ["openapi", "v3", "apis", g, v] => resource::groups()
            .into_iter()
            .find(|(group, version)| group == g && version == v)
            .map(|(group, version)| Route::OpenApi(group, version))
            .ok_or_else(ApiError::path_not_found),
        ["api"] => Ok(Route::ApiVersions),
        ["api", "v1"] => Ok(Route::ResourceList("", "v1")),
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest),
        ["apis"] => Ok(Route::ApiGroupList),
        ["apis", g] => resource::groups()
            .into_iter()
            .find(|(group, _)| group == g)
            .map(|(group, version)| Route::ApiGroup(group, version))
            .ok_or_else(ApiError::path_not_found),
        ["apis", g, v] => resource::groups()
            .into_iter()
            .find(|(group, version)| group == g && version == v)
            .map(|(group, version)| Route::ResourceList(group, version))
            .ok_or_else(ApiError::path_not_found),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Err(ApiError::path_not_found()),
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Result<Route, ApiError> {
    let find =
        |plural: &str| resource::find(group, version, plural).ok_or_else(ApiError::path_not_found);
    let nonempty = |s: &str| {
        if s.is_empty() {
            Err(ApiError::path_not_found())
        } else {
            Ok(s.to_owned())
        }
    };
    let namespaced_res = match rest {
        ["namespaces", _, plural, ..] => {
            resource::find(group, version, plural).filter(|r| r.namespaced)
        }
        _ => None,
    };
    let (res, ns, tail) = match (rest, namespaced_res) {
        (["namespaces", ns, _, tail @ ..], Some(res)) => (res, Some(nonempty(ns)?), tail),
        ([plural, tail @ ..], _) => {
            let res = find(plural)?;
            (res, None, tail)
        }
        _ => return Err(ApiError::path_not_found()),
    };
    if ns.is_none() && res.namespaced && !tail.is_empty() {
        return Err(ApiError::path_not_found());
    }
    let (name, sub) = match tail {
        [] => (None, None),
        [name] => (Some(nonempty(name)?), None),
        [name, "status"] if res.has_status => (Some(nonempty(name)?), Some("status".to_owned())),
        [name, "binding"] if std::ptr::eq(res, resource::core_resource("pods")) => {
            (Some(nonempty(name)?), Some("binding".to_owned()))
        }
        _ => return Err(ApiError::path_not_found()),
    };
    Ok(Route::Resource(Target { res, ns, name, sub }))
}

fn query_map(req: &Request) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

async fn handle(st: &AppState, req: Request) -> Result<Response, ApiError> {
    let route = route(req.uri().path());
    let q = query_map(&req);
    let method = req.method().clone();
    let Ok(Route::Resource(target)) = route else {
        st.control.count_non_resource();
        st.control.gate(None, None).await?;
        // Discovery is open to every authenticated caller (`system:discovery`).
        st.handle.auth.authenticate(req.headers(), &st.store)?;
        let route = route?;
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        return Ok(non_resource(st, route, req.headers()));
    };
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, _) if flag(&q, "watch") => Verb::Watch,
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, false) => Verb::Create,
        (&Method::POST, true) if target.sub.as_deref() == Some("binding") => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => {
            st.control.count_non_resource();
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
    };
    // `status` only answers get, update and patch; `binding` only create.
    let allowed = match target.sub.as_deref() {
        None => true,
        Some("binding") => verb == Verb::Create,
        Some(_) => matches!(verb, Verb::Get | Verb::Update | Verb::Patch),
    };
    if !allowed {
        st.control.count_non_resource();
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    let rbac_resource = match &target.sub {
        Some(sub) => format!("{}/{sub}", target.res.plural),
        None => target.res.plural.to_owned(),
    };
    st.control.count(verb, &rbac_resource);
    st.control.gate(Some(verb), Some(&rbac_resource)).await?;
    let caller = st.handle.auth.authenticate(req.headers(), &st.store)?;
    crate::rbac::authorize(
        &st.store,
        &caller,
        &crate::rbac::Attributes {
            verb: verb.as_str(),
            res: target.res,
            sub: target.sub.as_deref(),
            name: target.name.as_deref(),
            namespace: target.ns.as_deref(),
        },
    )?;
    if st.control.is_denied(verb, &rbac_resource) {
        return Err(ApiError::forbidden(
            target.res,
            target.name.as_deref(),
            verb.as_str(),
            target.ns.as_deref(),
        ));
    }
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| ApiError::too_large())?;
    let format = Format::from_accept(&headers);
    let res = target.res;
    let ns = target.ns.as_deref().unwrap_or("");
    let sub = target.sub.as_deref().unwrap_or("");
    let name = target.name.as_deref().unwrap_or("");
    match verb {
        Verb::Get => {
            let obj = st.store.get(res, ns, name)?;
            Ok(render_one(&format, res, &obj))
        }
        Verb::List => list(st, &target, &q, &format),
        Verb::Watch => watch(st, &target, &q, &format),
        Verb::Create if sub == "binding" => bind(st, ns, name, &body, &headers, &q),
        Verb::Create => {
            let obj = parse_body(&body, &headers, res)?;
            let out = st.store.create(res, ns, obj, &write_ctx(&q, &headers)?)?;
            Ok(object_response(StatusCode::CREATED, &out))
        }
        Verb::Update => {
            let obj = parse_body(&body, &headers, res)?;
            let out = st
                .store
                .update(res, ns, name, obj, sub, &write_ctx(&q, &headers)?)?;
            Ok(object_response(StatusCode::OK, &out))
        }
        Verb::Patch => patch(st, &target, &q, &headers, &body),
        Verb::Delete => {
            let (pre, dry_run) = delete_options(&body, &q)?;
            let mut ctx = write_ctx(&q, &headers)?;
            ctx.dry_run |= dry_run;
            match st.store.delete(res, ns, name, &pre, &ctx)? {
                Deleted::Pending(obj) => Ok(object_response(StatusCode::OK, &obj)),
                Deleted::Gone(obj) if returns_deleted_object(res) => {
                    Ok(object_response(StatusCode::OK, &obj))
                }
                Deleted::Gone(obj) => Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": res.group,
                            "kind": res.plural,
                            "uid": obj.value().pointer("/metadata/uid"),
                        },
                    }),
                )),
            }
        }
        Verb::DeleteCollection => {
            let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
            let fields =
                FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), res)?;
            let (_, dry_run) = delete_options(&body, &q)?;
            let mut ctx = write_ctx(&q, &headers)?;
            ctx.dry_run |= dry_run;
            let items =
                st.store
                    .delete_collection(res, target.ns.as_deref(), &labels, &fields, &ctx)?;
            let rv = st.store.current_rv();
            Ok(list_response(res, rv, None, None, &items))
        }
    }
}

/// `POST pods/NAME/binding`: the scheduler's way of putting a pod on a node.
fn bind(
    st: &AppState,
    ns: &str,
    name: &str,
    body: &[u8],
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let res = resource::core_resource("pods");
    let binding: Value = parse_body(body, headers, res)?;
    if let Some(n) = binding.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Binding object",
        ));
    }
    let kind = binding.pointer("/target/kind").and_then(Value::as_str);
    if kind.is_some_and(|k| !k.is_empty() && k != "Node") {
        return Err(ApiError::invalid(
            res,
            name,
            &[crate::error::Cause::invalid(
                "target.kind",
                kind.unwrap_or(""),
                "must be empty or 'Node'",
            )],
        ));
    }
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            res,
            name,
            &[crate::error::Cause::required("target.name", "")],
        ));
    }
    let ctx = write_ctx(q, headers)?;
    if !ctx.dry_run {
        st.handle().bind(ns, name, node, &ctx.manager)?;
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// The registries that answer a delete with the deleted object rather than a
/// `Status` (`ReturnDeletedObject: true` in the real storage code).
fn returns_deleted_object(res: &ResourceDef) -> bool {
    res.group.is_empty()
        && matches!(
            res.plural,
            "pods" | "serviceaccounts" | "services" | "namespaces"
        )
}

fn non_resource(st: &AppState, route: Route, headers: &HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let gv = |g: &str, v: &str| json!({"groupVersion": format!("{g}/{v}"), "version": v});
    match route {
        Route::Version => {
            let v = &st.settings.git_version;
            let minor = v.trim_start_matches('v').split('.').nth(1).unwrap_or("33");
            json_response(
                StatusCode::OK,
                &json!({
                    "major": "1",
                    "minor": minor,
                    "gitVersion": v,
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }),
            )
        }
        Route::Health => (StatusCode::OK, "ok").into_response(),
        Route::OpenApiRoot => json_response(StatusCode::OK, &crate::openapi::root()),
        Route::OpenApi(g, v) => json_response(StatusCode::OK, &crate::openapi::group_version(g, v)),
        Route::ApiVersions => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }),
        ),
        Route::ApiGroupList => {
            let groups: Vec<Value> = resource::groups()
                .into_iter()
                .map(|(g, v)| json!({"name": g, "versions": [gv(g, v)], "preferredVersion": gv(g, v)}))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        Route::ApiGroup(g, v) => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": g,
                "versions": [gv(g, v)],
                "preferredVersion": gv(g, v),
            }),
        ),
        Route::ResourceList(g, v) => {
            let resources: Vec<Value> = resource::RESOURCES
                .iter()
                .filter(|r| r.group == g && r.version == v)
                .flat_map(ResourceDef::discovery)
                .collect();
            let group_version = if g.is_empty() {
                v.to_owned()
            } else {
                format!("{g}/{v}")
            };
            json_response(
                StatusCode::OK,
                &json!({
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": group_version,
                    "resources": resources,
                }),
            )
        }
        Route::Resource(_) => ApiError::path_not_found().into_response(),
    }
}

/// Reads a create or update body: JSON, or YAML when the client says so.
fn parse_body(body: &[u8], headers: &HeaderMap, res: &ResourceDef) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    let decode_error = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    };
    match media {
        "" | "application/json" | "*/*" => {
            serde_json::from_slice(body).map_err(|e| decode_error(&e))
        }
        "application/yaml" => {
            let text = std::str::from_utf8(body).map_err(|e| decode_error(&e))?;
            serde_saphyr::from_str(text).map_err(|e| decode_error(&e))
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn write_ctx(q: &HashMap<String, String>, headers: &HeaderMap) -> Result<WriteCtx, ApiError> {
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value: \"{other}\": supported values: \"All\""
            )));
        }
    };
    let manager = match q.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) if m.len() > 128 => {
            return Err(ApiError::bad_request(
                "fieldManager: Too long: may not be longer than 128",
            ));
        }
        Some(m) => m.clone(),
        None => headers
            .get(header::USER_AGENT)
            .and_then(|u| u.to_str().ok())
            .and_then(|u| u.split('/').next())
            .filter(|u| !u.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
    };
    Ok(WriteCtx {
        manager,
        dry_run,
        force: flag(q, "force"),
        typed: false,
        strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
    })
}

fn delete_options(
    body: &[u8],
    q: &HashMap<String, String>,
) -> Result<(Preconditions, bool), ApiError> {
    let grace_param = match q.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds: {g}")))?,
        ),
        None => None,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((
            Preconditions {
                grace_period: grace_param,
                ..Preconditions::default()
            },
            q.get("dryRun").is_some_and(|d| d == "All"),
        ));
    }
    let opts: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions could not be decoded: {e}")))?;
    let s = |p: &str| opts.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let dry_run = opts
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok((
        Preconditions {
            uid: s("/preconditions/uid"),
            resource_version: s("/preconditions/resourceVersion"),
            grace_period: opts
                .get("gracePeriodSeconds")
                .and_then(Value::as_i64)
                .or(grace_param),
        },
        dry_run || q.get("dryRun").is_some_and(|d| d == "All"),
    ))
}

fn patch(
    st: &AppState,
    t: &Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let kind = match content_type.as_str() {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::Strategic,
        "application/json-patch+json" => PatchKind::Json,
        "application/apply-patch+yaml" => PatchKind::Apply,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) if kind == PatchKind::Apply => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the apply patch is not UTF-8"))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
        Err(e) => return Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
    };
    match (kind, &parsed) {
        (PatchKind::Json, Value::Array(_)) => {}
        (PatchKind::Json, _) => {
            return Err(ApiError::bad_request(
                "json patch must be a JSON array of operations",
            ));
        }
        (_, Value::Object(_)) => {}
        _ => return Err(ApiError::bad_request("the patch must be a JSON object")),
    }
    let mut ctx = write_ctx(q, headers)?;
    if kind == PatchKind::Apply && q.get("fieldManager").is_none_or(String::is_empty) {
        return Err(ApiError {
            code: 422,
            reason: "Invalid",
            message: "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".to_owned(),
            details: Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]})),
        });
    }
    if kind != PatchKind::Apply && flag(q, "force") {
        return Err(ApiError::bad_request(
            "force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    ctx.force = flag(q, "force");
    let ns = t.ns.as_deref().unwrap_or("");
    let name = t.name.as_deref().unwrap_or("");
    let existed = st.store.get(t.res, ns, name).is_ok();
    let out = st.store.patch(
        t.res,
        ns,
        name,
        kind,
        &parsed,
        t.sub.as_deref().unwrap_or(""),
        &ctx,
    )?;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(object_response(code, &out))
}

/// What representation the client asked for in `Accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Format {
    Full,
    Metadata,
    Table { include: String },
}

impl Format {
    fn from_accept(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .unwrap_or("");
        if accept.contains("as=Table") {
            Self::Table {
                include: String::new(),
            }
        } else if accept.contains("as=PartialObjectMetadata") {
            Self::Metadata
        } else {
            Self::Full
        }
    }
}

fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn object_response(code: StatusCode, obj: &Stored) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        obj.json(),
    )
        .into_response()
}

fn render_one(format: &Format, res: &'static ResourceDef, obj: &Stored) -> Response {
    match format {
        Format::Full => object_response(StatusCode::OK, obj),
        Format::Metadata => json_response(StatusCode::OK, &partial_metadata(&obj.value())),
        Format::Table { include } => {
            let value = obj.value();
            let rv = value
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            json_response(
                StatusCode::OK,
                &crate::table::table(res, std::slice::from_ref(&value), rv, None, include),
            )
        }
    }
}

/// A list response, assembled from the stored items' JSON.
fn list_response(
    res: &ResourceDef,
    rv: u64,
    cont: Option<&str>,
    remaining: Option<usize>,
    items: &[Arc<Stored>],
) -> Response {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    let head = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta});
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    let total: usize = items.iter().map(|i| i.item_json().len() + 1).sum();
    body.reserve(total + 16);
    // Replace the closing brace of the head with the items array.
    body.pop();
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.item_json());
    }
    body.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": [key.0, key.1]});
    base64::engine::general_purpose::STANDARD.encode(raw.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_array).ok_or_else(bad)?;
    match start.as_slice() {
        [Value::String(ns), Value::String(name)] => Ok((rv, (ns.clone(), name.clone()))),
        _ => Err(bad()),
    }
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid value: \"{s}\": resourceVersion must be an integer"
        ))
    })
}

fn list(
    st: &AppState,
    t: &Target,
    q: &HashMap<String, String>,
    format: &Format,
) -> Result<Response, ApiError> {
    let res = t.res;
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), res)?;
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
        ),
    };
    let mut start = None;
    let mut list_rv = None;
    if let Some(token) = q.get("continue").filter(|c| !c.is_empty()) {
        if q.get("resourceVersion")
            .is_some_and(|r| !r.is_empty() && r != "0")
        {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (rv, key) = decode_continue(token)?;
        st.store.check_not_compacted(rv)?;
        start = Some(key);
        list_rv = Some(rv);
    } else if let Some(rv) = q
        .get("resourceVersion")
        .filter(|r| !r.is_empty() && *r != "0")
    {
        let rv = parse_rv(rv)?;
        let current = st.store.current_rv();
        let exact = q.get("resourceVersionMatch").is_some_and(|m| m == "Exact");
        if rv > current {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {rv}, current: {current}"
            )));
        }
        if exact && rv != current {
            // The double keeps no past snapshots; see the crate docs.
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({current})"
            )));
        }
    }
    let page = st.store.list(
        res,
        t.ns.as_deref(),
        &labels,
        &fields,
        start.as_ref(),
        limit,
    );
    let rv = list_rv.unwrap_or(page.rv);
    let cont = page.next.as_ref().map(|k| encode_continue(rv, k));
    let remaining =
        (cont.is_some() && labels.is_empty() && fields.is_empty()).then_some(page.remaining);
    match format {
        Format::Table { include } => {
            let q_include = q
                .get("includeObject")
                .cloned()
                .unwrap_or_else(|| include.clone());
            let values: Vec<Value> = page.items.iter().map(|i| i.value()).collect();
            Ok(json_response(
                StatusCode::OK,
                &crate::table::table(res, &values, &rv.to_string(), cont.as_deref(), &q_include),
            ))
        }
        Format::Metadata => {
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|i| partial_metadata(&i.value()))
                .collect();
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if let Some(c) = &cont {
                meta["continue"] = json!(c);
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                    "items": items,
                }),
            ))
        }
        Format::Full => Ok(list_response(
            res,
            rv,
            cont.as_deref(),
            remaining,
            &page.items,
        )),
    }
}

/// What one watch stream selects.
struct WatchFilter {
    res: &'static ResourceDef,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    format: Format,
}

impl WatchFilter {
    fn matches(&self, obj: &Stored) -> bool {
        let attrs = &obj.attrs;
        self.ns.as_deref().is_none_or(|ns| attrs.namespace == ns)
            && self.labels.matches(attrs)
            && self.fields.matches(attrs)
    }

    /// The event this watcher sees for a change, following selector transitions.
    fn view(&self, e: &Event) -> Option<EventType> {
        if !std::ptr::eq(e.res, self.res) {
            return None;
        }
        let now = self.matches(&e.object);
        let before = e.previous.as_deref().is_some_and(|p| self.matches(p));
        match e.kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => (now || before).then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }

    fn line(&self, kind: &str, obj: &Stored) -> Vec<u8> {
        let converted = match &self.format {
            Format::Full => {
                let json = obj.json();
                let mut out = Vec::with_capacity(json.len() + 32);
                out.extend_from_slice(b"{\"type\":\"");
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(b"\",\"object\":");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"}\n");
                return out;
            }
            Format::Metadata => partial_metadata(&obj.value()),
            Format::Table { .. } => {
                let value = obj.value();
                let rv = value
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                crate::table::table(
                    self.res,
                    std::slice::from_ref(&value),
                    &rv,
                    None,
                    "Metadata",
                )
            }
        };
        let mut out =
            serde_json::to_vec(&json!({"type": kind, "object": converted})).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Vec<u8> {
        let (kind, api_version) = match self.format {
            Format::Full => (self.res.kind.to_owned(), self.res.api_version()),
            Format::Metadata => (
                "PartialObjectMetadata".to_owned(),
                "meta.k8s.io/v1".to_owned(),
            ),
            Format::Table { .. } => ("Table".to_owned(), "meta.k8s.io/v1".to_owned()),
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let mut out = serde_json::to_vec(&json!({
            "type": "BOOKMARK",
            "object": {"kind": kind, "apiVersion": api_version, "metadata": meta},
        }))
        .unwrap_or_default();
        out.push(b'\n');
        out
    }
}

fn error_line(e: &ApiError) -> Vec<u8> {
    let mut out =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()})).unwrap_or_default();
    out.push(b'\n');
    out
}

fn watch(
    st: &AppState,
    t: &Target,
    q: &HashMap<String, String>,
    format: &Format,
) -> Result<Response, ApiError> {
    let res = t.res;
    let mut fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), res)?;
    if let Some(name) = &t.name {
        fields = FieldSelector::name(name);
    }
    let filter = WatchFilter {
        res,
        ns: t.ns.clone(),
        labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
        fields,
        format: format.clone(),
    };
    let timeout = match q
        .get("timeoutSeconds")
        .filter(|s| !s.is_empty() && *s != "0")
    {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s}")))?,
        ),
        None => st.settings.default_watch_timeout,
    };
    let bookmarks = flag(q, "allowWatchBookmarks");
    let send_initial = flag(q, "sendInitialEvents");
    if send_initial
        && q.get("resourceVersionMatch")
            .is_none_or(|m| m != "NotOlderThan")
    {
        return Err(ApiError::bad_request(
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if send_initial && !bookmarks {
        return Err(ApiError::bad_request(
            "sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let rv_param = q.get("resourceVersion").map_or("", String::as_str);
    let mut first: Vec<u8> = Vec::new();
    let from_rv = if send_initial || rv_param.is_empty() || rv_param == "0" {
        let page = st.store.list(
            res,
            filter.ns.as_deref(),
            &filter.labels,
            &filter.fields,
            None,
            None,
        );
        for obj in &page.items {
            first.extend(filter.line("ADDED", obj));
        }
        if send_initial {
            first.extend(filter.bookmark(page.rv, true));
        }
        page.rv
    } else {
        parse_rv(rv_param)?
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let state = st.clone();
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        stream_events(state, filter, from_rv, timeout, bookmarks, tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn stream_events(
    st: AppState,
    filter: WatchFilter,
    mut last: u64,
    timeout: Duration,
    bookmarks: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut changes = st.store.subscribe();
    let mut drops = st.control.watch_drops();
    drops.borrow_and_update();
    // A week caps absurd timeouts, which would overflow the deadline.
    let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(7 * 24 * 3600));
    // A zero period would make the interval panic.
    let period = st.settings.bookmark_interval.max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        changes.borrow_and_update();
        let mut out = Vec::new();
        match st.store.events_after(last) {
            Err(e) => {
                let _ = tx.send(Bytes::from(error_line(&e))).await;
                return;
            }
            Ok((events, current)) => {
                for e in &events {
                    if let Some(kind) = filter.view(e) {
                        out.extend(filter.line(kind.as_str(), &e.object));
                    }
                }
                last = last.max(current);
            }
        }
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = ticks.tick() => {
                if bookmarks && tx.send(Bytes::from(filter.bookmark(last, false))).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => return,
            _ = drops.changed() => return,
            () = tx.closed() => return,
        }
    }
}
