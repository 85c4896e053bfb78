//! The `#[service]` attribute of HRPC. Use it through `lapdev_hrpc::service`;
//! `lapdev_hrpc`'s crate docs describe what it generates and the wire protocol.
//!
//! Layout (after thiserror's): `ast` parses and validates the trait into typed
//! structs that keep the user's spans, `expand` generates one item per function
//! and joins them, and `fallback` re-emits the user's trait unchanged next to the
//! errors, so one mistake gives one message instead of a cascade.

mod ast;
mod expand;
mod fallback;

use proc_macro::TokenStream;

/// Turns a trait of `async fn`s into an HRPC service: the trait (with `Send`
/// futures), a typed `{Trait}Client`, a `{Trait}Server` that becomes an axum
/// router, and a `DESCRIPTOR` of the methods.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let input = proc_macro2::TokenStream::from(input);
    match ast::Service::parse(args, input.clone()) {
        Ok(service) => expand::expand(&service).into(),
        Err(error) => fallback::expand(input, error).into(),
    }
}
