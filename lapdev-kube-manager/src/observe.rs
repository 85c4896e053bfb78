//! What a workspace's objects mean: one pure function, [`observe`], from the
//! facts the manager keeps of the pod, its home volume claim, the workspace's
//! recent Events, the pod's node, the time and the [`ObserveConfig`] to a
//! status, an optional machine-readable [`WorkspaceReason`] and a message for
//! people.
//!
//! The nine workspace statuses stay fixed; what the cluster did is told by the
//! reason. The first row that matches wins:
//!
//! | # | the cluster shows | status | reason | message |
//! |---|---|---|---|---|
//! | 1 | no pod; claim absent / being deleted / present | `deleted` / `deleting` / `stopped` | — | — |
//! | 2 | pod has `deletionTimestamp`, its node is gone or not `Ready` | `stopping` (`deleting` when the claim is being deleted too) | `NodeLost` | the node, since when, and when the pod is force-deleted |
//! | 3 | pod has `deletionTimestamp` | `stopping` / `deleting` | — | — |
//! | 4 | phase `Failed`, `status.reason` `Evicted` | `failed` | `Evicted` | the kubelet's message |
//! | 5 | phase `Failed`/`Succeeded`, container terminated `OOMKilled` | `failed` | `OOMKilled` | exit code |
//! | 6 | phase `Failed`/`Succeeded` otherwise | `failed` | `PodEnded` | the pod's or container's reason, exit code |
//! | 7 | pod bound to a node that is gone or not `Ready` | `failed` | `NodeLost` | the node and since when |
//! | 8 | container waiting `InvalidImageName` (or `ErrImageNeverPull`, `ImageInspectError`) | `failed` | `InvalidImage` | the kubelet's message |
//! | 9 | container waiting `CrashLoopBackOff`; `lastState` `OOMKilled` | `failed` | `OOMKilled` | last exit code |
//! | 10 | container waiting `CrashLoopBackOff` | `failed` | `CrashLooping` | last exit reason and code |
//! | 11 | phase `Running`, condition `Ready=True` | `running` | — | "outdated: restart to apply …" when the pod was built from another spec |
//! | 12 | the container never started and nothing progressed (created, scheduled, image pulled) for `start_deadline` | `failed` | `StartDeadlineExceeded` | what it was waiting for (rows 13–17) |
//! | 13 | claim `Pending` and the pod is scheduled, or the scheduler says the claim is unbound | `creating` | `WaitingForVolume` | the provisioner's warning, if any |
//! | 14 | `PodScheduled=False` `Unschedulable`, the autoscaler's latest Event `TriggeredScaleUp` | `creating` | `WaitingForScaleUp` | the autoscaler's message |
//! | 14b | `PodScheduled=False` `Unschedulable`, the autoscaler's latest Event `NotTriggerScaleUp` (it declined to add a node) | `failed` | `ScaleUpDeclined` | the autoscaler's reasons |
//! | 15 | `PodScheduled=False` `Unschedulable` | `creating` | `Unschedulable` | the scheduler's message |
//! | 16 | `FailedAttachVolume`/`FailedMount` Events on the pod | `creating` | `VolumeAttachFailing` | the attach failure, else the mount failure |
//! | 17 | container waiting `ErrImagePull` or `ImagePullBackOff` | `creating` | `ImagePullFailing` | the pull error |
//! | 18 | container waiting for another reason (not `ContainerCreating`) | `creating` | — | reason and message |
//! | 19 | anything else (pending, running but not ready) | `creating` | — | — |
//!
//! A claim `Pending` while its pod is not yet scheduled is normal
//! (`WaitForFirstConsumer` binds the volume only once the pod has a node), so it
//! has no row of its own.
//!
//! Messages are normalised ([`normalize`]): durations are removed (the kubelet's
//! `back-off 10s`, `back-off 5m0s` are one message), the scheduler's
//! `preemption: …` tail is dropped, and `ErrImagePull` and `ImagePullBackOff`
//! give one message (the pull error is kept from the `ErrImagePull` seen before,
//! from the kubelet's `Failed` Event, or else left out). So the kubelet's
//! retries are not a new observation, a new report or a database write.
//!
//! Time only matters for rows 2 and 12, and it enters as absolute instants
//! ("force-deleted at …"), so the same facts give the same message at any later
//! time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolumeClaim, Pod};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::WorkspaceStatus;

/// The taint that says a node is out of service (its pods may be force-deleted).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
/// The annotation the scheduler puts on a claim whose pod it placed
/// (`WaitForFirstConsumer`).
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";

/// How long things may take before they count as failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserveConfig {
    /// A start that makes no progress (scheduled, image pulled, container
    /// started) for this long is `failed` with `StartDeadlineExceeded`.
    pub start_deadline: Duration,
    /// A pod whose deletion is stuck on a node that has not been `Ready` for
    /// this long is force-deleted.
    pub node_lost_after: Duration,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            start_deadline: Duration::from_secs(600),
            node_lost_after: Duration::from_secs(300),
        }
    }
}

/// A container's end (current or last state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// `Error`, `OOMKilled`, `Completed`, …
    pub reason: Option<String>,
    /// The exit code.
    pub exit_code: i32,
    /// The message, if any.
    pub message: Option<String>,
}

/// What the manager keeps of the workspace container's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    /// `state.waiting`: reason and message.
    pub waiting: Option<(String, String)>,
    /// The container started at least once (running, terminated, or restarted).
    pub started: bool,
    /// `state.terminated`.
    pub terminated: Option<Termination>,
    /// `lastState.terminated`.
    pub last_terminated: Option<Termination>,
}

/// The scheduler's verdict (`PodScheduled` condition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scheduled {
    /// No verdict yet.
    #[default]
    Unknown,
    /// Bound to a node, at that time if known.
    Yes(Option<DateTime<Utc>>),
    /// Not schedulable: the scheduler's reason and message.
    No(String, String),
}

/// What the manager keeps of a workspace pod: a few strings, not the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's name.
    pub name: String,
    /// Its uid (Events name it).
    pub uid: Option<String>,
    /// `creationTimestamp`.
    pub created_at: Option<DateTime<Utc>>,
    /// `deletionTimestamp`.
    pub deleting_since: Option<DateTime<Utc>>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `status.phase` (`Pending` when absent).
    pub phase: String,
    /// `status.reason` and `status.message`.
    pub reason: Option<String>,
    /// See `reason`.
    pub message: Option<String>,
    /// `PodScheduled`.
    pub scheduled: Scheduled,
    /// `Ready=True`.
    pub ready: bool,
    /// The image asked for.
    pub image: String,
    /// The workspace container.
    pub container: ContainerFacts,
    /// Set when the pod was built from another spec or another configuration
    /// than the current one would build: what a restart would apply.
    pub outdated: Option<String>,
    /// CPU and memory requested (the scheduler's rule).
    pub requests: crate::capacity::Requests,
}

/// A Kubernetes timestamp as chrono's (jiff's range fits in chrono's, so the
/// fallback is never taken).
fn ts(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(
        t.as_second(),
        u32::try_from(t.subsec_nanosecond()).unwrap_or(0),
    )
    .unwrap_or_default()
}

fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty()).cloned()
}

impl PodFacts {
    /// The facts of a pod (the first container is the workspace's).
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let condition = |ty: &str| {
            status
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default()
                .iter()
                .find(|c| c.type_ == ty)
        };
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let scheduled = match condition("PodScheduled") {
            Some(c) if c.status == "True" => {
                Scheduled::Yes(c.last_transition_time.as_ref().map(|t| ts(t.0)))
            }
            Some(c) if c.status == "False" => Scheduled::No(
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ),
            _ if node_name.is_some() => Scheduled::Yes(None),
            _ => Scheduled::Unknown,
        };
        let container = status
            .and_then(|s| s.container_statuses.as_deref())
            .and_then(|cs| cs.first())
            .map(|c| {
                let state = c.state.as_ref();
                let term = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| Termination {
                    reason: non_empty(t.reason.as_ref()),
                    exit_code: t.exit_code,
                    message: non_empty(t.message.as_ref()),
                };
                ContainerFacts {
                    waiting: state.and_then(|s| s.waiting.as_ref()).and_then(|w| {
                        Some((
                            non_empty(w.reason.as_ref())?,
                            w.message.clone().unwrap_or_default(),
                        ))
                    }),
                    started: c.restart_count > 0
                        || c.started == Some(true)
                        || state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                        || c.last_state
                            .as_ref()
                            .is_some_and(|s| s.terminated.is_some()),
                    terminated: state.and_then(|s| s.terminated.as_ref()).map(term),
                    last_terminated: c
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .map(term),
                }
            })
            .unwrap_or_default();
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
            created_at: pod.metadata.creation_timestamp.as_ref().map(|t| ts(t.0)),
            deleting_since: pod.metadata.deletion_timestamp.as_ref().map(|t| ts(t.0)),
            node_name,
            phase: status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".to_owned()),
            reason: status.and_then(|s| non_empty(s.reason.as_ref())),
            message: status.and_then(|s| non_empty(s.message.as_ref())),
            scheduled,
            ready: condition("Ready").is_some_and(|c| c.status == "True"),
            image: pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            container,
            outdated: None,
            requests: pod
                .spec
                .as_ref()
                .map(crate::capacity::pod_requests)
                .unwrap_or_default(),
        }
    }
}

/// What the manager keeps of the home volume claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimFacts {
    /// Being deleted (a finalizer holds it).
    pub terminating: bool,
    /// `status.phase` (`Pending`, `Bound`, `Lost`).
    pub phase: Option<String>,
}

impl ClaimFacts {
    /// The facts of a claim that exists.
    pub fn from_claim(pvc: &PersistentVolumeClaim) -> Self {
        Self {
            terminating: pvc.metadata.deletion_timestamp.is_some(),
            phase: pvc.status.as_ref().and_then(|s| s.phase.clone()),
        }
    }
}

/// Which of the workspace's objects an Event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventObject {
    /// The pod.
    Pod,
    /// The home volume claim.
    Claim,
}

/// What the manager keeps of an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFacts {
    /// What it is about.
    pub object: EventObject,
    /// `involvedObject.uid`.
    pub uid: Option<String>,
    /// `reason` (`FailedMount`, `TriggeredScaleUp`, …).
    pub reason: String,
    /// `message`.
    pub message: String,
    /// `type: Warning`.
    pub warning: bool,
    /// When it last happened.
    pub last_seen: Option<DateTime<Utc>>,
}

impl EventFacts {
    /// The facts of an Event about `object`.
    pub fn from_event(ev: &Event, object: EventObject) -> Self {
        let last_seen = ev
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| ts(t.0)))
            .or_else(|| ev.last_timestamp.as_ref().map(|t| ts(t.0)))
            .or_else(|| ev.event_time.as_ref().map(|t| ts(t.0)))
            .or_else(|| ev.first_timestamp.as_ref().map(|t| ts(t.0)))
            .or_else(|| ev.metadata.creation_timestamp.as_ref().map(|t| ts(t.0)));
        Self {
            object,
            uid: ev.involved_object.uid.clone(),
            reason: ev.reason.clone().unwrap_or_default(),
            message: ev.message.clone().unwrap_or_default(),
            warning: ev.type_.as_deref() == Some("Warning"),
            last_seen,
        }
    }
}

/// What the manager keeps of a node's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// `None` when `Ready=True` (or no condition yet); else since when it is
    /// not (`lastTransitionTime`, when the node says).
    pub not_ready: Option<Option<DateTime<Utc>>>,
    /// Carries the `node.kubernetes.io/out-of-service` taint.
    pub out_of_service: bool,
}

impl NodeHealth {
    /// The health of a node.
    pub fn from_node(node: &Node) -> Self {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .find(|c| c.type_ == "Ready");
        Self {
            not_ready: ready
                .filter(|c| c.status != "True")
                .map(|c| c.last_transition_time.as_ref().map(|t| ts(t.0))),
            out_of_service: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_deref())
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == OUT_OF_SERVICE_TAINT),
        }
    }
}

/// What is known of the pod's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeView<'a> {
    /// The pod is not bound, or the nodes were not listed yet.
    Unknown,
    /// The Node object does not exist.
    Gone,
    /// The node's health.
    Known(&'a NodeHealth),
}

/// Everything [`observe`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The pod, if any.
    pub pod: Option<&'a PodFacts>,
    /// The claim, if any.
    pub claim: Option<&'a ClaimFacts>,
    /// The workspace's recent Events (any order).
    pub events: &'a [EventFacts],
    /// The pod's node.
    pub node: NodeView<'a>,
    /// Now.
    pub now: DateTime<Utc>,
    /// Deadlines.
    pub config: &'a ObserveConfig,
    /// The previous observation, so a message that the kubelet's retries would
    /// otherwise flip (image pulls) stays the same.
    pub previous: Option<&'a Observed>,
}

/// A workspace's observed status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The status.
    pub status: WorkspaceStatus,
    /// Why, machine-readable.
    pub reason: Option<WorkspaceReason>,
    /// What happened, for people.
    pub message: Option<String>,
}

impl Observed {
    fn new(status: WorkspaceStatus) -> Self {
        Self {
            status,
            reason: None,
            message: None,
        }
    }

    fn with(status: WorkspaceStatus, reason: WorkspaceReason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: Some(reason),
            message: Some(message.into()),
        }
    }
}

/// When a pod whose deletion is stuck on its node may be force-deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceDelete {
    /// The node is fine (or unknown): wait for its kubelet.
    No,
    /// Now, and why (the node is gone, out of service, or lost long enough).
    Now(String),
    /// Not before this time (the node may come back and may still be writing to
    /// the volume).
    At(DateTime<Utc>),
}

/// Whether a pod on `node` may be force-deleted: when the Node object is gone,
/// carries the out-of-service taint, or has not been `Ready` for
/// `config.node_lost_after`. Waiting matters: a node that is only partitioned
/// from the API server still runs the container, which may still be writing to
/// the volume; a second pod must not mount it before that node is known dead.
pub fn force_delete_due(
    node: NodeView<'_>,
    now: DateTime<Utc>,
    config: &ObserveConfig,
) -> ForceDelete {
    match node {
        NodeView::Unknown => ForceDelete::No,
        NodeView::Gone => ForceDelete::Now("the node is gone".to_owned()),
        NodeView::Known(h) if h.out_of_service => {
            ForceDelete::Now(format!("the node is tainted {OUT_OF_SERVICE_TAINT}"))
        }
        NodeView::Known(h) => match h.not_ready {
            None => ForceDelete::No,
            // Since unknown: only the taint or the node's removal can say it is dead.
            Some(None) => ForceDelete::No,
            Some(Some(since)) => {
                let at = since
                    + chrono::Duration::from_std(config.node_lost_after)
                        .unwrap_or(chrono::Duration::MAX);
                if now >= at {
                    ForceDelete::Now(format!(
                        "the node has not been Ready for {}",
                        human(config.node_lost_after)
                    ))
                } else {
                    ForceDelete::At(at)
                }
            }
        },
    }
}

/// A duration as people read it (`5m`, `90s`, `1h`).
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn is_go_duration(token: &str) -> bool {
    // `10s`, `5m0s`, `1h2m3.5s`, `300ms`: digits (with a dot) then a unit, repeated.
    let mut rest = token;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
        any = true;
    }
    any
}

/// Normalises a Kubernetes message so retries do not change it: drops Go
/// durations (`back-off 5m0s restarting` → `back-off restarting`), the
/// scheduler's `preemption: …` tail, and surrounding whitespace and dots.
pub fn normalize(message: &str) -> String {
    let message = match message.find(" preemption: ") {
        Some(i) => &message[..i],
        None => message,
    };
    let words: Vec<&str> = message
        .split_whitespace()
        .filter(|w| !is_go_duration(w.trim_end_matches([',', '.', ';', ':', ')'])))
        .collect();
    words.join(" ").trim_end_matches('.').trim().to_owned()
}

fn with_detail(head: String, detail: &str) -> String {
    let detail = normalize(detail);
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {detail}")
    }
}

fn termination_text(t: &Termination) -> String {
    let mut s = t.reason.clone().unwrap_or_else(|| "exited".to_owned());
    if let Some(m) = &t.message {
        s.push_str(": ");
        s.push_str(&normalize(m));
    }
    format!("{s} (exit code {})", t.exit_code)
}

fn lost_node_text(name: &str, node: NodeView<'_>) -> String {
    match node {
        NodeView::Gone => format!("node {name} is gone"),
        NodeView::Known(NodeHealth {
            not_ready: Some(Some(since)),
            ..
        }) => format!(
            "node {name} is not Ready since {}",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        _ => format!("node {name} is not Ready"),
    }
}

fn node_lost(node: NodeView<'_>) -> bool {
    match node {
        NodeView::Gone => true,
        NodeView::Known(h) => h.not_ready.is_some() || h.out_of_service,
        NodeView::Unknown => false,
    }
}

/// Maps a workspace's objects to its status, reason and message. See the
/// module docs for the table.
pub fn observe(input: &Input<'_>) -> Observed {
    use WorkspaceStatus as S;
    let claim_terminating = input.claim.is_some_and(|c| c.terminating);
    let Some(pod) = input.pod else {
        // Row 1.
        return Observed::new(match input.claim {
            None => S::Deleted,
            Some(c) if c.terminating => S::Deleting,
            Some(_) => S::Stopped,
        });
    };
    if pod.deleting_since.is_some() {
        let status = if claim_terminating {
            S::Deleting
        } else {
            S::Stopping
        };
        // Row 2.
        if let Some(node) = &pod.node_name
            && node_lost(input.node)
        {
            let mut message = format!(
                "{}; the pod cannot finish stopping",
                lost_node_text(node, input.node)
            );
            match force_delete_due(input.node, input.now, input.config) {
                ForceDelete::Now(why) => {
                    message.push_str(&format!("; force-deleting it ({why})"));
                }
                ForceDelete::At(at) => message.push_str(&format!(
                    "; it is force-deleted at {} unless the node returns",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
                ForceDelete::No => message.push_str(
                    "; it is force-deleted once the node is removed or tainted out-of-service",
                ),
            }
            return Observed::with(status, WorkspaceReason::NodeLost, message);
        }
        // Row 3.
        return Observed::new(status);
    }
    if pod.phase == "Failed" || pod.phase == "Succeeded" {
        // Row 4.
        if pod.reason.as_deref() == Some("Evicted") {
            let why = pod.message.as_deref().unwrap_or("");
            return Observed::with(
                S::Failed,
                WorkspaceReason::Evicted,
                with_detail("the pod was evicted".to_owned(), why),
            );
        }
        let term = pod.container.terminated.as_ref();
        // Row 5.
        if let Some(t) = term.filter(|t| t.reason.as_deref() == Some("OOMKilled")) {
            return Observed::with(
                S::Failed,
                WorkspaceReason::OOMKilled,
                format!(
                    "the container was killed for exceeding its memory limit (exit code {})",
                    t.exit_code
                ),
            );
        }
        // Row 6.
        let why = match (&pod.reason, term) {
            (Some(r), _) => with_detail(r.clone(), pod.message.as_deref().unwrap_or("")),
            (None, Some(t)) => termination_text(t),
            (None, None) => pod.message.as_deref().map(normalize).unwrap_or_default(),
        };
        let head = format!("the pod ended ({})", pod.phase.to_ascii_lowercase());
        return Observed::with(
            S::Failed,
            WorkspaceReason::PodEnded,
            if why.is_empty() {
                head
            } else {
                format!("{head}: {why}")
            },
        );
    }
    // Row 7.
    if let Some(node) = &pod.node_name
        && node_lost(input.node)
    {
        return Observed::with(
            S::Failed,
            WorkspaceReason::NodeLost,
            format!(
                "{}; the workspace is unreachable until it returns",
                lost_node_text(node, input.node)
            ),
        );
    }
    let waiting = pod
        .container
        .waiting
        .as_ref()
        .map(|(r, m)| (r.as_str(), m.as_str()));
    // Row 8.
    if let Some((r @ ("InvalidImageName" | "ErrImageNeverPull" | "ImageInspectError"), m)) = waiting
    {
        return Observed::with(
            S::Failed,
            WorkspaceReason::InvalidImage,
            with_detail(format!("image {:?} cannot be used ({r})", pod.image), m),
        );
    }
    // Rows 9 and 10.
    if let Some(("CrashLoopBackOff", _)) = waiting {
        let last = pod.container.last_terminated.as_ref();
        if let Some(t) = last.filter(|t| t.reason.as_deref() == Some("OOMKilled")) {
            return Observed::with(
                S::Failed,
                WorkspaceReason::OOMKilled,
                format!(
                    "the container keeps being killed for exceeding its memory limit (exit code {}); the kubelet restarts it with back-off",
                    t.exit_code
                ),
            );
        }
        let last = last.map_or_else(|| "it exited".to_owned(), termination_text);
        return Observed::with(
            S::Failed,
            WorkspaceReason::CrashLooping,
            format!(
                "the container keeps exiting (last: {last}); the kubelet restarts it with back-off"
            ),
        );
    }
    // Row 11.
    if pod.phase == "Running" && pod.ready {
        return Observed {
            status: S::Running,
            reason: None,
            message: pod
                .outdated
                .as_ref()
                .map(|what| format!("outdated: restart to apply {what}")),
        };
    }
    let pending = pending(pod, input);
    // Row 12.
    if !pod.container.started
        && let Some(since) = last_progress(pod, input.events)
    {
        let deadline = since
            + chrono::Duration::from_std(input.config.start_deadline)
                .unwrap_or(chrono::Duration::MAX);
        if input.now >= deadline {
            let head = format!(
                "no progress for {} (scheduled, image pulled, container started)",
                human(input.config.start_deadline)
            );
            return Observed::with(
                S::Failed,
                WorkspaceReason::StartDeadlineExceeded,
                match pending.message {
                    Some(m) => format!("{head}: {m}"),
                    None => head,
                },
            );
        }
    }
    pending
}

fn pod_events<'a>(
    pod: &'a PodFacts,
    events: &'a [EventFacts],
) -> impl Iterator<Item = &'a EventFacts> {
    events.iter().filter(move |e| {
        e.object == EventObject::Pod
            && match (&e.uid, &pod.uid) {
                (Some(a), Some(b)) => a == b,
                _ => match (e.last_seen, pod.created_at) {
                    (Some(seen), Some(created)) => seen >= created,
                    _ => true,
                },
            }
    })
}

fn latest<'a>(it: impl Iterator<Item = &'a EventFacts>) -> Option<&'a EventFacts> {
    it.max_by_key(|e| e.last_seen)
}

/// The last time the start made progress: created, scheduled, image pulled.
fn last_progress(pod: &PodFacts, events: &[EventFacts]) -> Option<DateTime<Utc>> {
    let scheduled = match &pod.scheduled {
        Scheduled::Yes(at) => *at,
        _ => None,
    };
    let pulled =
        latest(pod_events(pod, events).filter(|e| e.reason == "Pulled")).and_then(|e| e.last_seen);
    [pod.created_at, scheduled, pulled]
        .into_iter()
        .flatten()
        .max()
}

/// Rows 13 to 19: a pod on its way.
fn pending(pod: &PodFacts, input: &Input<'_>) -> Observed {
    use WorkspaceStatus::Creating;
    let claim_pending = input
        .claim
        .is_some_and(|c| c.phase.as_deref() == Some("Pending"));
    let scheduled = matches!(pod.scheduled, Scheduled::Yes(_)) || pod.node_name.is_some();
    let claim_events = || {
        latest(
            input
                .events
                .iter()
                .filter(|e| e.object == EventObject::Claim && e.warning),
        )
    };
    // Row 13.
    let unbound_claim = matches!(&pod.scheduled, Scheduled::No(_, m) if m.contains("unbound immediate PersistentVolumeClaims"));
    if claim_pending && (scheduled || unbound_claim) {
        let message = match claim_events() {
            Some(e) => with_detail(
                format!("the volume is not ready ({})", e.reason),
                &e.message,
            ),
            None => "waiting for the volume to be provisioned and bound".to_owned(),
        };
        return Observed::with(Creating, WorkspaceReason::WaitingForVolume, message);
    }
    // Rows 14, 14b and 15. cluster-autoscaler records one of its two Events on
    // each pass over an unschedulable pod; the latest is its current verdict
    // (a scale-up that failed is followed by a decline, a declined pod may be
    // helped once the group's limits change).
    if let Scheduled::No(reason, message) = &pod.scheduled
        && reason == "Unschedulable"
    {
        let verdict = latest(
            pod_events(pod, input.events)
                .filter(|e| e.reason == "TriggeredScaleUp" || e.reason == "NotTriggerScaleUp"),
        );
        if let Some(e) = verdict {
            return if e.reason == "TriggeredScaleUp" {
                Observed::with(
                    Creating,
                    WorkspaceReason::WaitingForScaleUp,
                    with_detail(
                        "the cluster autoscaler is adding a node".to_owned(),
                        &e.message,
                    ),
                )
            } else {
                Observed::with(
                    WorkspaceStatus::Failed,
                    WorkspaceReason::ScaleUpDeclined,
                    with_detail(
                        "the cluster autoscaler will not add a node".to_owned(),
                        &e.message,
                    ),
                )
            };
        }
        return Observed::with(
            Creating,
            WorkspaceReason::Unschedulable,
            with_detail("no node can run the workspace".to_owned(), message),
        );
    }
    let waiting = pod.container.waiting.as_ref();
    // Row 16.
    // The attach failure is the cause when both are there (the kubelet's
    // `FailedMount` then only says it timed out waiting), and a fixed
    // preference keeps the message from flipping as both Events repeat.
    let attach =
        || latest(pod_events(pod, input.events).filter(|e| e.reason == "FailedAttachVolume"));
    let mount = || latest(pod_events(pod, input.events).filter(|e| e.reason == "FailedMount"));
    if !pod.container.started
        && let Some(e) = attach().or_else(mount)
    {
        return Observed::with(
            Creating,
            WorkspaceReason::VolumeAttachFailing,
            with_detail(
                format!("the volume cannot be attached ({})", e.reason),
                &e.message,
            ),
        );
    }
    // Row 17.
    if let Some((r, m)) = waiting
        && (r == "ErrImagePull" || r == "ImagePullBackOff")
    {
        let head = format!("cannot pull image {:?}", pod.image);
        let message = if r == "ErrImagePull" {
            with_detail(head, m)
        } else if let Some(prev) = input
            .previous
            .filter(|p| p.reason == Some(WorkspaceReason::ImagePullFailing))
            .and_then(|p| p.message.clone())
        {
            prev
        } else if let Some(e) = latest(
            pod_events(pod, input.events)
                .filter(|e| e.reason == "Failed" && e.message.starts_with("Failed to pull image")),
        ) {
            // The kubelet's Event: `Failed to pull image "X": <the pull error>`.
            let detail = e
                .message
                .split_once("\": ")
                .map_or(e.message.as_str(), |(_, d)| d);
            with_detail(head, detail)
        } else {
            head
        };
        return Observed::with(Creating, WorkspaceReason::ImagePullFailing, message);
    }
    // Row 18.
    if let Some((r, m)) = waiting
        && r != "ContainerCreating"
        && r != "PodInitializing"
    {
        return Observed {
            status: Creating,
            reason: None,
            message: Some(with_detail(r.clone(), m)),
        };
    }
    // Row 19.
    Observed::new(Creating)
}

#[cfg(test)]
mod tests;
