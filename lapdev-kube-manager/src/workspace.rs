//! Workspaces in the cluster: the objects a workspace is made of (pure builders,
//! [`home_pvc`] and [`workspace_pod`]) and the commands that apply and delete them
//! ([`Workspaces`]).
//!
//! A workspace is a `PersistentVolumeClaim` (`ws-<id>-home`) and a `Pod`
//! (`ws-<id>`) in the workspace namespace. Names are derived from the workspace
//! id only, so every command is idempotent: create and start are server-side
//! apply with the field manager [`FIELD_MANAGER`] (applying twice changes
//! nothing), stop deletes the pod and keeps the claim, delete removes both and
//! treats "already gone" as success.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, SeccompProfile,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use lapdev_common::kube::WorkspaceSpec;
use lapdev_common::status::WorkspaceStatus;
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::WorkspaceObservation;
use uuid::Uuid;

use crate::error::{KubeCallError, call};
use crate::watch::{Claim, PodState, observe};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "lapdev-kube-manager";
/// `app.kubernetes.io/managed-by` on every object the manager creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "lapdev";
/// The label carrying the workspace id; the watchers select on it.
pub const WORKSPACE_ID_LABEL: &str = "lapdev.dev/workspace-id";
/// The annotation carrying the workspace's user-facing name.
pub const WORKSPACE_NAME_ANNOTATION: &str = "lapdev.dev/workspace-name";
/// The workspace container's name.
pub const CONTAINER_NAME: &str = "workspace";
/// Where the home volume is mounted.
pub const HOME_MOUNT_PATH: &str = "/home/lapdev";

/// The pod's name for a workspace.
pub fn pod_name(id: Uuid) -> String {
    format!("ws-{id}")
}

/// The home volume claim's name for a workspace.
pub fn pvc_name(id: Uuid) -> String {
    format!("ws-{id}-home")
}

/// The workspace id of a labelled object.
pub fn workspace_id_of(meta: &ObjectMeta) -> Option<Uuid> {
    meta.labels.as_ref()?.get(WORKSPACE_ID_LABEL)?.parse().ok()
}

/// How workspace pods and volumes are set up, beyond what a spec says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceSettings {
    /// Namespace of workspaces.
    pub namespace: String,
    /// Run the container as this uid (implies non-root).
    pub run_as_user: Option<i64>,
    /// Require a non-root user even when no uid is set (the image must declare one).
    pub run_as_non_root: bool,
    /// Storage class of the home volume; `None`: the cluster's default.
    pub storage_class: Option<String>,
}

/// A spec the manager refuses before calling Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No image.
    #[error("the workspace image is empty")]
    EmptyImage,
    /// An image reference no registry can serve (it has whitespace in it).
    #[error("invalid image {0:?}: an image reference has no whitespace")]
    InvalidImage(String),
    /// A resource amount that is zero or negative.
    #[error("{0} must be positive")]
    NotPositive(&'static str),
}

impl From<SpecError> for HrpcError {
    fn from(e: SpecError) -> Self {
        HrpcError::invalid_argument(e.to_string())
    }
}

/// Checks what Kubernetes would otherwise refuse less clearly.
pub fn validate(spec: &WorkspaceSpec) -> Result<(), SpecError> {
    if spec.image.trim().is_empty() {
        return Err(SpecError::EmptyImage);
    }
    if spec.image.chars().any(char::is_whitespace) {
        return Err(SpecError::InvalidImage(spec.image.clone()));
    }
    for (name, v) in [
        ("cpu_millis", spec.cpu_millis),
        ("memory_bytes", spec.memory_bytes),
        ("storage_bytes", spec.storage_bytes),
    ] {
        if v <= 0 {
            return Err(SpecError::NotPositive(name));
        }
    }
    Ok(())
}

fn labels(id: Uuid) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (WORKSPACE_ID_LABEL.to_owned(), id.to_string()),
        (
            "app.kubernetes.io/name".to_owned(),
            "lapdev-workspace".to_owned(),
        ),
    ])
}

fn meta(name: String, spec: &WorkspaceSpec, settings: &WorkspaceSettings) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(settings.namespace.clone()),
        labels: Some(labels(spec.workspace_id)),
        annotations: Some(BTreeMap::from([(
            WORKSPACE_NAME_ANNOTATION.to_owned(),
            spec.name.clone(),
        )])),
        ..Default::default()
    }
}

/// The workspace's home volume claim.
pub fn home_pvc(spec: &WorkspaceSpec, settings: &WorkspaceSettings) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(pvc_name(spec.workspace_id), spec, settings),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: settings.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(spec.storage_bytes.to_string()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The workspace's pod: the image with CPU and memory requested and limited,
/// the home volume mounted, and privileges dropped (no privilege escalation,
/// no capabilities, `RuntimeDefault` seccomp, no service account token).
pub fn workspace_pod(spec: &WorkspaceSpec, settings: &WorkspaceSettings) -> Pod {
    let resources: BTreeMap<String, Quantity> = BTreeMap::from([
        ("cpu".to_owned(), Quantity(format!("{}m", spec.cpu_millis))),
        ("memory".to_owned(), Quantity(spec.memory_bytes.to_string())),
    ]);
    let run_as_non_root = settings.run_as_non_root || settings.run_as_user.is_some();
    let seccomp = || SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    };
    let env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            value_from: None,
        })
        .collect();
    Pod {
        metadata: meta(pod_name(spec.workspace_id), spec, settings),
        spec: Some(PodSpec {
            restart_policy: Some("Always".to_owned()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(30),
            hostname: Some("workspace".to_owned()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: run_as_non_root.then_some(true),
                run_as_user: settings.run_as_user,
                run_as_group: settings.run_as_user,
                fs_group: settings.run_as_user,
                seccomp_profile: Some(seccomp()),
                ..Default::default()
            }),
            containers: vec![Container {
                name: CONTAINER_NAME.to_owned(),
                image: Some(spec.image.clone()),
                image_pull_policy: Some("IfNotPresent".to_owned()),
                env: (!env.is_empty()).then_some(env),
                resources: Some(ResourceRequirements {
                    requests: Some(resources.clone()),
                    limits: Some(resources),
                    claims: None,
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    capabilities: Some(Capabilities {
                        add: None,
                        drop: Some(vec!["ALL".to_owned()]),
                    }),
                    run_as_non_root: run_as_non_root.then_some(true),
                    run_as_user: settings.run_as_user,
                    seccomp_profile: Some(seccomp()),
                    ..Default::default()
                }),
                volume_mounts: Some(vec![VolumeMount {
                    name: "home".to_owned(),
                    mount_path: HOME_MOUNT_PATH.to_owned(),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "home".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc_name(spec.workspace_id),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs workspace commands against the cluster.
#[derive(Clone)]
pub struct Workspaces {
    pods: Api<Pod>,
    pvcs: Api<PersistentVolumeClaim>,
    settings: WorkspaceSettings,
    timeout: Duration,
}

fn observation(
    id: Uuid,
    (status, message, pod_name): (WorkspaceStatus, Option<String>, Option<String>),
) -> WorkspaceObservation {
    WorkspaceObservation {
        workspace_id: id,
        status,
        message,
        pod_name,
        node_name: None,
        reason: None,
        observed_at: Utc::now(),
    }
}

impl Workspaces {
    /// Commands in `settings.namespace`, each Kubernetes call bounded by `timeout`.
    pub fn new(client: Client, settings: WorkspaceSettings, timeout: Duration) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), &settings.namespace),
            pvcs: Api::namespaced(client, &settings.namespace),
            settings,
            timeout,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &WorkspaceSettings {
        &self.settings
    }

    /// Applies the claim and the pod (create and start are the same).
    pub async fn apply(&self, spec: &WorkspaceSpec) -> Result<WorkspaceObservation, HrpcError> {
        validate(spec)?;
        let id = spec.workspace_id;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let pvc = home_pvc(spec, &self.settings);
        let name = pvc_name(id);
        call(
            || format!("applying persistentvolumeclaim {name}"),
            self.timeout,
            self.pvcs.patch(&name, &params, &Patch::Apply(&pvc)),
        )
        .await?;
        let pod = workspace_pod(spec, &self.settings);
        let name = pod_name(id);
        self.wait_for_termination(&name).await?;
        let applied = call(
            || format!("applying pod {name}"),
            self.timeout,
            self.pods.patch(&name, &params, &Patch::Apply(&pod)),
        )
        .await?;
        Ok(observation(
            id,
            observe(Some(&PodState::from_pod(&applied)), Claim::Present),
        ))
    }

    /// A start right after a stop finds the old pod still terminating; applying
    /// to it would change nothing and the workspace would end up stopped. Waits
    /// (bounded by the call timeout) until it is gone.
    async fn wait_for_termination(&self, name: &str) -> Result<(), HrpcError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let pod = call(
                || format!("reading pod {name}"),
                self.timeout,
                self.pods.get_opt(name),
            )
            .await?;
            if pod
                .as_ref()
                .is_none_or(|p| p.metadata.deletion_timestamp.is_none())
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HrpcError::unavailable(format!(
                    "pod {name} is still terminating from the last stop; try again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes the pod and keeps the claim.
    pub async fn stop(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let name = pod_name(id);
        let still_there = self.delete_pod(&name).await?;
        let pvc = self.claim(id).await?;
        Ok(match still_there {
            Some(pod) => observation(id, observe(Some(&pod), pvc)),
            None => observation(id, observe(None, pvc)),
        })
    }

    /// Deletes the pod and the claim.
    pub async fn delete(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let pod = self.delete_pod(&pod_name(id)).await?;
        let name = pvc_name(id);
        let pvc = call(
            || format!("deleting persistentvolumeclaim {name}"),
            self.timeout,
            self.pvcs.delete(&name, &DeleteParams::default()),
        )
        .await;
        let pvc_left = match pvc {
            // Still there while a finalizer (pvc-protection) holds it.
            Ok(_) => self.claim(id).await? != Claim::Absent,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        if pod.is_some() || pvc_left {
            return Ok(observation(
                id,
                (WorkspaceStatus::Deleting, None, pod.map(|p| p.name)),
            ));
        }
        Ok(observation(id, (WorkspaceStatus::Deleted, None, None)))
    }

    /// The workspace's status, read now.
    pub async fn status(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let name = pod_name(id);
        let pod = call(
            || format!("reading pod {name}"),
            self.timeout,
            self.pods.get_opt(&name),
        )
        .await?;
        let pvc = self.claim(id).await?;
        if pod.is_none() && pvc == Claim::Absent {
            return Err(HrpcError::not_found(format!(
                "the cluster has nothing of workspace {id}"
            )));
        }
        Ok(observation(
            id,
            observe(pod.as_ref().map(PodState::from_pod).as_ref(), pvc),
        ))
    }

    async fn claim(&self, id: Uuid) -> Result<Claim, KubeCallError> {
        let name = pvc_name(id);
        Ok(call(
            || format!("reading persistentvolumeclaim {name}"),
            self.timeout,
            self.pvcs.get_opt(&name),
        )
        .await?
        .as_ref()
        .map_or(Claim::Absent, Claim::of))
    }

    /// Deletes a pod; the pod if it is still there (terminating), `None` if gone.
    ///
    /// The delete's answer does not say which (API servers return the object in
    /// both cases), so the pod is read back.
    async fn delete_pod(&self, name: &str) -> Result<Option<PodState>, KubeCallError> {
        match call(
            || format!("deleting pod {name}"),
            self.timeout,
            self.pods.delete(name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        }
        let left = call(
            || format!("reading pod {name}"),
            self.timeout,
            self.pods.get_opt(name),
        )
        .await?;
        Ok(left.map(|p| PodState::from_pod(&p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkspaceSpec {
        WorkspaceSpec {
            workspace_id: "6f1c1d52-3f7a-4a55-9a35-0f2f6c1e2b7d".parse().unwrap(),
            name: "My workspace / with spaces".into(),
            image: "ghcr.io/lapdev/workspace:latest".into(),
            cpu_millis: 1500,
            memory_bytes: 4 << 30,
            storage_bytes: 10 << 30,
            env: BTreeMap::from([("EDITOR".into(), "vim".into())]),
        }
    }

    fn settings() -> WorkspaceSettings {
        WorkspaceSettings {
            namespace: "lapdev-workspaces".into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_deterministic_valid_dns_labels() {
        let id = spec().workspace_id;
        assert_eq!(pod_name(id), "ws-6f1c1d52-3f7a-4a55-9a35-0f2f6c1e2b7d");
        assert_eq!(pvc_name(id), "ws-6f1c1d52-3f7a-4a55-9a35-0f2f6c1e2b7d-home");
        for n in [pod_name(id), pvc_name(id)] {
            assert!(n.len() <= 63);
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
    }

    #[test]
    fn the_pod_drops_privileges_and_carries_the_labels() {
        let pod = workspace_pod(&spec(), &settings());
        let v = serde_json::to_value(&pod).unwrap();
        assert_eq!(v["metadata"]["namespace"], "lapdev-workspaces");
        assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], "lapdev");
        assert_eq!(
            v["metadata"]["labels"][WORKSPACE_ID_LABEL],
            spec().workspace_id.to_string()
        );
        assert_eq!(
            v["metadata"]["annotations"][WORKSPACE_NAME_ANNOTATION],
            "My workspace / with spaces"
        );
        let c = &v["spec"]["containers"][0];
        assert_eq!(c["image"], "ghcr.io/lapdev/workspace:latest");
        assert_eq!(c["resources"]["requests"]["cpu"], "1500m");
        assert_eq!(c["resources"]["limits"]["memory"], (4i64 << 30).to_string());
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["privileged"], false);
        assert_eq!(
            c["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"])
        );
        assert_eq!(
            c["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        // The image's own user unless configured.
        assert!(c["securityContext"].get("runAsNonRoot").is_none());
        assert_eq!(c["env"][0]["name"], "EDITOR");
        assert_eq!(c["volumeMounts"][0]["mountPath"], HOME_MOUNT_PATH);
        assert_eq!(v["spec"]["automountServiceAccountToken"], false);
        assert_eq!(
            v["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            pvc_name(spec().workspace_id)
        );
        // Round-trips through the quantity parser the server uses.
        assert_eq!(
            lapdev_common::quantity::parse_cpu_millis(
                c["resources"]["limits"]["cpu"].as_str().unwrap()
            ),
            Ok(1500)
        );
    }

    #[test]
    fn non_root_is_configurable() {
        let s = WorkspaceSettings {
            run_as_user: Some(1000),
            ..settings()
        };
        let v = serde_json::to_value(workspace_pod(&spec(), &s)).unwrap();
        assert_eq!(v["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(v["spec"]["securityContext"]["runAsUser"], 1000);
        assert_eq!(v["spec"]["securityContext"]["fsGroup"], 1000);
        assert_eq!(
            v["spec"]["containers"][0]["securityContext"]["runAsUser"],
            1000
        );
        let s = WorkspaceSettings {
            run_as_non_root: true,
            ..settings()
        };
        let v = serde_json::to_value(workspace_pod(&spec(), &s)).unwrap();
        assert_eq!(v["spec"]["securityContext"]["runAsNonRoot"], true);
        assert!(v["spec"]["securityContext"].get("runAsUser").is_none());
    }

    #[test]
    fn the_claim_asks_for_the_storage() {
        let s = WorkspaceSettings {
            storage_class: Some("fast".into()),
            ..settings()
        };
        let v = serde_json::to_value(home_pvc(&spec(), &s)).unwrap();
        assert_eq!(v["metadata"]["name"], pvc_name(spec().workspace_id));
        assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], "lapdev");
        assert_eq!(
            v["spec"]["resources"]["requests"]["storage"],
            (10i64 << 30).to_string()
        );
        assert_eq!(v["spec"]["storageClassName"], "fast");
        assert_eq!(
            v["spec"]["accessModes"],
            serde_json::json!(["ReadWriteOnce"])
        );
    }

    #[test]
    fn bad_specs_are_refused_before_kubernetes() {
        let mut s = spec();
        s.image = " ".into();
        assert_eq!(validate(&s), Err(SpecError::EmptyImage));
        s.image = "not an image".into();
        assert!(matches!(validate(&s), Err(SpecError::InvalidImage(_))));
        let mut s = spec();
        s.cpu_millis = 0;
        assert_eq!(validate(&s), Err(SpecError::NotPositive("cpu_millis")));
        assert!(validate(&spec()).is_ok());
    }

    #[test]
    fn workspace_ids_come_from_the_label() {
        let pod = workspace_pod(&spec(), &settings());
        assert_eq!(workspace_id_of(&pod.metadata), Some(spec().workspace_id));
        assert_eq!(workspace_id_of(&ObjectMeta::default()), None);
    }
}
