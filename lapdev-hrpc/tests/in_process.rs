//! Calls through the generated client over the in-process transport.

mod common;

use std::sync::Arc;

use common::{Caller, EchoClient, EchoImpl, EchoServer, Point, TestError};
use lapdev_hrpc::{CallError, Client, Code, HrpcError, ServerConfig};

fn client() -> EchoClient {
    EchoClient::new(Client::in_process(common::router(
        Arc::new(EchoImpl::default()),
        ServerConfig::default(),
    )))
}

#[tokio::test]
async fn calls_return_the_ok_value() {
    let c = client();
    assert_eq!(c.echo("hi".into()).await.unwrap(), "hi");
    assert_eq!(c.add(40, 2).await.unwrap(), 42);
    c.nothing().await.unwrap();
    let p = c
        .mirror(Point {
            x: 1,
            y: -2,
            label: Some("a".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        p,
        Point {
            x: -1,
            y: 2,
            label: Some("a".into())
        }
    );
}

#[tokio::test]
async fn server_errors_keep_their_code_and_message() {
    let c = client();
    for code in [
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unavailable,
        Code::FailedPrecondition,
        Code::Internal,
    ] {
        match c.fail(code, "why".into()).await {
            Err(CallError::Service(e)) => {
                assert_eq!(e.code, code);
                assert_eq!(e.message, "why");
            }
            other => panic!("expected a service error, got {other:?}"),
        }
    }
    match c.add(i64::MAX, 1).await {
        Err(CallError::Service(e)) => assert_eq!(e.code, Code::OutOfRange),
        other => panic!("expected out_of_range, got {other:?}"),
    }
}

#[tokio::test]
async fn a_methods_own_error_type_round_trips() {
    let c = client();
    assert_eq!(c.lookup("one".into()).await.unwrap(), 1);
    match c.lookup("two".into()).await {
        Err(CallError::Service(TestError::NoSuchThing(m))) => assert_eq!(m, "nothing called two"),
        other => panic!("expected NoSuchThing, got {other:?}"),
    }
}

#[tokio::test]
async fn the_context_carries_what_a_layer_inserted() {
    let c = client();
    assert_eq!(c.whoami().await.unwrap(), None);
    let named = c.with_header(
        http::HeaderName::from_static("x-caller"),
        http::HeaderValue::from_static("alice"),
    );
    assert_eq!(named.whoami().await.unwrap(), Some("alice".to_owned()));
    // The original client is unchanged.
    assert_eq!(c.whoami().await.unwrap(), None);
    let _ = Caller("unused".into());
}

#[tokio::test]
async fn a_panicking_method_is_an_internal_error() {
    let c = client();
    match c.explode().await {
        Err(CallError::Service(e)) => {
            assert_eq!(e.code, Code::Internal);
            assert!(
                !e.message.contains("boom"),
                "panic text leaked: {}",
                e.message
            );
        }
        other => panic!("expected internal, got {other:?}"),
    }
    // The service still answers afterwards.
    assert_eq!(c.add(1, 1).await.unwrap(), 2);
}

#[tokio::test]
async fn call_errors_fold_into_hrpc_errors() {
    let c = client();
    let e: HrpcError = c.fail(Code::NotFound, "x".into()).await.unwrap_err().into();
    assert_eq!(e.code, Code::NotFound);
}

#[test]
fn the_descriptor_lists_every_method_and_path() {
    let d = EchoClient::DESCRIPTOR;
    assert_eq!(d.name, "Echo");
    let names: Vec<_> = d.methods.iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        [
            "echo",
            "add",
            "mirror",
            "whoami",
            "request_id",
            "fail",
            "lookup",
            "slow",
            "explode",
            "nothing"
        ]
    );
    assert_eq!(d.method("add").unwrap().path, "/Echo/add");
    assert_eq!(EchoServer::<EchoImpl>::DESCRIPTOR, d);
}

#[tokio::test]
async fn several_services_share_one_router() {
    let router = lapdev_hrpc::RpcRouter::new()
        .service(EchoServer::new(EchoImpl::default()))
        .merge(axum::Router::new().route("/extra", axum::routing::get(|| async { "extra" })))
        .into_router();
    let c = EchoClient::new(Client::in_process(router));
    assert_eq!(c.add(2, 3).await.unwrap(), 5);
}

mod roles {
    use lapdev_hrpc::HrpcError;

    #[lapdev_hrpc::service]
    pub trait Guarded {
        /// Documented and guarded: the doc stays, the attribute is consumed.
        #[hrpc(role = "admin")]
        async fn guarded(&self) -> Result<(), HrpcError>;

        async fn open(&self) -> Result<(), HrpcError>;
    }

    #[test]
    fn declared_roles_land_in_the_descriptor() {
        let d = GuardedClient::DESCRIPTOR;
        assert_eq!(d.method("guarded").unwrap().role, Some("admin"));
        assert_eq!(d.method("open").unwrap().role, None);
    }
}
