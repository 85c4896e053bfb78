//! Watching the cluster: kube-runtime watchers on the workspace pods and claims
//! (selected by label, so unrelated pods cost nothing), on the Events of the
//! workspace namespace (volume attach and mount failures and the autoscaler's
//! decisions exist only as Events), and on the nodes; a periodic probe of the
//! API server; and a tick that re-evaluates time-dependent observations and
//! force-deletes pods stuck on lost nodes. All of it feeds the [`Tracker`].
//!
//! Failures: every watcher backs off on its own, exponentially with jitter up
//! to `retry_cap`, and the back-off is reset only by data (a listed or watched
//! object, a completed relist), never by the `Init` marker a watcher emits
//! before each LIST, so a persistent 401/403/500 costs one request per
//! `retry_cap`, not several a second. While a watcher fails the manager reports
//! `degraded` with the error; a 403 names the permission the installed
//! manifest lacks ("re-apply the manifest: missing events list"). The error
//! clears when the watcher delivers data, or when it has not failed again for
//! twice its cap (a watch that starts again delivers nothing until an object
//! changes; a failing one fails again within the cap). A routine
//! relist (410 Gone: the watch's resource version expired) is neither an error
//! nor a reason to wait.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Event as KubeEvent, Node, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

use lapdev_common::status::CapacityMode;

use crate::backoff::Backoff;
use crate::capacity::trimmed::TrimmedPod;
use crate::cluster_info::summarize_node;
use crate::observe::{ClaimFacts, EventFacts, EventObject, PodFacts};
use crate::tracker::{Change, Tracker};
use crate::workspace::{
    MANAGED_BY, MANAGED_BY_LABEL, WORKSPACE_ID_LABEL, WorkspaceSettings, object_of_name, outdated,
    workspace_id_of,
};

pub use crate::tracker::KubeHealth;

/// The label selector of everything the manager created.
pub fn workspace_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{WORKSPACE_ID_LABEL}")
}

/// How the watchers and the probe run.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// How workspaces are built (to tell outdated pods); its namespace is watched.
    pub workspace: WorkspaceSettings,
    /// How often the API server is probed.
    pub probe_interval: Duration,
    /// How long one probe call may take.
    pub timeout: Duration,
    /// The longest wait before a failed watch is retried.
    pub retry_cap: Duration,
    /// How often time-dependent observations are re-evaluated.
    pub tick: Duration,
    /// With `pods`, every pod of the cluster is watched for its requests.
    pub capacity_mode: CapacityMode,
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

/// A watcher: what it watches, for messages and the health's key.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// The health's key, e.g. `watching workspace events`.
    name: &'static str,
    /// The resource, as RBAC names it.
    resource: &'static str,
}

/// The API status of a watcher error, if the API server answered.
fn api_status(e: &watcher::Error) -> Option<(u16, String)> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some((s.code, s.message.clone())),
        watcher::Error::WatchError(s) => Some((s.code, s.message.clone())),
        _ => None,
    }
}

/// Whether the error is the routine "resource version too old": the watcher
/// relists, and nothing is wrong.
pub fn is_routine_relist(e: &watcher::Error) -> bool {
    api_status(e).is_some_and(|(code, _)| code == 410)
}

/// What a watcher error means for people; a 403 names the missing permission.
fn describe(e: &watcher::Error, source: Source) -> String {
    let verb = match e {
        watcher::Error::InitialListFailed(_) => "list",
        _ => "watch",
    };
    match api_status(e) {
        Some((403, message)) => format!(
            "re-apply the manifest: missing {} {verb} ({message})",
            source.resource
        ),
        _ => error_chain(e),
    }
}

/// Starts the watchers, the probe and the tick; they run until `shutdown`.
pub fn spawn(
    client: Client,
    tracker: Arc<Tracker>,
    settings: WatchSettings,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let selector = workspace_selector();
    let ns = settings.workspace.namespace.clone();
    let pods = watcher::watcher(
        Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&selector),
    );
    let pvcs = watcher::watcher(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&selector),
    );
    let events = watcher::watcher(
        Api::<KubeEvent>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    );
    let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default());
    let cap = settings.retry_cap;
    let build = settings.workspace.clone();
    let mut tasks = Vec::new();
    if settings.capacity_mode == CapacityMode::Pods {
        tasks.push(spawn_other_pods(&client, &tracker, cap, &shutdown));
    }
    tasks.extend([
        tokio::spawn(drive(
            pods,
            Source {
                name: "watching workspace pods",
                resource: "pods",
            },
            cap,
            tracker.clone(),
            shutdown.clone(),
            move |t, ev| {
                if let Some(c) = change(ev, |p: &Pod| {
                    let mut facts = PodFacts::from_pod(p);
                    facts.outdated = outdated(p, &build);
                    Some((workspace_id_of(&p.metadata)?, facts))
                }) {
                    t.pod_change(c);
                }
            },
        )),
        tokio::spawn(drive(
            pvcs,
            Source {
                name: "watching workspace volumes",
                resource: "persistentvolumeclaims",
            },
            cap,
            tracker.clone(),
            shutdown.clone(),
            |t, ev| {
                if let Some(c) = change(ev, |p: &PersistentVolumeClaim| {
                    Some((workspace_id_of(&p.metadata)?, ClaimFacts::from_claim(p)))
                }) {
                    t.pvc_change(c);
                }
            },
        )),
        tokio::spawn(drive(
            events,
            Source {
                name: "watching workspace events",
                resource: "events",
            },
            cap,
            tracker.clone(),
            shutdown.clone(),
            |t, ev| match ev {
                Event::Init => t.events_relisting(),
                Event::InitDone => t.events_relisted(),
                Event::Apply(e) | Event::InitApply(e) => {
                    if let Some((id, object)) = event_subject(&e) {
                        t.event(id, EventFacts::from_event(&e, object));
                    }
                }
                // Events expire; what they said stays true until newer facts.
                Event::Delete(_) => {}
            },
        )),
        tokio::spawn(drive(
            nodes,
            Source {
                name: "watching nodes",
                resource: "nodes",
            },
            cap,
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
        tokio::spawn(tick_loop(
            Api::namespaced(client.clone(), &ns),
            tracker.clone(),
            settings.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(probe_loop(client, tracker, settings, shutdown)),
    ]);
    tasks
}

/// The cluster-wide watch of every pod that is not a workspace's
/// (`capacity: pods`), decoded into [`TrimmedPod`]s: node, phase, requests.
fn spawn_other_pods(
    client: &Client,
    tracker: &Arc<Tracker>,
    retry_cap: Duration,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let pods = watcher::watcher(
        Api::<TrimmedPod>::all(client.clone()),
        watcher::Config::default().labels(&format!("!{WORKSPACE_ID_LABEL}")),
    );
    tokio::spawn(drive(
        pods,
        Source {
            name: "watching all pods (capacity: pods)",
            resource: "pods (cluster-wide)",
        },
        retry_cap,
        tracker.clone(),
        shutdown.clone(),
        |t, ev| {
            let c = change(ev, |p: &TrimmedPod| {
                Some((p.key(), p.bound().map(|(n, r)| (n.to_owned(), r))))
            });
            if let Some(c) = c {
                t.other_pod_change(c);
            }
        },
    ))
}

/// The workspace and object an Event is about, when it is about one.
fn event_subject(e: &KubeEvent) -> Option<(uuid::Uuid, EventObject)> {
    let o = &e.involved_object;
    let (id, object) = object_of_name(o.name.as_deref()?)?;
    let kind_matches = match object {
        EventObject::Pod => o.kind.as_deref() == Some("Pod"),
        EventObject::Claim => o.kind.as_deref() == Some("PersistentVolumeClaim"),
    };
    kind_matches.then_some((id, object))
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

async fn drive<K, S>(
    stream: S,
    source: Source,
    retry_cap: Duration,
    tracker: Arc<Tracker>,
    shutdown: CancellationToken,
    on_event: impl Fn(&Tracker, Event<K>),
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut backoff = Backoff::new(Duration::from_millis(200), retry_cap);
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(event)) => {
                // `Init` comes before the LIST it announces: it proves nothing.
                let data = !matches!(event, Event::Init);
                on_event(&tracker, event);
                if data {
                    backoff.reset();
                    tracker.clear_error(source.name);
                }
            }
            Some(Err(e)) if is_routine_relist(&e) => {
                tracing::debug!(source = source.name, "resource version expired; relisting");
            }
            Some(Err(e)) => {
                let reason = describe(&e, source);
                let delay = backoff.next_delay();
                tracing::warn!(source = source.name, error = %reason, delay_ms = delay.as_millis() as u64, "watch failed; retrying");
                metrics::counter!("lapdev_manager_watch_errors_total", "source" => source.resource)
                    .increment(1);
                tracker.set_error(source.name, reason);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            None => return,
        }
    }
}

/// Re-evaluates time-dependent observations and force-deletes pods whose
/// deletion is stuck on a lost node (see [`crate::observe::force_delete_due`]
/// for when, and why it waits).
async fn tick_loop(
    pods: Api<Pod>,
    tracker: Arc<Tracker>,
    settings: WatchSettings,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tracker.expire_errors(settings.retry_cap * 2 + settings.timeout);
        for stuck in tracker.tick() {
            force_delete(
                &pods,
                &stuck.pod_name,
                stuck.uid.clone(),
                &stuck.why,
                settings.timeout,
            )
            .await;
        }
    }
}

/// Deletes a pod with grace period 0 (only the pod with this uid): the API
/// server removes it without waiting for its kubelet.
pub async fn force_delete(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<String>,
    why: &str,
    timeout: Duration,
) -> bool {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match tokio::time::timeout(timeout, pods.delete(name, &params)).await {
        Ok(Ok(_)) => {
            tracing::warn!(pod = name, why, "force-deleted a pod stuck on a lost node");
            metrics::counter!("lapdev_manager_force_deletes_total").increment(1);
            true
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.code == 409 => true,
        Ok(Err(e)) => {
            tracing::warn!(pod = name, error = %error_chain(&e), "force-deleting a pod failed");
            false
        }
        Err(_) => {
            tracing::warn!(pod = name, "force-deleting a pod timed out");
            false
        }
    }
}

/// Checks that the API server answers every kind of call the manager makes:
/// `/version` and a one-item list of nodes, workspace pods and claims.
async fn probe(client: &Client, settings: &WatchSettings) -> Result<String, String> {
    let limit = ListParams::default().limit(1);
    let selected = ListParams::default().limit(1).labels(&workspace_selector());
    let ns = &settings.workspace.namespace;
    let work = async {
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| format!("reading /version: {}", error_chain(&e)))?;
        Api::<Node>::all(client.clone())
            .list_metadata(&limit)
            .await
            .map_err(|e| format!("listing nodes: {}", error_chain(&e)))?;
        Api::<Pod>::namespaced(client.clone(), ns)
            .list_metadata(&selected)
            .await
            .map_err(|e| format!("listing workspace pods: {}", error_chain(&e)))?;
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
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
                tracker.probe_failed(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16) -> Box<Status> {
        Status::failure(
            "events is forbidden: User \"system:serviceaccount:lapdev:lapdev-kube-manager\" cannot list resource \"events\"",
            "Forbidden",
        )
        .with_code(code)
        .boxed()
    }

    #[test]
    fn a_403_names_the_missing_permission_and_a_410_is_routine() {
        let source = Source {
            name: "watching workspace events",
            resource: "events",
        };
        let list = watcher::Error::InitialListFailed(kube::Error::Api(status(403)));
        let d = describe(&list, source);
        assert!(
            d.starts_with("re-apply the manifest: missing events list"),
            "{d}"
        );
        assert!(!is_routine_relist(&list));
        let gone = watcher::Error::WatchError(status(410));
        assert!(is_routine_relist(&gone));
        let watch = watcher::Error::WatchStartFailed(kube::Error::Api(status(403)));
        assert!(
            describe(&watch, source).starts_with("re-apply the manifest: missing events watch")
        );
    }

    #[test]
    fn events_name_their_workspace() {
        let id = uuid::Uuid::new_v4();
        let mut e = KubeEvent::default();
        e.involved_object.kind = Some("Pod".into());
        e.involved_object.name = Some(format!("ws-{id}"));
        assert_eq!(event_subject(&e), Some((id, EventObject::Pod)));
        e.involved_object.kind = Some("PersistentVolumeClaim".into());
        e.involved_object.name = Some(format!("ws-{id}-home"));
        assert_eq!(event_subject(&e), Some((id, EventObject::Claim)));
        e.involved_object.kind = Some("Pod".into());
        assert_eq!(event_subject(&e), None, "a pod is not named like a claim");
        e.involved_object.name = Some("nginx-1".into());
        assert_eq!(event_subject(&e), None);
    }
}
