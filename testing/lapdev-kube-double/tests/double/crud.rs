//! Get, list, create, replace and delete through typed `Api`s, with the
//! metadata and errors the API conventions document.

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::{pod, rv, start, status};

#[tokio::test]
async fn create_sets_server_metadata_and_get_returns_it() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    let got = pods.get("a").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    // Defaulting, as the real server does on create.
    assert_eq!(got.spec.unwrap().restart_policy.as_deref(), Some("Always"));
}

#[tokio::test]
async fn resource_versions_increase_monotonically() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut last = 0;
    for i in 0..5 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap();
        let created = cms.create(&PostParams::default(), &cm).await.unwrap();
        assert!(rv(&created.metadata) > last);
        last = rv(&created.metadata);
    }
    let list = cms.list(&ListParams::default()).await.unwrap();
    assert!(
        list.metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= last
    );
}

#[tokio::test]
async fn duplicate_create_is_already_exists() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let s = status(pods.create(&PostParams::default(), &pod("a")).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "pods \"a\" already exists");
}

#[tokio::test]
async fn missing_object_is_not_found_with_details() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let s = status(pods.get("nope").await);
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "pods \"nope\" not found");
    let details = s.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("nope", "pods")
    );
    assert!(pods.get_opt("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_not_found() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "ghost");
    let s = status(pods.create(&PostParams::default(), &pod("a")).await);
    assert_eq!(
        (s.code, s.message.as_str()),
        (404, "namespaces \"ghost\" not found")
    );
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_a_conflict() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let mut fresh = created.clone();
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    let replaced = pods
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert!(rv(&replaced.metadata) > rv(&created.metadata));
    let mut stale = created;
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "3".into());
    let s = status(pods.replace("a", &PostParams::default(), &stale).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        "Operation cannot be fulfilled on pods \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
}

#[tokio::test]
async fn a_write_that_changes_nothing_keeps_the_resource_version() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let same = pods
        .replace("a", &PostParams::default(), &created)
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        created.metadata.resource_version
    );
}

#[tokio::test]
async fn generation_tracks_spec_changes_only() {
    let (_double, client) = start().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    let created = svcs.create(&PostParams::default(), &svc).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.spec.as_ref().unwrap().cluster_ip.is_some(),
        "a ClusterIP is allocated"
    );
    let mut labelled = created.clone();
    labelled.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
    let labelled = svcs
        .replace("web", &PostParams::default(), &labelled)
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let mut respec = labelled;
    respec.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8080;
    let respec = svcs
        .replace("web", &PostParams::default(), &respec)
        .await
        .unwrap();
    assert_eq!(respec.metadata.generation, Some(2));
}

#[tokio::test]
async fn a_pod_without_containers_is_invalid() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let bad: Pod =
        serde_json::from_value(json!({"metadata": {"name": "a"}, "spec": {"containers": []}}))
            .unwrap();
    let s = status(pods.create(&PostParams::default(), &bad).await);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        "Pod \"a\" is invalid: spec.containers: Required value"
    );
    let causes = s.details.unwrap().causes;
    assert_eq!(
        (causes[0].reason.as_str(), causes[0].field.as_str()),
        ("FieldValueRequired", "spec.containers")
    );
}

#[tokio::test]
async fn bad_names_and_negative_quantities_are_invalid() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let s = status(
        pods.create(&PostParams::default(), &pod("Not_A_Name"))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(s.details.unwrap().causes[0].field, "metadata.name");
    let negative: Pod = serde_json::from_value(json!({
        "metadata": {"name": "neg"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "-1"}}}]},
    }))
    .unwrap();
    let s = status(pods.create(&PostParams::default(), &negative).await);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn a_malformed_quantity_fails_to_decode_as_on_a_real_server() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "q"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"memory": "lots"}}}]},
    }))
    .unwrap();
    let s = status(pods.create(&PostParams::default(), &bad).await);
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    assert!(
        s.message
            .contains("quantities must match the regular expression"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn a_pod_spec_is_immutable_except_images() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let mut new_image = created.clone();
    new_image.spec.as_mut().unwrap().containers[0].image = Some("nginx:1.28".into());
    let updated = pods
        .replace("a", &PostParams::default(), &new_image)
        .await
        .unwrap();
    let mut new_cmd = updated;
    new_cmd.spec.as_mut().unwrap().containers[0].command = Some(vec!["sh".into()]);
    let s = status(pods.replace("a", &PostParams::default(), &new_cmd).await);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.contains("pod updates may not change fields"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn delete_returns_the_object_or_a_status() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let deleted = pods.delete("a", &DeleteParams::default()).await.unwrap();
    let gone = deleted.left().expect("pods answer with the deleted pod");
    assert_eq!(gone.metadata.name.as_deref(), Some("a"));
    assert_eq!(status(pods.get("a").await).code, 404);
    assert_eq!(
        status(pods.delete("a", &DeleteParams::default()).await).code,
        404
    );

    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let s = cms
        .delete("c", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("a Status");
    assert!(s.is_success());
}

#[tokio::test]
async fn delete_preconditions_are_checked() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let s = status(pods.delete("a", &dp).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn label_selectors_equality_and_set_based() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    for (name, app, tier) in [
        ("a", "web", Some("front")),
        ("b", "api", None),
        ("c", "db", Some("back")),
    ] {
        let mut p = pod(name);
        let labels = p.metadata.labels.get_or_insert_default();
        labels.insert("app".into(), app.into());
        if let Some(t) = tier {
            labels.insert("tier".into(), t.into());
        }
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let names = |l: kube::api::ObjectList<Pod>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    };
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(pods.list(&q("app=web")).await.unwrap()), ["a"]);
    assert_eq!(names(pods.list(&q("app!=web")).await.unwrap()), ["b", "c"]);
    assert_eq!(
        names(pods.list(&q("app in (web,db)")).await.unwrap()),
        ["a", "c"]
    );
    assert_eq!(
        names(pods.list(&q("app notin (web)")).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(names(pods.list(&q("tier")).await.unwrap()), ["a", "c"]);
    assert_eq!(names(pods.list(&q("!tier")).await.unwrap()), ["b"]);
    assert_eq!(names(pods.list(&q("tier,app=db")).await.unwrap()), ["c"]);
    let s = status(pods.list(&q("app in (web")).await);
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn field_selectors_on_name_and_namespace() {
    let (double, client) = start().await;
    double.create_namespace("other").unwrap();
    for ns in ["default", "other"] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.create(&PostParams::default(), &pod("a"))
            .await
            .unwrap();
        pods.create(&PostParams::default(), &pod("b"))
            .await
            .unwrap();
    }
    let all: Api<Pod> = Api::all(client);
    let by_name = all
        .list(&ListParams::default().fields("metadata.name=a"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 2);
    let by_ns = all
        .list(&ListParams::default().fields("metadata.namespace=other,metadata.name!=a"))
        .await
        .unwrap();
    assert_eq!(by_ns.items.len(), 1);
    assert_eq!(by_ns.items[0].metadata.namespace.as_deref(), Some("other"));
    let s = status(
        all.list(&ListParams::default().fields("spec.containers=x"))
            .await,
    );
    assert_eq!(
        (s.code, s.message.as_str()),
        (400, "field label not supported: spec.containers")
    );
}

#[tokio::test]
async fn limit_and_continue_page_through_a_list() {
    let (double, client) = start().await;
    for i in 0..25 {
        double.create(&pod(&format!("p{i:02}"))).unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let first = pods.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(15));
    let token = first.metadata.continue_.clone().expect("a continue token");
    let mut seen: Vec<String> = first
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let mut next = Some(token);
    while let Some(token) = next {
        let page = pods
            .list(&ListParams::default().limit(10).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version, first.metadata.resource_version,
            "pages share the list's resourceVersion"
        );
        seen.extend(page.items.iter().map(|p| p.metadata.name.clone().unwrap()));
        next = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, expected);
    let s = status(
        pods.list(&ListParams::default().continue_token("garbage"))
            .await,
    );
    assert_eq!(s.code, 400);
}

#[tokio::test]
async fn a_continue_token_older_than_the_history_is_gone() {
    let (double, client) = start().await;
    for i in 0..5 {
        double.create(&pod(&format!("p{i}"))).unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    double.create(&pod("later")).unwrap();
    double.compact();
    let token = first.metadata.continue_.unwrap();
    let s = status(
        pods.list(&ListParams::default().limit(2).continue_token(&token))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn cluster_scoped_nodes_and_namespaces() {
    let (double, client) = start().await;
    double
        .add_node(
            "n1",
            lapdev_kube_double::NodeSpec {
                cpu: "8".into(),
                memory: "32Gi".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get("n1").await.unwrap();
    let status = n.status.unwrap();
    assert_eq!(status.capacity.unwrap()["cpu"].0, "8");
    assert_eq!(status.allocatable.unwrap()["memory"].0, "32Gi");
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert!(names.contains(&"default".to_owned()) && names.contains(&"kube-system".to_owned()));
    let created = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "lapdev-workspaces"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(
        created.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "lapdev-workspaces"
    );
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_objects() {
    let (double, client) = start().await;
    double.create_namespace("gone").unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "gone");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status(pods.get("a").await).code, 404);
}

#[tokio::test]
async fn events_and_generate_name() {
    let (_double, client) = start().await;
    let events: Api<Event> = Api::namespaced(client, "default");
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "ws-"},
        "involvedObject": {"kind": "Pod", "name": "a", "namespace": "default"},
        "reason": "Started",
        "message": "started",
        "type": "Normal",
    }))
    .unwrap();
    let created = events.create(&PostParams::default(), &ev).await.unwrap();
    let name = created.metadata.name.unwrap();
    assert!(name.starts_with("ws-") && name.len() == 8, "{name}");
    let found = events
        .list(&ListParams::default().fields("involvedObject.name=a,reason=Started"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    pods.create(&pp, &pod("a")).await.unwrap();
    assert_eq!(status(pods.get("a").await).code, 404);
}

#[tokio::test]
async fn delete_collection_by_label() {
    let (double, client) = start().await;
    for i in 0..3 {
        double.create(&pod(&format!("p{i}"))).unwrap();
    }
    let mut other = pod("keep");
    other.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
    double.create(&other).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=web"),
    )
    .await
    .unwrap();
    let left = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(left.items.len(), 1);
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests() {
    let (_double, client) = start().await;
    let req = http::Request::post("/api/v1/namespaces/default/pods")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    let s = status(client.request_text(req).await);
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    let req = http::Request::post("/api/v1/namespaces/default/pods")
        .header("content-type", "application/json")
        .body(b"[1,2]".to_vec())
        .unwrap();
    assert_eq!(status(client.request_text(req).await).code, 400);
    let req = http::Request::get("/api/v1/namespaces/default/widgets")
        .body(Vec::new())
        .unwrap();
    assert_eq!(status(client.request_text(req).await).code, 404);
}

#[tokio::test]
async fn node_status_is_a_subresource() {
    let (double, client) = start().await;
    double
        .add_node("n1", lapdev_kube_double::NodeSpec::default())
        .unwrap();
    let nodes: Api<Node> = Api::all(client);
    let p = json!({"spec": {"unschedulable": true}});
    let cordoned = nodes
        .patch("n1", &Default::default(), &kube::api::Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(cordoned.spec.unwrap().unschedulable, Some(true));
    let p = json!({"status": {"capacity": {"cpu": "2"}}});
    let patched = nodes
        .patch_status("n1", &Default::default(), &kube::api::Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().capacity.unwrap()["cpu"].0, "2");
    double.set_node_ready("n1", false).unwrap();
    let conditions = nodes
        .get("n1")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown")
    );
}

#[tokio::test]
async fn no_new_finalizers_on_a_terminating_object() {
    let (_double, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "c", "finalizers": ["a.example.com/x"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("c", &DeleteParams::default()).await.unwrap();
    let p = json!({"metadata": {"finalizers": ["a.example.com/x", "b.example.com/y"]}});
    let s = status(
        cms.patch("c", &Default::default(), &kube::api::Patch::Merge(&p))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn grouped_resources_live_under_apis() {
    let (_double, client) = start().await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
    });
    let created = deployments
        .patch(
            "web",
            &kube::api::PatchParams::apply("lapdev"),
            &kube::api::Patch::Apply(&d),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, "default");
    let s = status(leases.get("nope").await);
    assert_eq!(s.message, "leases.coordination.k8s.io \"nope\" not found");
}

#[tokio::test]
async fn the_kube_event_recorder_publishes_events() {
    use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
    let (double, client) = start().await;
    let p = double.create(&pod("a")).unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "lapdev-kube-manager".into(),
            instance: None,
        },
    );
    let reference = kube::Resource::object_ref(&p, &());
    let ev = KubeEvent {
        type_: EventType::Normal,
        reason: "Created".into(),
        note: None,
        action: "Create".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "default");
    let list = events
        .list(&ListParams::default().fields("regarding.name=a"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));
}

#[tokio::test]
async fn a_pod_on_a_node_is_deleted_gracefully() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut bound = pod("ws");
    bound.spec.as_mut().unwrap().node_name = Some("n1".into());
    pods.create(&PostParams::default(), &bound).await.unwrap();
    let pending = pods
        .delete("ws", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(30));
    // Until the kubelet confirms, the name is taken, as on a real cluster.
    let s = status(pods.create(&PostParams::default(), &bound).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert!(double.terminate_pod("default", "ws").unwrap());
    assert_eq!(status(pods.get("ws").await).code, 404);
    // A grace period of 0 deletes at once.
    pods.create(&PostParams::default(), &bound).await.unwrap();
    let gone = pods
        .delete("ws", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(gone.left().unwrap().metadata.name.is_some());
    assert_eq!(status(pods.get("ws").await).code, 404);
}
