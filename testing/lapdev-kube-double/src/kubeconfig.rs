//! The kubeconfig that points kube and kubectl at a running double.

/// The cluster, user and context name used in the generated kubeconfig.
pub const CONTEXT: &str = "lapdev-kube-double";

/// The token of the generated admin kubeconfig: cluster-admin even when RBAC
/// is enforced ([`crate::DoubleHandle::enable_rbac`]).
pub const ADMIN_TOKEN: &str = "not-a-secret-lapdev-kube-double";

/// Renders a kubeconfig for the API at `server` (an `http://` URL).
///
/// The user has a fixed token that stays cluster-admin; it is there so
/// clients behave as they would with a real cluster's credentials.
pub fn render(server: &str) -> String {
    render_with_token(server, ADMIN_TOKEN)
}

/// Renders a kubeconfig for the API at `server` whose user presents `token`.
pub fn render_with_token(server: &str, token: &str) -> String {
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
    token: {token}
preferences: {{}}
"
    )
}
