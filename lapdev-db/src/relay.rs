//! The change feed across replicas: PostgreSQL `LISTEN/NOTIFY`.
//!
//! Every change a replica publishes on its in-process feed
//! ([`changes`](crate::changes)) is also sent as a notification on the
//! [`CHANNEL`] channel, and every replica listens on it and publishes the
//! other replicas' changes on its own feed, so consumers (caches, the
//! reconciler's wake-ups, the dashboard's events, revocations) see changes
//! made anywhere. Payloads are small (ids and kinds, as [`Change`] is; a
//! consumer that needs a row reads it), well under PostgreSQL's 8,000-byte
//! limit. Each payload names the feed it came from, so a replica skips its
//! own notifications (it published them locally already).
//!
//! Notifications are not stored: those sent while a listener's connection was
//! down are lost. So when the listener's connection drops, it connects and
//! listens again and then publishes [`Change::Resync`] locally, which every
//! consumer treats like a lagged subscriber (drop what it derived, re-read).
//! Notifications are sent after the write committed, by one task in order; a
//! replica that dies between the two loses the notification as well, which the
//! same caches' short lifetimes bound.
//!
//! Besides changes, replicas tell each other things that are no change of
//! stored data and no business of the feed's consumers (pages, placement):
//! [`ReplicaSignal`]s, on the [`SIGNAL_CHANNEL`] channel, heard through
//! [`Db::subscribe_signals`]. A second channel, so a replica of a version that
//! does not know signals never sees one. Like changes, signals sent while a
//! listener was away are lost; [`Change::Resync`] tells their consumers to
//! re-read what they stand for (the cluster owners in the database).
//!
//! `LISTEN` needs a session of its own: a connection pooler in transaction
//! mode (PgBouncer's `pool_mode = transaction`) in front of PostgreSQL breaks
//! it. Give the server PostgreSQL itself or a session-mode pool.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::changes::Change;
use crate::db::Db;
use crate::error::{DbError, DbResult};

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "lapdev_changes";

/// The PostgreSQL notification channel of [`ReplicaSignal`]s.
pub const SIGNAL_CHANNEL: &str = "lapdev_replica_signals";

/// A message from one replica to the others that is not a change of stored
/// data (so it is not on the change feed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplicaSignal {
    /// `replica_id` claimed the cluster under `epoch` (its manager's newest
    /// tunnel opened there): a replica holding an older tunnel of the cluster
    /// closes it.
    ClusterClaimed {
        /// The cluster.
        cluster_id: Uuid,
        /// The replica that holds the newest tunnel now.
        replica_id: Uuid,
        /// The claim's epoch ([`ClusterClaim::epoch`](crate::ClusterClaim)).
        epoch: i64,
    },
    /// A manager was heard on a replica that does not hold its tunnel (its
    /// heartbeats and reports are load-balanced apart from the tunnel): the
    /// owner folds this into the cluster's status. Sent when what it says
    /// changed, not on every heartbeat; the time heard reaches the owner
    /// through `kube_cluster.last_seen_at`.
    ManagerHeard {
        /// The cluster.
        cluster_id: Uuid,
        /// The manager has reported its cluster's info.
        reported: bool,
        /// The health its last heartbeat gave: `None` for `ok`, the reason
        /// when degraded; absent when no heartbeat was heard yet.
        health: Option<Option<String>>,
    },
}

/// What the relay sends.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    Change(Change),
    Signal(ReplicaSignal),
}

#[derive(Serialize, Deserialize)]
struct SignalEnvelope {
    origin: Uuid,
    signal: ReplicaSignal,
}

/// How many changes may wait for `NOTIFY` before new ones are dropped (and
/// logged).
const RELAY_QUEUE: usize = 4096;

/// How long to wait before listening again after a failed attempt.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: Uuid,
    change: Change,
}

/// A running relay: [`ChangeRelay::run`] until shutdown.
pub struct ChangeRelay {
    db: Db,
    listener: PgListener,
    queue: mpsc::Receiver<Outgoing>,
}

impl std::fmt::Debug for ChangeRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeRelay").finish_non_exhaustive()
    }
}

impl Db {
    /// Starts relaying this handle's changes to the other replicas and
    /// theirs to this handle's subscribers (PostgreSQL only). When it
    /// returns, the listener is listening: a change any replica publishes
    /// from now on reaches this one. Changes are queued for `NOTIFY` from now
    /// on; drive [`ChangeRelay::run`] to send them.
    pub async fn start_change_relay(&self) -> DbResult<ChangeRelay> {
        if !self.supports_replicas() {
            return Err(DbError::PostgresOnly("the cross-replica change feed"));
        }
        let listener = listen(self).await.map_err(DbError::Listen)?;
        let (sender, queue) = mpsc::channel(RELAY_QUEUE);
        if self.changes.relay.set(sender).is_err() {
            return Err(DbError::RelayRunning);
        }
        Ok(ChangeRelay {
            db: self.clone(),
            listener,
            queue,
        })
    }

    /// Tells the other replicas of `change` without publishing it here (the
    /// caller has acted on it locally already, e.g. a revocation).
    pub fn announce(&self, change: Change) {
        self.changes.relay(&change);
    }

    /// Sends `signal` to the other replicas (not to this one). Nothing is sent
    /// without a running relay (SQLite: there are no other replicas).
    pub fn signal_replicas(&self, signal: ReplicaSignal) {
        if let Some(relay) = self.changes.relay.get()
            && relay.try_send(Outgoing::Signal(signal.clone())).is_err()
        {
            tracing::warn!(
                ?signal,
                "the cross-replica relay is full or stopped; other replicas miss this signal"
            );
        }
    }

    /// The other replicas' signals, from now on.
    pub fn subscribe_signals(&self) -> tokio::sync::broadcast::Receiver<ReplicaSignal> {
        self.changes.signals.subscribe()
    }
}

async fn listen(db: &Db) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(db.conn.get_postgres_connection_pool()).await?;
    listener.listen_all([CHANNEL, SIGNAL_CHANNEL]).await?;
    Ok(listener)
}

impl ChangeRelay {
    /// Sends this replica's changes and receives the others' until
    /// `shutdown`; reconnects the listener when its connection drops, then
    /// publishes [`Change::Resync`].
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let ChangeRelay {
            db,
            listener,
            queue,
        } = self;
        tokio::select! {
            () = shutdown => {}
            () = receive(&db, listener) => {}
            () = send(&db, queue) => {}
        }
    }
}

async fn receive(db: &Db, mut listener: PgListener) {
    let origin = db.changes.origin;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) if notification.channel() == SIGNAL_CHANNEL => {
                match serde_json::from_str::<SignalEnvelope>(notification.payload()) {
                    Ok(e) if e.origin == origin => {}
                    // No subscriber is not an error.
                    Ok(e) => drop(db.changes.signals.send(e.signal)),
                    Err(e) => tracing::warn!(error = %e, "an undecodable replica signal"),
                }
            }
            Ok(Some(notification)) => {
                match serde_json::from_str::<Envelope>(notification.payload()) {
                    Ok(e) if e.origin == origin => {}
                    Ok(e) => db.changes.publish_here(e.change),
                    Err(e) => tracing::warn!(error = %e, "an undecodable change notification"),
                }
            }
            // The connection dropped (or listening failed): listen again on a
            // fresh connection, then tell the consumers they may have missed
            // changes. A consumer re-reading after `Resync` sees everything
            // committed before it, and the listener hears everything after.
            Ok(None) | Err(_) => {
                tracing::warn!("the change listener lost its connection; listening again");
                listener = loop {
                    match listen(db).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not listen for changes");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                };
                db.changes.publish_here(Change::Resync);
            }
        }
    }
}

async fn send(db: &Db, mut queue: mpsc::Receiver<Outgoing>) {
    let pool = db.conn.get_postgres_connection_pool();
    let origin = db.changes.origin;
    while let Some(outgoing) = queue.recv().await {
        let (channel, payload) = match outgoing {
            Outgoing::Change(change) => {
                (CHANNEL, serde_json::to_string(&Envelope { origin, change }))
            }
            Outgoing::Signal(signal) => (
                SIGNAL_CHANNEL,
                serde_json::to_string(&SignalEnvelope { origin, signal }),
            ),
        };
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not encode a change notification");
                continue;
            }
        };
        if let Err(e) = sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(&payload)
            .execute(pool)
            .await
        {
            // The others' caches expire on their own; a lost notification
            // costs freshness, never correctness of what is stored.
            tracing::warn!(error = %e, "could not notify the other replicas of a change");
        }
    }
}
