//! A client-side request rate limit for the manager's Kubernetes client: a
//! token bucket as a tower layer (`kube::client::ClientBuilder::with_layer`).
//!
//! The bucket holds up to `burst` tokens and refills at `qps` per second; every
//! request takes one and waits in `poll_ready` when none is left. kube's client
//! puts its service behind a buffer whose single worker polls readiness before
//! each request, so waiting here delays requests in order, without dropping
//! any. A long watch takes one token when it starts, not one per event. With the
//! watchers' back-off and the commands' bounded retries this gives the cost of
//! failure a ceiling: a manager never sends more than `burst + qps·t` requests
//! in `t` seconds, whatever fails.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// The layer: `qps` requests per second sustained, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer {
    qps: f64,
    burst: u32,
}

impl RateLimitLayer {
    /// A limit of `qps` per second (at least 0.1) with bursts of `burst` (at least 1).
    pub fn new(qps: f64, burst: u32) -> Self {
        let qps = if qps.is_finite() { qps.max(0.1) } else { 0.1 };
        Self {
            qps,
            burst: burst.max(1),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: Bucket {
                tokens: f64::from(self.burst),
                burst: f64::from(self.burst),
                qps: self.qps,
                last: Instant::now(),
            },
            sleep: None,
            permit: false,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    qps: f64,
    last: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Bucket,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A token was taken for the next `call`.
    permit: bool,
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.permit {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match self.bucket.take(Instant::now()) {
                Ok(()) => self.permit = true,
                Err(wait) => {
                    metrics::counter!("lapdev_manager_kube_throttled_total").increment(1);
                    self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.permit = false;
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt as _;

    type Echo = fn(u32) -> std::future::Ready<Result<u32, Infallible>>;

    fn echo() -> tower::util::ServiceFn<Echo> {
        tower::service_fn(|x| std::future::ready(Ok(x)))
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_then_waits_for_the_rate() {
        let mut svc = RateLimitLayer::new(10.0, 2).layer(echo());
        assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
        assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
        // The bucket is empty: not ready until a token comes back.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(svc.poll_ready(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(svc.poll_ready(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert_eq!(svc.call(3).await.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_in_a_window_is_bounded() {
        let mut svc = RateLimitLayer::new(5.0, 3).layer(echo());
        let start = Instant::now();
        let mut n = 0u32;
        while Instant::now() - start < Duration::from_secs(2) {
            svc.ready().await.unwrap().call(n).await.unwrap();
            n += 1;
        }
        // burst + qps * t, plus the one that started at the edge.
        assert!(n <= 3 + 10 + 1, "{n} requests in 2 s");
        assert!(n >= 3 + 9, "{n} requests in 2 s: the rate was not reached");
    }
}
