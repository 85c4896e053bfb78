//! The tunnel frame decoder on arbitrary messages: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lapdev_hrpc::tunnel::decode_frame_for_fuzzing(data);
});
