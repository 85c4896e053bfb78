//! Property test: random paths, methods, content types and bodies never panic the
//! router, never get a 200 unless the request was valid, and every non-200 carries
//! a structured HRPC error body.

mod common;

use std::sync::Arc;

use axum::body::Body;
use common::EchoImpl;
use http_body_util::BodyExt as _;
use lapdev_hrpc::{HrpcError, ServerConfig};
use proptest::prelude::*;
use tower::ServiceExt as _;

fn router() -> axum::Router {
    common::router(
        Arc::new(EchoImpl::default()),
        ServerConfig {
            max_body_bytes: 512,
            ..Default::default()
        },
    )
}

fn paths() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/Echo/add".to_owned()),
        Just("/Echo/mirror".to_owned()),
        Just("/Echo/echo".to_owned()),
        Just("/Echo/nothing".to_owned()),
        "/[A-Za-z0-9_~.%-]{0,12}(/[A-Za-z0-9_~.%-]{0,12}){0,3}",
    ]
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..700),
        // Near-valid JSON: valid shapes with random values.
        (any::<i64>(), any::<i64>())
            .prop_map(|(a, b)| format!(r#"{{"a":{a},"b":{b}}}"#).into_bytes()),
        "[ -~]{0,64}".prop_map(|s| format!(r#"{{"message":{s:?}}}"#).into_bytes()),
        "\\PC{0,64}".prop_map(|s| s.into_bytes()),
    ]
}

fn methods() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        4 => Just(http::Method::POST),
        1 => Just(http::Method::GET),
        1 => Just(http::Method::PUT),
        1 => Just(http::Method::DELETE),
    ]
}

fn content_types() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(Some("application/json".to_owned())),
        1 => Just(None),
        1 => "[ -~]{0,30}".prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_requests_get_a_structured_answer(
        path in paths(),
        method in methods(),
        content_type in content_types(),
        body in bodies(),
        timeout in proptest::option::of("[0-9a-z]{0,6}"),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, response_body) = rt.block_on(async {
            let mut builder = http::Request::builder().method(method.clone()).uri(&path);
            if let Some(ct) = &content_type
                && let Ok(v) = http::HeaderValue::from_str(ct)
            {
                builder = builder.header("content-type", v);
            }
            if let Some(t) = &timeout {
                builder = builder.header("hrpc-timeout-ms", t.as_str());
            }
            let request = builder.body(Body::from(body.clone())).unwrap();
            let response = router().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, bytes)
        });
        if status == http::StatusCode::OK {
            // Only a POST with a JSON content type to a real method can succeed.
            prop_assert_eq!(&method, &http::Method::POST);
            prop_assert!(path.starts_with("/Echo/"));
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&response_body).is_ok());
        } else {
            prop_assert!(!status.is_success(), "unexpected status {}", status);
            let parsed = serde_json::from_slice::<HrpcError>(&response_body);
            prop_assert!(parsed.is_ok(), "not an HRPC error body: {:?}", String::from_utf8_lossy(&response_body));
        }
    }
}
