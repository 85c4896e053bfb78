//! The repository API against real databases: every case runs on PostgreSQL and on
//! SQLite, each in its own throwaway database.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use lapdev_common::status::{
    CloudProvider, ClusterStatus, DesiredState, K8sProviderKind, WorkspaceStatus,
};
use lapdev_common::token::is_well_formed_cluster_token;
use lapdev_db::entities::{k8s_provider, kube_cluster, kube_cluster_token, kube_workspace};
use lapdev_db::test_support::TestDatabase;
use lapdev_db::{
    ClusterInfoUpdate, CredentialError, CredentialKey, Db, DbError, EntityKind, NewCluster,
    NewClusterToken, NewProvider, NewUser, NewWorkspace, ProviderCredential, TokenRejection,
    WorkspaceTransition,
};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

/// Runs `async fn $name(db: Db)` once on PostgreSQL and once on SQLite.
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let test = super::TestDatabase::postgres().await;
                    super::$name(test.db().clone()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let test = super::TestDatabase::sqlite().await;
                    super::$name(test.db().clone()).await;
                }
            }
        )+
    };
}

on_both!(
    organizations_and_users,
    providers,
    provider_credentials_are_encrypted,
    provider_isolation,
    clusters,
    cluster_names_are_unique_per_organization,
    cluster_info_and_status,
    cluster_isolation,
    corrupt_status_is_an_error,
    tokens_verify,
    tokens_rejected,
    token_isolation,
    token_usage_is_coalesced,
    token_usage_flush_writes_each_token,
    workspaces,
    workspace_transitions,
    workspace_isolation,
    concurrent_transitions_have_one_winner,
    workspace_deletion,
    requested_resources,
    unsettled_workspaces,
    concurrent_read_then_write_transactions,
);

struct Org {
    id: Uuid,
    user: Uuid,
}

async fn org(db: &Db, name: &str) -> Org {
    let org = db.create_organization(name).await.unwrap();
    let user = db
        .create_user(
            org.id,
            NewUser {
                name: "admin".into(),
                email: Some("admin@example.com".into()),
            },
        )
        .await
        .unwrap();
    Org {
        id: org.id,
        user: user.id,
    }
}

fn info() -> ClusterInfoUpdate {
    ClusterInfoUpdate {
        kubernetes_version: "v1.33.2".into(),
        cloud_provider: CloudProvider::Gcp,
        region: Some("europe-west1".into()),
        node_count: 3,
        cpu_capacity_millis: 12_000,
        cpu_allocatable_millis: 11_000,
        memory_capacity_bytes: 48 << 30,
        memory_allocatable_bytes: 44 << 30,
        manager_version: "0.1.0".into(),
        manager_namespace: "lapdev".into(),
        manifest_revision: None,
        nodes: None,
        detected_autoscaling: None,
    }
}

fn new_workspace(owner: Uuid, name: &str) -> NewWorkspace {
    NewWorkspace {
        owner_id: owner,
        name: name.into(),
        image: "ghcr.io/lapdev/workspace:latest".into(),
        cpu_millis: 2_000,
        memory_bytes: 4 << 30,
        storage_bytes: 10 << 30,
        desired_state: DesiredState::Running,
        placement_cluster: None,
        placement_region: None,
    }
}

fn token_named(name: &str) -> NewClusterToken {
    NewClusterToken {
        name: name.into(),
        created_by: None,
        expires_at: None,
    }
}

fn is_not_found(result: Result<impl std::fmt::Debug, DbError>, entity: EntityKind) -> bool {
    matches!(result, Err(DbError::NotFound { entity: e, .. }) if e == entity)
}

async fn organizations_and_users(db: Db) {
    let created = db.create_organization("acme").await.unwrap();
    assert_eq!(db.get_organization(created.id).await.unwrap(), created);
    assert!(is_not_found(
        db.get_organization(Uuid::new_v4()).await,
        EntityKind::Organization
    ));
    assert!(matches!(
        db.create_organization("").await,
        Err(DbError::InvalidInput { .. })
    ));

    let alice = db
        .create_user(
            created.id,
            NewUser {
                name: "alice".into(),
                email: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(db.get_user(created.id, alice.id).await.unwrap(), alice);
    assert_eq!(
        db.get_user_by_name(created.id, "alice").await.unwrap(),
        alice
    );
    assert_eq!(
        db.list_users(created.id).await.unwrap(),
        vec![alice.clone()]
    );
    let duplicate = db
        .create_user(
            created.id,
            NewUser {
                name: "alice".into(),
                email: None,
            },
        )
        .await;
    assert!(matches!(
        duplicate,
        Err(DbError::AlreadyExists {
            entity: EntityKind::User,
            ..
        })
    ));

    let other = db.create_organization("globex").await.unwrap();
    assert!(is_not_found(
        db.get_user(other.id, alice.id).await,
        EntityKind::User
    ));
    assert!(db.list_users(other.id).await.unwrap().is_empty());
    assert!(is_not_found(
        db.create_user(
            Uuid::new_v4(),
            NewUser {
                name: "bob".into(),
                email: None
            }
        )
        .await,
        EntityKind::Organization
    ));
}

fn gcp_provider(name: &str, created_by: Option<Uuid>) -> NewProvider {
    NewProvider {
        name: name.into(),
        kind: K8sProviderKind::GCP,
        config: serde_json::json!({"project": "my-project", "location": "europe-west1"}),
        credential: ProviderCredential::new(br#"{"private_key":"-----BEGIN"}"#.to_vec()),
        created_by,
    }
}

async fn providers(db: Db) {
    let acme = org(&db, "acme").await;
    let key = CredentialKey::generate().unwrap();
    let created = db
        .create_provider(acme.id, gcp_provider("gcp-main", Some(acme.user)), &key)
        .await
        .unwrap();
    assert_eq!(created.kind, K8sProviderKind::GCP);
    assert_eq!(created.config["project"], "my-project");
    assert_eq!(created.created_by, Some(acme.user));
    assert_eq!(db.get_provider(acme.id, created.id).await.unwrap(), created);
    assert_eq!(
        db.list_providers(acme.id).await.unwrap(),
        vec![created.clone()]
    );
    assert!(matches!(
        db.create_provider(acme.id, gcp_provider("gcp-main", None), &key)
            .await,
        Err(DbError::AlreadyExists {
            entity: EntityKind::Provider,
            ..
        })
    ));

    // A provider with a live cluster cannot be deleted.
    let mut cluster = NewCluster::named("imported");
    cluster.provider_id = Some(created.id);
    cluster.external_id = Some("projects/p/locations/l/clusters/c".into());
    let cluster = db.create_cluster(acme.id, cluster).await.unwrap();
    assert_eq!(cluster.provider_id, Some(created.id));
    assert!(matches!(
        db.delete_provider(acme.id, created.id).await,
        Err(DbError::InUse {
            users: 1,
            user_kind: EntityKind::Cluster,
            ..
        })
    ));
    // The same provider cluster cannot be imported twice.
    let mut again = NewCluster::named("imported-again");
    again.provider_id = Some(created.id);
    again.external_id = Some("projects/p/locations/l/clusters/c".into());
    let again = db.create_cluster(acme.id, again).await;
    assert!(
        matches!(
            &again,
            Err(DbError::AlreadyExists { entity: EntityKind::Cluster, key })
                if key == "projects/p/locations/l/clusters/c"
        ),
        "{again:?}"
    );
    db.delete_cluster(acme.id, cluster.id).await.unwrap();
    db.delete_provider(acme.id, created.id).await.unwrap();
    assert!(is_not_found(
        db.get_provider(acme.id, created.id).await,
        EntityKind::Provider
    ));
    assert!(db.list_providers(acme.id).await.unwrap().is_empty());
    // The name is free again once the old one is deleted.
    db.create_provider(acme.id, gcp_provider("gcp-main", None), &key)
        .await
        .unwrap();
}

async fn provider_credentials_are_encrypted(db: Db) {
    let acme = org(&db, "acme").await;
    let key = CredentialKey::generate().unwrap();
    let created = db
        .create_provider(acme.id, gcp_provider("gcp", None), &key)
        .await
        .unwrap();

    let stored = k8s_provider::Entity::find_by_id(created.id)
        .one(db.connection())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !stored
            .credential_ciphertext
            .windows(11)
            .any(|w| w == b"private_key"),
        "the credential is stored in plaintext"
    );

    let credential = db
        .provider_credential(acme.id, created.id, &key)
        .await
        .unwrap();
    assert_eq!(credential.expose(), br#"{"private_key":"-----BEGIN"}"#);
    db.check_credential_key(&key).await.unwrap();

    let wrong = CredentialKey::generate().unwrap();
    assert!(matches!(
        db.provider_credential(acme.id, created.id, &wrong).await,
        Err(DbError::Credential(CredentialError::Decrypt))
    ));
    assert!(matches!(
        db.check_credential_key(&wrong).await,
        Err(DbError::Credential(CredentialError::Decrypt))
    ));
}

async fn provider_isolation(db: Db) {
    let acme = org(&db, "acme").await;
    let globex = org(&db, "globex").await;
    let key = CredentialKey::generate().unwrap();
    let provider = db
        .create_provider(acme.id, gcp_provider("gcp", None), &key)
        .await
        .unwrap();
    assert!(is_not_found(
        db.get_provider(globex.id, provider.id).await,
        EntityKind::Provider
    ));
    assert!(is_not_found(
        db.provider_credential(globex.id, provider.id, &key).await,
        EntityKind::Provider
    ));
    assert!(is_not_found(
        db.delete_provider(globex.id, provider.id).await,
        EntityKind::Provider
    ));
    assert!(db.list_providers(globex.id).await.unwrap().is_empty());
    // Another organisation's user cannot be recorded as creator, nor its provider used.
    assert!(is_not_found(
        db.create_provider(globex.id, gcp_provider("x", Some(acme.user)), &key)
            .await,
        EntityKind::User
    ));
    let mut cluster = NewCluster::named("c");
    cluster.provider_id = Some(provider.id);
    assert!(is_not_found(
        db.create_cluster(globex.id, cluster).await,
        EntityKind::Provider
    ));
    db.get_provider(acme.id, provider.id).await.unwrap();
}

async fn clusters(db: Db) {
    let acme = org(&db, "acme").await;
    let mut new = NewCluster::named("prod");
    new.declared_region = Some("eu".into());
    new.labels = BTreeMap::from([("team".to_owned(), "infra".to_owned())]);
    let created = db.create_cluster(acme.id, new).await.unwrap();
    assert_eq!(created.status, ClusterStatus::Pending);
    assert_eq!(created.labels["team"], "infra");
    assert_eq!(created.effective_region(), Some("eu"));
    assert_eq!(created.last_reported_at, None);
    assert!(!created.cordoned);
    assert_eq!(db.get_cluster(acme.id, created.id).await.unwrap(), created);
    assert_eq!(
        db.get_cluster_by_name(acme.id, "prod").await.unwrap(),
        created
    );

    let staging = db
        .create_cluster(acme.id, NewCluster::named("staging"))
        .await
        .unwrap();
    let names: Vec<_> = db
        .list_clusters(acme.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["prod", "staging"]);

    db.delete_cluster(acme.id, staging.id).await.unwrap();
    assert!(is_not_found(
        db.get_cluster(acme.id, staging.id).await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.delete_cluster(acme.id, staging.id).await,
        EntityKind::Cluster
    ));
    assert_eq!(db.list_clusters(acme.id).await.unwrap().len(), 1);
}

async fn cluster_names_are_unique_per_organization(db: Db) {
    let acme = org(&db, "acme").await;
    let globex = org(&db, "globex").await;
    let first = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    let duplicate = db.create_cluster(acme.id, NewCluster::named("prod")).await;
    assert!(
        matches!(
            &duplicate,
            Err(DbError::AlreadyExists { entity: EntityKind::Cluster, key }) if key == "prod"
        ),
        "{duplicate:?}"
    );
    // The same name in another organisation is fine.
    db.create_cluster(globex.id, NewCluster::named("prod"))
        .await
        .unwrap();
    // Once deleted, the name can be used again; the deleted row stays.
    db.delete_cluster(acme.id, first.id).await.unwrap();
    let second = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    assert_ne!(first.id, second.id);
    let rows = kube_cluster::Entity::find()
        .filter(kube_cluster::Column::OrganizationId.eq(acme.id))
        .all(db.connection())
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
}

async fn cluster_info_and_status(db: Db) {
    let acme = org(&db, "acme").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();

    db.update_cluster_info(acme.id, cluster.id, &info())
        .await
        .unwrap();
    let reported = db.get_cluster(acme.id, cluster.id).await.unwrap();
    assert_eq!(reported.kubernetes_version.as_deref(), Some("v1.33.2"));
    assert_eq!(reported.cloud_provider, Some(CloudProvider::Gcp));
    assert_eq!(reported.region.as_deref(), Some("europe-west1"));
    assert_eq!(reported.node_count, 3);
    assert_eq!(reported.cpu_capacity_millis, 12_000);
    assert_eq!(reported.cpu_allocatable_millis, 11_000);
    assert_eq!(reported.memory_capacity_bytes, 48 << 30);
    assert_eq!(reported.memory_allocatable_bytes, 44 << 30);
    assert_eq!(reported.manager_version.as_deref(), Some("0.1.0"));
    assert_eq!(reported.manager_namespace.as_deref(), Some("lapdev"));
    assert!(reported.last_reported_at.is_some());
    assert_eq!(reported.last_seen_at, reported.last_reported_at);
    assert_eq!(reported.connected_at, None);

    let mut bad = info();
    bad.cpu_allocatable_millis = -1;
    assert!(matches!(
        db.update_cluster_info(acme.id, cluster.id, &bad).await,
        Err(DbError::InvalidInput {
            field: "cpu_allocatable_millis",
            ..
        })
    ));

    db.set_cluster_status(acme.id, cluster.id, ClusterStatus::Connected)
        .await
        .unwrap();
    let connected = db.get_cluster(acme.id, cluster.id).await.unwrap();
    assert_eq!(connected.status, ClusterStatus::Connected);
    assert!(connected.connected_at.is_some());
    db.set_cluster_status(acme.id, cluster.id, ClusterStatus::Disconnected)
        .await
        .unwrap();
    let disconnected = db.get_cluster(acme.id, cluster.id).await.unwrap();
    assert_eq!(disconnected.status, ClusterStatus::Disconnected);
    assert_eq!(disconnected.connected_at, connected.connected_at);

    db.touch_cluster_seen(acme.id, cluster.id).await.unwrap();
    let seen = db.get_cluster(acme.id, cluster.id).await.unwrap();
    assert!(seen.last_seen_at >= connected.last_seen_at);

    db.set_cluster_cordoned(acme.id, cluster.id, true)
        .await
        .unwrap();
    assert!(db.get_cluster(acme.id, cluster.id).await.unwrap().cordoned);
    db.set_cluster_cordoned(acme.id, cluster.id, false)
        .await
        .unwrap();
    assert!(!db.get_cluster(acme.id, cluster.id).await.unwrap().cordoned);
}

async fn cluster_isolation(db: Db) {
    let acme = org(&db, "acme").await;
    let globex = org(&db, "globex").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    let before = db.get_cluster(acme.id, cluster.id).await.unwrap();

    assert!(is_not_found(
        db.get_cluster(globex.id, cluster.id).await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.get_cluster_by_name(globex.id, "prod").await,
        EntityKind::Cluster
    ));
    assert!(db.list_clusters(globex.id).await.unwrap().is_empty());
    assert!(is_not_found(
        db.update_cluster_info(globex.id, cluster.id, &info()).await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.set_cluster_status(globex.id, cluster.id, ClusterStatus::Error)
            .await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.set_cluster_cordoned(globex.id, cluster.id, true).await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.touch_cluster_seen(globex.id, cluster.id).await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.delete_cluster(globex.id, cluster.id).await,
        EntityKind::Cluster
    ));
    // Nothing the other organisation tried changed the row.
    assert_eq!(db.get_cluster(acme.id, cluster.id).await.unwrap(), before);
}

async fn corrupt_status_is_an_error(db: Db) {
    let acme = org(&db, "acme").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    kube_cluster::Entity::update_many()
        .col_expr(kube_cluster::Column::Status, Expr::value("Connected"))
        .filter(kube_cluster::Column::Id.eq(cluster.id))
        .exec(db.connection())
        .await
        .unwrap();
    let err = db.get_cluster(acme.id, cluster.id).await.unwrap_err();
    match err {
        DbError::CorruptValue { column, source, .. } => {
            assert_eq!(column, "status");
            assert_eq!(source.value, "Connected");
            assert_eq!(source.type_name, "ClusterStatus");
        }
        other => panic!("expected CorruptValue, got {other:?}"),
    }

    let owner = acme.user;
    let ws = db
        .create_workspace(acme.id, new_workspace(owner, "w"))
        .await
        .unwrap();
    kube_workspace::Entity::update_many()
        .col_expr(kube_workspace::Column::DesiredState, Expr::value("paused"))
        .filter(kube_workspace::Column::Id.eq(ws.id))
        .exec(db.connection())
        .await
        .unwrap();
    assert!(matches!(
        db.get_workspace(acme.id, ws.id).await,
        Err(DbError::CorruptValue {
            column: "desired_state",
            ..
        })
    ));
}

async fn tokens_verify(db: Db) {
    let acme = org(&db, "acme").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    let created = db
        .create_cluster_token(
            acme.id,
            cluster.id,
            NewClusterToken {
                name: "initial".into(),
                created_by: Some(acme.user),
                expires_at: Some(Utc::now() + Duration::days(30)),
            },
        )
        .await
        .unwrap();
    let secret = created.secret.expose();
    assert!(is_well_formed_cluster_token(secret), "{secret}");
    assert!(secret.starts_with(&created.token.display_prefix));
    assert_eq!(created.token.display_prefix.len(), "lapdev_ct_".len() + 6);
    assert!(!format!("{created:?}").contains(secret));

    // Only the hash is stored.
    let row = kube_cluster_token::Entity::find_by_id(created.token.id)
        .one(db.connection())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(row.token_hash, secret);
    assert_eq!(row.token_hash.len(), 64);
    assert!(!row.token_hash.contains(&secret["lapdev_ct_".len()..]));

    let verified = db.verify_cluster_token(secret).await.unwrap();
    assert_eq!(verified.cluster_id, cluster.id);
    assert_eq!(verified.organization_id, acme.id);
    assert_eq!(verified.token_id, created.token.id);

    // Two live tokens per cluster allow rotation; each token is different.
    let second = db
        .create_cluster_token(acme.id, cluster.id, token_named("rotation"))
        .await
        .unwrap();
    assert_ne!(second.secret, created.secret);
    assert_eq!(
        db.verify_cluster_token(second.secret.expose())
            .await
            .unwrap()
            .cluster_id,
        cluster.id
    );
    db.verify_cluster_token(secret).await.unwrap();
    let listed = db.list_cluster_tokens(acme.id, cluster.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].name, "initial");
    assert_eq!(listed[0].created_by, Some(acme.user));
    assert!(listed[0].expires_at.is_some());
}

async fn tokens_rejected(db: Db) {
    let acme = org(&db, "acme").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    let rejection = |r: Result<_, DbError>| match r {
        Err(DbError::InvalidToken(reason)) => reason,
        other => panic!("expected InvalidToken, got {other:?}"),
    };

    assert_eq!(
        rejection(db.verify_cluster_token("").await),
        TokenRejection::Malformed
    );
    assert_eq!(
        rejection(db.verify_cluster_token("Bearer xyz").await),
        TokenRejection::Malformed
    );
    let unknown = format!("lapdev_ct_{}", "A".repeat(43));
    assert_eq!(
        rejection(db.verify_cluster_token(&unknown).await),
        TokenRejection::Unknown
    );

    // Revoked: rejected at once, and revoking again is harmless.
    let revoked = db
        .create_cluster_token(acme.id, cluster.id, token_named("revoked"))
        .await
        .unwrap();
    db.verify_cluster_token(revoked.secret.expose())
        .await
        .unwrap();
    db.revoke_cluster_token(acme.id, revoked.token.id)
        .await
        .unwrap();
    assert_eq!(
        rejection(db.verify_cluster_token(revoked.secret.expose()).await),
        TokenRejection::Revoked
    );
    let first_revocation = db.list_cluster_tokens(acme.id, cluster.id).await.unwrap()[0].revoked_at;
    assert!(first_revocation.is_some());
    db.revoke_cluster_token(acme.id, revoked.token.id)
        .await
        .unwrap();
    assert_eq!(
        db.list_cluster_tokens(acme.id, cluster.id).await.unwrap()[0].revoked_at,
        first_revocation
    );

    // Expired.
    let expired = db
        .create_cluster_token(
            acme.id,
            cluster.id,
            NewClusterToken {
                name: "expired".into(),
                created_by: None,
                expires_at: Some(Utc::now() - Duration::seconds(1)),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rejection(db.verify_cluster_token(expired.secret.expose()).await),
        TokenRejection::Expired
    );

    // A token of a deleted cluster.
    let live = db
        .create_cluster_token(acme.id, cluster.id, token_named("live"))
        .await
        .unwrap();
    db.verify_cluster_token(live.secret.expose()).await.unwrap();
    db.delete_cluster(acme.id, cluster.id).await.unwrap();
    assert_eq!(
        rejection(db.verify_cluster_token(live.secret.expose()).await),
        TokenRejection::ClusterDeleted
    );
    // And no new tokens for it.
    assert!(is_not_found(
        db.create_cluster_token(acme.id, cluster.id, token_named("late"))
            .await,
        EntityKind::Cluster
    ));
}

async fn token_isolation(db: Db) {
    let acme = org(&db, "acme").await;
    let globex = org(&db, "globex").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    let token = db
        .create_cluster_token(acme.id, cluster.id, token_named("t"))
        .await
        .unwrap();
    assert!(is_not_found(
        db.create_cluster_token(globex.id, cluster.id, token_named("x"))
            .await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.list_cluster_tokens(globex.id, cluster.id).await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.revoke_cluster_token(globex.id, token.token.id).await,
        EntityKind::ClusterToken
    ));
    db.verify_cluster_token(token.secret.expose())
        .await
        .unwrap();
}

async fn token_usage_is_coalesced(db: Db) {
    let acme = org(&db, "acme").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    let token = db
        .create_cluster_token(acme.id, cluster.id, token_named("t"))
        .await
        .unwrap();
    let stored_last_used = || async {
        kube_cluster_token::Entity::find_by_id(token.token.id)
            .one(db.connection())
            .await
            .unwrap()
            .unwrap()
            .last_used_at
    };

    assert_eq!(db.flush_token_usage().await.unwrap(), 0);
    for _ in 0..5 {
        db.verify_cluster_token(token.secret.expose())
            .await
            .unwrap();
    }
    // Verification wrote nothing, but the listing already shows the use.
    assert_eq!(stored_last_used().await, None);
    let listed = db.list_cluster_tokens(acme.id, cluster.id).await.unwrap();
    let in_memory = listed[0].last_used_at.expect("pending use is listed");

    // Five uses, one write.
    assert_eq!(db.flush_token_usage().await.unwrap(), 1);
    let stored = stored_last_used().await.expect("flushed");
    assert_eq!(stored.with_timezone(&Utc), in_memory);
    assert_eq!(db.flush_token_usage().await.unwrap(), 0);

    // A failed verification records nothing.
    db.revoke_cluster_token(acme.id, token.token.id)
        .await
        .unwrap();
    assert!(
        db.verify_cluster_token(token.secret.expose())
            .await
            .is_err()
    );
    assert_eq!(db.flush_token_usage().await.unwrap(), 0);
}

async fn workspaces(db: Db) {
    let acme = org(&db, "acme").await;
    let created = db
        .create_workspace(acme.id, new_workspace(acme.user, "dev"))
        .await
        .unwrap();
    assert_eq!(created.status, WorkspaceStatus::Pending);
    assert_eq!(created.desired_state, DesiredState::Running);
    assert_eq!(created.version, 1);
    assert_eq!(created.cluster_id, None);
    assert_eq!(created.owner_id, acme.user);
    assert_eq!(
        db.get_workspace(acme.id, created.id).await.unwrap(),
        created
    );
    assert_eq!(
        db.list_workspaces(acme.id).await.unwrap(),
        vec![created.clone()]
    );
    assert!(matches!(
        db.create_workspace(acme.id, new_workspace(acme.user, "dev"))
            .await,
        Err(DbError::AlreadyExists {
            entity: EntityKind::Workspace,
            ..
        })
    ));
    let mut negative = new_workspace(acme.user, "neg");
    negative.memory_bytes = -1;
    assert!(matches!(
        db.create_workspace(acme.id, negative).await,
        Err(DbError::InvalidInput {
            field: "memory_bytes",
            ..
        })
    ));

    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    let scheduling = db
        .transition_workspace(
            acme.id,
            created.id,
            1,
            WorkspaceTransition::to(WorkspaceStatus::Scheduling),
        )
        .await
        .unwrap();
    assert_eq!(scheduling.version, 2);
    let placed = db
        .place_workspace(acme.id, created.id, 2, cluster.id, "lapdev-workspaces")
        .await
        .unwrap();
    assert_eq!(placed.status, WorkspaceStatus::Creating);
    assert_eq!(placed.cluster_id, Some(cluster.id));
    assert_eq!(placed.namespace.as_deref(), Some("lapdev-workspaces"));
    assert_eq!(placed.version, 3);
    assert_eq!(
        db.list_cluster_workspaces(acme.id, cluster.id)
            .await
            .unwrap(),
        vec![placed.clone()]
    );
    // A cluster with a live workspace cannot be deleted.
    assert!(matches!(
        db.delete_cluster(acme.id, cluster.id).await,
        Err(DbError::InUse {
            user_kind: EntityKind::Workspace,
            ..
        })
    ));

    let running = db
        .transition_workspace(
            acme.id,
            created.id,
            3,
            WorkspaceTransition {
                pod_name: Some("ws-dev-0".into()),
                ..WorkspaceTransition::to(WorkspaceStatus::Running).message("pod ready")
            },
        )
        .await
        .unwrap();
    assert_eq!(running.pod_name.as_deref(), Some("ws-dev-0"));
    assert_eq!(running.status_message.as_deref(), Some("pod ready"));
    assert!(running.updated_at >= created.updated_at);
    assert_eq!(
        db.get_workspace(acme.id, created.id).await.unwrap(),
        running
    );

    let stopping = db
        .set_workspace_desired_state(acme.id, created.id, 4, DesiredState::Stopped)
        .await
        .unwrap();
    assert_eq!(stopping.desired_state, DesiredState::Stopped);
    assert_eq!(stopping.status, WorkspaceStatus::Running);
    assert_eq!(stopping.version, 5);
    // The pod name is kept when a transition does not name one.
    let stopping = db
        .transition_workspace(
            acme.id,
            created.id,
            5,
            WorkspaceTransition::to(WorkspaceStatus::Stopping),
        )
        .await
        .unwrap();
    assert_eq!(stopping.pod_name.as_deref(), Some("ws-dev-0"));
    assert_eq!(stopping.status_message, None);
}

async fn workspace_transitions(db: Db) {
    let acme = org(&db, "acme").await;
    let ws = db
        .create_workspace(acme.id, new_workspace(acme.user, "dev"))
        .await
        .unwrap();
    // Not allowed: pending -> running.
    let err = db
        .transition_workspace(
            acme.id,
            ws.id,
            1,
            WorkspaceTransition::to(WorkspaceStatus::Running),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DbError::InvalidTransition {
                from: WorkspaceStatus::Pending,
                to: WorkspaceStatus::Running,
                ..
            }
        ),
        "{err:?}"
    );
    // A stale version loses, even for an allowed transition.
    db.transition_workspace(
        acme.id,
        ws.id,
        1,
        WorkspaceTransition::to(WorkspaceStatus::Scheduling),
    )
    .await
    .unwrap();
    let stale = db
        .transition_workspace(
            acme.id,
            ws.id,
            1,
            WorkspaceTransition::to(WorkspaceStatus::Failed),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(DbError::Conflict {
                expected_version: 1,
                ..
            })
        ),
        "{stale:?}"
    );
    let current = db.get_workspace(acme.id, ws.id).await.unwrap();
    assert_eq!(current.status, WorkspaceStatus::Scheduling);
    assert_eq!(current.version, 2);
    assert!(matches!(
        db.place_workspace(acme.id, ws.id, 1, Uuid::new_v4(), "ns")
            .await,
        Err(DbError::Conflict { .. })
    ));
    assert!(matches!(
        db.set_workspace_desired_state(acme.id, ws.id, 1, DesiredState::Stopped)
            .await,
        Err(DbError::Conflict { .. })
    ));
    assert!(is_not_found(
        db.place_workspace(acme.id, ws.id, 2, Uuid::new_v4(), "ns")
            .await,
        EntityKind::Cluster
    ));
    assert!(is_not_found(
        db.transition_workspace(
            acme.id,
            Uuid::new_v4(),
            1,
            WorkspaceTransition::to(WorkspaceStatus::Failed)
        )
        .await,
        EntityKind::Workspace
    ));

    // Once deletion is asked for it cannot be taken back.
    db.set_workspace_desired_state(acme.id, ws.id, 2, DesiredState::Deleted)
        .await
        .unwrap();
    assert!(matches!(
        db.set_workspace_desired_state(acme.id, ws.id, 3, DesiredState::Running)
            .await,
        Err(DbError::InvalidInput {
            field: "desired_state",
            ..
        })
    ));
}

async fn workspace_isolation(db: Db) {
    let acme = org(&db, "acme").await;
    let globex = org(&db, "globex").await;
    let ws = db
        .create_workspace(acme.id, new_workspace(acme.user, "dev"))
        .await
        .unwrap();
    let globex_cluster = db
        .create_cluster(globex.id, NewCluster::named("theirs"))
        .await
        .unwrap();

    // Another organisation's user cannot own a workspace here.
    assert!(is_not_found(
        db.create_workspace(globex.id, new_workspace(acme.user, "x"))
            .await,
        EntityKind::User
    ));
    assert!(is_not_found(
        db.get_workspace(globex.id, ws.id).await,
        EntityKind::Workspace
    ));
    assert!(db.list_workspaces(globex.id).await.unwrap().is_empty());
    assert!(is_not_found(
        db.transition_workspace(
            globex.id,
            ws.id,
            1,
            WorkspaceTransition::to(WorkspaceStatus::Scheduling)
        )
        .await,
        EntityKind::Workspace
    ));
    assert!(is_not_found(
        db.set_workspace_desired_state(globex.id, ws.id, 1, DesiredState::Deleted)
            .await,
        EntityKind::Workspace
    ));
    assert!(is_not_found(
        db.delete_workspace(globex.id, ws.id, 1).await,
        EntityKind::Workspace
    ));
    // A workspace cannot be placed on another organisation's cluster.
    let scheduling = db
        .transition_workspace(
            acme.id,
            ws.id,
            1,
            WorkspaceTransition::to(WorkspaceStatus::Scheduling),
        )
        .await
        .unwrap();
    assert!(is_not_found(
        db.place_workspace(acme.id, ws.id, 2, globex_cluster.id, "ns")
            .await,
        EntityKind::Cluster
    ));
    assert!(
        db.list_cluster_workspaces(globex.id, globex_cluster.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.get_workspace(acme.id, ws.id).await.unwrap(), scheduling);
}

async fn concurrent_transitions_have_one_winner(db: Db) {
    let acme = org(&db, "acme").await;
    let ws = db
        .create_workspace(acme.id, new_workspace(acme.user, "dev"))
        .await
        .unwrap();
    // Every writer read version 1 and wants a different, individually allowed, next
    // status; the database must let exactly one of them through.
    let targets = [
        WorkspaceStatus::Scheduling,
        WorkspaceStatus::Failed,
        WorkspaceStatus::Deleting,
        WorkspaceStatus::Scheduling,
        WorkspaceStatus::Failed,
        WorkspaceStatus::Deleting,
        WorkspaceStatus::Scheduling,
        WorkspaceStatus::Failed,
    ];
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(targets.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let db = db.clone();
        let barrier = barrier.clone();
        let (org_id, id) = (acme.id, ws.id);
        tasks.spawn(async move {
            barrier.wait().await;
            let result = db
                .transition_workspace(org_id, id, 1, WorkspaceTransition::to(target))
                .await;
            (target, result)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (target, result) = joined.unwrap();
        match result {
            Ok(written) => winners.push((target, written)),
            Err(DbError::Conflict { .. }) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer must win: {winners:?}");
    let (target, written) = &winners[0];
    let stored = db.get_workspace(acme.id, ws.id).await.unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.status, *target);
    assert_eq!(&stored, written);
}

async fn workspace_deletion(db: Db) {
    let acme = org(&db, "acme").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("prod"))
        .await
        .unwrap();
    // Never placed: can be deleted right away.
    let unplaced = db
        .create_workspace(acme.id, new_workspace(acme.user, "a"))
        .await
        .unwrap();
    assert!(matches!(
        db.delete_workspace(acme.id, unplaced.id, 7).await,
        Err(DbError::Conflict { .. })
    ));
    db.delete_workspace(acme.id, unplaced.id, 1).await.unwrap();
    assert!(is_not_found(
        db.get_workspace(acme.id, unplaced.id).await,
        EntityKind::Workspace
    ));
    assert!(is_not_found(
        db.delete_workspace(acme.id, unplaced.id, 2).await,
        EntityKind::Workspace
    ));
    // The row stays, marked deleted, and the name is free again.
    let row = kube_workspace::Entity::find_by_id(unplaced.id)
        .one(db.connection())
        .await
        .unwrap()
        .unwrap();
    assert!(row.deleted_at.is_some());
    assert_eq!(row.status, "deleted");
    db.create_workspace(acme.id, new_workspace(acme.user, "a"))
        .await
        .unwrap();

    // Running on a cluster: must go through `deleting` first.
    let ws = db
        .create_workspace(acme.id, new_workspace(acme.user, "b"))
        .await
        .unwrap();
    let ws = db
        .transition_workspace(
            acme.id,
            ws.id,
            ws.version,
            WorkspaceTransition::to(WorkspaceStatus::Scheduling),
        )
        .await
        .unwrap();
    let ws = db
        .place_workspace(acme.id, ws.id, ws.version, cluster.id, "ns")
        .await
        .unwrap();
    let ws = db
        .transition_workspace(
            acme.id,
            ws.id,
            ws.version,
            WorkspaceTransition::to(WorkspaceStatus::Running),
        )
        .await
        .unwrap();
    assert!(matches!(
        db.delete_workspace(acme.id, ws.id, ws.version).await,
        Err(DbError::InvalidTransition {
            from: WorkspaceStatus::Running,
            to: WorkspaceStatus::Deleted,
            ..
        })
    ));
    let ws = db
        .transition_workspace(
            acme.id,
            ws.id,
            ws.version,
            WorkspaceTransition::to(WorkspaceStatus::Deleting),
        )
        .await
        .unwrap();
    db.delete_workspace(acme.id, ws.id, ws.version)
        .await
        .unwrap();
    // With its last workspace gone, the cluster can be deleted.
    db.delete_cluster(acme.id, cluster.id).await.unwrap();
}

async fn requested_resources(db: Db) {
    let acme = org(&db, "acme").await;
    let globex = org(&db, "globex").await;
    let c1 = db
        .create_cluster(acme.id, NewCluster::named("c1"))
        .await
        .unwrap();
    let c2 = db
        .create_cluster(acme.id, NewCluster::named("c2"))
        .await
        .unwrap();
    let theirs = db
        .create_cluster(globex.id, NewCluster::named("c1"))
        .await
        .unwrap();

    async fn placed(
        db: &Db,
        org: &Org,
        name: &str,
        cluster: Uuid,
        cpu: i64,
    ) -> lapdev_db::Workspace {
        let mut new = new_workspace(org.user, name);
        new.cpu_millis = cpu;
        let ws = db.create_workspace(org.id, new).await.unwrap();
        let ws = db
            .transition_workspace(
                org.id,
                ws.id,
                1,
                WorkspaceTransition::to(WorkspaceStatus::Scheduling),
            )
            .await
            .unwrap();
        db.place_workspace(org.id, ws.id, ws.version, cluster, "ns")
            .await
            .unwrap()
    }
    placed(&db, &acme, "a", c1.id, 1_000).await;
    placed(&db, &acme, "b", c1.id, 500).await;
    placed(&db, &acme, "c", c2.id, 250).await;
    placed(&db, &globex, "z", theirs.id, 9_000).await;
    // A stopped workspace holds no CPU or memory.
    let stopped = placed(&db, &acme, "d", c2.id, 4_000).await;
    let stopped = db
        .transition_workspace(
            acme.id,
            stopped.id,
            stopped.version,
            WorkspaceTransition::to(WorkspaceStatus::Stopping),
        )
        .await
        .unwrap();
    db.transition_workspace(
        acme.id,
        stopped.id,
        stopped.version,
        WorkspaceTransition::to(WorkspaceStatus::Stopped),
    )
    .await
    .unwrap();
    // Unplaced workspaces count nowhere.
    db.create_workspace(acme.id, new_workspace(acme.user, "e"))
        .await
        .unwrap();

    let usage = db.cluster_requested_resources(acme.id).await.unwrap();
    assert_eq!(usage.len(), 2, "{usage:?}");
    assert_eq!(usage[&c1.id].cpu_millis, 1_500);
    assert_eq!(usage[&c1.id].memory_bytes, 8 << 30);
    assert_eq!(usage[&c1.id].storage_bytes, 20 << 30);
    assert_eq!(usage[&c1.id].workspaces, 2);
    assert_eq!(usage[&c2.id].cpu_millis, 250);
    assert_eq!(usage[&c2.id].workspaces, 1);
    let theirs_usage = db.cluster_requested_resources(globex.id).await.unwrap();
    assert_eq!(theirs_usage[&theirs.id].cpu_millis, 9_000);
}

async fn unsettled_workspaces(db: Db) {
    let acme = org(&db, "acme").await;
    let globex = org(&db, "globex").await;
    let cluster = db
        .create_cluster(acme.id, NewCluster::named("c"))
        .await
        .unwrap();
    let pending = db
        .create_workspace(acme.id, new_workspace(acme.user, "pending"))
        .await
        .unwrap();
    let other_org = db
        .create_workspace(globex.id, new_workspace(globex.user, "theirs"))
        .await
        .unwrap();
    let running = db
        .create_workspace(acme.id, new_workspace(acme.user, "running"))
        .await
        .unwrap();
    let running = db
        .transition_workspace(
            acme.id,
            running.id,
            1,
            WorkspaceTransition::to(WorkspaceStatus::Scheduling),
        )
        .await
        .unwrap();
    let running = db
        .place_workspace(acme.id, running.id, running.version, cluster.id, "ns")
        .await
        .unwrap();
    db.transition_workspace(
        acme.id,
        running.id,
        running.version,
        WorkspaceTransition::to(WorkspaceStatus::Running),
    )
    .await
    .unwrap();
    let deleted = db
        .create_workspace(acme.id, new_workspace(acme.user, "gone"))
        .await
        .unwrap();
    db.delete_workspace(acme.id, deleted.id, 1).await.unwrap();

    let mut ids: Vec<_> = db
        .list_unsettled_workspaces(chrono::Utc::now())
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    ids.sort();
    let mut expected = vec![pending.id, other_org.id];
    expected.sort();
    assert_eq!(ids, expected);
}

async fn token_usage_flush_writes_each_token(db: Db) {
    let acme = org(&db, "acme").await;
    let mut secrets = Vec::new();
    for name in ["a", "b"] {
        let cluster = db
            .create_cluster(acme.id, NewCluster::named(name))
            .await
            .unwrap();
        for t in ["t1", "t2"] {
            let token = db
                .create_cluster_token(acme.id, cluster.id, token_named(t))
                .await
                .unwrap();
            secrets.push((cluster.id, token));
        }
    }
    // Three of the four tokens are used, one after the other.
    for (_, token) in &secrets[..3] {
        db.verify_cluster_token(token.secret.expose())
            .await
            .unwrap();
    }
    let mut expected = std::collections::HashMap::new();
    for (cluster_id, _) in &secrets {
        for token in db.list_cluster_tokens(acme.id, *cluster_id).await.unwrap() {
            expected.insert(token.id, token.last_used_at);
        }
    }
    assert_eq!(db.flush_token_usage().await.unwrap(), 3);
    for (_, token) in &secrets {
        let stored = kube_cluster_token::Entity::find_by_id(token.token.id)
            .one(db.connection())
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .map(|t| t.with_timezone(&Utc));
        assert_eq!(stored, expected[&token.token.id], "{}", token.token.name);
    }
    assert!(expected[&secrets[2].1.token.id].is_some());
    assert_eq!(expected[&secrets[3].1.token.id], None);
}

#[tokio::test]
async fn connect_creates_the_sqlite_directory() {
    let dir = std::env::temp_dir().join(format!("lapdev_test_dir_{}", Uuid::new_v4().simple()));
    let url = format!("sqlite://{}/data/lapdev.db?mode=rwc", dir.display());
    let db = lapdev_db::connect(&url).await.unwrap();
    db.create_organization("acme").await.unwrap();
    db.close().await.unwrap();
    assert!(dir.join("data/lapdev.db").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Transactions that read and then write (deleting a cluster checks its
/// workspaces first) run beside other writers. On SQLite a deferred
/// transaction would fail its upgrade to a write lock with `SQLITE_BUSY` at
/// once whenever another connection writes; every write transaction must take
/// the lock at `BEGIN` and queue on the busy timeout instead.
async fn concurrent_read_then_write_transactions(db: Db) {
    let acme = org(&db, "acme").await;
    let mut ids = Vec::new();
    for i in 0..24 {
        let c = db
            .create_cluster(acme.id, NewCluster::named(format!("c{i}")))
            .await
            .unwrap();
        ids.push(c.id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().copied().enumerate() {
        let db = db.clone();
        let org = acme.id;
        tasks.spawn(async move {
            if i % 2 == 0 {
                db.delete_cluster(org, id).await.map(|_| ())
            } else {
                db.set_cluster_status(org, id, ClusterStatus::Error)
                    .await
                    .map(|_| ())
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap()
            .expect("a write beside other writers must wait, not fail");
    }
    let left = db.list_clusters(acme.id).await.unwrap();
    assert_eq!(left.len(), 12);
    assert!(left.iter().all(|c| c.status == ClusterStatus::Error));
}
