//! [`TunnelRegistry`]: the server's table of live tunnels, one per key (e.g. per
//! cluster), where the newest connection of a key wins.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::TunnelTransport;

type Map<K> = Mutex<HashMap<K, TunnelTransport>>;

/// Live tunnels by key. Cheap to clone; clones share the table.
///
/// - [`insert`](Self::insert) registers a new connection; a previous connection
///   of the same key is closed (its calls in flight fail with `unavailable`).
/// - A tunnel that closes by itself (the manager went away, ping timeout) is
///   removed, but only while it is still the key's current tunnel: an old
///   connection closing late never removes its replacement.
/// - [`close`](Self::close) closes and removes a key's tunnel (token revoked,
///   cluster deleted).
///
/// Closed tunnels are never returned, even in the instant before their removal.
pub struct TunnelRegistry<K> {
    map: Arc<Map<K>>,
}

impl<K> Clone for TunnelRegistry<K> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K> Default for TunnelRegistry<K> {
    fn default() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for TunnelRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = lock(&self.map);
        f.debug_set().entries(map.keys()).finish()
    }
}

fn lock<K>(map: &Map<K>) -> std::sync::MutexGuard<'_, HashMap<K, TunnelTransport>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reason given to a tunnel replaced by a newer connection of its key.
pub const REPLACED_REASON: &str = "replaced by a newer tunnel connection";

impl<K> TunnelRegistry<K>
where
    K: Eq + Hash + Clone + Send + 'static,
{
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `transport` the tunnel of `key`. A previous tunnel of the key is
    /// closed with [`REPLACED_REASON`]. When `transport` closes later it is removed
    /// (if it is still the key's tunnel then).
    ///
    /// Must be called within a Tokio runtime (it spawns the watcher that removes
    /// the tunnel when it closes).
    pub fn insert(&self, key: K, transport: TunnelTransport) {
        let previous = lock(&self.map).insert(key.clone(), transport.clone());
        if let Some(previous) = previous
            && !previous.same_tunnel(&transport)
        {
            previous.close(REPLACED_REASON);
        }
        let map: Weak<Map<K>> = Arc::downgrade(&self.map);
        let closed = transport.closed();
        tokio::spawn(async move {
            closed.await;
            if let Some(map) = map.upgrade() {
                remove_if_current(&map, &key, &transport);
            }
        });
    }

    /// The live tunnel of `key`, if there is one.
    pub fn get(&self, key: &K) -> Option<TunnelTransport> {
        let mut map = lock(&self.map);
        let transport = map.get(key)?;
        if transport.is_closed() {
            map.remove(key);
            return None;
        }
        Some(transport.clone())
    }

    /// Detaches `key`'s tunnel from the registry without closing it and returns
    /// it.
    pub fn remove(&self, key: &K) -> Option<TunnelTransport> {
        lock(&self.map).remove(key)
    }

    /// Closes `key`'s tunnel with `reason` and removes it; returns whether there
    /// was one.
    pub fn close(&self, key: &K, reason: &str) -> bool {
        match self.remove(key) {
            Some(t) => {
                let was_open = !t.is_closed();
                t.close(reason);
                was_open
            }
            None => false,
        }
    }

    /// Closes every tunnel with `reason` and empties the registry.
    pub fn close_all(&self, reason: &str) {
        let all: Vec<TunnelTransport> = lock(&self.map).drain().map(|(_, t)| t).collect();
        for t in all {
            t.close(reason);
        }
    }

    /// Closes every tunnel with `reason`, one at a time, spaced evenly over
    /// `over`: with `n` tunnels the `i`-th closes `over * i / n` after the
    /// call, so the first closes at once and the last before `over` has
    /// passed. Used when a server drains, so that its managers redial spread
    /// out instead of all at once. A tunnel registered meanwhile is closed at
    /// the end. Returns how many tunnels were closed.
    pub async fn close_all_staggered(&self, reason: &str, over: Duration) -> usize {
        let keys = self.keys();
        let mut closed = 0;
        for (i, delay) in stagger(keys.len(), over).into_iter().enumerate() {
            tokio::time::sleep(delay).await;
            if self.close(&keys[i], reason) {
                closed += 1;
            }
        }
        let late: Vec<TunnelTransport> = lock(&self.map).drain().map(|(_, t)| t).collect();
        for t in late {
            if !t.is_closed() {
                t.close(reason);
                closed += 1;
            }
        }
        closed
    }

    /// Number of live tunnels.
    pub fn len(&self) -> usize {
        let mut map = lock(&self.map);
        map.retain(|_, t| !t.is_closed());
        map.len()
    }

    /// Whether there is no live tunnel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys with a live tunnel, in no particular order.
    pub fn keys(&self) -> Vec<K> {
        let mut map = lock(&self.map);
        map.retain(|_, t| !t.is_closed());
        map.keys().cloned().collect()
    }
}

/// The waits between `n` staggered closes spread over `over`: none before the
/// first, `over / n` before each later one.
fn stagger(n: usize, over: Duration) -> Vec<Duration> {
    let step = match u32::try_from(n) {
        Ok(0) => return Vec::new(),
        Ok(n) => over / n,
        Err(_) => Duration::ZERO,
    };
    (0..n)
        .map(|i| if i == 0 { Duration::ZERO } else { step })
        .collect()
}

fn remove_if_current<K: Eq + Hash>(map: &Map<K>, key: &K, transport: &TunnelTransport) {
    let mut map = lock(map);
    if map.get(key).is_some_and(|t| t.same_tunnel(transport)) {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_evenly_and_end_before_the_window() {
        assert!(stagger(0, Duration::from_secs(10)).is_empty());
        assert_eq!(stagger(1, Duration::from_secs(10)), vec![Duration::ZERO]);
        let waits = stagger(4, Duration::from_secs(10));
        assert_eq!(
            waits,
            vec![
                Duration::ZERO,
                Duration::from_millis(2500),
                Duration::from_millis(2500),
                Duration::from_millis(2500)
            ]
        );
        let total: Duration = waits.iter().sum();
        assert!(total < Duration::from_secs(10));
        // No window: everything at once.
        assert!(stagger(3, Duration::ZERO).iter().all(|d| d.is_zero()));
    }
}
