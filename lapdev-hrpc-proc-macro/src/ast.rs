//! The trait in typed form, validated, with the user's spans kept for errors.

use proc_macro2::{Span, TokenStream};
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, Pat, PathArguments, ReturnType, TraitItem,
    TraitItemFn, Type, Visibility,
};

/// Method names the generated client or server defines themselves; a service
/// method with one of these names would collide.
const RESERVED: &[&str] = &[
    "new",
    "from_arc",
    "client",
    "with_options",
    "with_timeout",
    "with_header",
    "with_config",
    "into_router",
    "into_routes",
    "DESCRIPTOR",
];

/// A parsed `#[service]` trait.
pub(crate) struct Service {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    pub methods: Vec<Method>,
}

/// One method of the service.
pub(crate) struct Method {
    /// The method's attributes without `#[hrpc(...)]`, which the macro consumes.
    pub attrs: Vec<Attribute>,
    /// `#[hrpc(role = "...")]`: the role a caller needs.
    pub role: Option<String>,
    pub ident: Ident,
    /// The `Context` argument, when the method asks for one.
    pub context: Option<Arg>,
    /// The wire arguments, in order.
    pub args: Vec<Arg>,
    /// The `T` of `Result<T, E>`.
    pub ok: Type,
    /// The `E` of `Result<T, E>`.
    pub err: Type,
    /// The return type as written.
    pub output: Type,
}

/// A named argument.
pub(crate) struct Arg {
    pub ident: Ident,
    pub ty: Type,
}

/// Collects several errors into one `syn::Error`.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(e) => e.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

impl Service {
    pub(crate) fn parse(args: TokenStream, input: TokenStream) -> syn::Result<Self> {
        if !args.is_empty() {
            return Err(syn::Error::new_spanned(
                args,
                "#[service] takes no arguments",
            ));
        }
        let item: ItemTrait = syn::parse2(input)
            .map_err(|e| syn::Error::new(e.span(), "#[service] goes on a trait"))?;
        let mut errors = Errors::default();
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(syn::Error::new_spanned(
                &item.generics,
                "HRPC service traits cannot be generic",
            ));
        }
        if let Some(unsafety) = &item.unsafety {
            errors.push(syn::Error::new_spanned(
                unsafety,
                "HRPC service traits cannot be unsafe",
            ));
        }
        let mut methods = Vec::new();
        for trait_item in &item.items {
            match trait_item {
                TraitItem::Fn(f) => match Method::parse(f) {
                    Ok(m) => methods.push(m),
                    Err(e) => errors.push(e),
                },
                other => errors.push(syn::Error::new_spanned(
                    other,
                    "HRPC service traits hold only methods",
                )),
            }
        }
        errors.finish()?;
        Ok(Service {
            attrs: item.attrs,
            vis: item.vis,
            ident: item.ident,
            methods,
        })
    }
}

impl Method {
    fn parse(f: &TraitItemFn) -> syn::Result<Self> {
        let sig = &f.sig;
        let mut errors = Errors::default();
        if sig.asyncness.is_none() {
            errors.push(syn::Error::new_spanned(
                sig.fn_token,
                "HRPC service methods must be `async fn`",
            ));
        }
        if let Some(c) = &sig.constness {
            errors.push(syn::Error::new_spanned(
                c,
                "HRPC service methods cannot be `const`",
            ));
        }
        if let Some(u) = &sig.unsafety {
            errors.push(syn::Error::new_spanned(
                u,
                "HRPC service methods cannot be `unsafe`",
            ));
        }
        if let Some(abi) = &sig.abi {
            errors.push(syn::Error::new_spanned(
                abi,
                "HRPC service methods cannot name an ABI",
            ));
        }
        if let Some(v) = &sig.variadic {
            errors.push(syn::Error::new_spanned(
                v,
                "HRPC service methods cannot be variadic",
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.push(syn::Error::new_spanned(
                &sig.generics,
                "HRPC service methods cannot be generic: the wire types must be known",
            ));
        }
        if let Some(body) = &f.default {
            errors.push(syn::Error::new_spanned(
                body,
                "HRPC service methods cannot have a default body",
            ));
        }
        let name = sig.ident.to_string();
        if RESERVED.contains(&name.as_str()) || name.starts_with("__hrpc") {
            errors.push(syn::Error::new_spanned(
                &sig.ident,
                format!(
                    "`{name}` is the name of an item the #[service] macro generates; rename the method"
                ),
            ));
        }

        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
            Some(FnArg::Receiver(r)) => errors.push(syn::Error::new_spanned(
                r,
                "HRPC service methods take `&self`: one value serves many calls at once",
            )),
            _ => errors.push(syn::Error::new_spanned(
                &sig.ident,
                "HRPC service methods take `&self` as their first argument",
            )),
        }

        let mut context = None;
        let mut args = Vec::new();
        for (index, input) in inputs.enumerate() {
            let FnArg::Typed(pat_type) = input else {
                continue;
            };
            let ident = match &*pat_type.pat {
                Pat::Ident(p)
                    if p.by_ref.is_none() && p.mutability.is_none() && p.subpat.is_none() =>
                {
                    p.ident.clone()
                }
                other => {
                    errors.push(syn::Error::new_spanned(
                        other,
                        "HRPC arguments must be plain identifiers: they are the field names of the JSON request",
                    ));
                    continue;
                }
            };
            let ty = (*pat_type.ty).clone();
            if is_context(&ty) {
                if index == 0 {
                    context = Some(Arg { ident, ty });
                } else {
                    errors.push(syn::Error::new_spanned(
                        &pat_type.ty,
                        "the `Context` argument must come first, right after `&self`",
                    ));
                }
                continue;
            }
            if let Type::Reference(r) = &ty {
                errors.push(syn::Error::new_spanned(
                    r,
                    "HRPC arguments must be owned types: they are decoded from the request body",
                ));
                continue;
            }
            args.push(Arg { ident, ty });
        }

        let result = match &sig.output {
            ReturnType::Type(_, ty) => match result_parts(ty) {
                Some((ok, err)) => Some((ok, err, (**ty).clone())),
                None => {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "HRPC service methods must return `Result<T, E>` with both types spelled out",
                    ));
                    None
                }
            },
            ReturnType::Default => {
                errors.push(syn::Error::new(
                    sig.paren_token.span.close(),
                    "HRPC service methods must return `Result<T, E>`",
                ));
                None
            }
        };
        let (attrs, role) = match hrpc_attrs(&f.attrs) {
            Ok(parts) => parts,
            Err(e) => {
                errors.push(e);
                (Vec::new(), None)
            }
        };
        errors.finish()?;
        let (ok, err, output) = result
            .ok_or_else(|| syn::Error::new(Span::call_site(), "internal: missing return type"))?;
        Ok(Method {
            attrs,
            role,
            ident: sig.ident.clone(),
            context,
            args,
            ok,
            err,
            output,
        })
    }
}

/// Splits `#[hrpc(role = "...")]` off a method's attributes. It may appear once;
/// the role must be a non-empty string literal.
fn hrpc_attrs(attrs: &[Attribute]) -> syn::Result<(Vec<Attribute>, Option<String>)> {
    let mut kept = Vec::new();
    let mut role: Option<String> = None;
    for attr in attrs {
        if !attr.path().is_ident("hrpc") {
            kept.push(attr.clone());
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("role") {
                let lit: syn::LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new_spanned(&lit, "the role cannot be empty"));
                }
                if role.is_some() {
                    return Err(meta.error("the role is declared twice"));
                }
                role = Some(lit.value());
                Ok(())
            } else {
                Err(meta.error("unknown #[hrpc] option; expected `role = \"...\"`"))
            }
        })?;
    }
    Ok((kept, role))
}

/// Whether `ty` is the request context (`Context` or a path ending in it).
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Context" && s.arguments.is_empty()),
        _ => false,
    }
}

/// `T` and `E` of a `Result<T, E>` (any path ending in `Result`).
fn result_parts(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let ok = types.next()?;
    let err = types.next()?;
    if types.next().is_some() {
        return None;
    }
    Some((ok, err))
}
