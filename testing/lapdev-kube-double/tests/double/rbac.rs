//! ServiceAccount tokens and RBAC enforced from the stored roles and bindings.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchParams};
use kube::core::Status;
use lapdev_kube_double::KubeDouble;
use serde_json::json;

use crate::{pod, start, status};

const WS: &str = "lapdev-workspaces";
const USER: &str = "system:serviceaccount:lapdev:lapdev-kube-manager";

/// The double with the manager's ServiceAccount and a Role, ClusterRole and
/// bindings like an install manifest's, created through the admin client.
async fn cluster() -> (KubeDouble, kube::Client) {
    let (double, admin) = start().await;
    for ns in ["lapdev", WS] {
        double.create_namespace(ns).unwrap();
    }
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lapdev-kube-manager", "namespace": "lapdev"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "manager", "namespace": WS}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "delete"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "manager", "namespace": WS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "manager"},
            "subjects": [{"kind": "ServiceAccount", "name": "lapdev-kube-manager", "namespace": "lapdev"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "manager-nodes"}, "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "manager-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "manager-nodes"},
            "subjects": [{"kind": "ServiceAccount", "name": "lapdev-kube-manager", "namespace": "lapdev"}]}),
    ];
    for o in objects {
        let text = serde_json::to_string(&o).unwrap();
        apply(&admin, &text).await;
    }
    double.enable_rbac();
    (double, admin)
}

async fn apply(client: &kube::Client, json: &str) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let (group, version) = match v["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, ver)) => (g.to_owned(), ver.to_owned()),
        None => (String::new(), "v1".to_owned()),
    };
    let kind = v["kind"].as_str().unwrap();
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, &plural);
    let obj: kube::api::DynamicObject = serde_json::from_value(v.clone()).unwrap();
    let api: Api<kube::api::DynamicObject> = match v["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj).await.unwrap();
}

#[tokio::test]
async fn a_service_account_gets_exactly_what_its_roles_grant() {
    let (double, admin) = cluster().await;
    let sa = double
        .service_account_client("lapdev", "lapdev-kube-manager")
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(sa.clone(), WS);
    pods.create(&PostParams::default(), &pod("ws-1"))
        .await
        .unwrap();
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    pods.get("ws-1").await.unwrap();
    // The Role has no watch: the watch is refused as a watch.
    let s = status(pods.watch(&WatchParams::default(), "0").await.map(|_| ()));
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        format!(
            "pods is forbidden: User \"{USER}\" cannot watch resource \"pods\" in API group \"\" in the namespace \"{WS}\""
        )
    );
    // Another namespace: nothing.
    let elsewhere: Api<Pod> = Api::namespaced(sa.clone(), "default");
    let s = status(elsewhere.list(&ListParams::default()).await);
    assert_eq!(
        s.message,
        format!(
            "pods is forbidden: User \"{USER}\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        )
    );
    let everywhere: Api<Pod> = Api::all(sa.clone());
    let s = status(everywhere.list(&ListParams::default()).await);
    assert!(s.message.ends_with("at the cluster scope"), "{}", s.message);
    // The ClusterRole: nodes list and watch.
    let nodes: Api<Node> = Api::all(sa.clone());
    nodes.list(&ListParams::default()).await.unwrap();
    let mut stream = nodes
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    while stream.next().await.is_some() {}
    let s = status(nodes.get("n1").await);
    assert_eq!(
        s.message,
        format!(
            "nodes \"n1\" is forbidden: User \"{USER}\" cannot get resource \"nodes\" in API group \"\" at the cluster scope"
        )
    );
    // resourceNames: only the named object.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), WS);
    for name in ["settings", "other"] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let sa_cms: Api<ConfigMap> = Api::namespaced(sa.clone(), WS);
    sa_cms.get("settings").await.unwrap();
    assert_eq!(status(sa_cms.get("other").await).code, 403);
    assert_eq!(status(sa_cms.list(&ListParams::default()).await).code, 403);
    // Other groups are other resources.
    let leases: Api<Lease> = Api::namespaced(sa, WS);
    let s = status(leases.list(&ListParams::default()).await);
    assert_eq!(
        s.message,
        format!(
            "leases.coordination.k8s.io is forbidden: User \"{USER}\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"{WS}\""
        )
    );
    // The admin client is still cluster-admin.
    Api::<Pod>::all(admin)
        .list(&ListParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn subresources_wildcards_and_groups_are_matched_like_rbac() {
    let (double, admin) = cluster().await;
    double.add_node("n1", Default::default()).unwrap();
    let sa = double
        .service_account_client("lapdev", "lapdev-kube-manager")
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(sa.clone(), WS);
    pods.create(&PostParams::default(), &pod("ws-1"))
        .await
        .unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "ws-1"}, "target": {"kind": "Node", "name": "n1"}});
    let s = status(
        pods.create_subresource::<_, Status>("binding", "ws-1", &PostParams::default(), &binding)
            .await,
    );
    assert_eq!(
        s.message,
        format!(
            "pods \"ws-1\" is forbidden: User \"{USER}\" cannot create resource \"pods/binding\" in API group \"\" in the namespace \"{WS}\""
        )
    );
    // A group subject, a wildcard verb and a `*/binding` resource.
    let grant = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "binder"}, "rules": [
            {"apiGroups": [""], "resources": ["*/binding"], "verbs": ["*"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["*"], "verbs": ["list"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "binder", "namespace": WS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "binder"},
            "subjects": [{"kind": "Group", "name": "system:serviceaccounts:lapdev", "apiGroup": "rbac.authorization.k8s.io"}]}),
    ];
    for o in grant {
        apply(&admin, &o.to_string()).await;
    }
    let s: Status = pods
        .create_subresource("binding", "ws-1", &PostParams::default(), &binding)
        .await
        .unwrap();
    assert_eq!(s.code, 201);
    Api::<Lease>::namespaced(sa.clone(), WS)
        .list(&ListParams::default())
        .await
        .unwrap();
    // A RoleBinding does not reach beyond its namespace.
    let s = status(
        Api::<Lease>::namespaced(sa, "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(s.code, 403);
}

#[tokio::test]
async fn unknown_tokens_and_deleted_accounts_are_unauthorized() {
    let (double, admin) = cluster().await;
    let mut yaml = double.service_account_kubeconfig_yaml("lapdev", "lapdev-kube-manager");
    let token = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_owned();
    yaml = yaml.replace(&token, "lapdev-double-sa.forged");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let forged = kube::Client::try_from(config).unwrap();
    let s = status(
        Api::<Pod>::namespaced(forged.clone(), WS)
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (401, "Unauthorized", "Unauthorized")
    );
    assert!(
        forged.apiserver_version().await.is_err(),
        "discovery needs a valid token too"
    );

    let path = double
        .service_account_kubeconfig("lapdev", "lapdev-kube-manager")
        .unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let sa = kube::Client::try_from(config).unwrap();
    sa.apiserver_version().await.unwrap();
    Api::<Pod>::namespaced(sa.clone(), WS)
        .list(&ListParams::default())
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(admin, "lapdev")
        .delete("lapdev-kube-manager", &DeleteParams::default())
        .await
        .unwrap();
    let s = status(
        Api::<Pod>::namespaced(sa, WS)
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(s.code, 401);
}

#[tokio::test]
async fn without_enable_rbac_a_service_account_token_is_not_checked() {
    let (double, _admin) = start().await;
    let sa = double
        .service_account_client("lapdev", "nobody")
        .await
        .unwrap();
    Api::<Pod>::all(sa)
        .list(&ListParams::default())
        .await
        .unwrap();
}
