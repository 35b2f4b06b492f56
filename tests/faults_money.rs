//! The money fault cases: crashes, failed commits, frozen workers, provider error storms and
//! duplicate deliveries around a renewal charge, for Pagar.me and Appmax alike, with the real
//! workers, provider simulator, RabbitMQ and PostgreSQL. None of them stops a service: a
//! worker is `kill -9`'d or frozen (`SIGSTOP`), its PostgreSQL connections are terminated,
//! or the simulator misbehaves. Each case ends with the global invariants: the money
//! invariant (`common::money::assert_money`: at most one paid charge per subscription and
//! period, the simulator's ledger equal to `payment_transactions`), and every job — the
//! test's and any the scheduler enqueued — succeeded or dead-lettered with its reason, none
//! retried without bound (`common::invariants::assert_invariants`).
//!
//! Every window is opened by a poll, never by a sleep: the simulator's ledger
//! (`GET /__sim/charges`) says when a charge exists, `payment_transactions` when a charge
//! request was recorded, `pg_stat_activity` when a commit waits.

mod common;

use common::invariants::assert_invariants;
use common::money::assert_money;
use common::sim::*;
use common::*;
use serde_json::json;
use std::time::Duration;

/// Short retry tiers, so a retried renewal comes back quickly; unknown outcomes given up on
/// after 3 s, leases of 3 s ([`BILLING`]).
fn config() -> String {
    format!("[retry]\ntiers = [\"200ms\", \"500ms\", \"1s\"]\n{BILLING}")
}

const T: Duration = Duration::from_secs(90);

/// Charge requests recorded for `key` (the intent written before each is sent).
async fn recorded_requests(env: &TestEnv, key: &str) -> i32 {
    sqlx::query_scalar::<_, i32>(
        "SELECT charge_requests FROM payment_transactions WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(&env.pool)
    .await
    .unwrap()
    .unwrap_or(0)
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

/// Sends `signal` (`STOP`, `CONT`) to a worker process.
fn signal(w: &Worker, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &w.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal}");
}

crate::for_both_providers!(
    case_01_kill9_after_provider_charged_before_commit,
    case_02_kill9_before_provider_call,
    case_12_commit_fails_after_provider_charged,
    case_14_same_renewal_two_replicas_concurrently,
    lease_expires_while_a_frozen_worker_has_a_charge_in_flight,
);

/// Case 1: the provider has charged, the worker has not heard back (so has not committed or
/// acked) and is `kill -9`'d. The replacement reconciles by lookup: paid, one charge request.
async fn case_01_kill9_after_provider_charged_before_commit(provider: &str) {
    let env = TestEnv::new(&config()).await;
    // `_timeout`: the simulator records the charge as paid, then holds its answer for 30 s;
    // with a 3 s client timeout the worker sits in that window for 3 s.
    let (sub, end) = due_subscription(&env, provider, "card_c01_timeout").await;
    let sim = simulator(&env, 0).await;
    let slow_client = [("WARREN_PROVIDER_TIMEOUT", "3s")];
    let mut victim = renewal_worker_with(&env, &sim, "32", &slow_client);
    victim.wait_ready(T).await;
    let key = publish_renewal(&env, provider, sub, end, "case01").await;
    eventually(T, "the charge recorded by the simulator", || async {
        sim.charges().await.contains_key(&key)
    })
    .await;
    victim.kill9();
    // The kill landed in the window: charged, and the row says only that a request was sent.
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("pending"));
    assert_eq!(recorded_requests(&env, &key).await, 1);
    let job = env.job("case01").await;
    assert!(
        job.as_ref().is_none_or(|j| j.status == "running"),
        "{job:?}"
    );

    // The replacement waits out the dead worker's lease once, then asks the provider
    // instead of charging.
    let fresh = renewal_worker_with(&env, &sim, "32", &slow_client);
    env.wait_status("case01", "succeeded", T).await;
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    assert_eq!(provider_calls(&fresh, "lookup", Some("paid")).await, 1.0);
    assert_eq!(provider_calls(&fresh, "charge", None).await, 0.0);
    assert_eq!(sim.calls(&key).await, 1, "one charge request in all");
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;
    assert_invariants(&env, &["case01".into()], T).await;
    env.cleanup().await;
}

/// Case 2: a worker is `kill -9`'d after it committed its `pending` rows (the keys' leases)
/// but before its charges reached the provider: every request is held for 1 s by the
/// simulator's latency (Appmax: the order being opened; Pagar.me: the charge request
/// itself, recorded as sent). The replacement waits out the leases and ends each key with
/// exactly one charge: Appmax opens the same order and charges it; Pagar.me finds nothing
/// and repeats the request under its idempotency key (or finds the charge, if the request
/// the victim sent was still served).
async fn case_02_kill9_before_provider_call(provider: &str) {
    let env = TestEnv::new(&config()).await;
    let sim = simulator(&env, 1000).await;
    let client = [("WARREN_PROVIDER_TIMEOUT", "5s")];
    let mut victim = renewal_worker_with(&env, &sim, "32", &client);
    victim.wait_ready(T).await;
    let mut keys = Vec::new();
    for i in 0..4 {
        let (sub, end) = due_subscription(&env, provider, &format!("card_c02{i}_ok")).await;
        keys.push(publish_renewal(&env, provider, sub, end, &format!("case02-{i}")).await);
    }
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM payment_transactions")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    eventually(T, "every key claimed", || async { rows().await == 4 }).await;
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
        "no renewal was between its commit and its charge at the kill: {charged:?}"
    );

    let fresh = renewal_worker_with(&env, &sim, "32", &client);
    for i in 0..4 {
        env.wait_status(&format!("case02-{i}"), "succeeded", T)
            .await;
    }
    let charges = sim.charges().await;
    assert_eq!(charges.len(), 4, "{charges:?}");
    for k in &keys {
        assert_eq!(row_status(&env, k).await.as_deref(), Some("paid"), "{k}");
        assert_eq!(charges[k].1, 1, "{k} charged {} times", charges[k].1);
    }
    assert!(
        provider_calls(&fresh, "charge", None).await + provider_calls(&fresh, "lookup", None).await
            >= 4.0
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
async fn case_12_commit_fails_after_provider_charged(provider: &str) {
    let env = TestEnv::new(&config()).await;
    let (sub, end) = due_subscription(&env, provider, "card_c12_ok").await;
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

    let key = publish_renewal(&env, provider, sub, end, "case12").await;
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
    // The commit failed: the row is back to `pending`, its request recorded, charged at the
    // provider.
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("pending"));
    assert_eq!(recorded_requests(&env, &key).await, 1);
    lock.rollback().await.unwrap();

    env.wait_status("case12", "succeeded", T).await;
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    assert_eq!(provider_calls(&worker, "charge", None).await, 1.0);
    assert_eq!(provider_calls(&worker, "lookup", Some("paid")).await, 1.0);
    assert_eq!(sim.calls(&key).await, 1);
    let job = env.job("case12").await.unwrap();
    assert!(job.attempts >= 2, "{job:?}");
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;
    assert_invariants(&env, &["case12".into()], T).await;
    env.cleanup().await;
}

/// Case 14, renewals: one renewal job published twice, consumed by two replicas at once.
/// The simulator answers after 1 s, so both copies are in flight together; the second finds
/// the key leased, waits for it (a snooze when the lease is still renewed) and finishes the
/// paid row again, or is acked as a duplicate once the first succeeded. One charge request.
async fn case_14_same_renewal_two_replicas_concurrently(provider: &str) {
    let env = TestEnv::new(&config()).await;
    let (sub, end) = due_subscription(&env, provider, "card_c14_ok").await;
    let sim = simulator(&env, 1000).await;
    let client = [("WARREN_PROVIDER_TIMEOUT", "3s")];
    let mut a = renewal_worker_with(&env, &sim, "1", &client);
    let mut b = renewal_worker_with(&env, &sim, "1", &client);
    a.wait_ready(T).await;
    b.wait_ready(T).await;
    let q = env.queue(if provider == "PAGARME" {
        "renewals.pagarme"
    } else {
        "renewals.appmax"
    });
    eventually(T, "two consumers", || async {
        env.consumers(&q).await == 2
    })
    .await;
    let task = renewal_task(provider);
    let key = publish_renewal(&env, provider, sub, end, "case14-renewal").await;
    publish_renewal(&env, provider, sub, end, "case14-renewal").await;
    eventually(T, "both copies finished", || async {
        let mut done = 0.0;
        for w in [&a, &b] {
            done += processed(w, task, "succeeded").await + processed(w, task, "duplicate").await;
        }
        done == 2.0
    })
    .await;
    let mut charge_calls = 0.0;
    for w in [&a, &b] {
        charge_calls += provider_calls(w, "charge", None).await;
    }
    assert_eq!(
        charge_calls, 1.0,
        "both replicas called the provider's charge"
    );
    assert_eq!(sim.calls(&key).await, 1);
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    env.wait_status("case14-renewal", "succeeded", T).await;
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;
    assert_invariants(&env, &["case14-renewal".into()], T).await;
    drop((a, b));
    env.cleanup().await;
}

/// A worker's lease runs out while its charge request is in flight: the worker is frozen
/// (`SIGSTOP`) right after it recorded the request, for longer than the lease. Another
/// replica takes the key, finds the request recorded and only looks it up — it never sends a
/// second one — and records the charge once the provider shows it. The frozen worker, resumed,
/// records the same outcome again (a no-op). One charge request, one paid row, one period.
async fn lease_expires_while_a_frozen_worker_has_a_charge_in_flight(provider: &str) {
    let env = TestEnv::new(&config()).await;
    let (sub, end) = due_subscription(&env, provider, "card_lx_ok").await;
    // Every request waits 2 s in the simulator before it is served.
    let sim = simulator(&env, 2000).await;
    let client = [("WARREN_PROVIDER_TIMEOUT", "20s")];
    let mut frozen = renewal_worker_with(&env, &sim, "1", &client);
    frozen.wait_ready(T).await;
    let key = publish_renewal(&env, provider, sub, end, "lease-x").await;
    eventually(T, "the charge request recorded", || async {
        recorded_requests(&env, &key).await == 1
    })
    .await;
    signal(&frozen, "STOP");
    // The lease (3 s) runs out: nothing renews it.
    eventually(T, "the frozen worker's lease expired", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT charging_until < now() FROM payment_transactions WHERE idempotency_key = $1",
        )
        .bind(&key)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    })
    .await;
    let other = renewal_worker_with(&env, &sim, "1", &client);
    publish_renewal(&env, provider, sub, end, "lease-x-copy").await;
    env.wait_status("lease-x-copy", "succeeded", T).await;
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    assert_eq!(provider_calls(&other, "charge", None).await, 0.0);
    assert!(provider_calls(&other, "lookup", None).await >= 1.0);
    signal(&frozen, "CONT");
    env.wait_status("lease-x", "succeeded", T).await;
    assert_eq!(sim.calls(&key).await, 1, "one charge request in all");
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    assert_card_states(&env).await;
    assert_money(&env, &sim).await;
    let jobs = ["lease-x".to_string(), "lease-x-copy".to_string()];
    assert_invariants(&env, &jobs, T).await;
    drop((frozen, other));
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
            // The waits in between are snoozes, which spend no attempt (a snoozed run past
            // 200 ms is counted by its running mark, hence at most 2).
            "500once" => {
                assert_eq!(status, "succeeded", "{card}");
                assert!((1..=2).contains(attempts), "{card}: {attempts}");
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

/// Case 14, any job: one job id published twice, consumed by two replicas at once.
///
/// What the runtime guarantees (asserted here): a copy delivered after the job succeeded is
/// acked as `duplicate` without running; copies delivered while the job is still running
/// both run (at-least-once), and the ledger keeps one row, `succeeded`, counting both runs.
/// A handler with side effects needs its own idempotency, as the renewal cases above show.
#[tokio::test(flavor = "multi_thread")]
async fn case_14_same_job_two_replicas_concurrently() {
    let env = TestEnv::new(&config()).await;
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
    assert_invariants(&env, &["case14-demo".to_string()], T).await;
    env.cleanup().await;
}
