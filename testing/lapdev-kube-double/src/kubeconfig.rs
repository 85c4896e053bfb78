//! The kubeconfig that points kube and kubectl at a running double.

/// The cluster, user and context name used in the generated kubeconfig.
pub const CONTEXT: &str = "lapdev-kube-double";

/// Renders a kubeconfig for the API at `server` (an `http://` URL).
///
/// The user has a fixed token that the double does not check; it is there so
/// clients behave as they would with a real cluster's credentials.
pub fn render(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {server}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: {CONTEXT}
    namespace: default
current-context: {CONTEXT}
users:
- name: {CONTEXT}
  user:
    token: not-a-secret-lapdev-kube-double
preferences: {{}}
"
    )
}
