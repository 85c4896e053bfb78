//! Replays the quantity and name seed corpora of the fuzz targets
//! (`fuzz/corpus/`) with the same checks the targets make.

use std::path::Path;

use lapdev_common::name::{NameKind, validate};
use lapdev_common::quantity::{parse_bytes, parse_cpu_millis};

fn corpus(target: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let text = String::from_utf8(std::fs::read(&p).unwrap()).ok()?;
            Some((p.file_name().unwrap().to_string_lossy().into_owned(), text))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_quantity_corpus_parses_to_values_of_the_right_sign_or_errors() {
    let seeds = corpus("quantity");
    assert!(seeds.len() >= 5, "the seed corpus is missing");
    for (name, text) in seeds {
        // The grammar allows a sign (as Kubernetes does); without a minus the
        // value is never negative.
        let negative = text.trim_start().starts_with('-');
        if let Ok(m) = parse_cpu_millis(&text) {
            assert!(negative || m >= 0, "{name}: {m}");
        }
        if let Ok(b) = parse_bytes(&text) {
            assert!(negative || b >= 0, "{name}: {b}");
        }
    }
    assert_eq!(parse_cpu_millis("250m"), Ok(250));
    assert_eq!(parse_bytes("8Gi"), Ok(8 << 30));
}

#[test]
fn the_name_corpus_obeys_the_written_rules() {
    let seeds = corpus("name");
    assert!(seeds.len() >= 5, "the seed corpus is missing");
    for (name, text) in seeds {
        for kind in [
            NameKind::Cluster,
            NameKind::Workspace,
            NameKind::Token,
            NameKind::Provider,
        ] {
            if validate(kind, &text).is_ok() {
                assert!((1..=63).contains(&text.chars().count()), "{name}");
                assert!(!text.chars().any(char::is_control), "{name}");
            }
        }
    }
}
