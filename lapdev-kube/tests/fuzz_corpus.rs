//! Replays the install-manifest seed corpus of the fuzz targets
//! (`fuzz/corpus/manifest`) through the same check as the `manifest` target
//! (`fuzz/checks/manifest.rs`), so the ordinary test suite runs what fuzzing
//! starts from, and every crash fuzzing found once added there.

#[path = "../../fuzz/checks/manifest.rs"]
mod manifest_check;

use std::path::Path;

#[test]
fn the_manifest_corpus_renders_or_is_refused_as_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/manifest");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "the seed corpus is missing");
    for path in seeds {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let rendered = manifest_check::check(&std::fs::read(&path).unwrap());
        // The seeds are named for what they are.
        match name.as_str() {
            // `with_ca`: the CA bundle comes from the server's own
            // configuration and is passed through as given.
            "valid" | "insecure_restricted" | "odd_name" | "with_ca" => {
                assert!(rendered, "{name}")
            }
            "bad_token" | "bad_scheme" | "same_namespace" | "token_in_url"
            | "token_as_namespace" => {
                assert!(!rendered, "{name}")
            }
            _ => {}
        }
    }
}
