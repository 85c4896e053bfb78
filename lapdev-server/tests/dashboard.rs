//! The web dashboard over real HTTP: sign-in redirects, the security headers
//! as shipped, hashed and compressed assets, CSRF on cookie calls, what a
//! member may not see or call, escaping of text from clusters and users, and
//! the live event stream (filtered by role, replayable by `Last-Event-ID`).

mod common;
#[path = "dashboard/terminal.rs"]
mod terminal;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{FakeManager, TestServer, dial, eventually, observation, sample_info};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapdev_common::role::Role;
use lapdev_common::status::{ClusterStatus, WorkspaceStatus};
use lapdev_hrpc::Client;
use lapdev_server::admin::workspaces::{NewWorkspaceRequest, WorkspaceRpcClient};
use lapdev_server::auth::api::PeopleRpcClient;
use lapdev_server::web::security::CONTENT_SECURITY_POLICY;

/// The public URL the test server is configured with (tests/common).
const ORIGIN: &str = "https://lapdev.example.com";
const SESSION: &str = "__Host-lapdev_session";
const XSS: &str = "<img src=x onerror=alert(1)>";
const XSS_IMAGE: &str = "<img/src=x/onerror=alert(1)>";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> HyperClient<HttpConnector, Full<Bytes>> {
    HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut r = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client().request(request(method, url, headers, body)),
    )
    .await
    .expect("no answer in 30 s")
    .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn bearer(t: &TestServer) -> Client {
    Client::http(&format!("{}/rpc", t.base()))
        .unwrap()
        .with_timeout(Duration::from_secs(20))
        .with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {}", t.admin_token)).unwrap(),
        )
}

/// A user with a password and role, signed in as a browser: the cookie header.
async fn browser(t: &TestServer, name: &str, role: Role) -> String {
    PeopleRpcClient::new(bearer(t))
        .create_user(
            name.into(),
            None,
            role,
            Some("a long enough password".into()),
        )
        .await
        .unwrap();
    let body = format!(r#"{{"user":"{name}","password":"a long enough password"}}"#);
    let r = send(
        Method::POST,
        &format!("{}/auth/session", t.base()),
        &[
            ("content-type", "application/json"),
            ("x-lapdev-csrf", "1"),
            ("origin", ORIGIN),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|kv| kv.starts_with(SESSION))
        .expect("a session cookie")
        .to_owned()
}

async fn page(t: &TestServer, path: &str, cookie: &str) -> Reply {
    send(
        Method::GET,
        &format!("{}{path}", t.base()),
        &[("cookie", cookie)],
        "",
    )
    .await
}

/// A browser's HRPC call: cookie, CSRF header, our Origin.
async fn call(t: &TestServer, cookie: &str, path: &str, body: &str) -> Reply {
    send(
        Method::POST,
        &format!("{}/rpc/{path}", t.base()),
        &[
            ("cookie", cookie),
            ("content-type", "application/json"),
            ("x-lapdev-csrf", "1"),
            ("origin", ORIGIN),
        ],
        body,
    )
    .await
}

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
    assert_eq!(urls.len(), 2, "{urls:?}");
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

/// An open event stream.
struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    async fn open(t: &TestServer, cookie: &str, last_event_id: Option<&str>) -> (Reply, Events) {
        let mut headers = vec![("cookie", cookie), ("accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        let response = client()
            .request(request(
                Method::GET,
                &format!("{}/events", t.base()),
                &headers,
                "",
            ))
            .await
            .unwrap();
        let head = Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: Bytes::new(),
        };
        (
            head,
            Events {
                body: response.into_body(),
                buffer: String::new(),
            },
        )
    }

    /// The next event (id, name, data), skipping keep-alive comments.
    async fn next(&mut self) -> (String, String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = v.trim().into();
                    }
                }
                if !name.is_empty() {
                    return (id, name, data);
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("no event in 30 s")
                .expect("the stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
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
