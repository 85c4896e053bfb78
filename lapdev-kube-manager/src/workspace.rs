//! Workspace commands against the cluster ([`Workspaces`]); the objects
//! themselves are built in [`crate::objects`] (re-exported here).
//!
//! A workspace is a `PersistentVolumeClaim` (`ws-<id>-home`) and a `Pod`
//! (`ws-<id>`) in the workspace namespace. Names are derived from the workspace
//! id only, so every command is idempotent:
//! - create and start make the claim when it is absent and never write it again
//!   (its size may have been expanded by hand, its class may differ from
//!   today's setting: re-applying would be refused with a 422 for ever); they
//!   make the pod when it is absent, replace a pod that has ended (`Failed`,
//!   `Succeeded`, evicted: the repair path), wait for one that is still
//!   terminating, and leave a live pod alone, even an outdated one;
//! - stop deletes the pod and keeps the claim; delete removes both; delete
//!   keeping the volume is stop that answers `deleted` (the server's grace
//!   period), and purging the volume later is delete; "already gone" is
//!   success;
//! - a pod whose deletion is stuck on a lost node is force-deleted once that is
//!   safe (see [`crate::observe::force_delete_due`]); until then the answer
//!   says `NodeLost` and when.
//!
//! Every Kubernetes call has a timeout and bounded retries of retryable
//! failures ([`crate::error::call`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use lapdev_common::kube::WorkspaceSpec;
use lapdev_common::status::WorkspaceStatus;
use lapdev_hrpc::HrpcError;
use lapdev_kube_rpc::WorkspaceObservation;
use uuid::Uuid;

use crate::error::{KubeCallError, call};
use crate::observe::{ForceDelete, PodFacts};
use crate::tracker::Tracker;
use crate::watch::force_delete;

pub use crate::objects::{
    CONTAINER_NAME, CpuLimit, FIELD_MANAGER, HOME_MOUNT_PATH, MANAGED_BY, MANAGED_BY_LABEL,
    POD_HASH_ANNOTATION, SPEC_ANNOTATION, SpecError, WORKSPACE_ID_LABEL, WORKSPACE_NAME_ANNOTATION,
    WorkspaceSettings, home_pvc, object_of_name, outdated, pod_name, pvc_name, validate,
    workspace_id_of, workspace_pod,
};

/// Runs workspace commands against the cluster.
#[derive(Clone)]
pub struct Workspaces {
    pods: Api<Pod>,
    pvcs: Api<PersistentVolumeClaim>,
    settings: WorkspaceSettings,
    timeout: Duration,
    tracker: Arc<Tracker>,
}

fn ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

impl Workspaces {
    /// Commands in `settings.namespace`, each Kubernetes call bounded by
    /// `timeout`; observations are made with what `tracker` knows (Events, nodes).
    pub fn new(
        client: Client,
        settings: WorkspaceSettings,
        timeout: Duration,
        tracker: Arc<Tracker>,
    ) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), &settings.namespace),
            pvcs: Api::namespaced(client, &settings.namespace),
            settings,
            timeout,
            tracker,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &WorkspaceSettings {
        &self.settings
    }

    /// Creates what is missing (create and start are the same): the claim if
    /// absent, the pod if absent or ended.
    pub async fn apply(&self, spec: &WorkspaceSpec) -> Result<WorkspaceObservation, HrpcError> {
        crate::objects::validate(spec)?;
        let id = spec.workspace_id;
        let claim = self.ensure_claim(spec).await?;
        let name = pod_name(id);
        if let Some(existing) = self.get_pod(&name).await? {
            let uid = existing.metadata.uid.clone();
            if existing.metadata.deletion_timestamp.is_some() {
                // A start right after a stop finds the old pod still terminating.
                if let Some(left) = self.wait_gone(&name, uid).await? {
                    return Err(self.still_terminating(id, &left, Some(&claim)));
                }
            } else if ended(&existing) {
                // Repair: an ended pod never runs again; replace it. Its
                // containers have stopped, so nothing is cut short.
                tracing::info!(workspace_id = %id, pod = %name, "replacing a pod that has ended");
                self.delete_pod_now(&name, uid.clone()).await?;
                if let Some(left) = self.wait_gone(&name, uid).await? {
                    return Err(self.still_terminating(id, &left, Some(&claim)));
                }
            } else {
                // Live (maybe outdated): never replaced by a command.
                return Ok(self.tracker.observe_pod(id, Some(&existing), Some(&claim)));
            }
        }
        let pod = workspace_pod(spec, &self.settings);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let created = match call(
            || format!("creating pod {name}"),
            self.timeout,
            || self.pods.create(&params, &pod),
        )
        .await
        {
            Ok(p) => p,
            // Made by a retried call or a concurrent command: read it.
            Err(e) if e.api_code() == Some(409) => self
                .get_pod(&name)
                .await?
                .ok_or_else(|| HrpcError::from(e))?,
            Err(e) => return Err(e.into()),
        };
        Ok(self.tracker.observe_pod(id, Some(&created), Some(&claim)))
    }

    fn still_terminating(
        &self,
        id: Uuid,
        pod: &Pod,
        claim: Option<&PersistentVolumeClaim>,
    ) -> HrpcError {
        let obs = self.tracker.observe_pod(id, Some(pod), claim);
        let mut message = format!(
            "pod {} is still terminating from the last stop; try again",
            pod_name(id)
        );
        if let Some(m) = obs.message {
            message.push_str(": ");
            message.push_str(&m);
        }
        HrpcError::unavailable(message)
    }

    /// The claim: read, or created when absent. Never written over.
    async fn ensure_claim(&self, spec: &WorkspaceSpec) -> Result<PersistentVolumeClaim, HrpcError> {
        let name = pvc_name(spec.workspace_id);
        if let Some(c) = self.get_claim(&name).await? {
            if c.metadata.deletion_timestamp.is_some() {
                return Err(HrpcError::failed_precondition(format!(
                    "the volume {name} is being deleted"
                )));
            }
            return Ok(c);
        }
        let pvc = home_pvc(spec, &self.settings);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match call(
            || format!("creating persistentvolumeclaim {name}"),
            self.timeout,
            || self.pvcs.create(&params, &pvc),
        )
        .await
        {
            Ok(c) => Ok(c),
            Err(e) if e.api_code() == Some(409) => Ok(self
                .get_claim(&name)
                .await?
                .ok_or_else(|| HrpcError::from(e))?),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits (bounded by the call timeout) until the pod with `uid` is gone,
    /// force-deleting it when it is stuck on a lost node and that is due.
    /// Returns the pod if it is still there.
    async fn wait_gone(&self, name: &str, uid: Option<String>) -> Result<Option<Pod>, HrpcError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let pod = self
                .get_pod(name)
                .await?
                .filter(|p| uid.is_none() || p.metadata.uid == uid);
            let Some(pod) = pod else { return Ok(None) };
            // Its node is lost and the force-deletion is not due yet: waiting
            // here cannot help; the answer says until when.
            if self.force_if_due(&pod).await == Some(false) {
                return Ok(Some(pod));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Some(pod));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Force-deletes a terminating pod whose node is lost, when due: `None`
    /// when its node is fine, else whether it was force-deleted now.
    async fn force_if_due(&self, pod: &Pod) -> Option<bool> {
        pod.metadata.deletion_timestamp.as_ref()?;
        let facts = PodFacts::from_pod(pod);
        match self.tracker.force_delete_due(&facts) {
            ForceDelete::Now(why) => Some(
                force_delete(
                    &self.pods,
                    &facts.name,
                    facts.uid.clone(),
                    &why,
                    self.timeout,
                )
                .await,
            ),
            ForceDelete::At(_) => Some(false),
            ForceDelete::No => None,
        }
    }

    /// Deletes the pod and keeps the claim.
    pub async fn stop(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let pod = self.delete_pod(&pod_name(id)).await?;
        let claim = self.get_claim(&pvc_name(id)).await?;
        Ok(self.tracker.observe_pod(id, pod.as_ref(), claim.as_ref()))
    }

    /// A deleted workspace whose volume is kept: deletes the pod and keeps
    /// the claim (as stop does), and answers `deleted` once the pod is gone
    /// (`deleting` while it terminates). The claim is not marked: the
    /// manager's Role has no `patch` on claims, and this does not grow it.
    pub async fn delete_keeping_volume(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let pod = self.delete_pod(&pod_name(id)).await?;
        let claim = self.get_claim(&pvc_name(id)).await?;
        let mut obs = self.tracker.observe_pod(id, pod.as_ref(), claim.as_ref());
        obs.status = if pod.is_none() {
            WorkspaceStatus::Deleted
        } else {
            WorkspaceStatus::Deleting
        };
        Ok(obs)
    }

    /// Deletes the pod and the claim.
    pub async fn delete(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let pod = self.delete_pod(&pod_name(id)).await?;
        let name = pvc_name(id);
        let params = DeleteParams::default();
        let deleted = call(
            || format!("deleting persistentvolumeclaim {name}"),
            self.timeout,
            || self.pvcs.delete(&name, &params),
        )
        .await;
        let claim = match deleted {
            // Still there while a finalizer (pvc-protection) holds it.
            Ok(_) => self.get_claim(&name).await?,
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let mut obs = self.tracker.observe_pod(id, pod.as_ref(), claim.as_ref());
        if matches!(
            obs.status,
            WorkspaceStatus::Stopping | WorkspaceStatus::Stopped
        ) {
            obs.status = WorkspaceStatus::Deleting;
        }
        Ok(obs)
    }

    /// The workspace's status, read now.
    pub async fn status(&self, id: Uuid) -> Result<WorkspaceObservation, HrpcError> {
        let pod = self.get_pod(&pod_name(id)).await?;
        let claim = self.get_claim(&pvc_name(id)).await?;
        if pod.is_none() && claim.is_none() {
            return Err(HrpcError::not_found(format!(
                "the cluster has nothing of workspace {id}"
            )));
        }
        Ok(self.tracker.observe_pod(id, pod.as_ref(), claim.as_ref()))
    }

    async fn get_pod(&self, name: &str) -> Result<Option<Pod>, KubeCallError> {
        call(
            || format!("reading pod {name}"),
            self.timeout,
            || self.pods.get_opt(name),
        )
        .await
    }

    async fn get_claim(&self, name: &str) -> Result<Option<PersistentVolumeClaim>, KubeCallError> {
        call(
            || format!("reading persistentvolumeclaim {name}"),
            self.timeout,
            || self.pvcs.get_opt(name),
        )
        .await
    }

    /// Deletes an ended pod at once (grace 0: its containers have stopped).
    async fn delete_pod_now(&self, name: &str, uid: Option<String>) -> Result<(), KubeCallError> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: uid.map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match call(
            || format!("deleting ended pod {name}"),
            self.timeout,
            || self.pods.delete(name, &params),
        )
        .await
        {
            Ok(_) => Ok(()),
            // Gone already, or replaced by another pod of that name.
            Err(e) if e.is_not_found() || e.api_code() == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes a pod gracefully; returns the pod if it is still there
    /// (terminating), `None` if gone. A pod stuck on a lost node is
    /// force-deleted when due.
    ///
    /// The delete's answer does not say which (API servers return the object in
    /// both cases), so the pod is read back.
    async fn delete_pod(&self, name: &str) -> Result<Option<Pod>, KubeCallError> {
        let params = DeleteParams::default();
        match call(
            || format!("deleting pod {name}"),
            self.timeout,
            || self.pods.delete(name, &params),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        }
        let left = self.get_pod(name).await?;
        match left {
            Some(p) if self.force_if_due(&p).await == Some(true) => self.get_pod(name).await,
            other => Ok(other),
        }
    }
}
