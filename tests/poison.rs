//! Hostile input: data PostgreSQL refuses must not stall the job ledger.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);

/// Second line of defence: the ledger batches many jobs per statement; one row PostgreSQL
/// refuses (class 22, data exception) is refused alone, the others in its batch are
/// written, and the `database` check stays up (PostgreSQL answered).
#[tokio::test(flavor = "multi_thread")]
async fn ledger_refuses_a_bad_row_alone_and_stays_healthy() {
    use warren_core::telemetry::Health;
    use warren_workers::ledger::{Finish, JobKey, Ledger, Status};

    let env = TestEnv::new(FAST_CONFIG).await;
    let health = Health::new(&["database"]);
    let ledger = Ledger::start(env.pool.clone(), health.clone(), 64, 1);
    let key = |job_id: &str, task: &str| {
        Arc::new(JobKey {
            job_id: job_id.to_owned(),
            task: task.to_owned(),
            queue: "default".into(),
        })
    };
    let finish = || Finish {
        status: Status::Succeeded,
        error: None,
        attempt_delta: 1,
        started_at: chrono::Utc::now(),
        fresh: true,
    };
    let (good, bad, good2) = (
        key(&id(), "demo.noop"),
        key(&id(), "demo.\u{0}"),
        key(&id(), "demo.noop"),
    );
    let (x, y, z) = tokio::time::timeout(SOON, async {
        tokio::join!(
            ledger.finish(good.clone(), finish()),
            ledger.finish(bad.clone(), finish()),
            ledger.finish(good2.clone(), finish()),
        )
    })
    .await
    .expect("a refused row must not stall the ledger");
    assert!(x.is_ok() && z.is_ok(), "{x:?} {z:?}");
    assert!(y.is_err(), "the NUL row was written?");
    assert_eq!(env.job(&good.job_id).await.unwrap().status, "succeeded");
    assert_eq!(env.job(&good2.job_id).await.unwrap().status, "succeeded");
    assert!(env.job(&bad.job_id).await.is_none());
    // A check of an id PostgreSQL refuses is refused too, alone.
    let (c1, c2) = tokio::time::timeout(SOON, async {
        tokio::join!(
            ledger.check(key("a\u{0}", "demo.noop")),
            ledger.check(good.clone())
        )
    })
    .await
    .expect("a refused check must not stall the ledger");
    assert!(c1.is_err() && c2.is_ok(), "{c1:?} {c2:?}");
    assert!(health.is_up("database"));
    drop(ledger);
    env.cleanup().await;
}
