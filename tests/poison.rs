//! Hostile input: messages whose own data PostgreSQL refuses (a NUL byte in the job id, the
//! task name or an error text) are dead-lettered `malformed` once, and the same worker goes
//! on with the next job, `/readyz` staying 200. Published over plain AMQP, as any client can.

mod common;

use common::invariants::dead_letters;
use common::*;
use lapin::BasicProperties;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
/// How soon a poison message must be dead-lettered, and the next job run after it.
const SOON: Duration = Duration::from_secs(10);

/// Polls `/readyz` every 100 ms until stopped; remembers every answer that was not 200.
struct ReadyWatch {
    stop: Arc<AtomicBool>,
    bad: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    fn start(w: &Worker) -> Self {
        let url = w.url("/readyz");
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (stop.clone(), bad.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                match reqwest::get(&url).await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        b.lock().unwrap().push(format!("{status}: {body}"));
                    }
                    Err(e) => b.lock().unwrap().push(format!("no answer: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { stop, bad, task }
    }

    async fn assert_always_ready(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let bad = self.bad.lock().unwrap();
        assert!(bad.is_empty(), "/readyz was not 200: {bad:?}");
    }
}

fn props(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Waits until a dead letter with this `message_id` sits in a DLQ with `kind`; returns its
/// error.
async fn dead_lettered(env: &TestEnv, message_id: &str, kind: &str) -> String {
    let mut seen = None;
    let deadline = std::time::Instant::now() + SOON;
    while std::time::Instant::now() < deadline {
        if let Some(d) = dead_letters(env).await.remove(message_id) {
            seen = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = seen.unwrap_or_else(|| panic!("{message_id:?} not dead-lettered within {SOON:?}"));
    assert_eq!(d.kind.as_deref(), Some(kind), "{d:?}");
    let error = d.error.unwrap_or_default();
    assert!(!error.is_empty(), "dead letter without a reason: {error:?}");
    error
}

/// The worker goes on: a normal job published now succeeds within seconds.
async fn next_job_runs(env: &TestEnv) {
    let next = env.publish_json("demo.noop", json!({}), &id()).await;
    env.wait_status(&next, "succeeded", SOON).await;
}

async fn dead_lettered_count(w: &Worker) -> f64 {
    metric(
        &w.metrics().await,
        "warren_jobs_processed_total",
        &["outcome=\"dead_lettered\""],
    )
}

/// The ledger row of a dead letter the worker judged malformed, whatever id it was recorded
/// under: (job_id, task, last_error).
async fn dead_lettered_rows(env: &TestEnv) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT job_id, task, last_error FROM job_runs WHERE status = 'dead_lettered' \
         ORDER BY created_at",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// (a) A `message_id` with a NUL byte: PostgreSQL text cannot hold it.
#[tokio::test(flavor = "multi_thread")]
async fn nul_in_message_id_is_dead_lettered_and_the_worker_goes_on() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let watch = ReadyWatch::start(&w);

    let poison = "a\u{0}b";
    env.publish("demo.noop", br#"{"x":1}"#, props(poison)).await;
    let error = dead_lettered(&env, poison, "malformed").await;
    assert!(error.contains("NUL"), "{error}");
    next_job_runs(&env).await;

    // Recorded under an id the ledger can hold, which the reason names.
    let rows = dead_lettered_rows(&env).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0.starts_with("malformed:"), "{rows:?}");
    assert!(error.contains(&rows[0].0), "{error} does not name {rows:?}");
    // The dead letter is the message as published: body, message_id, routing key.
    let dl = env.take(&format!("{}.default.dlq", env.ns), T).await;
    assert_eq!(dl.data, br#"{"x":1}"#);
    assert_eq!(
        dl.properties.message_id().as_ref().unwrap().as_str(),
        poison
    );
    assert_eq!(
        header(&dl, "x-original-routing-key").as_deref(),
        Some("demo.noop")
    );
    assert_eq!(dead_lettered_count(&w).await, 1.0);
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    watch.assert_always_ready().await;
    drop(w);
    env.cleanup().await;
}

/// (b) A routing key (task name) with a NUL byte, matched by `demo.#`.
#[tokio::test(flavor = "multi_thread")]
async fn nul_in_task_name_is_dead_lettered_and_the_worker_goes_on() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let watch = ReadyWatch::start(&w);

    let job = id();
    env.publish("demo.\u{0}", b"{}", props(&job)).await;
    let error = dead_lettered(&env, &job, "malformed").await;
    assert!(error.contains("NUL"), "{error}");
    next_job_runs(&env).await;

    let row = env.wait_status(&job, "dead_lettered", SOON).await;
    assert_eq!(row.attempts, 0, "{row:?}");
    let dl = env.take(&format!("{}.default.dlq", env.ns), T).await;
    assert_eq!(
        header(&dl, "x-original-routing-key").as_deref(),
        Some("demo.\u{0}")
    );
    assert_eq!(dead_lettered_count(&w).await, 1.0);
    watch.assert_always_ready().await;
    drop(w);
    env.cleanup().await;
}

/// (c) NUL inside a JSON string is valid JSON. `demo.noop` stores nothing of its payload, so
/// the job succeeds: what a handler does with its payload is its own business. But when the
/// NUL reaches the runtime's own writes (here the decode error of `demo.fail`, which quotes
/// the bad value, becomes the dead letter's `last_error`), it is escaped, not written raw.
#[tokio::test(flavor = "multi_thread")]
async fn nul_in_a_json_string_never_reaches_the_ledger_raw() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let watch = ReadyWatch::start(&w);

    let ok = id();
    env.publish("demo.noop", br#"{"x":"a\u0000b"}"#, props(&ok))
        .await;
    env.wait_status(&ok, "succeeded", SOON).await;

    let bad = id();
    env.publish("demo.fail", br#"{"mode":"permanent\u0000"}"#, props(&bad))
        .await;
    let error = dead_lettered(&env, &bad, "malformed").await;
    assert!(error.contains("permanent"), "{error}");
    let row = env.wait_status(&bad, "dead_lettered", SOON).await;
    let last_error = row.last_error.unwrap_or_default();
    assert!(
        last_error.contains("permanent") && !last_error.contains('\0'),
        "{last_error:?}"
    );
    next_job_runs(&env).await;
    assert_eq!(dead_lettered_count(&w).await, 1.0);
    watch.assert_always_ready().await;
    drop(w);
    env.cleanup().await;
}

/// (d) The longest task name AMQP can carry (255 bytes, multi-byte UTF-8 included) is
/// valid: no handler has it, so it is dead-lettered `unknown-task`, and recorded as it is.
#[tokio::test(flavor = "multi_thread")]
async fn longest_task_name_is_recorded_as_it_is() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let watch = ReadyWatch::start(&w);

    let mut task = String::from("demo.ção.");
    while task.len() < 255 {
        task.push('x');
    }
    assert_eq!(task.len(), 255);
    let job = id();
    env.publish(&task, b"{}", props(&job)).await;
    dead_lettered(&env, &job, "unknown-task").await;
    env.wait_status(&job, "dead_lettered", SOON).await;
    let rows = dead_lettered_rows(&env).await;
    assert_eq!(rows[0].1, task);
    next_job_runs(&env).await;
    assert_eq!(dead_lettered_count(&w).await, 1.0);
    watch.assert_always_ready().await;
    drop(w);
    env.cleanup().await;
}

/// A worker (re)started with poison already waiting in its queue still gets past it.
#[tokio::test(flavor = "multi_thread")]
async fn worker_started_with_poison_queued_processes_the_next_job() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let poison = "\u{0}";
    env.publish("demo.noop", b"{}", props(poison)).await;
    env.publish("demo.\u{0}\u{0}", b"{}", props(&id())).await;
    let after = env.publish_json("demo.noop", json!({}), &id()).await;

    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let watch = ReadyWatch::start(&w);
    env.wait_status(&after, "succeeded", SOON).await;
    dead_lettered(&env, poison, "malformed").await;
    eventually(SOON, "two dead letters counted", || async {
        dead_lettered_count(&w).await == 2.0
    })
    .await;
    next_job_runs(&env).await;
    watch.assert_always_ready().await;

    // And once more after a restart, with poison queued while it was down.
    drop(w);
    env.publish("demo.noop", b"{}", props("b\u{0}")).await;
    let after = env.publish_json("demo.noop", json!({}), &id()).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let watch = ReadyWatch::start(&w);
    env.wait_status(&after, "succeeded", SOON).await;
    dead_lettered(&env, "b\u{0}", "malformed").await;
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    watch.assert_always_ready().await;
    drop(w);
    env.cleanup().await;
}

/// Second line of defence: the ledger batches many jobs per statement; one row PostgreSQL
/// refuses (class 22, data exception) is refused alone, the others in its batch are
/// written, and the `database` check stays up (PostgreSQL answered).
#[tokio::test(flavor = "multi_thread")]
async fn ledger_refuses_a_bad_row_alone_and_stays_healthy() {
    use warren_core::telemetry::Health;
    use warren_workers::ledger::{Finish, JobKey, Ledger, Status};

    let env = TestEnv::new(FAST_CONFIG).await;
    let health = Health::new(&["database"]);
    let ledger = Ledger::start(env.pool.clone(), health.clone(), 64, 1);
    let key = |job_id: &str, task: &str| {
        Arc::new(JobKey {
            job_id: job_id.to_owned(),
            task: task.to_owned(),
            queue: "default".into(),
        })
    };
    let finish = || Finish {
        status: Status::Succeeded,
        error: None,
        attempt_delta: 1,
        started_at: chrono::Utc::now(),
        fresh: true,
    };
    let (good, bad, good2) = (
        key(&id(), "demo.noop"),
        key(&id(), "demo.\u{0}"),
        key(&id(), "demo.noop"),
    );
    let (x, y, z) = tokio::time::timeout(SOON, async {
        tokio::join!(
            ledger.finish(good.clone(), finish()),
            ledger.finish(bad.clone(), finish()),
            ledger.finish(good2.clone(), finish()),
        )
    })
    .await
    .expect("a refused row must not stall the ledger");
    assert!(x.is_ok() && z.is_ok(), "{x:?} {z:?}");
    assert!(y.is_err(), "the NUL row was written?");
    assert_eq!(env.job(&good.job_id).await.unwrap().status, "succeeded");
    assert_eq!(env.job(&good2.job_id).await.unwrap().status, "succeeded");
    assert!(env.job(&bad.job_id).await.is_none());
    // A check of an id PostgreSQL refuses is refused too, alone.
    let (c1, c2) = tokio::time::timeout(SOON, async {
        tokio::join!(
            ledger.check(key("a\u{0}", "demo.noop")),
            ledger.check(good.clone())
        )
    })
    .await
    .expect("a refused check must not stall the ledger");
    assert!(c1.is_err() && c2.is_ok(), "{c1:?} {c2:?}");
    assert!(health.is_up("database"));
    drop(ledger);
    env.cleanup().await;
}

/// Poison in a DLQ does not stop `warren dlq` either: its mirror (`dead_letters`, text and
/// jsonb columns) shows a NUL as `\0`; the queue keeps the message as it is.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_mirrors_poison_dead_letters() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    env.publish("demo.noop", b"{}", props("a\u{0}b")).await;
    env.publish("demo.\u{0}", b"{}", props(&id())).await;
    env.publish("demo.fail", br#"{"mode":"x\u0000"}"#, props(&id()))
        .await;
    eventually(SOON, "three dead letters", || async {
        dead_letters(&env).await.len() == 3
    })
    .await;
    drop(w);
    let out = env.run(&["dlq", "list", "--format", "json"]);
    assert!(out.status.success(), "warren dlq list: {}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains(r"a\\0b"), "{listed}");
    assert!(listed.contains(r"demo.\\0"), "{listed}");
    let mirrored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE kind = 'malformed' AND payload_json IS NOT NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(mirrored, 3);
    // The queue still holds the messages as they were.
    assert!(dead_letters(&env).await.contains_key("a\u{0}b"));
    env.cleanup().await;
}
