//! Browser sessions, the OpenID provider's sealed secret, identity links, the
//! organisation setting and audit pruning, on PostgreSQL and SQLite.

use chrono::{Duration, Utc};
use lapdev_common::role::Role;
use lapdev_db::entities::browser_session;
use lapdev_db::test_support::TestDatabase;
use lapdev_db::{
    AuditQuery, CredentialKey, DbError, NewAuditEntry, NewOidcProvider, NewUser, OrgSettings,
    ProviderCredential, SessionLifetime, TokenRejection, UserChange,
};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

fn entry(action: &str) -> NewAuditEntry {
    NewAuditEntry {
        action: action.into(),
        outcome: "success".into(),
        ..Default::default()
    }
}

async fn sessions(test: TestDatabase) {
    let db = test.db();
    let org = db.create_organization("o").await.unwrap();
    let u = db
        .create_user(
            org.id,
            NewUser {
                name: "u".into(),
                email: None,
            },
        )
        .await
        .unwrap();
    let life = SessionLifetime::default();
    let s1 = db
        .create_session(org.id, u.id, life, None, entry("auth.sign_in"))
        .await
        .unwrap();
    let v = db.verify_session(&s1.secret, life).await.unwrap();
    assert_eq!((v.user_id, v.organization_id), (u.id, org.id));

    // Rotation: signing in again with the old cookie revokes it.
    let s2 = db
        .create_session(org.id, u.id, life, Some(&s1.secret), entry("auth.sign_in"))
        .await
        .unwrap();
    assert_eq!(s1.replaced, None);
    assert_eq!(
        s2.replaced,
        Some(lapdev_db::ReplacedSession {
            id: s1.id,
            user_id: u.id
        }),
        "the rotated session is named, so what it opened can end"
    );
    assert!(matches!(
        db.verify_session(&s1.secret, life).await,
        Err(DbError::InvalidToken(TokenRejection::Revoked))
    ));
    db.verify_session(&s2.secret, life).await.unwrap();

    // Idle expiry: a session unused past its idle time is refused.
    use browser_session::Column as S;
    browser_session::Entity::update_many()
        .col_expr(
            S::IdleExpiresAt,
            Expr::value((Utc::now() - Duration::seconds(1)).fixed_offset()),
        )
        .filter(S::Id.eq(s2.id))
        .exec(db.connection())
        .await
        .unwrap();
    assert!(matches!(
        db.verify_session(&s2.secret, life).await,
        Err(DbError::InvalidToken(TokenRejection::Expired))
    ));

    // Absolute expiry holds however busy the session is.
    let s3 = db
        .create_session(org.id, u.id, life, None, entry("auth.sign_in"))
        .await
        .unwrap();
    browser_session::Entity::update_many()
        .col_expr(
            S::ExpiresAt,
            Expr::value((Utc::now() - Duration::seconds(1)).fixed_offset()),
        )
        .filter(S::Id.eq(s3.id))
        .exec(db.connection())
        .await
        .unwrap();
    assert!(matches!(
        db.verify_session(&s3.secret, life).await,
        Err(DbError::InvalidToken(TokenRejection::Expired))
    ));

    // Explicit revocation, and disabling revokes every session.
    let s4 = db
        .create_session(org.id, u.id, life, None, entry("auth.sign_in"))
        .await
        .unwrap();
    assert!(
        db.revoke_session(&s4.secret, entry("session.revoke"))
            .await
            .unwrap()
    );
    assert!(db.verify_session(&s4.secret, life).await.is_err());
    let s5 = db
        .create_session(org.id, u.id, life, None, entry("auth.sign_in"))
        .await
        .unwrap();
    db.change_user(org.id, u.id, UserChange::Disable, entry("user.disable"))
        .await
        .unwrap();
    assert!(matches!(
        db.verify_session(&s5.secret, life).await,
        Err(DbError::InvalidToken(TokenRejection::Revoked))
    ));
    assert!(matches!(
        db.verify_session("short", life).await,
        Err(DbError::InvalidToken(TokenRejection::Malformed))
    ));
}

#[tokio::test]
async fn sessions_postgres() {
    sessions(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn sessions_sqlite() {
    sessions(TestDatabase::sqlite().await).await;
}

async fn oidc_and_settings(test: TestDatabase) {
    let db = test.db();
    let org = db.create_organization("o").await.unwrap();
    let key = CredentialKey::generate().unwrap();
    assert!(db.oidc_provider(&key).await.unwrap().is_none());
    db.set_oidc_provider(
        &key,
        NewOidcProvider {
            organization_id: org.id,
            issuer: "https://id.example.com".into(),
            client_id: "lapdev".into(),
            client_secret: ProviderCredential::new(b"s3cret-value".to_vec()),
            allowed_domains: vec!["Example.COM".into(), " @corp.example ".into()],
            default_role: Role::Member,
        },
        entry("oidc.set"),
    )
    .await
    .unwrap();
    let stored = db.oidc_provider(&key).await.unwrap().unwrap();
    assert_eq!(stored.config.client_secret.expose(), b"s3cret-value");
    assert_eq!(
        stored.config.allowed_domains,
        vec!["example.com".to_owned(), "corp.example".to_owned()]
    );
    // Sealed at rest: another key cannot read it, and the row holds no plaintext.
    let other = CredentialKey::generate().unwrap();
    assert!(matches!(
        db.oidc_provider(&other).await,
        Err(DbError::Credential(_))
    ));
    let row = lapdev_db::entities::oidc_provider::Entity::find()
        .one(db.connection())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !row.client_secret_ciphertext
            .windows(6)
            .any(|w| w == b"s3cret")
    );

    // Links are unique by (issuer, subject).
    let created = db
        .create_linked_user(
            org.id,
            NewUser {
                name: "ada".into(),
                email: Some("ada@example.com".into()),
            },
            Role::Admin,
            "https://id.example.com",
            "sub-1",
            entry("user.create_oidc"),
        )
        .await
        .unwrap();
    assert_eq!(created.role, Role::Admin);
    let (found, email) = db
        .user_by_identity("https://id.example.com", "sub-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id, email.as_deref()),
        (created.id, Some("ada@example.com"))
    );
    assert!(
        db.user_by_identity("https://other", "sub-1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.link_identity(
            created.id,
            "https://id.example.com",
            "sub-1",
            None,
            entry("x")
        )
        .await
        .is_err()
    );
    assert_eq!(
        db.user_by_email(org.id, "ADA@example.com")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(created.id)
    );

    // The organisation setting, default off.
    assert_eq!(
        db.org_settings(org.id).await.unwrap(),
        OrgSettings::default()
    );
    let on = OrgSettings {
        admins_may_open_shells: true,
    };
    db.set_org_settings(org.id, on, entry("org.settings"))
        .await
        .unwrap();
    assert_eq!(db.org_settings(org.id).await.unwrap(), on);
}

#[tokio::test]
async fn oidc_and_settings_postgres() {
    oidc_and_settings(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn oidc_and_settings_sqlite() {
    oidc_and_settings(TestDatabase::sqlite().await).await;
}

async fn prune(test: TestDatabase) {
    let db = test.db();
    let org = db.create_organization("o").await.unwrap();
    for a in ["a", "b", "c"] {
        db.record_audit(NewAuditEntry {
            organization_id: Some(org.id),
            ..entry(a)
        })
        .await
        .unwrap();
    }
    let pruned = db
        .prune_audit(
            Utc::now() + Duration::seconds(1),
            NewAuditEntry {
                organization_id: Some(org.id),
                ..entry("audit.prune")
            },
        )
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    let left = db
        .list_audit(
            org.id,
            &AuditQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "only the record of the pruning is left");
    assert_eq!(left[0].entry.action, "audit.prune");
    assert_eq!(
        left[0]
            .entry
            .detail
            .as_deref()
            .map(|d| d.starts_with("3 rows")),
        Some(true)
    );
    // The guard is back at once.
    let conn = db.connection();
    assert!(
        conn.execute_unprepared("DELETE FROM audit_log")
            .await
            .is_err()
    );
    assert!(
        conn.execute_unprepared("UPDATE audit_log SET outcome = 'forged'")
            .await
            .is_err()
    );
    // Pruning nothing still works and is recorded.
    let none = db
        .prune_audit(Utc::now() - Duration::days(365), entry("audit.prune"))
        .await
        .unwrap();
    assert_eq!(none, 0);
}

#[tokio::test]
async fn audit_prune_postgres() {
    prune(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn audit_prune_sqlite() {
    prune(TestDatabase::sqlite().await).await;
}

/// OpenID Connect steps in flight: sealed, single-use, expiring, by kind.
async fn oidc_pending(test: TestDatabase) {
    use lapdev_db::OidcPendingKind::{CliCode, Login};
    use lapdev_db::entities::oidc_pending;
    let db = test.db();
    let key = CredentialKey::generate().unwrap();
    db.put_oidc_pending(&key, Login, "state-1", b"payload-1", Duration::minutes(10))
        .await
        .unwrap();
    // Stored sealed: the plaintext is not in the row, nor the lookup value.
    let row = oidc_pending::Entity::find()
        .one(db.connection())
        .await
        .unwrap()
        .unwrap();
    assert!(!row.sealed.windows(9).any(|w| w == b"payload-1"));
    assert_ne!(row.lookup_hash, "state-1");
    // Another kind under the same value finds nothing, and leaves it.
    assert_eq!(
        db.take_oidc_pending(&key, CliCode, "state-1")
            .await
            .unwrap(),
        None
    );
    // Taken once; a replay finds nothing.
    assert_eq!(
        db.take_oidc_pending(&key, Login, "state-1").await.unwrap(),
        Some(b"payload-1".to_vec())
    );
    assert_eq!(
        db.take_oidc_pending(&key, Login, "state-1").await.unwrap(),
        None
    );
    assert_eq!(
        db.take_oidc_pending(&key, Login, "unknown").await.unwrap(),
        None
    );
    // Expired: never returned (and gone after the attempt).
    db.put_oidc_pending(&key, CliCode, "code-1", b"x", Duration::minutes(2))
        .await
        .unwrap();
    oidc_pending::Entity::update_many()
        .col_expr(
            oidc_pending::Column::ExpiresAt,
            Expr::value((Utc::now() - Duration::seconds(1)).fixed_offset()),
        )
        .exec(db.connection())
        .await
        .unwrap();
    assert_eq!(
        db.take_oidc_pending(&key, CliCode, "code-1").await.unwrap(),
        None
    );
    // Storing prunes expired rows.
    db.put_oidc_pending(&key, Login, "old", b"x", Duration::minutes(2))
        .await
        .unwrap();
    oidc_pending::Entity::update_many()
        .col_expr(
            oidc_pending::Column::ExpiresAt,
            Expr::value((Utc::now() - Duration::seconds(1)).fixed_offset()),
        )
        .exec(db.connection())
        .await
        .unwrap();
    db.put_oidc_pending(&key, Login, "new", b"y", Duration::minutes(2))
        .await
        .unwrap();
    let left = oidc_pending::Entity::find()
        .all(db.connection())
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    // Another server's key cannot open it: an error, not a silent success.
    let other = CredentialKey::generate().unwrap();
    assert!(db.take_oidc_pending(&other, Login, "new").await.is_err());
}

#[tokio::test]
async fn oidc_pending_postgres() {
    oidc_pending(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn oidc_pending_sqlite() {
    oidc_pending(TestDatabase::sqlite().await).await;
}
