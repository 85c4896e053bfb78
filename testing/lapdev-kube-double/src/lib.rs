//! A test double of the Kubernetes API server, for tests that run the real `kube`
//! client over real HTTP. It is not a cluster: nothing runs containers.
