//! Installing the manager into a provider cluster by server-side apply: the GKE
//! stand-in hands out a cluster whose endpoint is the Kubernetes API test double,
//! the provider exchanges the key for an access token, and the manager's objects are
//! applied through a `kube::Client` built from endpoint, CA and token.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use lapdev_kube::manifest::{ManifestParams, manifest_objects};
use lapdev_kube::provider::install::{FIELD_MANAGER, apply_objects, install_manager, kube_client};
use lapdev_kube::provider::testing::GkeStandIn;
use lapdev_kube::provider::{
    ClusterAccess, ClusterMode, GcpConfig, GcpProvider, K8sProvider, NewProviderCluster,
    ProviderError, ServiceAccountKey,
};
use lapdev_kube_double::{KubeDouble, Verb};

fn params() -> ManifestParams {
    ManifestParams::new(
        "https://lapdev.example.com",
        format!("lapdev_ct_{}", "A".repeat(43)),
        "gke-1",
    )
}

#[tokio::test]
async fn a_created_cluster_gets_the_manager_by_server_side_apply_and_reapplying_changes_nothing() {
    let double = KubeDouble::start().await.unwrap();
    let gke = GkeStandIn::start().await.unwrap();
    gke.set_cluster_endpoint(&double.url(), None);
    let provider = GcpProvider::new(
        GcpConfig::from_value(&gke.config_json(Some("europe-west1"))).unwrap(),
        ServiceAccountKey::parse(&gke.key_json()).unwrap(),
        lapdev_kube::provider::EndpointPolicy::AllowTestStandIns,
    )
    .await
    .unwrap();

    let op = provider
        .create_cluster(&NewProviderCluster {
            name: "gke-1".into(),
            location: None,
            mode: ClusterMode::Autopilot,
        })
        .await
        .unwrap();
    provider
        .wait_operation(&op, Duration::from_secs(20), Duration::from_millis(20))
        .await
        .unwrap();
    let cluster = provider.get_cluster("europe-west1", "gke-1").await.unwrap();
    let access = provider.cluster_access(&cluster).await.unwrap();
    assert_eq!(access.server_url, double.url());
    assert_eq!(
        gke.tokens_issued(),
        1,
        "the key was exchanged for an access token"
    );

    let objects = manifest_objects(&params()).unwrap();
    let first = install_manager(&access, &objects).await.unwrap();
    assert_eq!(first.len(), objects.len());

    let handle = double.handle();
    let ns: Namespace = handle.get("", "lapdev").unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let _: Namespace = handle.get("", "lapdev-workspaces").unwrap();
    let _: ServiceAccount = handle.get("lapdev", "lapdev-kube-manager").unwrap();
    let _: ClusterRole = handle.get("", "lapdev-kube-manager").unwrap();
    let _: ClusterRoleBinding = handle.get("", "lapdev-kube-manager").unwrap();
    let _: Role = handle
        .get("lapdev-workspaces", "lapdev-kube-manager")
        .unwrap();
    let _: RoleBinding = handle
        .get("lapdev-workspaces", "lapdev-kube-manager")
        .unwrap();
    let secret: Secret = handle.get("lapdev", "lapdev-kube-manager").unwrap();
    assert!(secret.string_data.is_some() || secret.data.is_some());
    let deployment: Deployment = handle.get("lapdev", "lapdev-kube-manager").unwrap();
    let managers: Vec<_> = deployment
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == FIELD_MANAGER), "{managers:?}");

    // Applying again (a retried install) changes nothing.
    let rv_before = handle.resource_version();
    let client = kube_client(&access).unwrap();
    let second = apply_objects(&client, &objects).await.unwrap();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.resource_version, b.resource_version, "{} changed", a.name);
    }
    assert_eq!(handle.resource_version(), rv_before);
    assert!(handle.request_count(Verb::Patch) >= 2 * objects.len() as u64);
}

#[tokio::test]
async fn an_apply_the_cluster_refuses_names_the_object() {
    let double = KubeDouble::start().await.unwrap();
    double.handle().deny(Verb::Patch, "deployments");
    let access = ClusterAccess {
        server_url: double.url(),
        ca_pem: None,
        access_token: "ya29.test".into(),
    };
    let objects = manifest_objects(&params()).unwrap();
    let err = install_manager(&access, &objects).await.unwrap_err();
    match err {
        ProviderError::Apply { object, .. } => {
            assert_eq!(object, "Deployment/lapdev/lapdev-kube-manager")
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    // A broken CA bundle is refused before any call.
    let bad = ClusterAccess {
        ca_pem: Some("not a certificate".into()),
        ..access
    };
    assert!(matches!(
        kube_client(&bad),
        Err(ProviderError::KubeClient(_))
    ));
}
