//! Fault cases around the broker link: a blackholed connection (5), a job failing forever
//! (7), a job longer than the broker's `consumer_timeout` (16), delayed jobs across a
//! RabbitMQ restart (18), scaling workers 1 → 5 → 1 under load (20), and resource alarms
//! seen by workers and ingest. After each, the
//! global invariants: every confirmed job settled (succeeded, or dead-lettered with a reason)
//! and no job retried without bound.
//!
//! Cases 16 and 18 change or restart the shared RabbitMQ: they take `SERIAL` exclusively
//! (the other cases share it), restore the broker in a guard even on panic, and this binary
//! runs alone like `faults.rs` (cargo runs test binaries one after another). On a machine
//! shared with other test runs, run it under the outage lock (docs/reliability.md).

mod common;

use common::invariants::assert_invariants;
use common::proxy::Proxy;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// Ordinary cases share it; cases that change or restart the broker take it exclusively.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Ids among `ids` whose handler started more than once.
async fn ran_twice(env: &TestEnv, ids: &[String]) -> Vec<(String, i32)> {
    sqlx::query_as("SELECT job_id, attempts FROM job_runs WHERE job_id = ANY($1) AND attempts <> 1")
        .bind(ids)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Case 5: worker↔broker traffic blackholed (a proxy stops forwarding, sockets stay open)
/// for well over two heartbeats: the worker detects the dead link, /readyz goes 503, and
/// once traffic flows again it reconnects and every job succeeds, each run once.
#[tokio::test(flavor = "multi_thread")]
async fn case_05_blackholed_broker_traffic_is_detected() {
    let _shared = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let proxy = Proxy::rabbitmq().await;
    let url = proxy.amqp_url("?heartbeat=2");
    let mut w = env.spawn(
        &["worker", "--queue", "default", "--prefetch", "10"],
        &[("AMQP_URL", url.as_str())],
    );
    w.wait_ready(T).await;
    let mut ids = env.publish_sleeps(150, 20).await;
    eventually(T, "some jobs done", || async {
        env.count_status("succeeded").await >= 20
    })
    .await;

    proxy.set_blackhole(true);
    let cut = Instant::now();
    eventually(T, "/readyz 503 once heartbeats stop", || async {
        w.readyz_status().await == Some(503)
    })
    .await;
    let detected = cut.elapsed();
    // Jobs published during the cut wait in the queue (the harness talks to RabbitMQ
    // directly, not through the proxy).
    ids.extend(env.publish_sleeps(50, 5).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.readyz_status().await, Some(503), "ready again while cut");
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "worker exited:\n{}",
        w.logs()
    );
    let before_heal = proxy.accepted();
    proxy.set_blackhole(false);

    assert_invariants(&env, &ids, Duration::from_secs(120)).await;
    w.wait_ready(T).await;
    assert_eq!(env.count_status("succeeded").await, ids.len() as i64);
    assert_eq!(env.job_rows().await, ids.len() as i64);
    assert_eq!(ran_twice(&env, &ids).await, vec![], "a job ran twice");
    assert!(
        proxy.accepted() > before_heal || before_heal > 1,
        "no reconnect"
    );
    assert!(metric(&w.metrics().await, "warren_broker_reconnects_total", &[]) >= 1.0);
    eprintln!("case 5: blackhole detected after {detected:?}");
    drop(w);
    env.cleanup().await;
}

/// Case 7: jobs that fail retryably forever back off through the tiers and are
/// dead-lettered `exhausted` after the attempt budget, while a stream of other jobs keeps
/// succeeding meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn case_07_transient_failure_forever_is_bounded() {
    let _shared = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default", "--prefetch", "10"]);
    w.wait_ready(T).await;
    let mut failing = Vec::new();
    for _ in 0..3 {
        failing.push(
            env.publish_json("demo.fail", json!({"mode": "retryable"}), &id())
                .await,
        );
    }
    // Keep other work flowing until every failing job is dead-lettered.
    let mut noops = Vec::new();
    let mut done_while_failing = 0;
    let deadline = Instant::now() + T;
    loop {
        noops.push(env.publish_json("demo.noop", json!({}), &id()).await);
        let dead: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_runs WHERE job_id = ANY($1) AND status = 'dead_lettered'",
        )
        .bind(&failing)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if dead == 3 {
            break;
        }
        done_while_failing = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM job_runs WHERE task = 'demo.noop' AND status = 'succeeded'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert!(
            Instant::now() < deadline,
            "failing jobs never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        done_while_failing >= 20,
        "only {done_while_failing} other jobs finished while the failing ones retried"
    );
    let all: Vec<String> = failing.iter().chain(&noops).cloned().collect();
    let dead = assert_invariants(&env, &all, T).await;
    for job in &failing {
        let d = &dead[job];
        assert_eq!(d.kind.as_deref(), Some("exhausted"), "{d:?}");
        assert_eq!(d.attempts.as_deref(), Some("5"), "{d:?}");
        assert_eq!(env.job(job).await.unwrap().attempts, 5);
    }
    assert_eq!(dead.len(), 3, "other jobs were dead-lettered: {dead:?}");
    assert_eq!(ran_twice(&env, &noops).await, vec![]);
    drop(w);
    env.cleanup().await;
}

/// Case 20: one worker, then five, then one again (four stopped with SIGTERM) while jobs are
/// published continuously: every job succeeds, each handler run once, nothing lost.
#[tokio::test(flavor = "multi_thread")]
async fn case_20_workers_scaled_1_5_1_under_load() {
    let _shared = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let args = ["--queue", "default", "--prefetch", "5"];
    let mut first = env.worker(&args);
    first.wait_ready(T).await;
    let stop = AtomicBool::new(false);
    let publisher = async {
        let mut ids = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            ids.push(
                env.publish_json("demo.sleep", json!({"ms": 10}), &id())
                    .await,
            );
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        ids
    };
    let scaler = async {
        let progress = |n: i64| {
            let env = &env;
            async move {
                eventually(T, &format!("{n} jobs succeeded"), || async {
                    env.count_status("succeeded").await >= n
                })
                .await
            }
        };
        progress(100).await;
        let mut extra = Vec::new();
        for _ in 0..4 {
            extra.push(env.worker(&args));
        }
        for w in &mut extra {
            w.wait_ready(T).await;
        }
        let at_five = env.count_status("succeeded").await;
        progress(at_five + 400).await;
        let mut busy = 0;
        for w in &extra {
            let m = w.metrics().await;
            if metric(
                &m,
                "warren_jobs_processed_total",
                &["outcome=\"succeeded\""],
            ) > 0.0
            {
                busy += 1;
            }
        }
        for w in &extra {
            w.signal("TERM");
        }
        for w in &mut extra {
            let status = w.wait_exit(T).await;
            assert!(status.success(), "{status}:\n{}", w.logs());
        }
        let at_one = env.count_status("succeeded").await;
        progress(at_one + 100).await;
        stop.store(true, Ordering::SeqCst);
        busy
    };
    let (ids, busy) = tokio::join!(publisher, scaler);
    assert!(busy >= 2, "only {busy} of the 4 added workers got work");
    assert_invariants(&env, &ids, Duration::from_secs(120)).await;
    assert_eq!(env.count_status("succeeded").await, ids.len() as i64);
    assert_eq!(env.job_rows().await, ids.len() as i64);
    assert_eq!(ran_twice(&env, &ids).await, vec![], "a job ran twice");
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    eprintln!("case 20: {} jobs", ids.len());
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "{}",
        first.logs()
    );
    drop(first);
    env.cleanup().await;
}

/// RabbitMQ application settings changed for a test, put back when dropped (also when an
/// assertion fails). Channels read them when they open, so only new channels see them.
struct BrokerSetting {
    previous: Vec<(String, Option<String>)>,
}

impl BrokerSetting {
    fn set(values: &[(&str, &str)]) -> Self {
        let mut previous = Vec::new();
        for (key, value) in values {
            let out = std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "eval",
                    &format!("application:get_env(rabbit, {key})."),
                ])
                .output()
                .expect("rabbitmqctl");
            assert!(out.status.success(), "{}", stderr(&out));
            let text = stdout(&out);
            let old = text
                .trim()
                .strip_prefix("{ok,")
                .and_then(|v| v.strip_suffix('}'))
                .map(str::to_owned);
            previous.push((key.to_string(), old));
            sh(&format!(
                "rabbitmqctl -q eval 'application:set_env(rabbit, {key}, {value}).'"
            ));
        }
        Self { previous }
    }
}

impl Drop for BrokerSetting {
    fn drop(&mut self) {
        for (key, old) in &self.previous {
            let expr = match old {
                Some(v) => format!("application:set_env(rabbit, {key}, {v})."),
                None => format!("application:unset_env(rabbit, {key})."),
            };
            sh(&format!("rabbitmqctl -q eval '{expr}'"));
        }
    }
}

/// Case 16: a job runs longer than the broker's `consumer_timeout` (lowered to 5 s, checked
/// every second, for this test only). RabbitMQ closes the consumer's channel and requeues
/// the delivery; the worker must notice (reconnect, not sit idle reporting healthy), and the
/// job must end — succeeded (a redelivery after the first run committed is a duplicate) or
/// dead-lettered by the delivery limit — never loop forever. Other work keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn case_16_job_longer_than_consumer_timeout() {
    let _exclusive = SERIAL.write().await;
    let config = format!("{FAST_CONFIG}\n[queues.default]\ndelivery_limit = 3\n");
    let env = TestEnv::new(&config).await;
    let _timeout = BrokerSetting::set(&[
        ("consumer_timeout", "5000"),
        ("channel_tick_interval", "1000"),
    ]);
    let mut w = env.worker(&["--queue", "default", "--prefetch", "4"]);
    w.wait_ready(T).await;
    let long = env
        .publish_json("demo.sleep", json!({"ms": 12000}), &id())
        .await;
    eventually(
        T,
        "the broker closed the channel; the worker reconnected",
        || async { metric(&w.metrics().await, "warren_broker_reconnects_total", &[]) >= 1.0 },
    )
    .await;
    w.wait_ready(T).await;
    // Not idle while healthy: new work after the reconnect runs.
    let after = env.publish_sleeps(5, 1).await;
    let mut all = after.clone();
    all.push(long.clone());
    let dead = assert_invariants(&env, &all, Duration::from_secs(120)).await;
    let row = env.job(&long).await.unwrap();
    eprintln!(
        "case 16: long job {row:?}, dead letter {:?}",
        dead.get(&long)
    );
    if row.status == "dead_lettered" {
        assert_eq!(dead[&long].kind.as_deref(), Some("delivery-limit"));
    }
    for job in &after {
        assert_eq!(env.job(job).await.unwrap().status, "succeeded");
    }
    // Settled means settled: nothing for it left on the queue to loop on.
    eventually(T, "queue empty", || async {
        env.ready(&env.queue("default")).await == 0
    })
    .await;
    assert!(w.child.try_wait().unwrap().is_none(), "{}", w.logs());
    drop(w);
    env.cleanup().await;
}

/// Case 18: jobs waiting in several delay tiers (delayed publishes and retries) when
/// RabbitMQ restarts: all end succeeded, none lost, none run before its delay.
/// On RabbitMQ 3.10 a tier whose quorum queue recovers before the exchanges finds no
/// dead-letter exchange for the messages that expired meanwhile, keeps them in its
/// at-least-once dead-letter buffer and retries only after the broker's
/// `dead_letter_worker_publisher_confirm_timeout` (180 s by default): hence the long settle
/// time. See docs/reliability.md, case 18.
#[tokio::test(flavor = "multi_thread")]
async fn case_18_mixed_retry_delays_across_broker_restart() {
    let _exclusive = SERIAL.write().await;
    let env = TestEnv::new("[retry]\ntiers = [\"2s\", \"5s\", \"10s\"]\n").await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    // (id, delay in ms, database time of the publish)
    let mut delayed: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for delay in ["1s", "2s", "4s", "8s", "10s"] {
        for _ in 0..2 {
            let job = id();
            let at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
                .fetch_one(&env.pool)
                .await
                .unwrap();
            let out = env.run(&[
                "publish",
                "demo.noop",
                "--payload",
                "{}",
                "--delay",
                delay,
                "--id",
                &job,
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
            let ms = humantime::parse_duration(delay).unwrap().as_millis() as i64;
            delayed.push((job, ms, at));
        }
    }
    // Retries: fail until 8 s from now, so they sit in the 2 s and 5 s tiers meanwhile.
    let until = chrono::Utc::now() + chrono::Duration::seconds(8);
    let mut retried = Vec::new();
    for _ in 0..3 {
        retried.push(
            env.publish_json(
                "demo.fail",
                json!({"mode": "retryable", "until": until.to_rfc3339()}),
                &id(),
            )
            .await,
        );
    }
    env.wait_status(&retried[0], "failed", T).await;
    rabbitmq_outage_seen_by(&w).await;
    let env = env.reconnect().await;
    let all: Vec<String> = delayed
        .iter()
        .map(|(id, _, _)| id.clone())
        .chain(retried.iter().cloned())
        .collect();
    let restarted = std::time::Instant::now();
    assert_invariants(&env, &all, Duration::from_secs(260)).await;
    eprintln!(
        "case 18: {} jobs settled {:?} after the restart",
        all.len(),
        restarted.elapsed()
    );
    assert_eq!(env.count_status("succeeded").await, all.len() as i64);
    for (job, ms, at) in &delayed {
        let started: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT started_at FROM job_runs WHERE job_id = $1")
                .bind(job)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        let waited = (started - *at).num_milliseconds();
        assert!(
            waited >= *ms - 50,
            "{job} ran {waited} ms after a {ms} ms delay"
        );
    }
    for job in &retried {
        let row = env.job(job).await.unwrap();
        assert!(row.attempts >= 2, "{job} was not retried: {row:?}");
    }
    w.wait_ready(T).await;
    drop(w);
    env.cleanup().await;
}

/// RabbitMQ's memory high watermark set for a test (an alarm at once with a tiny value),
/// put back when dropped, also when an assertion fails.
struct MemoryAlarm {
    previous: String,
}

impl MemoryAlarm {
    fn raise() -> Self {
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "eval",
                "vm_memory_monitor:get_vm_memory_high_watermark().",
            ])
            .output()
            .expect("rabbitmqctl");
        assert!(out.status.success(), "{}", stderr(&out));
        let previous = stdout(&out).trim().to_owned();
        sh("rabbitmqctl -q set_vm_memory_high_watermark 0.0001");
        Self { previous }
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        sh(&format!(
            "rabbitmqctl -q eval 'vm_memory_monitor:set_vm_memory_high_watermark({}).'",
            self.previous
        ));
    }
}

/// A memory alarm blocks publishing: a worker whose retry publish is blocked reports it on
/// `/readyz` (`"flow": false`, 503) and in `warren_broker_blocked` within seconds, instead of
/// holding its deliveries silently; when the alarm clears it is ready again and the job
/// finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_alarm_shows_on_readiness_and_clears() {
    let _exclusive = SERIAL.write().await;
    let env = TestEnv::new("[retry]\ntiers = [\"1s\"]\n").await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    // Fails for 15 s, retried every second: the worker keeps publishing retries.
    let job = env.publish_failing_for(15).await;
    eventually(T, "the job retrying", || async {
        env.job(&job).await.is_some_and(|j| j.attempts >= 2)
    })
    .await;
    let alarm = MemoryAlarm::raise();
    let raised = Instant::now();
    eventually(
        Duration::from_secs(10),
        "readiness reports the block",
        || async { matches!(w.readyz().await, Some((503, body)) if body["flow"] == json!(false)) },
    )
    .await;
    eprintln!("blocked reported {:?} after the alarm", raised.elapsed());
    assert!(
        raised.elapsed() < Duration::from_secs(5),
        "{:?}",
        raised.elapsed()
    );
    assert_eq!(
        metric(&w.metrics().await, "warren_broker_blocked", &[]),
        1.0
    );
    drop(alarm);
    w.wait_ready(T).await;
    assert_eq!(
        metric(&w.metrics().await, "warren_broker_blocked", &[]),
        0.0
    );
    env.wait_status(&job, "succeeded", T).await;
    drop(w);
    env.cleanup().await;
}

/// What one ingest client saw for one request.
#[derive(Debug, Clone)]
struct Answer {
    /// `X-Job-Id` sent (id clients) or `Idempotency-Key` sent (key clients).
    id: Option<String>,
    key: Option<String>,
    /// The request body (a retry with the same key must send the same).
    sent: serde_json::Value,
    status: u16,
    body: serde_json::Value,
    started: Instant,
    took: Duration,
}

/// The job ids an answer's body lists.
fn listed_ids(body: &serde_json::Value) -> Vec<String> {
    body["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .filter_map(|j| j["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Under a memory alarm, ingest says so on `/readyz` within seconds and answers every
/// request within a second: 202 only for jobs the broker confirmed, 503 "not accepted"
/// (`broker_blocked`) only when nothing was sent, and 503 `outcome_unknown` with the ids
/// for jobs sent but not confirmed. After the alarm: every 202 job ran, no "not accepted"
/// job ran, and retrying the unknown ones (same id, or same Idempotency-Key) runs each once.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_answers_at_once_and_truthfully_under_a_memory_alarm() {
    let _exclusive = SERIAL.write().await;
    let env = TestEnv::new("[retry]\ntiers = [\"1s\"]\n").await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    const TOKEN: &str = "tok-alarm-7c1e-secret";
    let ingest = common::ingest::Ingest::spawn(&env, &[("WARREN_INGEST_TOKENS", TOKEN)]).await;
    // A job that keeps failing for a while, so the worker publishes retries during the alarm.
    let retrying = env.publish_failing_for(20).await;

    // Ten clients of normal load: eight send their own job ids, two an Idempotency-Key.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Answer>::new()));
    let mut clients = Vec::new();
    for c in 0..10 {
        let (stop, answers) = (stop.clone(), answers.clone());
        let url = ingest.url("/v1/jobs/demo.noop");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = json!({"c": c, "n": n});
                let mut req = http.post(&url).bearer_auth(TOKEN).json(&sent);
                let (mut job, mut key) = (None, None);
                if c < 8 {
                    let j = id();
                    req = req.header("X-Job-Id", &j);
                    job = Some(j);
                } else {
                    let k = format!("alarm-{c}-{n}-{}", id());
                    req = req.header("Idempotency-Key", &k);
                    key = Some(k);
                }
                let started = Instant::now();
                let Ok(r) = req.send().await else { continue };
                let status = r.status().as_u16();
                let body = r.json().await.unwrap_or(serde_json::Value::Null);
                answers.lock().unwrap().push(Answer {
                    id: job,
                    key,
                    sent,
                    status,
                    body,
                    started,
                    took: started.elapsed(),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alarm = MemoryAlarm::raise();
    let raised = Instant::now();
    eventually(
        Duration::from_secs(10),
        "ingest readiness reports the block",
        || async {
            let r = ingest.http.get(ingest.url("/readyz")).send().await;
            match r {
                Ok(r) if r.status() == 503 => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["flow"] == json!(false) && v["broker"] == json!(true)),
                _ => false,
            }
        },
    )
    .await;
    let ingest_blocked = raised.elapsed();
    eventually(
        Duration::from_secs(10),
        "worker readiness reports the block",
        || async { matches!(w.readyz().await, Some((503, body)) if body["flow"] == json!(false)) },
    )
    .await;
    let worker_blocked = raised.elapsed();
    eprintln!("blocked on /readyz after: ingest {ingest_blocked:?}, worker {worker_blocked:?}");
    assert!(
        ingest_blocked < Duration::from_secs(5),
        "{ingest_blocked:?}"
    );
    assert!(
        worker_blocked < Duration::from_secs(5),
        "{worker_blocked:?}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let m = reqwest::get(ingest.proc.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&m, "warren_broker_blocked", &[]), 1.0);
    drop(alarm);
    let cleared = Instant::now();
    ingest.wait_ready().await;
    w.wait_ready(T).await;
    eprintln!(
        "ready again {:?} after the alarm cleared",
        cleared.elapsed()
    );

    let answers = answers.lock().unwrap().clone();
    let during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.started + a.took >= raised)
        .collect();
    let slowest = during.iter().map(|a| a.took).max().unwrap_or_default();
    let count = |pred: &dyn Fn(&Answer) -> bool| during.iter().filter(|a| pred(a)).count();
    eprintln!(
        "{} requests in all; during the alarm {}: 202 {}, not accepted {}, outcome unknown {}, \
         other {}; slowest answer during the alarm {slowest:?}",
        answers.len(),
        during.len(),
        count(&|a| a.status == 202),
        count(&|a| a.body["error"] == "broker_blocked"),
        count(&|a| a.body["error"] == "outcome_unknown"),
        count(&|a| a.status != 202
            && a.body["error"] != "broker_blocked"
            && a.body["error"] != "outcome_unknown"),
    );
    assert!(
        count(&|a| a.body["error"] == "broker_blocked") > 0,
        "no request was refused during the alarm"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "an answer took {slowest:?}"
    );
    for a in &answers {
        assert!(
            a.status == 202
                || (a.status == 503
                    && (a.body["error"] == "broker_blocked"
                        || a.body["error"] == "outcome_unknown")),
            "unexpected answer {a:?}"
        );
    }
    // Every 202 job ran.
    let accepted: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 202)
        .flat_map(|a| listed_ids(&a.body))
        .collect();
    for job in &accepted {
        env.wait_status(job, "succeeded", T).await;
    }
    // Retry each unknown outcome the way the answer says: same id, or same key.
    let mut retried = Vec::new();
    for a in answers
        .iter()
        .filter(|a| a.body["error"] == "outcome_unknown")
    {
        let ids = listed_ids(&a.body);
        assert_eq!(ids.len(), 1, "{a:?}");
        let mut req = ingest
            .http
            .post(ingest.url("/v1/jobs/demo.noop"))
            .bearer_auth(TOKEN);
        if let Some(j) = &a.id {
            assert_eq!(&ids[0], j);
            req = req.header("X-Job-Id", j);
        }
        if let Some(k) = &a.key {
            req = req.header("Idempotency-Key", k);
        }
        // The same body as the first attempt: the key's fingerprint covers it.
        let r = req.json(&a.sent).send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 202, "retry of {a:?}: {body}");
        assert_eq!(
            listed_ids(&body),
            ids,
            "the retry publishes under the same id"
        );
        retried.push(ids[0].clone());
    }
    for job in &retried {
        env.wait_status(job, "succeeded", T).await;
    }
    // No job answered "not accepted" ran: wait until the queue is empty, then look.
    let refused: Vec<String> = answers
        .iter()
        .filter(|a| a.body["error"] == "broker_blocked")
        .filter_map(|a| a.id.clone())
        .collect();
    env.wait_status(&retrying, "succeeded", T).await;
    eventually(T, "the queue drained", || async {
        env.ready(&env.queue("default")).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ran = env.ran(&refused).await;
    assert!(
        ran.is_empty(),
        "jobs answered \"not accepted\" ran: {ran:?}"
    );
    let twice = ran_twice(&env, &[accepted, retried].concat()).await;
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    drop(ingest);
    drop(w);
    env.cleanup().await;
}
