//! The objects a workspace is made of, built purely from its
//! [`WorkspaceSpec`] and the cluster's [`WorkspaceSettings`]: the home volume
//! claim ([`home_pvc`]) and the pod ([`workspace_pod`]).
//!
//! # The workspace pod
//!
//! Built for development, not for serving:
//! - `tty: true` and `stdin: true`, so an image whose command is a shell waits
//!   for input instead of exiting (and crash-looping);
//! - `HOME` is the home volume's mount, [`HOME_MOUNT_PATH`] (a spec's own `HOME`
//!   wins);
//! - `fsGroup` ([`WorkspaceSettings::fs_group`], default 1000) with
//!   `fsGroupChangePolicy: OnRootMismatch`, so a non-root image user can write
//!   the volume, and a large volume is not re-chowned at every start;
//! - CPU requested as the spec says and limited only when configured
//!   ([`CpuLimit`], default none: a limit equal to the request throttles
//!   compiles); memory requested and limited as the spec says;
//! - an `ephemeral-storage` request and limit (defaults 2Gi and 8Gi, both
//!   within GKE Autopilot's per-pod bounds), so a full scratch disk evicts the
//!   workspace instead of its neighbours;
//! - no service account token, no service links.
//!
//! # Security profiles
//!
//! The cluster's [`SecurityProfile`] (`LAPDEV_SECURITY_PROFILE`, set by the
//! install manifest together with the workspace namespace's Pod Security
//! label) decides the security contexts:
//!
//! | field | `baseline` (default) | `restricted` |
//! |---|---|---|
//! | pod `seccompProfile` | `RuntimeDefault` | `RuntimeDefault` |
//! | `runAsNonRoot` | unset (root allowed) unless `LAPDEV_WORKSPACE_RUN_AS_NON_ROOT` or a uid is set | `true` |
//! | `runAsUser` / `runAsGroup` | `LAPDEV_WORKSPACE_RUN_AS_USER` if set, else the image's user | `LAPDEV_WORKSPACE_RUN_AS_USER`, else the `fsGroup` (1000) |
//! | `fsGroup`, `fsGroupChangePolicy` | `fsGroup`, `OnRootMismatch` | same |
//! | container `privileged` | `false` | `false` |
//! | container `allowPrivilegeEscalation` | unset (allowed: `sudo` works) | `false` |
//! | container `capabilities` | unset (the runtime's default set; `apt` works) | `drop: [ALL]` |
//!
//! # Spec and hash annotations
//!
//! The pod records the spec it was built from ([`SPEC_ANNOTATION`], JSON) and a
//! hash of the pod spec built from it ([`POD_HASH_ANNOTATION`]). When the
//! manager's settings change (a new security profile, fsGroup, limits), the
//! pod the current settings would build from the recorded spec hashes
//! differently: the workspace is reported "outdated: restart to apply …", and
//! the next start builds the new pod. A live pod is never replaced for it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lapdev_common::kube::WorkspaceSpec;
use lapdev_common::status::SecurityProfile;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::observe::EventObject;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "lapdev-kube-manager";
/// `app.kubernetes.io/managed-by` on every object the manager creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "lapdev";
/// The label carrying the workspace id; the watchers select on it.
pub const WORKSPACE_ID_LABEL: &str = "lapdev.dev/workspace-id";
/// The annotation carrying the workspace's user-facing name.
pub const WORKSPACE_NAME_ANNOTATION: &str = "lapdev.dev/workspace-name";
/// The annotation carrying the spec (JSON) a pod was built from.
pub const SPEC_ANNOTATION: &str = "lapdev.dev/workspace-spec";
/// The annotation carrying the hash of the pod spec built from it.
pub const POD_HASH_ANNOTATION: &str = "lapdev.dev/pod-spec-hash";
/// The workspace container's name.
pub const CONTAINER_NAME: &str = "workspace";
/// Where the home volume is mounted (and `HOME`).
pub const HOME_MOUNT_PATH: &str = "/home/lapdev";

/// The pod's name for a workspace.
pub fn pod_name(id: Uuid) -> String {
    format!("ws-{id}")
}

/// The home volume claim's name for a workspace.
pub fn pvc_name(id: Uuid) -> String {
    format!("ws-{id}-home")
}

/// The workspace and the kind of object a name belongs to (`ws-<id>` is the
/// pod, `ws-<id>-home` the claim); Events name their object this way.
pub fn object_of_name(name: &str) -> Option<(Uuid, EventObject)> {
    let rest = name.strip_prefix("ws-")?;
    match rest.strip_suffix("-home") {
        Some(id) => Some((id.parse().ok()?, EventObject::Claim)),
        None => Some((rest.parse().ok()?, EventObject::Pod)),
    }
}

/// The workspace id of a labelled object.
pub fn workspace_id_of(meta: &ObjectMeta) -> Option<Uuid> {
    meta.labels.as_ref()?.get(WORKSPACE_ID_LABEL)?.parse().ok()
}

/// The CPU limit of workspace containers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum CpuLimit {
    /// No limit (the default): idle CPU on the node is there to be used.
    #[default]
    None,
    /// The request times this factor (`1x` is the request itself).
    Times(f64),
    /// A fixed amount, in millicores.
    Millis(i64),
}

/// A `--workspace-cpu-limit` value that is not `none`, `<factor>x` or a CPU quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a CPU limit: use none, a factor of the request like 2x, or a quantity like 4 or 3500m"
)]
pub struct CpuLimitError(String);

impl std::str::FromStr for CpuLimit {
    type Err = CpuLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") || t.is_empty() {
            return Ok(CpuLimit::None);
        }
        if let Some(f) = t.strip_suffix('x') {
            return match f.parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 => Ok(CpuLimit::Times(f)),
                _ => Err(CpuLimitError(s.to_owned())),
            };
        }
        match lapdev_common::quantity::parse_cpu_millis(t) {
            Ok(m) if m > 0 => Ok(CpuLimit::Millis(m)),
            _ => Err(CpuLimitError(s.to_owned())),
        }
    }
}

impl CpuLimit {
    /// The limit for a request, in millicores (never below the request).
    pub fn for_request(self, request_millis: i64) -> Option<i64> {
        let limit = match self {
            CpuLimit::None => return None,
            CpuLimit::Times(f) => (request_millis as f64 * f).ceil() as i64,
            CpuLimit::Millis(m) => m,
        };
        Some(limit.max(request_millis))
    }
}

/// How workspace pods and volumes are set up, beyond what a spec says.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceSettings {
    /// Namespace of workspaces.
    pub namespace: String,
    /// The cluster's security profile.
    pub security_profile: SecurityProfile,
    /// Run the container as this uid (implies non-root).
    pub run_as_user: Option<i64>,
    /// Require a non-root user even when no uid is set (the image must declare one).
    pub run_as_non_root: bool,
    /// The pod's `fsGroup`: the home volume is group-writable by it.
    pub fs_group: i64,
    /// Storage class of the home volume; `None`: the cluster's default.
    pub storage_class: Option<String>,
    /// The container's CPU limit.
    pub cpu_limit: CpuLimit,
    /// `ephemeral-storage` request.
    pub ephemeral_storage_request: String,
    /// `ephemeral-storage` limit.
    pub ephemeral_storage_limit: String,
}

impl Default for WorkspaceSettings {
    fn default() -> Self {
        Self {
            namespace: "lapdev-workspaces".to_owned(),
            security_profile: SecurityProfile::Baseline,
            run_as_user: None,
            run_as_non_root: false,
            fs_group: 1000,
            storage_class: None,
            cpu_limit: CpuLimit::None,
            ephemeral_storage_request: "2Gi".to_owned(),
            ephemeral_storage_limit: "8Gi".to_owned(),
        }
    }
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

/// The workspace's home volume claim. Created once, never re-applied: its size
/// may have been expanded and its class may differ from today's setting.
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

fn security_contexts(settings: &WorkspaceSettings) -> (PodSecurityContext, SecurityContext) {
    let seccomp = Some(SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    });
    let restricted = settings.security_profile == SecurityProfile::Restricted;
    let run_as_user = match settings.run_as_user {
        Some(uid) => Some(uid),
        None if restricted => Some(settings.fs_group),
        None => None,
    };
    let non_root =
        (restricted || settings.run_as_non_root || run_as_user.is_some()).then_some(true);
    let pod = PodSecurityContext {
        run_as_non_root: non_root,
        run_as_user,
        run_as_group: run_as_user,
        fs_group: Some(settings.fs_group),
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: seccomp,
        ..Default::default()
    };
    let container = SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: restricted.then_some(false),
        capabilities: restricted.then(|| Capabilities {
            add: None,
            drop: Some(vec!["ALL".to_owned()]),
        }),
        run_as_non_root: non_root,
        ..Default::default()
    };
    (pod, container)
}

/// The pod spec alone (what the hash covers).
fn pod_spec(spec: &WorkspaceSpec, settings: &WorkspaceSettings) -> PodSpec {
    let cpu = Quantity(format!("{}m", spec.cpu_millis));
    let memory = Quantity(spec.memory_bytes.to_string());
    let requests = BTreeMap::from([
        ("cpu".to_owned(), cpu),
        ("memory".to_owned(), memory.clone()),
        (
            "ephemeral-storage".to_owned(),
            Quantity(settings.ephemeral_storage_request.clone()),
        ),
    ]);
    let mut limits = BTreeMap::from([
        ("memory".to_owned(), memory),
        (
            "ephemeral-storage".to_owned(),
            Quantity(settings.ephemeral_storage_limit.clone()),
        ),
    ]);
    if let Some(m) = settings.cpu_limit.for_request(spec.cpu_millis) {
        limits.insert("cpu".to_owned(), Quantity(format!("{m}m")));
    }
    let mut env = Vec::new();
    if !spec.env.contains_key("HOME") {
        env.push(EnvVar {
            name: "HOME".to_owned(),
            value: Some(HOME_MOUNT_PATH.to_owned()),
            value_from: None,
        });
    }
    env.extend(spec.env.iter().map(|(k, v)| EnvVar {
        name: k.clone(),
        value: Some(v.clone()),
        value_from: None,
    }));
    let (pod_sc, container_sc) = security_contexts(settings);
    let mut pod = PodSpec {
        restart_policy: Some("Always".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(30),
        hostname: Some("workspace".to_owned()),
        security_context: Some(pod_sc),
        containers: vec![Container {
            name: CONTAINER_NAME.to_owned(),
            image: Some(spec.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            tty: Some(true),
            stdin: Some(true),
            env: Some(env),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                limits: Some(limits),
                claims: None,
            }),
            security_context: Some(container_sc),
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
    };
    scheduling::apply(&spec.scheduling, &mut pod);
    pod
}

/// The hash of a pod spec: SHA-256 of its JSON, hex, first 16 bytes.
fn spec_hash(spec: &PodSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    Sha256::digest(&json)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The workspace's pod, annotated with the spec it was built from and the
/// hash of its pod spec. See the module docs for what it sets.
pub fn workspace_pod(spec: &WorkspaceSpec, settings: &WorkspaceSettings) -> Pod {
    let pod_spec = pod_spec(spec, settings);
    let mut metadata = meta(pod_name(spec.workspace_id), spec, settings);
    let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        SPEC_ANNOTATION.to_owned(),
        serde_json::to_string(spec).unwrap_or_default(),
    );
    annotations.insert(POD_HASH_ANNOTATION.to_owned(), spec_hash(&pod_spec));
    Pod {
        metadata,
        spec: Some(pod_spec),
        status: None,
    }
}

/// What a restart of the workspace would apply, when its pod was built
/// differently from what the current settings build from its recorded spec
/// (or by a manager that recorded none).
pub fn outdated(pod: &Pod, settings: &WorkspaceSettings) -> Option<String> {
    let annotations = pod.metadata.annotations.as_ref();
    let recorded = annotations.and_then(|a| a.get(POD_HASH_ANNOTATION));
    let spec = annotations
        .and_then(|a| a.get(SPEC_ANNOTATION))
        .and_then(|s| serde_json::from_str::<WorkspaceSpec>(s).ok());
    match (recorded, spec) {
        (Some(hash), Some(spec)) => (spec_hash(&pod_spec(&spec, settings)) != *hash)
            .then(|| "the cluster's current workspace settings".to_owned()),
        _ => Some("the current workspace pod layout (tty, HOME, fsGroup, limits)".to_owned()),
    }
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
    /// The cluster's scheduling settings are malformed.
    #[error(transparent)]
    Scheduling(#[from] lapdev_common::scheduling::SchedulingError),
}

impl From<SpecError> for lapdev_hrpc::HrpcError {
    fn from(e: SpecError) -> Self {
        lapdev_hrpc::HrpcError::invalid_argument(e.to_string())
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
    spec.scheduling.validate()?;
    Ok(())
}

mod scheduling;

#[cfg(test)]
mod tests;
