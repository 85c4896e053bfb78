//! On a parse or validation error: the user's item unchanged plus the errors.
//!
//! Emitting the trait keeps every other use of it compiling, so the user sees the
//! one message that matters.

use proc_macro2::TokenStream;

pub(crate) fn expand(input: TokenStream, error: syn::Error) -> TokenStream {
    let mut out = error.to_compile_error();
    // Only re-emit input that still parses as an item; otherwise the parse error
    // above is all there is to say.
    if syn::parse2::<syn::Item>(input.clone()).is_ok() {
        out.extend(input);
    }
    out
}
