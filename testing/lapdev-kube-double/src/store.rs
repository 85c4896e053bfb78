//! The object store: every object as JSON under one global, monotonically
//! increasing resourceVersion (like etcd's revision), plus a bounded history of
//! watch events.
//!
//! All writes go through [`Store`], which applies what the real registry does on
//! create, update, patch and delete: metadata (`uid`, `creationTimestamp`,
//! `generation`, `resourceVersion`, `managedFields`), defaulting, validation,
//! status-subresource splitting, no-op detection (a write that changes nothing
//! keeps the resourceVersion and emits no event), finalizers with
//! `deletionTimestamp`, the pvc-protection controller, and namespace cleanup.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::object::Stored;
use crate::patch::{self, Ownership};
use crate::resource::{self, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::validate;

/// The pvc-protection finalizer the real admission plugin adds to every PVC.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// An object's key within its resource: (namespace, name); namespace is empty for
/// cluster-scoped objects.
pub type Key = (String, String);

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An object was created.
    Added,
    /// An object was changed.
    Modified,
    /// An object was removed.
    Deleted,
}

impl EventType {
    /// The event type as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change in the history.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// The resource the object belongs to.
    pub res: &'static ResourceDef,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (the last state for a deletion).
    pub object: Arc<Stored>,
    /// The object before the change, for selector transitions.
    pub previous: Option<Arc<Stored>>,
}

/// How a patch body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml`.
    Apply,
}

/// Who writes and how.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// The field manager recorded in `managedFields`.
    pub manager: String,
    /// `dryRun=All`: do everything but store.
    pub dry_run: bool,
    /// `force=true` for server-side apply.
    pub force: bool,
    /// Whether the object came from a typed Rust value (the test handle), so
    /// decoding it as its type again is pointless.
    pub typed: bool,
    /// `fieldValidation=Strict`: unknown fields are a 400.
    pub strict: bool,
}

impl WriteCtx {
    /// A plain write by `manager`.
    pub fn by(manager: &str) -> Self {
        Self {
            manager: manager.to_owned(),
            dry_run: false,
            force: false,
            typed: true,
            strict: false,
        }
    }
}

/// Delete preconditions from `DeleteOptions`.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// Expected `metadata.uid`.
    pub uid: Option<String>,
    /// Expected `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// `gracePeriodSeconds`; for pods, `None` means the pod's own
    /// `terminationGracePeriodSeconds`.
    pub grace_period: Option<i64>,
}

/// What a delete did.
#[derive(Debug)]
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Arc<Stored>),
    /// Finalizers keep the object; it now has a `deletionTimestamp`.
    Pending(Arc<Stored>),
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The matching objects, in key order.
    pub items: Vec<Arc<Stored>>,
    /// The resourceVersion the list was read at.
    pub rv: u64,
    /// The last key returned, when more items follow.
    pub next: Option<Key>,
    /// How many matching items follow this page.
    pub remaining: usize,
}

type Table = BTreeMap<Key, Arc<Stored>>;

struct Inner {
    rv: u64,
    tables: HashMap<(&'static str, &'static str), Table>,
    history: VecDeque<Arc<Event>>,
    /// Every event with rv <= compacted has left the history.
    compacted: u64,
    next_cluster_ip: u32,
}

/// The store shared by the HTTP server and the test handle.
pub struct Store {
    inner: RwLock<Inner>,
    history_cap: usize,
    graceful_pods: bool,
    notify: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("history_cap", &self.history_cap)
            .finish_non_exhaustive()
    }
}

/// The current time as the API formats timestamps.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // The branch above made `metadata` an object.
        _ => unreachable!("metadata is an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn set_finalizers(obj: &mut Value, list: Vec<String>) {
    let meta = meta_mut(obj);
    if list.is_empty() {
        meta.remove("finalizers");
    } else {
        meta.insert("finalizers".to_owned(), json!(list));
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The parts of an object that `generation` tracks: everything but metadata and status.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn set_if_missing(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry(key.to_owned()).or_insert(value);
    }
}

fn pod_qos(obj: &Value) -> &'static str {
    let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
    let mut any = false;
    let mut guaranteed = true;
    for c in containers.into_iter().flatten() {
        let req = c.pointer("/resources/requests");
        let lim = c.pointer("/resources/limits");
        if req.is_some_and(|r| r.as_object().is_some_and(|m| !m.is_empty()))
            || lim.is_some_and(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Defaulting that the real server applies on every write (see the module docs).
fn apply_defaults(res: &ResourceDef, obj: &mut Value, old: Option<&Value>) {
    match res.plural {
        "pods" => {
            let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
                return;
            };
            set_if_missing(spec, "restartPolicy", json!("Always"));
            set_if_missing(spec, "dnsPolicy", json!("ClusterFirst"));
            set_if_missing(spec, "schedulerName", json!("default-scheduler"));
            set_if_missing(spec, "terminationGracePeriodSeconds", json!(30));
            set_if_missing(spec, "securityContext", json!({}));
            for list in ["containers", "initContainers"] {
                let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) else {
                    continue;
                };
                for c in cs.iter_mut().filter(|c| c.is_object()) {
                    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                    let last = image.rsplit('/').next().unwrap_or("");
                    let policy = if !last.contains(':') || last.ends_with(":latest") {
                        "Always"
                    } else {
                        "IfNotPresent"
                    };
                    set_if_missing(c, "imagePullPolicy", json!(policy));
                    set_if_missing(c, "terminationMessagePath", json!("/dev/termination-log"));
                    set_if_missing(c, "terminationMessagePolicy", json!("File"));
                    set_if_missing(c, "resources", json!({}));
                    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                        for p in ports.iter_mut() {
                            set_if_missing(p, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        "persistentvolumeclaims" => {
            if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                set_if_missing(spec, "volumeMode", json!("Filesystem"));
            }
        }
        "services" => {
            let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
                return;
            };
            set_if_missing(spec, "type", json!("ClusterIP"));
            set_if_missing(spec, "sessionAffinity", json!("None"));
            if let Some(old_ip) = old.and_then(|o| o.pointer("/spec/clusterIP")) {
                set_if_missing(spec, "clusterIP", old_ip.clone());
                set_if_missing(spec, "clusterIPs", json!([old_ip]));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter(|p| p.is_object()) {
                    set_if_missing(p, "protocol", json!("TCP"));
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    set_if_missing(p, "targetPort", port);
                }
            }
        }
        "secrets" => set_if_missing(obj, "type", json!("Opaque")),
        "storageclasses" => {
            set_if_missing(obj, "reclaimPolicy", json!("Delete"));
            set_if_missing(obj, "volumeBindingMode", json!("Immediate"));
        }
        "namespaces" => {
            let name = meta_str(obj, "name").unwrap_or("").to_owned();
            let meta = meta_mut(obj);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".to_owned(), json!(name));
            }
            set_if_missing(obj, "spec", json!({"finalizers": ["kubernetes"]}));
        }
        _ => {}
    }
}

fn ns_range<'a>(table: &'a Table, ns: &'a str) -> impl Iterator<Item = (&'a Key, &'a Arc<Stored>)> {
    table
        .range((ns.to_owned(), String::new())..)
        .take_while(move |((n, _), _)| n == ns)
}

impl crate::admission::Lookup for Inner {
    fn get(&self, res: &'static ResourceDef, ns: &str, name: &str) -> Option<Value> {
        Inner::get(self, res, &key_for(res, ns, name)).map(|s| s.value())
    }

    fn all(&self, res: &'static ResourceDef) -> Vec<Value> {
        self.table(res)
            .map(|t| t.values().map(|s| s.value()).collect())
            .unwrap_or_default()
    }
}

impl Inner {
    fn table(&self, res: &ResourceDef) -> Option<&Table> {
        self.tables.get(&(res.group, res.plural))
    }

    fn table_mut(&mut self, res: &'static ResourceDef) -> &mut Table {
        self.tables.entry((res.group, res.plural)).or_default()
    }

    fn get(&self, res: &ResourceDef, key: &Key) -> Option<Arc<Stored>> {
        self.table(res).and_then(|t| t.get(key)).cloned()
    }

    /// Stores a change under the next resourceVersion and records the event.
    fn commit(
        &mut self,
        res: &'static ResourceDef,
        key: Key,
        mut obj: Value,
        kind: EventType,
        previous: Option<Arc<Stored>>,
        history_cap: usize,
    ) -> Arc<Stored> {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".to_owned(), json!(self.rv.to_string()));
        let obj = Arc::new(Stored::new(res, &obj));
        let rv = self.rv;
        let table = self.table_mut(res);
        if kind == EventType::Deleted {
            table.remove(&key);
        } else {
            table.insert(key, obj.clone());
        }
        self.history.push_back(Arc::new(Event {
            rv,
            res,
            kind,
            object: obj.clone(),
            previous,
        }));
        while self.history.len() > history_cap {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        obj
    }
}

/// What an update path should do about `managedFields`.
enum Managed<'a> {
    /// Record the write as `operation: Update` by this manager.
    Update(&'a str),
    /// `managedFields` were already computed (server-side apply).
    Done,
}

impl Store {
    /// An empty store keeping the last `history_cap` events.
    /// An empty store; `graceful_pods` turns on graceful deletion of bound pods.
    pub fn new(history_cap: usize, graceful_pods: bool) -> Self {
        let (notify, _) = tokio::sync::watch::channel(0);
        Self {
            inner: RwLock::new(Inner {
                rv: 0,
                tables: HashMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                next_cluster_ip: 1,
            }),
            history_cap: history_cap.max(1),
            graceful_pods,
            notify,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify_changed(&self, rv: u64) {
        self.notify.send_replace(rv);
    }

    /// A receiver that sees the latest resourceVersion after every write.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.read().rv
    }

    /// Every event with a resourceVersion above `after`, or 410 when some have
    /// already left the history; also returns the current resourceVersion.
    pub fn events_after(&self, after: u64) -> Result<(Vec<Arc<Event>>, u64), ApiError> {
        let inner = self.read();
        if after < inner.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {after} ({})",
                inner.compacted + 1
            )));
        }
        let start = inner.history.partition_point(|e| e.rv <= after);
        Ok((inner.history.range(start..).cloned().collect(), inner.rv))
    }

    /// Whether a list at `rv` can still be continued (its events are retained).
    pub fn check_not_compacted(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.read().compacted {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        Ok(())
    }

    /// Drops the whole history, as an etcd compaction would.
    pub fn compact(&self) {
        let mut inner = self.write();
        inner.history.clear();
        inner.compacted = inner.rv;
    }

    /// Reads one object.
    pub fn get(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
    ) -> Result<Arc<Stored>, ApiError> {
        self.read()
            .get(res, &(ns.to_owned(), name.to_owned()))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Lists matching objects in key order, starting after `start_after`.
    pub fn list(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        start_after: Option<&Key>,
        limit: Option<usize>,
    ) -> ListPage {
        let inner = self.read();
        let rv = inner.rv;
        let Some(table) = inner.table(res) else {
            return ListPage {
                items: Vec::new(),
                rv,
                next: None,
                remaining: 0,
            };
        };
        let iter: Box<dyn Iterator<Item = (&Key, &Arc<Stored>)>> = match (ns, start_after) {
            (_, Some(k)) => Box::new(
                table
                    .range((
                        std::ops::Bound::Excluded(k.clone()),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(move |((n, _), _)| ns.is_none_or(|ns| ns == n)),
            ),
            (Some(ns), None) => Box::new(ns_range(table, ns)),
            (None, None) => Box::new(table.iter()),
        };
        let mut matching = iter.filter(|(_, v): &(&Key, &Arc<Stored>)| {
            labels.matches(&v.attrs) && fields.matches(&v.attrs)
        });
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        for (k, v) in matching.by_ref() {
            items.push(v.clone());
            if items.len() == limit {
                last = Some(k.clone());
                break;
            }
        }
        let remaining = if last.is_some() { matching.count() } else { 0 };
        let next = if remaining > 0 { last } else { None };
        ListPage {
            items,
            rv,
            next,
            remaining,
        }
    }

    /// Stores an object as given, status included, as if it had been created and
    /// its controllers had already reported on it: only server-set metadata and
    /// defaults are added (no validation, no status reset, no `managedFields`).
    /// For seeding large fixtures quickly.
    pub fn seed(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        mut obj: Value,
    ) -> Result<Arc<Stored>, ApiError> {
        check_type(res, &obj)?;
        let name = meta_str(&obj, "name").unwrap_or("").to_owned();
        if name.is_empty() {
            return Err(ApiError::bad_request("a seeded object needs metadata.name"));
        }
        let ns = if res.namespaced {
            ns.to_owned()
        } else {
            String::new()
        };
        let mut inner = self.write();
        let namespaces = resource::core_resource("namespaces");
        if res.namespaced
            && inner
                .get(namespaces, &(String::new(), ns.clone()))
                .is_none()
        {
            return Err(ApiError::not_found(namespaces, &ns));
        }
        let key = (ns.clone(), name.clone());
        if inner.get(res, &key).is_some() {
            return Err(ApiError::already_exists(res, &name));
        }
        let meta = meta_mut(&mut obj);
        if res.namespaced {
            meta.insert("namespace".to_owned(), json!(ns));
        }
        meta.insert("uid".to_owned(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".to_owned(), json!(now()));
        meta.insert("generation".to_owned(), json!(1));
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        apply_defaults(res, &mut obj, None);
        let out = inner.commit(res, key, obj, EventType::Added, None, self.history_cap);
        let rv = inner.rv;
        drop(inner);
        self.notify_changed(rv);
        Ok(out)
    }

    /// Creates an object (POST).
    pub fn create(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut inner = self.write();
        let out =
            self.create_locked(&mut inner, res, ns, obj, ctx, Managed::Update(&ctx.manager))?;
        let rv = inner.rv;
        drop(inner);
        self.notify_changed(rv);
        Ok(out)
    }

    fn create_locked(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        ns: &str,
        mut obj: Value,
        ctx: &WriteCtx,
        managed: Managed<'_>,
    ) -> Result<Arc<Stored>, ApiError> {
        validate::check_decodable(res, &obj, !ctx.typed)?;
        if ctx.strict {
            validate::check_strict(res, &obj)?;
        }
        check_type(res, &obj)?;
        let meta = meta_mut(&mut obj);
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => format!("{g}{}", random_suffix()),
                _ => {
                    return Err(ApiError::invalid(
                        res,
                        "",
                        &[crate::error::Cause::required(
                            "metadata.name",
                            "name or generateName is required",
                        )],
                    ));
                }
            },
        };
        if res.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            meta.insert("namespace".to_owned(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("name".to_owned(), json!(name));
        meta.insert("uid".to_owned(), json!(uuid::Uuid::new_v4().to_string()));
        let created = now();
        meta.insert("creationTimestamp".to_owned(), json!(created));
        meta.insert("generation".to_owned(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("selfLink");
        if matches!(managed, Managed::Update(_)) {
            meta.remove("managedFields");
        }
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        apply_defaults(res, &mut obj, None);
        match res.plural {
            "pods" => {
                let qos = pod_qos(&obj);
                obj["status"] = json!({"phase": "Pending", "qosClass": qos});
            }
            "persistentvolumeclaims" => {
                obj["status"] = json!({"phase": "Pending"});
                let mut f = finalizers(&obj);
                if !f.iter().any(|x| x == PVC_PROTECTION) {
                    f.push(PVC_PROTECTION.to_owned());
                }
                set_finalizers(&mut obj, f);
            }
            "namespaces" => obj["status"] = json!({"phase": "Active"}),
            "services" => {
                obj["status"] = json!({"loadBalancer": {}});
                let headless =
                    obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
                let external =
                    obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
                if !headless && !external && obj.pointer("/spec/clusterIP").is_none() {
                    let n = inner.next_cluster_ip;
                    inner.next_cluster_ip += 1;
                    let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                    if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                        spec["clusterIP"] = json!(ip);
                        spec["clusterIPs"] = json!([ip]);
                        spec["ipFamilies"] = json!(["IPv4"]);
                        spec["ipFamilyPolicy"] = json!("SingleStack");
                    }
                }
            }
            _ => {}
        }
        if !ctx.typed {
            validate::prune_unknown(res, &mut obj);
        }
        crate::admission::mutate_create(res, &mut obj, inner);
        validate::validate(res, &obj)?;
        crate::admission::validate_create(res, &obj, inner)?;
        if res.namespaced
            && inner
                .get(
                    resource::core_resource("namespaces"),
                    &(String::new(), ns.to_owned()),
                )
                .is_none()
        {
            return Err(ApiError::not_found(
                resource::core_resource("namespaces"),
                ns,
            ));
        }
        let key = (
            if res.namespaced {
                ns.to_owned()
            } else {
                String::new()
            },
            name.clone(),
        );
        if inner.get(res, &key).is_some() {
            return Err(ApiError::already_exists(res, &name));
        }
        if let Managed::Update(manager) = managed {
            let api_version = res.api_version();
            patch::record_update(
                None,
                &mut obj,
                &Ownership {
                    manager,
                    subresource: "",
                    api_version: &api_version,
                    now: &created,
                },
            );
        }
        if ctx.dry_run {
            return Ok(Arc::new(Stored::new(res, &obj)));
        }
        Ok(inner.commit(res, key, obj, EventType::Added, None, self.history_cap))
    }

    /// Replaces an object (PUT), on the main resource or its `status` subresource.
    pub fn update(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        obj: Value,
        subresource: &str,
        ctx: &WriteCtx,
    ) -> Result<Arc<Stored>, ApiError> {
        validate::check_decodable(res, &obj, !ctx.typed)?;
        if ctx.strict {
            validate::check_strict(res, &obj)?;
        }
        check_type(res, &obj)?;
        if let Some(n) = meta_str(&obj, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced
            && let Some(n) = meta_str(&obj, "namespace")
            && !n.is_empty()
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut inner = self.write();
        let key = key_for(res, ns, name);
        let old = inner
            .get(res, &key)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        if let Some(rv) = meta_str(&obj, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta_str(&old.value(), "resourceVersion")
        {
            return Err(ApiError::stale(res, name));
        }
        let out = self.finish_update(
            &mut inner,
            res,
            key,
            &old,
            obj,
            subresource,
            ctx,
            Managed::Update(&ctx.manager),
        )?;
        let rv = inner.rv;
        drop(inner);
        self.notify_changed(rv);
        Ok(out)
    }

    /// Patches an object (PATCH); server-side apply creates it when missing.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        subresource: &str,
        ctx: &WriteCtx,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut inner = self.write();
        let out = self.patch_locked(&mut inner, res, ns, name, kind, body, subresource, ctx)?;
        let rv = inner.rv;
        drop(inner);
        self.notify_changed(rv);
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn patch_locked(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        subresource: &str,
        ctx: &WriteCtx,
    ) -> Result<Arc<Stored>, ApiError> {
        let key = key_for(res, ns, name);
        let old = inner.get(res, &key);
        if kind == PatchKind::Apply {
            check_type(res, body)?;
            if ctx.strict {
                validate::check_strict(res, body)?;
            }
            if body.get("apiVersion").is_none() || body.get("kind").is_none() {
                return Err(ApiError::bad_request(
                    "invalid object type: apiVersion and kind must be set in an apply patch",
                ));
            }
            if let Some(n) = meta_str(body, "name")
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            let api_version = res.api_version();
            let now = now();
            let own = Ownership {
                manager: &ctx.manager,
                subresource,
                api_version: &api_version,
                now: &now,
            };
            let Some(old) = old else {
                if !subresource.is_empty() {
                    return Err(ApiError::not_found(res, name));
                }
                let mut created = patch::apply(None, body, &own, ctx.force, res, name)?;
                meta_mut(&mut created).insert("name".to_owned(), json!(name));
                return self.create_locked(inner, res, ns, created, ctx, Managed::Done);
            };
            let old_v = old.value();
            if let Some(rv) = meta_str(body, "resourceVersion")
                && Some(rv) != meta_str(&old_v, "resourceVersion")
            {
                return Err(ApiError::stale(res, name));
            }
            validate::check_decodable(res, body, !ctx.typed)?;
            let new = patch::apply(Some(&old_v), body, &own, ctx.force, res, name)?;
            return self.finish_update(inner, res, key, &old, new, subresource, ctx, Managed::Done);
        }
        let old = old.ok_or_else(|| ApiError::not_found(res, name))?;
        let old_v = old.value();
        let mut new = old_v.clone();
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut new, body),
            PatchKind::Strategic => patch::strategic_merge(&mut new, body),
            PatchKind::Json => patch::json_patch(&mut new, body)?,
            PatchKind::Apply => {}
        }
        validate::check_decodable(res, &new, !ctx.typed)?;
        if ctx.strict {
            validate::check_strict(res, &new)?;
        }
        // A patch that leaves the resourceVersion alone (or drops it) is unconditional.
        if meta_str(&new, "resourceVersion").is_some_and(|rv| !rv.is_empty())
            && meta_str(&new, "resourceVersion") != meta_str(&old_v, "resourceVersion")
        {
            return Err(ApiError::stale(res, name));
        }
        if meta_str(&new, "name") != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name: the name of an object cannot be changed",
            ));
        }
        self.finish_update(
            inner,
            res,
            key,
            &old,
            new,
            subresource,
            ctx,
            Managed::Update(&ctx.manager),
        )
    }

    /// The shared end of update, patch and apply.
    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        key: Key,
        old_stored: &Arc<Stored>,
        mut new: Value,
        subresource: &str,
        ctx: &WriteCtx,
        managed: Managed<'_>,
    ) -> Result<Arc<Stored>, ApiError> {
        let old_value = old_stored.value();
        let old = &old_value;
        validate::check_decodable(res, &new, !ctx.typed)?;
        new["apiVersion"] = json!(res.api_version());
        new["kind"] = json!(res.kind);
        if res.has_status && subresource == "status" {
            // A status write changes status only, as the registries' status strategies do.
            let status = new.get("status").cloned();
            let managed_fields = new.pointer("/metadata/managedFields").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if matches!(managed, Managed::Done) {
                let meta = meta_mut(&mut new);
                match managed_fields {
                    Some(m) => meta.insert("managedFields".to_owned(), m),
                    None => meta.remove("managedFields"),
                };
            }
        } else if res.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        {
            let meta = meta_mut(&mut new);
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "generation",
            ] {
                match old.pointer(&format!("/metadata/{field}")) {
                    Some(v) => meta.insert(field.to_owned(), v.clone()),
                    None => meta.remove(field),
                };
            }
        }
        apply_defaults(res, &mut new, Some(old));
        if !ctx.typed {
            validate::prune_unknown(res, &mut new);
        }
        validate::validate(res, &new)?;
        validate::validate_update(res, old, &new)?;
        crate::admission::validate_update(res, old, &new, inner)?;
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let before = finalizers(old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                let name = key.1.clone();
                return Err(ApiError::invalid(
                    res,
                    &name,
                    &[crate::error::Cause::forbidden(
                        "metadata.finalizers",
                        &format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        if let Managed::Update(manager) = managed {
            let api_version = res.api_version();
            let now = now();
            patch::record_update(
                Some(old),
                &mut new,
                &Ownership {
                    manager,
                    subresource,
                    api_version: &api_version,
                    now: &now,
                },
            );
        }
        if spec_part(&new) != spec_part(old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut new).insert("generation".to_owned(), json!(generation + 1));
        }
        if new == *old {
            return Ok(old_stored.clone());
        }
        if ctx.dry_run {
            return Ok(Arc::new(Stored::new(res, &new)));
        }
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        if terminating && finalizers(&new).is_empty() {
            let gone = inner.commit(
                res,
                key.clone(),
                new,
                EventType::Deleted,
                Some(old_stored.clone()),
                self.history_cap,
            );
            self.after_delete(inner, res, &key, &gone);
            return Ok(gone);
        }
        let out = inner.commit(
            res,
            key.clone(),
            new,
            EventType::Modified,
            Some(old_stored.clone()),
            self.history_cap,
        );
        if res.plural == "pods" {
            self.release_claims(inner, &key.0);
        }
        Ok(out)
    }

    /// Deletes an object (DELETE).
    pub fn delete(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        pre: &Preconditions,
        ctx: &WriteCtx,
    ) -> Result<Deleted, ApiError> {
        let mut inner = self.write();
        let out = self.delete_locked(&mut inner, res, key_for(res, ns, name), pre, ctx)?;
        let rv = inner.rv;
        drop(inner);
        self.notify_changed(rv);
        Ok(out)
    }

    fn delete_locked(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        key: Key,
        pre: &Preconditions,
        ctx: &WriteCtx,
    ) -> Result<Deleted, ApiError> {
        let name = key.1.clone();
        let old = inner
            .get(res, &key)
            .ok_or_else(|| ApiError::not_found(res, &name))?;
        let old_v = old.value();
        if let Some(uid) = &pre.uid
            && Some(uid.as_str()) != meta_str(&old_v, "uid")
        {
            return Err(ApiError::conflict(
                res,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old_v, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &pre.resource_version
            && Some(rv.as_str()) != meta_str(&old_v, "resourceVersion")
        {
            return Err(ApiError::conflict(
                res,
                &name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old_v, "resourceVersion").unwrap_or("")
                ),
            ));
        }
        let mut new = old_v.clone();
        if res.plural == "persistentvolumeclaims" && !self.claim_in_use(inner, &key.0, &name) {
            let f: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| f != PVC_PROTECTION)
                .collect();
            set_finalizers(&mut new, f);
        }
        if ctx.dry_run {
            return Ok(Deleted::Gone(old));
        }
        let grace = if self.graceful_pods {
            pod_grace_period(res, &old_v, pre.grace_period)
        } else {
            None
        };
        if let Some(grace) = grace {
            // Graceful pod deletion: the pod stays, marked, until its kubelet
            // confirms it stopped (a delete with grace period 0).
            let meta = meta_mut(&mut new);
            let already = meta
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if already.is_none_or(|g| grace < g) {
                let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
                meta.insert(
                    "deletionTimestamp".to_owned(),
                    json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                );
                meta.insert("deletionGracePeriodSeconds".to_owned(), json!(grace));
            }
            if new == old_v {
                return Ok(Deleted::Pending(old));
            }
            let out = inner.commit(
                res,
                key,
                new,
                EventType::Modified,
                Some(old),
                self.history_cap,
            );
            return Ok(Deleted::Pending(out));
        }
        if !finalizers(&new).is_empty() {
            let meta = meta_mut(&mut new);
            if meta.get("deletionTimestamp").is_none() {
                meta.insert("deletionTimestamp".to_owned(), json!(now()));
                meta.insert("deletionGracePeriodSeconds".to_owned(), json!(0));
            }
            if new == old_v {
                return Ok(Deleted::Pending(old));
            }
            let out = inner.commit(
                res,
                key,
                new,
                EventType::Modified,
                Some(old),
                self.history_cap,
            );
            return Ok(Deleted::Pending(out));
        }
        let gone = inner.commit(
            res,
            key.clone(),
            new,
            EventType::Deleted,
            Some(old),
            self.history_cap,
        );
        self.after_delete(inner, res, &key, &gone);
        Ok(Deleted::Gone(gone))
    }

    /// Deletes every matching object (DELETE on a collection).
    pub fn delete_collection(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        ctx: &WriteCtx,
    ) -> Result<Vec<Arc<Stored>>, ApiError> {
        let page = self.list(res, ns, labels, fields, None, None);
        let mut inner = self.write();
        let mut out = Vec::new();
        for obj in page.items {
            let key = key_for(res, &obj.attrs.namespace, &obj.attrs.name);
            match self.delete_locked(&mut inner, res, key, &Preconditions::default(), ctx) {
                Ok(Deleted::Gone(o) | Deleted::Pending(o)) => out.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let rv = inner.rv;
        drop(inner);
        self.notify_changed(rv);
        Ok(out)
    }

    fn claim_in_use(&self, inner: &Inner, ns: &str, claim: &str) -> bool {
        inner
            .table(resource::core_resource("pods"))
            .is_some_and(|pods| {
                ns_range(pods, ns)
                    .any(|(_, p)| !p.attrs.terminated && p.attrs.claims.iter().any(|c| c == claim))
            })
    }

    /// The pvc-protection controller: lets terminating claims that no pod uses go.
    fn release_claims(&self, inner: &mut Inner, ns: &str) {
        let pvcs = resource::core_resource("persistentvolumeclaims");
        let waiting: Vec<(Key, Arc<Stored>)> = match inner.table(pvcs) {
            Some(t) => ns_range(t, ns)
                .filter(|(_, v)| {
                    v.attrs.deleting && v.attrs.finalizers.iter().any(|f| f == PVC_PROTECTION)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => return,
        };
        for (key, old) in waiting {
            if self.claim_in_use(inner, ns, &key.1) {
                continue;
            }
            let mut new = old.value();
            let f: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| f != PVC_PROTECTION)
                .collect();
            let empty = f.is_empty();
            set_finalizers(&mut new, f);
            let kind = if empty {
                EventType::Deleted
            } else {
                EventType::Modified
            };
            inner.commit(pvcs, key, new, kind, Some(old), self.history_cap);
        }
    }

    fn after_delete(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        key: &Key,
        _gone: &Arc<Stored>,
    ) {
        match res.plural {
            "pods" => self.release_claims(inner, &key.0),
            "namespaces" => {
                // Namespace deletion removes everything in it at once (the real
                // namespace controller does it asynchronously).
                let ns = key.1.clone();
                for r in resource::RESOURCES.iter().filter(|r| r.namespaced) {
                    let keys: Vec<(Key, Arc<Stored>)> = match inner.table(r) {
                        Some(t) => ns_range(t, &ns)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        None => continue,
                    };
                    for (k, v) in keys {
                        inner.commit(
                            r,
                            k,
                            v.value(),
                            EventType::Deleted,
                            Some(v),
                            self.history_cap,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Changes an object in place, as a controller or kubelet would, bypassing
    /// validation (e.g. binding a pod to a node); a change that changes nothing is
    /// a no-op. Returns the stored object.
    pub fn mutate(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        manager: &str,
        subresource: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Arc<Stored>, ApiError> {
        self.try_mutate(res, ns, name, manager, subresource, |v| {
            f(v);
            Ok(())
        })
    }

    /// [`Store::mutate`] with a change that may refuse (e.g. binding a pod that
    /// is already bound), decided under the same lock as the write.
    pub fn try_mutate(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        manager: &str,
        subresource: &str,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut inner = self.write();
        let key = key_for(res, ns, name);
        let old = inner
            .get(res, &key)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let old_v = old.value();
        let mut new = old_v.clone();
        f(&mut new)?;
        let api_version = res.api_version();
        let now = now();
        patch::record_update(
            Some(&old_v),
            &mut new,
            &Ownership {
                manager,
                subresource,
                api_version: &api_version,
                now: &now,
            },
        );
        if new == old_v {
            return Ok(old);
        }
        let out = inner.commit(
            res,
            key.clone(),
            new,
            EventType::Modified,
            Some(old),
            self.history_cap,
        );
        if res.plural == "pods" {
            self.release_claims(&mut inner, &key.0);
        }
        let rv = inner.rv;
        drop(inner);
        self.notify_changed(rv);
        Ok(out)
    }
}

/// The grace period a pod deletion waits for, or `None` when the pod goes at
/// once: pods not bound to a node, pods that finished, and a grace period of 0
/// are deleted immediately, as the pod registry's `CheckGracefulDelete` does.
fn pod_grace_period(res: &ResourceDef, pod: &Value, asked: Option<i64>) -> Option<i64> {
    if res.plural != "pods" || !res.group.is_empty() {
        return None;
    }
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !bound || phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let own = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    let grace = asked.unwrap_or(own).max(0);
    (grace > 0).then_some(grace)
}

fn key_for(res: &ResourceDef, ns: &str, name: &str) -> Key {
    (
        if res.namespaced {
            ns.to_owned()
        } else {
            String::new()
        },
        name.to_owned(),
    )
}

fn check_type(res: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if api_version.is_some_and(|a| a != res.api_version()) || kind.is_some_and(|k| k != res.kind) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({}) or the kind ({}) is not {}",
            api_version.unwrap_or(""),
            res.api_version(),
            kind.unwrap_or(""),
            res.kind
        )));
    }
    Ok(())
}
