//! Watches: raw `?watch=true` streams and `kube::runtime::watcher` on top of them.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use lapdev_kube_double::{Config, KubeDouble};
use serde_json::json;

use crate::{pod, rv, start};

const STEP: Duration = Duration::from_secs(5);

async fn next<S, T>(stream: &mut S) -> T
where
    S: futures::Stream<Item = Result<T, kube::Error>> + Unpin,
{
    tokio::time::timeout(STEP, stream.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn watch_from_a_resource_version_sends_added_modified_deleted() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let list = pods.list(&Default::default()).await.unwrap();
    let from = list.metadata.resource_version.unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().disable_bookmarks(), &from)
        .await
        .unwrap()
        .boxed();
    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    match next(&mut stream).await {
        WatchEvent::Added(p) => assert_eq!(
            p.metadata.resource_version,
            created.metadata.resource_version
        ),
        other => panic!("{other:?}"),
    }
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut stream).await, WatchEvent::Modified(_)));
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    match next(&mut stream).await {
        WatchEvent::Deleted(p) => assert!(rv(&p.metadata) > rv(&created.metadata)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watch_replays_events_after_an_older_resource_version() {
    let (double, client) = start().await;
    let from = double.resource_version();
    double.create(&pod("a")).unwrap();
    double.create(&pod("b")).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut stream = pods
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &from.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    for expected in ["a", "b"] {
        match next(&mut stream).await {
            WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some(expected)),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version() {
    let double = KubeDouble::start_with(Config {
        bookmark_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = double.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    double.create_namespace("elsewhere").unwrap();
    let from = double.resource_version();
    let mut stream = pods
        .watch(&WatchParams::default(), &from.to_string())
        .await
        .unwrap()
        .boxed();
    // A change the watch does not select still advances the bookmark.
    let mut other = pod("x");
    other.metadata.namespace = Some("elsewhere".into());
    double.create(&other).unwrap();
    let latest = double.resource_version();
    // A bookmark may already be on its way from before the change; the next
    // ones carry the latest resourceVersion, and nothing but bookmarks arrives.
    loop {
        match next(&mut stream).await {
            WatchEvent::Bookmark(b) if b.metadata.resource_version == latest.to_string() => break,
            WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, from.to_string()),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_resource_version_older_than_the_history_is_gone() {
    let (double, client) = start().await;
    let old = double.resource_version();
    double.create(&pod("a")).unwrap();
    double.compact();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut stream = pods
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &old.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        WatchEvent::Error(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_small_history_expires_old_versions() {
    let double = KubeDouble::start_with(Config {
        history: 3,
        ..Config::default()
    })
    .await
    .unwrap();
    let client = double.client().await.unwrap();
    let old = double.resource_version();
    for i in 0..5 {
        double.create(&pod(&format!("p{i}"))).unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut stream = pods
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &old.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next(&mut stream).await, WatchEvent::Error(s) if s.code == 410));
    let recent = double.resource_version() - 2;
    let mut stream = pods
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &recent.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next(&mut stream).await, WatchEvent::Added(_)));
}

#[tokio::test]
async fn timeout_seconds_ends_the_stream() {
    let (_double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let started = std::time::Instant::now();
    let stream = pods
        .watch(&WatchParams::default().disable_bookmarks().timeout(1), "0")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(STEP, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends");
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_label_selector_turns_relabelling_into_added_and_deleted() {
    let (double, client) = start().await;
    double.create(&pod("a")).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let from = double.resource_version().to_string();
    let mut stream = pods
        .watch(
            &WatchParams::default().disable_bookmarks().labels("app=web"),
            &from,
        )
        .await
        .unwrap()
        .boxed();
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut stream).await, WatchEvent::Deleted(_)));
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut stream).await, WatchEvent::Added(_)));
}

#[tokio::test]
async fn the_runtime_watcher_lists_then_follows_changes() {
    let (double, client) = start().await;
    double.create(&pod("before")).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut events = watcher(pods.clone(), watcher::Config::default().labels("app=web")).boxed();
    let mut seen = Vec::new();
    loop {
        match next_ok(&mut events).await {
            watcher::Event::InitApply(p) => seen.push(p.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            watcher::Event::Init => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["before"]);
    pods.create(&PostParams::default(), &pod("after"))
        .await
        .unwrap();
    match next_ok(&mut events).await {
        watcher::Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("after")),
        other => panic!("{other:?}"),
    }
    pods.delete("after", &DeleteParams::default())
        .await
        .unwrap();
    assert!(matches!(
        next_ok(&mut events).await,
        watcher::Event::Delete(_)
    ));
}

async fn next_ok<S, T, E: std::fmt::Debug>(stream: &mut S) -> T
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
{
    tokio::time::timeout(STEP, stream.next())
        .await
        .expect("an event in time")
        .expect("open")
        .expect("no error")
}

#[tokio::test]
async fn the_runtime_watcher_survives_dropped_watches_and_gone() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut applied = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .try_filter_map(|e| async move {
            Ok(match e {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => p.metadata.name,
                _ => None,
            })
        })
        .boxed();
    double.create(&pod("a")).unwrap();
    assert_eq!(next_ok(&mut applied).await, "a");
    double.drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    double.create(&pod("b")).unwrap();
    assert_eq!(
        next_ok(&mut applied).await,
        "b",
        "resumed from the last resourceVersion"
    );
    double.drop_watches();
    double.compact();
    double.create(&pod("c")).unwrap();
    // After 410 the watcher relists: it sees every pod again.
    let mut names = Vec::new();
    while !names.contains(&"c".to_owned()) {
        names.push(next_ok(&mut applied).await);
    }
}

#[tokio::test]
async fn streaming_lists_end_with_an_initial_events_bookmark() {
    let (double, client) = start().await;
    double.create(&pod("a")).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut events = watcher(pods, watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    loop {
        match next_ok(&mut events).await {
            watcher::Event::InitApply(p) => seen.push(p.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["a"]);
}

#[tokio::test]
async fn metadata_watches_send_partial_objects() {
    let (double, client) = start().await;
    double.create(&pod("a")).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let list = pods.list_metadata(&Default::default()).await.unwrap();
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("a"));
    let meta: Api<PartialObjectMeta<Pod>> =
        Api::namespaced(double.client().await.unwrap(), "default");
    let mut events = watcher(meta, watcher::Config::default()).boxed();
    loop {
        if let watcher::Event::InitApply(p) = next_ok(&mut events).await {
            assert_eq!(p.metadata.name.as_deref(), Some("a"));
            break;
        }
    }
}

#[tokio::test]
async fn no_bookmarks_unless_allowed() {
    let double = KubeDouble::start_with(Config {
        bookmark_interval: Duration::from_millis(50),
        ..Config::default()
    })
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(double.client().await.unwrap(), "default");
    let from = double.resource_version().to_string();
    let mut stream = pods
        .watch(&WatchParams::default().disable_bookmarks(), &from)
        .await
        .unwrap()
        .boxed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    double.create(&pod("a")).unwrap();
    assert!(matches!(next(&mut stream).await, WatchEvent::Added(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_see_every_change_in_order() {
    let (double, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let from = double.resource_version().to_string();
    let mut watchers = Vec::new();
    for _ in 0..20 {
        let stream = pods
            .watch(&WatchParams::default().disable_bookmarks(), &from)
            .await
            .unwrap();
        watchers.push(tokio::spawn(async move {
            let mut stream = stream.boxed();
            let mut seen = Vec::new();
            while seen.len() < 300 {
                match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
                    Ok(Some(Ok(
                        WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p),
                    ))) => {
                        seen.push(rv(&p.metadata));
                    }
                    other => panic!("{other:?}"),
                }
            }
            seen
        }));
    }
    let writer = {
        let double = double.handle();
        tokio::task::spawn_blocking(move || {
            for i in 0..100 {
                let name = format!("p{i}");
                double.create(&pod(&name)).unwrap();
                double
                    .set_pod_phase("default", &name, "Running", Vec::new())
                    .unwrap();
                double.delete::<Pod>("default", &name).unwrap();
            }
        })
    };
    writer.await.unwrap();
    for w in watchers {
        let seen = w.await.unwrap();
        assert!(
            seen.windows(2).all(|p| p[0] < p[1]),
            "events in resourceVersion order"
        );
    }
}
