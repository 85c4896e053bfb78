//! Clusters (`kube_cluster`): create, list, get, report info, set status, cordon and
//! soft-delete. Every function is scoped to an organisation: a cluster of another
//! organisation is `NotFound`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use lapdev_common::status::{CloudProvider, ClusterStatus, SecurityProfile, WorkspaceStatus};
use sea_orm::sea_query::{Alias, Expr, Func};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr,
};
use uuid::Uuid;

use lapdev_common::scheduling::{Autoscaling, NodeCapacity};

use crate::changes::Change;
use crate::cluster_placement::{PlacementSettings, from_json, scheduling_json, to_json};
use crate::db::{Db, now};
use crate::entities::{kube_cluster, kube_workspace};
use crate::error::{DbError, DbResult, EntityKind, parse_stored, unique_violation};
use crate::util::{check_named, check_non_negative, tz, utc};
use crate::workspace::PageCursor;

/// A registered or imported Kubernetes cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Primary key.
    pub id: Uuid,
    /// Owning organisation.
    pub organization_id: Uuid,
    /// The provider it was imported from or created through, if any.
    pub provider_id: Option<Uuid>,
    /// The provider's id for it (e.g. a GKE self link).
    pub external_id: Option<String>,
    /// Unique among the organisation's live clusters.
    pub name: String,
    /// Connection / lifecycle state.
    pub status: ClusterStatus,
    /// Reported Kubernetes version.
    pub kubernetes_version: Option<String>,
    /// Cloud detected by the manager.
    pub cloud_provider: Option<CloudProvider>,
    /// Region detected by the manager.
    pub region: Option<String>,
    /// Region given at registration, used when none is detected.
    pub declared_region: Option<String>,
    /// Reported node count (0 until the first report).
    pub node_count: i32,
    /// Reported total CPU capacity in millicores.
    pub cpu_capacity_millis: i64,
    /// Reported allocatable CPU in millicores.
    pub cpu_allocatable_millis: i64,
    /// Reported total memory capacity in bytes.
    pub memory_capacity_bytes: i64,
    /// Reported allocatable memory in bytes.
    pub memory_allocatable_bytes: i64,
    /// Version of the connected manager.
    pub manager_version: Option<String>,
    /// Namespace the manager runs in.
    pub manager_namespace: Option<String>,
    /// When the status last became `connected`.
    pub connected_at: Option<DateTime<Utc>>,
    /// When cluster info was last reported; `None` means never, and the capacity
    /// fields are then meaningless zeros.
    pub last_reported_at: Option<DateTime<Utc>>,
    /// When the manager was last heard from.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// A cordoned cluster gets no new workspaces.
    pub cordoned: bool,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was soft-deleted; `None` for a live cluster.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The Pod Security profile its workspaces run under (rendered into the
    /// install manifest).
    pub security_profile: SecurityProfile,
    /// The manifest revision the manager says it was installed from (`None` for
    /// managers that predate revisions, or before the first report).
    pub manifest_revision: Option<String>,
    /// The admin's placement settings.
    pub placement: PlacementSettings,
    /// An autoscaler the manager detected (GKE Autopilot).
    pub detected_autoscaling: Option<Autoscaling>,
    /// The manager's last per-node capacity report; `None` before the first
    /// one, or from managers that predate it (placement then uses the totals).
    pub nodes: Option<Vec<NodeCapacity>>,
}

impl Cluster {
    /// The region placement constraints match: the detected one when known, else the
    /// declared one.
    pub fn effective_region(&self) -> Option<&str> {
        self.region.as_deref().or(self.declared_region.as_deref())
    }

    /// The largest node the cluster can add: declared, else detected.
    pub fn autoscaling(&self) -> Option<Autoscaling> {
        self.placement.autoscaling.or(self.detected_autoscaling)
    }
}

/// What [`Db::create_cluster`] needs.
#[derive(Debug, Clone)]
pub struct NewCluster {
    /// Unique among the organisation's live clusters.
    pub name: String,
    /// Initial status: `Pending` for a registered cluster, `Provisioning` for one a
    /// provider is creating.
    pub status: ClusterStatus,
    /// The provider it comes from, if any.
    pub provider_id: Option<Uuid>,
    /// The provider's id for it.
    pub external_id: Option<String>,
    /// Region given at registration.
    pub declared_region: Option<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// The Pod Security profile its workspaces run under.
    pub security_profile: SecurityProfile,
    /// Capacity mode, scheduling settings, declared autoscaling.
    pub placement: PlacementSettings,
}

impl NewCluster {
    /// A `Pending` cluster with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        NewCluster {
            name: name.into(),
            status: ClusterStatus::Pending,
            provider_id: None,
            external_id: None,
            declared_region: None,
            labels: BTreeMap::new(),
            security_profile: SecurityProfile::default(),
            placement: PlacementSettings::default(),
        }
    }
}

/// What a manager reports about its cluster ([`Db::update_cluster_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfoUpdate {
    /// Kubernetes version (`/version` gitVersion).
    pub kubernetes_version: String,
    /// Detected cloud.
    pub cloud_provider: CloudProvider,
    /// Detected region, if any.
    pub region: Option<String>,
    /// Number of nodes.
    pub node_count: i32,
    /// Total CPU capacity in millicores.
    pub cpu_capacity_millis: i64,
    /// Allocatable CPU in millicores.
    pub cpu_allocatable_millis: i64,
    /// Total memory capacity in bytes.
    pub memory_capacity_bytes: i64,
    /// Allocatable memory in bytes.
    pub memory_allocatable_bytes: i64,
    /// The manager's version.
    pub manager_version: String,
    /// The manager's namespace.
    pub manager_namespace: String,
    /// The manifest revision the manager was installed from, when it says.
    pub manifest_revision: Option<String>,
    /// The per-node capacity, when the manager reports it.
    pub nodes: Option<Vec<NodeCapacity>>,
    /// An autoscaler the manager detected.
    pub detected_autoscaling: Option<Autoscaling>,
}

/// Sum of the requests of the workspaces placed on one cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceRequests {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Persistent storage in bytes.
    pub storage_bytes: i64,
    /// Number of workspaces counted.
    pub workspaces: i64,
}

pub(crate) fn cluster_from_model(m: kube_cluster::Model) -> DbResult<Cluster> {
    let labels = serde_json::from_value(m.labels).map_err(|source| DbError::CorruptJson {
        table: "kube_cluster",
        column: "labels",
        source,
    })?;
    Ok(Cluster {
        placement: PlacementSettings {
            capacity_mode: parse_stored("kube_cluster", "capacity_mode", &m.capacity_mode)?,
            scheduling: from_json("scheduling", m.scheduling)?.unwrap_or_default(),
            autoscaling: from_json("autoscaling", m.autoscaling)?,
        },
        detected_autoscaling: from_json("detected_autoscaling", m.detected_autoscaling)?,
        nodes: from_json("nodes", m.nodes)?,
        status: parse_stored("kube_cluster", "status", &m.status)?,
        security_profile: parse_stored("kube_cluster", "security_profile", &m.security_profile)?,
        manifest_revision: m.manifest_revision,
        cloud_provider: m
            .cloud_provider
            .as_deref()
            .map(|s| parse_stored("kube_cluster", "cloud_provider", s))
            .transpose()?,
        id: m.id,
        organization_id: m.organization_id,
        provider_id: m.provider_id,
        external_id: m.external_id,
        name: m.name,
        kubernetes_version: m.kubernetes_version,
        region: m.region,
        declared_region: m.declared_region,
        node_count: m.node_count,
        cpu_capacity_millis: m.cpu_capacity_millis,
        cpu_allocatable_millis: m.cpu_allocatable_millis,
        memory_capacity_bytes: m.memory_capacity_bytes,
        memory_allocatable_bytes: m.memory_allocatable_bytes,
        manager_version: m.manager_version,
        manager_namespace: m.manager_namespace,
        connected_at: m.connected_at.map(utc),
        last_reported_at: m.last_reported_at.map(utc),
        last_seen_at: m.last_seen_at.map(utc),
        cordoned: m.cordoned,
        labels,
        created_at: utc(m.created_at),
        updated_at: utc(m.updated_at),
        deleted_at: m.deleted_at.map(utc),
    })
}

/// Workspace statuses whose requests count against a cluster's allocatable resources:
/// everything placed and live except `stopped` (no pod) and `deleted`.
pub(crate) const COUNTED_STATUSES: [WorkspaceStatus; 7] = [
    WorkspaceStatus::Pending,
    WorkspaceStatus::Scheduling,
    WorkspaceStatus::Creating,
    WorkspaceStatus::Running,
    WorkspaceStatus::Stopping,
    WorkspaceStatus::Deleting,
    WorkspaceStatus::Failed,
];

impl Db {
    /// Registers a cluster in `org_id`. A live cluster of the same name in the same
    /// organisation makes it `AlreadyExists`.
    pub async fn create_cluster(&self, org_id: Uuid, new: NewCluster) -> DbResult<Cluster> {
        self.check_new_cluster(org_id, &new).await?;
        self.insert_cluster(&self.conn, org_id, new).await
    }

    /// The checks [`Db::create_cluster`] makes before it writes.
    pub(crate) async fn check_new_cluster(&self, org_id: Uuid, new: &NewCluster) -> DbResult<()> {
        check_named(lapdev_common::name::NameKind::Cluster, &new.name)?;
        self.get_organization(org_id).await?;
        if let Some(provider_id) = new.provider_id {
            self.get_provider(org_id, provider_id).await?;
        }
        Ok(())
    }

    /// Inserts a checked cluster through `conn` (the pool or a transaction).
    pub(crate) async fn insert_cluster<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        org_id: Uuid,
        new: NewCluster,
    ) -> DbResult<Cluster> {
        let labels = serde_json::to_value(&new.labels).map_err(|source| DbError::CorruptJson {
            table: "kube_cluster",
            column: "labels",
            source,
        })?;
        let external_id = new.external_id;
        let at = tz(now());
        let model = kube_cluster::ActiveModel {
            id: Set(Uuid::new_v4()),
            organization_id: Set(org_id),
            provider_id: Set(new.provider_id),
            external_id: Set(external_id.clone()),
            name: Set(new.name.clone()),
            status: Set(new.status.as_str().to_owned()),
            kubernetes_version: Set(None),
            cloud_provider: Set(None),
            region: Set(None),
            declared_region: Set(new.declared_region),
            node_count: Set(0),
            cpu_capacity_millis: Set(0),
            cpu_allocatable_millis: Set(0),
            memory_capacity_bytes: Set(0),
            memory_allocatable_bytes: Set(0),
            manager_version: Set(None),
            manager_namespace: Set(None),
            connected_at: Set(None),
            last_reported_at: Set(None),
            last_seen_at: Set(None),
            cordoned: Set(false),
            labels: Set(labels),
            created_at: Set(at),
            updated_at: Set(at),
            deleted_at: Set(None),
            security_profile: Set(new.security_profile.as_str().to_owned()),
            manifest_revision: Set(None),
            capacity_mode: Set(new.placement.capacity_mode.as_str().to_owned()),
            scheduling: Set(scheduling_json(&new.placement.scheduling)?),
            autoscaling: Set(new
                .placement
                .autoscaling
                .as_ref()
                .map(|a| to_json("autoscaling", a))
                .transpose()?),
            detected_autoscaling: Set(None),
            nodes: Set(None),
        }
        .insert(conn)
        .await
        .map_err(|err| {
            // Two unique rules can fail here: the name, or a provider cluster imported
            // twice. Both databases name the violated index or columns in the message.
            let key = match err.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(message))
                    if message.contains("external_id") =>
                {
                    external_id.clone().unwrap_or_default()
                }
                _ => new.name.clone(),
            };
            unique_violation(EntityKind::Cluster, &key)(err)
        })?;
        self.cluster_changed(org_id, model.id);
        cluster_from_model(model)
    }

    /// The live clusters of `org_id`, by name.
    pub async fn list_clusters(&self, org_id: Uuid) -> DbResult<Vec<Cluster>> {
        kube_cluster::Entity::find()
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .order_by_asc(kube_cluster::Column::Name)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(cluster_from_model)
            .collect()
    }

    /// One page of the live clusters of `org_id`, in name order: at most
    /// `limit` after the cursor's name, or the last `limit` before it (still
    /// returned in name order). Live cluster names are unique in an
    /// organisation, so a page boundary is just a name.
    pub async fn list_clusters_page(
        &self,
        org_id: Uuid,
        cursor: PageCursor<'_>,
        limit: u64,
    ) -> DbResult<Vec<Cluster>> {
        let q = kube_cluster::Entity::find()
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .filter(kube_cluster::Column::DeletedAt.is_null());
        let q = match cursor {
            PageCursor::First => q.order_by_asc(kube_cluster::Column::Name),
            PageCursor::After(n) => q
                .filter(kube_cluster::Column::Name.gt(n))
                .order_by_asc(kube_cluster::Column::Name),
            PageCursor::Before(n) => q
                .filter(kube_cluster::Column::Name.lt(n))
                .order_by_desc(kube_cluster::Column::Name),
        };
        let mut rows = q
            .limit(limit)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(cluster_from_model)
            .collect::<DbResult<Vec<_>>>()?;
        if matches!(cursor, PageCursor::Before(_)) {
            rows.reverse();
        }
        Ok(rows)
    }

    /// All of `org_id`'s clusters including soft-deleted ones, by name.
    pub async fn list_clusters_including_deleted(&self, org_id: Uuid) -> DbResult<Vec<Cluster>> {
        kube_cluster::Entity::find()
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .order_by_asc(kube_cluster::Column::Name)
            .order_by_asc(kube_cluster::Column::CreatedAt)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(cluster_from_model)
            .collect()
    }

    /// A live cluster of `org_id`.
    pub async fn get_cluster(&self, org_id: Uuid, id: Uuid) -> DbResult<Cluster> {
        kube_cluster::Entity::find_by_id(id)
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Cluster, id))
            .and_then(cluster_from_model)
    }

    /// A live cluster of `org_id` by name.
    pub async fn get_cluster_by_name(&self, org_id: Uuid, name: &str) -> DbResult<Cluster> {
        kube_cluster::Entity::find()
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .filter(kube_cluster::Column::Name.eq(name))
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Cluster, name))
            .and_then(cluster_from_model)
    }

    /// Sets the autoscaler a provider's API reports for the cluster (GKE
    /// Autopilot); managers' reports leave it alone on provider clusters.
    pub async fn set_detected_autoscaling(
        &self,
        org_id: Uuid,
        id: Uuid,
        autoscaling: Option<&Autoscaling>,
    ) -> DbResult<()> {
        let value = autoscaling
            .map(|a| to_json("detected_autoscaling", a))
            .transpose()?;
        self.update_live_cluster(
            org_id,
            id,
            kube_cluster::Entity::update_many()
                .col_expr(
                    kube_cluster::Column::DetectedAutoscaling,
                    Expr::value(value),
                )
                .col_expr(kube_cluster::Column::UpdatedAt, Expr::value(tz(now()))),
        )
        .await?;
        self.cluster_changed(org_id, id);
        Ok(())
    }

    /// Records what the manager reported; also sets `last_reported_at` and
    /// `last_seen_at`. One `UPDATE`, no read.
    pub async fn update_cluster_info(
        &self,
        org_id: Uuid,
        id: Uuid,
        info: &ClusterInfoUpdate,
    ) -> DbResult<()> {
        for (field, value) in [
            ("cpu_capacity_millis", info.cpu_capacity_millis),
            ("cpu_allocatable_millis", info.cpu_allocatable_millis),
            ("memory_capacity_bytes", info.memory_capacity_bytes),
            ("memory_allocatable_bytes", info.memory_allocatable_bytes),
            ("node_count", i64::from(info.node_count)),
        ] {
            check_non_negative(field, value)?;
        }
        use kube_cluster::Column as C;
        let at = tz(now());
        let nodes = info
            .nodes
            .as_ref()
            .map(|n| to_json("nodes", n))
            .transpose()?;
        let detected = info
            .detected_autoscaling
            .as_ref()
            .map(|a| to_json("detected_autoscaling", a))
            .transpose()?;
        self.update_live_cluster(
            org_id,
            id,
            kube_cluster::Entity::update_many()
                .col_expr(C::Nodes, Expr::value(nodes))
                // A provider cluster's autoscaler is known from the provider's
                // API (set at import or create), which the manager's guess
                // from node labels does not override.
                .col_expr(
                    C::DetectedAutoscaling,
                    Expr::case(C::ProviderId.is_null(), Expr::value(detected))
                        .finally(Expr::col(C::DetectedAutoscaling))
                        .into(),
                )
                .col_expr(
                    C::KubernetesVersion,
                    Expr::value(Some(info.kubernetes_version.clone())),
                )
                .col_expr(
                    C::CloudProvider,
                    Expr::value(Some(info.cloud_provider.as_str())),
                )
                .col_expr(C::Region, Expr::value(info.region.clone()))
                .col_expr(C::NodeCount, Expr::value(info.node_count))
                .col_expr(C::CpuCapacityMillis, Expr::value(info.cpu_capacity_millis))
                .col_expr(
                    C::CpuAllocatableMillis,
                    Expr::value(info.cpu_allocatable_millis),
                )
                .col_expr(
                    C::MemoryCapacityBytes,
                    Expr::value(info.memory_capacity_bytes),
                )
                .col_expr(
                    C::MemoryAllocatableBytes,
                    Expr::value(info.memory_allocatable_bytes),
                )
                .col_expr(
                    C::ManagerVersion,
                    Expr::value(Some(info.manager_version.clone())),
                )
                .col_expr(
                    C::ManagerNamespace,
                    Expr::value(Some(info.manager_namespace.clone())),
                )
                .col_expr(
                    C::ManifestRevision,
                    Expr::value(info.manifest_revision.clone()),
                )
                .col_expr(C::LastReportedAt, Expr::value(Some(at)))
                .col_expr(C::LastSeenAt, Expr::value(Some(at)))
                .col_expr(C::UpdatedAt, Expr::value(at)),
        )
        .await?;
        self.cluster_changed(org_id, id);
        Ok(())
    }

    /// Sets the Pod Security profile the cluster's workspaces run under. The
    /// installed manifest changes only when the admin applies the new one.
    pub async fn set_cluster_security_profile(
        &self,
        org_id: Uuid,
        id: Uuid,
        profile: SecurityProfile,
    ) -> DbResult<()> {
        use kube_cluster::Column as C;
        self.update_live_cluster(
            org_id,
            id,
            kube_cluster::Entity::update_many()
                .col_expr(C::SecurityProfile, Expr::value(profile.as_str()))
                .col_expr(C::UpdatedAt, Expr::value(tz(now()))),
        )
        .await?;
        self.cluster_changed(org_id, id);
        Ok(())
    }

    /// Marks every live `connected` or `degraded` cluster of every organisation
    /// `disconnected`. The server calls this on start: tunnels live in memory, so
    /// after a restart no manager is connected until it dials in again. Returns
    /// how many clusters changed.
    pub async fn mark_connected_clusters_disconnected(&self) -> DbResult<u64> {
        use kube_cluster::Column as C;
        let result = kube_cluster::Entity::update_many()
            .col_expr(C::Status, Expr::value(ClusterStatus::Disconnected.as_str()))
            .col_expr(C::UpdatedAt, Expr::value(tz(now())))
            .filter(C::DeletedAt.is_null())
            .filter(C::Status.is_in([
                ClusterStatus::Connected.as_str(),
                ClusterStatus::Degraded.as_str(),
            ]))
            .exec(&self.conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// Sets the status; becoming `connected` also sets `connected_at` and
    /// `last_seen_at`.
    pub async fn set_cluster_status(
        &self,
        org_id: Uuid,
        id: Uuid,
        status: ClusterStatus,
    ) -> DbResult<()> {
        use kube_cluster::Column as C;
        let at = tz(now());
        let mut update = kube_cluster::Entity::update_many()
            .col_expr(C::Status, Expr::value(status.as_str()))
            .col_expr(C::UpdatedAt, Expr::value(at));
        if status == ClusterStatus::Connected {
            update = update
                .col_expr(C::ConnectedAt, Expr::value(Some(at)))
                .col_expr(C::LastSeenAt, Expr::value(Some(at)));
        }
        self.update_live_cluster(org_id, id, update).await?;
        self.cluster_changed(org_id, id);
        Ok(())
    }

    /// Records the provider's id of the cluster (its self link, once the
    /// provider has accepted the create that the row announced).
    pub async fn set_cluster_external_id(
        &self,
        org_id: Uuid,
        id: Uuid,
        external_id: &str,
    ) -> DbResult<()> {
        use kube_cluster::Column as C;
        let update = kube_cluster::Entity::update_many()
            .col_expr(C::ExternalId, Expr::value(Some(external_id.to_owned())))
            .col_expr(C::UpdatedAt, Expr::value(tz(now())));
        self.update_live_cluster(org_id, id, update).await?;
        self.cluster_changed(org_id, id);
        Ok(())
    }

    /// Records that the manager was last heard from at `at` (a flush of
    /// heartbeats kept in memory). Never moves the time backwards.
    pub async fn touch_cluster_seen_at(
        &self,
        org_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> DbResult<()> {
        let at = tz(at);
        let update = kube_cluster::Entity::update_many()
            .col_expr(kube_cluster::Column::LastSeenAt, Expr::value(Some(at)))
            .filter(
                sea_orm::Condition::any()
                    .add(kube_cluster::Column::LastSeenAt.is_null())
                    .add(kube_cluster::Column::LastSeenAt.lt(at)),
            );
        match self.update_live_cluster(org_id, id, update).await {
            // Nothing updated because the stored time is newer: not an error.
            Err(DbError::NotFound { .. }) => self.get_cluster(org_id, id).await.map(|_| ()),
            other => other,
        }
    }

    /// Records that the manager was heard from (a heartbeat).
    pub async fn touch_cluster_seen(&self, org_id: Uuid, id: Uuid) -> DbResult<()> {
        let at = tz(now());
        self.update_live_cluster(
            org_id,
            id,
            kube_cluster::Entity::update_many()
                .col_expr(kube_cluster::Column::LastSeenAt, Expr::value(Some(at))),
        )
        .await
    }

    /// Cordons (`true`) or uncordons a cluster.
    pub async fn set_cluster_cordoned(
        &self,
        org_id: Uuid,
        id: Uuid,
        cordoned: bool,
    ) -> DbResult<()> {
        let at = tz(now());
        self.update_live_cluster(
            org_id,
            id,
            kube_cluster::Entity::update_many()
                .col_expr(kube_cluster::Column::Cordoned, Expr::value(cordoned))
                .col_expr(kube_cluster::Column::UpdatedAt, Expr::value(at)),
        )
        .await?;
        self.cluster_changed(org_id, id);
        Ok(())
    }

    /// Soft-deletes a cluster. Its tokens stop verifying at once. Refused (`InUse`)
    /// while live workspaces are placed on it.
    ///
    /// Cannot race a placement onto the cluster: both lock the cluster row (on
    /// PostgreSQL; SQLite runs one writer at a time) before they check and write,
    /// so either the placement sees the cluster deleted or this sees the
    /// workspace placed.
    pub async fn delete_cluster(&self, org_id: Uuid, id: Uuid) -> DbResult<()> {
        let txn = self.begin_write().await?;
        let cluster = kube_cluster::Entity::find_by_id(id)
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| DbError::not_found(EntityKind::Cluster, id))?;
        let cluster_name = cluster.name.clone();
        let workspaces = kube_workspace::Entity::find()
            .filter(kube_workspace::Column::ClusterId.eq(id))
            .filter(kube_workspace::Column::DeletedAt.is_null())
            .count(&txn)
            .await?;
        if workspaces > 0 {
            return Err(DbError::InUse {
                entity: EntityKind::Cluster,
                id,
                users: workspaces,
                user_kind: EntityKind::Workspace,
            });
        }
        // Home volumes kept for deleted workspaces stay on the cluster.
        crate::retention::abandon_volumes(&txn, id, &cluster_name).await?;
        let at = tz(now());
        kube_cluster::Entity::update_many()
            .col_expr(kube_cluster::Column::DeletedAt, Expr::value(Some(at)))
            .col_expr(kube_cluster::Column::UpdatedAt, Expr::value(at))
            .filter(kube_cluster::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        self.changes.publish(Change::ClusterDeleted {
            organization_id: org_id,
            cluster_id: id,
        });
        Ok(())
    }

    fn cluster_changed(&self, org_id: Uuid, id: Uuid) {
        self.changes.publish(Change::ClusterChanged {
            organization_id: org_id,
            cluster_id: id,
        });
    }

    /// The summed requests of the live workspaces placed on each of `org_id`'s
    /// clusters (only statuses that hold resources count: not `stopped`, not
    /// `deleted`). Clusters without such workspaces are absent from the map.
    pub async fn cluster_requested_resources(
        &self,
        org_id: Uuid,
    ) -> DbResult<HashMap<Uuid, ResourceRequests>> {
        use kube_workspace::Column as W;
        let sum = |col: W| {
            Expr::from(Func::cast_as(
                Func::sum(Expr::col(col)),
                Alias::new("BIGINT"),
            ))
        };
        let rows: Vec<(Uuid, i64, i64, i64, i64)> = kube_workspace::Entity::find()
            .select_only()
            .column(W::ClusterId)
            .column_as(sum(W::CpuMillis), "cpu_millis")
            .column_as(sum(W::MemoryBytes), "memory_bytes")
            .column_as(sum(W::StorageBytes), "storage_bytes")
            .column_as(
                Expr::from(Func::cast_as(
                    Func::count(Expr::col(W::Id)),
                    Alias::new("BIGINT"),
                )),
                "workspaces",
            )
            .filter(W::OrganizationId.eq(org_id))
            .filter(W::DeletedAt.is_null())
            .filter(W::ClusterId.is_not_null())
            .filter(W::Status.is_in(COUNTED_STATUSES.map(WorkspaceStatus::as_str)))
            .group_by(W::ClusterId)
            .into_tuple()
            .all(&self.conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(cluster_id, cpu_millis, memory_bytes, storage_bytes, workspaces)| {
                    (
                        cluster_id,
                        ResourceRequests {
                            cpu_millis,
                            memory_bytes,
                            storage_bytes,
                            workspaces,
                        },
                    )
                },
            )
            .collect())
    }

    /// Runs `update` on the live cluster `id` of `org_id`; `NotFound` when no row matched.
    async fn update_live_cluster(
        &self,
        org_id: Uuid,
        id: Uuid,
        update: sea_orm::UpdateMany<kube_cluster::Entity>,
    ) -> DbResult<()> {
        let result = update
            .filter(kube_cluster::Column::Id.eq(id))
            .filter(kube_cluster::Column::OrganizationId.eq(org_id))
            .filter(kube_cluster::Column::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        if result.rows_affected == 0 {
            return Err(DbError::not_found(EntityKind::Cluster, id));
        }
        Ok(())
    }
}
