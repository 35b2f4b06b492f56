//! `warren demo seed`: the real binary against a fresh database, checked with SQL.

mod common;

use common::{stderr, stdout, TestEnv};

/// (provider, suffix, subscriptions, due) rows of the seeded data, by joining each
/// subscription to its card.
async fn pairs(env: &TestEnv) -> Vec<(String, String, i64, i64)> {
    sqlx::query_as(
        "SELECT s.provider::text,
                substring(pm.provider_payment_method_id from '_([a-z0-9]+)$'),
                count(*),
                count(*) FILTER (WHERE s.current_period_end <= now())
           FROM customer_subscriptions s
           JOIN customer_payment_methods pm ON pm.id = s.vault_payment_method_id
          GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn seed_creates_the_contracted_rows() {
    let env = TestEnv::new("").await;
    let out = env.run(&[
        "demo",
        "seed",
        "--subscriptions",
        "40",
        "--mix",
        "ok,decline,timeout,500once",
        "--due-fraction",
        "0.5",
    ]);
    assert!(out.status.success(), "seed failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("seeded 40 subscriptions (20 due)"), "{text}");
    assert!(text.contains("appmax"), "{text}");
    assert!(text.contains("_500once"), "{text}");

    let (subs, due): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE current_period_end <= now())
           FROM customer_subscriptions",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((subs, due), (40, 20));

    // Mix cycles of 4 alternate Pagar.me / Appmax; the first 20 (cycles 0-4) are due:
    // Pagar.me cycles 0, 2, 4 and Appmax cycles 1, 3.
    let mut want = Vec::new();
    for (p, d) in [("APPMAX", 2), ("PAGARME", 3)] {
        for s in ["500once", "decline", "ok", "timeout"] {
            want.push((p.to_owned(), s.to_owned(), 5, d));
        }
    }
    assert_eq!(pairs(&env).await, want);

    // Every subscription: ACTIVE, monthly, not native, BRL, amount in range, period of a
    // month, card of the same customer and provider, a demo customer.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer_subscriptions s
           JOIN customer_payment_methods pm ON pm.id = s.vault_payment_method_id
           JOIN customers c ON c.id = s.customer_id
          WHERE NOT (s.status = 'ACTIVE' AND s.is_native = false AND s.currency = 'BRL'
                 AND s.canceled_at IS NULL
                 AND s.amount_cents BETWEEN 990 AND 19990
                 AND s.current_period_start = s.current_period_end - interval '1 month'
                 AND s.metadata @> '{\"demo\": true, \"intervalUnit\": \"MONTH\", \"intervalCount\": 1}'
                 AND jsonb_typeof(s.metadata->'intervalCount') = 'number'
                 AND pm.customer_id = s.customer_id AND pm.provider = s.provider
                 AND pm.brand = 'visa' AND pm.last4 = '4242'
                 AND c.metadata = '{\"demo\": true}'
                 AND c.email ~ '^demo\\+[0-9]+@example\\.com$'
                 AND c.name ~ '^Demo Customer [0-9]+$')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(bad, 0, "subscriptions off the data contract");

    // Pagar.me: card_<16 hex>_<suffix>, pagarmeCustomerId, no merchant or provider id.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer_subscriptions s
           JOIN customer_payment_methods pm ON pm.id = s.vault_payment_method_id
          WHERE s.provider = 'PAGARME'
            AND NOT (pm.provider_payment_method_id
                       ~ '^card_[0-9a-f]{16}_(ok|decline|timeout|500once)$'
                 AND s.metadata->>'pagarmeCustomerId' ~ '^cus_[0-9a-f]{16}$'
                 AND (SELECT count(*) FROM jsonb_object_keys(s.metadata)) = 4
                 AND s.merchant_id IS NULL AND s.provider_subscription_id IS NULL)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(bad, 0, "Pagar.me subscriptions off the data contract");

    // Appmax: tok_<16 hex>_<suffix>, an enabled APPMAX integration with an access token, a
    // provider subscription id; no pagarmeCustomerId.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer_subscriptions s
           JOIN customer_payment_methods pm ON pm.id = s.vault_payment_method_id
           LEFT JOIN merchant_integrations mi
             ON mi.merchant_id = s.merchant_id AND mi.provider = 'APPMAX' AND mi.enabled
          WHERE s.provider = 'APPMAX'
            AND NOT (pm.provider_payment_method_id
                       ~ '^tok_[0-9a-f]{16}_(ok|decline|timeout|500once)$'
                 AND coalesce(mi.credentials->>'access_token' ~ '^demo-[0-9a-f]{16}$', false)
                 AND coalesce(s.provider_subscription_id ~ '^appmax-sub-[0-9a-f]{16}$', false)
                 AND NOT s.metadata ? 'pagarmeCustomerId')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(bad, 0, "Appmax subscriptions off the data contract");
    let (merchants, used): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM merchant_integrations WHERE provider = 'APPMAX'),
                (SELECT count(DISTINCT merchant_id) FROM customer_subscriptions
                  WHERE provider = 'APPMAX')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (merchants, used),
        (3, 3),
        "default: 3 merchants, round-robin"
    );

    // The scanner sees them: `warren due` counts 12 Pagar.me and 8 Appmax due.
    let out = env.run(&["due", "--format", "json"]);
    assert!(out.status.success(), "due failed: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let due_of = |kind: &str| {
        v["summary"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["provider"] == kind)
            .map(|s| s["due"].as_i64().unwrap())
    };
    assert_eq!(due_of("pagarme"), Some(12), "{v}");
    assert_eq!(due_of("appmax"), Some(8), "{v}");
    assert_eq!(due_of("pagarme_native"), Some(0), "{v}");
    assert_eq!(v["due"].as_array().unwrap().len(), 20, "{v}");

    // A second run adds to the data with new customer numbers and new merchants.
    let out = env.run(&["demo", "seed", "--subscriptions", "4", "--merchants", "1"]);
    assert!(out.status.success(), "second seed failed: {}", stderr(&out));
    assert!(
        stdout(&out).contains("demo+41..44@example.com"),
        "{}",
        stdout(&out)
    );
    let (subs, emails, merchants): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM customer_subscriptions),
                (SELECT count(DISTINCT email) FROM customers),
                (SELECT count(*) FROM merchant_integrations)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((subs, emails, merchants), (44, 44, 4));

    env.cleanup().await;
}

#[tokio::test]
async fn bad_options_are_refused_naming_the_flag() {
    let env = TestEnv::new("").await;
    let out = env.run(&["demo", "seed", "--subscriptions", "10", "--mix", "ok,nope"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--mix"), "{err}");
    assert!(err.contains("nope"), "{err}");
    assert!(err.contains("500once"), "lists the known outcomes: {err}");

    let out = env.run(&["demo", "seed", "--due-fraction", "1.5"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--due-fraction: 1.5 is not between 0 and 1"),
        "{}",
        stderr(&out)
    );

    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing seeded on a refused run");
    env.cleanup().await;
}
