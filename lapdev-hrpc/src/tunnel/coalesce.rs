//! Wake-ups inside a version 2 session task, absorbed rather than scheduled.
//!
//! A session task holds many parts that wake each other while it runs: the
//! connection loop hands a message to the byte stream, HTTP/2 queues a frame
//! and notifies its connection, a stream task finishes a response. Each of
//! them calls the task's waker *during* the task's poll. Tokio treats that as
//! a yield: once the poll returns, the task goes to the back of the run queue
//! and an idle worker thread is woken to steal work (`write` to the driver's
//! eventfd or a `futex` wake), several times per call, which is most of a
//! small call's latency.
//!
//! [`Coalesced`] polls its future with a waker of its own. A wake that comes
//! while the future is being polled only marks it dirty, and the future is
//! polled again at once in the same task poll; a wake from anywhere else (the
//! socket became readable, a caller on another task queued a request) wakes
//! the task as usual. After [`ROUNDS`] polls in a row, or when tokio's
//! cooperative budget runs out, it yields to the scheduler like any task.
//!
//! Within the task, [`Gated`] keeps a part from being polled again when
//! another part woke the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Most polls of the inner future within one poll of the task.
pub(crate) const ROUNDS: usize = 32;

/// `fut`, polled again at once when it wakes itself (see the module docs).
pub(crate) struct Coalesced<F> {
    fut: Pin<Box<F>>,
    flag: Arc<Flag>,
    waker: Waker,
}

#[derive(Default)]
struct Flag {
    /// The inner future is being polled.
    polling: AtomicBool,
    /// A wake arrived since the inner poll started.
    dirty: AtomicBool,
    /// The task's own waker, for wakes from outside.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Both stores happen before the other side's load (SeqCst): either the
        // poll loop sees `dirty` and polls again, or this sees the loop no
        // longer polling and wakes the task.
        self.dirty.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

impl<F: Future> Coalesced<F> {
    pub(crate) fn new(fut: F) -> Self {
        let flag = Arc::new(Flag::default());
        Self {
            fut: Box::pin(fut),
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for Coalesced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.flag.task.register(cx.waker());
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..ROUNDS {
            this.flag.polling.store(true, Ordering::SeqCst);
            this.flag.dirty.store(false, Ordering::SeqCst);
            if let Poll::Ready(v) = this.fut.as_mut().poll(&mut inner) {
                this.flag.polling.store(false, Ordering::SeqCst);
                return Poll::Ready(v);
            }
            if this.flag.dirty.load(Ordering::SeqCst) && tokio::task::coop::has_budget_remaining() {
                continue;
            }
            this.flag.polling.store(false, Ordering::SeqCst);
            if !this.flag.dirty.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            // Woken just now, or out of budget: yield to the scheduler.
            break;
        }
        this.flag.polling.store(false, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `fut`, polled only when it woke itself since its last poll (and on the
/// first): one part of a task whose other parts wake the task more often.
/// Polling the WebSocket reader when the socket has nothing costs tungstenite
/// a zero-fill of its read buffer, so the reader is gated.
pub(crate) struct Gated<F> {
    fut: F,
    /// `None`: not gated, polled like `fut` itself.
    gate: Option<(Arc<Gate>, Waker)>,
}

struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Gated<F> {
    /// `fut`, gated if `enabled`.
    pub(crate) fn new(fut: F, enabled: bool) -> Self {
        let gate = enabled.then(|| {
            let gate = Arc::new(Gate {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            });
            (gate.clone(), Waker::from(gate))
        });
        Self { fut, gate }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some((gate, waker)) = &this.gate else {
            return Pin::new(&mut this.fut).poll(cx);
        };
        gate.task.register(cx.waker());
        if !gate.woken.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut this.fut).poll(&mut Context::from_waker(waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts how often the task's own waker is called.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_gated_future_is_polled_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let slot: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let (p, s) = (polls.clone(), slot.clone());
        let fut = std::future::poll_fn(move |cx| {
            p.fetch_add(1, Ordering::SeqCst);
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut gated = Gated::new(Box::pin(fut), true);
        let mut gated = std::pin::Pin::new(&mut gated);
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "not woken: not polled again"
        );
        slot.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "its wake wakes the task"
        );
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn self_wakes_are_polled_again_without_waking_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        // Wakes itself three times, then finishes.
        let fut = std::future::poll_fn(move |cx| {
            if p.fetch_add(1, Ordering::SeqCst) < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(7)
            }
        });
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut fut = std::pin::pin!(Coalesced::new(fut));
        let r = fut.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(r, Poll::Ready(7));
        assert_eq!(polls.load(Ordering::SeqCst), 4);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_from_outside_wakes_the_task_and_endless_self_wakes_yield() {
        let slot: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let s = slot.clone();
        let fut = std::future::poll_fn(move |cx| {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut fut = std::pin::pin!(Coalesced::new(fut));
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        slot.lock().unwrap().take().unwrap().wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);

        // A future that always wakes itself is polled ROUNDS times, then the
        // task yields (its waker is called once).
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        let busy = std::future::poll_fn(move |cx| {
            p.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut busy = std::pin::pin!(Coalesced::new(busy));
        assert!(
            busy.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(polls.load(Ordering::SeqCst), ROUNDS);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }
}
