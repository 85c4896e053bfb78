//! The real manager binary against a double that fails like a cluster: evicted
//! pods, image pulls that keep failing, nodes that die under their pods,
//! settings that change under running workspaces, volumes changed by hand, and
//! a Role without the events rule.

mod common;

use std::time::Duration;

use common::fake_server::{FakeServer, Recorded, TOKEN};
use common::{ManagerProcess, NAMESPACE, double, eventually, spec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use lapdev_common::reason::WorkspaceReason;
use lapdev_common::status::WorkspaceStatus;
use lapdev_kube_double::{KubeletConfig, Verb};
use lapdev_kube_rpc::{ManagerHealth, WorkspaceObservation};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn any_addr() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn of(r: &Recorded, id: Uuid) -> Vec<WorkspaceObservation> {
    r.statuses
        .iter()
        .filter(|s| s.workspace_id == id)
        .cloned()
        .collect()
}

fn last_is(r: &Recorded, id: Uuid, status: WorkspaceStatus) -> bool {
    of(r, id).last().is_some_and(|s| s.status == status)
}

/// A stand-in kubelet that binds claims but starts no pod: the test plays the
/// kubelet for pods itself.
fn claims_only() -> KubeletConfig {
    KubeletConfig {
        delay: Duration::from_millis(50),
        label_selector: "lapdev.test/never=true".into(),
        bind_claims: true,
    }
}

fn fast_kubelet() -> KubeletConfig {
    KubeletConfig {
        delay: Duration::from_millis(50),
        ..KubeletConfig::default()
    }
}

#[tokio::test]
async fn an_evicted_pod_is_reported_and_replaced_by_the_next_start() {
    let double = double().await;
    let h = double.handle();
    let _kubelet = h.run_kubelet(fast_kubelet());
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let id = Uuid::new_v4();
    rpc.create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("running", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    let first_uid = h
        .get::<Pod>(NAMESPACE, &format!("ws-{id}"))
        .unwrap()
        .metadata
        .uid;

    h.kubelet_evict(
        NAMESPACE,
        &format!("ws-{id}"),
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.",
    )
    .unwrap();
    let r = server
        .wait_for("evicted", WAIT, |r| last_is(r, id, WorkspaceStatus::Failed))
        .await;
    let failed = of(&r, id).pop().unwrap();
    assert_eq!(failed.reason, Some(WorkspaceReason::Evicted), "{failed:?}");
    assert!(
        failed
            .message
            .as_deref()
            .unwrap()
            .contains("low on resource: memory"),
        "{failed:?}"
    );

    // The repair: a start over the ended pod replaces it.
    let started = rpc.start_workspace(spec(id)).await.unwrap();
    assert_eq!(started.status, WorkspaceStatus::Creating, "{started:?}");
    server
        .wait_for("running again", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    let pod: Pod = h.get(NAMESPACE, &format!("ws-{id}")).unwrap();
    assert_ne!(pod.metadata.uid, first_uid, "a new pod");
    // A start over a live pod changes nothing.
    rpc.start_workspace(spec(id)).await.unwrap();
    let same: Pod = h.get(NAMESPACE, &format!("ws-{id}")).unwrap();
    assert_eq!(same.metadata.uid, pod.metadata.uid);
}

#[tokio::test]
async fn an_image_pull_that_keeps_failing_is_one_status_one_reason_one_report() {
    let double = double().await;
    let h = double.handle();
    let _kubelet = h.run_kubelet(claims_only());
    let server = FakeServer::start(any_addr()).await;
    let manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let id = Uuid::new_v4();
    let pod = format!("ws-{id}");
    rpc.create_workspace(spec(id)).await.unwrap();
    eventually("claim bound", WAIT, || async {
        h.get::<PersistentVolumeClaim>(NAMESPACE, &format!("ws-{id}-home"))
            .ok()
            .and_then(|c| c.status?.phase)
            .as_deref()
            == Some("Bound")
    })
    .await;

    h.kubelet_fail_image_pull(NAMESPACE, &pod).unwrap();
    let r = server
        .wait_for("image pull failing", WAIT, |r| {
            of(r, id)
                .iter()
                .any(|s| s.reason == Some(WorkspaceReason::ImagePullFailing))
        })
        .await;
    let failing = of(&r, id)
        .into_iter()
        .find(|s| s.reason == Some(WorkspaceReason::ImagePullFailing))
        .unwrap();
    assert_eq!(failing.status, WorkspaceStatus::Creating, "{failing:?}");
    assert!(
        failing
            .message
            .as_deref()
            .unwrap()
            .contains("cannot pull image"),
        "{failing:?}"
    );
    // The kubelet retries: ImagePullBackOff, ErrImagePull, ... with Events.
    for _ in 0..6 {
        h.kubelet_retry(NAMESPACE, &pod).unwrap();
    }
    // Then it succeeds. The watch delivers the pod's changes in order, so once
    // running is reported every retry before it has been seen.
    h.kubelet_recover(NAMESPACE, &pod).unwrap();
    let r = server
        .wait_for("running", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    let reports = of(&r, id);
    let pulls: Vec<_> = reports
        .iter()
        .filter(|s| s.reason == Some(WorkspaceReason::ImagePullFailing))
        .collect();
    assert_eq!(
        pulls.len(),
        1,
        "one report while the kubelet retried: {reports:#?}"
    );
    let after: Vec<_> = reports
        .iter()
        .skip_while(|s| s.reason != Some(WorkspaceReason::ImagePullFailing))
        .map(|s| (s.status, s.reason.clone()))
        .collect();
    assert_eq!(
        after,
        [
            (
                WorkspaceStatus::Creating,
                Some(WorkspaceReason::ImagePullFailing)
            ),
            (WorkspaceStatus::Running, None)
        ],
        "{reports:#?}"
    );
    // Not even an unreported change in between.
    let log = manager.log();
    let changes = log
        .lines()
        .filter(|l| l.contains("workspace changed") && l.contains(&id.to_string()))
        .filter(|l| l.contains("ImagePullFailing"))
        .count();
    assert_eq!(changes, 1, "{log}");
}

#[tokio::test]
async fn stop_and_delete_on_a_lost_node_finish_after_the_threshold_not_before() {
    let double = double().await;
    let h = double.handle();
    h.set_pod_gc(false);
    let _kubelet = h.run_kubelet(fast_kubelet());
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn_with(
        &double,
        &server.url(),
        TOKEN,
        &[("LAPDEV_NODE_LOST_FORCE_DELETE_SECS", "5")],
    );
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for id in [a, b] {
        rpc.create_workspace(spec(id)).await.unwrap();
    }
    server
        .wait_for("both running", WAIT, |r| {
            last_is(r, a, WorkspaceStatus::Running) && last_is(r, b, WorkspaceStatus::Running)
        })
        .await;

    h.set_node_lost("node-1").unwrap();
    let r = server
        .wait_for("node lost", WAIT, |r| {
            of(r, a)
                .last()
                .is_some_and(|s| s.reason == Some(WorkspaceReason::NodeLost))
        })
        .await;
    let lost = of(&r, a).pop().unwrap();
    assert_eq!(lost.status, WorkspaceStatus::Failed, "{lost:?}");
    assert!(
        lost.message.as_deref().unwrap().contains("node node-1"),
        "{lost:?}"
    );

    let stopping = rpc.stop_workspace(a).await.unwrap();
    let deleting = rpc.delete_workspace(b).await.unwrap();
    assert_eq!(stopping.status, WorkspaceStatus::Stopping, "{stopping:?}");
    assert_eq!(deleting.status, WorkspaceStatus::Deleting, "{deleting:?}");
    for o in [&stopping, &deleting] {
        assert_eq!(o.reason, Some(WorkspaceReason::NodeLost), "{o:?}");
        let m = o.message.as_deref().unwrap();
        assert!(m.contains("node node-1 is not Ready since"), "{m}");
    }
    // Right after the commands both pods are still there (graceful deletion,
    // waiting on a kubelet that is gone)...
    let pods = h.list::<Pod>().unwrap();
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p.metadata.deletion_timestamp.is_some()));
    // A start meanwhile cannot replace the pod yet, and says until when.
    match rpc.start_workspace(spec(a)).await {
        Err(lapdev_hrpc::CallError::Service(e)) => {
            assert_eq!(e.code, lapdev_hrpc::Code::Unavailable, "{e:?}");
            assert!(e.message.contains("force-deleted at"), "{e:?}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    // ...and they go only once the node has been lost for the threshold.
    let r = server
        .wait_for("stopped and deleted", WAIT, |r| {
            last_is(r, a, WorkspaceStatus::Stopped) && last_is(r, b, WorkspaceStatus::Deleted)
        })
        .await;
    assert!(h.list::<Pod>().unwrap().is_empty());
    assert_eq!(
        h.list::<PersistentVolumeClaim>().unwrap().len(),
        1,
        "a's volume stays"
    );
    // Not before the time the commands named.
    let m = stopping.message.as_deref().unwrap();
    let at = m
        .split("force-deleted at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .unwrap_or_else(|| panic!("no force-deletion time in {m:?}"));
    for id in [a, b] {
        let done = of(&r, id).last().unwrap().observed_at;
        assert!(done >= at, "finished at {done}, before {at}");
    }
}

#[tokio::test]
async fn changed_settings_mark_a_running_workspace_outdated_until_the_next_start() {
    let double = double().await;
    let h = double.handle();
    let _kubelet = h.run_kubelet(fast_kubelet());
    let server = FakeServer::start(any_addr()).await;
    let mut manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let id = Uuid::new_v4();
    rpc.create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("running", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    let before: Pod = h.get(NAMESPACE, &format!("ws-{id}")).unwrap();
    assert!(before.metadata.annotations.as_ref().unwrap()["lapdev.dev/pod-spec-hash"].len() == 32);

    // The admin switches the cluster to the restricted profile.
    manager.terminate();
    let snapshots = server.recorded().snapshots.len();
    let _manager = ManagerProcess::spawn_with(
        &double,
        &server.url(),
        TOKEN,
        &[("LAPDEV_SECURITY_PROFILE", "restricted")],
    );
    let r = server
        .wait_for("a new snapshot", WAIT, |r| r.snapshots.len() > snapshots)
        .await;
    let rpc = server.manager();
    let seen = r
        .snapshots
        .last()
        .unwrap()
        .iter()
        .find(|o| o.workspace_id == id)
        .cloned()
        .unwrap();
    assert_eq!(seen.status, WorkspaceStatus::Running, "{seen:?}");
    assert!(
        seen.message
            .as_deref()
            .unwrap()
            .starts_with("outdated: restart to apply"),
        "{seen:?}"
    );
    // The live pod is left alone, even by a start.
    rpc.start_workspace(spec(id)).await.unwrap();
    let still: Pod = h.get(NAMESPACE, &format!("ws-{id}")).unwrap();
    assert_eq!(still.metadata.uid, before.metadata.uid);

    // The next start builds the new pod.
    rpc.stop_workspace(id).await.unwrap();
    server
        .wait_for("stopped", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Stopped)
        })
        .await;
    rpc.start_workspace(spec(id)).await.unwrap();
    let r = server
        .wait_for("running again", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    assert_eq!(of(&r, id).last().unwrap().message, None, "up to date");
    let after: Pod = h.get(NAMESPACE, &format!("ws-{id}")).unwrap();
    let sc = after.spec.unwrap().containers[0]
        .security_context
        .clone()
        .unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
}

#[tokio::test]
async fn a_start_after_the_storage_class_changed_and_the_volume_grew_is_not_refused() {
    let double = double().await;
    let h = double.handle();
    h.add_storage_class("standard", true, false, true).unwrap();
    h.add_storage_class("fast", true, false, false).unwrap();
    let _kubelet = h.run_kubelet(fast_kubelet());
    let server = FakeServer::start(any_addr()).await;
    let mut manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let id = Uuid::new_v4();
    let claim = format!("ws-{id}-home");
    rpc.create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("running", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    rpc.stop_workspace(id).await.unwrap();
    server
        .wait_for("stopped", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Stopped)
        })
        .await;
    // Someone expands the volume by hand.
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(double.client().await.unwrap(), NAMESPACE);
    pvcs.patch(
        &claim,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}}),
        ),
    )
    .await
    .unwrap();

    // The admin changes the storage class of new volumes.
    manager.terminate();
    let snapshots = server.recorded().snapshots.len();
    let _manager = ManagerProcess::spawn_with(
        &double,
        &server.url(),
        TOKEN,
        &[("LAPDEV_WORKSPACE_STORAGE_CLASS", "fast")],
    );
    server
        .wait_for("a new snapshot", WAIT, |r| r.snapshots.len() > snapshots)
        .await;
    let rpc = server.manager();
    let started = rpc.start_workspace(spec(id)).await.unwrap();
    assert_eq!(started.status, WorkspaceStatus::Creating, "{started:?}");
    server
        .wait_for("running again", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;
    let pvc: PersistentVolumeClaim = h.get(NAMESPACE, &claim).unwrap();
    let spec = pvc.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "20Gi"
    );
}

#[tokio::test]
async fn a_role_without_events_is_degraded_with_a_bounded_request_rate_and_keeps_working() {
    let double = double().await;
    let h = double.handle();
    h.deny(Verb::List, "events");
    h.deny(Verb::Watch, "events");
    let _kubelet = h.run_kubelet(fast_kubelet());
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn_with(
        &double,
        &server.url(),
        TOKEN,
        &[("LAPDEV_WATCH_RETRY_MAX_SECS", "1")],
    );
    let degraded = |r: &Recorded| {
        r.heartbeats.iter().any(|h| {
            matches!(h, ManagerHealth::Degraded { reason }
            if reason.contains("re-apply the manifest: missing events list"))
        })
    };
    server.wait_for("degraded", WAIT, degraded).await;

    // Everything else works.
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let id = Uuid::new_v4();
    rpc.create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("running", WAIT, |r| {
            last_is(r, id, WorkspaceStatus::Running)
        })
        .await;

    // The failing watcher retries at most once per cap (1 s, jittered down to
    // 0.5 s): a window of 3 s sees a handful of lists, where a backoff
    // reset by every `Init` would make several a second.
    h.reset_request_counts();
    let window = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lists = h.request_count_for(Verb::List, "events");
    let secs = window.elapsed().as_secs_f64();
    assert!(lists >= 1, "the watcher still retries");
    assert!(
        (lists as f64) <= secs / 0.5 + 3.0,
        "{lists} lists of events in {secs:.1} s"
    );
    assert!(degraded(&server.recorded()));
}

#[tokio::test]
async fn kubelet_failures_are_reported_with_their_reasons() {
    let double = double().await;
    let h = double.handle();
    let _kubelet = h.run_kubelet(claims_only());
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn_with(
        &double,
        &server.url(),
        TOKEN,
        &[("LAPDEV_WORKSPACE_START_DEADLINE_SECS", "3")],
    );
    server
        .wait_for("snapshot", WAIT, |r| !r.snapshots.is_empty())
        .await;
    let rpc = server.manager();
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        rpc.create_workspace(spec(*id)).await.unwrap();
    }
    eventually("claims bound", WAIT, || async {
        h.list::<PersistentVolumeClaim>()
            .unwrap()
            .iter()
            .all(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    })
    .await;
    let pod = |i: usize| format!("ws-{}", ids[i]);
    h.kubelet_fail_volume_attach(NAMESPACE, &pod(0)).unwrap();
    h.kubelet_crash_loop(NAMESPACE, &pod(1), true).unwrap();
    h.kubelet_fail_invalid_image(NAMESPACE, &pod(2)).unwrap();
    h.kubelet_fail_image_pull(NAMESPACE, &pod(3)).unwrap();
    let reason_of = |r: &Recorded, i: usize| of(r, ids[i]).last().and_then(|s| s.reason.clone());
    let r = server
        .wait_for("every failure reported", WAIT, |r| {
            reason_of(r, 0) == Some(WorkspaceReason::VolumeAttachFailing)
                && reason_of(r, 1) == Some(WorkspaceReason::OOMKilled)
                && reason_of(r, 2) == Some(WorkspaceReason::InvalidImage)
        })
        .await;
    let last = |i: usize| of(&r, ids[i]).pop().unwrap();
    // Only the Events say the volume does not attach.
    assert_eq!(last(0).status, WorkspaceStatus::Creating);
    assert!(last(0).message.unwrap().contains("FailedAttachVolume"));
    assert_eq!(last(1).status, WorkspaceStatus::Failed);
    assert_eq!(last(2).status, WorkspaceStatus::Failed);
    // The crash loop's growing back-off is not a new report.
    let before = of(&r, ids[1]).len();
    for _ in 0..3 {
        h.kubelet_crash_loop(NAMESPACE, &pod(1), true).unwrap();
    }
    // No progress for the start deadline: failed for good.
    let r = server
        .wait_for("start deadline", WAIT, |r| {
            reason_of(r, 3) == Some(WorkspaceReason::StartDeadlineExceeded)
        })
        .await;
    let timed_out = of(&r, ids[3]).pop().unwrap();
    assert_eq!(timed_out.status, WorkspaceStatus::Failed);
    assert!(timed_out.message.unwrap().contains("cannot pull image"));
    // The crash-looping pod's restarts made no report: the watch delivers its
    // changes in order, so once running is reported every restart was seen.
    h.kubelet_recover(NAMESPACE, &pod(1)).unwrap();
    let r = server
        .wait_for("recovered", WAIT, |r| {
            last_is(r, ids[1], WorkspaceStatus::Running)
        })
        .await;
    assert_eq!(of(&r, ids[1]).len(), before + 1, "{:#?}", of(&r, ids[1]));
}

#[tokio::test]
async fn a_routine_relist_is_not_degraded() {
    let double = double().await;
    let h = double.handle();
    let server = FakeServer::start(any_addr()).await;
    let _manager = ManagerProcess::spawn(&double, &server.url(), TOKEN);
    server
        .wait_for("snapshot and a healthy heartbeat", WAIT, |r| {
            !r.snapshots.is_empty() && r.heartbeats.last() == Some(&ManagerHealth::Ok)
        })
        .await;
    let id = Uuid::new_v4();
    server.manager().create_workspace(spec(id)).await.unwrap();
    server
        .wait_for("creating", WAIT, |r| !of(r, id).is_empty())
        .await;
    let heartbeats = server.recorded().heartbeats.len();
    // Something else is written, the history is compacted past it and the
    // watches end: resuming from what the watchers saw last is 410 Gone, so
    // they relist.
    h.create_namespace("elsewhere").unwrap();
    h.reset_request_counts();
    h.compact();
    h.drop_watches();
    eventually("the workspace watchers relisted", WAIT, || async {
        ["pods", "persistentvolumeclaims"]
            .iter()
            .all(|r| h.request_count_for(Verb::List, r) >= 1)
    })
    .await;
    // A heartbeat after the relists: a degraded state would have been sent at
    // once (the health changed) and before it.
    let n = server.recorded().heartbeats.len();
    let r = server
        .wait_for("a heartbeat after the relists", WAIT, |r| {
            r.heartbeats.len() > n
        })
        .await;
    assert!(
        r.heartbeats[heartbeats..]
            .iter()
            .all(|h| *h == ManagerHealth::Ok),
        "{:?}",
        &r.heartbeats[heartbeats..]
    );
}
