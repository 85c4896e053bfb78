//! What generated code needs from the runtime. Not public API: names here may
//! change without notice. Going through this module means users of the macro need
//! neither axum nor serde in their own `Cargo.toml`.

pub use ::axum;
pub use ::serde;
pub use ::std::sync::Arc;

pub use crate::server::{handle, method_route, unimplemented_fallback};

/// The request type generated handlers take.
pub type Request = ::http::Request<::axum::body::Body>;
/// The response type generated handlers return.
pub type Response = ::axum::response::Response;
