//! The cluster's scheduling settings on a workspace pod: node selector (with
//! the architecture), tolerations, image pull secrets, priority class and user
//! namespaces (`hostUsers: false`). The pull secrets are only named: the
//! manager never reads them.

use k8s_openapi::api::core::v1::{LocalObjectReference, PodSpec, Toleration};
use lapdev_common::scheduling::{SchedulingSettings, TolerationOperator};

/// Sets the settings on `pod` (fields left unset when a setting is empty; the
/// node selector always holds `kubernetes.io/os: linux`).
pub fn apply(settings: &SchedulingSettings, pod: &mut PodSpec) {
    pod.node_selector = Some(settings.pod_node_selector());
    if !settings.tolerations.is_empty() {
        pod.tolerations = Some(
            settings
                .tolerations
                .iter()
                .map(|t| Toleration {
                    key: (!t.key.is_empty()).then(|| t.key.clone()),
                    operator: Some(
                        match t.operator {
                            TolerationOperator::Equal => "Equal",
                            TolerationOperator::Exists => "Exists",
                        }
                        .to_owned(),
                    ),
                    value: (t.operator == TolerationOperator::Equal).then(|| t.value.clone()),
                    effect: t.effect.map(|e| e.as_str().to_owned()),
                    toleration_seconds: None,
                })
                .collect(),
        );
    }
    if !settings.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(
            settings
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect(),
        );
    }
    if let Some(p) = &settings.priority_class {
        pod.priority_class_name = Some(p.clone());
    }
    if settings.user_namespaces {
        pod.host_users = Some(false);
    }
}
