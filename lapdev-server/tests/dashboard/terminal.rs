//! The terminal page and its WebSocket (the CLI's exec endpoint, signed in by
//! the session cookie), and the cluster detail page: who may open what, the
//! policy each page ships, and a cluster token shown once.

use lapdev_server::web::assets;
use lapdev_server::web::security::TERMINAL_CONTENT_SECURITY_POLICY;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::*;

/// A workspace created by the browser user behind `cookie` (its owner), which
/// the stand-in manager then reports running.
async fn running_workspace(
    t: &TestServer,
    cookie: &str,
    token: &str,
    fake: &FakeManager,
    name: &str,
) {
    let r = call(
        t,
        cookie,
        "WorkspaceRpc/create_workspace",
        &serde_json::json!({"workspace": workspace(name, "ubuntu")}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let id: uuid::Uuid = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let manager = t.cluster_client(token);
    let admin = WorkspaceRpcClient::new(bearer(t));
    // The conductor's own writes of the create may land after a report, so
    // report until the workspace reads running (each report is newer).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if fake.has(id).is_some() {
            manager
                .report_workspace_status(observation(id, WorkspaceStatus::Running))
                .await
                .unwrap();
            let w = admin.get_workspace(name.into()).await.unwrap();
            if w.status == WorkspaceStatus::Running {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The answer to a terminal's WebSocket upgrade (the exec endpoint, as
/// `terminal.js` opens it) with `cookie` and `origin`: the refusal's status,
/// or 101 when it opened.
async fn upgrade(t: &TestServer, workspace: &str, cookie: &str, origin: &str) -> u16 {
    let url = format!(
        "ws://{}/api/v1/workspaces/{workspace}/exec?cmd=sh&tty=1&stdin=1&cols=80&rows=24",
        t.addr
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req.headers_mut().insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("the upgrade failed without an answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_page_relaxes_only_its_style_policy() {
    let t = TestServer::embedded().await;
    let (token, fake, _run) = connected_cluster(&t, "dev").await;
    let ada = browser(&t, "ada", Role::Admin).await;
    running_workspace(&t, &ada, &token, &fake, "box").await;

    // The relaxed policy is the strict one with inline styles allowed, and
    // scripts still from this origin only.
    assert_eq!(
        TERMINAL_CONTENT_SECURITY_POLICY
            .replace("style-src 'self' 'unsafe-inline'", "style-src 'self'"),
        CONTENT_SECURITY_POLICY
    );
    let r = page(&t, "/workspaces/box/terminal", &ada).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(r.header("x-frame-options"), "DENY");
    let html = r.text();
    for (i, _) in html.match_indices("<script") {
        assert!(html[i..].starts_with("<script src=\"/assets/"));
    }
    assert!(!html.contains(" style=") && !html.contains(" onload="));
    match assets::terminal() {
        Some((script, style)) => {
            assert_eq!(
                r.header("content-security-policy"),
                TERMINAL_CONTENT_SECURITY_POLICY
            );
            // The socket goes to the CLI's exec endpoint, with a TTY.
            assert!(
                html.contains("data-path=\"/api/v1/workspaces/box/exec\""),
                "{html}"
            );
            assert!(html.contains("tty=1&amp;stdin=1"), "{html}");
            for asset in [script, style] {
                assert!(html.contains(&asset.url()), "{html}");
                let plain = page(&t, &asset.url(), "").await;
                assert_eq!(plain.status, StatusCode::OK);
                assert_eq!(
                    plain.header("cache-control"),
                    "public, max-age=31536000, immutable"
                );
                assert_eq!(plain.body, asset.bytes);
                let gz = send(
                    Method::GET,
                    &format!("{}{}", t.base(), asset.url()),
                    &[("accept-encoding", "gzip")],
                    "",
                )
                .await;
                assert_eq!(gz.header("content-encoding"), "gzip");
                assert!(gz.body.len() * 2 < plain.body.len());
            }
        }
        None => {
            // Built without Node.js: the page says so and shows the CLI's way.
            assert_eq!(r.header("content-security-policy"), CONTENT_SECURITY_POLICY);
            assert!(html.contains("not built into this server"), "{html}");
            assert!(html.contains("lapdev workspace shell box"), "{html}");
        }
    }
    // Every other page keeps the strict policy, the workspace's own page too
    // (which links the terminal).
    for path in ["/", "/workspaces/box", "/clusters", "/clusters/dev"] {
        let r = page(&t, path, &ada).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(
            r.header("content-security-policy"),
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
    }
    assert!(
        page(&t, "/workspaces/box", &ada)
            .await
            .text()
            .contains("href=\"/workspaces/box/terminal\"")
    );
    // A stopped workspace has no terminal, and its page no relaxed policy.
    let r = call(&t, &ada, "WorkspaceRpc/stop_workspace", r#"{"name":"box"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The stop answers once asked for; the reconciler then stops it.
    let admin = WorkspaceRpcClient::new(bearer(&t));
    eventually("box stopped", || {
        let admin = admin.clone();
        async move {
            admin.get_workspace("box".into()).await.unwrap().status == WorkspaceStatus::Stopped
        }
    })
    .await;
    let r = page(&t, "/workspaces/box/terminal", &ada).await;
    assert_eq!(r.header("content-security-policy"), CONTENT_SECURITY_POLICY);
    assert!(!r.text().contains("id=\"terminal\""));
    assert!(
        r.text()
            .contains("a terminal opens into a running workspace")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_socket_checks_origin_and_who_may_open_it() {
    let t = TestServer::embedded().await;
    let (token, fake, _run) = connected_cluster(&t, "dev").await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let mel = browser(&t, "mel", Role::Member).await;
    running_workspace(&t, &ada, &token, &fake, "adas").await;
    running_workspace(&t, &mel, &token, &fake, "mels").await;

    // Another site's page cannot open a terminal with the user's cookie.
    assert_eq!(upgrade(&t, "adas", &ada, "https://evil.example").await, 403);
    assert_eq!(upgrade(&t, "mels", &mel, "http://127.0.0.1:1").await, 403);
    // A member cannot open (or learn of) another user's workspace's terminal:
    // neither the page nor the socket.
    assert_eq!(upgrade(&t, "adas", &mel, ORIGIN).await, 404);
    let r = page(&t, "/workspaces/adas/terminal", &mel).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.text().contains("id=\"terminal\""));
    // An admin may not either, unless the organisation allows it (it does
    // not by default): the page says which setting.
    assert_eq!(upgrade(&t, "mels", &ada, ORIGIN).await, 403);
    let r = page(&t, "/workspaces/mels/terminal", &ada).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("admins-may-open-shells"), "{}", r.text());
    // Not signed in: to the sign-in page.
    let r = page(&t, "/workspaces/mels/terminal", "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_is_for_admins_and_shows_a_token_once() {
    let t = TestServer::embedded().await;
    let (_token, _fake, _run) = connected_cluster(&t, "dev").await;
    let ada = browser(&t, "ada", Role::Admin).await;
    let mel = browser(&t, "mel", Role::Member).await;
    let r = call(
        &t,
        &ada,
        "WorkspaceRpc/create_workspace",
        &serde_json::json!({"workspace": workspace("on-dev", "ubuntu")}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Linked from the clusters list.
    assert!(
        page(&t, "/clusters", &ada)
            .await
            .text()
            .contains("href=\"/clusters/dev\"")
    );
    let r = page(&t, "/clusters/dev", &ada).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control"), "no-store");
    let html = r.text();
    assert!(html.contains("id=\"tokens\"") && html.contains("id=\"placement\""));
    assert!(html.contains("href=\"/workspaces/on-dev\""), "{html}");
    assert!(html.contains("data-action=\"revoke-token\""));

    // A member gets neither the page nor the token methods.
    let r = page(&t, "/clusters/dev", &mel).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!r.text().contains("id=\"tokens\""));
    let r = call(
        &t,
        &mel,
        "AdminRpc/create_cluster_token",
        r#"{"cluster":"dev","name":"sneaky","expires_in_secs":null}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // The page's create: the secret comes in the (unstored) answer only.
    let r = call(
        &t,
        &ada,
        "AdminRpc/create_cluster_token",
        r#"{"cluster":"dev","name":"rotated","expires_in_secs":null}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control"), "no-store");
    let created: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let secret = created["token_secret"].as_str().unwrap();
    let id = created["token"]["id"].as_str().unwrap();
    let html = page(&t, "/clusters/dev", &ada).await.text();
    assert!(html.contains("rotated") && html.contains(id));
    assert!(!html.contains(secret), "the page shows a token again");
    // Revoke: the row says so and offers no revoke.
    let r = call(
        &t,
        &ada,
        "AdminRpc/revoke_cluster_token",
        &serde_json::json!({"cluster": "dev", "token_id": id}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let html = page(&t, "/clusters/dev", &ada).await.text();
    let row = html
        .split(&format!("data-id=\"{id}\""))
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .expect("the revoked token's row");
    assert!(
        row.contains("revoked") && !row.contains("revoke-token"),
        "{row}"
    );

    let r = page(&t, "/clusters/nope", &ada).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
