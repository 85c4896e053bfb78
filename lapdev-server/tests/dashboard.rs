//! The web dashboard over real HTTP: sign-in redirects, the security headers
//! as shipped, hashed and compressed assets, CSRF on cookie calls, what a
//! member may not see or call, escaping of text from clusters and users, and
//! the live event stream (filtered by role, replayable by `Last-Event-ID`).

mod common;
#[path = "dashboard/terminal.rs"]
mod terminal;

use std::sync::Arc;
use std::time::Duration;

use common::web::{Events, ORIGIN, bearer, browser, call, page, send};
use common::{FakeManager, TestServer, dial, eventually, observation, sample_info};
use http::{Method, StatusCode};
use lapdev_common::role::Role;
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_server::admin::workspaces::{NewWorkspaceRequest, WorkspaceRpcClient};
use lapdev_server::web::security::CONTENT_SECURITY_POLICY;

const XSS: &str = "<img src=x onerror=alert(1)>";
const XSS_IMAGE: &str = "<img/src=x/onerror=alert(1)>";

/// The asset URLs a page links.
fn asset_urls(html: &str) -> Vec<String> {
    html.split("\"/assets/")
        .skip(1)
        .map(|rest| format!("/assets/{}", rest.split('"').next().unwrap()))
        .collect()
}

#[tokio::test]
async fn pages_need_a_session_and_ship_a_strict_policy() {
    let t = TestServer::embedded().await;
    // Not signed in: every page sends the browser to sign in.
    for path in ["/", "/clusters", "/connect", "/workspaces/x"] {
        let r = page(&t, path, "").await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.header("location"), "/sign-in", "{path}");
    }
    let sign_in = page(&t, "/sign-in", "").await;
    assert_eq!(sign_in.status, StatusCode::OK);
    // No OpenID provider configured: no button for one.
    assert!(!sign_in.text().contains("Sign in with"));
    let admin = browser(&t, "ada", Role::Admin).await;
    for path in ["/sign-in", "/", "/clusters", "/connect"] {
        let r = page(&t, path, &admin).await;
        let expected = if path == "/sign-in" {
            StatusCode::SEE_OTHER
        } else {
            StatusCode::OK
        };
        assert_eq!(r.status, expected, "{path}: {}", r.text());
        let csp = r.header("content-security-policy");
        assert_eq!(csp, CONTENT_SECURITY_POLICY, "{path}");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(r.header("x-frame-options"), "DENY");
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        if r.status == StatusCode::OK {
            assert_eq!(r.header("cache-control"), "no-store", "{path}");
            // The policy holds because nothing is inline: every script has a
            // source, and no element has a style or an event handler.
            let html = r.text();
            assert!(html.starts_with("<!DOCTYPE html>"));
            for (i, _) in html.match_indices("<script") {
                assert!(html[i..].starts_with("<script src=\"/assets/"), "{path}");
            }
            assert!(!html.contains(" style="), "{path}");
            assert!(!html.contains(" onclick=") && !html.contains(" onload="));
        }
    }
    // HRPC answers (a cluster token is shown once in one) are never stored.
    let r = call(
        &t,
        &admin,
        "AdminRpc/list_clusters",
        r#"{"include_deleted":false}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control"), "no-store");
}

#[tokio::test]
async fn assets_are_hashed_long_cached_and_compressed() {
    let t = TestServer::embedded().await;
    let html = page(&t, "/sign-in", "").await.text();
    let urls = asset_urls(&html);
    // The stylesheet, the script and the events worker.
    assert_eq!(urls.len(), 3, "{urls:?}");
    for url in urls {
        let plain = page(&t, &url, "").await;
        assert_eq!(plain.status, StatusCode::OK, "{url}");
        assert_eq!(
            plain.header("cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert!(plain.header("content-encoding").is_empty());
        // The name carries the first 16 hex digits of the content's SHA-256.
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&plain.body);
        assert!(url.contains(&hex::encode(&digest[..8])), "{url}");
        let gz = send(
            Method::GET,
            &format!("{}{url}", t.base()),
            &[("accept-encoding", "gzip")],
            "",
        )
        .await;
        assert_eq!(gz.header("content-encoding"), "gzip", "{url}");
        assert!(gz.body.len() * 2 < plain.body.len(), "{url} barely shrank");
    }
    // Another hash (a stale or made-up name) is not served.
    let r = page(&t, "/assets/app.0000000000000000.js", "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cookie_calls_need_the_csrf_header_and_our_origin() {
    let t = TestServer::embedded().await;
    let cookie = browser(&t, "ada", Role::Admin).await;
    let url = format!("{}/rpc/PeopleRpc/whoami", t.base());
    let base = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/json"),
    ];
    let cases: &[(&[(&str, &str)], StatusCode)] = &[
        (&[], StatusCode::FORBIDDEN),
        (&[("origin", ORIGIN)], StatusCode::FORBIDDEN),
        (&[("x-lapdev-csrf", "1")], StatusCode::FORBIDDEN),
        (
            &[("x-lapdev-csrf", "1"), ("origin", "https://evil.example")],
            StatusCode::FORBIDDEN,
        ),
        (
            &[("x-lapdev-csrf", "1"), ("origin", ORIGIN)],
            StatusCode::OK,
        ),
    ];
    for (extra, expected) in cases {
        let headers: Vec<_> = base.iter().chain(extra.iter()).copied().collect();
        let r = send(Method::POST, &url, &headers, "{}").await;
        assert_eq!(r.status, *expected, "{extra:?}: {}", r.text());
    }
    // Signing in from another site is refused too.
    let r = send(
        Method::POST,
        &format!("{}/auth/session", t.base()),
        &[
            ("content-type", "application/json"),
            ("origin", "https://evil.example"),
        ],
        r#"{"user":"ada","password":"a long enough password"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// A cluster whose (stand-in) manager is connected: its token, the manager
/// and the tunnel's task.
async fn connected_cluster(
    t: &TestServer,
    name: &str,
) -> (String, Arc<FakeManager>, tokio::task::JoinHandle<()>) {
    let admin = t.admin();
    let created = admin
        .create_cluster(name.into(), None, None, None)
        .await
        .unwrap();
    t.cluster_client(&created.token_secret)
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let fake = Arc::new(FakeManager::default());
    let session = dial(t, &created.token_secret, fake.clone()).await.unwrap();
    let run = tokio::spawn(async move {
        let _ = session.run().await;
    });
    let name = name.to_owned();
    eventually("cluster connected", || {
        let admin = admin.clone();
        let name = name.clone();
        async move { admin.get_cluster(name).await.unwrap().status == ClusterStatus::Connected }
    })
    .await;
    (created.token_secret, fake, run)
}

fn workspace(name: &str, image: &str) -> NewWorkspaceRequest {
    NewWorkspaceRequest {
        name: name.into(),
        image: image.into(),
        cpu_millis: 500,
        memory_bytes: 1 << 30,
        storage_bytes: 1 << 30,
        cluster: None,
        region: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_only_their_own_and_no_admin_page_or_method() {
    let t = TestServer::embedded().await;
    let (_token, _fake, _run) = connected_cluster(&t, "dev").await;
    let admin = WorkspaceRpcClient::new(bearer(&t));
    admin
        .create_workspace(workspace("admins", "ubuntu"))
        .await
        .unwrap();
    let member = browser(&t, "mel", Role::Member).await;
    let r = call(
        &t,
        &member,
        "WorkspaceRpc/create_workspace",
        &serde_json::json!({"workspace": workspace("mine", "ubuntu")}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let clusters = page(&t, "/clusters", &member).await;
    assert_eq!(clusters.status, StatusCode::FORBIDDEN);
    assert!(!clusters.text().contains("<table"));
    let home = page(&t, "/", &member).await.text();
    assert!(home.contains("href=\"/workspaces/mine\""));
    assert!(
        !home.contains("admins"),
        "a member sees another's workspace"
    );
    assert!(!home.contains("href=\"/clusters\""));
    assert_eq!(
        page(&t, "/workspaces/admins", &member).await.status,
        StatusCode::NOT_FOUND
    );
    for (path, body) in [
        ("AdminRpc/create_cluster", r#"{"name":"x"}"#),
        ("AdminRpc/list_cluster_tokens", r#"{"cluster":"dev"}"#),
        ("PeopleRpc/list_users", "{}"),
    ] {
        let r = call(&t, &member, path, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text());
    }
    // An admin's pages show both.
    let ada = browser(&t, "ada", Role::Admin).await;
    let home = page(&t, "/", &ada).await.text();
    assert!(home.contains("/workspaces/mine") && home.contains("/workspaces/admins"));
    assert!(page(&t, "/clusters", &ada).await.text().contains("dev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_clusters_and_users_is_escaped() {
    let t = TestServer::embedded().await;
    let (token, fake, _run) = connected_cluster(&t, "dev").await;
    let mut info = sample_info();
    info.kubernetes_version = XSS.into();
    info.region = Some(XSS.into());
    let manager = t.cluster_client(&token);
    manager.report_cluster_info(info).await.unwrap();
    let ws = WorkspaceRpcClient::new(bearer(&t))
        .create_workspace(workspace("hello", XSS_IMAGE))
        .await
        .unwrap();
    // The manager reports a failure with a hostile message; the conductor's
    // own writes of the create may land after it, so report until the page
    // shows it (each report is newer than the last).
    let ada = browser(&t, "ada", Role::Admin).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let detail = loop {
        if fake.has(ws.id).is_some() {
            let mut seen = observation(ws.id, WorkspaceStatus::Failed);
            seen.message = Some(XSS.into());
            manager.report_workspace_status(seen).await.unwrap();
            let html = page(&t, "/workspaces/hello", &ada).await.text();
            if html.contains("data-status=\"failed\"") {
                break html;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the report never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(detail.contains("&lt;img/src=x/onerror=alert(1)&gt;"));
    assert!(
        detail.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{detail}"
    );
    for path in ["/", "/clusters", "/workspaces/hello"] {
        let html = page(&t, path, &ada).await.text();
        assert!(
            !html.contains("<img"),
            "{path} carries a live <img>: {html}"
        );
        assert!(!html.contains("onerror=alert(1)>"), "{path}");
    }
    let clusters = page(&t, "/clusters", &ada).await.text();
    assert!(clusters.contains("&lt;img src=x onerror=alert(1)&gt;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_their_field() {
    let t = TestServer::embedded().await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let cases = [
        (workspace("Bad Name", "ubuntu"), "workspace.name"),
        (workspace("ok", "two words"), "workspace.image"),
        (
            NewWorkspaceRequest {
                cpu_millis: 0,
                ..workspace("ok", "ubuntu")
            },
            "workspace.cpu_millis",
        ),
        (
            NewWorkspaceRequest {
                memory_bytes: -1,
                ..workspace("ok", "ubuntu")
            },
            "workspace.memory_bytes",
        ),
        (
            NewWorkspaceRequest {
                storage_bytes: 0,
                ..workspace("ok", "ubuntu")
            },
            "workspace.storage_bytes",
        ),
    ];
    for (request, field) in cases {
        let r = call(
            &t,
            &ada,
            "WorkspaceRpc/create_workspace",
            &serde_json::json!({ "workspace": request }).to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["details"]["field"], field, "{body}");
    }
    // The form has a place for each of them.
    let html = page(&t, "/", &ada).await.text();
    for field in [
        "workspace.name",
        "workspace.image",
        "workspace.cpu_millis",
        "workspace.memory_bytes",
        "workspace.storage_bytes",
    ] {
        assert!(html.contains(&format!("data-field=\"{field}\"")), "{field}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_filtered_by_role_and_replayed_by_last_event_id() {
    let t = TestServer::embedded().await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let mel = browser(&t, "mel", Role::Member).await;
    let (head, mut admin_events) = Events::open(&t, &ada, None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.header("content-type").starts_with("text/event-stream"));
    assert!(head.header("content-encoding").is_empty());
    let (_, mut member_events) = Events::open(&t, &mel, None).await;
    // Not signed in, or asked from another site: no stream.
    let (anon, _) = Events::open(&t, "", None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);

    let admin = t.admin();
    let created = admin
        .create_cluster("dev".into(), None, None, None)
        .await
        .unwrap();
    let (id1, name, data) = admin_events.next().await;
    assert_eq!(name, "change");
    assert!(data.contains("\"cluster\""), "{data}");
    // Members learn of clusters too (they may list them) ...
    let (_, _, data) = member_events.next().await;
    assert!(data.contains("\"cluster\""), "{data}");
    // ... but not of token revocations.
    admin
        .revoke_cluster_token("dev".into(), created.token.id)
        .await
        .unwrap();
    let (id2, _, data) = admin_events.next().await;
    assert!(data.contains("\"token\""), "{data}");
    admin
        .set_cluster_cordoned("dev".into(), true)
        .await
        .unwrap();
    let (id3, _, data) = admin_events.next().await;
    assert!(data.contains("\"cluster\""), "{data}");
    // The member's next event is that cluster change: the token's was skipped.
    let (member_id, _, data) = member_events.next().await;
    assert_eq!(member_id, id3);
    assert!(data.contains("\"cluster\""), "{data}");

    // A reconnect replays what came after its last id, filtered again.
    let (_, mut again) = Events::open(&t, &ada, Some(&id1)).await;
    assert_eq!(again.next().await.0, id2);
    assert_eq!(again.next().await.0, id3);
    let (_, mut member_again) = Events::open(&t, &mel, Some(&id1)).await;
    assert_eq!(member_again.next().await.0, id3);
    // An id this server never gave (another process's): reload.
    let (_, mut stale) = Events::open(&t, &ada, Some("0123456789ab-1")).await;
    assert_eq!(stale.next().await.1, "reload");

    let r = send(
        Method::GET,
        &format!("{}/events", t.base()),
        &[("cookie", &ada), ("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_outlives_the_request_and_idle_timeouts() {
    let t = TestServer::embedded_with(lapdev_server::config::LimitsConfig {
        request_timeout_secs: 2,
        idle_timeout_secs: 2,
        ..Default::default()
    })
    .await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let (head, mut events) = Events::open(&t, &ada, None).await;
    assert_eq!(head.status, StatusCode::OK);
    // Longer than both limits with nothing on the stream (its keep-alive
    // comment comes every 15 s): a unary request or an idle connection would
    // be cut by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    t.admin()
        .create_cluster("late".into(), None, None, None)
        .await
        .unwrap();
    let (_, name, data) = events.next().await;
    assert_eq!(name, "change");
    assert!(data.contains("\"cluster\""), "{data}");
}
