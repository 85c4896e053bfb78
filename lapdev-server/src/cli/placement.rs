//! `lapdev cluster create … --capacity/--autoscaling/--node-selector/…` and
//! `lapdev cluster placement NAME …`: the per-cluster placement settings as
//! flags, checked before they are sent (the server checks them again).

use anyhow::Context as _;
use clap::Args;
use lapdev_common::scheduling::{Autoscaling, SchedulingSettings, Toleration};
use lapdev_common::status::CapacityMode;
use serde_json::{Value, json};

use crate::admin::api::{ClusterPlacement, ClusterView};

/// Where a cluster's workspaces go.
#[derive(Debug, Clone, Default, Args)]
pub struct PlacementArgs {
    /// What free room counts: `nodes` (allocatable minus Lapdev's requests) or
    /// `pods` (minus every pod's; the manifest then watches all pods).
    #[arg(long, value_parser = ["nodes", "pods"])]
    pub capacity: Option<String>,
    /// An autoscaling cluster: the largest node its autoscaler can add,
    /// `max-node-cpu,max-node-memory[,max-nodes]` (e.g. `16,64Gi,20`).
    #[arg(long)]
    pub autoscaling: Option<String>,
    /// A node label workspaces require, `key=value` (repeatable).
    #[arg(long = "node-selector")]
    pub node_selector: Vec<String>,
    /// A taint workspaces tolerate: `key=value:Effect`, `key:Effect`, `key`
    /// or `*` (repeatable).
    #[arg(long = "toleration")]
    pub tolerations: Vec<String>,
    /// The nodes' CPU architecture (`kubernetes.io/arch`), e.g. `amd64`.
    #[arg(long)]
    pub arch: Option<String>,
    /// A Secret in the workspace namespace to pull images with (repeatable).
    #[arg(long = "image-pull-secret")]
    pub image_pull_secrets: Vec<String>,
    /// The workspace pods' priority class.
    #[arg(long)]
    pub priority_class: Option<String>,
    /// Run workspace pods in their own user namespace (`hostUsers: false`);
    /// only where the cluster supports it (Kubernetes 1.33+, a runtime and
    /// kernel with user namespaces).
    #[arg(long)]
    pub user_namespaces: bool,
}

impl PlacementArgs {
    /// True when no flag was given.
    pub fn is_empty(&self) -> bool {
        self.capacity.is_none()
            && self.autoscaling.is_none()
            && self.node_selector.is_empty()
            && self.tolerations.is_empty()
            && self.arch.is_none()
            && self.image_pull_secrets.is_empty()
            && self.priority_class.is_none()
            && !self.user_namespaces
    }

    /// The settings the flags say, validated.
    pub fn to_placement(&self) -> anyhow::Result<ClusterPlacement> {
        let mut scheduling = SchedulingSettings::default();
        for kv in &self.node_selector {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--node-selector {kv:?}: expected key=value"))?;
            scheduling.node_selector.insert(k.to_owned(), v.to_owned());
        }
        for t in &self.tolerations {
            scheduling
                .tolerations
                .push(Toleration::parse(t).map_err(|e| anyhow::anyhow!("--toleration: {e}"))?);
        }
        scheduling.arch = self.arch.clone();
        scheduling.image_pull_secrets = self.image_pull_secrets.clone();
        scheduling.priority_class = self.priority_class.clone();
        scheduling.user_namespaces = self.user_namespaces;
        scheduling.validate()?;
        let capacity_mode = match self.capacity.as_deref() {
            None => CapacityMode::default(),
            Some(s) => s
                .parse()
                .map_err(|e| anyhow::anyhow!("--capacity {s:?}: {e}"))?,
        };
        let autoscaling = self
            .autoscaling
            .as_deref()
            .map(Autoscaling::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--autoscaling: {e}"))?;
        Ok(ClusterPlacement {
            capacity_mode,
            scheduling,
            autoscaling,
        })
    }
}

/// The placement part of a cluster as `cluster get -o json` prints it: the
/// settings, the autoscaler in effect and the largest free node.
pub fn placement_json(c: &ClusterView) -> Value {
    let largest = c.nodes.as_ref().and_then(|nodes| {
        nodes
            .iter()
            .filter(|n| c.placement.scheduling.admits(n))
            .max_by_key(|n| (n.free_cpu_millis(), n.free_memory_bytes()))
            .map(|n| {
                json!({
                    "name": n.name,
                    "free_cpu_millis": n.free_cpu_millis(),
                    "free_memory_bytes": n.free_memory_bytes(),
                })
            })
    });
    json!({
        "capacity_mode": c.placement.capacity_mode,
        "scheduling": c.placement.scheduling,
        "autoscaling": c.placement.autoscaling.or(c.detected_autoscaling),
        "autoscaling_detected": c.placement.autoscaling.is_none() && c.detected_autoscaling.is_some(),
        "schedulable_nodes": c.nodes.as_ref().map(|n| n.iter().filter(|n| c.placement.scheduling.admits(n)).count()),
        "largest_free_node": largest,
    })
}
