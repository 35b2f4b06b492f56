//! Renewals against a provider that behaves the way real gateways sometimes do: it charges
//! the card and answers `502`, its lookups lag behind its charges, it keeps an order
//! `pending` for longer than Warren waits, it settles a charge after Warren gave up, it
//! charges two keys for one period. With the real workers, scheduler, simulator, RabbitMQ and
//! PostgreSQL. Whatever it does, each key gets at most one charge request, and every charge
//! the provider made ends recorded: paid, declined, flagged as unknown for an operator, or
//! kept as a duplicate to refund.

mod common;

use common::invariants::{assert_invariants, dead_letters};
use common::money::assert_money;
use common::sim::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const T: Duration = Duration::from_secs(120);

/// Short retry tiers (snoozes look again within a second), the default `[billing]`
/// settings: a charge of unknown outcome is looked up for 24 h before anyone is asked, and
/// Pagar.me repeats a request its lookups do not show only after 60 s.
const PATIENT: &str = r#"
[retry]
tiers = ["200ms", "500ms", "1s"]
"#;

/// Short retry tiers and [`BILLING`]: unknown outcomes given up on after 3 s.
fn impatient() -> String {
    format!("{PATIENT}{BILLING}")
}

crate::for_both_providers!(
    charged_then_502_with_a_lagging_lookup_charges_each_renewal_once,
    pending_past_the_bound_is_dead_lettered_then_replayed_once_settled,
);

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

async fn metadata(env: &TestEnv, sub: Uuid) -> Value {
    sqlx::query_scalar("SELECT metadata FROM customer_subscriptions WHERE id = $1")
        .bind(sub)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn advanced(env: &TestEnv, sub: Uuid, end: chrono::DateTime<chrono::Utc>) -> bool {
    sqlx::query_scalar("SELECT current_period_end > $2 FROM customer_subscriptions WHERE id = $1")
        .bind(sub)
        .bind(end)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn events(env: &TestEnv, key: &str, kind: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM subscription_events WHERE idempotency_key = $1 AND kind = $2",
    )
    .bind(key)
    .bind(kind)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// `warren billing anomalies --format json`.
fn anomalies(env: &TestEnv) -> Vec<Value> {
    let out = env.run(&["billing", "anomalies", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The provider approves the card, answers `502`, and its lookups do not show the charge for
/// 20 s. Twenty due renewals through the real scheduler: twenty charge requests, twenty paid
/// rows, twenty periods advanced, no dead letter.
async fn charged_then_502_with_a_lagging_lookup_charges_each_renewal_once(provider: &str) {
    let env = TestEnv::new(PATIENT).await;
    let prefix = if provider == "PAGARME" { "card" } else { "tok" };
    for i in 0..20 {
        due_subscription(
            &env,
            provider,
            &format!("{prefix}_{i:02}_then502_lag20s_ok"),
        )
        .await;
    }
    let sim = simulator(&env, 0).await;
    let worker = renewal_worker(&env, &sim, "100");
    let _scheduler = env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "false")]);
    eventually(T, "twenty renewals paid", || async {
        count(
            &env,
            "SELECT count(*) FROM payment_transactions WHERE status = 'paid'",
        )
        .await
            == 20
    })
    .await;
    assert_eq!(sim.calls_total().await, 20, "charge requests");
    let charges = sim.charges().await;
    assert_eq!(charges.len(), 20);
    assert!(
        charges.values().all(|(s, n)| s == "paid" && *n == 1),
        "{charges:?}"
    );
    let renewed = count(
        &env,
        "SELECT count(*) FROM customer_subscriptions WHERE current_period_end > now()",
    )
    .await;
    assert_eq!(renewed, 20, "periods advanced");
    // Each charge answered 502 (an unknown outcome, looked up until it showed).
    let unknown = metric(
        &worker.metrics().await,
        "warren_provider_requests_total",
        &["operation=\"charge\"", "outcome=\"unknown\""],
    );
    assert_eq!(unknown, 20.0);
    assert_eq!(dlq_depth(&env).await, 0);
    assert_money(&env, &sim).await;
    let dead = assert_invariants(&env, &[], T).await;
    assert!(dead.is_empty(), "{dead:?}");
    env.cleanup().await;
}

/// The provider keeps the order `pending` for 8 s, longer than Warren waits (3 s here): the
/// job is dead-lettered `unknown-outcome`, the subscription flagged, no second charge
/// request sent. Once the provider settled the charge, replaying the dead letter records it.
async fn pending_past_the_bound_is_dead_lettered_then_replayed_once_settled(provider: &str) {
    let env = TestEnv::new(&impatient()).await;
    let prefix = if provider == "PAGARME" { "card" } else { "tok" };
    let (sub, end) = due_subscription(&env, provider, &format!("{prefix}_u_pending8s_ok")).await;
    let sim = simulator(&env, 0).await;
    let _worker = renewal_worker(&env, &sim, "32");
    let key = publish_renewal(&env, provider, sub, end, "pending-job").await;
    env.wait_status("pending-job", "dead_lettered", T).await;

    let dead = dead_letters(&env).await;
    let d = &dead["pending-job"];
    assert_eq!(d.kind.as_deref(), Some("unknown-outcome"), "{d:?}");
    assert!(
        d.error.as_deref().unwrap().contains("still unknown"),
        "{d:?}"
    );
    let meta = metadata(&env, sub).await;
    assert_eq!(meta["unknownChargeKey"], json!(key), "{meta}");
    assert!(
        meta["renewalError"].as_str().unwrap().contains("unknown"),
        "{meta}"
    );
    assert_eq!(events(&env, &key, "renewal.unknown_outcome").await, 1);
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("unknown"));
    assert!(!advanced(&env, sub, end).await);
    assert_eq!(sim.calls(&key).await, 1, "a second charge request was sent");
    let listed = anomalies(&env);
    assert!(
        listed
            .iter()
            .any(|a| a["kind"] == "unknown_outcome" && a["idempotency_key"] == json!(key)),
        "{listed:?}"
    );

    eventually(T, "the provider settled the charge", || async {
        sim.charges().await.get(&key).map(|c| c.0.as_str()) == Some("paid")
    })
    .await;
    let queue = if provider == "PAGARME" {
        "renewals.pagarme"
    } else {
        "renewals.appmax"
    };
    let out = env.run(&["dlq", "replay", "--queue", queue]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("pending-job", "succeeded", T).await;
    assert_eq!(row_status(&env, &key).await.as_deref(), Some("paid"));
    assert!(advanced(&env, sub, end).await);
    let meta = metadata(&env, sub).await;
    assert!(meta.get("unknownChargeKey").is_none(), "{meta}");
    assert_eq!(sim.calls(&key).await, 1, "the replay sent a charge request");
    assert!(anomalies(&env).is_empty());
    assert_money(&env, &sim).await;
    assert_invariants(&env, &["pending-job".into()], T).await;
    env.cleanup().await;
}

/// The database allows one paid transaction per subscription period; a provider that
/// charges a second key for a paid period (here: a charge Warren gave up on settles paid
/// after another transaction paid the period) is recorded as `duplicate_charge`, counted,
/// and listed for a refund by `warren billing anomalies`, never as a second `paid`.
#[tokio::test(flavor = "multi_thread")]
async fn one_paid_row_per_period_and_a_second_paid_charge_is_kept_as_a_duplicate() {
    let env = TestEnv::new(&impatient()).await;

    // The index itself.
    let (other, other_end) = due_subscription(&env, "PAGARME", "card_x_ok").await;
    let insert = |key: &'static str| {
        sqlx::query(
            "INSERT INTO payment_transactions
                    (subscription_id, provider, idempotency_key, status, amount_cents,
                     currency, period_end)
             VALUES ($1, 'PAGARME', $2, 'paid', 4990, 'BRL', $3)",
        )
        .bind(other)
        .bind(key)
        .bind(other_end)
        .execute(&env.pool)
    };
    insert("manual:1").await.unwrap();
    let err = insert("manual:2").await.unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(
        db.constraint(),
        Some("payment_transactions_one_paid_per_period")
    );

    // The duplicate path.
    let (sub, end) = due_subscription(&env, "PAGARME", "card_d_pending5s_ok").await;
    let sim = simulator(&env, 0).await;
    let worker = billing_worker(&env, &sim, "renewals.pagarme,cron", "32", &[]);
    let key = publish_renewal(&env, "PAGARME", sub, end, "dup-job").await;
    env.wait_status("dup-job", "dead_lettered", T).await;
    // Meanwhile the period was paid under another key (an operator charged it by hand).
    sqlx::query(
        "INSERT INTO payment_transactions
                (subscription_id, provider, idempotency_key, status, amount_cents, currency,
                 period_end)
         VALUES ($1, 'PAGARME', 'manual:' || $1::text, 'paid', 4990, 'BRL', $2)",
    )
    .bind(sub)
    .bind(end)
    .execute(&env.pool)
    .await
    .unwrap();
    eventually(T, "the provider settled the first charge", || async {
        sim.charges().await.get(&key).map(|c| c.0.as_str()) == Some("paid")
    })
    .await;
    env.publish_json(
        "cron.fail-stale-payments",
        json!({ "max_age": "1s" }),
        "sweep",
    )
    .await;
    env.wait_status("sweep", "succeeded", T).await;

    assert_eq!(
        row_status(&env, &key).await.as_deref(),
        Some("duplicate_charge")
    );
    assert_eq!(events(&env, &key, "renewal.duplicate_charge").await, 1);
    let paid_rows = count(
        &env,
        &format!(
            "SELECT count(*) FROM payment_transactions
              WHERE subscription_id = '{sub}' AND status = 'paid'"
        ),
    )
    .await;
    assert_eq!(paid_rows, 1);
    let m = worker.metrics().await;
    assert_eq!(
        metric(
            &m,
            "warren_renewals_total",
            &["outcome=\"duplicate_charge\""]
        ),
        1.0
    );
    let listed = anomalies(&env);
    let dup = listed
        .iter()
        .find(|a| a["kind"] == "duplicate_charge")
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(dup["idempotency_key"], json!(key));
    assert!(
        dup["action"]
            .as_str()
            .unwrap()
            .starts_with("refund order or_sim"),
        "{dup}"
    );
    let table = env.run(&["billing", "anomalies"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("duplicate_charge") && table.contains(&key),
        "{table}"
    );
    assert_eq!(sim.calls(&key).await, 1);
    env.cleanup().await;
}

/// `cron.fail-stale-payments` asks the provider before it relabels a stale row: paid there
/// → recorded paid and the period advanced; declined → failed with dunning; never seen →
/// failed; still pending → left as it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_stale_sweep_records_what_the_provider_decided() {
    let env = TestEnv::new(&impatient()).await;
    let (paid_sub, paid_end) = due_subscription(&env, "PAGARME", "card_a_pending5s_ok").await;
    let (declined_sub, declined_end) =
        due_subscription(&env, "APPMAX", "tok_d_pending5s_decline").await;
    let (pending_sub, pending_end) = due_subscription(&env, "APPMAX", "tok_b_pending120s_ok").await;
    // A row a worker claimed an hour ago and died with, before it sent anything.
    let (unseen_sub, unseen_end) = due_subscription(&env, "PAGARME", "card_c_ok").await;
    let unseen_key = warren_core::billing::renewal_key(unseen_sub, unseen_end, 1);
    sqlx::query(
        "INSERT INTO payment_transactions
                (subscription_id, provider, idempotency_key, status, amount_cents, currency,
                 period_end, created_at)
         VALUES ($1, 'PAGARME', $2, 'pending', 4990, 'BRL', $3, now() - interval '1 hour')",
    )
    .bind(unseen_sub)
    .bind(&unseen_key)
    .bind(unseen_end)
    .execute(&env.pool)
    .await
    .unwrap();

    let sim = simulator(&env, 0).await;
    let worker = billing_worker(
        &env,
        &sim,
        "renewals.pagarme,renewals.appmax,cron",
        "32",
        &[],
    );
    let paid_key = publish_renewal(&env, "PAGARME", paid_sub, paid_end, "stale-paid").await;
    let declined_key =
        publish_renewal(&env, "APPMAX", declined_sub, declined_end, "stale-declined").await;
    let pending_key =
        publish_renewal(&env, "APPMAX", pending_sub, pending_end, "stale-pending").await;
    for job in ["stale-paid", "stale-declined", "stale-pending"] {
        env.wait_status(job, "dead_lettered", T).await;
    }
    eventually(T, "the provider settled two of them", || async {
        let c = sim.charges().await;
        c.get(&paid_key).map(|c| c.0.as_str()) == Some("paid")
            && c.get(&declined_key).map(|c| c.0.as_str()) == Some("failed")
    })
    .await;
    env.publish_json(
        "cron.fail-stale-payments",
        json!({ "max_age": "1s" }),
        "sweep",
    )
    .await;
    env.wait_status("sweep", "succeeded", T).await;

    assert_eq!(row_status(&env, &paid_key).await.as_deref(), Some("paid"));
    assert!(advanced(&env, paid_sub, paid_end).await);
    assert!(metadata(&env, paid_sub)
        .await
        .get("unknownChargeKey")
        .is_none());
    assert_eq!(
        row_status(&env, &declined_key).await.as_deref(),
        Some("failed")
    );
    let (status, dunning): (String, i16) = sqlx::query_as(
        "SELECT status::text, dunning_attempt FROM customer_subscriptions WHERE id = $1",
    )
    .bind(declined_sub)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), dunning), ("PAST_DUE", 1));
    assert_eq!(
        row_status(&env, &unseen_key).await.as_deref(),
        Some("failed")
    );
    assert_eq!(
        row_status(&env, &pending_key).await.as_deref(),
        Some("unknown")
    );
    assert!(!advanced(&env, pending_sub, pending_end).await);
    let m = worker.metrics().await;
    for (outcome, n) in [
        ("paid", 1.0),
        ("declined", 1.0),
        ("failed", 1.0),
        ("left", 1.0),
    ] {
        let got = metric(
            &m,
            "warren_stale_payments_total",
            &[&format!("outcome=\"{outcome}\"")],
        );
        assert_eq!(got, n, "{outcome}");
    }
    // The sweep charged nothing.
    assert_eq!(sim.calls_total().await, 3);
    assert_eq!(sim.calls(&unseen_key).await, 0);
    env.cleanup().await;
}
