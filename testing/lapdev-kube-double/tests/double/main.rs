//! The double's own tests, driven through the real `kube` client (and kubectl).
//! Each pins a behaviour to what the Kubernetes documentation says.

mod crud;

use k8s_openapi::api::core::v1::Pod;
use lapdev_kube_double::KubeDouble;
use serde_json::json;

/// A double and a client for it.
pub async fn start() -> (KubeDouble, kube::Client) {
    let double = KubeDouble::start().await.expect("start the double");
    let client = double.client().await.expect("client");
    (double, client)
}

/// A minimal valid pod.
pub fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]},
    }))
    .expect("pod")
}
