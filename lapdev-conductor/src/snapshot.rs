//! The placement cache: per organisation, its clusters as placement sees them
//! ([`Candidate`]s), built once per read of the database and kept current by the
//! placements made since.
//!
//! A placement decides and charges its choice here under the conductor's
//! placement lock, then writes the choice to the database *outside* the lock, so
//! concurrent creates commit side by side instead of one after another. Until the
//! write settles, the charge is also kept as *in flight*: a snapshot read again
//! meanwhile (the TTL ran out, a cluster changed) does not yet see the row in the
//! database, so in-flight charges are applied to every new snapshot of their
//! organisation. A write that fails drops the organisation's snapshot (the next
//! decision reads the database again); one that succeeds just stops being in
//! flight. Between its commit and that, a fresh read may count it twice, which
//! errs on the side of room.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapdev_db::{Db, DbError};
use uuid::Uuid;

use crate::placement::{self, Candidate};

/// One organisation's clusters as placement sees them.
pub(crate) struct Snapshot {
    read_at: Instant,
    pub(crate) candidates: Vec<Candidate>,
}

impl Snapshot {
    /// Reads the organisation's clusters and the requests placed on them
    /// (`tunnel_up` is left false: decisions refresh it).
    pub(crate) async fn read(db: &Db, org_id: Uuid) -> Result<Snapshot, DbError> {
        let read_at = Instant::now();
        let clusters = db.list_clusters(org_id).await?;
        let requested = db.cluster_requested_resources(org_id).await?;
        let unbound = db.cluster_unbound_requests(org_id).await?;
        let candidates = clusters
            .iter()
            .map(|c| {
                let used = requested.get(&c.id).copied().unwrap_or_default();
                Candidate {
                    tunnel_up: false,
                    region: c.effective_region().map(str::to_owned),
                    cluster_id: c.id,
                    name: c.name.clone(),
                    status: c.status,
                    cordoned: c.cordoned,
                    cpu_allocatable_millis: c.cpu_allocatable_millis,
                    memory_allocatable_bytes: c.memory_allocatable_bytes,
                    cpu_requested_millis: used.cpu_millis,
                    memory_requested_bytes: used.memory_bytes,
                    nodes: placement::node_rooms(
                        c,
                        unbound.get(&c.id).copied().unwrap_or_default(),
                    ),
                    autoscaling: c.autoscaling(),
                }
            })
            .collect();
        Ok(Snapshot {
            read_at,
            candidates,
        })
    }

    fn charge(&mut self, charge: &Charge) {
        if let Some(c) = self
            .candidates
            .iter_mut()
            .find(|c| c.cluster_id == charge.cluster_id)
        {
            c.charge(charge.cpu_millis, charge.memory_bytes);
        }
    }
}

/// A placement decided but not yet written.
#[derive(Debug, Clone, Copy)]
struct Charge {
    organization_id: Uuid,
    cluster_id: Uuid,
    cpu_millis: i64,
    memory_bytes: i64,
}

/// Every organisation's snapshot and the placements in flight.
#[derive(Default)]
pub(crate) struct Snapshots {
    by_org: HashMap<Uuid, Snapshot>,
    /// By workspace id.
    in_flight: HashMap<Uuid, Charge>,
}

impl Snapshots {
    /// The organisation's snapshot, when read less than `ttl` ago.
    pub(crate) fn fresh(&mut self, org_id: Uuid, ttl: Duration) -> Option<&mut Snapshot> {
        self.by_org
            .get_mut(&org_id)
            .filter(|s| s.read_at.elapsed() < ttl)
    }

    /// Stores a snapshot just read, with the organisation's in-flight
    /// placements charged.
    pub(crate) fn insert(&mut self, org_id: Uuid, mut snapshot: Snapshot) -> &mut Snapshot {
        for charge in self
            .in_flight
            .values()
            .filter(|c| c.organization_id == org_id)
        {
            snapshot.charge(charge);
        }
        self.by_org.insert(org_id, snapshot);
        self.by_org.get_mut(&org_id).expect("inserted above")
    }

    /// Forgets the organisation's snapshot (read again at the next decision).
    pub(crate) fn remove(&mut self, org_id: Uuid) {
        self.by_org.remove(&org_id);
    }

    /// Forgets every snapshot.
    pub(crate) fn clear(&mut self) {
        self.by_org.clear();
    }

    /// Charges a decision to its cluster and keeps it in flight until
    /// [`Snapshots::settle`].
    pub(crate) fn charge(
        &mut self,
        org_id: Uuid,
        workspace_id: Uuid,
        cluster_id: Uuid,
        cpu_millis: i64,
        memory_bytes: i64,
    ) {
        let charge = Charge {
            organization_id: org_id,
            cluster_id,
            cpu_millis,
            memory_bytes,
        };
        if let Some(s) = self.by_org.get_mut(&org_id) {
            s.charge(&charge);
        }
        self.in_flight.insert(workspace_id, charge);
    }

    /// Whether a placement of the workspace is being written.
    pub(crate) fn is_in_flight(&self, workspace_id: Uuid) -> bool {
        self.in_flight.contains_key(&workspace_id)
    }

    /// The write of a charged decision ended: written (the database counts it
    /// from now on) or not (the organisation's snapshot is read again).
    pub(crate) fn settle(&mut self, workspace_id: Uuid, written: bool) {
        if let Some(charge) = self.in_flight.remove(&workspace_id)
            && !written
        {
            self.by_org.remove(&charge.organization_id);
        }
    }
}
