//! Name validation on arbitrary text: never a panic, and an accepted name
//! obeys the written rules (checked here independently).
#![no_main]

use lapdev_common::name::{NameKind, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [NameKind::Cluster, NameKind::Workspace, NameKind::Token, NameKind::Provider] {
        if validate(kind, text).is_ok() {
            let chars = text.chars().count();
            assert!((1..=63).contains(&chars));
            assert!(!text.chars().any(char::is_control));
            if matches!(kind, NameKind::Cluster | NameKind::Workspace) {
                assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }
    }
});
