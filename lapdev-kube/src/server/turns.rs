//! One at a time per cluster: an async lock per key, kept only while some
//! task holds or waits for it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Async locks by key (tokio's mutex is fair, so turns are taken in the order
/// they were asked for).
pub(super) struct Turns<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for Turns<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::default(),
        }
    }
}

/// A held turn; the next waiter for the key goes when it drops.
pub(super) struct Turn<'a, K: Eq + Hash + Clone> {
    guard: Option<OwnedMutexGuard<()>>,
    key: K,
    turns: &'a Turns<K>,
}

impl<K: Eq + Hash + Clone> Turns<K> {
    /// Waits for `key`'s turn.
    pub(super) async fn take(&self, key: K) -> Turn<'_, K> {
        let lock = self.map().entry(key.clone()).or_default().clone();
        Turn {
            guard: Some(lock.lock_owned().await),
            key,
            turns: self,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl<K: Eq + Hash + Clone> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.turns.map();
        // Nobody else holds or waits for it (the map's reference is the
        // only one left): forget the key.
        if map
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_of_one_key_run_one_at_a_time_in_order_and_are_forgotten_after() {
        let turns = Arc::new(Turns::<u32>::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = turns.take(1).await;
        let mut waiters = Vec::new();
        for i in 0..3 {
            let waiter = turns.clone();
            let order = order.clone();
            waiters.push(tokio::spawn(async move {
                let _turn = waiter.take(1).await;
                order.lock().unwrap().push(i);
            }));
            // Each waiter queues before the next is spawned.
            while turns.map().get(&1).map(Arc::strong_count) != Some(3 + i) {
                tokio::task::yield_now().await;
            }
        }
        // Another key is not held up.
        drop(turns.take(2).await);
        assert!(order.lock().unwrap().is_empty());
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(turns.len(), 0);
    }
}
