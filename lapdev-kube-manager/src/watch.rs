//! Watching the cluster: kube-runtime watchers on the workspace pods and claims
//! (selected by label, so unrelated pods cost nothing) and on the nodes, a
//! periodic probe of the API server, and the [`Tracker`] they all feed.
//!
//! The tracker keeps a compact state, not the objects: per workspace the pod's
//! mapped status ([`PodState`]) and whether its claim exists, per node a
//! [`NodeSummary`]. From that it derives each workspace's observation (changes
//! are queued for the server; a full snapshot is always available), the cluster
//! info (published when it changes), and the manager's Kubernetes health.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt as _};
use lapdev_common::kube::KubeClusterInfo;
use lapdev_common::status::WorkspaceStatus;
use lapdev_kube_rpc::WorkspaceObservation;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::cluster_info::{ManagerIdentity, NodeSummary, cluster_info, summarize_node};
use crate::workspace::{MANAGED_BY, MANAGED_BY_LABEL, WORKSPACE_ID_LABEL, workspace_id_of};

/// Container waiting reasons after which the pod will not start by itself.
const FATAL_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImageInspectError",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
];

/// The label selector of everything the manager created.
pub fn workspace_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{WORKSPACE_ID_LABEL}")
}

/// What the manager keeps of a workspace pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The pod's name.
    pub name: String,
    /// The status the pod means for its workspace.
    pub status: WorkspaceStatus,
    /// Why, when the pod says (`ImagePullBackOff: ...`).
    pub message: Option<String>,
}

fn reason_message(reason: Option<&str>, message: Option<&str>) -> Option<String> {
    match (
        reason.filter(|s| !s.is_empty()),
        message.filter(|s| !s.is_empty()),
    ) {
        (Some(r), Some(m)) => Some(format!("{r}: {m}")),
        (Some(r), None) => Some(r.to_owned()),
        (None, Some(m)) => Some(m.to_owned()),
        (None, None) => None,
    }
}

impl PodState {
    /// Maps a pod to its workspace's status: pending → `creating` (with the
    /// waiting reason, e.g. `ImagePullBackOff`), a waiting reason it will not
    /// recover from (`ErrImagePull`, `InvalidImageName`, `CrashLoopBackOff`, …)
    /// → `failed`, running and ready → `running`, running but not ready →
    /// `creating`, succeeded or failed → `failed` with the pod's reason, being
    /// deleted → `stopping`.
    pub fn from_pod(pod: &Pod) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (status, message) = Self::map(pod);
        Self {
            name,
            status,
            message,
        }
    }

    fn map(pod: &Pod) -> (WorkspaceStatus, Option<String>) {
        if pod.metadata.deletion_timestamp.is_some() {
            return (WorkspaceStatus::Stopping, None);
        }
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let containers = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        let waiting = containers
            .iter()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
            .find(|w| w.reason.as_deref().is_some_and(|r| !r.is_empty()));
        let waiting_message =
            waiting.and_then(|w| reason_message(w.reason.as_deref(), w.message.as_deref()));
        let fatal = waiting
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| FATAL_WAITING_REASONS.contains(&r));
        let condition = |ty: &str| {
            status
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default()
                .iter()
                .find(|c| c.type_ == ty)
        };
        match phase {
            "Pending" | "Running" if fatal => (WorkspaceStatus::Failed, waiting_message),
            "Pending" => {
                let unschedulable = condition("PodScheduled")
                    .filter(|c| c.status == "False")
                    .and_then(|c| reason_message(c.reason.as_deref(), c.message.as_deref()));
                (WorkspaceStatus::Creating, waiting_message.or(unschedulable))
            }
            "Running" => {
                if condition("Ready").is_some_and(|c| c.status == "True") {
                    (WorkspaceStatus::Running, None)
                } else {
                    (WorkspaceStatus::Creating, waiting_message)
                }
            }
            "Succeeded" | "Failed" => {
                let pod_reason =
                    status.and_then(|s| reason_message(s.reason.as_deref(), s.message.as_deref()));
                let terminated = containers.iter().find_map(|c| {
                    let t = c.state.as_ref()?.terminated.as_ref()?;
                    let base = reason_message(t.reason.as_deref(), t.message.as_deref())
                        .unwrap_or_else(|| "terminated".to_owned());
                    Some(format!("{base} (exit code {})", t.exit_code))
                });
                let message = pod_reason
                    .or(terminated)
                    .unwrap_or_else(|| format!("the pod {}", phase.to_ascii_lowercase()));
                (WorkspaceStatus::Failed, Some(message))
            }
            other => (
                WorkspaceStatus::Failed,
                Some(format!("the pod's phase is {other}")),
            ),
        }
    }
}

/// The state of a workspace's home volume claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No claim.
    Absent,
    /// The claim exists.
    Present,
    /// The claim is being deleted (a finalizer holds it).
    Terminating,
}

impl Claim {
    /// The claim state of an object that exists.
    pub fn of(pvc: &PersistentVolumeClaim) -> Self {
        if pvc.metadata.deletion_timestamp.is_some() {
            Claim::Terminating
        } else {
            Claim::Present
        }
    }
}

/// A workspace's status from its pod (if any) and its claim:
/// `(status, message, pod name)`. No pod but a claim is `stopped`; a claim
/// being deleted is `deleting`; nothing is `deleted`.
pub fn observe(
    pod: Option<&PodState>,
    claim: Claim,
) -> (WorkspaceStatus, Option<String>, Option<String>) {
    match (pod, claim) {
        (Some(p), Claim::Terminating) if p.status == WorkspaceStatus::Stopping => {
            (WorkspaceStatus::Deleting, None, Some(p.name.clone()))
        }
        (Some(p), _) => (p.status, p.message.clone(), Some(p.name.clone())),
        (None, Claim::Present) => (WorkspaceStatus::Stopped, None, None),
        (None, Claim::Terminating) => (WorkspaceStatus::Deleting, None, None),
        (None, Claim::Absent) => (WorkspaceStatus::Deleted, None, None),
    }
}

/// A map fed by watcher events, with the relist buffered until it is complete.
struct Keyed<K, V> {
    map: HashMap<K, V>,
    buffer: Option<HashMap<K, V>>,
    synced: bool,
}

impl<K, V> Default for Keyed<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            buffer: None,
            synced: false,
        }
    }
}

/// A watcher event reduced to a key and what the manager keeps.
#[derive(Debug)]
enum Change<K, V> {
    Upsert(K, V),
    Remove(K),
    Init,
    InitUpsert(K, V),
    InitDone,
}

impl<K: std::hash::Hash + Eq + Clone, V: PartialEq> Keyed<K, V> {
    /// Applies a change; returns the keys whose value may have changed (an
    /// update that changes nothing the manager keeps returns none, so the
    /// frequent status updates of nodes cost no recomputation).
    fn apply(&mut self, change: Change<K, V>) -> Vec<K> {
        match change {
            Change::Upsert(k, v) => {
                if self.map.get(&k) == Some(&v) {
                    return vec![];
                }
                self.map.insert(k.clone(), v);
                vec![k]
            }
            Change::Remove(k) => {
                self.map.remove(&k);
                vec![k]
            }
            Change::Init => {
                self.buffer = Some(HashMap::new());
                vec![]
            }
            Change::InitUpsert(k, v) => {
                self.buffer.get_or_insert_with(HashMap::new).insert(k, v);
                vec![]
            }
            Change::InitDone => {
                let new = self.buffer.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.map, new);
                self.synced = true;
                let mut keys: HashSet<K> = old.into_keys().collect();
                keys.extend(self.map.keys().cloned());
                keys.into_iter().collect()
            }
        }
    }
}

/// Maps a watcher event to a change, dropping objects `f` rejects.
fn change<T, K, V>(event: Event<T>, f: impl Fn(&T) -> Option<(K, V)>) -> Option<Change<K, V>> {
    Some(match event {
        Event::Apply(o) => {
            let (k, v) = f(&o)?;
            Change::Upsert(k, v)
        }
        Event::Delete(o) => Change::Remove(f(&o)?.0),
        Event::Init => Change::Init,
        Event::InitApply(o) => {
            let (k, v) = f(&o)?;
            Change::InitUpsert(k, v)
        }
        Event::InitDone => Change::InitDone,
    })
}

#[derive(Default)]
struct Inner {
    pods: Keyed<Uuid, PodState>,
    pvcs: Keyed<Uuid, Claim>,
    /// The last observation of every workspace the cluster has something of.
    current: HashMap<Uuid, WorkspaceObservation>,
    /// Changes not yet reported to the server.
    pending: HashMap<Uuid, WorkspaceObservation>,
    nodes: Keyed<String, NodeSummary>,
    version: Option<String>,
    /// What is wrong with the Kubernetes side, by source.
    errors: BTreeMap<&'static str, String>,
}

impl Inner {
    fn workspaces_synced(&self) -> bool {
        self.pods.synced && self.pvcs.synced
    }
}

/// The Kubernetes side's health: `None` when fine, else the reason.
pub type KubeHealth = Option<String>;

/// The state every watcher feeds and the connection loop reads.
pub struct Tracker {
    inner: Mutex<Inner>,
    identity: ManagerIdentity,
    changed: Notify,
    info: watch::Sender<Option<KubeClusterInfo>>,
    health: watch::Sender<KubeHealth>,
    synced: watch::Sender<bool>,
    probed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").finish_non_exhaustive()
    }
}

impl Tracker {
    /// An empty tracker: not synced, degraded until the first probe succeeds.
    pub fn new(identity: ManagerIdentity) -> Arc<Self> {
        let mut inner = Inner::default();
        inner
            .errors
            .insert("kubernetes API", "not reached yet".to_owned());
        Arc::new(Self {
            inner: Mutex::new(inner),
            identity,
            changed: Notify::new(),
            info: watch::channel(None).0,
            health: watch::channel(Some("kubernetes API: not reached yet".to_owned())).0,
            synced: watch::channel(false).0,
            probed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the API server was probed at least once (the health is known).
    pub fn probed(&self) -> bool {
        self.probed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Woken whenever a workspace's observation changed.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// The latest cluster info (once nodes and version are known).
    pub fn info(&self) -> watch::Receiver<Option<KubeClusterInfo>> {
        self.info.subscribe()
    }

    /// The Kubernetes health.
    pub fn health(&self) -> watch::Receiver<KubeHealth> {
        self.health.subscribe()
    }

    /// Whether the workspace watchers listed everything at least once.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Every workspace's observation, plus deletions not yet reported; clears
    /// the queue of changes (the snapshot carries them).
    pub fn take_snapshot(&self) -> Vec<WorkspaceObservation> {
        let mut inner = self.lock();
        let pending = std::mem::take(&mut inner.pending);
        let mut all: Vec<WorkspaceObservation> = inner.current.values().cloned().collect();
        all.extend(
            pending
                .into_values()
                .filter(|o| !inner.current.contains_key(&o.workspace_id)),
        );
        all.sort_by_key(|o| o.workspace_id);
        all
    }

    /// The queued changes (the latest per workspace), removed from the queue.
    pub fn take_changes(&self) -> Vec<WorkspaceObservation> {
        let mut inner = self.lock();
        std::mem::take(&mut inner.pending).into_values().collect()
    }

    /// Puts changes that could not be reported back, unless newer ones came.
    pub fn requeue(&self, changes: Vec<WorkspaceObservation>) {
        let mut inner = self.lock();
        for c in changes {
            inner.pending.entry(c.workspace_id).or_insert(c);
        }
    }

    /// Every workspace's current observation.
    pub fn list(&self) -> Vec<WorkspaceObservation> {
        let mut all: Vec<_> = self.lock().current.values().cloned().collect();
        all.sort_by_key(|o| o.workspace_id);
        all
    }

    /// One workspace's current observation.
    pub fn get(&self, id: Uuid) -> Option<WorkspaceObservation> {
        self.lock().current.get(&id).cloned()
    }

    /// Number of workspaces the cluster has something of.
    pub fn workspace_count(&self) -> usize {
        self.lock().current.len()
    }

    /// Recomputes one workspace's observation; queues it if it changed.
    fn refresh(inner: &mut Inner, id: Uuid) -> bool {
        let claim = inner.pvcs.map.get(&id).copied().unwrap_or(Claim::Absent);
        let observed = observe(inner.pods.map.get(&id), claim);
        let same = inner.current.get(&id).is_some_and(|o| {
            o.status == observed.0 && o.message == observed.1 && o.pod_name == observed.2
        });
        if same {
            return false;
        }
        let obs = WorkspaceObservation {
            workspace_id: id,
            status: observed.0,
            message: observed.1,
            pod_name: observed.2,
            node_name: None,
            reason: None,
            observed_at: Utc::now(),
        };
        if obs.status == WorkspaceStatus::Deleted {
            if inner.current.remove(&id).is_none() {
                return false;
            }
        } else {
            inner.current.insert(id, obs.clone());
        }
        tracing::debug!(workspace_id = %id, status = %obs.status, message = ?obs.message, "workspace changed");
        inner.pending.insert(id, obs);
        true
    }

    fn workspaces_changed(&self, inner: &mut Inner, ids: Vec<Uuid>) {
        let mut changed = false;
        for id in ids {
            changed |= Self::refresh(inner, id);
        }
        metrics::gauge!("lapdev_manager_workspaces").set(inner.current.len() as f64);
        let synced = inner.workspaces_synced();
        if changed && synced {
            self.changed.notify_one();
        }
        self.synced.send_if_modified(|s| {
            let was = *s;
            *s = synced;
            was != synced
        });
    }

    fn pod_change(&self, change: Change<Uuid, PodState>) {
        let mut inner = self.lock();
        let ids = inner.pods.apply(change);
        self.workspaces_changed(&mut inner, ids);
    }

    fn pvc_change(&self, change: Change<Uuid, Claim>) {
        let mut inner = self.lock();
        let ids = inner.pvcs.apply(change);
        self.workspaces_changed(&mut inner, ids);
    }

    fn node_change(&self, change: Change<String, NodeSummary>) {
        let mut inner = self.lock();
        let keys = inner.nodes.apply(change);
        if !keys.is_empty() {
            self.publish_info(&inner);
        }
    }

    /// Records a watcher or probe failure: the manager is degraded until the
    /// next successful probe.
    pub fn set_error(&self, source: &'static str, reason: String) {
        let mut inner = self.lock();
        inner.errors.insert(source, reason);
        self.publish_health(&inner);
    }

    /// A probe succeeded: the API answered every call the manager needs.
    fn probe_ok(&self, version: String) {
        let mut inner = self.lock();
        self.probed
            .store(true, std::sync::atomic::Ordering::Release);
        inner.errors.clear();
        if inner.version.as_deref() != Some(&version) {
            inner.version = Some(version);
        }
        self.publish_health(&inner);
        self.publish_info(&inner);
    }

    fn publish_health(&self, inner: &Inner) {
        let health = if inner.errors.is_empty() {
            None
        } else {
            Some(
                inner
                    .errors
                    .iter()
                    .map(|(s, r)| format!("{s}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
        metrics::gauge!("lapdev_manager_kube_ok").set(if health.is_none() { 1.0 } else { 0.0 });
        self.health.send_if_modified(|h| {
            if *h != health {
                *h = health;
                true
            } else {
                false
            }
        });
    }

    fn publish_info(&self, inner: &Inner) {
        let (Some(version), true) = (inner.version.as_deref(), inner.nodes.synced) else {
            return;
        };
        let info = cluster_info(version, inner.nodes.map.values(), &self.identity);
        metrics::gauge!("lapdev_manager_nodes").set(f64::from(info.node_count));
        self.info.send_if_modified(|current| {
            if current.as_ref() != Some(&info) {
                *current = Some(info);
                true
            } else {
                false
            }
        });
    }
}

/// How the watchers and the probe run.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// The namespace of workspaces.
    pub namespace: String,
    /// How often the API server is probed.
    pub probe_interval: Duration,
    /// How long one probe call may take.
    pub timeout: Duration,
    /// The longest wait before a failed watch is retried.
    pub retry_cap: Duration,
}

/// An error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cause = c.source();
    }
    s
}

/// Starts the watchers and the probe; they run until `shutdown`.
pub fn spawn(
    client: Client,
    tracker: Arc<Tracker>,
    settings: WatchSettings,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let selector = workspace_selector();
    let backoff = || Backoff::new(Duration::from_millis(200), settings.retry_cap);
    let pods = watcher::watcher(
        Api::<Pod>::namespaced(client.clone(), &settings.namespace),
        watcher::Config::default().labels(&selector),
    )
    .backoff(backoff());
    let pvcs = watcher::watcher(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &settings.namespace),
        watcher::Config::default().labels(&selector),
    )
    .backoff(backoff());
    let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .backoff(backoff());
    vec![
        tokio::spawn(drive(
            pods,
            "watching workspace pods",
            tracker.clone(),
            shutdown.clone(),
            |t, ev| {
                if let Some(c) = change(ev, |p: &Pod| {
                    Some((workspace_id_of(&p.metadata)?, PodState::from_pod(p)))
                }) {
                    t.pod_change(c);
                }
            },
        )),
        tokio::spawn(drive(
            pvcs,
            "watching workspace volumes",
            tracker.clone(),
            shutdown.clone(),
            |t, ev| {
                if let Some(c) = change(ev, |p: &PersistentVolumeClaim| {
                    Some((workspace_id_of(&p.metadata)?, Claim::of(p)))
                }) {
                    t.pvc_change(c);
                }
            },
        )),
        tokio::spawn(drive(
            nodes,
            "watching nodes",
            tracker.clone(),
            shutdown.clone(),
            |t, ev| {
                let c = change(ev, |n: &Node| {
                    let (summary, errors) = summarize_node(n);
                    for e in errors {
                        tracing::warn!(error = %error_chain(&e), "ignoring a malformed node quantity");
                    }
                    Some((n.name_any(), summary))
                });
                if let Some(c) = c {
                    t.node_change(c);
                }
            },
        )),
        tokio::spawn(probe_loop(client, tracker, settings, shutdown)),
    ]
}

async fn drive<K, S>(
    stream: S,
    source: &'static str,
    tracker: Arc<Tracker>,
    shutdown: CancellationToken,
    on_event: impl Fn(&Tracker, Event<K>),
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
    K: Resource,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(event)) => on_event(&tracker, event),
            Some(Err(e)) => {
                let reason = error_chain(&e);
                tracing::warn!(source, error = %reason, "watch failed; retrying");
                tracker.set_error(source, reason);
            }
            None => return,
        }
    }
}

/// Checks that the API server answers every kind of call the manager makes:
/// `/version` and a one-item list of nodes, workspace pods and claims.
async fn probe(client: &Client, settings: &WatchSettings) -> Result<String, String> {
    let limit = ListParams::default().limit(1);
    let selected = ListParams::default().limit(1).labels(&workspace_selector());
    let work = async {
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| format!("reading /version: {}", error_chain(&e)))?;
        Api::<Node>::all(client.clone())
            .list_metadata(&limit)
            .await
            .map_err(|e| format!("listing nodes: {}", error_chain(&e)))?;
        Api::<Pod>::namespaced(client.clone(), &settings.namespace)
            .list_metadata(&selected)
            .await
            .map_err(|e| format!("listing workspace pods: {}", error_chain(&e)))?;
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &settings.namespace)
            .list_metadata(&selected)
            .await
            .map_err(|e| format!("listing workspace volumes: {}", error_chain(&e)))?;
        Ok(version.git_version)
    };
    match tokio::time::timeout(settings.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", settings.timeout)),
    }
}

async fn probe_loop(
    client: Client,
    tracker: Arc<Tracker>,
    settings: WatchSettings,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match probe(&client, &settings).await {
            Ok(version) => tracker.probe_ok(version),
            Err(reason) => {
                tracing::warn!(error = %reason, "the Kubernetes API probe failed");
                // Known before the health changes, for whoever waits on the change.
                tracker
                    .probed
                    .store(true, std::sync::atomic::Ordering::Release);
                tracker.set_error("kubernetes API", reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("ws-1".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn with_waiting(mut p: Pod, reason: &str, message: &str) -> Pod {
        p.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            name: "workspace".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        p
    }

    fn with_condition(mut p: Pod, ty: &str, status: &str, reason: Option<&str>) -> Pod {
        p.status
            .as_mut()
            .unwrap()
            .conditions
            .get_or_insert_with(Vec::new)
            .push(PodCondition {
                type_: ty.into(),
                status: status.into(),
                reason: reason.map(str::to_owned),
                message: reason.map(|_| "0/3 nodes are available".to_owned()),
                ..Default::default()
            });
        p
    }

    fn status(p: &Pod) -> (WorkspaceStatus, Option<String>) {
        let s = PodState::from_pod(p);
        (s.status, s.message)
    }

    #[test]
    fn pod_phases_map_to_workspace_statuses() {
        assert_eq!(status(&pod("Pending")), (WorkspaceStatus::Creating, None));
        assert_eq!(
            status(&with_waiting(
                pod("Pending"),
                "ImagePullBackOff",
                "Back-off pulling image"
            )),
            (
                WorkspaceStatus::Creating,
                Some("ImagePullBackOff: Back-off pulling image".into())
            )
        );
        assert_eq!(
            status(&with_waiting(pod("Pending"), "InvalidImageName", "bad ref")).0,
            WorkspaceStatus::Failed
        );
        assert_eq!(
            status(&with_waiting(pod("Pending"), "ErrImagePull", "not found")).0,
            WorkspaceStatus::Failed
        );
        assert_eq!(
            status(&with_condition(
                pod("Pending"),
                "PodScheduled",
                "False",
                Some("Unschedulable")
            )),
            (
                WorkspaceStatus::Creating,
                Some("Unschedulable: 0/3 nodes are available".into())
            )
        );
        assert_eq!(
            status(&with_condition(pod("Running"), "Ready", "True", None)),
            (WorkspaceStatus::Running, None)
        );
        assert_eq!(status(&pod("Running")).0, WorkspaceStatus::Creating);
        assert_eq!(
            status(&with_waiting(
                pod("Running"),
                "CrashLoopBackOff",
                "back-off 5m"
            ))
            .0,
            WorkspaceStatus::Failed
        );
        let mut failed = pod("Failed");
        failed.status.as_mut().unwrap().reason = Some("Evicted".into());
        failed.status.as_mut().unwrap().message = Some("low on memory".into());
        assert_eq!(
            status(&failed),
            (
                WorkspaceStatus::Failed,
                Some("Evicted: low on memory".into())
            )
        );
        let mut done = pod("Succeeded");
        done.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 0,
                    reason: Some("Completed".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        assert_eq!(
            status(&done),
            (
                WorkspaceStatus::Failed,
                Some("Completed (exit code 0)".into())
            )
        );
        let mut deleting = with_condition(pod("Running"), "Ready", "True", None);
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(status(&deleting).0, WorkspaceStatus::Stopping);
        assert_eq!(status(&pod("Unknown")).0, WorkspaceStatus::Failed);
    }

    #[test]
    fn no_pod_means_stopped_or_deleted() {
        assert_eq!(observe(None, Claim::Present).0, WorkspaceStatus::Stopped);
        assert_eq!(
            observe(None, Claim::Terminating).0,
            WorkspaceStatus::Deleting
        );
        assert_eq!(observe(None, Claim::Absent).0, WorkspaceStatus::Deleted);
        let mut going = pod("Running");
        going.metadata.deletion_timestamp = Some(Time(Default::default()));
        let going = PodState::from_pod(&going);
        assert_eq!(
            observe(Some(&going), Claim::Present).0,
            WorkspaceStatus::Stopping
        );
        assert_eq!(
            observe(Some(&going), Claim::Terminating).0,
            WorkspaceStatus::Deleting
        );
        let p = PodState::from_pod(&pod("Pending"));
        assert_eq!(observe(Some(&p), Claim::Absent).2.as_deref(), Some("ws-1"));
    }

    fn identity() -> ManagerIdentity {
        ManagerIdentity::default()
    }

    #[test]
    fn the_tracker_queues_changes_and_keeps_deletions_for_the_snapshot() {
        let t = Tracker::new(identity());
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let running = PodState::from_pod(&with_condition(pod("Running"), "Ready", "True", None));
        t.pod_change(Change::Init);
        t.pod_change(Change::InitUpsert(a, running.clone()));
        t.pod_change(Change::InitDone);
        t.pvc_change(Change::Init);
        t.pvc_change(Change::InitUpsert(a, Claim::Present));
        t.pvc_change(Change::InitUpsert(b, Claim::Present));
        assert!(!*t.synced().borrow());
        t.pvc_change(Change::InitDone);
        assert!(*t.synced().borrow());
        let snap = t.take_snapshot();
        assert_eq!(snap.len(), 2);
        assert!(t.take_changes().is_empty(), "the snapshot carried them");

        // Stop a: pod goes, claim stays.
        t.pod_change(Change::Remove(a));
        let changes = t.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].status, WorkspaceStatus::Stopped);
        // Delete b entirely while "disconnected": the snapshot still says so.
        t.pvc_change(Change::Remove(b));
        let snap = t.take_snapshot();
        let b_obs = snap.iter().find(|o| o.workspace_id == b).unwrap();
        assert_eq!(b_obs.status, WorkspaceStatus::Deleted);
        assert_eq!(t.list().len(), 1);
        // A relist that lost a's claim reports it deleted.
        t.pvc_change(Change::Init);
        t.pvc_change(Change::InitDone);
        let changes = t.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].workspace_id, a);
        assert_eq!(changes[0].status, WorkspaceStatus::Deleted);
        // Same state again: nothing queued.
        t.pvc_change(Change::Remove(a));
        assert!(t.take_changes().is_empty());
    }

    #[test]
    fn health_and_info() {
        let t = Tracker::new(identity());
        assert!(t.health().borrow().is_some(), "degraded until probed");
        t.node_change(Change::Init);
        t.node_change(Change::InitUpsert(
            "n1".into(),
            NodeSummary {
                cpu_capacity_millis: 4000,
                ..Default::default()
            },
        ));
        t.node_change(Change::InitDone);
        assert!(t.info().borrow().is_none(), "no version yet");
        t.probe_ok("v1.33.0".into());
        assert!(t.health().borrow().is_none());
        assert_eq!(
            t.info().borrow().as_ref().unwrap().cpu_capacity_millis,
            4000
        );
        let mut info = t.info();
        info.borrow_and_update();
        t.node_change(Change::Upsert("n2".into(), NodeSummary::default()));
        assert!(info.has_changed().unwrap());
        assert_eq!(info.borrow_and_update().as_ref().unwrap().node_count, 2);
        // The same node again changes nothing.
        t.node_change(Change::Upsert("n2".into(), NodeSummary::default()));
        assert!(!info.has_changed().unwrap());
        t.set_error("watching nodes", "connection refused".into());
        assert_eq!(
            t.health().borrow().as_deref(),
            Some("watching nodes: connection refused")
        );
    }
}
