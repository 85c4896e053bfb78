//! `pods/portforward` through kube's `Api::portforward` to loopback servers
//! registered for the pod's ports.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use lapdev_kube_double::Verb;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exec::{refused, running_box, service_account};

/// A loopback server that echoes every connection; its address.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `data` through a forwarded port of `box` and reads as much back.
async fn round_trip(pods: &Api<Pod>, port: u16, data: Vec<u8>) -> Vec<u8> {
    let mut pf = pods.portforward("box", &[port]).await.unwrap();
    let stream = pf.take_stream(port).unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let len = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w
    });
    let mut back = vec![0u8; len];
    r.read_exact(&mut back).await.unwrap();
    drop(writer.await.unwrap());
    drop(r);
    pf.join().await.unwrap();
    back
}

#[tokio::test]
async fn eight_mib_through_a_forwarded_port_arrive_intact() {
    let (double, pods) = running_box().await;
    double.register_pod_port("default", "box", 8080, echo_server().await);
    let mut data = vec![0u8; 8 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let sent = Sha256::digest(&data);
    let back = round_trip(&pods, 8080, data).await;
    assert_eq!(Sha256::digest(&back), sent);
    assert_eq!(double.request_count_for(Verb::Get, "pods/portforward"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_forwarded_connections() {
    let (double, pods) = running_box().await;
    double.register_pod_port("default", "box", 5432, echo_server().await);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let pods = pods.clone();
            tokio::spawn(async move {
                let mut data = vec![0u8; 256 * 1024];
                rand::rng().fill_bytes(&mut data);
                data[0] = i;
                let back = round_trip(&pods, 5432, data.clone()).await;
                assert!(back == data, "connection {i} got other bytes back");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(double.request_count_for(Verb::Get, "pods/portforward"), 20);
}

#[tokio::test]
async fn two_ports_on_one_connection() {
    let (double, pods) = running_box().await;
    double.register_pod_port("default", "box", 80, echo_server().await);
    double.register_pod_port("default", "box", 443, echo_server().await);
    let mut pf = pods.portforward("box", &[80, 443]).await.unwrap();
    for (port, msg) in [(80u16, &b"plain"[..]), (443, &b"secure"[..])] {
        let mut s = pf.take_stream(port).unwrap();
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    pf.abort();
}

#[tokio::test]
async fn a_port_nothing_listens_on_gets_the_kubelets_error() {
    let (double, pods) = running_box().await;
    // A port that was listening and no longer is.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = listener.local_addr().unwrap();
    drop(listener);
    double.register_pod_port("default", "box", 9000, gone);
    for port in [9000u16, 8080] {
        let mut pf = pods.portforward("box", &[port]).await.unwrap();
        let error = pf.take_error(port).unwrap();
        let message = tokio::time::timeout(Duration::from_secs(30), error)
            .await
            .expect("an error frame")
            .expect("an error message");
        assert!(
            message.starts_with(&format!("error forwarding port {port} to pod ")),
            "{message}"
        );
        assert!(
            message.contains(&format!(
                "dial tcp4 127.0.0.1:{port}: connect: connection refused"
            )),
            "{message}"
        );
        pf.abort();
    }
}

#[tokio::test]
async fn port_forward_errors_and_rbac() {
    let (double, pods) = running_box().await;
    let s = refused(pods.portforward("ghost", &[80]).await);
    assert_eq!(s.code, 404);
    let client = double.client().await.unwrap();
    let api: Api<Pod> = Api::namespaced(client, "default");
    api.create(&Default::default(), &crate::pod("pending"))
        .await
        .unwrap();
    let s = refused(api.portforward("pending", &[80]).await);
    assert_eq!(
        (s.code, s.message.as_str()),
        (400, "pod pending does not have a host assigned")
    );

    let sa = service_account(
        &double,
        json!([{"apiGroups": [""], "resources": ["pods", "pods/exec"], "verbs": ["get"]}]),
    )
    .await;
    let s = refused(
        Api::<Pod>::namespaced(sa, "default")
            .portforward("box", &[80])
            .await,
    );
    assert_eq!(s.code, 403);
    assert!(
        s.message
            .contains("cannot get resource \"pods/portforward\" in API group \"\""),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn unregistered_ports_can_go_to_the_same_port_on_a_host() {
    let (double, pods) = running_box().await;
    let addr = echo_server().await;
    double.forward_unregistered_ports(Some(addr.ip()));
    let back = round_trip(&pods, addr.port(), b"any pod, same port".to_vec()).await;
    assert_eq!(back, b"any pod, same port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_is_refused_with_a_clear_message() {
    // kubectl asks for SPDY (tunnelled in a WebSocket, then plain): not served.
    let (double, _pods) = running_box().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["port-forward", "pod/box", "0:8080"])
            .output()
            .expect("kubectl is installed")
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not SPDY"), "{stderr}");
}

#[tokio::test]
async fn bad_port_lists_are_refused_before_the_upgrade() {
    use tower::ServiceExt;
    let (double, _pods) = running_box().await;
    let many: Vec<String> = (1..=129).map(|p| p.to_string()).collect();
    let cases = [
        ("ports=0".to_owned(), "port must be in the range 1-65535"),
        (
            "ports=http".to_owned(),
            "unable to parse \\\"http\\\" as a port",
        ),
        (
            format!("ports={}", many.join(",")),
            "the number of ports cannot be more than 128",
        ),
    ];
    for (query, message) in cases {
        let req = http::Request::get(format!(
            "/api/v1/namespaces/default/pods/box/portforward?{query}"
        ))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(axum::body::Body::empty())
        .unwrap();
        let res = double.router().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(message), "{query}: {body}");
    }
}
