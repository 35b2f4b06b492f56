//! The provider simulator (`warren provider-sim`) as a test process, renewal workers pointed
//! at it, and the billing rows renewal tests start from: due subscriptions seeded by
//! `warren demo seed` or written one by one, and the states each card suffix implies.

use super::{eventually, free_port, stderr, TestEnv, Worker};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// The simulator as a process.
pub struct Sim {
    pub proc: Worker,
    pub url: String,
}

/// Starts `warren provider-sim` with `latency_ms` added before every answer (also the
/// ledger's), and waits until it answers.
pub async fn simulator(env: &TestEnv, latency_ms: u64) -> Sim {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let latency = latency_ms.to_string();
    let proc = env.spawn(
        &["provider-sim", "--listen", &listen, "--latency", &latency],
        &[],
    );
    let url = format!("http://{listen}");
    eventually(Duration::from_secs(20), "simulator up", || async {
        reqwest::get(format!("{url}/healthz")).await.is_ok()
    })
    .await;
    Sim { proc, url }
}

impl Sim {
    /// The simulator's ledger (`GET /__sim/charges`, filtered by `?key=` when given): one row
    /// per charge request, oldest first.
    async fn ledger(&self, key: Option<&str>) -> Vec<Value> {
        let mut request = reqwest::Client::new().get(format!("{}/__sim/charges", self.url));
        if let Some(key) = key {
            request = request.query(&[("key", key)]);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// `key → (current status of the last charge made, charges made)`: only the requests
    /// that created a charge (`charged: true`) count; replays, 500s and 429s do not. The
    /// status is `paid`, `failed` or `pending` (a `pending<N>` charge not settled yet).
    pub async fn charges(&self) -> HashMap<String, (String, usize)> {
        let mut out: HashMap<String, (String, usize)> = HashMap::new();
        for c in self.ledger(None).await {
            if c["charged"] != Value::Bool(true) {
                continue;
            }
            let key = c["key"].as_str().unwrap().to_owned();
            let status = c["status"].as_str().unwrap().to_owned();
            let e = out.entry(key).or_insert((status.clone(), 0));
            e.0 = status;
            e.1 += 1;
        }
        out
    }

    /// Charge requests the simulator received for `key`, whatever they were answered
    /// (replays and scripted errors included).
    pub async fn calls(&self, key: &str) -> usize {
        self.ledger(Some(key)).await.len()
    }

    /// Charge requests the simulator received, all keys.
    pub async fn calls_total(&self) -> usize {
        self.ledger(None).await.len()
    }
}

/// One `#[tokio::test]` per provider for each `async fn case(provider: &str)` named: modules
/// `pagarme` and `appmax` of the calling test file, each test calling `case("PAGARME")` or
/// `case("APPMAX")`.
#[macro_export]
macro_rules! for_both_providers {
    ($($case:ident),* $(,)?) => {
        mod pagarme {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case("PAGARME").await
                }
            )*
        }
        mod appmax {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case("APPMAX").await
                }
            )*
        }
    };
}

/// The `payment_transactions` status of `key`, if it has a row.
pub async fn row_status(env: &TestEnv, key: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM payment_transactions WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

/// A worker on both renewal queues, pointed at the simulator, with a 1 s provider timeout
/// and `rate` requests per second per provider.
pub fn renewal_worker(env: &TestEnv, sim: &Sim, rate: &str) -> Worker {
    renewal_worker_with(
        env,
        sim,
        "32",
        &[
            ("WARREN_PAGARME_RATE_LIMIT", rate),
            ("WARREN_APPMAX_RATE_LIMIT", rate),
        ],
    )
}

/// [`renewal_worker`] with its prefetch and extra environment (which overrides the
/// defaults, e.g. `WARREN_PROVIDER_TIMEOUT`).
pub fn renewal_worker_with(
    env: &TestEnv,
    sim: &Sim,
    prefetch: &str,
    extra: &[(&str, &str)],
) -> Worker {
    billing_worker(
        env,
        sim,
        "renewals.pagarme,renewals.appmax",
        prefetch,
        extra,
    )
}

/// A worker on `queues` (comma-separated) with both providers pointed at the simulator (a
/// 1 s provider timeout unless `extra` says otherwise).
pub fn billing_worker(
    env: &TestEnv,
    sim: &Sim,
    queues: &str,
    prefetch: &str,
    extra: &[(&str, &str)],
) -> Worker {
    let mut envs = vec![
        ("WARREN_PAGARME_BASE_URL", sim.url.as_str()),
        ("WARREN_PAGARME_SECRET_KEY", "sk_test_warren"),
        ("WARREN_APPMAX_BASE_URL", sim.url.as_str()),
        ("WARREN_PROVIDER_TIMEOUT", "1s"),
    ];
    envs.extend_from_slice(extra);
    env.spawn(
        &["worker", "--queue", queues, "--prefetch", prefetch],
        &envs,
    )
}

/// `warren demo seed`: `n` due subscriptions over both providers, cards by `mix`
/// (e.g. `ok,decline,500`).
pub fn seed(env: &TestEnv, n: &str, mix: &str) {
    let out = env.run(&[
        "demo",
        "seed",
        "--subscriptions",
        n,
        "--mix",
        mix,
        "--due-fraction",
        "1",
    ]);
    assert!(out.status.success(), "seed: {}", stderr(&out));
}

/// A due subscription written straight into the billing tables.
pub async fn subscription(
    env: &TestEnv,
    provider: &str,
    card: Option<&str>,
    metadata: Value,
    merchant: Option<Uuid>,
    provider_sub: Option<&str>,
) -> Uuid {
    let customer = Uuid::new_v4();
    sqlx::query("INSERT INTO customers (id, email) VALUES ($1, 'c@example.com')")
        .bind(customer)
        .execute(&env.pool)
        .await
        .unwrap();
    let pm = match card {
        Some(card) => {
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO customer_payment_methods
                   (id, customer_id, provider, provider_payment_method_id)
                 VALUES ($1, $2, $3::billing_provider, $4)",
            )
            .bind(id)
            .bind(customer)
            .bind(provider)
            .bind(card)
            .execute(&env.pool)
            .await
            .unwrap();
            Some(id)
        }
        None => None,
    };
    let sub = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO customer_subscriptions
           (id, customer_id, provider, status, current_period_start, current_period_end,
            vault_payment_method_id, metadata, amount_cents, merchant_id,
            provider_subscription_id)
         VALUES ($1, $2, $3::billing_provider, 'ACTIVE', now() - interval '31 days',
                 date_trunc('second', now() - interval '1 hour'), $4, $5, 4990, $6, $7)",
    )
    .bind(sub)
    .bind(customer)
    .bind(provider)
    .bind(pm)
    .bind(metadata)
    .bind(merchant)
    .bind(provider_sub)
    .execute(&env.pool)
    .await
    .unwrap();
    sub
}

/// An Appmax merchant integration with `credentials`; returns the merchant id.
pub async fn merchant(env: &TestEnv, credentials: Value) -> Uuid {
    let merchant = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO merchant_integrations (id, merchant_id, provider, credentials)
         VALUES ($1, $2, 'APPMAX', $3)",
    )
    .bind(Uuid::new_v4())
    .bind(merchant)
    .bind(credentials)
    .execute(&env.pool)
    .await
    .unwrap();
    merchant
}

/// The metadata a Pagar.me renewal needs.
pub fn pagarme_meta() -> Value {
    json!({ "intervalUnit": "MONTH", "intervalCount": 1, "pagarmeCustomerId": "cus_1" })
}

/// A due subscription of `provider` (`PAGARME` or `APPMAX`) with `card` and everything its
/// renewal needs (Pagar.me: the metadata; Appmax: a merchant integration and a provider
/// subscription id); returns its id and current period end.
pub async fn due_subscription(
    env: &TestEnv,
    provider: &str,
    card: &str,
) -> (Uuid, chrono::DateTime<chrono::Utc>) {
    let sub = match provider {
        "PAGARME" => subscription(env, provider, Some(card), pagarme_meta(), None, None).await,
        "APPMAX" => {
            let m = merchant(env, json!({ "access_token": "tok_merchant" })).await;
            subscription(
                env,
                provider,
                Some(card),
                json!({}),
                Some(m),
                Some("sub_appmax"),
            )
            .await
        }
        other => panic!("unknown provider {other}"),
    };
    let end =
        sqlx::query_scalar("SELECT current_period_end FROM customer_subscriptions WHERE id = $1")
            .bind(sub)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    (sub, end)
}

/// The task that renews `provider`'s subscriptions.
pub fn renewal_task(provider: &str) -> &'static str {
    match provider {
        "PAGARME" => "renewal.pagarme",
        "APPMAX" => "renewal.appmax",
        other => panic!("unknown provider {other}"),
    }
}

/// Publishes the first renewal attempt of `sub`'s period ending `end` as job `id`; returns
/// the charge's idempotency key.
pub async fn publish_renewal(
    env: &TestEnv,
    provider: &str,
    sub: Uuid,
    end: chrono::DateTime<chrono::Utc>,
    id: &str,
) -> String {
    let payload = json!({ "subscription_id": sub, "period_end": end.to_rfc3339() });
    env.publish_json(renewal_task(provider), payload, id).await;
    warren_core::billing::renewal_key(sub, end, 1)
}

/// One row per subscription: its card suffix and where it ended up.
#[derive(Debug, sqlx::FromRow)]
pub struct SubscriptionEnd {
    pub id: Uuid,
    pub provider: String,
    pub card: String,
    pub status: String,
    pub advanced: bool,
    pub dunning_attempt: i16,
    pub paid: i64,
    pub failed: i64,
    pub rows: i64,
}

pub async fn subscription_ends(env: &TestEnv) -> Vec<SubscriptionEnd> {
    sqlx::query_as(
        "SELECT s.id, s.provider::text AS provider, pm.provider_payment_method_id AS card,
                s.status::text AS status,
                s.current_period_end > now() AS advanced, s.dunning_attempt,
                count(t.*) FILTER (WHERE t.status = 'paid') AS paid,
                count(t.*) FILTER (WHERE t.status = 'failed') AS failed,
                count(t.*) AS rows
           FROM customer_subscriptions s
           JOIN customer_payment_methods pm ON pm.id = s.vault_payment_method_id
           LEFT JOIN payment_transactions t ON t.subscription_id = s.id
          GROUP BY s.id, pm.provider_payment_method_id
          ORDER BY s.id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// A card's outcome suffix, without its underscore (`card_x_500once` → `500once`).
pub fn suffix(card: &str) -> &str {
    card.rsplit('_').next().unwrap()
}

/// How many vaulted cards end in `_{suffix}`.
pub async fn cards(env: &TestEnv, suffix: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM customer_payment_methods
          WHERE provider_payment_method_id LIKE '%\\_' || $1",
    )
    .bind(suffix)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The `[billing]` settings renewal tests run with: an unknown outcome is given up on after
/// 3 s (dead-lettered `unknown-outcome`), Pagar.me repeats a request its lookups do not
/// show after 1 s, and a dead worker's lease runs out after 3 s.
pub const BILLING: &str = r#"
[billing]
unknown_outcome_after = "3s"
resend_after = "1s"
lease = "3s"
"#;

/// Whether a subscription with this provider and card suffix ends with its charge's outcome
/// unknown, dead-lettered `unknown-outcome`: a 5xx to a charge request may follow a charge,
/// so nothing but the provider's own idempotency makes a repeat safe. Pagar.me repeats the
/// request under its `Idempotency-Key` (a `_500once` card pays then); Appmax cannot (a
/// pending order may be settling), and a `_500` card never answers anything else.
pub fn ends_unknown(provider: &str, suffix: &str) -> bool {
    suffix == "500" || (provider == "APPMAX" && suffix == "500once")
}

/// How many subscriptions [`ends_unknown`].
pub async fn unknown_cards(env: &TestEnv) -> i64 {
    subscription_ends(env)
        .await
        .iter()
        .filter(|o| ends_unknown(&o.provider, suffix(&o.card)))
        .count() as i64
}

/// Every subscription decided: renewed, declined, or (see [`ends_unknown`]) dead-lettered.
/// Dead letters are counted by job id: a worker `kill -9`'d between a dead letter's confirm
/// and its ack leaves the delivery to be judged again, so a DLQ may hold two copies of one
/// job (docs/dlq.md, `copies`); [`dlq_depth`] counts copies.
pub async fn renewals_settled(env: &TestEnv) -> bool {
    let all = subscription_ends(env).await;
    let undecided = all
        .iter()
        .filter(|o| !ends_unknown(&o.provider, suffix(&o.card)))
        .filter(|o| o.status == "ACTIVE" && !o.advanced)
        .count();
    let unknown = all
        .iter()
        .filter(|o| ends_unknown(&o.provider, suffix(&o.card)))
        .count();
    undecided == 0 && super::invariants::dead_letters(env).await.len() == unknown
}

/// Messages in the two renewal DLQs, copies included.
pub async fn dlq_depth(env: &TestEnv) -> i64 {
    let mut n = 0;
    for q in ["renewals.pagarme", "renewals.appmax"] {
        n += i64::from(env.ready(&format!("{}.dlq", env.queue(q))).await);
    }
    n
}

/// Whether a subscription ended in the state its card suffix implies (one dunning step for
/// `_decline`; see [`ends_unknown`]).
pub fn in_card_state(o: &SubscriptionEnd) -> bool {
    if ends_unknown(&o.provider, suffix(&o.card)) {
        return o.status == "ACTIVE" && !o.advanced && o.paid == 0 && o.rows == 1;
    }
    match suffix(&o.card) {
        "ok" | "500once" | "429" | "timeout" | "slow" => {
            o.status == "ACTIVE" && o.advanced && o.paid == 1 && o.rows == 1
        }
        "decline" => {
            o.status == "PAST_DUE"
                && !o.advanced
                && o.dunning_attempt == 1
                && o.failed == 1
                && o.rows == 1
        }
        other => panic!("unexpected card suffix {other}"),
    }
}

/// Asserts that every subscription ended in the state its card suffix implies
/// ([`in_card_state`]); returns how many subscriptions each (provider, suffix) pair had.
pub async fn assert_card_states(env: &TestEnv) -> HashMap<(String, String), usize> {
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    for o in &subscription_ends(env).await {
        *per.entry((o.provider.clone(), suffix(&o.card).to_owned()))
            .or_default() += 1;
        assert!(in_card_state(o), "{o:?}");
    }
    per
}

/// Two renewal workers (100 calls/s each) and a scheduler run every seeded renewal until
/// [`renewals_settled`]; returns the workers for their metrics.
pub async fn renew_all(env: &TestEnv, sim: &Sim, within: Duration) -> [Worker; 2] {
    let workers = [
        renewal_worker(env, sim, "100"),
        renewal_worker(env, sim, "100"),
    ];
    let _scheduler = env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "false")]);
    eventually(within, "every renewal decided", || renewals_settled(env)).await;
    workers
}

/// Asserts that both providers had a subscription with each of `suffixes`.
pub fn assert_covers(per: &HashMap<(String, String), usize>, suffixes: &[&str]) {
    for provider in ["PAGARME", "APPMAX"] {
        for s in suffixes {
            assert!(
                per.contains_key(&(provider.to_owned(), (*s).to_owned())),
                "no {provider} subscription with a _{s} card: {per:?}"
            );
        }
    }
}
