//! The dashboard's list paging and its admin pages over real HTTP: the
//! workspace list a page at a time in a stable order; users, roles, tokens and
//! the audit log for admins (and 403 for members, pages and methods alike); a
//! member's own tokens; providers; and event streams that end when their
//! browser session does.

mod common;

use common::TestServer;
use common::web::{Events, ORIGIN, browser, call, page, send};
use http::{Method, StatusCode};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_and_methods_are_refused_to_members() {
    let t = TestServer::embedded().await;
    let mel = browser(&t, "mel", Role::Member).await;
    for path in ["/users", "/audit", "/audit?actor=ada"] {
        let r = page(&t, path, &mel).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert!(!r.text().contains("<table"), "{path}");
    }
    let home = page(&t, "/", &mel).await.text();
    assert!(home.contains("href=\"/tokens\""));
    assert!(!home.contains("href=\"/users\"") && !home.contains("href=\"/audit\""));
    for (path, body) in [
        ("PeopleRpc/list_users", "{}".to_owned()),
        ("PeopleRpc/list_audit", r#"{"filter":{}}"#.to_owned()),
        (
            "PeopleRpc/create_user",
            r#"{"name":"eve","email":null,"role":"owner","password":null}"#.to_owned(),
        ),
        (
            "PeopleRpc/set_user_role",
            r#"{"name":"mel","role":"owner"}"#.to_owned(),
        ),
        (
            "PeopleRpc/set_user_disabled",
            r#"{"name":"mel","disabled":true}"#.to_owned(),
        ),
        ("PeopleRpc/delete_user", r#"{"name":"mel"}"#.to_owned()),
    ] {
        let r = call(&t, &mel, path, &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text());
    }
    // An admin reads users and the audit log but may not change roles.
    let ada = browser(&t, "ada", Role::Admin).await;
    let users = page(&t, "/users", &ada).await;
    assert_eq!(users.status, StatusCode::OK);
    let html = users.text();
    assert!(html.contains("<tr data-name=\"mel\""), "{html}");
    assert!(!html.contains("id=\"create-user\""));
    assert!(!html.contains("data-action=\"set-role\""));
    let r = call(
        &t,
        &ada,
        "PeopleRpc/set_user_role",
        r#"{"name":"mel","role":"admin"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_manage_users_and_the_audit_log_shows_it() {
    let t = TestServer::embedded().await;
    let olga = browser(&t, "olga", Role::Owner).await;
    let html = page(&t, "/users", &olga).await.text();
    for control in [
        "id=\"create-user\"",
        "for=\"user-name\"",
        "for=\"user-role\"",
        "for=\"user-password\"",
    ] {
        assert!(html.contains(control), "{control}");
    }
    // The calls the page's script makes, as the browser makes them.
    let r = call(
        &t,
        &olga,
        "PeopleRpc/create_user",
        r#"{"name":"<img src=x onerror=alert(1)>","email":null,"role":"member","password":null}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // A user's name is text on the page, never markup.
    let html = page(&t, "/users", &olga).await.text();
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let r = call(
        &t,
        &olga,
        "PeopleRpc/create_user",
        r#"{"name":"bo","email":"bo@example.com","role":"member","password":null}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(
        &t,
        &olga,
        "PeopleRpc/set_user_role",
        r#"{"name":"bo","role":"admin"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let html = page(&t, "/users", &olga).await.text();
    let row = html.split("<tr data-name=\"bo\"").nth(1).unwrap();
    let row = row.split("</tr>").next().unwrap();
    assert!(
        row.contains("value=\"admin\" selected"),
        "the role select shows admin: {row}"
    );
    assert!(row.contains("aria-label=\"Role of bo\""));
    // Owners cannot change their own role from the page (no select on "you").
    let me = html.split("<tr data-name=\"olga\"").nth(1).unwrap();
    assert!(!me.split("</tr>").next().unwrap().contains("<select"));

    let audit = page(&t, "/audit", &olga).await;
    assert_eq!(audit.status, StatusCode::OK);
    let text = audit.text();
    assert!(text.contains("user.create"), "{text}");
    let filtered = page(&t, "/audit?action=user.set_role", &olga).await.text();
    assert!(filtered.contains("value=\"user.set_role\""));
    let body = filtered.split("<tbody>").nth(1).unwrap();
    assert!(!body.contains("user.create"), "the filter holds: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_creates_and_revokes_their_own_tokens() {
    let t = TestServer::embedded().await;
    let mel = browser(&t, "mel", Role::Member).await;
    let r = page(&t, "/tokens", &mel).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("cache-control"), "no-store");
    assert!(r.text().contains("No tokens yet."));
    let r = call(
        &t,
        &mel,
        "PeopleRpc/create_token",
        r#"{"name":"laptop","expires_in_days":7}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The one answer that carries the secret is never stored by a cache.
    assert_eq!(r.header("cache-control"), "no-store");
    let created: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let secret = created["token_secret"].as_str().unwrap().to_owned();
    let id = created["token"]["id"].as_str().unwrap().to_owned();
    // The list shows the token by name and prefix, never its secret.
    let html = page(&t, "/tokens", &mel).await.text();
    assert!(html.contains("<th scope=\"row\">laptop</th>"), "{html}");
    assert!(!html.contains(&secret));
    assert!(html.contains("data-action=\"revoke-token\""));
    // The token works until revoked from the page.
    let whoami = |token: String| {
        let base = t.base();
        async move {
            lapdev_server::auth::api::PeopleRpcClient::new(
                lapdev_hrpc::Client::http(&format!("{base}/rpc"))
                    .unwrap()
                    .with_header(
                        http::header::AUTHORIZATION,
                        http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
                    ),
            )
            .whoami()
            .await
        }
    };
    assert_eq!(whoami(secret.clone()).await.unwrap().name, "mel");
    let r = call(
        &t,
        &mel,
        "PeopleRpc/revoke_token",
        &serde_json::json!({ "token_id": id }).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(whoami(secret).await.is_err());
    let html = page(&t, "/tokens", &mel).await.text();
    assert!(html.contains("data-status=\"revoked\""));
    assert!(!html.contains("data-action=\"revoke-token\""));
    // A bad expiry is refused with a message.
    let r = call(
        &t,
        &mel,
        "PeopleRpc/create_token",
        r#"{"name":"forever","expires_in_days":100000}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}

/// The stream's next event is `ended`, then the body ends.
async fn ends(events: &mut Events) -> String {
    let (_, name, data) = events.next().await;
    assert_eq!(name, "ended", "{data}");
    assert!(events.finished().await, "the stream stays open after ended");
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_with_its_session() {
    let t = TestServer::embedded().await;
    // Signing out ends the stream at once.
    let ada = browser(&t, "ada", Role::Admin).await;
    let (head, mut events) = Events::open(&t, &ada, None).await;
    assert_eq!(head.status, StatusCode::OK);
    let (_, mut other_tab) = Events::open(&t, &ada, None).await;
    let other = browser(&t, "bea", Role::Admin).await;
    let (_, mut bea) = Events::open(&t, &other, None).await;
    let r = send(
        Method::POST,
        &format!("{}/auth/logout", t.base()),
        &[("cookie", &ada), ("x-lapdev-csrf", "1"), ("origin", ORIGIN)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(ends(&mut events).await.contains("browser session"));
    assert!(ends(&mut other_tab).await.contains("browser session"));
    // The reconnect is refused.
    let (again, _) = Events::open(&t, &ada, None).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    // Another user's stream goes on.
    t.admin()
        .create_cluster("dev".into(), None, None, None)
        .await
        .unwrap();
    assert_eq!(bea.next().await.1, "change");

    // Revoking the session from elsewhere (the CLI's `session revoke`) too.
    let sessions = call(&t, &other, "PeopleRpc/list_sessions", r#"{"user":null}"#).await;
    let list: serde_json::Value = serde_json::from_slice(&sessions.body).unwrap();
    let id = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .clone();
    let olga = browser(&t, "olga", Role::Owner).await;
    let revoke = call(
        &t,
        &olga,
        "PeopleRpc/revoke_session",
        &serde_json::json!({ "id": id }).to_string(),
    )
    .await;
    assert_eq!(revoke.status, StatusCode::OK, "{}", revoke.text());
    ends(&mut bea).await;

    // Disabling a user ends theirs.
    let cy = browser(&t, "cy", Role::Member).await;
    let (_, mut cy_events) = Events::open(&t, &cy, None).await;
    lapdev_server::auth::api::PeopleRpcClient::new(common::web::bearer(&t))
        .set_user_disabled("cy".into(), true)
        .await
        .unwrap();
    assert!(ends(&mut cy_events).await.contains("disabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_add_a_gke_provider_by_its_key_and_import_and_create_clusters() {
    let double = lapdev_kube_double::KubeDouble::start().await.unwrap();
    let gke = lapdev_kube::provider::testing::GkeStandIn::start()
        .await
        .unwrap();
    gke.set_cluster_endpoint(&double.url(), None);
    gke.add_cluster("us-central1-a", "existing", "1.32.9-gke.100", 2);
    // The stand-in listens on loopback http.
    let t = TestServer::embedded_with(lapdev_server::config::LimitsConfig {
        allow_provider_test_endpoints: true,
        ..Default::default()
    })
    .await;
    let mel = browser(&t, "mel", Role::Member).await;
    assert_eq!(
        page(&t, "/providers", &mel).await.status,
        StatusCode::FORBIDDEN
    );
    let r = call(&t, &mel, "ProviderRpc/list_providers", "{}").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let ada = browser(&t, "ada", Role::Admin).await;
    let html = page(&t, "/providers", &ada).await.text();
    for control in [
        "for=\"provider-name\"",
        "for=\"provider-project\"",
        "for=\"provider-key\"",
        "type=\"file\"",
    ] {
        assert!(html.contains(control), "{control}");
    }
    let add = |credential: String| {
        serde_json::json!({
            "name": "gcp",
            "kind": "gcp",
            "config": gke.config_json(Some("europe-west1")),
            "credential": credential,
            "validate": true,
        })
        .to_string()
    };
    let good = String::from_utf8(gke.key_json()).unwrap();
    let mut no_private_key: serde_json::Value = serde_json::from_str(&good).unwrap();
    no_private_key
        .as_object_mut()
        .unwrap()
        .remove("private_key");
    let mut wrong_type: serde_json::Value = serde_json::from_str(&good).unwrap();
    wrong_type["type"] = "authorized_user".into();
    // Each bad key is refused before anything is stored, saying what is wrong.
    for (key, says) in [
        ("not a key at all".to_owned(), "not JSON"),
        (wrong_type.to_string(), "expected \\\"service_account\\\""),
        (no_private_key.to_string(), "private_key is missing"),
    ] {
        let r = call(&t, &ada, "ProviderRpc/create_provider", &add(key)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(r.text().contains(says), "{says}: {}", r.text());
        assert!(!r.text().contains("PRIVATE KEY"));
    }
    let r = call(&t, &ada, "ProviderRpc/list_providers", "{}").await;
    assert_eq!(r.text(), "[]");
    let r = call(&t, &ada, "ProviderRpc/create_provider", &add(good)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let created: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(created["credentials_checked"], true);

    // The server renders the providers, and a provider's clusters when asked:
    // both lists work without the script.
    let html = page(&t, "/providers", &ada).await.text();
    assert!(html.contains("<tr data-name=\"gcp\">"), "{html}");
    assert!(html.contains("href=\"/providers?clusters=gcp#provider-clusters-heading\""));
    assert!(
        !html.contains("data-name=\"existing\""),
        "clusters only when asked"
    );
    let html = page(&t, "/providers?clusters=gcp", &ada).await.text();
    let listed = html.split("id=\"provider-clusters\"").nth(1).unwrap();
    assert!(listed.contains("<tr data-name=\"existing\">"), "{html}");
    assert!(listed.contains("data-action=\"import-cluster\""));
    let r = page(&t, "/providers?clusters=nope", &ada).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("could not be listed"), "{}", r.text());

    // The provider's clusters, one imported, one created: what the page's
    // script calls, and the status it follows until the manager dials in.
    let r = call(
        &t,
        &ada,
        "ProviderRpc/list_provider_clusters",
        r#"{"provider":"gcp"}"#,
    )
    .await;
    let remote: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(remote[0]["name"], "existing", "{remote}");
    let r = call(
        &t,
        &ada,
        "ProviderRpc/import_cluster",
        r#"{"provider":"gcp","cluster":"existing","location":"us-central1-a","name":null,"install":true}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(
        &t,
        &ada,
        "ProviderRpc/create_cluster",
        r#"{"provider":"gcp","name":"fresh","location":null,"mode":{"mode":"autopilot"}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let started: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(started["cluster"]["status"], "provisioning");
    common::eventually("the created cluster waits for its manager", || {
        let (t, ada) = (&t, &ada);
        async move {
            let r = call(
                t,
                ada,
                "ProviderRpc/get_managed_cluster",
                r#"{"name":"fresh"}"#,
            )
            .await;
            let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            m["cluster"]["status"] == "pending"
        }
    })
    .await;
}
