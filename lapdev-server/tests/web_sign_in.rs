//! Browser sessions and OpenID Connect through real HTTP, against the local
//! OpenID provider stand-in (`testing/lapdev-oidc-double`): wrong audience,
//! bad signature, expired ID token, replayed state and nonce, a login finished
//! in another browser, unverified email, a domain outside the list, a changed
//! email on an existing (issuer, subject); the CLI's one-time code; CSRF and
//! cross-origin WebSocket refusals; session revocation and disabling refused on
//! the very next call.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::TestServer;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapdev_common::role::Role;
use lapdev_hrpc::Client;
use lapdev_oidc_double::OidcDouble;
use lapdev_server::auth::api::{OidcProviderSettings, OrgSettingsView, PeopleRpcClient};
use lapdev_server::config::LimitsConfig;
use sha2::{Digest as _, Sha256};

/// The public URL the test server is configured with (tests/common).
const ORIGIN: &str = "https://lapdev.example.com";
const SESSION: &str = "__Host-lapdev_session";
const PRELOGIN: &str = "__Host-lapdev_prelogin";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> String {
        self.headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, v)| *k == name && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    }
}

async fn send(method: Method, url: &str, headers: &[(&str, String)], body: &str) -> Reply {
    let client: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("no answer in 30 s")
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn people(base: &str, token: &str) -> PeopleRpcClient {
    PeopleRpcClient::new(
        Client::http(&format!("{base}/rpc"))
            .unwrap()
            .with_timeout(Duration::from_secs(20))
            .with_header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            ),
    )
}

async fn server() -> TestServer {
    TestServer::embedded_with(LimitsConfig {
        allow_provider_test_endpoints: true,
        ..Default::default()
    })
    .await
}

async fn configured() -> (TestServer, OidcDouble) {
    let ts = server().await;
    let double = OidcDouble::start("lapdev-client", "client-secret")
        .await
        .unwrap();
    let view = people(&ts.base(), &ts.admin_token)
        .set_oidc_provider(OidcProviderSettings {
            issuer: double.issuer.clone(),
            client_id: "lapdev-client".into(),
            client_secret: "client-secret".into(),
            allowed_domains: vec!["example.com".into()],
            default_role: None,
        })
        .await
        .unwrap();
    assert_eq!(view.redirect_url, format!("{ORIGIN}/auth/oidc/callback"));
    (ts, double)
}

/// The provider's redirect back to us, rewritten to the test server's address.
struct Callback {
    url: String,
    prelogin: String,
}

/// Starts a login and lets the stand-in "sign in": the callback to call.
async fn begin(ts: &TestServer, query: &str) -> Callback {
    let start = send(
        Method::GET,
        &format!("{}/auth/oidc/start{query}", ts.base()),
        &[],
        "",
    )
    .await;
    assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
    let prelogin = start.cookie(PRELOGIN).expect("a pre-login cookie");
    let at_provider = send(Method::GET, &start.location(), &[], "").await;
    assert_eq!(
        at_provider.status,
        StatusCode::SEE_OTHER,
        "{}",
        at_provider.body
    );
    let back = at_provider.location();
    let path = back
        .strip_prefix(ORIGIN)
        .expect("the provider sends the browser to our public URL");
    Callback {
        url: format!("{}{path}", ts.base()),
        prelogin,
    }
}

async fn finish(cb: &Callback) -> Reply {
    send(
        Method::GET,
        &cb.url,
        &[("cookie", format!("{PRELOGIN}={}", cb.prelogin))],
        "",
    )
    .await
}

/// A full browser login: the response of the callback.
async fn login(ts: &TestServer) -> Reply {
    finish(&begin(ts, "").await).await
}

/// `whoami` as a browser: the session cookie, the CSRF header, our Origin.
async fn whoami_by_cookie(
    ts: &TestServer,
    session: &str,
    csrf: bool,
    origin: Option<&str>,
) -> Reply {
    let mut headers = vec![
        ("cookie", format!("{SESSION}={session}")),
        ("content-type", "application/json".to_owned()),
    ];
    if csrf {
        headers.push(("x-lapdev-csrf", "1".into()));
    }
    if let Some(o) = origin {
        headers.push(("origin", o.to_owned()));
    }
    send(
        Method::POST,
        &format!("{}/rpc/PeopleRpc/whoami", ts.base()),
        &headers,
        "{}",
    )
    .await
}

fn name_of(reply: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    v["name"].as_str().unwrap().to_owned()
}

/// What a refused login case sets, and the status and words of its refusal.
type Case = (
    &'static str,
    fn(&mut lapdev_oidc_double::Knobs),
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn oidc_refuses_bad_id_tokens_and_accounts() {
    let (ts, double) = configured().await;
    let cases: &[Case] = &[
        (
            "wrong audience",
            |k| k.wrong_audience = true,
            StatusCode::UNAUTHORIZED,
            "audience",
        ),
        (
            "bad signature",
            |k| k.bad_signature = true,
            StatusCode::UNAUTHORIZED,
            "signature",
        ),
        (
            "expired",
            |k| k.expired = true,
            StatusCode::UNAUTHORIZED,
            "expired",
        ),
        (
            "foreign nonce",
            |k| k.nonce_override = Some("not-the-login's-nonce".into()),
            StatusCode::UNAUTHORIZED,
            "nonce",
        ),
        (
            "unverified email",
            |k| k.email_verified = false,
            StatusCode::FORBIDDEN,
            "verify",
        ),
        (
            "domain outside the list",
            |k| k.email = Some("eve@evil.example".into()),
            StatusCode::FORBIDDEN,
            "not allowed",
        ),
        (
            "no email",
            |k| k.email = None,
            StatusCode::FORBIDDEN,
            "no email",
        ),
    ];
    for (what, knob, status, words) in cases {
        double.set(|k| {
            *k = Default::default();
            knob(k);
        });
        let reply = login(&ts).await;
        assert_eq!(reply.status, *status, "{what}: {}", reply.body);
        assert!(
            reply.body.to_lowercase().contains(words),
            "{what}: {:?} should mention {words:?}",
            reply.body
        );
        assert!(reply.cookie(SESSION).is_none(), "{what} must not sign in");
    }

    // None of the refused logins created or linked anyone.
    let owner = people(&ts.base(), &ts.admin_token);
    let users = owner.list_users().await.unwrap();
    assert_eq!(users.len(), 1, "{users:?}");

    // Failed logins are audited.
    let audit = owner
        .list_audit(lapdev_server::auth::api::AuditFilter {
            action: Some("auth.oidc".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.entries.len(), cases.len(), "{:?}", audit.entries);
    assert!(audit.entries.iter().all(|e| e.outcome == "failure"));
}

#[tokio::test]
async fn oidc_links_by_subject_and_never_replays() {
    let (ts, double) = configured().await;
    let owner = people(&ts.base(), &ts.admin_token);
    // An existing user with a verified address of an allowed domain.
    owner
        .create_user(
            "grace".into(),
            Some("grace@example.com".into()),
            Role::Admin,
            None,
        )
        .await
        .unwrap();

    // First sign-in of a new account: a new member, signed in by cookie.
    double.set(|k| *k = Default::default());
    let cb = begin(&ts, "").await;
    let reply = finish(&cb).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(reply.location(), "/");
    let session = reply.cookie(SESSION).expect("a session cookie");
    let set_cookie = reply
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(SESSION))
        .unwrap();
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let me = whoami_by_cookie(&ts, &session, true, Some(ORIGIN)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(name_of(&me), "ada");
    let ada = owner.get_user("ada".into()).await.unwrap();
    assert_eq!(ada.role, Role::Member);

    // The same state again: refused, it was used.
    let replay = finish(&cb).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);

    // A nonce of an earlier login in a new login's token: refused.
    let old_nonce = double.nonces()[0].clone();
    double.set(|k| k.nonce_override = Some(old_nonce));
    let reply = login(&ts).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    assert!(
        reply.body.to_lowercase().contains("nonce"),
        "{}",
        reply.body
    );
    double.set(|k| k.nonce_override = None);

    // Finished in another browser (no or another pre-login cookie): refused.
    let cb = begin(&ts, "").await;
    let elsewhere = send(Method::GET, &cb.url, &[], "").await;
    assert_eq!(
        elsewhere.status,
        StatusCode::BAD_REQUEST,
        "{}",
        elsewhere.body
    );
    assert!(
        elsewhere.body.contains("another browser"),
        "{}",
        elsewhere.body
    );

    // The same (issuer, subject) with a changed email, even one that belongs
    // to another user: still ada, never grace.
    double.set(|k| k.email = Some("grace@example.com".into()));
    let reply = login(&ts).await;
    let session = reply.cookie(SESSION).expect("signed in");
    assert_eq!(
        name_of(&whoami_by_cookie(&ts, &session, true, Some(ORIGIN)).await),
        "ada"
    );

    // A new subject whose verified email is grace's: linked to grace (the
    // first link, by email).
    double.set(|k| {
        k.subject = "subject-2".into();
        k.email = Some("grace@example.com".into());
    });
    let reply = login(&ts).await;
    let session = reply.cookie(SESSION).expect("signed in");
    assert_eq!(
        name_of(&whoami_by_cookie(&ts, &session, true, Some(ORIGIN)).await),
        "grace"
    );
    assert_eq!(owner.list_users().await.unwrap().len(), 3);

    // A disabled user cannot sign in this way either.
    owner.set_user_disabled("grace".into(), true).await.unwrap();
    let reply = login(&ts).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    // ... and the session from before is refused on the very next call.
    let me = whoami_by_cookie(&ts, &session, true, Some(ORIGIN)).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.body);
}

#[tokio::test]
async fn cli_login_exchanges_a_one_time_code_by_post() {
    let (ts, _double) = configured().await;
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let cli_login = async || {
        let cb = begin(&ts, &format!("?cli_port=45678&cli_challenge={challenge}")).await;
        let reply = finish(&cb).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        assert!(reply.cookie(SESSION).is_none(), "the CLI gets no cookie");
        let to = reply.location();
        let code = to
            .strip_prefix("http://127.0.0.1:45678/callback?code=")
            .expect("a loopback redirect with a one-time code")
            .to_owned();
        assert!(!code.starts_with("lapdev_pat_"));
        code
    };
    let exchange = async |code: &str, verifier: &str| {
        send(
            Method::POST,
            &format!("{}/auth/cli/exchange", ts.base()),
            &[("content-type", "application/json".into())],
            &serde_json::json!({"code": code, "code_verifier": verifier}).to_string(),
        )
        .await
    };

    // The wrong verifier: refused, and the code is spent.
    let code = cli_login().await;
    let wrong = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    assert_eq!(
        exchange(&code, &wrong).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        exchange(&code, &verifier).await.status,
        StatusCode::BAD_REQUEST
    );

    // The right one, once.
    let code = cli_login().await;
    let reply = exchange(&code, &verifier).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let signed: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let token = signed["token"]["token_secret"].as_str().unwrap();
    assert!(token.starts_with("lapdev_pat_"));
    assert_eq!(
        people(&ts.base(), token).whoami().await.unwrap().name,
        "ada"
    );
    assert_eq!(
        exchange(&code, &verifier).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn browser_sessions_need_csrf_and_end_at_once() {
    let ts = server().await;
    let owner = people(&ts.base(), &ts.admin_token);
    owner
        .create_user(
            "bob".into(),
            None,
            Role::Member,
            Some("bob-password".into()),
        )
        .await
        .unwrap();
    let form = serde_json::json!({"user": "bob", "password": "bob-password"}).to_string();
    let url = format!("{}/auth/session", ts.base());
    let json = ("content-type", "application/json".to_owned());

    // Signing a browser in needs the CSRF header and our Origin too.
    let no_csrf = send(
        Method::POST,
        &url,
        &[json.clone(), ("origin", ORIGIN.into())],
        &form,
    )
    .await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN, "{}", no_csrf.body);
    let reply = send(
        Method::POST,
        &url,
        &[
            json.clone(),
            ("origin", ORIGIN.into()),
            ("x-lapdev-csrf", "1".into()),
        ],
        &form,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let session = reply.cookie(SESSION).expect("a session cookie");

    // Cookie calls without the header, without an Origin, or from elsewhere.
    for (csrf, origin) in [
        (false, Some(ORIGIN)),
        (true, None),
        (true, Some("https://evil.example")),
    ] {
        let r = whoami_by_cookie(&ts, &session, csrf, origin).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "csrf {csrf} origin {origin:?}"
        );
    }
    let ok = whoami_by_cookie(&ts, &session, true, Some(ORIGIN)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(name_of(&ok), "bob");

    // Bearer calls are exempt: no header, any Origin.
    let bearer = send(
        Method::POST,
        &format!("{}/rpc/PeopleRpc/whoami", ts.base()),
        &[
            json.clone(),
            ("authorization", format!("Bearer {}", ts.admin_token)),
            ("origin", "https://evil.example".into()),
        ],
        "{}",
    )
    .await;
    assert_eq!(bearer.status, StatusCode::OK, "{}", bearer.body);

    // A shell or port-forward opened with this cookie is registered under it.
    let auth = &ts.server.state.auth;
    let opener = auth.authenticate_session(&session).await.unwrap();
    let mut opened = auth.live.open(opener.user_id, opener.credential);

    // Signing in again rotates the session: the old cookie is dead.
    let again = send(
        Method::POST,
        &url,
        &[
            json.clone(),
            ("origin", ORIGIN.into()),
            ("x-lapdev-csrf", "1".into()),
            ("cookie", format!("{SESSION}={session}")),
        ],
        &form,
    )
    .await;
    let rotated = again.cookie(SESSION).unwrap();
    assert_ne!(rotated, session);
    assert_eq!(
        whoami_by_cookie(&ts, &session, true, Some(ORIGIN))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // ...and what it opened has ended, with the reason (before the answer
    // to the sign-in was sent).
    let why = futures::FutureExt::now_or_never(opened.revoked())
        .expect("the session opened with the replaced cookie ended");
    assert!(why.contains("browser session"), "{why}");

    // Logout revokes: refused on the very next call.
    let out = send(
        Method::POST,
        &format!("{}/auth/logout", ts.base()),
        &[
            ("cookie", format!("{SESSION}={rotated}")),
            ("origin", ORIGIN.into()),
            ("x-lapdev-csrf", "1".into()),
        ],
        "",
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);
    assert_eq!(
        whoami_by_cookie(&ts, &rotated, true, Some(ORIGIN))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // WebSocket upgrades from another origin are refused before anything else.
    let upgrade = |origin: Option<&str>| {
        let mut h = vec![
            ("connection", "Upgrade".to_owned()),
            ("upgrade", "websocket".to_owned()),
            ("sec-websocket-version", "13".to_owned()),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        ];
        if let Some(o) = origin {
            h.push(("origin", o.to_owned()));
        }
        h
    };
    let tunnel = format!("{}/rpc/_tunnel", ts.base());
    let evil = send(
        Method::GET,
        &tunnel,
        &upgrade(Some("https://evil.example")),
        "",
    )
    .await;
    assert_eq!(evil.status, StatusCode::FORBIDDEN, "{}", evil.body);
    assert!(evil.body.contains("origin"), "{}", evil.body);
    let ours = send(Method::GET, &tunnel, &upgrade(Some(ORIGIN)), "").await;
    assert_ne!(ours.status, StatusCode::FORBIDDEN, "{}", ours.body);
    let none = send(Method::GET, &tunnel, &upgrade(None), "").await;
    assert_ne!(none.status, StatusCode::FORBIDDEN, "{}", none.body);
}

#[tokio::test]
async fn admin_shell_setting_is_owner_only_and_off_by_default() {
    let ts = server().await;
    let owner = people(&ts.base(), &ts.admin_token);
    assert!(
        !owner
            .get_org_settings()
            .await
            .unwrap()
            .admins_may_open_shells
    );
    owner
        .create_user("adm".into(), None, Role::Admin, Some("adm-password".into()))
        .await
        .unwrap();
    let signed = PeopleRpcClient::new(Client::http(&format!("{}/rpc", ts.base())).unwrap())
        .sign_in(None, "adm".into(), "adm-password".into(), None)
        .await
        .unwrap();
    let admin = people(&ts.base(), &signed.token.token_secret);
    assert!(
        !admin
            .get_org_settings()
            .await
            .unwrap()
            .admins_may_open_shells
    );
    let refused = admin
        .set_org_settings(OrgSettingsView {
            admins_may_open_shells: true,
        })
        .await
        .unwrap_err();
    assert!(format!("{refused:?}").contains("owner"), "{refused:?}");
    owner
        .set_org_settings(OrgSettingsView {
            admins_may_open_shells: true,
        })
        .await
        .unwrap();
    assert!(
        admin
            .get_org_settings()
            .await
            .unwrap()
            .admins_may_open_shells
    );
    let audit = owner
        .list_audit(lapdev_server::auth::api::AuditFilter {
            action: Some("org.settings".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.entries.len(), 1);
    assert_eq!(
        audit.entries[0].detail.as_deref(),
        Some("admins_may_open_shells=true")
    );
}

#[tokio::test]
async fn a_login_in_flight_survives_a_restart_and_stays_single_use() {
    let (ts, _double) = configured().await;
    let started = begin(&ts, "").await;
    let old_base = ts.base();
    // The login's state lives in the database, not in the stopped process.
    let ts = ts
        .restart_with(LimitsConfig {
            allow_provider_test_endpoints: true,
            ..Default::default()
        })
        .await;
    let cb = Callback {
        url: started.url.replacen(&old_base, &ts.base(), 1),
        prelogin: started.prelogin,
    };
    let reply = finish(&cb).await;
    let session = reply.cookie(SESSION).expect("signed in after the restart");
    assert_eq!(
        whoami_by_cookie(&ts, &session, true, Some(ORIGIN))
            .await
            .status,
        StatusCode::OK
    );
    // Finishing it again is a replay: refused.
    let replay = finish(&cb).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);
}
