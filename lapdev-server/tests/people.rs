//! People through real HTTP: the role matrix over every method of every admin
//! service (enumerated from the descriptors), members scoped to their own
//! workspaces, sign-in, disabled users, revoked and expired tokens, the audit
//! log and what happens when an audit write fails.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use common::TestServer;
use lapdev_common::role::Role;
use lapdev_common::status::DesiredState;
use lapdev_db::{NewAuditEntry, NewWorkspace};
use lapdev_hrpc::{CallError, Client, Code, HrpcError};
use lapdev_server::admin::workspaces::WorkspaceRpcClient;
use lapdev_server::auth::ADMIN_SERVICES;
use lapdev_server::auth::api::{AuditFilter, PeopleRpcClient};
use serde_json::{Value, json};

/// The role every method needs: the specification the declarations must match.
/// A method missing here (or declared differently) fails the matrix.
const EXPECTED: &[(&str, &str)] = &[
    ("/AdminRpc/create_cluster", "admin"),
    ("/AdminRpc/set_cluster_security_profile", "admin"),
    ("/AdminRpc/set_cluster_placement", "admin"),
    ("/AdminRpc/forget_cluster_workspaces", "admin"),
    ("/AdminRpc/list_clusters", "member"),
    ("/AdminRpc/list_clusters_page", "member"),
    ("/AdminRpc/get_cluster", "member"),
    ("/AdminRpc/delete_cluster", "admin"),
    ("/AdminRpc/set_cluster_cordoned", "admin"),
    ("/AdminRpc/create_cluster_token", "admin"),
    ("/AdminRpc/list_cluster_tokens", "admin"),
    ("/AdminRpc/revoke_cluster_token", "admin"),
    ("/ProviderRpc/create_provider", "admin"),
    ("/ProviderRpc/list_providers", "admin"),
    ("/ProviderRpc/get_provider", "admin"),
    ("/ProviderRpc/delete_provider", "admin"),
    ("/ProviderRpc/list_provider_clusters", "admin"),
    ("/ProviderRpc/import_cluster", "admin"),
    ("/ProviderRpc/create_cluster", "admin"),
    ("/ProviderRpc/delete_cluster", "admin"),
    ("/ProviderRpc/get_managed_cluster", "admin"),
    ("/WorkspaceRpc/create_workspace", "member"),
    ("/WorkspaceRpc/list_workspaces", "member"),
    ("/WorkspaceRpc/list_workspaces_page", "member"),
    ("/WorkspaceRpc/get_workspace", "member"),
    ("/WorkspaceRpc/stop_workspace", "member"),
    ("/WorkspaceRpc/start_workspace", "member"),
    ("/WorkspaceRpc/delete_workspace", "member"),
    ("/WorkspaceRpc/restore_workspace", "member"),
    ("/WorkspaceRpc/forget_workspace", "member"),
    ("/PeopleRpc/sign_in", "public"),
    ("/PeopleRpc/whoami", "member"),
    ("/PeopleRpc/create_token", "member"),
    ("/PeopleRpc/list_tokens", "member"),
    ("/PeopleRpc/revoke_token", "member"),
    ("/PeopleRpc/list_sessions", "member"),
    ("/PeopleRpc/revoke_session", "member"),
    ("/PeopleRpc/create_user", "owner"),
    ("/PeopleRpc/list_users", "admin"),
    ("/PeopleRpc/get_user", "admin"),
    ("/PeopleRpc/set_user_role", "owner"),
    ("/PeopleRpc/set_user_disabled", "owner"),
    ("/PeopleRpc/set_user_password", "owner"),
    ("/PeopleRpc/delete_user", "owner"),
    ("/PeopleRpc/list_audit", "admin"),
    ("/PeopleRpc/set_oidc_provider", "owner"),
    ("/PeopleRpc/get_oidc_provider", "admin"),
    ("/PeopleRpc/clear_oidc_provider", "owner"),
    ("/PeopleRpc/get_org_settings", "admin"),
    ("/PeopleRpc/set_org_settings", "owner"),
    ("/QuotaRpc/set_quota", "owner"),
    ("/QuotaRpc/list_quotas", "admin"),
    ("/QuotaRpc/my_quota", "member"),
    ("/WorkspaceTimerRpc/get_workspace_policy", "member"),
    ("/WorkspaceTimerRpc/set_workspace_policy", "owner"),
    ("/WorkspaceTimerRpc/keep_alive_workspace", "member"),
];

fn client(base: &str, token: Option<&str>) -> Client {
    let c = Client::http(&format!("{base}/rpc"))
        .unwrap()
        .with_timeout(Duration::from_secs(20));
    match token {
        Some(t) => c.with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        ),
        None => c,
    }
}

fn people(base: &str, token: &str) -> PeopleRpcClient {
    PeopleRpcClient::new(client(base, Some(token)))
}

fn code<T: std::fmt::Debug>(r: Result<T, CallError<HrpcError>>) -> Code {
    match r {
        Err(CallError::Service(e)) => e.code,
        other => panic!("expected a service error, got {other:?}"),
    }
}

/// Creates `name` with `role` and password, signs in, returns their token.
async fn user_token(t: &TestServer, name: &str, role: Role) -> String {
    let owner = people(&t.base(), &t.admin_token);
    owner
        .create_user(name.into(), None, role, Some(format!("{name}-password")))
        .await
        .unwrap();
    let anon = PeopleRpcClient::new(client(&t.base(), None));
    anon.sign_in(None, name.into(), format!("{name}-password"), None)
        .await
        .unwrap()
        .token
        .token_secret
}

#[tokio::test]
async fn role_matrix_over_every_method_of_every_admin_service() {
    let t = TestServer::postgres().await;
    let tokens = [
        (Role::Owner, t.admin_token.clone()),
        (Role::Admin, user_token(&t, "ada", Role::Admin).await),
        (Role::Member, user_token(&t, "mel", Role::Member).await),
    ];
    let expected: BTreeMap<_, _> = EXPECTED.iter().copied().collect();
    let mut seen = 0;
    for service in ADMIN_SERVICES {
        for method in service.methods {
            seen += 1;
            let want = expected
                .get(method.path)
                .unwrap_or_else(|| panic!("{} is not in the role table", method.path));
            assert_eq!(
                method.role,
                Some(*want),
                "{} declares the wrong role",
                method.path
            );
            for (role, token) in &tokens {
                // `{}` is never a complete argument object for a method with
                // arguments: a call that passes the layer fails decoding, so
                // nothing is changed by this test.
                let r: Result<Value, CallError<HrpcError>> = client(&t.base(), Some(token))
                    .call(service.name, method.name, &json!({}))
                    .await;
                let got = match &r {
                    Err(CallError::Service(e)) => Some(e.code),
                    Ok(_) => None,
                    Err(other) => panic!("{}: {other:?}", method.path),
                };
                let allowed = *want == "public" || role.allows(want.parse::<Role>().unwrap());
                if allowed {
                    assert!(
                        !matches!(got, Some(Code::PermissionDenied | Code::Unauthenticated)),
                        "{role} should reach {}: {r:?}",
                        method.path
                    );
                } else {
                    let Err(CallError::Service(e)) = &r else {
                        panic!("{role} must be refused {}", method.path)
                    };
                    assert_eq!(e.code, Code::PermissionDenied, "{role} on {}", method.path);
                    assert!(e.message.contains(want), "names the role: {}", e.message);
                }
            }
            // Without a token only public methods get past the layer.
            let r: Result<Value, CallError<HrpcError>> = client(&t.base(), None)
                .call(service.name, method.name, &json!({}))
                .await;
            if *want != "public" {
                assert_eq!(code(r), Code::Unauthenticated, "{}", method.path);
            }
        }
    }
    assert_eq!(
        seen,
        EXPECTED.len(),
        "the table lists a method no service has"
    );
}

#[tokio::test]
async fn members_see_only_their_own_workspaces() {
    let t = TestServer::postgres().await;
    let mel = user_token(&t, "mel", Role::Member).await;
    let ada = user_token(&t, "ada", Role::Admin).await;
    let db = &t.server.state.db;
    let org = db.list_organizations().await.unwrap()[0].id;
    let owner_id =
        |name: &'static str| async move { db.get_user_by_name(org, name).await.unwrap().id };
    for (owner, name) in [
        (owner_id("admin").await, "theirs"),
        (owner_id("mel").await, "mine"),
    ] {
        db.create_workspace(
            org,
            NewWorkspace {
                owner_id: owner,
                name: name.into(),
                image: "img".into(),
                cpu_millis: 100,
                memory_bytes: 1,
                storage_bytes: 1,
                desired_state: DesiredState::Stopped,
                placement_cluster: None,
                placement_region: None,
            },
        )
        .await
        .unwrap();
    }
    let ws = |token: &str| WorkspaceRpcClient::new(client(&t.base(), Some(token)));
    let names = |list: Vec<lapdev_server::admin::workspaces::WorkspaceView>| {
        list.into_iter().map(|w| w.name).collect::<Vec<_>>()
    };
    assert_eq!(
        names(ws(&mel).list_workspaces(false).await.unwrap()),
        ["mine"]
    );
    assert_eq!(
        ws(&mel).get_workspace("mine".into()).await.unwrap().name,
        "mine"
    );
    assert_eq!(
        code(ws(&mel).get_workspace("theirs".into()).await),
        Code::NotFound
    );
    assert_eq!(
        code(ws(&mel).delete_workspace("theirs".into()).await),
        Code::NotFound
    );
    let mut all = names(ws(&ada).list_workspaces(false).await.unwrap());
    all.sort();
    assert_eq!(all, ["mine", "theirs"]);
    assert_eq!(
        ws(&ada).get_workspace("theirs".into()).await.unwrap().name,
        "theirs"
    );
}

#[tokio::test]
async fn sign_in_tokens_disable_and_revoke_take_effect_on_the_next_call() {
    let t = TestServer::postgres().await;
    let owner = people(&t.base(), &t.admin_token);
    assert_eq!(owner.whoami().await.unwrap().role, Role::Owner);
    let mel = user_token(&t, "mel", Role::Member).await;
    let me = people(&t.base(), &mel);
    assert_eq!(me.whoami().await.unwrap().name, "mel");

    // A wrong password and an unknown user get the same answer.
    let anon = PeopleRpcClient::new(client(&t.base(), None));
    let wrong = anon
        .sign_in(None, "mel".into(), "not-it".into(), None)
        .await;
    assert_eq!(code(wrong), Code::Unauthenticated);
    let unknown = anon
        .sign_in(None, "nobody".into(), "whatever".into(), None)
        .await;
    assert_eq!(code(unknown), Code::Unauthenticated);

    // A second token, revoked: refused on the very next call, the first still works.
    let second = me.create_token("script".into(), Some(1)).await.unwrap();
    let script = people(&t.base(), &second.token_secret);
    assert_eq!(script.whoami().await.unwrap().name, "mel");
    me.revoke_token(second.token.id).await.unwrap();
    assert_eq!(code(script.whoami().await), Code::Unauthenticated);
    assert_eq!(me.whoami().await.unwrap().name, "mel");
    assert_eq!(
        code(me.create_token("long".into(), Some(100_000)).await),
        Code::InvalidArgument
    );

    // A role change holds from the next call: no claim in the token says otherwise.
    assert_eq!(code(me.list_users().await), Code::PermissionDenied);
    owner
        .set_user_role("mel".into(), Role::Admin)
        .await
        .unwrap();
    assert_eq!(me.list_users().await.unwrap().len(), 2);

    // Disabling refuses every token of the user on the very next call.
    owner.set_user_disabled("mel".into(), true).await.unwrap();
    assert_eq!(code(me.whoami().await), Code::Unauthenticated);
    let disabled = anon
        .sign_in(None, "mel".into(), "mel-password".into(), None)
        .await;
    assert_eq!(code(disabled), Code::Unauthenticated);

    // The last owner stays.
    assert_eq!(
        code(owner.set_user_role("admin".into(), Role::Member).await),
        Code::FailedPrecondition
    );

    // An expired token is refused.
    let db = &t.server.state.db;
    let org = db.list_organizations().await.unwrap()[0].id;
    let admin = db.get_user_by_name(org, "admin").await.unwrap();
    let expired = db
        .create_pat(
            org,
            admin.id,
            "old",
            Utc::now() - chrono::Duration::seconds(1),
            NewAuditEntry {
                organization_id: Some(org),
                action: "token.create".into(),
                outcome: "success".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        code(people(&t.base(), &expired.secret).whoami().await),
        Code::Unauthenticated
    );

    // The audit log has the sign-ins, the token and user changes.
    let page = owner
        .list_audit(AuditFilter {
            limit: Some(500),
            ..Default::default()
        })
        .await
        .unwrap();
    let has = |action: &str, outcome: &str| {
        page.entries
            .iter()
            .any(|e| e.action == action && e.outcome == outcome)
    };
    assert!(has("auth.sign_in", "success"));
    assert!(has("auth.sign_in", "failure"));
    assert!(has("token.revoke", "success"));
    assert!(has("user.set_role", "success"));
    assert!(has("user.disable", "success"));
    let only = owner
        .list_audit(AuditFilter {
            action: Some("user.disable".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only.entries.len(), 1);
    assert_eq!(only.entries[0].actor.as_deref(), Some("admin"));
    assert_eq!(only.entries[0].target.as_deref(), Some("mel"));
}

#[tokio::test]
async fn audited_actions_are_recorded_and_a_failed_audit_write_loses_nothing() {
    let t = TestServer::postgres().await;
    let admin = t.admin();
    admin
        .create_cluster("one".into(), None, None, None)
        .await
        .unwrap();
    let owner = people(&t.base(), &t.admin_token);
    // The row is written in the background: wait for it, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = owner
            .list_audit(AuditFilter {
                action: Some("cluster.create".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        if let Some(e) = page.entries.first() {
            assert_eq!(e.target.as_deref(), Some("one"));
            assert_eq!(e.outcome, "success");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no audit row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // With the audit table gone, the action still happens; the failure is counted.
    lapdev_db::test_support::execute_sql(&t.server.state.db, "DROP TABLE audit_log")
        .await
        .unwrap();
    admin
        .create_cluster("two".into(), None, None, None)
        .await
        .unwrap();
    assert_eq!(admin.get_cluster("two".into()).await.unwrap().name, "two");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest_text(&format!("{}/metrics", t.base())).await;
        if metrics.contains("lapdev_audit_write_failures_total") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "failure not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reqwest_text(url: &str) -> String {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
