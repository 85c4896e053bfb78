//! The HRPC request path (method, path, headers, body, JSON) through a
//! generated router in-process; the invariants are in `checks/hrpc_request.rs`.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

#[path = "../checks/hrpc_request.rs"]
mod check;
#[path = "../../lapdev-hrpc/tests/common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    let router = ROUTER.get_or_init(|| {
        common::router(
            Arc::new(common::EchoImpl::default()),
            lapdev_hrpc::ServerConfig {
                max_body_bytes: 4096,
                max_timeout: None,
            },
        )
    });
    let _ = check::check(router.clone(), "Echo", data, true);
});
