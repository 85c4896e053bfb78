//! The install-manifest renderer on arbitrary parameters; the invariants are
//! in `checks/manifest.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/manifest.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    let _ = check::check(data);
});
