//! Replays the tunnel-frame and HRPC-request seed corpora of the fuzz targets
//! (`fuzz/corpus/`), so the ordinary test suite runs what fuzzing starts from
//! (and every crash fuzzing found, once added there). The request corpus goes
//! through the same check as the fuzz target (`fuzz/checks/hrpc_request.rs`).

mod common;
#[path = "../../fuzz/checks/hrpc_request.rs"]
mod hrpc_request;

use std::path::Path;
use std::sync::Arc;

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

#[test]
fn the_hrpc_request_corpus_gets_structured_answers() {
    let seeds = corpus("hrpc_request");
    assert!(seeds.len() >= 10, "the seed corpus is missing");
    // The same router and limits as the fuzz target.
    let router = common::router(
        Arc::new(common::EchoImpl::default()),
        lapdev_hrpc::ServerConfig {
            max_body_bytes: 4096,
            max_timeout: None,
        },
    );
    for (name, bytes) in seeds {
        let status = hrpc_request::check(router.clone(), "Echo", &bytes, false);
        // The seeds are named for what they are.
        let expected = match name.as_str() {
            "add" | "add_with_id_and_deadline" | "mirror" | "empty_body" | "insane_request_id" => {
                200
            }
            "wrong_type" | "missing_field" | "trailing_garbage" | "array_body"
            | "signed_timeout" => 400,
            "wrong_method" => 405,
            "wrong_content_type" => 415,
            "other_version" => 412,
            "unknown_method" | "fail" => 404,
            "deadline_exceeded" => 504,
            "too_large" => 413,
            _ => continue,
        };
        assert_eq!(status, Some(expected), "{name}");
    }
}
