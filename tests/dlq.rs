//! `warren dlq` on the real RabbitMQ and PostgreSQL: dead letters from workers and
//! from RabbitMQ itself are mirrored into `dead_letters`, listed, shown, replayed (the job runs
//! again with a full attempt budget; a renewal never charges twice) and purged.

mod common;

use common::money::assert_money;
use common::sim::*;
use common::*;
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn dlq(env: &TestEnv, q: &str) -> String {
    format!("{}.dlq", env.queue(q))
}

/// Runs `warren ARGS`, asserts success, returns stdout.
fn ok(env: &TestEnv, args: &[&str]) -> String {
    let out = env.run(args);
    assert!(
        out.status.success(),
        "warren {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `warren dlq list --all --format json ARGS`: the rows.
fn rows(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let out = ok(
        env,
        &[&["dlq", "list", "--all", "--format", "json"], args].concat(),
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["dead_letters"].as_array().unwrap().clone()
}

async fn mirror_states(env: &TestEnv) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT state, count(*) FROM dead_letters GROUP BY state ORDER BY state")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Acceptance: 100 `demo.fail` jobs dead-lettered (permanent) while their cause lasts,
/// replayed once it is fixed, end as 100 succeeded jobs, an empty DLQ and 100 mirror rows
/// marked replayed. The replayed messages carry no death headers and no attempt counter.
#[tokio::test(flavor = "multi_thread")]
async fn replaying_a_hundred_fixed_jobs_ends_with_a_hundred_succeeded() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    let until = chrono::Utc::now() + chrono::Duration::seconds(6);
    let payload = json!({ "mode": "permanent", "until": until.to_rfc3339() });
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            env.publish_json("demo.fail", payload.clone(), &format!("fail-{i}"))
                .await,
        );
    }
    eventually(T, "100 dead letters", || async {
        env.ready(&dlq(&env, "default")).await == 100
    })
    .await;
    assert_eq!(env.count_status("dead_lettered").await, 100);

    let list = ok(&env, &["dlq", "list", "--queue", "default"]);
    assert!(list.contains("100 dead letter(s)"), "{list}");
    assert!(list.contains("permanent"), "{list}");
    assert!(list.contains("demo.fail asked to fail"), "{list}");
    // Listing hands every message back.
    assert_eq!(env.ready(&dlq(&env, "default")).await, 100);

    // A dry run changes nothing.
    let dry = ok(&env, &["dlq", "replay", "--queue", "default", "--dry-run"]);
    assert!(
        dry.contains("100 dead letter(s) would be replayed"),
        "{dry}"
    );
    assert_eq!(env.ready(&dlq(&env, "default")).await, 100);

    // The cause is fixed once `until` has passed.
    let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    let mut spy = env.spy("demo.fail").await;
    let out = ok(
        &env,
        &["dlq", "replay", "--queue", "default", "--kind", "permanent"],
    );
    assert!(
        out.contains("100 dead letter(s) (100 message(s)) replayed"),
        "{out}"
    );
    eventually(T, "100 succeeded", || async {
        env.count_status("succeeded").await == 100
    })
    .await;
    assert_eq!(env.ready(&dlq(&env, "default")).await, 0);
    assert_eq!(mirror_states(&env).await, [("replayed".to_owned(), 100)]);
    for id in &ids {
        let row = env.job(id).await.unwrap();
        assert_eq!(row.status, "succeeded", "{id}");
        assert_eq!(row.attempts, 2, "{id}: one failed run, one replayed run");
    }
    let (_, d) = next_arrival(&mut spy, Duration::from_secs(10)).await;
    for h in [
        "x-attempt",
        "x-death",
        "x-error",
        "x-error-kind",
        "x-delivery-count",
    ] {
        assert_eq!(header(&d, h), None, "replayed message still has {h}");
    }
    assert!(d
        .properties
        .message_id()
        .as_ref()
        .unwrap()
        .as_str()
        .starts_with("fail-"));
    drop(worker);
    env.cleanup().await;
}

/// A retried job that ran out of attempts gets its whole budget back on replay: it
/// fails again, is retried again and dead-lettered again as `exhausted` after
/// `x-max-attempts` attempts, not at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_exhausted_job_gets_its_whole_retry_budget() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let _worker = env.worker(&["--queue", "default"]);
    let props = BasicProperties::default()
        .with_message_id("exhausted-1".into())
        .with_delivery_mode(2)
        .with_headers({
            let mut h = lapin::types::FieldTable::default();
            warren_core::envelope::set_int(&mut h, "x-max-attempts", 3);
            h
        });
    env.publish("demo.fail", br#"{"mode":"retryable"}"#, props)
        .await;
    let dead = || async { env.ready(&dlq(&env, "default")).await == 1 };
    eventually(T, "exhausted dead letter", dead).await;
    let first = rows(&env, &[]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["kind"], "exhausted");
    assert_eq!(first[0]["attempts"], 3);

    ok(&env, &["dlq", "replay"]);
    eventually(T, "dead-lettered again", dead).await;
    let all = rows(&env, &[]);
    assert_eq!(all.len(), 2, "{all:#?}");
    let again = all.iter().find(|r| r["state"] == "queued").unwrap();
    assert_eq!(again["attempts"], 3, "{again:#?}");
    assert!(again["error"].as_str().unwrap().contains("attempt 3 of 3"));
    assert_eq!(env.job("exhausted-1").await.unwrap().attempts, 6);
    env.cleanup().await;
}

/// Worker dead letters and RabbitMQ's own (delivery limit, reject) are both mirrored with
/// their kind and task; `show` prints headers and payload; replay of a broker dead letter
/// goes to its task; purge needs --yes; a message removed behind the tool's back is `gone`.
#[tokio::test(flavor = "multi_thread")]
async fn worker_and_broker_dead_letters_are_listed_shown_replayed_and_purged() {
    let env = TestEnv::new(&format!(
        "{FAST_CONFIG}\n[queues.default]\ndelivery_limit = 1\n"
    ))
    .await;
    // A worker dead letter.
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    env.publish_json("demo.fail", json!({"mode": "permanent"}), "by-worker")
        .await;
    eventually(T, "worker dead letter", || async {
        env.ready(&dlq(&env, "default")).await == 1
    })
    .await;
    worker.kill9();

    // RabbitMQ's own: redelivered past the queue's delivery limit.
    env.publish_json("demo.noop", json!({"n": 1}), "by-broker")
        .await;
    let q = env.queue("default");
    eventually(T, "broker dead letter", || async {
        if let Some(m) = env
            .ch
            .basic_get(q.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            m.delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        env.ready(&dlq(&env, "default")).await == 2
    })
    .await;

    let list = rows(&env, &[]);
    assert_eq!(list.len(), 2, "{list:#?}");
    let by = |id: &str| list.iter().find(|r| r["message_id"] == id).unwrap().clone();
    let (w, b) = (by("by-worker"), by("by-broker"));
    assert_eq!(
        (&w["source"], &w["kind"], &w["task"]),
        (&json!("worker"), &json!("permanent"), &json!("demo.fail"))
    );
    assert_eq!(
        (&b["source"], &b["kind"], &b["task"]),
        (
            &json!("broker"),
            &json!("delivery-limit"),
            &json!("demo.noop")
        )
    );
    // Syncing again (which redelivers every message) creates no new rows.
    assert_eq!(rows(&env, &[]).len(), 2);
    let table = ok(&env, &["dlq", "list"]);
    assert!(table.contains("2 dead letter(s)"), "{table}");
    assert!(table.contains("delivery-limit") && table.contains("permanent"));
    let filtered = rows(&env, &["--kind", "permanent", "--task", "demo.fail"]);
    assert_eq!(filtered.len(), 1);
    let bad = env.run(&["dlq", "list", "--kind", "nope"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--kind \"nope\""), "{}", stderr(&bad));

    let show = ok(&env, &["dlq", "show", &b["id"].to_string()]);
    for want in [
        "source:      broker",
        "dead-lettered by RabbitMQ: delivery_limit",
        "x-death",
        "\"n\": 1",
    ] {
        assert!(show.contains(want), "show lacks {want:?}:\n{show}");
    }
    let show = ok(&env, &["dlq", "show", &w["id"].to_string()]);
    assert!(show.contains("demo.fail asked to fail"), "{show}");
    assert!(show.contains("\"mode\": \"permanent\""), "{show}");
    let missing = env.run(&["dlq", "show", "999999"]);
    assert!(stderr(&missing).contains("no dead letter with id 999999"));

    // Replay the broker dead letter: it goes back to its task's queue, clean.
    let out = ok(&env, &["dlq", "replay", "--kind", "delivery-limit"]);
    assert!(
        out.contains("1 dead letter(s) (1 message(s)) replayed"),
        "{out}"
    );
    let d = env.take(&q, Duration::from_secs(10)).await;
    assert_eq!(d.routing_key.as_str(), "demo.noop");
    assert_eq!(
        d.properties.message_id().as_ref().unwrap().as_str(),
        "by-broker"
    );
    assert_eq!(header(&d, "x-death"), None);
    // (The queue itself may add `x-delivery-count: 0`.)
    let count = header(&d, "x-delivery-count");
    assert!(matches!(count.as_deref(), None | Some("0")), "{count:?}");

    // Purge refuses without --yes, naming it.
    let refused = env.run(&["dlq", "purge"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(env.ready(&dlq(&env, "default")).await, 1);
    let out = ok(&env, &["dlq", "purge", "--yes"]);
    assert!(
        out.contains("1 dead letter(s) (1 message(s)) purged"),
        "{out}"
    );
    assert_eq!(env.ready(&dlq(&env, "default")).await, 0);

    // A rejected message, then taken out of the DLQ by someone else: `gone`.
    env.publish_json("demo.noop", json!({}), "rejected-1").await;
    let m = env
        .ch
        .basic_get(q.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(T, "rejected dead letter", || async {
        env.ready(&dlq(&env, "default")).await == 1
    })
    .await;
    let r = rows(&env, &["--kind", "rejected"]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["state"], "queued");
    env.take(&dlq(&env, "default"), Duration::from_secs(5))
        .await;
    let r = rows(&env, &["--kind", "rejected"]);
    assert_eq!(r[0]["state"], "gone");
    assert_eq!(
        mirror_states(&env).await,
        [
            ("gone".to_owned(), 1),
            ("purged".to_owned(), 1),
            ("replayed".to_owned(), 1)
        ]
    );
    env.cleanup().await;
}

// ---- renewals ----

const RENEWAL_CONFIG: &str = r#"
[retry]
tiers = ["200ms", "500ms", "1s"]
"#;

/// Acceptance: a renewal dead-lettered by a provider outage (unreachable: nothing sent) is
/// replayed and charged once;
/// copies of that dead letter replayed after the charge (the same job id, and another job
/// id for the same period) charge nothing: the ledger and the handler's idempotency key
/// stop them.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_replayed_after_it_was_charged_is_not_charged_twice() {
    let env = TestEnv::new(RENEWAL_CONFIG).await;
    let (sub, end) = due_subscription(&env, "PAGARME", "card_r_ok").await;
    let sim = simulator(&env, 0).await;
    // The provider is down: nothing listens where the worker looks for it, so every charge
    // request is refused before it is sent.
    let down = format!("http://127.0.0.1:{}", free_port());
    let outage = [
        ("WARREN_PROVIDER_TIMEOUT", "2s"),
        ("WARREN_PAGARME_BASE_URL", down.as_str()),
    ];
    let worker = renewal_worker_with(&env, &sim, "32", &outage);
    // One attempt only: the refused request dead-letters it as `exhausted`.
    let payload = json!({ "subscription_id": sub, "period_end": end.to_rfc3339() });
    let props = BasicProperties::default()
        .with_message_id("renewal-job-1".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers({
            let mut h = lapin::types::FieldTable::default();
            warren_core::envelope::set_int(&mut h, "x-max-attempts", 1);
            h
        });
    env.publish("renewal.pagarme", payload.to_string().as_bytes(), props)
        .await;
    let dlq_name = dlq(&env, "renewals.pagarme");
    eventually(T, "renewal dead-lettered", || async {
        env.ready(&dlq_name).await == 1
    })
    .await;
    // Keep a copy of the dead letter as it is now (and put it back).
    let saved = env.take(&dlq_name, Duration::from_secs(5)).await;
    // `failed_at`: a later dead-lettering of the same job (a new x-failed-at).
    let put_back = |id: &str, failed_at: Option<&str>| {
        let mut headers = saved.properties.headers().clone().unwrap_or_default();
        if let Some(t) = failed_at {
            warren_core::envelope::set_str(&mut headers, "x-failed-at", t);
        }
        let props = saved
            .properties
            .clone()
            .with_message_id(id.into())
            .with_headers(headers);
        let ch = env.ch.clone();
        let (q, body) = (dlq_name.clone(), saved.data.clone());
        async move {
            let c = ch
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(c.is_ack());
        }
    };
    put_back("renewal-job-1", None).await;
    assert_eq!(header(&saved, "x-error-kind").as_deref(), Some("exhausted"));
    assert!(sim.charges().await.is_empty(), "{:?}", sim.charges().await);

    // The provider is back: the replay charges once.
    drop(worker);
    let _worker = renewal_worker_with(&env, &sim, "32", &[("WARREN_PROVIDER_TIMEOUT", "2s")]);
    let out = ok(&env, &["dlq", "replay", "--queue", "renewals.pagarme"]);
    assert!(
        out.contains("1 dead letter(s) (1 message(s)) replayed"),
        "{out}"
    );
    let paid = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM payment_transactions WHERE status = 'paid'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    eventually(T, "renewal paid", || async { paid().await == 1 }).await;
    env.wait_status("renewal-job-1", "succeeded", T).await;

    // Copies of the old dead letter, replayed after the charge: the very same message
    // (already replayed: removed without republishing), the same job dead-lettered again
    // (the ledger's duplicate), another job id for the same period (the handler's key).
    put_back("renewal-job-1", None).await;
    put_back("renewal-job-1", Some("2030-01-01T00:00:00.000Z")).await;
    put_back("renewal-job-1-copy", None).await;
    let out = ok(&env, &["dlq", "replay", "--queue", "renewals.pagarme"]);
    assert!(
        out.contains("2 dead letter(s) (2 message(s)) replayed"),
        "{out}"
    );
    env.wait_status("renewal-job-1-copy", "succeeded", T).await;
    eventually(T, "copies consumed", || async {
        env.ready(&env.queue("renewals.pagarme")).await == 0
    })
    .await;
    let charges = sim.charges().await;
    assert_eq!(charges.len(), 1, "charged more than once: {charges:?}");
    assert_money(&env, &sim).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_transactions")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let (advanced,): (bool,) =
        sqlx::query_as("SELECT current_period_end > $2 FROM customer_subscriptions WHERE id = $1")
            .bind(sub)
            .bind(end)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(advanced, "the period did not advance");
    assert_eq!(env.ready(&dlq_name).await, 0);
    env.cleanup().await;
}
