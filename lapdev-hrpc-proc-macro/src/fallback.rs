//! On a parse or validation error: the user's item plus the errors.
//!
//! Emitting the trait keeps every other use of it compiling, so the user sees the
//! one message that matters. Argument patterns are replaced by `_` first, because
//! rustc would reject them in a bodiless method a second time, and `#[hrpc]`
//! method attributes are dropped.

use proc_macro2::TokenStream;
use quote::ToTokens as _;

pub(crate) fn expand(input: TokenStream, error: syn::Error) -> TokenStream {
    let mut out = error.to_compile_error();
    // Only re-emit input that still parses as an item; otherwise the parse error
    // above is all there is to say.
    match syn::parse2::<syn::Item>(input) {
        Ok(syn::Item::Trait(mut item)) => {
            for trait_item in &mut item.items {
                if let syn::TraitItem::Fn(f) = trait_item {
                    // `#[hrpc(...)]` is consumed by the macro; left in place it
                    // would be a second, confusing error.
                    f.attrs.retain(|a| !a.path().is_ident("hrpc"));
                    for input in &mut f.sig.inputs {
                        if let syn::FnArg::Typed(arg) = input
                            && !matches!(&*arg.pat, syn::Pat::Ident(_))
                        {
                            *arg.pat = syn::parse_quote!(_);
                        }
                    }
                }
            }
            item.to_tokens(&mut out);
        }
        Ok(other) => other.to_tokens(&mut out),
        Err(_) => {}
    }
    out
}
