//! The generated code uses absolute paths only: it compiles without the prelude,
//! and in a crate that has no `serde` or `axum` of its own in scope.
#![no_implicit_prelude]

#[::lapdev_hrpc::service]
pub trait Hygienic {
    async fn add(
        &self,
        ctx: ::lapdev_hrpc::Context,
        a: ::core::primitive::u32,
        b: ::core::primitive::u32,
    ) -> ::core::result::Result<::core::primitive::u32, ::lapdev_hrpc::HrpcError>;
    async fn nothing(&self) -> ::core::result::Result<(), ::lapdev_hrpc::HrpcError>;
}

struct Impl;

impl Hygienic for Impl {
    async fn add(
        &self,
        _ctx: ::lapdev_hrpc::Context,
        a: ::core::primitive::u32,
        b: ::core::primitive::u32,
    ) -> ::core::result::Result<::core::primitive::u32, ::lapdev_hrpc::HrpcError> {
        ::core::result::Result::Ok(a + b)
    }

    async fn nothing(&self) -> ::core::result::Result<(), ::lapdev_hrpc::HrpcError> {
        ::core::result::Result::Ok(())
    }
}

// `#[tokio::test]` is not itself hygienic, so the runtime is built by hand.
#[test]
fn generated_items_work_without_the_prelude() {
    let runtime = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let router = HygienicServer::new(Impl).into_router();
        let client = HygienicClient::new(::lapdev_hrpc::Client::in_process(router));
        ::core::assert_eq!(client.add(2, 3).await.unwrap(), 5);
        client.nothing().await.unwrap();
    });
}
