//! Whole-system tests of the renewal handlers: the real scheduler, workers and
//! provider simulator against the real RabbitMQ and PostgreSQL. After every run the
//! simulator's charge ledger must equal `payment_transactions`: no charge without a row, no
//! `paid` row without a charge, no key charged twice.

mod common;

use common::invariants::assert_invariants;
use common::money::assert_money;
use common::sim::*;
use common::*;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// Short retry tiers; dunning after 3 s then over.
const CONFIG: &str = r#"
[retry]
tiers = ["200ms", "500ms", "1s"]

[dunning]
schedule = ["3s"]
"#;

/// Short retry tiers; the default dunning schedule (the next attempt a day later); unknown
/// outcomes given up on quickly ([`BILLING`]).
fn fleet_config() -> String {
    format!("[retry]\ntiers = [\"200ms\", \"500ms\", \"1s\"]\n{BILLING}")
}

const T: Duration = Duration::from_secs(90);

/// The states each card suffix implies, every provider × outcome pair exercised, and the
/// money invariant.
async fn assert_states_and_ledger(env: &TestEnv, sim: &Sim) {
    let per = assert_card_states(env).await;
    assert_covers(
        &per,
        &["ok", "decline", "500", "500once", "429", "timeout", "slow"],
    );
    assert_money(env, sim).await;
}

const MIX: &str = "ok,decline,500,500once,429,timeout,slow";

/// Acceptance: 500 due subscriptions across both providers and every simulator outcome,
/// one scheduler and two workers: each ends in the state its card implies and the
/// simulator's ledger equals `payment_transactions`; `_timeout` cards are charged once.
#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_renewals_end_in_the_state_their_card_implies() {
    let env = TestEnv::new(&fleet_config()).await;
    seed(&env, "500", MIX);
    let sim = simulator(&env, 0).await;
    let workers = renew_all(&env, &sim, T).await;
    assert_states_and_ledger(&env, &sim).await;
    // Nothing was killed: each job whose outcome stayed unknown was dead-lettered once, with
    // no second copy.
    assert_eq!(dlq_depth(&env).await, unknown_cards(&env).await);

    // `_timeout` charges really timed out (unknown) and were reconciled by lookup, once each
    // (the 5xx answers of `_500` and `_500once` cards are unknown outcomes too).
    let timeouts = cards(&env, "timeout").await;
    let (mut unknown, mut found_paid) = (0.0, 0.0);
    for w in &workers {
        let m = w.metrics().await;
        unknown += metric(
            &m,
            "warren_provider_requests_total",
            &["operation=\"charge\"", "outcome=\"unknown\""],
        );
        found_paid += metric(
            &m,
            "warren_provider_requests_total",
            &["operation=\"lookup\"", "outcome=\"paid\""],
        );
    }
    assert!(
        unknown >= timeouts as f64,
        "charges that timed out: {unknown}"
    );
    assert!(
        found_paid >= timeouts as f64,
        "reconciled lookups: {found_paid}"
    );

    // The dead letters say why: the outcome stayed unknown after the 500 to the charge
    // (Pagar.me: never shown by lookups; Appmax: the order still pending).
    for q in ["renewals.pagarme", "renewals.appmax"] {
        let dlq = format!("{}.dlq", env.queue(q));
        let d = env.take(&dlq, Duration::from_secs(5)).await;
        assert_eq!(
            header(&d, "x-error-kind").as_deref(),
            Some("unknown-outcome")
        );
        let why = header(&d, "x-error").unwrap();
        assert!(why.contains("still unknown"), "{why}");
    }
    env.cleanup().await;
}

/// Acceptance: the same run with a worker `kill -9`'d twice mid-way: no key charged twice, no
/// charge lost, and every subscription in the state its card implies — except where a kill
/// cut an Appmax charge request after it was recorded and before the provider acted on it
/// (the simulator drops a request whose connection died). Warren cannot tell that from a
/// charge still settling: such a key is never charged again, and ends dead-lettered
/// `unknown-outcome` with no charge at the provider. (A Pagar.me request cut the same way is
/// repeated under its idempotency key and ends decided.)
#[tokio::test(flavor = "multi_thread")]
async fn renewals_survive_two_worker_kills() {
    // A bound long enough for a killed worker's lease (3 s) and a Pagar.me repeat (1 s).
    let config = r#"
[retry]
tiers = ["200ms", "500ms", "1s"]

[billing]
unknown_outcome_after = "12s"
resend_after = "1s"
lease = "3s"
"#;
    let env = TestEnv::new(config).await;
    seed(&env, "500", MIX);
    // Slower provider and a rate limit, so the kills land mid-run.
    let sim = simulator(&env, 20).await;
    let mut victim = renewal_worker(&env, &sim, "30");
    let _steady = renewal_worker(&env, &sim, "30");
    let _scheduler = env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "false")]);
    let decided = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM payment_transactions WHERE status IN ('paid', 'failed')",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    for target in [100i64, 250] {
        eventually(T, "renewals progressing", || async {
            decided().await >= target
        })
        .await;
        victim.kill9();
        let at_kill = decided().await;
        assert!(
            at_kill < 400,
            "the kill came too late to matter: {at_kill} decided"
        );
        victim = renewal_worker(&env, &sim, "30");
    }
    let settled = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM renewal_enqueues e
               LEFT JOIN job_runs j ON j.job_id = e.job_id::text
              WHERE j.status IS NULL OR j.status NOT IN ('succeeded', 'dead_lettered')",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
            == 0
    };
    eventually(T * 2, "every renewal job settled", settled).await;
    let charges = sim.charges().await;
    let mut lost_in_flight = 0;
    for o in &subscription_ends(&env).await {
        if in_card_state(o) {
            continue;
        }
        let (key, requests, status): (String, i32, String) = sqlx::query_as(
            "SELECT idempotency_key, charge_requests, status FROM payment_transactions
              WHERE subscription_id = $1",
        )
        .bind(o.id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert!(
            o.provider == "APPMAX"
                && o.status == "ACTIVE"
                && !o.advanced
                && requests >= 1
                && status == "unknown"
                && !charges.contains_key(&key),
            "{o:?} {key} {requests} {status}"
        );
        lost_in_flight += 1;
    }
    eprintln!("charge requests cut by the kills before the provider acted: {lost_in_flight}");
    assert!(lost_in_flight <= 2 * 32, "{lost_in_flight}");
    assert_money(&env, &sim).await;
    // Every job ended; a kill between a dead letter's confirm and its ack can leave a second
    // copy of it: at most the victim's prefetch (32) per kill.
    let dead = assert_invariants(&env, &[], T).await;
    assert!(
        dead.values()
            .all(|d| d.kind.as_deref() == Some("unknown-outcome")),
        "{dead:?}"
    );
    let (depth, failing) = (
        dlq_depth(&env).await,
        unknown_cards(&env).await + lost_in_flight,
    );
    assert!(
        (failing..=failing + 2 * 32).contains(&depth),
        "{depth} dead letters for {failing} jobs of unknown outcome"
    );
    drop(victim);
    env.cleanup().await;
}

/// Acceptance: a missing card, metadata field, provider subscription id or merchant
/// integration dead-letters the job as `permanent` naming the field, flags the
/// subscription, and calls no provider.
#[tokio::test(flavor = "multi_thread")]
async fn missing_preconditions_dead_letter_naming_the_field_without_a_provider_call() {
    let env = TestEnv::new(CONFIG).await;
    let good = merchant(&env, json!({ "access_token": "tok" })).await;
    let tokenless = merchant(&env, json!({})).await;
    let mut meta_no_customer = pagarme_meta();
    meta_no_customer
        .as_object_mut()
        .unwrap()
        .remove("pagarmeCustomerId");
    let mut meta_no_unit = pagarme_meta();
    meta_no_unit.as_object_mut().unwrap().remove("intervalUnit");
    let cases: Vec<(Uuid, &str)> = vec![
        (
            subscription(&env, "PAGARME", None, pagarme_meta(), None, None).await,
            "metadata.pagarmeCardId",
        ),
        (
            subscription(
                &env,
                "PAGARME",
                Some("card_a_ok"),
                meta_no_customer,
                None,
                None,
            )
            .await,
            "metadata.pagarmeCustomerId",
        ),
        (
            subscription(&env, "PAGARME", Some("card_b_ok"), meta_no_unit, None, None).await,
            "metadata.intervalUnit",
        ),
        (
            subscription(
                &env,
                "APPMAX",
                Some("tok_c_ok"),
                json!({}),
                Some(good),
                None,
            )
            .await,
            "provider_subscription_id",
        ),
        (
            subscription(
                &env,
                "APPMAX",
                Some("tok_d_ok"),
                json!({}),
                Some(Uuid::new_v4()),
                Some("sub_1"),
            )
            .await,
            "merchant_integrations",
        ),
        (
            subscription(
                &env,
                "APPMAX",
                Some("tok_e_ok"),
                json!({}),
                Some(tokenless),
                Some("sub_2"),
            )
            .await,
            "credentials.access_token",
        ),
    ];
    let sim = simulator(&env, 0).await;
    let worker = renewal_worker(&env, &sim, "100");
    let _scheduler = env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "false")]);
    let dlq = |q: &str| format!("{}.dlq", env.queue(q));
    eventually(T, "six dead letters", || async {
        env.ready(&dlq("renewals.pagarme")).await + env.ready(&dlq("renewals.appmax")).await == 6
    })
    .await;
    let mut errors = Vec::new();
    for q in ["renewals.pagarme", "renewals.appmax"] {
        while env.ready(&dlq(q)).await > 0 {
            let d = env.take(&dlq(q), Duration::from_secs(5)).await;
            assert_eq!(header(&d, "x-error-kind").as_deref(), Some("permanent"));
            errors.push(header(&d, "x-error").unwrap());
        }
    }
    for (sub, field) in &cases {
        assert!(
            errors
                .iter()
                .any(|e| e.contains(&sub.to_string()) && e.contains(field)),
            "no dead letter for {sub} naming {field}: {errors:#?}"
        );
        let (flag, events): (Option<String>, i64) = sqlx::query_as(
            "SELECT s.metadata->>'renewalError',
                    (SELECT count(*) FROM subscription_events e
                      WHERE e.subscription_id = s.id AND e.kind = 'renewal.precondition_failed')
               FROM customer_subscriptions s WHERE s.id = $1",
        )
        .bind(sub)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert!(
            flag.unwrap_or_default().contains(field),
            "{sub} not flagged"
        );
        assert_eq!(events, 1, "{sub}: event rows");
    }
    assert!(sim.charges().await.is_empty(), "a provider was called");
    assert!(
        !worker.logs().contains("sk_test_warren"),
        "the secret key was printed"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_transactions")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    env.cleanup().await;
}

/// A declined period is retried with its own key after the dunning delay: a fixed card
/// renews, a card declined again ends UNPAID; each key charged once.
#[tokio::test(flavor = "multi_thread")]
async fn dunning_retries_declined_periods_with_their_own_keys() {
    let env = TestEnv::new(CONFIG).await;
    let m = merchant(&env, json!({ "access_token": "tok" })).await;
    let fixed = subscription(
        &env,
        "PAGARME",
        Some("card_f_decline"),
        pagarme_meta(),
        None,
        None,
    )
    .await;
    let hopeless = subscription(
        &env,
        "APPMAX",
        Some("tok_h_decline"),
        json!({}),
        Some(m),
        Some("sub_h"),
    )
    .await;
    let sim = simulator(&env, 0).await;
    let _worker = renewal_worker(&env, &sim, "100");
    let _scheduler = env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "false")]);
    let status = |id: Uuid| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_as::<_, (String, i16, bool)>(
                "SELECT status::text, dunning_attempt, current_period_end > now()
                   FROM customer_subscriptions WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    eventually(T, "first attempt declined", || async {
        status(fixed).await.0 == "PAST_DUE"
    })
    .await;
    // The customer updates the card before the retry.
    sqlx::query(
        "UPDATE customer_payment_methods SET provider_payment_method_id = 'card_f_ok'
          WHERE provider_payment_method_id = 'card_f_decline'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    eventually(T, "fixed card renewed", || async {
        status(fixed).await == ("ACTIVE".into(), 0, true)
    })
    .await;
    eventually(T, "hopeless card unpaid", || async {
        status(hopeless).await == ("UNPAID".into(), 2, false)
    })
    .await;

    let charges = sim.charges().await;
    let key_of = |sub: Uuid, suffix: &str| {
        charges
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("renewal:{sub}:")) && k.ends_with(suffix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(charges.len(), 4, "{charges:?}");
    assert_eq!(key_of(fixed, ":2")[0].1, ("paid".to_owned(), 1));
    assert_eq!(key_of(hopeless, ":2")[0].1, ("failed".to_owned(), 1));
    assert!(charges.values().all(|c| c.1 == 1));
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM subscription_events WHERE subscription_id = $1 ORDER BY id",
    )
    .bind(hopeless)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(kinds, ["renewal.declined", "renewal.unpaid"]);
    env.cleanup().await;
}

/// A worker on a renewal queue without the provider's settings refuses to start, naming them.
#[tokio::test(flavor = "multi_thread")]
async fn renewal_worker_without_provider_settings_names_what_is_missing() {
    let env = TestEnv::new(CONFIG).await;
    let out = env.run(&["worker", "--queue", "renewals.pagarme"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("WARREN_PAGARME_BASE_URL") && err.contains("WARREN_PAGARME_SECRET_KEY"),
        "{err}"
    );
    let out = env.run(&["worker", "--queue", "renewals.appmax"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("WARREN_APPMAX_BASE_URL"),
        "{}",
        stderr(&out)
    );
    env.cleanup().await;
}
