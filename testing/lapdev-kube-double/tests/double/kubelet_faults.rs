//! The stand-in kubelet failing pods as real kubelets do (status, container
//! statuses and Events as `kubectl describe pod` shows them on a real cluster).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use lapdev_kube_double::{HandleError, KubeDouble, KubeletConfig, NodeSpec};
use serde_json::json;

use crate::{pod, start, status};

async fn with_node() -> (KubeDouble, Api<Pod>, Api<Event>) {
    let (double, client) = start().await;
    double.add_node("n1", NodeSpec::default()).unwrap();
    (
        double,
        Api::namespaced(client.clone(), "default"),
        Api::namespaced(client, "default"),
    )
}

fn first_container(p: &Pod) -> ContainerStatus {
    p.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .clone()
}

fn waiting(p: &Pod) -> (String, String) {
    let w = first_container(p).state.unwrap().waiting.unwrap();
    (w.reason.unwrap(), w.message.unwrap_or_default())
}

/// The events about pod `name`, found as kubectl describe finds them.
async fn events_of(events: &Api<Event>, name: &str) -> Vec<Event> {
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
}

fn count(events: &[Event], reason: &str, message: &str) -> i32 {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.message.as_deref() == Some(message))
        .map(|e| e.count.unwrap_or(0))
        .sum()
}

async fn wait_for<F: Fn(&Pod) -> bool>(pods: &Api<Pod>, name: &str, what: &str, f: F) -> Pod {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(p) = pods.get(name).await
            && f(&p)
        {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

#[tokio::test]
async fn an_image_pull_fails_then_backs_off_alternating() {
    let (double, pods, events) = with_node().await;
    let mut bad = pod("ws");
    bad.spec.as_mut().unwrap().containers[0].image = Some("nginx:no-such-tag".into());
    pods.create(&PostParams::default(), &bad).await.unwrap();
    double.kubelet_fail_image_pull("default", "ws").unwrap();

    let p = pods.get("ws").await.unwrap();
    assert_eq!(phase(&p), "Pending");
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    let (reason, message) = waiting(&p);
    assert_eq!(reason, "ErrImagePull");
    assert!(
        message.contains("failed to pull and unpack image \"docker.io/library/nginx:no-such-tag\""),
        "{message}"
    );
    let evs = events_of(&events, "ws").await;
    assert_eq!(count(&evs, "Failed", "Error: ErrImagePull"), 1);
    assert_eq!(
        count(&evs, "Pulling", "Pulling image \"nginx:no-such-tag\""),
        1
    );
    let failed = evs
        .iter()
        .find(|e| e.message.as_deref() == Some("Error: ErrImagePull"))
        .unwrap();
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(
        failed.source.as_ref().unwrap().component.as_deref(),
        Some("kubelet")
    );
    assert_eq!(
        failed.involved_object.field_path.as_deref(),
        Some("spec.containers{main}")
    );
    assert_eq!(failed.involved_object.uid, p.metadata.uid);

    let backoff = "Back-off pulling image \"nginx:no-such-tag\"";
    double.kubelet_retry("default", "ws").unwrap();
    let p = pods.get("ws").await.unwrap();
    assert_eq!(
        waiting(&p),
        ("ImagePullBackOff".to_owned(), backoff.to_owned())
    );
    assert_eq!(
        count(&events_of(&events, "ws").await, "BackOff", backoff),
        1
    );

    double.kubelet_retry("default", "ws").unwrap();
    assert_eq!(waiting(&pods.get("ws").await.unwrap()).0, "ErrImagePull");
    double.kubelet_retry("default", "ws").unwrap();
    let p = pods.get("ws").await.unwrap();
    assert_eq!(waiting(&p).0, "ImagePullBackOff");
    assert_eq!(phase(&p), "Pending");
    let evs = events_of(&events, "ws").await;
    // Repeats are counted on one Event each, not written as new ones.
    assert_eq!(count(&evs, "BackOff", backoff), 2);
    assert_eq!(count(&evs, "Failed", "Error: ErrImagePull"), 2);
    assert_eq!(
        count(&evs, "Pulling", "Pulling image \"nginx:no-such-tag\""),
        2
    );
    assert_eq!(
        evs.iter()
            .filter(|e| e.reason.as_deref() == Some("BackOff"))
            .count(),
        1
    );
    let b = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("BackOff"))
        .unwrap();
    assert!(b.last_timestamp.is_some() && b.first_timestamp.is_some());
}

#[tokio::test]
async fn a_failing_pod_is_never_started_by_the_stand_in_kubelet() {
    let (double, pods, _events) = with_node().await;
    pods.create(&PostParams::default(), &pod("bad"))
        .await
        .unwrap();
    double.kubelet_fail_image_pull("default", "bad").unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(20),
        ..KubeletConfig::default()
    });
    // A pod created after the kubelet saw "bad" is started after it was
    // looked at; once it runs, "bad" has had its turn.
    pods.create(&PostParams::default(), &pod("good"))
        .await
        .unwrap();
    wait_for(&pods, "good", "good running", |p| phase(p) == "Running").await;
    assert_eq!(phase(&pods.get("bad").await.unwrap()), "Pending");
    // Recovered (the image exists now), it runs.
    double.kubelet_recover("default", "bad").unwrap();
    let p = pods.get("bad").await.unwrap();
    assert_eq!(phase(&p), "Running");
    assert!(first_container(&p).ready);
    // Deleted, the kubelet confirms it as any other.
    pods.delete("bad", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.get("bad").await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "bad never went");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_invalid_image_name_stays_invalid() {
    let (double, pods, events) = with_node().await;
    let mut bad = pod("ws");
    bad.spec.as_mut().unwrap().containers[0].image = Some("Nginx:UPPER".into());
    pods.create(&PostParams::default(), &bad).await.unwrap();
    double.kubelet_fail_invalid_image("default", "ws").unwrap();
    double.kubelet_retry("default", "ws").unwrap();
    let p = pods.get("ws").await.unwrap();
    let (reason, message) = waiting(&p);
    assert_eq!(reason, "InvalidImageName");
    assert_eq!(
        message,
        "Failed to apply default image tag \"Nginx:UPPER\": couldn't parse image name \"Nginx:UPPER\": invalid reference format"
    );
    let evs = events_of(&events, "ws").await;
    assert_eq!(count(&evs, "InspectFailed", &message), 2);
    assert_eq!(count(&evs, "Failed", "Error: InvalidImageName"), 2);
}

#[tokio::test]
async fn a_crash_loop_backs_off_and_keeps_the_last_state() {
    let (double, pods, events) = with_node().await;
    let created = pods
        .create(&PostParams::default(), &pod("ws"))
        .await
        .unwrap();
    let uid = created.metadata.uid.unwrap();
    double.kubelet_crash_loop("default", "ws", true).unwrap();
    let p = pods.get("ws").await.unwrap();
    assert_eq!(phase(&p), "Running");
    let c = first_container(&p);
    assert!(!c.ready);
    assert_eq!(c.restart_count, 1);
    let (reason, message) = waiting(&p);
    assert_eq!(reason, "CrashLoopBackOff");
    assert_eq!(
        message,
        format!("back-off 10s restarting failed container=main pod=ws_default({uid})")
    );
    let last = c.last_state.unwrap().terminated.unwrap();
    assert_eq!(
        (last.reason.as_deref(), last.exit_code),
        (Some("OOMKilled"), 137)
    );
    let ready = p.status.as_ref().unwrap().conditions.as_ref().unwrap();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False")
    );

    for _ in 0..5 {
        double.kubelet_retry("default", "ws").unwrap();
    }
    let p = pods.get("ws").await.unwrap();
    let c = first_container(&p);
    assert_eq!(c.restart_count, 6);
    assert!(
        waiting(&p).1.starts_with("back-off 5m0s restarting"),
        "{}",
        waiting(&p).1
    );
    assert_eq!(
        c.last_state.unwrap().terminated.unwrap().reason.as_deref(),
        Some("OOMKilled")
    );
    let msg = format!("Back-off restarting failed container main in pod ws_default({uid})");
    assert_eq!(count(&events_of(&events, "ws").await, "BackOff", &msg), 6);

    // A plain crash is an Error with exit code 1.
    pods.create(&PostParams::default(), &pod("other"))
        .await
        .unwrap();
    double
        .kubelet_crash_loop("default", "other", false)
        .unwrap();
    let last = first_container(&pods.get("other").await.unwrap())
        .last_state
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((last.reason.as_deref(), last.exit_code), (Some("Error"), 1));
}

fn pvc(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap()
}

fn pod_with_claim(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "ubuntu:24.04", "volumeMounts": [{"name": "home", "mountPath": "/home"}]}],
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn an_evicted_pod_fails_and_lets_its_claim_go() {
    let (double, pods, events) = with_node().await;
    let client = double.client().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
    pvcs.create(&PostParams::default(), &pvc("home"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod_with_claim("ws", "home"))
        .await
        .unwrap();
    double
        .set_pod_phase("default", "ws", "Running", vec![])
        .unwrap();
    let message =
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 20Mi.";
    double.kubelet_evict("default", "ws", message).unwrap();
    let p = pods.get("ws").await.unwrap();
    let s = p.status.clone().unwrap();
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    assert_eq!(s.reason.as_deref(), Some("Evicted"));
    assert_eq!(s.message.as_deref(), Some(message));
    assert!(first_container(&p).state.unwrap().terminated.is_some());
    assert!(
        s.conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    );
    assert_eq!(
        count(&events_of(&events, "ws").await, "Evicted", message),
        1
    );
    // Final: a retry changes nothing.
    double.kubelet_retry("default", "ws").unwrap();
    assert_eq!(
        pods.get("ws")
            .await
            .unwrap()
            .status
            .unwrap()
            .reason
            .as_deref(),
        Some("Evicted")
    );
    // A Failed pod no longer holds its claim.
    pvcs.delete("home", &DeleteParams::default()).await.unwrap();
    assert_eq!(status(pvcs.get("home").await).code, 404);
}

#[tokio::test]
async fn a_volume_that_never_attaches_keeps_the_pod_creating() {
    let (double, pods, events) = with_node().await;
    let client = double.client().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
    let claim = pvcs
        .create(&PostParams::default(), &pvc("home"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod_with_claim("ws", "home"))
        .await
        .unwrap();
    double.kubelet_fail_volume_attach("default", "ws").unwrap();
    double.kubelet_retry("default", "ws").unwrap();
    let p = pods.get("ws").await.unwrap();
    assert_eq!(phase(&p), "Pending");
    assert_eq!(waiting(&p).0, "ContainerCreating");
    let evs = events_of(&events, "ws").await;
    let attach = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailedAttachVolume"))
        .unwrap();
    let pv = format!("pvc-{}", claim.metadata.uid.unwrap());
    assert!(
        attach.message.as_deref().unwrap().starts_with(&format!(
            "AttachVolume.Attach failed for volume \"{pv}\" : "
        )),
        "{:?}",
        attach.message
    );
    assert_eq!(attach.count, Some(2));
    assert_eq!(
        attach.source.as_ref().unwrap().component.as_deref(),
        Some("attachdetach-controller")
    );
    let mount = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailedMount"))
        .unwrap();
    assert!(
        mount
            .message
            .as_deref()
            .unwrap()
            .contains("unmounted volumes=[home]")
    );
    assert_eq!(mount.count, Some(2));
    // Nothing to attach: refused.
    pods.create(&PostParams::default(), &pod("plain"))
        .await
        .unwrap();
    assert!(matches!(
        double.kubelet_fail_volume_attach("default", "plain"),
        Err(HandleError::NoClaim(_))
    ));
    assert!(matches!(
        double.kubelet_retry("default", "plain"),
        Err(HandleError::NotFailing(_))
    ));
}

#[tokio::test]
async fn a_pod_with_no_node_that_fits_cannot_be_failed() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("ws"))
        .await
        .unwrap();
    assert!(matches!(
        double.kubelet_fail_image_pull("default", "ws"),
        Err(HandleError::Unschedulable(_, _))
    ));
}
