//! The dashboard's clusters over real HTTP: the clusters list a page at a time
//! in a stable order (the page and `AdminRpc/list_clusters_page` alike), and a
//! cluster's page listing only that cluster's workspaces
//! (`WorkspaceRpc/list_workspaces_page` with `cluster`), with its capacity.

mod common;

use common::TestServer;
use common::web::{browser, call, page};
use http::StatusCode;
use lapdev_common::role::Role;
use lapdev_db::test_support::{SeedWorkspace, seed_placed_workspaces};
use lapdev_server::admin::paging::PAGE_SIZE;

/// The row names a page's first table shows, in order, and its pager links.
fn rows(html: &str) -> (Vec<String>, Option<String>, Option<String>) {
    let names = html
        .split("<tr data-name=\"")
        .skip(1)
        .map(|r| r.split('"').next().unwrap().to_owned())
        .collect();
    let link = |id: &str| {
        html.split(&format!("id=\"{id}\" href=\""))
            .nth(1)
            .map(|r| r.split('"').next().unwrap().replace("&amp;", "&"))
    };
    (names, link("page-previous"), link("page-next"))
}

fn names(body: &[u8], list: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_list_pages_in_a_stable_order() {
    let t = TestServer::embedded().await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let total = PAGE_SIZE as usize + 3;
    // Created out of name order, so the order shown is the names', not the
    // rows'.
    for i in (0..total).rev() {
        t.admin()
            .create_cluster(format!("c{i:03}"), None, None, None)
            .await
            .unwrap();
    }
    let r = page(&t, "/clusters", &ada).await;
    assert_eq!(r.status, StatusCode::OK);
    let (first, previous, next) = rows(&r.text());
    assert_eq!(first.len(), PAGE_SIZE as usize);
    assert_eq!(first[0], "c000");
    assert!(previous.is_none());
    let next = next.expect("a next page");
    assert_eq!(next, format!("/clusters?after=c{:03}", PAGE_SIZE - 1));
    let r = page(&t, &next, &ada).await;
    let (second, previous, next) = rows(&r.text());
    assert_eq!(second, ["c050", "c051", "c052"]);
    assert!(next.is_none(), "the last page has no next");
    // Back from the last page is the first page, row for row.
    let (back, previous_of_first, _) = rows(&page(&t, &previous.unwrap(), &ada).await.text());
    assert_eq!(back, first);
    assert!(previous_of_first.is_none());

    // The method the script refreshes the page with gives the same rows, and
    // a smaller page when asked.
    let r = call(
        &t,
        &ada,
        "AdminRpc/list_clusters_page",
        r#"{"page":{"after":"c049"}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(names(&r.body, "clusters"), second);
    let r = call(
        &t,
        &ada,
        "AdminRpc/list_clusters_page",
        r#"{"page":{"before":"c003","limit":2}}"#,
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(names(&r.body, "clusters"), ["c001", "c002"]);
    assert_eq!(
        (v["previous"].as_str(), v["next"].as_str()),
        (Some("c001"), Some("c002"))
    );
    // A deleted cluster leaves the list.
    t.admin().delete_cluster("c051".into()).await.unwrap();
    let (after, _, _) = rows(
        &page(&t, &format!("/clusters?after=c{:03}", PAGE_SIZE - 1), &ada)
            .await
            .text(),
    );
    assert_eq!(after, ["c050", "c052"]);
    // Members may list clusters through the API, as with list_clusters.
    let mel = browser(&t, "mel", Role::Member).await;
    let r = call(&t, &mel, "AdminRpc/list_clusters_page", r#"{"page":{}}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(names(&r.body, "clusters").len(), PAGE_SIZE as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_page_lists_only_its_own_workspaces() {
    let t = TestServer::embedded().await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let db = &t.server.state.db;
    let org = db.list_organizations().await.unwrap()[0].id;
    let owner = db.get_user_by_name(org, "ada").await.unwrap().id;
    for (cluster, n) in [("one", 3), ("two", 2)] {
        let c = t
            .admin()
            .create_cluster(cluster.into(), None, None, None)
            .await
            .unwrap()
            .cluster;
        let rows = vec![
            SeedWorkspace {
                cluster_id: c.id,
                cpu_millis: 100,
                memory_bytes: 1 << 28,
            };
            n
        ];
        seed_placed_workspaces(db, org, owner, &rows).await.unwrap();
    }
    let on = |cluster: &'static str| {
        let (t, ada) = (&t, &ada);
        async move {
            let r = call(
                t,
                ada,
                "WorkspaceRpc/list_workspaces_page",
                &serde_json::json!({"page": {"cluster": cluster}}).to_string(),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            names(&r.body, "workspaces")
        }
    };
    let one = on("one").await;
    let two = on("two").await;
    assert_eq!((one.len(), two.len()), (3, 2));
    assert!(one.iter().all(|n| !two.contains(n)));

    let html = page(&t, "/clusters/one", &ada).await.text();
    // The tokens table comes first; the workspaces table holds one's only.
    let workspaces = html.split("id=\"cluster-workspaces\"").nth(1).unwrap();
    let (shown, previous, next) = rows(workspaces);
    assert_eq!(shown, one);
    assert!(previous.is_none() && next.is_none());
    assert!(html.contains("<dt>CPU used</dt>"), "capacity is shown");
    assert!(html.contains("data-cluster=\"one\""));

    // An unknown cluster is not_found, not every workspace.
    let r = call(
        &t,
        &ada,
        "WorkspaceRpc/list_workspaces_page",
        r#"{"page":{"cluster":"nowhere"}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
}
