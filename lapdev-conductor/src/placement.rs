//! Placement: which cluster a workspace goes to. Pure functions over a snapshot
//! of the organisation's clusters, so the rules are tested without a database.
//!
//! # Rules
//!
//! A cluster is a candidate when it is `connected` (its manager holds a tunnel)
//! and not cordoned, matches the request's cluster name or region constraint (the
//! detected region when known, else the one declared at registration), and its
//! free allocatable resources (allocatable minus the requests of the live
//! workspaces already placed there) fit the request's CPU and memory.
//!
//! # Per-node fit
//!
//! When the cluster's manager reports its nodes, a workspace fits only when one
//! node's free room holds it: the nodes the cluster's scheduling settings admit,
//! each with its allocatable minus the requests bound to it (Lapdev's, and with
//! `capacity: pods` everyone's). Workspaces placed but not yet bound to a node
//! (which the report cannot show) are charged to the node with the most room,
//! the conservative choice. Clusters whose manager predates per-node reports fall
//! back to the totals above.
//!
//! An autoscaling cluster (declared, or detected: GKE Autopilot) also fits a
//! workspace no current node holds, when the largest node its autoscaler can add
//! would hold it (and the node limit is not reached). Such clusters rank after
//! every cluster that has room now. GKE Autopilot's maximums are per pod: a
//! workspace beyond them does not fit the cluster at all, however large its
//! current nodes.
//!
//! # Score
//!
//! Candidates are ranked by the share of the cluster left free after placement,
//! the smaller of the CPU and memory shares (`min(free_cpu_after / allocatable_cpu,
//! free_memory_after / allocatable_memory)`), highest first: workspaces spread to
//! the emptiest clusters, and a cluster that would be left short of either
//! resource ranks low. Ties break by cluster name, then id, so the same snapshot
//! always gives the same answer.

use std::cmp::Ordering;
use std::fmt;

use lapdev_common::scheduling::{Autoscaling, NodeCapacity, SchedulingSettings};
use lapdev_common::status::ClusterStatus;
use uuid::Uuid;

/// One cluster as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The cluster.
    pub cluster_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its stored status.
    pub status: ClusterStatus,
    /// Whether its manager holds a tunnel right now.
    pub tunnel_up: bool,
    /// Whether it is cordoned.
    pub cordoned: bool,
    /// The region to match: detected when known, else declared.
    pub region: Option<String>,
    /// Allocatable CPU in millicores.
    pub cpu_allocatable_millis: i64,
    /// Allocatable memory in bytes.
    pub memory_allocatable_bytes: i64,
    /// CPU requested by the live workspaces placed on it.
    pub cpu_requested_millis: i64,
    /// Memory requested by the live workspaces placed on it.
    pub memory_requested_bytes: i64,
    /// The admitted nodes' free room, when the manager reports nodes (the
    /// unbound workspaces already charged, see [`charge_unbound`]).
    pub nodes: Option<Vec<NodeRoom>>,
    /// The largest node the autoscaler can add, for an autoscaling cluster.
    pub autoscaling: Option<Autoscaling>,
}

/// One node's room, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoom {
    /// The node.
    pub name: String,
    /// Allocatable CPU, millicores.
    pub cpu_allocatable_millis: i64,
    /// Allocatable memory, bytes.
    pub memory_allocatable_bytes: i64,
    /// Free CPU, millicores.
    pub free_cpu_millis: i64,
    /// Free memory, bytes.
    pub free_memory_bytes: i64,
}

impl NodeRoom {
    fn holds(&self, req: &PlacementRequest) -> bool {
        self.free_cpu_millis >= req.cpu_millis && self.free_memory_bytes >= req.memory_bytes
    }

    /// How much of the request it could hold (the smaller share of the two).
    fn closeness(&self, req: &PlacementRequest) -> f64 {
        share(self.free_cpu_millis, req.cpu_millis.max(1))
            .min(share(self.free_memory_bytes, req.memory_bytes.max(1)))
    }
}

/// The node rooms of a stored cluster (`None` when its manager reports no
/// nodes), with `unbound` charged.
pub fn node_rooms(
    c: &lapdev_db::Cluster,
    unbound: lapdev_db::ResourceRequests,
) -> Option<Vec<NodeRoom>> {
    c.nodes.as_ref().map(|nodes| {
        charge_unbound(
            nodes,
            &c.placement.scheduling,
            unbound.cpu_millis,
            unbound.memory_bytes,
        )
    })
}

/// The rooms of the nodes `settings` admits, with `unbound` (requests of
/// workspaces placed but not yet bound to a node) charged to the node with the
/// most room.
pub fn charge_unbound(
    nodes: &[NodeCapacity],
    settings: &SchedulingSettings,
    unbound_cpu_millis: i64,
    unbound_memory_bytes: i64,
) -> Vec<NodeRoom> {
    let mut rooms: Vec<NodeRoom> = nodes
        .iter()
        .filter(|n| settings.admits(n))
        .map(|n| NodeRoom {
            name: n.name.clone(),
            cpu_allocatable_millis: n.cpu_allocatable_millis,
            memory_allocatable_bytes: n.memory_allocatable_bytes,
            free_cpu_millis: n.free_cpu_millis(),
            free_memory_bytes: n.free_memory_bytes(),
        })
        .collect();
    charge_most_room(&mut rooms, unbound_cpu_millis, unbound_memory_bytes);
    rooms
}

/// Charges a request not yet bound to a node to the node with the most room
/// (ties: the first by name), never below zero.
fn charge_most_room(rooms: &mut [NodeRoom], cpu_millis: i64, memory_bytes: i64) {
    if (cpu_millis > 0 || memory_bytes > 0)
        && let Some(most) = rooms.iter_mut().max_by(|a, b| {
            (a.free_cpu_millis, a.free_memory_bytes)
                .cmp(&(b.free_cpu_millis, b.free_memory_bytes))
                .then_with(|| b.name.cmp(&a.name))
        })
    {
        most.free_cpu_millis = (most.free_cpu_millis - cpu_millis).max(0);
        most.free_memory_bytes = (most.free_memory_bytes - memory_bytes).max(0);
    }
}

impl Candidate {
    /// Free CPU in millicores (never negative).
    pub fn free_cpu_millis(&self) -> i64 {
        (self.cpu_allocatable_millis - self.cpu_requested_millis).max(0)
    }

    /// Free memory in bytes (never negative).
    pub fn free_memory_bytes(&self) -> i64 {
        (self.memory_allocatable_bytes - self.memory_requested_bytes).max(0)
    }

    /// Counts a workspace just placed here (not bound to a node yet): its
    /// requests join the cluster's, and are charged to the node with the most
    /// room, as a fresh read would charge the cluster's unbound requests.
    pub fn charge(&mut self, cpu_millis: i64, memory_bytes: i64) {
        self.cpu_requested_millis += cpu_millis;
        self.memory_requested_bytes += memory_bytes;
        if let Some(nodes) = &mut self.nodes {
            charge_most_room(nodes, cpu_millis, memory_bytes);
        }
    }

    fn usable(&self) -> bool {
        self.tunnel_up && !self.cordoned && self.status == ClusterStatus::Connected
    }

    /// Whether `req` fits now: in the cluster's free totals (what the
    /// placement write checks again under the lock, for a cluster without
    /// autoscaling; a full one with it goes to the scale-up tier) and, for a
    /// cluster that reports its nodes, in one node's room. Both, because a
    /// node's room comes from the manager's last report: a workspace whose
    /// pod was bound since that report is in neither the report nor the
    /// unbound requests, while the totals count it at once.
    fn fits_now(&self, req: &PlacementRequest) -> bool {
        let totals = self.free_cpu_millis() >= req.cpu_millis
            && self.free_memory_bytes() >= req.memory_bytes;
        totals
            && match &self.nodes {
                Some(nodes) => nodes.iter().any(|n| n.holds(req)),
                None => true,
            }
    }

    /// Whether the autoscaler could add a node for `req`.
    fn fits_after_scale_up(&self, req: &PlacementRequest) -> bool {
        self.autoscaling.is_some_and(|a| {
            a.max_node_cpu_millis >= req.cpu_millis
                && a.max_node_memory_bytes >= req.memory_bytes
                && a.max_nodes.is_none_or(|max| {
                    let now = self.nodes.as_ref().map_or(0, Vec::len);
                    now < max as usize
                })
        })
    }

    /// Whether `req` is within the cluster's per-pod maximums (GKE Autopilot).
    fn within_pod_limit(&self, req: &PlacementRequest) -> bool {
        self.autoscaling
            .is_none_or(|a| a.admits_pod(req.cpu_millis, req.memory_bytes))
    }

    /// Free and allocatable totals: over the admitted nodes when reported.
    fn totals(&self) -> (i64, i64, i64, i64) {
        match &self.nodes {
            Some(nodes) => nodes.iter().fold((0, 0, 0, 0), |t, n| {
                (
                    t.0 + n.free_cpu_millis,
                    t.1 + n.cpu_allocatable_millis,
                    t.2 + n.free_memory_bytes,
                    t.3 + n.memory_allocatable_bytes,
                )
            }),
            None => (
                self.free_cpu_millis(),
                self.cpu_allocatable_millis,
                self.free_memory_bytes(),
                self.memory_allocatable_bytes,
            ),
        }
    }
}

/// What a workspace asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Only this cluster (by name).
    pub cluster: Option<String>,
    /// Only clusters in this region.
    pub region: Option<String>,
}

/// Why nothing fits, in numbers the user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The named cluster does not exist in the organisation.
    #[error("no cluster named {0:?}")]
    UnknownCluster(String),
    /// No cluster is connected, uncordoned and matches the constraints.
    #[error("no connected, uncordoned cluster{constraint}")]
    NoCandidate {
        /// The constraint, for the message (e.g. ` in region europe-west1`).
        constraint: String,
    },
    /// Candidates exist but none has room.
    #[error(
        "no connected cluster can fit {} CPU / {}; largest free{}: {} CPU / {} on {}",
        Cpu(*cpu_millis), Mem(*memory_bytes),
        if largest_node.is_some() { " node" } else { "" },
        Cpu(*largest_cpu_millis), Mem(*largest_memory_bytes),
        Where(largest_node.as_deref(), largest_cluster)
    )]
    NoRoom {
        /// The node with the most room, when the clusters report nodes.
        largest_node: Option<String>,
        /// The request's CPU.
        cpu_millis: i64,
        /// The request's memory.
        memory_bytes: i64,
        /// The cluster with the most free room.
        largest_cluster: String,
        /// Its free CPU.
        largest_cpu_millis: i64,
        /// Its free memory.
        largest_memory_bytes: i64,
    },
    /// A cluster has room, but takes no pod this large (GKE Autopilot's
    /// per-pod maximums).
    #[error(
        "no connected cluster can fit {} CPU / {}; {cluster} takes at most {} CPU / {} per workspace (GKE Autopilot)",
        Cpu(*cpu_millis), Mem(*memory_bytes), Cpu(*max_cpu_millis), Mem(*max_memory_bytes)
    )]
    OverPodLimit {
        /// The cluster.
        cluster: String,
        /// The request's CPU.
        cpu_millis: i64,
        /// The request's memory.
        memory_bytes: i64,
        /// Its per-pod CPU maximum.
        max_cpu_millis: i64,
        /// Its per-pod memory maximum.
        max_memory_bytes: i64,
    },
}

/// `node n1 of prod-eu`, or `prod-eu`.
struct Where<'a>(Option<&'a str>, &'a str);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(node) => write!(f, "{node} of {}", self.1),
            None => f.write_str(self.1),
        }
    }
}

/// Millicores shown as CPUs (`3.5`).
struct Cpu(i64);

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1000;
        let frac = self.0 % 1000;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let s = format!("{frac:03}");
            write!(f, "{whole}.{}", s.trim_end_matches('0'))
        }
    }
}

/// Bytes shown in binary units (`12 GiB`).
struct Mem(i64);

impl fmt::Display for Mem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, i64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, size) in UNITS {
            if self.0 >= size {
                let value = self.0 as f64 / size as f64;
                return if (value - value.round()).abs() < 0.05 {
                    write!(f, "{} {unit}", value.round() as i64)
                } else {
                    write!(f, "{value:.1} {unit}")
                };
            }
        }
        write!(f, "{} B", self.0)
    }
}

/// The share of `allocatable` left after taking `used` (0 when nothing is
/// allocatable).
fn share(free_after: i64, allocatable: i64) -> f64 {
    if allocatable <= 0 {
        0.0
    } else {
        free_after as f64 / allocatable as f64
    }
}

/// The candidate's score for `req`, or `None` when it cannot take it (no room
/// now, none after a scale-up, or over its per-pod maximums). One look at its
/// nodes per decision.
fn score(c: &Candidate, req: &PlacementRequest) -> Option<f64> {
    if !c.within_pod_limit(req) {
        return None;
    }
    if !c.fits_now(req) {
        // Fits only once the autoscaler adds a node: after every cluster with
        // room now.
        return c.fits_after_scale_up(req).then_some(-1.0);
    }
    let (free_cpu, cpu_alloc, free_mem, mem_alloc) = c.totals();
    let cpu = share(free_cpu - req.cpu_millis, cpu_alloc);
    let mem = share(free_mem - req.memory_bytes, mem_alloc);
    Some(cpu.min(mem))
}

/// The clusters that can take `req`, best first. Errors say why none can.
pub fn rank<'a>(
    req: &PlacementRequest,
    clusters: &'a [Candidate],
) -> Result<Vec<&'a Candidate>, PlacementError> {
    if let Some(name) = &req.cluster
        && !clusters.iter().any(|c| &c.name == name)
    {
        return Err(PlacementError::UnknownCluster(name.clone()));
    }
    let matching: Vec<&Candidate> = clusters
        .iter()
        .filter(|c| c.usable())
        .filter(|c| req.cluster.as_ref().is_none_or(|n| &c.name == n))
        .filter(|c| {
            req.region
                .as_ref()
                .is_none_or(|r| c.region.as_deref() == Some(r.as_str()))
        })
        .collect();
    if matching.is_empty() {
        let mut constraint = String::new();
        if let Some(n) = &req.cluster {
            constraint.push_str(&format!(" named {n:?}"));
        }
        if let Some(r) = &req.region {
            constraint.push_str(&format!(" in region {r}"));
        }
        return Err(PlacementError::NoCandidate { constraint });
    }
    let mut fitting: Vec<(f64, &Candidate)> = matching
        .iter()
        .filter_map(|c| Some((score(c, req)?, *c)))
        .collect();
    if fitting.is_empty()
        && let Some(c) = matching
            .iter()
            .find(|c| !c.within_pod_limit(req) && (c.fits_now(req) || c.fits_after_scale_up(req)))
        && let Some(a) = c.autoscaling
    {
        // Room enough, but the cluster refuses pods this large.
        return Err(PlacementError::OverPodLimit {
            cluster: c.name.clone(),
            cpu_millis: req.cpu_millis,
            memory_bytes: req.memory_bytes,
            max_cpu_millis: a.max_node_cpu_millis,
            max_memory_bytes: a.max_node_memory_bytes,
        });
    }
    if fitting.is_empty() && matching.iter().any(|c| c.nodes.is_some()) {
        // The node that comes closest to holding the request, over every
        // cluster that reports nodes; a node never has more room than its
        // cluster's free totals.
        let largest = matching
            .iter()
            .flat_map(|c| {
                c.nodes.iter().flatten().map(move |n| {
                    let room = NodeRoom {
                        free_cpu_millis: n.free_cpu_millis.min(c.free_cpu_millis()),
                        free_memory_bytes: n.free_memory_bytes.min(c.free_memory_bytes()),
                        ..n.clone()
                    };
                    (room.closeness(req), &c.name, room)
                })
            })
            .max_by(|a, b| {
                a.0.partial_cmp(&b.0)
                    .unwrap_or(Ordering::Equal)
                    .then_with(|| b.1.cmp(a.1))
                    .then_with(|| b.2.name.cmp(&a.2.name))
            });
        return Err(match largest {
            Some((_, cluster, node)) => PlacementError::NoRoom {
                largest_node: Some(node.name),
                cpu_millis: req.cpu_millis,
                memory_bytes: req.memory_bytes,
                largest_cluster: cluster.clone(),
                largest_cpu_millis: node.free_cpu_millis,
                largest_memory_bytes: node.free_memory_bytes,
            },
            None => PlacementError::NoRoom {
                largest_node: None,
                cpu_millis: req.cpu_millis,
                memory_bytes: req.memory_bytes,
                largest_cluster: matching[0].name.clone(),
                largest_cpu_millis: 0,
                largest_memory_bytes: 0,
            },
        });
    }
    if fitting.is_empty() {
        // The cluster that comes closest to fitting: the largest fraction of the
        // request that its free CPU and memory could both cover.
        let closeness = |c: &Candidate| {
            share(c.free_cpu_millis(), req.cpu_millis.max(1))
                .min(share(c.free_memory_bytes(), req.memory_bytes.max(1)))
        };
        let largest = matching
            .iter()
            .max_by(|a, b| {
                closeness(a)
                    .partial_cmp(&closeness(b))
                    .unwrap_or(Ordering::Equal)
                    .then_with(|| b.name.cmp(&a.name))
            })
            .copied();
        let largest = largest.unwrap_or(matching[0]);
        return Err(PlacementError::NoRoom {
            largest_node: None,
            cpu_millis: req.cpu_millis,
            memory_bytes: req.memory_bytes,
            largest_cluster: largest.name.clone(),
            largest_cpu_millis: largest.free_cpu_millis(),
            largest_memory_bytes: largest.free_memory_bytes(),
        });
    }
    // Name, then id, make the order total: an unstable sort gives the same answer.
    fitting.sort_unstable_by(|(sa, a), (sb, b)| {
        sb.partial_cmp(sa)
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.cluster_id.cmp(&b.cluster_id))
    });
    Ok(fitting.into_iter().map(|(_, c)| c).collect())
}

#[cfg(test)]
mod node_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;

    fn cluster(name: &str, cpu: i64, mem_gib: i64) -> Candidate {
        Candidate {
            cluster_id: Uuid::new_v4(),
            name: name.into(),
            status: ClusterStatus::Connected,
            tunnel_up: true,
            cordoned: false,
            region: Some("europe-west1".into()),
            cpu_allocatable_millis: cpu,
            memory_allocatable_bytes: mem_gib * GIB,
            cpu_requested_millis: 0,
            memory_requested_bytes: 0,
            nodes: None,
            autoscaling: None,
        }
    }

    fn req(cpu: i64, mem_gib: i64) -> PlacementRequest {
        PlacementRequest {
            cpu_millis: cpu,
            memory_bytes: mem_gib * GIB,
            cluster: None,
            region: None,
        }
    }

    fn names(r: Result<Vec<&Candidate>, PlacementError>) -> Vec<String> {
        r.unwrap().into_iter().map(|c| c.name.clone()).collect()
    }

    #[test]
    fn the_emptiest_cluster_wins() {
        let mut busy = cluster("busy", 8000, 32);
        busy.cpu_requested_millis = 6000;
        busy.memory_requested_bytes = 24 * GIB;
        let idle = cluster("idle", 4000, 16);
        assert_eq!(names(rank(&req(1000, 2), &[busy, idle])), ["idle", "busy"]);
    }

    #[test]
    fn ties_break_by_name_deterministically() {
        let a = cluster("b-cluster", 4000, 16);
        let b = cluster("a-cluster", 4000, 16);
        assert_eq!(
            names(rank(&req(1000, 1), &[a.clone(), b.clone()])),
            ["a-cluster", "b-cluster"]
        );
        assert_eq!(
            names(rank(&req(1000, 1), &[b, a])),
            ["a-cluster", "b-cluster"]
        );
    }

    #[test]
    fn cordoned_disconnected_and_tunnelless_clusters_are_skipped() {
        let mut cordoned = cluster("cordoned", 64000, 256);
        cordoned.cordoned = true;
        let mut gone = cluster("gone", 64000, 256);
        gone.status = ClusterStatus::Disconnected;
        let mut no_tunnel = cluster("no-tunnel", 64000, 256);
        no_tunnel.tunnel_up = false;
        let mut degraded = cluster("degraded", 64000, 256);
        degraded.status = ClusterStatus::Degraded;
        let small = cluster("small", 2000, 4);
        assert_eq!(
            names(rank(
                &req(1000, 1),
                &[cordoned, gone, no_tunnel, degraded, small]
            )),
            ["small"]
        );
    }

    #[test]
    fn region_and_name_constraints() {
        let eu = cluster("eu", 4000, 16);
        let mut us = cluster("us", 8000, 32);
        us.region = Some("us-central1".into());
        let both = [eu.clone(), us.clone()];
        let mut r = req(1000, 1);
        r.region = Some("us-central1".into());
        assert_eq!(names(rank(&r, &both)), ["us"]);
        r.region = Some("asia-east1".into());
        assert_eq!(
            rank(&r, &both).unwrap_err().to_string(),
            "no connected, uncordoned cluster in region asia-east1"
        );
        let mut r = req(1000, 1);
        r.cluster = Some("eu".into());
        assert_eq!(names(rank(&r, &both)), ["eu"]);
        r.cluster = Some("mars".into());
        assert_eq!(
            rank(&r, &both).unwrap_err(),
            PlacementError::UnknownCluster("mars".into())
        );
    }

    #[test]
    fn nothing_fits_says_why_in_numbers() {
        let mut eu = cluster("prod-eu", 8000, 32);
        eu.cpu_requested_millis = 4500;
        eu.memory_requested_bytes = 20 * GIB;
        let us = cluster("prod-us", 2000, 4);
        let err = rank(&req(8000, 32), &[eu, us]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no connected cluster can fit 8 CPU / 32 GiB; largest free: 3.5 CPU / 12 GiB on prod-eu"
        );
    }

    #[test]
    fn requests_fit_exactly_and_overcommitted_clusters_have_no_room() {
        let mut full = cluster("full", 4000, 16);
        full.cpu_requested_millis = 5000; // over-committed by someone else
        assert!(rank(&req(1, 0), std::slice::from_ref(&full)).is_err());
        let exact = cluster("exact", 4000, 16);
        assert_eq!(names(rank(&req(4000, 16), &[exact])), ["exact"]);
    }

    #[test]
    fn quantities_print_readably() {
        assert_eq!(Cpu(3500).to_string(), "3.5");
        assert_eq!(Cpu(250).to_string(), "0.25");
        assert_eq!(Cpu(8000).to_string(), "8");
        assert_eq!(Mem(12 * GIB).to_string(), "12 GiB");
        assert_eq!(Mem(1536 << 20).to_string(), "1.5 GiB");
        assert_eq!(Mem(512 << 20).to_string(), "512 MiB");
    }
}
