//! Odd and malformed input gets a `Status`, never a panic or a dropped connection.

use http::Request;

use crate::start;

async fn send(
    client: &kube::Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &[u8],
) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(body.to_vec())
        .unwrap();
    match client.request_text(req).await {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(other) => panic!("{method} {uri}: not an API answer: {other:?}"),
    }
}

#[tokio::test]
async fn malformed_input_is_answered_with_a_status() {
    let (double, client) = start().await;
    double.create(&crate::pod("p")).unwrap();
    let json = "application/json";
    let merge = "application/merge-patch+json";
    let cases: Vec<(&str, &str, &str, &[u8], u16)> = vec![
        (
            "POST",
            "/api/v1/namespaces/default/services",
            json,
            br#"{"metadata":{"name":"s"},"spec":"x"}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            json,
            br#"{"metadata":{"name":"q"},"spec":7}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            json,
            br#"{"metadata":"x"}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            json,
            b"\xff\xfe",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            json,
            br#"{"metadata":{"name":"q"},"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":"80"}]}]}}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/secrets",
            json,
            br#"{"metadata":{"name":"s"},"data":{"k":"not base64!"}}"#,
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            merge,
            br#"{"spec":{"containers":"x"}}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/vnd.kubernetes.protobuf",
            b"x",
            415,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            "application/json-patch+json",
            br#"[{"op":"replace","path":"","value":[1]}]"#,
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            "application/json-patch+json",
            br#"{"op":"x"}"#,
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            merge,
            br#"[1]"#,
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            merge,
            br#"{"spec":null}"#,
            422,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            "application/strategic-merge-patch+json",
            br#"{"$patch":"replace"}"#,
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p?fieldManager=t",
            "application/apply-patch+yaml",
            b"- a\n- b\n",
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p?fieldManager=t",
            "application/apply-patch+yaml",
            b"{{{",
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            "text/plain",
            b"{}",
            415,
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/pods/p",
            json,
            br#"{"metadata":{"name":"other"}}"#,
            400,
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/pods/p/status",
            json,
            b"",
            405,
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/pods/p",
            json,
            b"{bad",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=a%20in%20(",
            json,
            b"",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?limit=-1",
            json,
            b"",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion=abc",
            json,
            b"",
            400,
        ),
        // exec without a command (or a host for the pod) is refused before any upgrade.
        (
            "GET",
            "/api/v1/namespaces/default/pods/p/exec",
            json,
            b"",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/p/attach",
            json,
            b"",
            404,
        ),
        ("GET", "/api/v2/pods", json, b"", 404),
        ("POST", "/version", json, b"", 405),
        ("GET", "/apis/nope.example.com/v1", json, b"", 404),
    ];
    for (method, uri, content_type, body, expected) in cases {
        let code = send(&client, method, uri, content_type, body).await;
        assert_eq!(
            code,
            expected,
            "{method} {uri} {}",
            String::from_utf8_lossy(body)
        );
    }
    // The pod is untouched and the server still answers.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "default");
    assert_eq!(
        pods.get("p").await.unwrap().spec.unwrap().containers.len(),
        1
    );
}

#[tokio::test]
async fn an_absurd_watch_timeout_is_capped() {
    let (_double, client) = start().await;
    let req = Request::get("/api/v1/pods?watch=true&timeoutSeconds=18446744073709551615")
        .body(Vec::new())
        .unwrap();
    let stream = client
        .request_events::<k8s_openapi::api::core::v1::Pod>(req)
        .await;
    assert!(stream.is_ok());
}
