//! The server's Kubernetes integration: `KubeClusterServer` (the server side of
//! `KubeClusterRpc`), the registry of connected managers, cloud providers and
//! install-manifest rendering.
