//! Issue #7's money fault cases (1, 2, 12, 13, 14): crashes, failed commits, provider error
//! storms and duplicate deliveries around a renewal charge, with the real workers, provider
//! simulator, RabbitMQ and PostgreSQL. None of them stops a service: a worker is `kill -9`'d,
//! its PostgreSQL connections are terminated, or the simulator misbehaves. Each case ends with
//! issue #7's global invariants: the money invariant (`common::money::assert_money`: at most
//! one paid charge per subscription and period, the simulator's ledger equal to
//! `payment_transactions`), and every job — the test's and any the scheduler enqueued —
//! succeeded or dead-lettered with its reason, none retried without bound
//! (`common::invariants::assert_invariants`).
//!
//! Every window is opened by a poll, never by a sleep: the simulator's ledger
//! (`GET /__sim/charges`) says when a charge exists, `pg_stat_activity` when a commit waits.

mod common;

use common::invariants::assert_invariants;
use common::money::assert_money;
use common::sim::*;
use common::*;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;
use warren_core::billing::renewal_key;

/// Short retry tiers, so a retried renewal comes back quickly; unknown outcomes given up on
/// after 3 s ([`BILLING`]).
fn config() -> String {
    format!("[retry]\ntiers = [\"200ms\", \"500ms\", \"1s\"]\n{BILLING}")
}

const T: Duration = Duration::from_secs(90);

/// Publishes the first renewal attempt of `sub`'s period ending `end` as job `id`; returns
/// the charge's idempotency key.
async fn publish_renewal(
    env: &TestEnv,
    sub: Uuid,
    end: chrono::DateTime<chrono::Utc>,
    id: &str,
) -> String {
    let payload = json!({ "subscription_id": sub, "period_end": end.to_rfc3339() });
    env.publish_json("renewal.pagarme", payload, id).await;
    renewal_key(sub, end, 1)
}

/// The `payment_transactions` status of `key`, if it has a row.
async fn row_status(env: &TestEnv, key: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM payment_transactions WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

/// Provider calls a worker made for `operation`, with `outcome` or any.
async fn provider_calls(w: &Worker, operation: &str, outcome: Option<&str>) -> f64 {
    let op = format!("operation=\"{operation}\"");
    let out = outcome.map(|o| format!("outcome=\"{o}\""));
    let mut must = vec![op.as_str()];
    must.extend(out.as_deref());
    metric(&w.metrics().await, "warren_provider_requests_total", &must)
}

/// Deliveries of `task` a worker finished with `outcome`.
async fn processed(w: &Worker, task: &str, outcome: &str) -> f64 {
    metric(
        &w.metrics().await,
        "warren_jobs_processed_total",
        &[
            &format!("task=\"{task}\""),
            &format!("outcome=\"{outcome}\""),
        ],
    )
}

/// Case 1: the provider has charged, the worker has not heard back (so has not committed or
/// acked) and is `kill -9`'d. The replacement reconciles by lookup: paid, one charge.
#[tokio::test(flavor = "multi_thread")]
async fn case_01_kill9_after_provider_charged_before_commit() {
    let env = TestEnv::new(&config()).await;
    // `_timeout`: the simulator records the charge as paid, then holds its answer for 30 s;
    // with a 3 s client timeout the worker sits in that window for 3 s.
    let (sub, end) = pagarme_subscription(&env, "card_c01_timeout").await;
    let sim = simulator(&env, 0).await;
    let slow_client = [("WARREN_PROVIDER_TIMEOUT", "3s")];
    let mut victim = renewal_worker_with(&env, &sim, "32", &slow_client);
    victim.wait_ready(T).await;
    let key = publish_renewal(&env, sub, end, "case01").await;
    eventually(T, "the charge recorded by the simulator", || async {
        sim.charges().await.contains_key(&key)
    })
    .await;
    victim.kill9();
    // The kill landed in the window: charged, and the row still says only that a try began.
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("pending"));
    let job = env.job("case01").await;
    assert!(
        job.as_ref().is_none_or(|j| j.status == "running"),
        "{job:?}"
    );

    // The same client timeout, hence the same key lease: the replacement waits out the
    // dead worker's lease once, then asks the provider instead of charging.
    let fresh = renewal_worker_with(&env, &sim, "32", &slow_client);
    env.wait_status("case01", "succeeded", T).await;
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    // Reconciled by lookup; the replacement never called charge.
    assert_eq!(provider_calls(&fresh, "lookup", Some("paid")).await, 1.0);
    assert_eq!(provider_calls(&fresh, "charge", None).await, 0.0);
    assert_eq!(sim.charges().await.len(), 1);
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;
    assert_invariants(&env, &["case01".into()], T).await;
    env.cleanup().await;
}

/// Case 2: a worker is `kill -9`'d after it committed its `pending` rows (the keys' leases)
/// but before its calls reached the provider. The replacement waits out the leases, finds no
/// charge by lookup and charges each key once.
#[tokio::test(flavor = "multi_thread")]
async fn case_02_kill9_before_provider_call() {
    let env = TestEnv::new(&config()).await;
    let mut keys = Vec::new();
    let sim = simulator(&env, 0).await;
    // One provider call per second: after the first charge the others wait in the limiter,
    // their rows committed and no request sent.
    let mut victim = renewal_worker(&env, &sim, "1");
    victim.wait_ready(T).await;
    for i in 0..4 {
        let (sub, end) = pagarme_subscription(&env, &format!("card_c02{i}_ok")).await;
        keys.push(publish_renewal(&env, sub, end, &format!("case02-{i}")).await);
    }
    eventually(T, "the first charge", || async {
        !sim.charges().await.is_empty()
    })
    .await;
    victim.kill9();
    let charged = sim.charges().await;
    let mut waiting = 0;
    for k in &keys {
        if row_status(&env, k).await.as_deref() == Some("pending") && !charged.contains_key(k) {
            waiting += 1;
        }
    }
    assert!(
        waiting >= 1,
        "no renewal was between its commit and its provider call at the kill: {charged:?}"
    );

    let fresh = renewal_worker(&env, &sim, "100");
    for i in 0..4 {
        env.wait_status(&format!("case02-{i}"), "succeeded", T)
            .await;
    }
    let charges = sim.charges().await;
    assert_eq!(charges.len(), 4, "{charges:?}");
    for k in &keys {
        assert_eq!(row_status(&env, k).await.as_deref(), Some("paid"), "{k}");
    }
    // The replacement looked up the keys the victim had charged before charging anything.
    assert!(provider_calls(&fresh, "lookup", None).await >= 1.0);
    assert_eq!(
        provider_calls(&fresh, "charge", Some("paid")).await,
        (4 - (charged.len())) as f64
    );
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;
    let jobs: Vec<String> = (0..4).map(|i| format!("case02-{i}")).collect();
    assert_invariants(&env, &jobs, T).await;
    env.cleanup().await;
}

/// Case 12: the commit after a successful charge fails. The test holds the subscription's
/// row lock, so the worker's `paid` transaction blocks right after the simulator recorded the
/// charge; then every PostgreSQL connection of the worker is terminated
/// (`pg_terminate_backend`; PostgreSQL itself stays up). The retry reconciles: one charge, paid.
#[tokio::test(flavor = "multi_thread")]
async fn case_12_commit_fails_after_provider_charged() {
    let env = TestEnv::new(&config()).await;
    let (sub, end) = pagarme_subscription(&env, "card_c12_ok").await;
    let sim = simulator(&env, 0).await;
    let mut worker = renewal_worker(&env, &sim, "100");
    worker.wait_ready(T).await;

    // `FOR NO KEY UPDATE` lets the worker's key-share lock (the transaction row's foreign
    // key) through, and stops its `UPDATE customer_subscriptions` in the paid commit.
    let mut lock = env.pool.begin().await.unwrap();
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM customer_subscriptions WHERE id = $1 FOR NO KEY UPDATE")
        .bind(sub)
        .execute(&mut *lock)
        .await
        .unwrap();

    let key = publish_renewal(&env, sub, end, "case12").await;
    eventually(T, "the charge recorded by the simulator", || async {
        sim.charges().await.contains_key(&key)
    })
    .await;
    let blocked = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> $1",
        )
        .bind(holder)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    eventually(
        T,
        "the worker's paid commit waiting on the lock",
        || async { blocked().await == 1 },
    )
    .await;
    // Every connection to this test's database but the lock holder's and the one asking:
    // the worker's handler, ledger and health connections (and idle ones of the test pool,
    // which reconnects).
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid NOT IN ($1, pg_backend_pid())",
    )
    .bind(holder)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(killed.len() >= 2 && killed.iter().all(|k| *k), "{killed:?}");
    // The commit failed: the row is back to `pending`, charged at the provider.
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("pending"));
    lock.rollback().await.unwrap();

    env.wait_status("case12", "succeeded", T).await;
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    assert_eq!(provider_calls(&worker, "charge", None).await, 1.0);
    assert_eq!(provider_calls(&worker, "lookup", Some("paid")).await, 1.0);
    let job = env.job("case12").await.unwrap();
    assert!(job.attempts >= 2, "{job:?}");
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;
    assert_invariants(&env, &["case12".into()], T).await;
    env.cleanup().await;
}

/// Case 13: storms of provider 5xx, 429 with `Retry-After`, timeouts and slow answers over
/// both providers, under the real scheduler and two workers. Every subscription ends in the
/// state its card implies, a 429 is waited out inside its attempt, a 500 retried by the
/// runtime, and the money invariant holds.
#[tokio::test(flavor = "multi_thread")]
async fn case_13_provider_error_storms() {
    let env = TestEnv::new(&config()).await;
    seed(&env, "160", "500,500once=2,429=2,timeout=2,slow,ok,decline");
    let sim = simulator(&env, 0).await;
    let workers = renew_all(&env, &sim, T).await;
    let per = assert_card_states(&env).await;
    assert_covers(&per, &["500", "500once", "429", "timeout", "slow"]);
    assert_money(&env, &sim).await;

    // Each job's ledger row, by card: how the storm ended it.
    let runs: Vec<(String, String, String, i32)> = sqlx::query_as(
        "SELECT s.provider::text, pm.provider_payment_method_id, j.status::text, j.attempts
           FROM renewal_enqueues e
           JOIN customer_subscriptions s ON s.id = e.subscription_id
           JOIN customer_payment_methods pm ON pm.id = s.vault_payment_method_id
           JOIN job_runs j ON j.job_id = e.job_id::text",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), 160, "a renewal job without a ledger row");
    for (provider, card, status, attempts) in &runs {
        let s = suffix(card);
        if ends_unknown(provider, s) {
            // Looked up (snoozed) until the bound, then dead-lettered unknown-outcome.
            assert_eq!(status, "dead_lettered", "{provider} {card}");
            continue;
        }
        match s {
            // Retry-After: 1 waited out inside the first attempt; timeouts reconciled in it.
            "ok" | "slow" | "decline" | "429" | "timeout" => {
                assert_eq!((status.as_str(), *attempts), ("succeeded", 1), "{card}")
            }
            // Pagar.me: the 500's outcome is unknown; lookups show nothing, and after
            // `resend_after` the request is repeated under its Idempotency-Key and pays.
            "500once" => {
                assert_eq!(status, "succeeded", "{card}");
                assert!(*attempts >= 2, "{card}: {attempts}");
            }
            other => panic!("unexpected card {other}"),
        }
    }
    let mut throttled = 0.0;
    for w in &workers {
        throttled += provider_calls(w, "charge", Some("retryable")).await;
    }
    // Only 429s (one each) are refusals; a 500 to a charge is an unknown outcome.
    assert_eq!(throttled, cards(&env, "429").await as f64);
    // Every renewal the scheduler enqueued settled; those whose outcome stayed unknown with
    // reason `unknown-outcome`.
    let dead = assert_invariants(&env, &[], T).await;
    assert_eq!(dead.len() as i64, unknown_cards(&env).await, "{dead:?}");
    assert!(
        dead.values()
            .all(|d| d.kind.as_deref() == Some("unknown-outcome")),
        "{dead:?}"
    );
    env.cleanup().await;
}

/// Case 14: one job id published twice, consumed by two replicas at once.
///
/// What the runtime guarantees (asserted here): a copy delivered after the job succeeded is
/// acked as `duplicate` without running; copies delivered while the job is still running
/// both run (at-least-once), and the ledger keeps one row, `succeeded`, counting both runs.
/// A handler with side effects needs its own idempotency: a renewal's key lease and the
/// provider's idempotency key make the second run find the charge and charge nothing.
#[tokio::test(flavor = "multi_thread")]
async fn case_14_same_job_two_replicas_concurrently() {
    let env = TestEnv::new(&config()).await;

    // A renewal: the simulator answers after 1 s, so both copies are in flight together.
    let (sub, end) = pagarme_subscription(&env, "card_c14_ok").await;
    let sim = simulator(&env, 1000).await;
    let client = [("WARREN_PROVIDER_TIMEOUT", "3s")];
    let mut a = renewal_worker_with(&env, &sim, "1", &client);
    let mut b = renewal_worker_with(&env, &sim, "1", &client);
    a.wait_ready(T).await;
    b.wait_ready(T).await;
    let q = env.queue("renewals.pagarme");
    eventually(T, "two consumers", || async {
        env.consumers(&q).await == 2
    })
    .await;
    let key = publish_renewal(&env, sub, end, "case14-renewal").await;
    publish_renewal(&env, sub, end, "case14-renewal").await;
    // Prefetch 1: each replica holds one copy; both run, the second finds the key leased,
    // waits for it and finishes the paid row again.
    for w in [&a, &b] {
        let w: &Worker = w;
        eventually(T, "each replica ran one copy", || async {
            processed(w, "renewal.pagarme", "succeeded").await == 1.0
        })
        .await;
    }
    let mut charge_calls = 0.0;
    for w in [&a, &b] {
        charge_calls += provider_calls(w, "charge", None).await;
    }
    assert_eq!(
        charge_calls, 1.0,
        "both replicas called the provider's charge"
    );
    assert_eq!(sim.charges().await.len(), 1);
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    let job = env.wait_status("case14-renewal", "succeeded", T).await;
    assert_eq!(job.attempts, 2, "{job:?}");
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;

    // A generic job: both copies run; one ledger row, succeeded, two attempts.
    let d1 = env.worker(&["--queue", "default", "--prefetch", "1"]);
    let d2 = env.worker(&["--queue", "default", "--prefetch", "1"]);
    let q = env.queue("default");
    eventually(T, "two consumers", || async {
        env.consumers(&q).await == 2
    })
    .await;
    for _ in 0..2 {
        env.publish_json("demo.sleep", json!({ "ms": 1500 }), "case14-demo")
            .await;
    }
    for w in [&d1, &d2] {
        eventually(T, "each replica ran one copy", || async {
            processed(w, "demo.sleep", "succeeded").await == 1.0
        })
        .await;
    }
    let job = env.wait_status("case14-demo", "succeeded", T).await;
    assert_eq!(job.attempts, 2, "{job:?}");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE job_id = 'case14-demo'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows, 1);
    // A third copy after the success is a duplicate: acked, not run.
    env.publish_json("demo.sleep", json!({ "ms": 1500 }), "case14-demo")
        .await;
    eventually(T, "the late copy acked as a duplicate", || async {
        processed(&d1, "demo.sleep", "duplicate").await
            + processed(&d2, "demo.sleep", "duplicate").await
            == 1.0
    })
    .await;
    let job = env.job("case14-demo").await.unwrap();
    assert_eq!((job.status.as_str(), job.attempts), ("succeeded", 2));
    let jobs = ["case14-renewal".to_string(), "case14-demo".to_string()];
    assert_invariants(&env, &jobs, T).await;
    drop((a, b));
    env.cleanup().await;
}
