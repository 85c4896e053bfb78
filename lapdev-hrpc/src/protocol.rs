//! Constants of the wire protocol: version, header names and default limits.

/// The protocol major version this crate speaks. A peer that sends another major
/// in [`VERSION_HEADER`] is refused with `failed_precondition`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Request and response header carrying the protocol major version. Absent on a
/// request means "the current version", so plain `curl` works.
pub const VERSION_HEADER: &str = "hrpc-version";

/// Request header carrying the caller's deadline in milliseconds from receipt.
pub const TIMEOUT_HEADER: &str = "hrpc-timeout-ms";

/// Request id header: taken from the request when present (and sane), generated
/// otherwise, echoed on the response and logged on both sides.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The only request content type HRPC accepts (parameters such as `charset` are
/// allowed).
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Default largest request body a server accepts: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Default largest response body a client reads: 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Longest request id that is echoed as given; longer or non-printable ids are
/// replaced with a generated one.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Returns the request id to use for a request that carried `given`.
pub fn request_id_or_new(given: Option<&http::HeaderValue>) -> String {
    given
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_REQUEST_ID_LEN
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: a random per-process prefix and a counter, so ids are
/// unique across processes without a system call per request.
pub fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}{n:016x}")
}

/// The path of a method below a service's mount point: `/{Service}/{method}`.
pub fn method_path(service: &str, method: &str) -> String {
    format!("/{service}/{method}")
}
