//! The Kubernetes quantity parsers on arbitrary text: never a panic, and an
//! accepted value without a minus sign is never negative.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let negative = text.trim_start().starts_with('-');
    if let Ok(millis) = lapdev_common::quantity::parse_cpu_millis(text) {
        assert!(negative || millis >= 0, "{text:?} gave {millis}");
    }
    if let Ok(bytes) = lapdev_common::quantity::parse_bytes(text) {
        assert!(negative || bytes >= 0, "{text:?} gave {bytes}");
    }
});
