//! Get, list, create, replace, delete on typed `Api`s.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::{pod, start};

#[tokio::test]
async fn create_then_get_a_pod() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods.create(&PostParams::default(), &pod("a")).await.unwrap();
    assert!(created.metadata.uid.is_some());
    let got = pods.get("a").await.unwrap();
    assert_eq!(got.metadata.resource_version, created.metadata.resource_version);
}
