//! StorageClasses and claims: expansion only where the class allows it, never
//! shrinking, immutable specs, default classes and `WaitForFirstConsumer`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use lapdev_kube_double::{KubeDouble, KubeletConfig, NodeSpec, SELECTED_NODE};
use serde_json::json;

use crate::{start, status};

fn claim(name: &str, class: Option<&str>, size: &str) -> PersistentVolumeClaim {
    let mut spec =
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
    if let Some(c) = class {
        spec["storageClassName"] = json!(c);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn pod_with_claim(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "ubuntu:24.04"}],
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }))
    .unwrap()
}

fn phase(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn wait_claim<F: Fn(&PersistentVolumeClaim) -> bool>(
    pvcs: &Api<PersistentVolumeClaim>,
    name: &str,
    what: &str,
    f: F,
) -> PersistentVolumeClaim {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = pvcs.get(name).await.unwrap();
        if f(&c) {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn with_kubelet() -> (KubeDouble, Api<PersistentVolumeClaim>, kube::Client) {
    let (double, client) = start().await;
    double.add_node("n1", NodeSpec::default()).unwrap();
    (double, Api::namespaced(client.clone(), "default"), client)
}

fn resize(size: &str) -> serde_json::Value {
    json!({"spec": {"resources": {"requests": {"storage": size}}}})
}

#[tokio::test]
async fn a_bound_claim_grows_only_where_its_class_allows_and_never_shrinks() {
    let (double, pvcs, _client) = with_kubelet().await;
    double
        .add_storage_class("fixed", false, false, false)
        .unwrap();
    double
        .add_storage_class("growable", true, false, false)
        .unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    for (name, class) in [("a", "fixed"), ("b", "growable")] {
        pvcs.create(&PostParams::default(), &claim(name, Some(class), "10Gi"))
            .await
            .unwrap();
        wait_claim(&pvcs, name, "bound", |c| phase(c) == "Bound").await;
    }
    let s = status(
        pvcs.patch("b", &PatchParams::default(), &Patch::Merge(&resize("5Gi")))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        "PersistentVolumeClaim \"b\" is invalid: spec.resources.requests.storage: Forbidden: field can not be less than previous value"
    );
    let s = status(
        pvcs.patch("a", &PatchParams::default(), &Patch::Merge(&resize("20Gi")))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "persistentvolumeclaims \"a\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"
    );
    pvcs.patch("b", &PatchParams::default(), &Patch::Merge(&resize("20Gi")))
        .await
        .unwrap();
    let grown = wait_claim(&pvcs, "b", "capacity 20Gi", |c| {
        c.status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .is_some_and(|cap| cap["storage"].0 == "20Gi")
    })
    .await;
    assert_eq!(phase(&grown), "Bound");
    // The same size again is no change at all.
    pvcs.patch("b", &PatchParams::default(), &Patch::Merge(&resize("20Gi")))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_claim_spec_is_immutable_but_for_a_bound_claims_request() {
    let (double, pvcs, _client) = with_kubelet().await;
    double
        .add_storage_class("growable", true, false, false)
        .unwrap();
    double
        .add_storage_class("other", true, false, false)
        .unwrap();
    pvcs.create(
        &PostParams::default(),
        &claim("c", Some("growable"), "10Gi"),
    )
    .await
    .unwrap();
    let immutable = "PersistentVolumeClaim \"c\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";
    // Pending (nothing bound it): even the request is fixed.
    let s = status(
        pvcs.patch("c", &PatchParams::default(), &Patch::Merge(&resize("20Gi")))
            .await,
    );
    assert_eq!((s.code, s.message.as_str()), (422, immutable));
    for change in [
        json!({"spec": {"storageClassName": "other"}}),
        json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
    ] {
        let s = status(
            pvcs.patch("c", &PatchParams::default(), &Patch::Merge(&change))
                .await,
        );
        assert_eq!((s.code, s.message.as_str()), (422, immutable), "{change}");
    }
}

#[tokio::test]
async fn a_claim_without_a_class_gets_the_default_one() {
    let (double, pvcs, client) = with_kubelet().await;
    pvcs.create(&PostParams::default(), &claim("before", None, "1Gi"))
        .await
        .unwrap();
    double
        .add_storage_class("standard", true, false, true)
        .unwrap();
    let c = pvcs
        .create(&PostParams::default(), &claim("after", None, "1Gi"))
        .await
        .unwrap();
    assert_eq!(
        c.spec.unwrap().storage_class_name.as_deref(),
        Some("standard")
    );
    // An explicit "" means no class, and stays so.
    let c = pvcs
        .create(&PostParams::default(), &claim("none", Some(""), "1Gi"))
        .await
        .unwrap();
    assert_eq!(c.spec.unwrap().storage_class_name.as_deref(), Some(""));
    let before = pvcs.get("before").await.unwrap();
    assert_eq!(before.spec.unwrap().storage_class_name, None);
    let classes: Api<StorageClass> = Api::all(client);
    let sc = classes.get("standard").await.unwrap();
    assert_eq!(sc.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(sc.allow_volume_expansion, Some(true));
    let s = status(
        classes
            .patch(
                "standard",
                &PatchParams::default(),
                &Patch::Merge(&json!({"parameters": {"type": "pd-ssd"}})),
            )
            .await,
    );
    assert_eq!(
        (s.code, s.message.as_str()),
        (
            422,
            "StorageClass \"standard\" is invalid: parameters: Forbidden: updates to parameters are forbidden."
        )
    );
}

#[tokio::test]
async fn wait_for_first_consumer_binds_once_a_pod_is_scheduled() {
    let (double, pvcs, client) = with_kubelet().await;
    double
        .add_storage_class("late", false, true, false)
        .unwrap();
    double
        .add_storage_class("now", false, false, false)
        .unwrap();
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(10),
        ..KubeletConfig::default()
    });
    pvcs.create(&PostParams::default(), &claim("home", Some("late"), "1Gi"))
        .await
        .unwrap();
    pvcs.create(&PostParams::default(), &claim("data", Some("now"), "1Gi"))
        .await
        .unwrap();
    wait_claim(&pvcs, "data", "immediate binds", |c| phase(c) == "Bound").await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let list = events
            .list(
                &ListParams::default()
                    .fields("involvedObject.name=home,reason=WaitForFirstConsumer"),
            )
            .await
            .unwrap();
        if let Some(e) = list.items.into_iter().next() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no WaitForFirstConsumer event"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        waiting.message.as_deref(),
        Some("waiting for first consumer to be created before binding")
    );
    assert_eq!(phase(&pvcs.get("home").await.unwrap()), "Pending");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod_with_claim("ws", "home"))
        .await
        .unwrap();
    let bound = wait_claim(&pvcs, "home", "bound after the pod", |c| {
        phase(c) == "Bound"
    })
    .await;
    assert_eq!(bound.metadata.annotations.unwrap()[SELECTED_NODE], "n1");
}
