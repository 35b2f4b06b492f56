//! The money invariant, checked after every renewal run: at most one paid charge per
//! (subscription, period), and the provider simulator's ledger equals
//! `payment_transactions` — no charge without a row, no key charged twice, no `paid` row
//! without exactly one charge. A charge the simulator still holds `pending` is not paid: its
//! row must be `pending` or `unknown`.

use super::sim::Sim;
use super::TestEnv;
use std::collections::HashMap;

/// Asserts the money invariant for everything this test's simulator charged.
pub async fn assert_money(env: &TestEnv, sim: &Sim) {
    let doubles: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "SELECT subscription_id, period_end, count(*) FROM payment_transactions
          WHERE status = 'paid' GROUP BY subscription_id, period_end HAVING count(*) > 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        doubles.is_empty(),
        "periods paid more than once: {doubles:?}"
    );

    let charges = sim.charges().await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT idempotency_key, status FROM payment_transactions")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let rows: HashMap<String, String> = rows.into_iter().collect();
    for (key, (status, times)) in &charges {
        assert_eq!(*times, 1, "{key} charged {times} times");
        if status == "pending" {
            // Not settled at the provider yet: the row exists and records no decision.
            let row = rows.get(key).map(String::as_str);
            assert!(
                matches!(row, Some("pending" | "unknown")),
                "simulator holds {key} pending but payment_transactions says {row:?}"
            );
            continue;
        }
        assert_eq!(
            rows.get(key),
            Some(status),
            "simulator charged {key} ({status}) but payment_transactions says {:?}",
            rows.get(key)
        );
    }
    for (key, status) in &rows {
        if status == "paid" {
            let charged = charges.get(key).map(|c| c.0.as_str());
            assert_eq!(charged, Some("paid"), "row {key} is paid without a charge");
        }
    }
    let paid_rows = rows.values().filter(|s| *s == "paid").count();
    let paid_charges = charges.values().filter(|c| c.0 == "paid").count();
    assert_eq!(paid_rows, paid_charges, "paid rows vs paid charges");
}
