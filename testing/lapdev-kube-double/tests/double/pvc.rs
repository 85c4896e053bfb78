//! PVC protection: a claim used by a pod is kept until the pod goes.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::{start, status};

fn pvc(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
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
async fn a_claim_gets_the_protection_finalizer() {
    let (_double, client) = start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
    let created = pvcs
        .create(&PostParams::default(), &pvc("home"))
        .await
        .unwrap();
    assert_eq!(
        created.metadata.finalizers.unwrap(),
        ["kubernetes.io/pvc-protection"]
    );
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    // Unused, it goes at once.
    pvcs.delete("home", &DeleteParams::default()).await.unwrap();
    assert_eq!(status(pvcs.get("home").await).code, 404);
}

#[tokio::test]
async fn a_claim_in_use_waits_for_its_pod() {
    let (double, client) = start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pvcs.create(&PostParams::default(), &pvc("home"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod_with_claim("ws", "home"))
        .await
        .unwrap();
    let from = double.resource_version().to_string();
    let mut stream = pvcs
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let pending = pvcs
        .delete("home", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("still there");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let kept = pvcs.get("home").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_some());
    assert_eq!(
        kept.metadata.finalizers.unwrap(),
        ["kubernetes.io/pvc-protection"]
    );
    pods.delete("ws", &DeleteParams::default()).await.unwrap();
    assert_eq!(status(pvcs.get("home").await).code, 404);
    let mut saw_deleted = false;
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        if matches!(e, WatchEvent::Deleted(_)) {
            saw_deleted = true;
            break;
        }
    }
    assert!(saw_deleted, "a DELETED event for the claim");
}

#[tokio::test]
async fn removing_the_last_finalizer_of_a_terminating_object_deletes_it() {
    let (_double, client) = start().await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, "default");
    let cm = serde_json::from_value(
        json!({"metadata": {"name": "c", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(
        cms.get("c")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let p = json!({"metadata": {"finalizers": null}});
    cms.patch("c", &Default::default(), &kube::api::Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(status(cms.get("c").await).code, 404);
}
