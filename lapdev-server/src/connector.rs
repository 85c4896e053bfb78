//! The conductor's [`ManagerConnector`], implemented with the cluster server's
//! tunnel registry: a manager is reachable exactly when its tunnel is up. One
//! replica (SQLite); with several, [`crate::routing::RoutedConnector`] also
//! reaches clusters whose tunnels other replicas hold.

use lapdev_conductor::ManagerConnector;
use lapdev_kube::server::KubeClusterServer;
use lapdev_kube_rpc::KubeManagerRpcClient;
use uuid::Uuid;

/// Reaches managers down their tunnels.
#[derive(Debug, Clone)]
pub struct TunnelConnector(pub KubeClusterServer);

impl ManagerConnector for TunnelConnector {
    fn manager(&self, cluster_id: Uuid) -> Option<KubeManagerRpcClient> {
        self.0.manager_client(cluster_id)
    }

    fn is_connected(&self, cluster_id: Uuid) -> bool {
        self.0.is_tunnel_up(cluster_id)
    }
}
