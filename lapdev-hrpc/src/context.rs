//! [`Context`]: what a service implementation may know about the call it serves.

use std::time::{Duration, Instant};

use http::{Extensions, HeaderMap, HeaderValue};

/// The request context handed to a service method that asks for it.
///
/// A method asks for it by declaring a first argument of type
/// `lapdev_hrpc::Context`; that argument is not part of the wire arguments and the
/// generated client does not take it. Authentication layers put the caller's
/// identity into the request extensions, and the method reads it with
/// [`Context::extension`] instead of parsing headers itself.
#[derive(Debug, Clone)]
pub struct Context {
    request_id: RequestId,
    deadline: Option<Instant>,
    headers: HeaderMap,
    extensions: Extensions,
}

/// The request id as the router has it (the header value it echoes, shared
/// rather than copied) or as a caller gave it.
#[derive(Debug, Clone)]
enum RequestId {
    /// Printable ASCII, checked by the router.
    Header(HeaderValue),
    Text(String),
}

impl Context {
    /// Builds a context. The router does this for every call; tests may too.
    pub fn new(
        request_id: String,
        deadline: Option<Instant>,
        headers: HeaderMap,
        extensions: Extensions,
    ) -> Self {
        Self {
            request_id: RequestId::Text(request_id),
            deadline,
            headers,
            extensions,
        }
    }

    /// The router's constructor: `request_id` is the (printable ASCII) value it
    /// echoes in `x-request-id`.
    pub(crate) fn from_request(
        request_id: HeaderValue,
        deadline: Option<Instant>,
        headers: HeaderMap,
        extensions: Extensions,
    ) -> Self {
        Self {
            request_id: RequestId::Header(request_id),
            deadline,
            headers,
            extensions,
        }
    }

    /// A context for calling an implementation directly (tests, in-process use).
    pub fn detached() -> Self {
        Self::new(
            crate::protocol::new_request_id(),
            None,
            HeaderMap::new(),
            Extensions::new(),
        )
    }

    /// The call's request id, as logged and echoed in `x-request-id`.
    pub fn request_id(&self) -> &str {
        match &self.request_id {
            RequestId::Header(v) => v.to_str().unwrap_or_default(),
            RequestId::Text(s) => s,
        }
    }

    /// When the caller stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None` without one; zero once it passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Request extensions set by layers in front of the router.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Mutable extensions, for layers and tests.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// One typed extension, e.g. the authenticated caller.
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }
}
