//! After changes may have been missed (`Change::Resync`), the cluster server
//! checks every cached cluster token against the database, not only the ones
//! holding a tunnel here: a token revoked on another replica loses its cached
//! answer at once, so it cannot serve as the stale-if-error fallback in a
//! database outage that follows. Tokens still valid keep theirs.

use std::time::Duration;

use lapdev_db::test_support::{TestDatabase, cluster_with_tokens};
use lapdev_hrpc::Code;
use lapdev_kube::server::{KubeClusterServer, KubeClusterServerConfig};

#[tokio::test]
async fn a_recheck_forgets_cached_tokens_revoked_elsewhere_and_keeps_the_rest() {
    let test_db = TestDatabase::postgres().await;
    let db = test_db.db().clone();
    let (org, _, tokens) = cluster_with_tokens(&db, &["revoked", "kept"]).await;
    let [revoked, kept] = &tokens[..] else {
        unreachable!()
    };
    let server = KubeClusterServer::new(
        db.clone(),
        KubeClusterServerConfig {
            token_cache_ttl: Duration::from_secs(3600),
            token_stale_if_error: Duration::from_secs(3600),
            ..KubeClusterServerConfig::default()
        },
    );
    // Both cached by heartbeats; neither holds a tunnel here.
    for t in [revoked, kept] {
        server.verifier().verify(t.secret.expose()).await.unwrap();
    }

    // Revoked on another replica; this one missed the notification.
    db.revoke_cluster_token(org, revoked.token.id)
        .await
        .unwrap();
    assert_eq!(server.recheck_tunnel_tokens().await.unwrap(), 1);

    // Then the database goes away.
    drop(test_db);
    let e = server
        .verifier()
        .verify(revoked.secret.expose())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e:?}");
    let identity = server
        .verifier()
        .verify(kept.secret.expose())
        .await
        .unwrap();
    assert_eq!(identity.token_id, kept.token.id);
}
