//! The body of a forwarded request, kept so the request can be sent once
//! more to a new owner: a unary call's bytes always, a stream's body only if
//! none of it was sent to the first owner (which refuses before reading it).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;

/// A forwarded request's body: bytes (sent again as they are) or a stream
/// (sent again only when none of it was sent the first time).
pub enum Payload {
    /// A unary call's body.
    Bytes(Bytes),
    /// A stream's body.
    Stream(Reclaimable),
}

impl Payload {
    pub(super) fn body(&self) -> Body {
        match self {
            Payload::Bytes(b) => Body::from(b.clone()),
            Payload::Stream(r) => Body::new(r.clone()),
        }
    }

    pub(super) fn again(self) -> Option<Body> {
        match self {
            Payload::Bytes(b) => Some(Body::from(b)),
            Payload::Stream(r) => r.reclaim().map(|inner| Body::new(Reclaimable::new(inner))),
        }
    }
}

/// A body that can be taken back if none of it was sent.
#[derive(Clone)]
pub struct Reclaimable {
    slot: Arc<Mutex<Option<Body>>>,
    sent: Arc<AtomicBool>,
}

impl Reclaimable {
    /// Wraps `body`.
    pub fn new(body: Body) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            sent: Arc::default(),
        }
    }

    /// The body, if none of it was sent; the copy handed out ends.
    fn reclaim(&self) -> Option<Body> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if self.sent.load(Ordering::Acquire) {
            return None;
        }
        slot.take()
    }
}

impl http_body::Body for Reclaimable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(_))) {
            self.sent.store(true, Ordering::Release);
        }
        polled
    }
}
