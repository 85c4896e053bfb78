//! The dashboard's list paging and its admin pages over real HTTP: the
//! workspace list a page at a time in a stable order; users, roles, tokens and
//! the audit log for admins (and 403 for members, pages and methods alike); a
//! member's own tokens; providers; and event streams that end when their
//! browser session does.

mod common;

use common::TestServer;
use common::web::{browser, call, page};
use http::StatusCode;
use lapdev_common::role::Role;
use lapdev_db::test_support::{SeedWorkspace, seed_placed_workspaces};
use lapdev_server::admin::workspaces::PAGE_SIZE;

/// Seeds `n` running workspaces owned by `user` on a new cluster.
async fn seed(t: &TestServer, user: &str, cluster: &str, n: usize) {
    let db = &t.server.state.db;
    let org = db.list_organizations().await.unwrap()[0].id;
    let owner = db.get_user_by_name(org, user).await.unwrap().id;
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

/// The workspace names a page's list shows, in order, and its pager links.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_list_pages_in_a_stable_order() {
    let t = TestServer::embedded().await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let mel = browser(&t, "mel", Role::Member).await;
    let page_size = PAGE_SIZE as usize;
    seed(&t, "mel", "one", 2 * page_size + 7).await;
    seed(&t, "ada", "two", 3).await;

    // A member walks forward through their own workspaces only.
    let mut seen = Vec::new();
    let mut at = "/".to_owned();
    let mut pages = Vec::new();
    loop {
        let r = page(&t, &at, &mel).await;
        assert_eq!(r.status, StatusCode::OK, "{at}");
        let (names, previous, next) = rows(&r.text());
        assert!(names.len() <= page_size);
        assert_eq!(previous.is_some(), !pages.is_empty(), "{at}");
        pages.push((at.clone(), names.clone()));
        seen.extend(names);
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(seen.len(), 2 * page_size + 7, "every own workspace, once");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in name order, without repeats");
    // Back from the last page is the middle page, row for row.
    let (_, previous, _) = rows(&page(&t, &pages[2].0, &mel).await.text());
    let (names, _, _) = rows(&page(&t, &previous.unwrap(), &mel).await.text());
    assert_eq!(names, pages[1].1);

    // The method the script refreshes a page with gives the same rows.
    let r = call(
        &t,
        &mel,
        "WorkspaceRpc/list_workspaces_page",
        &serde_json::json!({"page": {"after": pages[0].1.last()}}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let names: Vec<String> = body["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, pages[1].1);
    assert_eq!(body["next"].as_str(), pages[1].1.last().map(String::as_str));

    // An admin sees everyone's: three more rows in all.
    let mut total = 0;
    let mut at = "/".to_owned();
    loop {
        let (names, _, next) = rows(&page(&t, &at, &ada).await.text());
        total += names.len();
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    assert_eq!(total, 2 * page_size + 10);
    // A name that sorts past every workspace: an empty page, not an error.
    let r = page(&t, "/?after=zzzz", &ada).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(rows(&r.text()).0.is_empty());
}
