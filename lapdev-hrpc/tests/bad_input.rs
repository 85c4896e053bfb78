//! Every bad-input case, sent as raw HTTP/1.1 bytes the way `curl` would: each gets
//! the documented status and an HRPC error body, never a 200 and never a panic.

mod common;

use std::sync::Arc;

use common::{EchoImpl, error_body, header, post, raw};
use lapdev_hrpc::{Code, ServerConfig};

async fn addr_with(config: ServerConfig) -> std::net::SocketAddr {
    common::serve(common::router(Arc::new(EchoImpl::default()), config)).await
}

async fn addr() -> std::net::SocketAddr {
    addr_with(ServerConfig::default()).await
}

#[tokio::test]
async fn a_well_formed_curl_call_works_and_echoes_headers() {
    let addr = addr().await;
    let (status, headers, body) = raw(
        addr,
        &post(
            "/rpc/Echo/add",
            Some("application/json"),
            br#"{"a": 2, "b": 3}"#,
            "x-request-id: curl-1\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"5");
    assert_eq!(header(&headers, "x-request-id"), Some("curl-1"));
    assert_eq!(header(&headers, "hrpc-version"), Some("1"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_or_unusable() {
    let addr = addr().await;
    let (_, headers, _) = raw(
        addr,
        &post("/rpc/Echo/nothing", Some("application/json"), b"{}", ""),
    )
    .await;
    let generated = header(&headers, "x-request-id").expect("an id is generated");
    assert!(generated.len() >= 16);

    let long = "x".repeat(500);
    let (_, headers, _) = raw(
        addr,
        &post(
            "/rpc/Echo/nothing",
            Some("application/json"),
            b"{}",
            &format!("x-request-id: {long}\r\n"),
        ),
    )
    .await;
    let replaced = header(&headers, "x-request-id").unwrap();
    assert_ne!(replaced, long);
}

#[tokio::test]
async fn get_is_405_with_allow_post() {
    let addr = addr().await;
    let (status, headers, body) = raw(
        addr,
        b"GET /rpc/Echo/add HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("POST"));
    let e = error_body(&body);
    assert!(e.message.contains("POST"), "{}", e.message);
}

#[tokio::test]
async fn an_unknown_method_is_404_unimplemented() {
    let addr = addr().await;
    for path in [
        "/rpc/Echo/nope",
        "/rpc/Nope/add",
        "/rpc/Echo",
        "/rpc/Echo/add/more",
    ] {
        let (status, _, body) = raw(addr, &post(path, Some("application/json"), b"{}", "")).await;
        assert_eq!(status, 404, "{path}");
        let e = error_body(&body);
        assert_eq!(e.code, Code::Unimplemented, "{path}");
        assert!(e.message.contains(path), "{}", e.message);
    }
}

#[tokio::test]
async fn a_missing_or_wrong_content_type_is_415() {
    let addr = addr().await;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/jsonx"),
        Some(""),
    ] {
        let (status, _, body) =
            raw(addr, &post("/rpc/Echo/add", ct, br#"{"a":1,"b":2}"#, "")).await;
        assert_eq!(status, 415, "{ct:?}");
        assert_eq!(error_body(&body).code, Code::InvalidArgument);
    }
    // Parameters and case do not matter.
    let (status, _, _) = raw(
        addr,
        &post(
            "/rpc/Echo/add",
            Some("Application/JSON; charset=utf-8"),
            br#"{"a":1,"b":2}"#,
            "",
        ),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let addr = addr_with(ServerConfig {
        max_body_bytes: 1024,
        ..Default::default()
    })
    .await;
    let big = format!(r#"{{"message": "{}"}}"#, "x".repeat(2048));
    let (status, _, body) = raw(
        addr,
        &post(
            "/rpc/Echo/echo",
            Some("application/json"),
            big.as_bytes(),
            "",
        ),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(error_body(&body).code, Code::ResourceExhausted);

    // Just under the limit is fine.
    let ok = format!(r#"{{"message": "{}"}}"#, "x".repeat(900));
    let (status, _, _) = raw(
        addr,
        &post(
            "/rpc/Echo/echo",
            Some("application/json"),
            ok.as_bytes(),
            "",
        ),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_default_limit_is_4_mib() {
    let addr = addr().await;
    let big = format!(r#"{{"message": "{}"}}"#, "x".repeat(4 * 1024 * 1024 + 1));
    let (status, _, _) = raw(
        addr,
        &post(
            "/rpc/Echo/echo",
            Some("application/json"),
            big.as_bytes(),
            "",
        ),
    )
    .await;
    assert_eq!(status, 413);
    let fits = format!(r#"{{"message": "{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let (status, _, body) = raw(
        addr,
        &post(
            "/rpc/Echo/echo",
            Some("application/json"),
            fits.as_bytes(),
            "",
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 3 * 1024 * 1024 + 2);
}

#[tokio::test]
async fn malformed_json_is_400_with_the_path() {
    let addr = addr().await;
    let cases: &[(&str, &[u8], &str)] = &[
        ("/rpc/Echo/add", b"{", "."),
        ("/rpc/Echo/add", b"not json", "."),
        ("/rpc/Echo/add", br#"{"a": 1, "b": 2} trailing"#, "."),
        ("/rpc/Echo/add", br#"{"a": "one", "b": 2}"#, "a"),
        ("/rpc/Echo/add", br#"[1, 2]"#, "."),
        (
            "/rpc/Echo/mirror",
            br#"{"point": {"x": 1, "y": true}}"#,
            "point.y",
        ),
        ("/rpc/Echo/add", b"\xff\xfe", "."),
    ];
    for (path, body, json_path) in cases {
        let (status, _, resp) = raw(addr, &post(path, Some("application/json"), body, "")).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        let e = error_body(&resp);
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(
            e.details.as_ref().and_then(|d| d["path"].as_str()),
            Some(*json_path),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn a_missing_argument_is_400_naming_it() {
    let addr = addr().await;
    let (status, _, body) = raw(
        addr,
        &post(
            "/rpc/Echo/add",
            Some("application/json"),
            br#"{"a": 1}"#,
            "",
        ),
    )
    .await;
    assert_eq!(status, 400);
    let e = error_body(&body);
    assert!(e.message.contains("`b`"), "{}", e.message);
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let addr = addr().await;
    let (status, _, body) = raw(
        addr,
        &post(
            "/rpc/Echo/mirror",
            Some("application/json"),
            br#"{"point": {"x": 1, "y": 2, "z": 3}, "extra": [1, 2]}"#,
            "",
        ),
    )
    .await;
    assert_eq!(status, 200);
    let p: common::Point = serde_json::from_slice(&body).unwrap();
    assert_eq!((p.x, p.y, p.label), (-1, -2, None));
}

#[tokio::test]
async fn an_empty_body_means_no_arguments() {
    let addr = addr().await;
    let (status, _, body) = raw(
        addr,
        &post("/rpc/Echo/nothing", Some("application/json"), b"", ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"null");
}

#[tokio::test]
async fn an_incompatible_version_is_412_naming_both() {
    let addr = addr().await;
    let (status, _, body) = raw(
        addr,
        &post(
            "/rpc/Echo/add",
            Some("application/json"),
            br#"{"a":1,"b":2}"#,
            "hrpc-version: 7\r\n",
        ),
    )
    .await;
    assert_eq!(status, 412);
    let e = error_body(&body);
    assert_eq!(e.code, Code::FailedPrecondition);
    assert!(
        e.message.contains('7') && e.message.contains('1'),
        "{}",
        e.message
    );
    // The current major, with or without a minor, is accepted.
    for v in ["1", "1.4"] {
        let (status, _, _) = raw(
            addr,
            &post(
                "/rpc/Echo/add",
                Some("application/json"),
                br#"{"a":1,"b":2}"#,
                &format!("hrpc-version: {v}\r\n"),
            ),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
}

#[tokio::test]
async fn a_malformed_deadline_is_400() {
    let addr = addr().await;
    for v in [
        "soon",
        "-5",
        "1.5",
        "+5",
        "0",
        "00",
        "12345678901",
        "1_000",
        "5 5",
    ] {
        let (status, _, body) = raw(
            addr,
            &post(
                "/rpc/Echo/add",
                Some("application/json"),
                br#"{"a":1,"b":2}"#,
                &format!("hrpc-timeout-ms: {v}\r\n"),
            ),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        assert!(error_body(&body).message.contains("hrpc-timeout-ms"));
    }
}

#[tokio::test]
async fn a_deadline_of_ten_digits_is_accepted() {
    let addr = addr().await;
    for v in ["60000", "9999999999"] {
        let (status, _, _) = raw(
            addr,
            &post(
                "/rpc/Echo/add",
                Some("application/json"),
                br#"{"a":1,"b":2}"#,
                &format!("hrpc-timeout-ms: {v}\r\n"),
            ),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
}

#[tokio::test]
async fn errors_from_methods_are_never_200() {
    let addr = addr().await;
    let (status, _, body) = raw(
        addr,
        &post(
            "/rpc/Echo/fail",
            Some("application/json"),
            br#"{"code": "not_found", "message": "gone"}"#,
            "",
        ),
    )
    .await;
    assert_eq!(status, 404);
    let e = error_body(&body);
    assert_eq!((e.code, e.message.as_str()), (Code::NotFound, "gone"));
}
