//! The tracker: queued changes, snapshots, Events, nodes, health.

use super::*;
use crate::observe::{EventObject, NodeHealth};
use lapdev_common::reason::WorkspaceReason;
use serde_json::json;

fn facts(v: serde_json::Value) -> PodFacts {
    PodFacts::from_pod(&serde_json::from_value::<Pod>(v).unwrap())
}

fn running() -> PodFacts {
    facts(json!({
        "metadata": {"name": "ws-1", "uid": "u1"},
        "spec": {"nodeName": "n1", "containers": [{"name": "workspace", "image": "i"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

fn pending() -> PodFacts {
    facts(json!({
        "metadata": {"name": "ws-1", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "workspace", "image": "i"}]},
        "status": {"phase": "Pending"}
    }))
}

fn present() -> ClaimFacts {
    ClaimFacts::default()
}

fn tracker() -> Arc<Tracker> {
    // A long deadline: these tests are not about it.
    Tracker::new(
        ManagerIdentity::default(),
        ObserveConfig {
            start_deadline: std::time::Duration::from_secs(1 << 40),
            ..ObserveConfig::default()
        },
    )
}

fn synced(t: &Tracker, pods: Vec<(Uuid, PodFacts)>, pvcs: Vec<(Uuid, ClaimFacts)>) {
    t.pod_change(Change::Init);
    for (id, p) in pods {
        t.pod_change(Change::InitUpsert(id, p));
    }
    t.pod_change(Change::InitDone);
    t.pvc_change(Change::Init);
    for (id, c) in pvcs {
        t.pvc_change(Change::InitUpsert(id, c));
    }
    t.pvc_change(Change::InitDone);
}

#[test]
fn the_tracker_queues_changes_and_keeps_deletions_for_the_snapshot() {
    let t = tracker();
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    t.pod_change(Change::Init);
    t.pod_change(Change::InitUpsert(a, running()));
    t.pod_change(Change::InitDone);
    t.pvc_change(Change::Init);
    t.pvc_change(Change::InitUpsert(a, present()));
    t.pvc_change(Change::InitUpsert(b, present()));
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

fn event(reason: &str, message: &str) -> EventFacts {
    EventFacts {
        object: EventObject::Pod,
        uid: Some("u1".into()),
        reason: reason.into(),
        message: message.into(),
        warning: true,
        last_seen: Some(Utc::now()),
    }
}

#[test]
fn events_change_the_observation_once_and_are_bounded() {
    let t = tracker();
    let id = Uuid::new_v4();
    synced(&t, vec![(id, pending())], vec![(id, present())]);
    t.take_snapshot();
    t.event(id, event("FailedMount", "MountVolume.SetUp failed"));
    let changes = t.take_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].reason,
        Some(WorkspaceReason::VolumeAttachFailing)
    );
    // The same Event again (the kubelet's count grows): no new report.
    let mut again = event("FailedMount", "MountVolume.SetUp failed");
    again.last_seen = Some(Utc::now() + chrono::Duration::seconds(30));
    t.event(id, again);
    assert!(t.take_changes().is_empty());
    // Many reasons: only the newest few are kept.
    for i in 0..20 {
        t.event(id, event(&format!("Other{i}"), "x"));
    }
    assert!(t.lock().events[&id].events.len() <= EVENTS_PER_WORKSPACE);
    // A relist without them drops them.
    t.events_relisting();
    t.events_relisted();
    assert!(!t.lock().events.contains_key(&id));
}

#[test]
fn a_node_lost_under_a_pod_is_reported_and_found_again() {
    let t = tracker();
    let id = Uuid::new_v4();
    synced(&t, vec![(id, running())], vec![(id, present())]);
    t.node_change(Change::Init);
    t.node_change(Change::InitUpsert("n1".into(), NodeSummary::default()));
    t.node_change(Change::InitDone);
    t.take_snapshot();
    let lost = NodeSummary {
        health: NodeHealth {
            not_ready: Some(None),
            out_of_service: false,
        },
        ..NodeSummary::default()
    };
    t.node_change(Change::Upsert("n1".into(), lost));
    let c = t.take_changes();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].reason, Some(WorkspaceReason::NodeLost));
    assert_eq!(c[0].node_name.as_deref(), Some("n1"));
    t.node_change(Change::Upsert("n1".into(), NodeSummary::default()));
    assert_eq!(t.take_changes()[0].status, WorkspaceStatus::Running);
}

#[test]
fn the_tick_finds_pods_stuck_on_gone_nodes() {
    let t = tracker();
    let id = Uuid::new_v4();
    let mut p = running();
    p.deleting_since = Some(Utc::now());
    synced(&t, vec![(id, p)], vec![(id, present())]);
    assert!(
        t.tick().is_empty(),
        "nodes not listed yet: nothing is known"
    );
    t.node_change(Change::Init);
    t.node_change(Change::InitDone);
    let stuck = t.tick();
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].pod_name, "ws-1");
    assert_eq!(stuck[0].uid.as_deref(), Some("u1"));
}

#[test]
fn health_and_info() {
    let t = tracker();
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
    t.set_error(
        "watching workspace events",
        "re-apply the manifest: missing events list".into(),
    );
    assert_eq!(
        t.health().borrow().as_deref(),
        Some("watching workspace events: re-apply the manifest: missing events list")
    );
    // A successful probe does not hide a failing watcher; its recovery does.
    t.probe_ok("v1.33.0".into());
    assert!(t.health().borrow().is_some());
    t.clear_error("watching workspace events");
    assert!(t.health().borrow().is_none());
    // An error not seen again for a while is forgotten; the probe's is not.
    t.set_error("watching nodes", "connection reset".into());
    t.expire_errors(std::time::Duration::from_secs(3600));
    assert!(t.health().borrow().is_some(), "seen just now");
    t.probe_failed("no answer".into());
    t.expire_errors(std::time::Duration::ZERO);
    assert_eq!(
        t.health().borrow().as_deref(),
        Some("kubernetes API: no answer")
    );
}
