//! Fault tests: restart RabbitMQ, stop PostgreSQL, kill -9 workers — and prove that every
//! job still ends succeeded exactly once, with nothing dead-lettered by the outage.
//!
//! These tests stop shared services, so they run one at a time (a process-wide lock) and
//! in their own test binary (cargo runs test binaries one after another). A guard restarts
//! the service even when an assertion fails.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Semantic 8: a RabbitMQ restart mid-run: /readyz goes 503, the worker reconnects,
/// redeclares and finishes every job exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_restart_mid_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let out = env.run(&[
        "publish",
        "demo.sleep",
        "--payload",
        r#"{"ms":20}"#,
        "--count",
        "300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut w = env.worker(&["--queue", "default", "--prefetch", "10"]);
    w.wait_ready(T).await;
    eventually(T, "some jobs done", || async {
        env.count_status("succeeded").await >= 40
    })
    .await;
    rabbitmq_outage_seen_by(&w).await;
    // The harness's own connection died with the broker: make a fresh environment handle.
    let env = env.reconnect().await;
    eventually(Duration::from_secs(120), "all 300 succeeded", || async {
        env.count_status("succeeded").await == 300
    })
    .await;
    w.wait_ready(T).await;
    assert_eq!(env.job_rows().await, 300);
    assert!(metric(&w.metrics().await, "warren_broker_reconnects_total", &[]) >= 1.0);
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    assert_eq!(env.ready(&format!("{}.default.dlq", env.ns)).await, 0);
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "worker exited:\n{}",
        w.logs()
    );
    drop(w);
    env.cleanup().await;
}

/// Semantic 9: with PostgreSQL down the worker holds its prefetch and waits — no nack loop
/// burning delivery limits, nothing dead-lettered — and resumes when PostgreSQL returns.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_outage_pauses_work_without_burning_deliveries() {
    let _serial = SERIAL.lock().await;
    let config = format!("{FAST_CONFIG}\n[queues.default]\ndelivery_limit = 2\n");
    let env = TestEnv::new(&config).await;
    let mut w = env.worker(&["--queue", "default", "--prefetch", "5"]);
    w.wait_ready(T).await;
    let out = env.run(&[
        "publish",
        "demo.sleep",
        "--payload",
        r#"{"ms":50}"#,
        "--count",
        "20",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(T, "some jobs done", || async {
        env.count_status("succeeded").await >= 5
    })
    .await;
    {
        let _down = Outage::postgres();
        let out = env.run(&[
            "publish",
            "demo.sleep",
            "--payload",
            r#"{"ms":50}"#,
            "--count",
            "20",
        ]);
        assert!(
            out.status.success(),
            "publishing needs no database: {}",
            stderr(&out)
        );
        eventually(T, "/readyz 503 while PostgreSQL is down", || async {
            w.readyz_status().await == Some(503)
        })
        .await;
        // Long enough for a nack-requeue loop to blow through a delivery limit of 2 many
        // times over.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(env.ready(&format!("{}.default.dlq", env.ns)).await, 0);
        assert!(
            env.ready(&env.queue("default")).await >= 10,
            "the worker kept consuming"
        );
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "worker exited:\n{}",
            w.logs()
        );
    }
    eventually(T, "all 40 succeeded after PostgreSQL returned", || async {
        env.count_status("succeeded").await == 40
    })
    .await;
    assert_eq!(env.job_rows().await, 40);
    assert_eq!(env.ready(&format!("{}.default.dlq", env.ns)).await, 0);
    w.wait_ready(T).await;
    drop(w);
    env.cleanup().await;
}

/// Semantic 3: the ack waits for the ledger commit. A job whose handler finished while
/// PostgreSQL was down is not acked; killed then, it comes back and runs again.
#[tokio::test(flavor = "multi_thread")]
async fn ack_waits_for_the_ledger_commit() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let job = env
        .publish_json("demo.sleep", json!({"ms": 1500}), &id())
        .await;
    env.wait_status(&job, "running", T).await;
    {
        let _down = Outage::postgres();
        tokio::time::sleep(Duration::from_secs(3)).await; // the handler has returned by now
        w.kill9();
        eventually(T, "the unacked job back in its queue", || async {
            env.ready(&env.queue("default")).await == 1
        })
        .await;
    }
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let row = env.wait_status(&job, "succeeded", T).await;
    assert_eq!(row.attempts, 2, "{row:?}");
    drop(w);
    env.cleanup().await;
}

/// Semantic 10: kill -9 twice mid-run; after restarts every job is succeeded exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let out = env.run(&[
        "publish",
        "demo.sleep",
        "--payload",
        r#"{"ms":5}"#,
        "--count",
        "400",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for threshold in [60, 200] {
        let mut w = env.worker(&["--queue", "default", "--prefetch", "20"]);
        w.wait_ready(T).await;
        eventually(T, "progress", || async {
            env.count_status("succeeded").await >= threshold
        })
        .await;
        w.kill9();
    }
    let mut w = env.worker(&["--queue", "default", "--prefetch", "20"]);
    w.wait_ready(T).await;
    eventually(T, "all 400 succeeded", || async {
        env.count_status("succeeded").await == 400
    })
    .await;
    assert_eq!(env.job_rows().await, 400);
    eventually(T, "queue drained", || async {
        env.ready(&env.queue("default")).await == 0
    })
    .await;
    assert_eq!(env.ready(&format!("{}.default.dlq", env.ns)).await, 0);
    drop(w);
    env.cleanup().await;
}
