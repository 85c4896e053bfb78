//! Work a request starts and leaves running after its reply: following a cloud
//! provider's long operations (a GKE create or delete takes minutes).
//!
//! Such work belongs to the server, not to the request: it ends when the server
//! shuts down, at its next await point, and [`crate::Server::wait`] returns only
//! after it has. Whatever it was doing stays recorded as intent in the database
//! (a cluster row in `provisioning` or `deleting`) and the next start resumes it,
//! so stopping it loses nothing. Without this, a stopped server's follow-up could
//! still write a stale outcome over what a newer server (or replica) decided.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The server's background work. Cheap to clone; clones share the work.
#[derive(Debug, Clone, Default)]
pub struct Background {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Background {
    /// Runs `work` until it finishes or the server stops, whichever is first.
    /// After [`Self::stop`], new work is dropped without running.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        if self.stop.is_cancelled() {
            return;
        }
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// Asks all background work to end.
    pub fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Waits until all background work has ended (call after [`Self::stop`]).
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn stopping_ends_pending_work_and_refuses_new_work() {
        let bg = Background::default();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        bg.spawn(async move {
            std::future::pending::<()>().await;
            f.store(true, Ordering::SeqCst);
        });
        bg.stop();
        bg.stopped().await;
        assert!(!finished.load(Ordering::SeqCst));

        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        bg.spawn(async move { r.store(true, Ordering::SeqCst) });
        bg.stopped().await;
        assert!(!ran.load(Ordering::SeqCst), "work spawned after stop ran");
    }

    #[tokio::test]
    async fn work_runs_to_completion_while_the_server_runs() {
        let bg = Background::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        bg.spawn(async move {
            let _ = tx.send(7);
        });
        assert_eq!(rx.await.unwrap(), 7);
    }
}
