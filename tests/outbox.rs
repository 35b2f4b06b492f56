//! The transactional outbox and delayed jobs, against the real RabbitMQ and
//! PostgreSQL: rows written with plain SQL in the application's own transaction are run once
//! when it commits and never when it rolls back; two relays never publish a row twice;
//! short delays wait in a delay tier, long ones in PostgreSQL.

mod common;

use common::*;
use futures::StreamExt;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn relay(env: &TestEnv) -> Worker {
    env.spawn(&["relay", "--relay-interval", "100ms"], &[])
}

async fn outbox_published(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM warren_outbox WHERE published_at IS NOT NULL")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Acceptance: a row inserted by psql in a committed transaction runs once; one in a
/// rolled-back transaction never runs.
#[tokio::test(flavor = "multi_thread")]
async fn committed_rows_run_once_and_rolled_back_rows_never() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([&env.db_url, "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql: {}", stderr(&out));
    };
    psql(
        "BEGIN;
         INSERT INTO warren_outbox (id, task, payload) VALUES ('ob-commit', 'demo.sleep', '{\"ms\": 5}');
         COMMIT;",
    );
    psql(
        "BEGIN;
         INSERT INTO warren_outbox (id, task, payload) VALUES ('ob-rollback', 'demo.noop', '{}');
         ROLLBACK;",
    );
    let _relay = relay(&env);
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    let row = env.wait_status("ob-commit", "succeeded", T).await;
    assert_eq!(row.attempts, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.job("ob-rollback").await.is_none(),
        "a rolled-back row ran"
    );
    assert_eq!(outbox_published(&env).await, 1);
    let m = worker.metrics().await;
    assert_eq!(
        metric(
            &m,
            "warren_jobs_processed_total",
            &["outcome=\"succeeded\""]
        ),
        1.0,
        "{m}"
    );
    env.cleanup().await;
}

/// Acceptance: two relays on the same table never publish a row twice.
#[tokio::test(flavor = "multi_thread")]
async fn two_relays_never_double_publish() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut spy = env.spy("demo.noop").await;
    sqlx::query(
        "INSERT INTO warren_outbox (id, task, payload)
         SELECT 'ob-' || g, 'demo.noop', jsonb_build_object('n', g) FROM generate_series(1, 2000) g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // Small batches, so the two relays interleave on the same rows.
    let _a = env.spawn(
        &["relay", "--relay-interval", "50ms", "--relay-batch", "50"],
        &[],
    );
    let _b = env.spawn(
        &["relay", "--relay-interval", "50ms", "--relay-batch", "50"],
        &[],
    );
    let mut seen = HashSet::new();
    let deadline = Instant::now() + T;
    while seen.len() < 2000 {
        assert!(
            Instant::now() < deadline,
            "only {} of 2000 published",
            seen.len()
        );
        let d = tokio::time::timeout(Duration::from_secs(10), spy.next())
            .await
            .expect("relays stalled")
            .unwrap()
            .unwrap();
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        assert!(seen.insert(id.clone()), "{id} published twice");
    }
    // Nothing more arrives: no row was published twice after the last one either.
    let extra = tokio::time::timeout(Duration::from_secs(2), spy.next()).await;
    assert!(extra.is_err(), "a message after all 2000: {extra:?}");
    assert_eq!(outbox_published(&env).await, 2000);
    env.cleanup().await;
}

/// A task no queue receives is deferred with the reason and does not block other rows.
#[tokio::test(flavor = "multi_thread")]
async fn unroutable_rows_are_deferred_with_the_reason() {
    let env = TestEnv::new(FAST_CONFIG).await;
    sqlx::query(
        "INSERT INTO warren_outbox (id, task, payload) VALUES
            ('ob-lost', 'nobody.listens', '{}'), ('ob-fine', 'demo.noop', '{}')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let _relay = relay(&env);
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    env.wait_status("ob-fine", "succeeded", T).await;
    eventually(T, "the unroutable row deferred", || async {
        let (attempts, error, later): (i32, Option<String>, bool) = sqlx::query_as(
            "SELECT publish_attempts, last_error, run_at > now() FROM warren_outbox
              WHERE id = 'ob-lost' AND published_at IS NULL",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        attempts >= 1 && later && error.unwrap_or_default().contains("nobody.listens")
    })
    .await;
    env.cleanup().await;
}

/// Rows written by hand outside the wire limits (a 300-byte task name or id, a 200 KB
/// tenant) are deferred with the field named, never reach the broker, and do not hold up
/// the rows beside them or cost the relay its connection.
#[tokio::test(flavor = "multi_thread")]
async fn rows_outside_the_limits_are_deferred_naming_the_field() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let (long, tenant) = ("x".repeat(300), "t".repeat(200_000));
    sqlx::query(
        "INSERT INTO warren_outbox (id, task, payload, tenant) VALUES
            ('ob-long-task', $1, '{}', NULL), ($1, 'demo.noop', '{}', NULL),
            ('ob-big-tenant', 'demo.noop', '{}', $2), ('ob-fine', 'demo.noop', '{}', NULL)",
    )
    .bind(&long)
    .bind(&tenant)
    .execute(&env.pool)
    .await
    .unwrap();
    let relay = relay(&env);
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    env.wait_status("ob-fine", "succeeded", T).await;
    for (id, field) in [
        ("ob-long-task", "routing key"),
        (long.as_str(), "id"),
        ("ob-big-tenant", "headers"),
    ] {
        eventually(T, &format!("{field} deferred"), || async {
            let row: Option<(i32, Option<String>)> = sqlx::query_as(
                "SELECT publish_attempts, last_error FROM warren_outbox
                  WHERE id = $1 AND published_at IS NULL",
            )
            .bind(id)
            .fetch_optional(&env.pool)
            .await
            .unwrap();
            row.is_some_and(|(attempts, error)| {
                attempts >= 1 && error.unwrap_or_default().contains(field)
            })
        })
        .await;
    }
    assert_eq!(
        metric(
            &relay.metrics().await,
            "warren_broker_reconnects_total",
            &[]
        ),
        0.0,
        "{}",
        relay.logs()
    );
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM warren_outbox WHERE published_at IS NOT NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(published, 1);
    env.cleanup().await;
}

/// Acceptance: a job delayed 3 s runs no sooner than 3 s (it waits in a delay tier, not in
/// a consumer).
#[tokio::test(flavor = "multi_thread")]
async fn a_three_second_delay_runs_no_sooner() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    let started = Instant::now();
    let out = env.run(&[
        "publish",
        "demo.noop",
        "--id",
        "delayed-3s",
        "--delay",
        "3s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // While it waits, nothing is delivered to the worker.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(env.job("delayed-3s").await.is_none(), "ran before 3 s");
    assert!(!worker.metrics().await.contains("outcome=\"succeeded\""));
    env.wait_status("delayed-3s", "succeeded", Duration::from_secs(20))
        .await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "ran after {waited:?}");

    // An unknown task is refused at once, even though a delay tier would accept anything.
    let out = env.run(&["publish", "nobody.listens", "--delay", "3s"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nobody.listens"), "{}", stderr(&out));
    env.cleanup().await;
}

/// Acceptance: a job delayed 2 h is held in PostgreSQL, not in the broker or a consumer, and
/// runs when due (the test moves its `run_at` instead of waiting two hours).
#[tokio::test(flavor = "multi_thread")]
async fn a_two_hour_delay_is_held_in_postgres_and_runs_when_due() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let _relay = relay(&env);
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    let out = env.run(&[
        "publish",
        "demo.noop",
        "--id",
        "delayed-2h",
        "--delay",
        "2h",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("held 1 job(s) in the outbox"),
        "{}",
        stderr(&out)
    );
    let due_in: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM run_at - now())::float8 FROM warren_outbox
          WHERE id = 'delayed-2h' AND published_at IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!((7000.0..=7200.0).contains(&due_in), "due in {due_in}s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    for tier in ["200ms", "600ms", "1500ms", "3s"] {
        let q = format!("{}.delay.{tier}", env.ns);
        assert_eq!(env.ready(&q).await, 0, "{q} holds the job");
    }
    assert!(env.job("delayed-2h").await.is_none());

    // Two hours pass.
    sqlx::query("UPDATE warren_outbox SET run_at = now() WHERE id = 'delayed-2h'")
        .execute(&env.pool)
        .await
        .unwrap();
    env.wait_status("delayed-2h", "succeeded", T).await;
    env.cleanup().await;
}

/// `examples/sql/outbox.sql` as a user would run it: both jobs succeed, the second no
/// sooner than its `run_at`.
#[tokio::test(flavor = "multi_thread")]
async fn the_sql_example_runs() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let _relay = relay(&env);
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sql/outbox.sql");
    let out = std::process::Command::new("psql")
        .args([&env.db_url, "-v", "ON_ERROR_STOP=1", "-f", example])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql: {}", stderr(&out));
    let first: String =
        sqlx::query_scalar("SELECT id FROM warren_outbox WHERE task = 'demo.sleep'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    env.wait_status(&first, "succeeded", T).await;
    let (ran_after_due,): (bool,) = {
        env.wait_status("example-receipt-42", "succeeded", T).await;
        sqlx::query_as(
            "SELECT j.updated_at >= o.run_at FROM job_runs j
               JOIN warren_outbox o ON o.id = j.job_id WHERE j.job_id = 'example-receipt-42'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    assert!(ran_after_due, "ran before its run_at");
    env.cleanup().await;
}
