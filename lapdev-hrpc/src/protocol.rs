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

/// [`VERSION_HEADER`] as a header name, built at compile time (a `&str` name is
/// parsed again on every use).
pub(crate) const VERSION_NAME: http::HeaderName = http::HeaderName::from_static(VERSION_HEADER);
/// [`TIMEOUT_HEADER`] as a header name.
pub(crate) const TIMEOUT_NAME: http::HeaderName = http::HeaderName::from_static(TIMEOUT_HEADER);
/// [`REQUEST_ID_HEADER`] as a header name.
pub(crate) const REQUEST_ID_NAME: http::HeaderName =
    http::HeaderName::from_static(REQUEST_ID_HEADER);
/// [`PROTOCOL_VERSION`] as a header value (a test checks they agree).
pub(crate) const VERSION_VALUE: http::HeaderValue = http::HeaderValue::from_static("1");

/// Returns the request id to use for a request that carried `given`.
pub fn request_id_or_new(given: Option<&http::HeaderValue>) -> String {
    let id = request_id_header(given);
    // Both a sane given id and a generated one are printable ASCII.
    id.to_str().unwrap_or_default().to_owned()
}

/// Whether `value` is echoed as given: 1 to [`MAX_REQUEST_ID_LEN`] printable
/// ASCII characters.
fn is_sane_request_id(value: &http::HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

/// [`request_id_or_new`] as a header value: a sane given id is shared, not
/// copied, and a generated one is never formatted through `format!`.
pub(crate) fn request_id_header(given: Option<&http::HeaderValue>) -> http::HeaderValue {
    match given {
        Some(v) if is_sane_request_id(v) => v.clone(),
        _ => new_request_id_header(),
    }
}

/// A fresh request id: a random per-process prefix and a counter, so ids are
/// unique across processes without a system call per request.
pub fn new_request_id() -> String {
    let id = new_request_id_bytes();
    // Hex digits are ASCII.
    String::from_utf8_lossy(&id).into_owned()
}

/// [`new_request_id`] as a header value.
pub(crate) fn new_request_id_header() -> http::HeaderValue {
    http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&new_request_id_bytes()))
        .unwrap_or_else(|_| http::HeaderValue::from_static("0"))
}

/// The 32 lower-case hex digits of a fresh request id.
fn new_request_id_bytes() -> [u8; 32] {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 32];
    for (i, word) in [prefix, n].into_iter().enumerate() {
        for j in 0..16 {
            let nibble = (word >> (60 - 4 * j)) & 0xf;
            out[i * 16 + j] = HEX[nibble as usize];
        }
    }
    out
}

/// The path of a method below a service's mount point: `/{Service}/{method}`.
pub fn method_path(service: &str, method: &str) -> String {
    format!("/{service}/{method}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constant_header_value_is_the_protocol_version() {
        assert_eq!(VERSION_VALUE, http::HeaderValue::from(PROTOCOL_VERSION));
        assert_eq!(VERSION_NAME.as_str(), VERSION_HEADER);
        assert_eq!(TIMEOUT_NAME.as_str(), TIMEOUT_HEADER);
        assert_eq!(REQUEST_ID_NAME.as_str(), REQUEST_ID_HEADER);
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_unique() {
        let a = new_request_id();
        let b = new_request_id_header();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(b.len(), 32);
        assert_ne!(a.as_bytes(), b.as_bytes());
        // Same process: same prefix, the counter differs.
        assert_eq!(a[..16], b.to_str().unwrap()[..16]);
    }

    #[test]
    fn a_sane_id_is_kept_and_anything_else_replaced() {
        let sane = http::HeaderValue::from_static("req-1");
        assert_eq!(request_id_header(Some(&sane)), sane);
        assert_eq!(request_id_or_new(Some(&sane)), "req-1");
        let spaced = http::HeaderValue::from_static("a b");
        assert_eq!(request_id_header(Some(&spaced)).len(), 32);
        let long = http::HeaderValue::from_str(&"x".repeat(MAX_REQUEST_ID_LEN + 1)).unwrap();
        assert_eq!(request_id_or_new(Some(&long)).len(), 32);
        let empty = http::HeaderValue::from_static("");
        assert_eq!(request_id_or_new(Some(&empty)).len(), 32);
        assert_eq!(request_id_or_new(None).len(), 32);
    }
}
