//! Replays the cluster-info seed corpus of the fuzz targets
//! (`fuzz/corpus/cluster_info`) through the same check as the `cluster_info`
//! target (`fuzz/checks/cluster_info.rs`), so the ordinary test suite runs what
//! fuzzing starts from, and every crash fuzzing found once added there.

#[path = "../../fuzz/checks/cluster_info.rs"]
mod cluster_info_check;

use std::path::Path;

use lapdev_common::status::CloudProvider;

fn seed(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/cluster_info")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_cluster_info_corpus_builds_as_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/cluster_info");
    let count = std::fs::read_dir(&dir).unwrap().count();
    assert!(count >= 5, "the seed corpus is missing");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let _ = cluster_info_check::check(&std::fs::read(entry.unwrap().path()).unwrap());
    }

    let gke = cluster_info_check::check(&seed("gke_nodes")).expect("a node list");
    assert_eq!(gke.node_count, 2);
    assert_eq!(gke.cpu_capacity_millis, 6_000);
    assert_eq!(gke.cpu_allocatable_millis, 3_920 + 2_000);
    assert_eq!(gke.provider, CloudProvider::Gcp);
    assert_eq!(gke.region.as_deref(), Some("europe-west1"));

    let bad = cluster_info_check::check(&seed("bad_quantities")).expect("a node list");
    assert_eq!(bad.cpu_capacity_millis, 0);

    let huge = cluster_info_check::check(&seed("huge_values")).expect("a node list");
    assert_eq!(huge.memory_capacity_bytes, i64::MAX, "sums saturate");

    assert!(cluster_info_check::check(&seed("not_a_list")).is_none());
}
