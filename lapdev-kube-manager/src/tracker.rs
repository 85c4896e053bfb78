//! The [`Tracker`]: the compact state every watcher feeds and the connection
//! loop and the commands read.
//!
//! It keeps facts, not objects: per workspace the pod's [`PodFacts`], the
//! claim's [`ClaimFacts`] and a few recent [`EventFacts`] (at most
//! [`EVENTS_PER_WORKSPACE`], one per object and reason); per node a
//! [`NodeSummary`]. From them [`crate::observe::observe`] derives each
//! workspace's observation; a change of status, reason or message is queued
//! for the server (a full snapshot is always available). It also publishes the
//! cluster info when it changes and the manager's Kubernetes health.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use lapdev_common::kube::KubeClusterInfo;
use lapdev_common::status::WorkspaceStatus;
use lapdev_kube_rpc::WorkspaceObservation;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::capacity::Coalescing;
use crate::capacity::state::{CapacityState, OtherPod};
use crate::cluster_info::{ManagerIdentity, NodeSummary, cluster_info};
use crate::observe::{
    ClaimFacts, EventFacts, ForceDelete, Input, NodeView, ObserveConfig, Observed, PodFacts,
    force_delete_due, observe,
};

/// Recent Events kept per workspace (the newest per object and reason).
pub const EVENTS_PER_WORKSPACE: usize = 8;

/// A map fed by watcher events, with the relist buffered until it is complete.
pub(crate) struct Keyed<K, V> {
    pub(crate) map: HashMap<K, V>,
    buffer: Option<HashMap<K, V>>,
    pub(crate) synced: bool,
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
pub enum Change<K, V> {
    /// Added or modified.
    Upsert(K, V),
    /// Deleted.
    Remove(K),
    /// A relist starts.
    Init,
    /// An object of the relist.
    InitUpsert(K, V),
    /// The relist is complete.
    InitDone,
}

impl<K: std::hash::Hash + Eq + Clone, V: PartialEq> Keyed<K, V> {
    /// Applies a change; returns the keys whose value may have changed (an
    /// update that changes nothing the manager keeps returns none, so the
    /// frequent status updates of nodes cost no recomputation).
    pub(crate) fn apply(&mut self, change: Change<K, V>) -> Vec<K> {
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

/// One workspace's recent Events, bounded.
#[derive(Debug, Default)]
struct RecentEvents {
    events: Vec<EventFacts>,
    /// Whether the events watcher has listed once (relists are merged, not
    /// buffered: Events are hints, and a stale one is dropped by its age).
    stale: bool,
}

impl RecentEvents {
    fn push(&mut self, e: EventFacts) -> bool {
        if let Some(i) = self
            .events
            .iter()
            .position(|x| x.object == e.object && x.reason == e.reason && x.uid == e.uid)
        {
            if self.events[i] == e {
                self.stale = false;
                return false;
            }
            self.events.remove(i);
        }
        self.events.push(e);
        while self.events.len() > EVENTS_PER_WORKSPACE {
            self.events.remove(0);
        }
        self.stale = false;
        true
    }
}

#[derive(Default)]
struct Inner {
    pods: Keyed<Uuid, PodFacts>,
    pvcs: Keyed<Uuid, ClaimFacts>,
    events: HashMap<Uuid, RecentEvents>,
    /// The last observation of every workspace the cluster has something of.
    current: HashMap<Uuid, WorkspaceObservation>,
    /// Changes not yet reported to the server.
    pending: HashMap<Uuid, WorkspaceObservation>,
    nodes: Keyed<String, NodeSummary>,
    version: Option<String>,
    /// What is wrong with the Kubernetes side, by source.
    errors: BTreeMap<&'static str, SourceError>,
    /// Other pods' requests and the per-node list's coalescing.
    capacity: CapacityState,
}

impl Inner {
    fn workspaces_synced(&self) -> bool {
        self.pods.synced && self.pvcs.synced
    }

    fn node_view(&self, pod: &PodFacts) -> NodeView<'_> {
        match &pod.node_name {
            None => NodeView::Unknown,
            Some(_) if !self.nodes.synced => NodeView::Unknown,
            Some(n) => match self.nodes.map.get(n) {
                Some(s) => NodeView::Known(&s.health),
                None => NodeView::Gone,
            },
        }
    }

    fn observe(
        &self,
        id: Uuid,
        pod: Option<&PodFacts>,
        claim: Option<&ClaimFacts>,
        config: &ObserveConfig,
        now: DateTime<Utc>,
    ) -> WorkspaceObservation {
        let previous = self.current.get(&id).map(|o| Observed {
            status: o.status,
            reason: o.reason.clone(),
            message: o.message.clone(),
        });
        let events = self.events.get(&id).map_or(&[][..], |e| &e.events[..]);
        let o = observe(&Input {
            pod,
            claim,
            events,
            node: pod.map_or(NodeView::Unknown, |p| self.node_view(p)),
            now,
            config,
            previous: previous.as_ref(),
        });
        WorkspaceObservation {
            workspace_id: id,
            status: o.status,
            reason: o.reason,
            message: o.message,
            pod_name: pod.map(|p| p.name.clone()),
            node_name: pod.and_then(|p| p.node_name.clone()),
            observed_at: now,
        }
    }
}

/// A source's last error and when it was last seen.
struct SourceError {
    reason: String,
    seen: std::time::Instant,
}

/// The Kubernetes side's health: `None` when fine, else the reason.
pub type KubeHealth = Option<String>;

/// A pod the manager should force-delete: its deletion is stuck on a lost node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckPod {
    /// The workspace.
    pub workspace_id: Uuid,
    /// The pod's name.
    pub pod_name: String,
    /// Its uid (the force-delete is conditional on it).
    pub uid: Option<String>,
    /// Why now.
    pub why: String,
}

/// The state every watcher feeds and the connection loop reads.
pub struct Tracker {
    inner: Mutex<Inner>,
    identity: ManagerIdentity,
    config: ObserveConfig,
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

/// Only a change of these is reported: not `observed_at`, and not the node
/// alone (binding is no news; the node travels with the next change and in
/// every snapshot). The pod's name only changes with the status.
fn same(a: &WorkspaceObservation, b: &WorkspaceObservation) -> bool {
    a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.pod_name == b.pod_name
}

impl Tracker {
    /// An empty tracker: not synced, degraded until the first probe succeeds.
    pub fn new(identity: ManagerIdentity, config: ObserveConfig) -> Arc<Self> {
        let mut inner = Inner::default();
        inner.errors.insert(
            PROBE_SOURCE,
            SourceError {
                reason: "not reached yet".to_owned(),
                seen: std::time::Instant::now(),
            },
        );
        Arc::new(Self {
            inner: Mutex::new(inner),
            identity,
            config,
            changed: Notify::new(),
            info: watch::channel(None).0,
            health: watch::channel(Some("kubernetes API: not reached yet".to_owned())).0,
            synced: watch::channel(false).0,
            probed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The deadlines in use.
    pub fn config(&self) -> &ObserveConfig {
        &self.config
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

    /// What objects read just now (by a command) mean, with the Events and
    /// nodes the watchers know. Does not change what is reported.
    pub fn observe_objects(
        &self,
        id: Uuid,
        pod: Option<PodFacts>,
        claim: Option<&PersistentVolumeClaim>,
    ) -> WorkspaceObservation {
        let claim = claim.map(ClaimFacts::from_claim);
        self.lock()
            .observe(id, pod.as_ref(), claim.as_ref(), &self.config, Utc::now())
    }

    /// Like [`Tracker::observe_objects`] for a pod object.
    pub fn observe_pod(
        &self,
        id: Uuid,
        pod: Option<&Pod>,
        claim: Option<&PersistentVolumeClaim>,
    ) -> WorkspaceObservation {
        self.observe_objects(id, pod.map(PodFacts::from_pod), claim)
    }

    /// Whether a pod's deletion is stuck on a lost node and may be forced.
    pub fn force_delete_due(&self, pod: &PodFacts) -> ForceDelete {
        let inner = self.lock();
        force_delete_due(inner.node_view(pod), Utc::now(), &self.config)
    }

    /// Recomputes one workspace's observation; queues it if it changed.
    fn refresh(&self, inner: &mut Inner, id: Uuid, now: DateTime<Utc>) -> bool {
        let pod = inner.pods.map.get(&id);
        let claim = inner.pvcs.map.get(&id);
        let obs = inner.observe(id, pod, claim, &self.config, now);
        if let Some(o) = inner.current.get_mut(&id)
            && same(o, &obs)
        {
            o.node_name = obs.node_name;
            return false;
        }
        if obs.status == WorkspaceStatus::Deleted {
            if inner.current.remove(&id).is_none() {
                return false;
            }
        } else {
            inner.current.insert(id, obs.clone());
        }
        tracing::debug!(workspace_id = %id, status = %obs.status, reason = ?obs.reason, message = ?obs.message, "workspace changed");
        inner.pending.insert(id, obs);
        true
    }

    fn workspaces_changed(&self, inner: &mut Inner, ids: impl IntoIterator<Item = Uuid>) {
        let now = Utc::now();
        let mut changed = false;
        for id in ids {
            changed |= self.refresh(inner, id, now);
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

    /// A change of a workspace pod.
    pub fn pod_change(&self, change: Change<Uuid, PodFacts>) {
        let mut inner = self.lock();
        let ids = inner.pods.apply(change);
        if !ids.is_empty() {
            inner.capacity.touch();
            self.publish_capacity_if_due(&mut inner);
        }
        self.workspaces_changed(&mut inner, ids);
    }

    /// A change of a pod that is not a workspace's (the cluster-wide watch of
    /// `capacity: pods`).
    pub fn other_pod_change(&self, change: Change<String, OtherPod>) {
        let mut inner = self.lock();
        if inner.capacity.other_change(change) {
            metrics::gauge!("lapdev_manager_other_pods").set(inner.capacity.other_pods() as f64);
            self.publish_capacity_if_due(&mut inner);
        }
    }

    /// Sets how per-node capacity reports are coalesced.
    pub fn set_coalescing(&self, coalescing: Coalescing) {
        self.lock().capacity.coalescing = coalescing;
    }

    fn publish_capacity_if_due(&self, inner: &mut Inner) {
        if inner.capacity.due() {
            self.publish_info(inner);
        }
    }

    /// A change of a workspace claim.
    pub fn pvc_change(&self, change: Change<Uuid, ClaimFacts>) {
        let mut inner = self.lock();
        let ids = inner.pvcs.apply(change);
        self.workspaces_changed(&mut inner, ids);
    }

    /// An Event about a workspace's pod or claim (added or updated).
    pub fn event(&self, id: Uuid, event: EventFacts) {
        let mut inner = self.lock();
        // Kept even before the pod is seen (the watchers race); the tick drops
        // what belongs to no workspace.
        let known = inner.pods.map.contains_key(&id) || inner.pvcs.map.contains_key(&id);
        if inner.events.entry(id).or_default().push(event) && known {
            self.workspaces_changed(&mut inner, [id]);
        }
    }

    /// The events watcher relists: what it does not list again is dropped at
    /// [`Tracker::events_relisted`].
    pub fn events_relisting(&self) {
        let mut inner = self.lock();
        for e in inner.events.values_mut() {
            e.stale = true;
        }
    }

    /// The relist is complete: workspaces none of whose Events came back lose them.
    pub fn events_relisted(&self) {
        let mut inner = self.lock();
        let stale: Vec<Uuid> = inner
            .events
            .iter()
            .filter(|(_, e)| e.stale)
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            inner.events.remove(id);
        }
        self.workspaces_changed(&mut inner, stale);
    }

    /// A change of a node.
    pub fn node_change(&self, change: Change<String, NodeSummary>) {
        let mut inner = self.lock();
        let was_synced = inner.nodes.synced;
        let keys = inner.nodes.apply(change);
        if keys.is_empty() {
            return;
        }
        self.publish_info(&mut inner);
        // Workspaces on these nodes may be lost or found again.
        let keys: HashSet<&String> = keys.iter().collect();
        let ids: Vec<Uuid> = inner
            .pods
            .map
            .iter()
            .filter(|(_, p)| !was_synced || p.node_name.as_ref().is_some_and(|n| keys.contains(n)))
            .map(|(id, _)| *id)
            .collect();
        self.workspaces_changed(&mut inner, ids);
    }

    /// Re-evaluates the workspaces whose observation depends on time (starts
    /// under a deadline, deletions stuck on lost nodes) and returns the pods
    /// that are due to be force-deleted.
    pub fn tick(&self) -> Vec<StuckPod> {
        let mut inner = self.lock();
        self.publish_capacity_if_due(&mut inner);
        let now = Utc::now();
        let ids: Vec<Uuid> = inner
            .pods
            .map
            .iter()
            .filter(|(_, p)| !(p.phase == "Running" && p.ready && p.deleting_since.is_none()))
            .map(|(id, _)| *id)
            .collect();
        let orphans: Vec<Uuid> = inner
            .events
            .iter()
            .filter(|(id, e)| {
                !inner.pods.map.contains_key(id)
                    && !inner.pvcs.map.contains_key(id)
                    && e.events
                        .iter()
                        .filter_map(|e| e.last_seen)
                        .max()
                        .is_none_or(|t| now - t > chrono::Duration::minutes(1))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            inner.events.remove(&id);
        }
        let stuck = ids
            .iter()
            .filter_map(|id| {
                let pod = inner.pods.map.get(id)?;
                pod.deleting_since?;
                match force_delete_due(inner.node_view(pod), now, &self.config) {
                    ForceDelete::Now(why) => Some(StuckPod {
                        workspace_id: *id,
                        pod_name: pod.name.clone(),
                        uid: pod.uid.clone(),
                        why,
                    }),
                    _ => None,
                }
            })
            .collect();
        self.workspaces_changed(&mut inner, ids);
        stuck
    }

    /// Records a watcher or probe failure: the manager is degraded until that
    /// source recovers.
    pub fn set_error(&self, source: &'static str, reason: String) {
        let mut inner = self.lock();
        let seen = std::time::Instant::now();
        if let Some(e) = inner.errors.get_mut(source)
            && e.reason == reason
        {
            e.seen = seen;
            return;
        }
        inner.errors.insert(source, SourceError { reason, seen });
        self.publish_health(&inner);
    }

    /// A source works again.
    pub fn clear_error(&self, source: &'static str) {
        let mut inner = self.lock();
        if inner.errors.remove(source).is_some() {
            self.publish_health(&inner);
        }
    }

    /// Forgets watcher errors not seen again for `quiet`. A watcher that gets
    /// past its failing call (a watch that starts again) says nothing until an
    /// object changes, while a failing one fails again within its back-off cap;
    /// so silence longer than the cap (plus a call's timeout) means it works.
    pub fn expire_errors(&self, quiet: std::time::Duration) {
        let mut inner = self.lock();
        let before = inner.errors.len();
        inner
            .errors
            .retain(|source, e| *source == PROBE_SOURCE || e.seen.elapsed() < quiet);
        if inner.errors.len() != before {
            self.publish_health(&inner);
        }
    }

    /// The probe failed: the health is known now (for whoever waits on it).
    pub fn probe_failed(&self, reason: String) {
        self.probed
            .store(true, std::sync::atomic::Ordering::Release);
        self.set_error(PROBE_SOURCE, reason);
    }

    /// A probe succeeded: the API answered every call the manager needs.
    pub fn probe_ok(&self, version: String) {
        let mut inner = self.lock();
        self.probed
            .store(true, std::sync::atomic::Ordering::Release);
        inner.errors.remove(PROBE_SOURCE);
        if inner.version.as_deref() != Some(&version) {
            inner.version = Some(version);
        }
        self.publish_health(&inner);
        self.publish_info(&mut inner);
    }

    fn publish_health(&self, inner: &Inner) {
        let health = if inner.errors.is_empty() {
            None
        } else {
            Some(
                inner
                    .errors
                    .iter()
                    .map(|(s, e)| format!("{s}: {}", e.reason))
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

    fn publish_info(&self, inner: &mut Inner) {
        let (Some(version), true) = (inner.version.as_deref(), inner.nodes.synced) else {
            return;
        };
        let mut info = cluster_info(version, inner.nodes.map.values(), &self.identity);
        inner
            .capacity
            .fill(&mut info, &inner.nodes.map, &inner.pods.map);
        inner.capacity.published();
        metrics::gauge!("lapdev_manager_nodes").set(f64::from(info.node_count));
        let coalescing = inner.capacity.coalescing;
        // Small moves of the nodes' free room are not news (coalescing); they
        // add up against the last published list until they are.
        self.info.send_if_modified(|current| {
            if current
                .as_ref()
                .is_none_or(|c| coalescing.significant(c, &info))
            {
                *current = Some(info);
                true
            } else {
                false
            }
        });
    }
}

/// The probe's key in the health.
pub const PROBE_SOURCE: &str = "kubernetes API";

#[cfg(test)]
mod tests;
