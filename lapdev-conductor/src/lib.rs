//! Workspace scheduling and lifecycle: picks a cluster for each workspace and drives
//! it to its desired state by calling the cluster's manager over RPC.
