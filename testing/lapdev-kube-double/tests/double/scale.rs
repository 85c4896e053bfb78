//! Scale: 20,000 pods and 2,000 nodes list and watch quickly.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use lapdev_kube_double::NodeSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_pods_list_and_watch() {
    let (double, client) = crate::start().await;
    double.create_namespace("load").unwrap();
    for i in 0..2_000 {
        double
            .add_node(&format!("node-{i}"), NodeSpec::default())
            .unwrap();
    }
    let mut template = crate::pod("x");
    template.metadata.namespace = Some("load".into());
    for i in 0..20_000 {
        template.metadata.name = Some(format!("pod-{i}"));
        template.spec.as_mut().unwrap().node_name = Some(format!("node-{}", i % 2_000));
        double.seed_running_pod(&template).unwrap();
    }
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2_000
    );
    let pods: Api<Pod> = Api::all(client.clone());
    // The runtime watcher's paged initial list (500 per page), then a live event.
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    let mut listed = 0;
    loop {
        match events.next().await.unwrap().unwrap() {
            watcher::Event::InitApply(_) => listed += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(listed, 20_000);
    let ws: Api<Pod> = Api::namespaced(client, "default");
    ws.create(&PostParams::default(), &crate::pod("ws"))
        .await
        .unwrap();
    loop {
        if let watcher::Event::Apply(p) = events.next().await.unwrap().unwrap() {
            assert_eq!(p.metadata.name.as_deref(), Some("ws"));
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "listing and watching took {elapsed:?}"
    );
}
