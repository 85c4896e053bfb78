//! One test per row of the mapping table, on objects written as the API server
//! returns them.

use super::*;
use serde_json::{Value, json};

const T0: &str = "2026-01-01T10:00:00Z";

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn minutes(m: i64) -> DateTime<Utc> {
    t(T0) + chrono::Duration::minutes(m)
}

fn pod_json(status: Value) -> Value {
    json!({
        "metadata": {"name": "ws-1", "uid": "uid-1", "creationTimestamp": T0},
        "spec": {"containers": [{"name": "workspace", "image": "img:1"}]},
        "status": status,
    })
}

fn facts(v: Value) -> PodFacts {
    PodFacts::from_pod(&serde_json::from_value::<Pod>(v).unwrap())
}

fn pod(status: Value) -> PodFacts {
    facts(pod_json(status))
}

fn bound(status: Value) -> PodFacts {
    let mut v = pod_json(status);
    v["spec"]["nodeName"] = json!("node-1");
    facts(v)
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": T0}],
        "containerStatuses": [{
            "name": "workspace", "image": "img:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}
        }]
    })
}

fn claim(phase: &str) -> ClaimFacts {
    ClaimFacts {
        terminating: false,
        phase: Some(phase.into()),
    }
}

fn event(object: EventObject, reason: &str, message: &str, at: DateTime<Utc>) -> EventFacts {
    EventFacts {
        object,
        uid: (object == EventObject::Pod).then(|| "uid-1".to_owned()),
        reason: reason.into(),
        message: message.into(),
        warning: true,
        last_seen: Some(at),
    }
}

struct Case<'a> {
    pod: Option<PodFacts>,
    claim: Option<ClaimFacts>,
    events: Vec<EventFacts>,
    node: NodeView<'a>,
    now: DateTime<Utc>,
    previous: Option<Observed>,
}

impl Default for Case<'_> {
    fn default() -> Self {
        Self {
            pod: None,
            claim: Some(claim("Bound")),
            events: vec![],
            node: NodeView::Unknown,
            now: minutes(1),
            previous: None,
        }
    }
}

fn run(c: &Case<'_>) -> Observed {
    observe(&Input {
        pod: c.pod.as_ref(),
        claim: c.claim.as_ref(),
        events: &c.events,
        node: c.node,
        now: c.now,
        config: &ObserveConfig::default(),
        previous: c.previous.as_ref(),
    })
}

fn with_pod<'a>(p: PodFacts) -> Case<'a> {
    Case {
        pod: Some(p),
        ..Case::default()
    }
}

fn assert_row(o: &Observed, status: WorkspaceStatus, reason: Option<WorkspaceReason>) {
    assert_eq!((o.status, o.reason.clone()), (status, reason), "{o:?}");
}

use WorkspaceReason as R;
use WorkspaceStatus as S;

#[test]
fn row_1_no_pod() {
    let c = |claim| Case {
        claim,
        ..Case::default()
    };
    assert_row(&run(&c(None)), S::Deleted, None);
    assert_row(&run(&c(Some(claim("Bound")))), S::Stopped, None);
    let gone = ClaimFacts {
        terminating: true,
        phase: None,
    };
    assert_row(&run(&c(Some(gone))), S::Deleting, None);
}

fn deleting_pod() -> PodFacts {
    let mut v = pod_json(json!({"phase": "Running"}));
    v["metadata"]["deletionTimestamp"] = json!(T0);
    v["spec"]["nodeName"] = json!("node-1");
    facts(v)
}

#[test]
fn row_2_deletion_stuck_on_a_lost_node() {
    let lost = NodeHealth {
        not_ready: Some(Some(minutes(0))),
        out_of_service: false,
    };
    let o = run(&Case {
        node: NodeView::Known(&lost),
        now: minutes(2),
        ..with_pod(deleting_pod())
    });
    assert_row(&o, S::Stopping, Some(R::NodeLost));
    let m = o.message.clone().unwrap();
    assert!(
        m.contains("node node-1 is not Ready since 2026-01-01T10:00:00Z"),
        "{m}"
    );
    assert!(m.contains("force-deleted at 2026-01-01T10:05:00Z"), "{m}");
    // The same facts a minute later give the same message: no new report.
    let later = run(&Case {
        node: NodeView::Known(&lost),
        now: minutes(3),
        ..with_pod(deleting_pod())
    });
    assert_eq!(later, o);
    // Past the threshold, gone, or out of service: force-deleted now.
    for (node, now) in [
        (NodeView::Known(&lost), minutes(6)),
        (NodeView::Gone, minutes(1)),
    ] {
        let o = run(&Case {
            node,
            now,
            ..with_pod(deleting_pod())
        });
        assert!(o.message.unwrap().contains("force-deleting it"));
    }
    let tainted = NodeHealth {
        not_ready: Some(None),
        out_of_service: true,
    };
    assert!(matches!(
        force_delete_due(
            NodeView::Known(&tainted),
            minutes(0),
            &ObserveConfig::default()
        ),
        ForceDelete::Now(_)
    ));
    // A deletion with the claim going too is `deleting`.
    let o = run(&Case {
        node: NodeView::Gone,
        claim: Some(ClaimFacts {
            terminating: true,
            phase: None,
        }),
        ..with_pod(deleting_pod())
    });
    assert_row(&o, S::Deleting, Some(R::NodeLost));
}

#[test]
fn row_3_deletion_on_a_healthy_node() {
    let fine = NodeHealth::default();
    let o = run(&Case {
        node: NodeView::Known(&fine),
        ..with_pod(deleting_pod())
    });
    assert_eq!(o, Observed::new(S::Stopping));
    assert_eq!(
        force_delete_due(
            NodeView::Known(&fine),
            minutes(100),
            &ObserveConfig::default()
        ),
        ForceDelete::No
    );
}

#[test]
fn row_4_evicted() {
    let o = run(&with_pod(pod(json!({
        "phase": "Failed", "reason": "Evicted",
        "message": "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi."
    }))));
    assert_row(&o, S::Failed, Some(R::Evicted));
    assert_eq!(
        o.message.as_deref(),
        Some(
            "the pod was evicted: The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi"
        )
    );
}

#[test]
fn row_5_ended_out_of_memory() {
    let o = run(&with_pod(pod(json!({
        "phase": "Failed",
        "containerStatuses": [{"name": "workspace", "image": "img:1", "imageID": "x", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
    }))));
    assert_row(&o, S::Failed, Some(R::OOMKilled));
}

#[test]
fn row_6_ended_otherwise() {
    let o = run(&with_pod(pod(json!({
        "phase": "Succeeded",
        "containerStatuses": [{"name": "workspace", "image": "img:1", "imageID": "x", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
    }))));
    assert_row(&o, S::Failed, Some(R::PodEnded));
    assert_eq!(
        o.message.as_deref(),
        Some("the pod ended (succeeded): Completed (exit code 0)")
    );
    let o = run(&with_pod(pod(json!({"phase": "Failed"}))));
    assert_row(&o, S::Failed, Some(R::PodEnded));
}

#[test]
fn row_7_running_on_a_lost_node() {
    let lost = NodeHealth {
        not_ready: Some(Some(minutes(0))),
        out_of_service: false,
    };
    let running = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    let o = run(&Case {
        node: NodeView::Known(&lost),
        ..with_pod(bound(running.clone()))
    });
    assert_row(&o, S::Failed, Some(R::NodeLost));
    assert!(o.message.unwrap().contains("node node-1 is not Ready"));
    let fine = NodeHealth::default();
    let o = run(&Case {
        node: NodeView::Known(&fine),
        ..with_pod(bound(running))
    });
    assert_row(&o, S::Running, None);
}

#[test]
fn row_8_invalid_image() {
    let o = run(&with_pod(pod(waiting(
        "InvalidImageName",
        "Failed to apply default image tag \"Bad:Image\": couldn't parse image name",
    ))));
    assert_row(&o, S::Failed, Some(R::InvalidImage));
}

fn crash_loop(last_reason: &str, code: i32, backoff: &str) -> PodFacts {
    pod(json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "workspace", "image": "img:1", "imageID": "x", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off {backoff} restarting failed container=workspace pod=ws-1_ns(uid-1)")}},
            "lastState": {"terminated": {"exitCode": code, "reason": last_reason}}}]
    }))
}

#[test]
fn row_9_crash_loop_out_of_memory() {
    let o = run(&with_pod(crash_loop("OOMKilled", 137, "10s")));
    assert_row(&o, S::Failed, Some(R::OOMKilled));
}

#[test]
fn row_10_crash_loop() {
    let a = run(&with_pod(crash_loop("Error", 1, "10s")));
    assert_row(&a, S::Failed, Some(R::CrashLooping));
    assert!(
        a.message
            .as_deref()
            .unwrap()
            .contains("Error (exit code 1)")
    );
    // Growing back-off is not a new message.
    assert_eq!(run(&with_pod(crash_loop("Error", 1, "5m0s"))), a);
}

#[test]
fn row_11_running_and_ready() {
    let mut p =
        pod(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}));
    assert_eq!(run(&with_pod(p.clone())), Observed::new(S::Running));
    p.outdated = Some("the new resources".into());
    let o = run(&with_pod(p));
    assert_row(&o, S::Running, None);
    assert_eq!(
        o.message.as_deref(),
        Some("outdated: restart to apply the new resources")
    );
}

#[test]
fn row_12_start_deadline() {
    let p = pod(waiting(
        "ImagePullBackOff",
        "Back-off pulling image \"img:1\"",
    ));
    let before = run(&Case {
        now: minutes(9),
        ..with_pod(p.clone())
    });
    assert_row(&before, S::Creating, Some(R::ImagePullFailing));
    let after = run(&Case {
        now: minutes(10),
        ..with_pod(p.clone())
    });
    assert_row(&after, S::Failed, Some(R::StartDeadlineExceeded));
    assert!(after.message.unwrap().contains("cannot pull image"));
    // An image pulled at minute 5 is progress: the deadline moves.
    let pulled = event(
        EventObject::Pod,
        "Pulled",
        "Successfully pulled image",
        minutes(5),
    );
    let o = run(&Case {
        now: minutes(12),
        events: vec![pulled],
        ..with_pod(p)
    });
    assert_row(&o, S::Creating, Some(R::ImagePullFailing));
    // A container that started once is not held to it.
    let o = run(&Case {
        now: minutes(60),
        ..with_pod(pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "workspace", "image": "img:1",
            "imageID": "x", "ready": false, "restartCount": 0, "state": {"running": {"startedAt": T0}}}]}),
        ))
    });
    assert_row(&o, S::Creating, None);
}

#[test]
fn row_13_waiting_for_the_volume() {
    let scheduled = pod(json!({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": T0}]}));
    let unscheduled = pod(json!({"phase": "Pending"}));
    // WaitForFirstConsumer: pending before the pod is scheduled is normal.
    let o = run(&Case {
        claim: Some(claim("Pending")),
        ..with_pod(unscheduled)
    });
    assert_eq!(o, Observed::new(S::Creating));
    // Scheduled and still pending: waiting for the volume, with the provisioner's word.
    let o = run(&Case {
        claim: Some(claim("Pending")),
        events: vec![event(
            EventObject::Claim,
            "ProvisioningFailed",
            "storageclass.storage.k8s.io \"fast\" not found",
            minutes(0),
        )],
        ..with_pod(scheduled)
    });
    assert_row(&o, S::Creating, Some(R::WaitingForVolume));
    assert!(o.message.unwrap().contains("\"fast\" not found"));
    // Immediate binding: the scheduler says the claim is unbound.
    let o = run(&Case {
        claim: Some(claim("Pending")),
        ..with_pod(pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]}),
        ))
    });
    assert_row(&o, S::Creating, Some(R::WaitingForVolume));
}

fn unschedulable(message: &str) -> PodFacts {
    pod(
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": message}]}),
    )
}

#[test]
fn row_14_waiting_for_scale_up() {
    let o = run(&Case {
        events: vec![event(
            EventObject::Pod,
            "TriggeredScaleUp",
            "pod triggered scale-up: [{pool-1 1->2 (max: 5)}]",
            minutes(0),
        )],
        ..with_pod(unschedulable(
            "0/1 nodes are available: 1 Insufficient cpu.",
        ))
    });
    assert_row(&o, S::Creating, Some(R::WaitingForScaleUp));
}

#[test]
fn row_14b_the_autoscaler_declines() {
    let pending = || unschedulable("0/1 nodes are available: 1 Insufficient cpu.");
    let declined = event(
        EventObject::Pod,
        "NotTriggerScaleUp",
        "pod didn't trigger scale-up: 1 max node group size reached",
        minutes(1),
    );
    let o = run(&Case {
        events: vec![declined.clone()],
        ..with_pod(pending())
    });
    assert_row(&o, S::Failed, Some(R::ScaleUpDeclined));
    assert_eq!(
        o.message.as_deref(),
        Some(
            "the cluster autoscaler will not add a node: pod didn't trigger scale-up: 1 max node group size reached"
        )
    );
    // The latest verdict wins: a decline after a scale-up (it failed), and a
    // scale-up after a decline (the group grew).
    let triggered = |at| {
        event(
            EventObject::Pod,
            "TriggeredScaleUp",
            "pod triggered scale-up: [{pool-1 1->2 (max: 5)}]",
            at,
        )
    };
    let o = run(&Case {
        events: vec![triggered(minutes(0)), declined.clone()],
        ..with_pod(pending())
    });
    assert_row(&o, S::Failed, Some(R::ScaleUpDeclined));
    let o = run(&Case {
        events: vec![declined, triggered(minutes(2))],
        ..with_pod(pending())
    });
    assert_row(&o, S::Creating, Some(R::WaitingForScaleUp));
}

#[test]
fn row_15_unschedulable() {
    let a = run(&with_pod(unschedulable(
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
    )));
    assert_row(&a, S::Creating, Some(R::Unschedulable));
    assert_eq!(
        a.message.as_deref(),
        Some("no node can run the workspace: 0/3 nodes are available: 3 Insufficient cpu")
    );
    let b = run(&with_pod(unschedulable(
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful.",
    )));
    assert_eq!(a, b);
}

#[test]
fn row_16_volume_attach_failing() {
    let p = pod(waiting("ContainerCreating", ""));
    let o = run(&Case {
        events: vec![
            event(
                EventObject::Pod,
                "FailedMount",
                "MountVolume.SetUp failed for volume \"home\"",
                minutes(2),
            ),
            event(
                EventObject::Pod,
                "FailedAttachVolume",
                "AttachVolume.Attach failed for volume \"pvc-1\" : timed out",
                minutes(1),
            ),
        ],
        ..with_pod(p.clone())
    });
    assert_row(&o, S::Creating, Some(R::VolumeAttachFailing));
    // The attach failure is the cause, even when the mount failure is newer.
    assert!(o.message.unwrap().contains("FailedAttachVolume"));
    // Events of an earlier pod of the same name do not count.
    let mut old = event(EventObject::Pod, "FailedMount", "old", minutes(0));
    old.uid = Some("uid-0".into());
    let o = run(&Case {
        events: vec![old],
        ..with_pod(p)
    });
    assert_eq!(o, Observed::new(S::Creating));
}

#[test]
fn row_17_image_pull_failing_is_one_reason_and_one_message() {
    let err = pod(waiting(
        "ErrImagePull",
        "rpc error: code = NotFound desc = failed to pull and unpack image \"img:1\": not found",
    ));
    let backoff = pod(waiting(
        "ImagePullBackOff",
        "Back-off pulling image \"img:1\"",
    ));
    let first = run(&with_pod(err.clone()));
    assert_row(&first, S::Creating, Some(R::ImagePullFailing));
    assert!(first.message.as_deref().unwrap().contains("not found"));
    let mut previous = first.clone();
    for p in [backoff.clone(), err, backoff.clone()] {
        let o = run(&Case {
            previous: Some(previous.clone()),
            ..with_pod(p)
        });
        assert_eq!(o, first);
        previous = o;
    }
    // Seen first in back-off: the kubelet's Event gives the error.
    let o = run(&Case {
        events: vec![event(
            EventObject::Pod,
            "Failed",
            "Failed to pull image \"img:1\": rpc error: code = NotFound desc = failed to pull and unpack image \"img:1\": not found",
            minutes(0),
        )],
        ..with_pod(backoff)
    });
    assert_eq!(o, first);
}

#[test]
fn row_18_other_waiting_reasons() {
    let o = run(&with_pod(pod(waiting(
        "CreateContainerConfigError",
        "configmap \"x\" not found",
    ))));
    assert_eq!(
        o,
        Observed {
            status: S::Creating,
            reason: None,
            message: Some("CreateContainerConfigError: configmap \"x\" not found".into()),
        }
    );
}

#[test]
fn row_19_on_its_way() {
    assert_eq!(
        run(&with_pod(pod(waiting("ContainerCreating", "")))),
        Observed::new(S::Creating)
    );
    assert_eq!(
        run(&with_pod(pod(json!({"phase": "Running"})))),
        Observed::new(S::Creating)
    );
}

#[test]
fn normalisation_drops_durations_only() {
    assert_eq!(
        normalize("back-off 2m40s restarting failed container=workspace"),
        "back-off restarting failed container=workspace"
    );
    assert_eq!(
        normalize("Back-off 10s pulling image \"a:1m\"."),
        "Back-off pulling image \"a:1m\""
    );
    assert_eq!(
        normalize("0/3 nodes are available"),
        "0/3 nodes are available"
    );
    assert!(is_go_duration("1h2m3.5s"));
    assert!(!is_go_duration("m"));
    assert!(!is_go_duration("10"));
    assert_eq!(human(Duration::from_secs(300)), "5m");
}

#[test]
fn node_health_from_nodes() {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n"},
        "spec": {"taints": [{"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}]},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": T0}]}
    }))
    .unwrap();
    assert_eq!(
        NodeHealth::from_node(&node),
        NodeHealth {
            not_ready: Some(Some(t(T0))),
            out_of_service: true
        }
    );
    assert_eq!(
        NodeHealth::from_node(&Node::default()),
        NodeHealth::default()
    );
}
