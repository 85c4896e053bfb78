//! `kube_cluster`: a Kubernetes cluster an organisation registered or imported, with
//! what its manager last reported about it.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20251126_000001_create_organization::Organization;
use crate::m20251126_000003_create_k8s_provider::K8sProvider;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KubeCluster::Table)
                    .col(pk_uuid(KubeCluster::Id))
                    .col(uuid(KubeCluster::OrganizationId))
                    .col(uuid_null(KubeCluster::ProviderId))
                    .col(string_null(KubeCluster::ExternalId))
                    .col(string(KubeCluster::Name))
                    .col(string(KubeCluster::Status))
                    .col(string_null(KubeCluster::KubernetesVersion))
                    .col(string_null(KubeCluster::CloudProvider))
                    .col(string_null(KubeCluster::Region))
                    .col(string_null(KubeCluster::DeclaredRegion))
                    .col(integer(KubeCluster::NodeCount).default(0))
                    .col(big_integer(KubeCluster::CpuCapacityMillis).default(0))
                    .col(big_integer(KubeCluster::CpuAllocatableMillis).default(0))
                    .col(big_integer(KubeCluster::MemoryCapacityBytes).default(0))
                    .col(big_integer(KubeCluster::MemoryAllocatableBytes).default(0))
                    .col(string_null(KubeCluster::ManagerVersion))
                    .col(string_null(KubeCluster::ManagerNamespace))
                    .col(timestamp_with_time_zone_null(KubeCluster::ConnectedAt))
                    .col(timestamp_with_time_zone_null(KubeCluster::LastReportedAt))
                    .col(timestamp_with_time_zone_null(KubeCluster::LastSeenAt))
                    .col(boolean(KubeCluster::Cordoned).default(false))
                    .col(json_binary(KubeCluster::Labels))
                    .col(timestamp_with_time_zone(KubeCluster::CreatedAt))
                    .col(timestamp_with_time_zone(KubeCluster::UpdatedAt))
                    .col(timestamp_with_time_zone_null(KubeCluster::DeletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_cluster_organization")
                            .from(KubeCluster::Table, KubeCluster::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kube_cluster_provider")
                            .from(KubeCluster::Table, KubeCluster::ProviderId)
                            .to(K8sProvider::Table, K8sProvider::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        // A cluster name is unique in its organisation among live clusters; the index
        // also serves "list the organisation's clusters".
        manager
            .create_index(
                Index::create()
                    .name("uq_kube_cluster_organization_name_live")
                    .table(KubeCluster::Table)
                    .col(KubeCluster::OrganizationId)
                    .col(KubeCluster::Name)
                    .unique()
                    .and_where(Expr::col(KubeCluster::DeletedAt).is_null())
                    .to_owned(),
            )
            .await?;
        // A provider's cluster (e.g. a GKE self link) is imported at most once.
        manager
            .create_index(
                Index::create()
                    .name("uq_kube_cluster_provider_external_id_live")
                    .table(KubeCluster::Table)
                    .col(KubeCluster::ProviderId)
                    .col(KubeCluster::ExternalId)
                    .unique()
                    .and_where(Expr::col(KubeCluster::DeletedAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KubeCluster::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub(crate) enum KubeCluster {
    Table,
    Id,
    OrganizationId,
    ProviderId,
    ExternalId,
    Name,
    Status,
    KubernetesVersion,
    CloudProvider,
    Region,
    DeclaredRegion,
    NodeCount,
    CpuCapacityMillis,
    CpuAllocatableMillis,
    MemoryCapacityBytes,
    MemoryAllocatableBytes,
    ManagerVersion,
    ManagerNamespace,
    ConnectedAt,
    LastReportedAt,
    LastSeenAt,
    Cordoned,
    Labels,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}
