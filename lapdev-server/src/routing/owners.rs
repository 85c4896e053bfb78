//! Which live replica owns each cluster, kept in memory so the conductor's
//! synchronous questions (`ManagerConnector::is_connected` for every cluster
//! at placement, `manager`) are answered without the database.
//!
//! The cache is filled from `Db::cluster_routes` (each claimed cluster whose
//! owner holds the lease it claimed under, with the owner's internal
//! address) at start and every replica heartbeat, refreshed for one cluster
//! when another replica claims it ([`ReplicaSignal::ClusterClaimed`]) or a
//! forward to it fails, and in full when the change feed says changes were
//! missed ([`Change::Resync`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapdev_db::{Change, ClusterRoute, Db, ReplicaSignal};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

/// A cluster's owner and its internal address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The owning replica.
    pub replica_id: Uuid,
    /// Where it serves its internal endpoint (`host:port`).
    pub address: String,
}

/// The owners cache. Cheap to clone.
#[derive(Clone)]
pub struct Owners {
    db: Db,
    routes: Arc<RwLock<HashMap<Uuid, Route>>>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners").finish_non_exhaustive()
    }
}

impl Owners {
    /// An empty cache over `db`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            routes: Arc::default(),
        }
    }

    /// The cluster's owner as last read.
    pub fn route(&self, cluster_id: Uuid) -> Option<Route> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cluster_id)
            .cloned()
    }

    /// Reads every owner again.
    pub async fn refresh_all(&self) -> Result<(), lapdev_db::DbError> {
        let routes = self.db.cluster_routes().await?;
        let fresh: HashMap<Uuid, Route> = routes.into_iter().map(entry).collect();
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Reads the cluster's owner again; `None` when it has no live owner or
    /// the database cannot say (the cluster is then treated as unreachable
    /// until the next refresh).
    pub async fn refresh(&self, cluster_id: Uuid) -> Option<Route> {
        let read = self.db.cluster_route(cluster_id).await;
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(Some(r)) => {
                let (id, route) = entry(r);
                routes.insert(id, route.clone());
                Some(route)
            }
            Ok(None) => {
                routes.remove(&cluster_id);
                None
            }
            Err(e) => {
                tracing::warn!(cluster = %cluster_id, error = %e, "could not read the cluster's owner");
                routes.remove(&cluster_id);
                None
            }
        }
    }

    /// Keeps the cache fresh until `shutdown`: in full every `interval` and
    /// after missed changes, one cluster whenever another replica claims it.
    pub async fn run(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut signals = self.db.subscribe_signals();
        let mut changes = self.db.subscribe();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let full = tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => true,
                signal = signals.recv() => match signal {
                    Ok(ReplicaSignal::ClusterClaimed { cluster_id, .. }) => {
                        self.refresh(cluster_id).await;
                        false
                    }
                    Ok(_) => false,
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                },
                change = changes.recv() => match change {
                    Ok(Change::Resync) | Err(RecvError::Lagged(_)) => true,
                    Ok(Change::ClusterDeleted { cluster_id, .. }) => {
                        self.routes.write().unwrap_or_else(|e| e.into_inner()).remove(&cluster_id);
                        false
                    }
                    Ok(_) => false,
                    Err(RecvError::Closed) => return,
                },
            };
            if full && let Err(e) = self.refresh_all().await {
                tracing::warn!(error = %e, "could not read the clusters' owners");
            }
        }
    }
}

fn entry(r: ClusterRoute) -> (Uuid, Route) {
    (
        r.cluster_id,
        Route {
            replica_id: r.replica_id,
            address: r.address,
        },
    )
}
