//! Replays the tunnel-frame seed corpus of the fuzz targets (`fuzz/corpus/`)
//! through the decoder, so the ordinary test suite runs what fuzzing starts
//! from (and every crash fuzzing found, once added there).

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_tunnel_frame_corpus_decodes_without_panicking() {
    let seeds = corpus("tunnel_frame");
    assert!(seeds.len() >= 5, "the seed corpus is missing");
    for (name, bytes) in seeds {
        let valid = lapdev_hrpc::tunnel::decode_frame_for_fuzzing(&bytes);
        // The seeds are named for what they are.
        let expect_valid = [
            "request",
            "request_default_method",
            "response",
            "response_many_values",
            "cancel",
            "unknown_kind",
        ]
        .contains(&name.as_str());
        let expect_invalid =
            ["header_overrun", "too_short", "not_json", "bad_path"].contains(&name.as_str());
        if expect_valid {
            assert!(valid, "{name} should decode");
        }
        if expect_invalid {
            assert!(!valid, "{name} should be refused");
        }
        // Every truncation of every seed is handled too.
        for end in 0..bytes.len() {
            let _ = lapdev_hrpc::tunnel::decode_frame_for_fuzzing(&bytes[..end]);
        }
    }
}
