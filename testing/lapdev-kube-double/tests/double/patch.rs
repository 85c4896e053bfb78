//! PATCH: JSON merge, strategic merge, JSON patch and server-side apply.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{pod, rv, start, status};

#[tokio::test]
async fn merge_patch_adds_and_removes_fields() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let p = json!({"metadata": {"labels": {"tier": "front", "app": null}}});
    let patched = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let labels = patched.metadata.labels.unwrap();
    assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
    assert!(!labels.contains_key("app"));
}

#[tokio::test]
async fn strategic_merge_merges_containers_by_name() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let p = json!({"spec": {"containers": [{"name": "main", "image": "nginx:1.28"}]}});
    let patched = pods
        .patch("a", &PatchParams::default(), &Patch::Strategic(&p))
        .await
        .unwrap();
    let c = &patched.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("nginx:1.28"));
    assert_eq!(
        c.termination_message_path.as_deref(),
        Some("/dev/termination-log"),
        "other fields kept"
    );
}

#[tokio::test]
async fn json_patch_applies_and_a_failed_test_is_invalid() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/a", "value": "2"}]))
            .unwrap();
    let patched = cms
        .patch("c", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["a"], "2");
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/a", "value": "9"}])).unwrap();
    let s = status(
        cms.patch("c", &PatchParams::default(), &Patch::Json::<()>(ops))
            .await,
    );
    assert_eq!(s.code, 422);
}

#[tokio::test]
async fn patch_with_a_stale_resource_version_is_a_conflict() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let p = json!({"metadata": {"resourceVersion": "1"}, "data": {"a": "1"}});
    let s = status(
        cms.patch("c", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn patching_a_missing_object_is_not_found() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let s = status(
        cms.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
            .await,
    );
    assert_eq!(s.code, 404);
}

fn applied_cm(value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"owner": "lapdev"}}, "data": {"key": value}})
}

#[tokio::test]
async fn apply_creates_if_missing_and_reapply_is_a_no_op() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PatchParams::apply("lapdev");
    let created = cms
        .patch("c", &pp, &Patch::Apply(applied_cm("1")))
        .await
        .unwrap();
    assert_eq!(created.data.as_ref().unwrap()["key"], "1");
    let managed = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(managed.len(), 1);
    assert_eq!(
        (
            managed[0].manager.as_deref(),
            managed[0].operation.as_deref()
        ),
        (Some("lapdev"), Some("Apply"))
    );
    let again = cms
        .patch("c", &pp, &Patch::Apply(applied_cm("1")))
        .await
        .unwrap();
    assert_eq!(
        rv(&again.metadata),
        rv(&created.metadata),
        "an idempotent apply changes nothing"
    );
    let changed = cms
        .patch("c", &pp, &Patch::Apply(applied_cm("2")))
        .await
        .unwrap();
    assert!(rv(&changed.metadata) > rv(&created.metadata));
}

#[tokio::test]
async fn apply_conflicts_with_another_manager_unless_forced() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.patch(
        "c",
        &PatchParams::apply("lapdev"),
        &Patch::Apply(applied_cm("1")),
    )
    .await
    .unwrap();
    let s = status(
        cms.patch(
            "c",
            &PatchParams::apply("intruder"),
            &Patch::Apply(applied_cm("2")),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message.contains("conflict with \"lapdev\""),
        "{}",
        s.message
    );
    assert!(s.message.contains(".data.key"), "{}", s.message);
    // The same value is no conflict: ownership is shared.
    cms.patch(
        "c",
        &PatchParams::apply("friend"),
        &Patch::Apply(applied_cm("1")),
    )
    .await
    .unwrap();
    let forced = cms
        .patch(
            "c",
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(applied_cm("2")),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["key"], "2");
}

#[tokio::test]
async fn apply_removes_fields_the_manager_stopped_applying() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PatchParams::apply("lapdev");
    let two = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
    cms.patch("c", &pp, &Patch::Apply(two)).await.unwrap();
    let one = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let after = cms.patch("c", &pp, &Patch::Apply(one)).await.unwrap();
    let data = after.data.unwrap();
    assert!(data.contains_key("a") && !data.contains_key("b"));
}

#[tokio::test]
async fn apply_of_a_pod_twice_keeps_defaults_and_changes_nothing() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let body = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ws", "labels": {"lapdev.io/workspace": "ws"}},
        "spec": {"containers": [{"name": "main", "image": "ubuntu:24.04", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]},
    });
    let pp = PatchParams::apply("lapdev-kube-manager");
    let first = pods.patch("ws", &pp, &Patch::Apply(&body)).await.unwrap();
    let second = pods.patch("ws", &pp, &Patch::Apply(&body)).await.unwrap();
    assert_eq!(rv(&first.metadata), rv(&second.metadata));
    assert_eq!(
        second.status.unwrap().qos_class.as_deref(),
        Some("Burstable")
    );
}

#[tokio::test]
async fn apply_needs_a_field_manager() {
    let (_double, client) = start().await;
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/c")
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&applied_cm("1")).unwrap())
        .unwrap();
    let s = status(client.request_text(req).await);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn apply_accepts_yaml_bodies() {
    let (_double, client) = start().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  key: from-yaml\n";
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/c?fieldManager=kubectl")
        .header("content-type", "application/apply-patch+yaml")
        .body(yaml.as_bytes().to_vec())
        .unwrap();
    let cm: ConfigMap = client.request(req).await.unwrap();
    assert_eq!(cm.data.unwrap()["key"], "from-yaml");
}

#[tokio::test]
async fn status_subresource_writes_only_status() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let p = json!({"status": {"phase": "Running"}, "metadata": {"labels": {"ignored": "yes"}}});
    let patched = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
    assert!(!patched.metadata.labels.unwrap().contains_key("ignored"));
    assert_eq!(patched.metadata.generation, Some(1));
    // And the main resource ignores status.
    let p = json!({"status": {"phase": "Failed"}});
    let patched = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn strict_field_validation_rejects_unknown_fields() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let typo = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ws"},
        "spec": {"containers": [{"name": "main", "image": "ubuntu", "imagePullPolicyy": "Always"}]},
    });
    let strict = PatchParams::apply("lapdev").validation_strict();
    let s = status(pods.patch("ws", &strict, &Patch::Apply(&typo)).await);
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    assert!(
        s.message.contains(
            "strict decoding error: unknown field \"spec.containers[0].imagePullPolicyy\""
        ),
        "{}",
        s.message
    );
    // Without Strict the field is dropped, as the real decoder drops it.
    pods.patch("ws", &PatchParams::apply("lapdev"), &Patch::Apply(&typo))
        .await
        .unwrap();
    let req = http::Request::get("/api/v1/namespaces/default/pods/ws")
        .body(Vec::new())
        .unwrap();
    let raw: serde_json::Value = client.request(req).await.unwrap();
    assert!(
        raw.pointer("/spec/containers/0/imagePullPolicyy").is_none(),
        "{raw}"
    );
}
