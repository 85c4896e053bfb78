//! Per-node fit, unbound charges and autoscaling clusters.

use super::*;
use lapdev_common::scheduling::{ARCH_LABEL, Taint, TaintEffect, Toleration};

const GIB: i64 = 1 << 30;

fn node(name: &str, cpu: i64, mem_gib: i64) -> NodeCapacity {
    NodeCapacity {
        name: name.into(),
        cpu_allocatable_millis: cpu,
        memory_allocatable_bytes: mem_gib * GIB,
        cpu_lapdev_millis: 0,
        memory_lapdev_bytes: 0,
        cpu_other_millis: 0,
        memory_other_bytes: 0,
        taints: vec![],
        labels: [(ARCH_LABEL.to_string(), "amd64".to_string())].into(),
    }
}

fn cluster(name: &str, nodes: &[NodeCapacity], settings: &SchedulingSettings) -> Candidate {
    let rooms = charge_unbound(nodes, settings, 0, 0);
    Candidate {
        cluster_id: Uuid::new_v4(),
        name: name.into(),
        status: ClusterStatus::Connected,
        tunnel_up: true,
        cordoned: false,
        region: None,
        cpu_allocatable_millis: nodes.iter().map(|n| n.cpu_allocatable_millis).sum(),
        memory_allocatable_bytes: nodes.iter().map(|n| n.memory_allocatable_bytes).sum(),
        cpu_requested_millis: 0,
        memory_requested_bytes: 0,
        nodes: Some(rooms),
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

#[test]
fn fits_the_total_but_no_single_node_is_refused_naming_the_largest_node() {
    let nodes = [
        node("n1", 4000, 16),
        node("n2", 4000, 16),
        node("n3", 2000, 8),
    ];
    let c = cluster("prod", &nodes, &SchedulingSettings::default());
    assert_eq!(
        c.cpu_allocatable_millis, 10_000,
        "the total would hold 6 CPU"
    );
    let err = rank(&req(6000, 8), &[c]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no connected cluster can fit 6 CPU / 8 GiB; largest free node: 4 CPU / 16 GiB on n1 of prod"
    );
}

#[test]
fn larger_than_any_node_is_refused_and_a_fitting_one_is_placed() {
    let mut busy = node("big", 64_000, 256);
    busy.cpu_other_millis = 60_000; // another workload holds most of it
    let nodes = [busy, node("small", 8000, 32)];
    let c = cluster("prod", &nodes, &SchedulingSettings::default());
    let err = rank(&req(50_000, 64), std::slice::from_ref(&c)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("largest free node: 8 CPU / 32 GiB on small of prod"),
        "{err}"
    );
    assert_eq!(rank(&req(8000, 32), &[c]).unwrap().len(), 1);
}

/// The manager's node report lags: a workspace bound since the last report
/// is in neither that report nor the unbound requests, so the node still
/// shows its room. The cluster's totals (which the placement write checks
/// under the lock) count it: placement refuses rather than choosing a
/// cluster the write would refuse, and names no more room than the totals.
#[test]
fn a_node_report_that_lags_the_placed_requests_does_not_make_room() {
    let nodes = [node("n1", 4000, 16)];
    let mut c = cluster("prod", &nodes, &SchedulingSettings::default());
    c.cpu_requested_millis = 3500; // placed and bound, not reported yet
    c.memory_requested_bytes = 4 * GIB;
    assert_eq!(c.nodes.as_ref().unwrap()[0].free_cpu_millis, 4000);
    let err = rank(&req(1000, 1), std::slice::from_ref(&c)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no connected cluster can fit 1 CPU / 1 GiB; largest free node: 0.5 CPU / 12 GiB on n1 of prod"
    );
    assert_eq!(rank(&req(500, 1), &[c]).unwrap().len(), 1);
}

#[test]
fn unbound_workspaces_are_charged_to_the_roomiest_node() {
    let nodes = [node("n1", 8000, 32), node("n2", 4000, 16)];
    let rooms = charge_unbound(&nodes, &SchedulingSettings::default(), 6000, 4 * GIB);
    assert_eq!(rooms[0].free_cpu_millis, 2000);
    assert_eq!(rooms[0].free_memory_bytes, 28 * GIB);
    assert_eq!(
        rooms[1].free_cpu_millis, 4000,
        "the others stay as reported"
    );
}

#[test]
fn placements_in_one_snapshot_are_charged_one_by_one_to_the_roomiest_node() {
    // Two 8-CPU nodes take two 5-CPU workspaces, one each, and no third: the
    // snapshot charges each placement to the node with the most room then
    // (charging their sum to one node would clamp at zero and leave the
    // other node looking empty).
    let nodes = [node("n1", 8000, 32), node("n2", 8000, 32)];
    let mut c = cluster("prod", &nodes, &SchedulingSettings::default());
    for _ in 0..2 {
        assert_eq!(
            rank(&req(5000, 4), std::slice::from_ref(&c)).unwrap().len(),
            1
        );
        c.charge(5000, 4 * GIB);
    }
    let rooms = c.nodes.as_ref().unwrap();
    assert_eq!(
        (rooms[0].free_cpu_millis, rooms[1].free_cpu_millis),
        (3000, 3000)
    );
    assert_eq!(c.cpu_requested_millis, 10_000);
    let err = rank(&req(5000, 4), std::slice::from_ref(&c)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no connected cluster can fit 5 CPU / 4 GiB; largest free node: 3 CPU / 28 GiB on n1 of prod"
    );
}

#[test]
fn the_settings_decide_which_nodes_count() {
    let mut arm = node("arm", 16_000, 64);
    arm.labels.insert(ARCH_LABEL.into(), "arm64".into());
    let mut gpu = node("gpu", 32_000, 128);
    gpu.taints.push(Taint {
        key: "nvidia.com/gpu".into(),
        value: "present".into(),
        effect: TaintEffect::NoSchedule,
    });
    let nodes = [node("amd", 2000, 8), arm, gpu];
    let amd_only = SchedulingSettings {
        arch: Some("amd64".into()),
        ..Default::default()
    };
    // arm64 excluded by the architecture, the tainted pool by its taint.
    assert!(rank(&req(4000, 8), &[cluster("c", &nodes, &amd_only)]).is_err());
    // The default settings take arm64 but still not the tainted pool.
    let any = cluster("c", &nodes, &SchedulingSettings::default());
    assert!(rank(&req(20_000, 8), std::slice::from_ref(&any)).is_err());
    assert!(rank(&req(16_000, 8), &[any]).is_ok());
    // A toleration opens the tainted pool.
    let tolerant = SchedulingSettings {
        tolerations: vec![Toleration::parse("nvidia.com/gpu:NoSchedule").unwrap()],
        ..Default::default()
    };
    assert!(rank(&req(20_000, 8), &[cluster("c", &nodes, &tolerant)]).is_ok());
}

#[test]
fn autoscaling_clusters_take_what_the_largest_addable_node_holds_and_rank_last() {
    let nodes = [node("n1", 4000, 16)];
    let mut auto = cluster("auto", &nodes, &SchedulingSettings::default());
    auto.autoscaling = Some(Autoscaling {
        max_node_cpu_millis: 32_000,
        max_node_memory_bytes: 128 * GIB,
        max_nodes: Some(3),
        per_pod_limit: false,
    });
    let fixed = cluster(
        "fixed",
        &[node("m1", 8000, 32)],
        &SchedulingSettings::default(),
    );
    let both = [auto.clone(), fixed];
    // Beyond current nodes, within the addable node: placed.
    let ranked = rank(&req(16_000, 64), &both).unwrap();
    assert_eq!(ranked.len(), 1);
    assert_eq!(ranked[0].name, "auto");
    // Both fit now: fixed has room now and auto's room now is smaller, so the
    // ordering is by score; when only auto's scale-up fits, it ranks last.
    let ranked = rank(&req(6000, 8), &both).unwrap();
    assert_eq!(ranked[0].name, "fixed");
    // Larger than the addable node: refused.
    assert!(rank(&req(40_000, 8), std::slice::from_ref(&auto)).is_err());
    // The node limit reached: no scale-up.
    let mut full = auto.clone();
    full.autoscaling = Some(Autoscaling {
        max_nodes: Some(1),
        ..auto.autoscaling.unwrap()
    });
    assert!(rank(&req(16_000, 64), &[full]).is_err());
}

#[test]
fn clusters_without_a_node_report_keep_the_totals_rule() {
    let mut old = cluster("old", &[], &SchedulingSettings::default());
    old.nodes = None;
    old.cpu_allocatable_millis = 8000;
    old.memory_allocatable_bytes = 32 * GIB;
    assert_eq!(rank(&req(8000, 32), &[old]).unwrap()[0].name, "old");
}

#[test]
fn autopilot_maximums_bound_every_workspace() {
    // A current node larger than Autopilot's per-pod maximums (30 CPU).
    let nodes = [node("big", 48_000, 192)];
    let mut autopilot = cluster("autopilot", &nodes, &SchedulingSettings::default());
    autopilot.autoscaling = Some(Autoscaling::GKE_AUTOPILOT);
    assert_eq!(
        rank(&req(16_000, 64), std::slice::from_ref(&autopilot)).unwrap()[0].name,
        "autopilot"
    );
    let err = rank(&req(40_000, 64), std::slice::from_ref(&autopilot)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no connected cluster can fit 40 CPU / 64 GiB; autopilot takes at most 30 CPU / 110 GiB per workspace (GKE Autopilot)"
    );
    // The same node under declared (per-node) limits holds it.
    let mut declared = autopilot.clone();
    declared.autoscaling = Some(Autoscaling {
        per_pod_limit: false,
        ..Autoscaling::GKE_AUTOPILOT
    });
    assert!(rank(&req(40_000, 64), &[declared]).is_ok());
}
