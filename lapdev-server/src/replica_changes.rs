//! What other replicas' changes mean for this one's in-memory state.
//!
//! With several replicas the change feed carries other replicas' changes too
//! (`lapdev_db::relay`). Most consumers derive from the feed already (the
//! placement cache, the reconciler's wake-ups, the dashboard's events); this
//! task applies the rest, which the revoking replica applied by a direct call:
//! a revocation of people's authority ends the sessions it covers and drops
//! the authorization cache, a revoked cluster token closes its tunnel here, a
//! deleted cluster's tunnel closes. Applying one of this replica's own changes
//! again is harmless (each step is idempotent). When changes may have been
//! missed (the listener reconnected, or this subscriber lagged) the
//! authorization cache is dropped, every cached cluster token and every
//! tunnel's token is checked against the database (cached ones are marked
//! for re-checking, kept only as the stale-if-error fallback while the
//! database cannot answer), and so is every cluster this replica owns
//! (another may have claimed it).
//!
//! The other replicas' signals (`lapdev_db::ReplicaSignal`: a cluster claimed
//! elsewhere, a manager heard elsewhere) go to the cluster server.

use std::future::Future;

use lapdev_db::{Change, Db};
use lapdev_kube::server::KubeClusterServer;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::AuthState;

/// Applies changes until `shutdown`.
pub async fn run(
    db: Db,
    auth: AuthState,
    kube: KubeClusterServer,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut changes = db.subscribe();
    let mut signals = db.subscribe_signals();
    loop {
        let change = tokio::select! {
            () = &mut shutdown => return,
            change = changes.recv() => change,
            signal = signals.recv() => {
                match signal {
                    Ok(signal) => kube.apply_signal(signal).await,
                    Err(RecvError::Lagged(_)) => recheck_ownership(&kube).await,
                    Err(RecvError::Closed) => return,
                }
                continue;
            }
        };
        match change {
            Ok(Change::Revoked(revocation)) => auth.revoked_elsewhere(revocation),
            Ok(Change::TokenRevoked { token_id, .. }) => kube.token_revoked(token_id),
            Ok(Change::ClusterDeleted { cluster_id, .. }) => kube.cluster_deleted(cluster_id),
            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                auth.cache.clear();
                match kube.recheck_tunnel_tokens().await {
                    Ok(0) => {}
                    Ok(closed) => {
                        tracing::info!(closed, "closed tunnels whose tokens were revoked meanwhile")
                    }
                    Err(e) => tracing::warn!(error = %e, "could not re-check the tunnels' tokens"),
                }
                recheck_ownership(&kube).await;
            }
            Ok(_) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

async fn recheck_ownership(kube: &KubeClusterServer) {
    match kube.recheck_ownership().await {
        Ok(0) => {}
        Ok(lost) => tracing::info!(lost, "gave up clusters other replicas claimed meanwhile"),
        Err(e) => tracing::warn!(error = %e, "could not re-check the clusters this replica owns"),
    }
}
