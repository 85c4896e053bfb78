//! The double's own tests, driven through the real `kube` client (and kubectl).
//! Each pins a behaviour to what the Kubernetes documentation says.

mod binary;
mod crud;
mod discovery;
mod faults;
mod kubectl;
mod kubelet_faults;
mod node_faults;
mod patch;
mod pod_security;
mod pvc;
mod rbac;
mod robustness;
mod scale;
mod scheduling;
mod storage;
mod watch;

use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
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

/// The `Status` of a failed call; panics when the call did not fail with one.
pub fn status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A resourceVersion as a number (the double's are integers, like etcd revisions).
pub fn rv(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .expect("resourceVersion")
        .parse()
        .expect("numeric rv")
}
