//! The HRPC request-path check, shared by the `hrpc_request` fuzz target and
//! the corpus replay in `lapdev-hrpc/tests/fuzz_corpus.rs`.
//!
//! An input is a small text HTTP request: a first line `METHOD PATH`, header
//! lines `name: value`, an empty line, then the body. Pieces the `http` crate
//! refuses (a bad method, URI or header) never reach a server, so they are
//! skipped. The request goes through the generated router in-process.
//!
//! Invariants: the router answers (no panic); a `200` only for a `POST` to a
//! known method, with a JSON body; anything else carries an HRPC error body, a
//! decoding failure names its JSON path in `details.path`; every answer echoes
//! `x-request-id`, and a sane one the caller sent comes back unchanged.

use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

/// Methods whose call panics on purpose: the fuzzer's panic hook aborts even on
/// a caught panic, so they are not called.
const SKIPPED_PATHS: &[&str] = &["/Echo/explode"];

/// Runs one input through `router`, whose methods live under `/{service}/`;
/// returns the answer's status, or `None` for an input no client could send.
/// `paused_time` (needs tokio's `test-util`) makes a `slow` call's sleep end at
/// once, so it cannot stall fuzzing; the corpus replay runs in real time.
pub fn check(router: axum::Router, service: &str, data: &[u8], paused_time: bool) -> Option<u16> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(2, |&b| b == b' ');
    let Ok(method) = http::Method::from_bytes(parts.next().unwrap_or_default()) else {
        return None;
    };
    let Ok(uri) = http::Uri::try_from(parts.next().unwrap_or(b"/")) else {
        return None;
    };
    if SKIPPED_PATHS.contains(&uri.path()) {
        return None;
    }
    let mut request = http::Request::new(axum::body::Body::from(body.to_vec()));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        request.headers_mut().append(name, value);
    }
    let sent_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    // Only the first x-request-id counts; a repeated one is ambiguous.
    let single_id = request.headers().get_all("x-request-id").iter().count() == 1;

    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if paused_time {
        builder.start_paused(true);
    }
    let rt = builder.build().expect("a runtime");
    let (status, headers, bytes) = rt.block_on(async move {
        let response = router
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("an in-memory body").to_bytes();
        (parts.status, parts.headers, bytes)
    });

    let echoed = headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on a {status} answer"));
    if let (Some(sent), true) = (&sent_id, single_id) {
        assert_eq!(echoed.as_bytes(), sent.as_bytes(), "request id not echoed");
    }
    if status == http::StatusCode::OK {
        assert_eq!(method, http::Method::POST, "200 for a {method}");
        assert!(
            uri.path().starts_with(&format!("/{service}/")),
            "200 for {}",
            uri.path()
        );
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("a 200 body is JSON");
        return Some(200);
    }
    assert!(!status.is_success(), "unexpected status {status}");
    let error: lapdev_hrpc::HrpcError = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status} without an HRPC error body ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    // `fail` returns whatever error it is asked to, so its messages prove nothing.
    if error.message.starts_with("invalid request body at") && !uri.path().ends_with("/fail") {
        let path = error.details.as_ref().and_then(|d| d.get("path"));
        assert!(
            path.is_some_and(serde_json::Value::is_string),
            "a decoding error without details.path: {error:?}"
        );
    }
    Some(status.as_u16())
}
