//! The cluster-info builder over arbitrary node JSON; the invariants are in
//! `checks/cluster_info.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/cluster_info.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    let _ = check::check(data);
});
