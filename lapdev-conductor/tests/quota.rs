//! Quotas at create and start, on PostgreSQL and SQLite: concurrent creates
//! never exceed a limit, refusals say it in numbers, and a start is admitted
//! like a create.

mod common;

use std::time::Duration;

use common::{Env, GIB, Mode, env_on};
use lapdev_common::quota::{QuotaLimits, QuotaResource, QuotaScope};
use lapdev_common::status::DesiredState;
use lapdev_conductor::{ConductorConfig, ConductorError};
use lapdev_db::DbError;
use lapdev_db::test_support::TestDatabase;
use lapdev_hrpc::{Code, HrpcError};

fn config() -> ConductorConfig {
    ConductorConfig {
        rpc_timeout: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        ..Default::default()
    }
}

async fn concurrent_creates_never_exceed_the_quota(e: Env) {
    e.cluster("big", 64_000, 256, "europe-west1", Mode::Normal)
        .await;
    // The member may run 8 CPU; the organisation 6 workspaces in all… but a
    // second member already runs one, so 5 are left for this one: of 20
    // concurrent 1-CPU creates exactly 5 succeed (the organisation's limit
    // binds before the member's 8).
    e.db.set_quota(
        e.org,
        QuotaScope::EachMember,
        QuotaLimits {
            cpu_millis: Some(8000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    e.db.set_quota(
        e.org,
        QuotaScope::Organization,
        QuotaLimits {
            running_workspaces: Some(6),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let other =
        e.db.create_user(
            e.org,
            lapdev_db::NewUser {
                name: "other".into(),
                email: None,
            },
        )
        .await
        .unwrap()
        .id;
    e.conductor
        .create_workspace(e.org, other, e.request("theirs", 1000, 1))
        .await
        .unwrap();

    let creates: Vec<_> = (0..20)
        .map(|i| {
            let conductor = e.conductor.clone();
            let req = e.request(&format!("w{i}"), 1000, 1);
            let (org, owner) = (e.org, e.owner);
            tokio::spawn(async move { conductor.create_workspace(org, owner, req).await })
        })
        .collect();
    let mut ok = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ConductorError::Db(DbError::QuotaExceeded(q))) => {
                assert_eq!(q.resource, QuotaResource::RunningWorkspaces);
                assert_eq!(q.limit, 6);
                assert_eq!(q.used, 6);
                let e: HrpcError = ConductorError::Db(DbError::QuotaExceeded(q)).into();
                assert_eq!(e.code, Code::ResourceExhausted);
                assert_eq!(
                    e.message,
                    "the organisation's running workspaces are 6 of 6 allowed; stop one first"
                );
            }
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    }
    assert_eq!(ok, 5, "exactly the allowed creates succeed");
    let live = e.db.list_workspaces(e.org).await.unwrap();
    assert_eq!(live.len(), 6, "refused creates leave no row");
    let usage = e.db.quota_usage(e.org, None).await.unwrap();
    assert_eq!(usage.running_workspaces, 6);
    assert_eq!(usage.cpu_millis, 6000);
}

#[tokio::test]
async fn concurrent_creates_never_exceed_the_quota_on_postgres() {
    concurrent_creates_never_exceed_the_quota(
        env_on(TestDatabase::postgres().await, config()).await,
    )
    .await;
}

#[tokio::test]
async fn concurrent_creates_never_exceed_the_quota_on_sqlite() {
    concurrent_creates_never_exceed_the_quota(env_on(TestDatabase::sqlite().await, config()).await)
        .await;
}

#[tokio::test]
async fn a_start_is_admitted_like_a_create_and_refusals_say_it_in_numbers() {
    let e = env_on(TestDatabase::postgres().await, config()).await;
    e.cluster("big", 64_000, 256, "europe-west1", Mode::Normal)
        .await;
    e.db.set_quota(
        e.org,
        QuotaScope::Member(e.owner),
        QuotaLimits {
            cpu_millis: Some(8000),
            storage_bytes: Some(20 * GIB),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // 4 + 2 CPU run; a 4-CPU third one is refused with the numbers.
    let a = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("a", 4000, 1))
        .await
        .unwrap();
    e.conductor
        .create_workspace(e.org, e.owner, e.request("b", 2000, 1))
        .await
        .unwrap();
    let refused = e
        .conductor
        .create_workspace(e.org, e.owner, e.request("c", 4000, 1))
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "your running workspaces request 6 of 8 CPU; this one needs 4"
    );

    // Stopped, `a` frees its CPU (not its storage) and `c` fits.
    e.conductor
        .set_desired_state(e.org, a.id, DesiredState::Stopped)
        .await
        .unwrap();
    e.conductor
        .create_workspace(e.org, e.owner, e.request("c", 4000, 1))
        .await
        .unwrap();
    // Starting `a` again would need 4 CPU on top of 6: refused, and it stays
    // stopped.
    let start = e
        .conductor
        .set_desired_state(e.org, a.id, DesiredState::Running)
        .await
        .unwrap_err();
    assert_eq!(
        start.to_string(),
        "your running workspaces request 6 of 8 CPU; this one needs 4"
    );
    assert_eq!(e.get(a.id).await.desired_state, DesiredState::Stopped);
    // Storage counts stopped workspaces too: three 5 GiB volumes of 20 GiB.
    let storage = e
        .conductor
        .create_workspace(e.org, e.owner, {
            let mut r = e.request("d", 1000, 1);
            r.storage_bytes = 6 * GIB;
            r
        })
        .await
        .unwrap_err();
    assert_eq!(
        storage.to_string(),
        "your workspaces request 15 GiB of 20 GiB storage; this one needs 6 GiB"
    );
    // Raising the limit lets the start through.
    e.db.set_quota(
        e.org,
        QuotaScope::Member(e.owner),
        QuotaLimits {
            cpu_millis: Some(10_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let started = e
        .conductor
        .set_desired_state(e.org, a.id, DesiredState::Running)
        .await
        .unwrap();
    assert_eq!(started.desired_state, DesiredState::Running);
    // Removing every limit removes the quota.
    e.db.set_quota(e.org, QuotaScope::Member(e.owner), QuotaLimits::default())
        .await
        .unwrap();
    assert!(e.db.quotas(e.org).await.unwrap().members.is_empty());
}

#[tokio::test]
async fn negative_limits_are_refused() {
    let e = env_on(TestDatabase::sqlite().await, config()).await;
    let err =
        e.db.set_quota(
            e.org,
            QuotaScope::Organization,
            QuotaLimits {
                memory_bytes: Some(-1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DbError::InvalidInput {
                field: "memory_bytes",
                ..
            }
        ),
        "{err:?}"
    );
}
