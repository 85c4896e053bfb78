//! Pod Security admission by namespace label, with the real refusal message.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{start, status};

async fn label(namespaces: &Api<Namespace>, ns: &str, level: &str) {
    let apply = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": level}},
    });
    namespaces
        .patch(
            ns,
            &PatchParams::apply("lapdev-server").force(),
            &Patch::Apply(&apply),
        )
        .await
        .unwrap();
}

fn pod(name: &str, security: serde_json::Value, pod_security: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "securityContext": pod_security,
            "containers": [{"name": "workspace", "image": "ubuntu:24.04", "securityContext": security}],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_restricted_namespace_refuses_what_the_standard_forbids() {
    let (double, client) = start().await;
    double.create_namespace("ws").unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    label(&namespaces, "ws", "restricted").await;
    let pods: Api<Pod> = Api::namespaced(client, "ws");
    let s = status(
        pods.create(&PostParams::default(), &pod("root", json!({}), json!({})))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "pods \"root\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"workspace\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"workspace\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"workspace\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"workspace\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    let restricted = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    let pod_level = json!({"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
    pods.create(
        &PostParams::default(),
        &pod("ok", restricted.clone(), pod_level),
    )
    .await
    .unwrap();
    // Dry runs are judged the same way.
    let s = status(
        pods.create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &pod("root", json!({}), json!({})),
        )
        .await,
    );
    assert_eq!(s.code, 403);
    // runAsUser 0 is refused even with runAsNonRoot set.
    let s = status(
        pods.create(
            &PostParams::default(),
            &pod("zero", restricted, json!({"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}})),
        )
        .await,
    );
    assert!(
        s.message
            .ends_with("runAsUser=0 (pod must not set runAsUser=0)"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn baseline_allows_root_but_not_privilege_and_labels_can_change() {
    let (double, client) = start().await;
    double.create_namespace("ws").unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    label(&namespaces, "ws", "baseline").await;
    let pods: Api<Pod> = Api::namespaced(client, "ws");
    // Root with the runtime's default capabilities and escalation allowed: fine.
    pods.create(
        &PostParams::default(),
        &pod(
            "root",
            json!({"runAsUser": 0, "allowPrivilegeEscalation": true}),
            json!({}),
        ),
    )
    .await
    .unwrap();
    let privileged = pod(
        "priv",
        json!({"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}),
        json!({}),
    );
    let s = status(pods.create(&PostParams::default(), &privileged).await);
    assert_eq!(
        s.message,
        "pods \"priv\" is forbidden: violates PodSecurity \"baseline:latest\": non-default capabilities (container \"workspace\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add), privileged (container \"workspace\" must not set securityContext.privileged=true)"
    );
    let mut host: Pod = pod("host", json!({}), json!({}));
    host.spec.as_mut().unwrap().host_network = Some(true);
    let s = status(pods.create(&PostParams::default(), &host).await);
    assert!(
        s.message.ends_with("host namespaces (hostNetwork=true)"),
        "{}",
        s.message
    );
    // The admin relabels the namespace: the same pod is admitted.
    label(&namespaces, "ws", "privileged").await;
    pods.create(&PostParams::default(), &privileged)
        .await
        .unwrap();
}
