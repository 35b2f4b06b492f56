//! Whole-system tests of `warren worker`, `warren topology` and `warren publish` against the
//! real RabbitMQ and PostgreSQL. Each test has its own namespace and database, so they run
//! in parallel. Tests that stop or restart a service live in `faults.rs`.

mod common;

use common::*;
use lapin::BasicProperties;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Acceptance: a job from a plain AMQP client (no Warren headers) is run and recorded.
#[tokio::test(flavor = "multi_thread")]
async fn plain_amqp_job_runs_and_is_recorded_succeeded() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let job = env
        .publish_json("demo.noop", json!({"hello": "world"}), &id())
        .await;
    let row = env.wait_status(&job, "succeeded", T).await;
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error, None);
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    drop(w);
    env.cleanup().await;
}

/// Semantic 4: a job id that succeeded is acked as `duplicate` and not run again, whether
/// redelivered or re-published.
#[tokio::test(flavor = "multi_thread")]
async fn succeeded_job_id_is_not_run_again() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let job = env.publish_json("demo.noop", json!({}), &id()).await;
    env.wait_status(&job, "succeeded", T).await;
    // Re-publish the same id twice, plus a sleep job so we know the worker got that far.
    env.publish_json("demo.noop", json!({}), &job).await;
    env.publish_json("demo.noop", json!({}), &job).await;
    let marker = env
        .publish_json("demo.sleep", json!({"ms": 1}), &id())
        .await;
    env.wait_status(&marker, "succeeded", T).await;
    eventually(T, "two duplicates counted", || async {
        metric(
            &w.metrics().await,
            "warren_jobs_processed_total",
            &["outcome=\"duplicate\""],
        ) == 2.0
    })
    .await;
    let row = env.job(&job).await.unwrap();
    assert_eq!(row.attempts, 1, "a succeeded job ran again: {row:?}");
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    drop(w);
    env.cleanup().await;
}

/// The ledger finishes a job it checked as new with a plain INSERT. When two workers run the
/// same new job id at once (published twice), the second insert hits the primary key: its
/// batch, with the other jobs in it, is rewritten as upserts rather than failing or retrying
/// forever, and the job is recorded once.
#[tokio::test(flavor = "multi_thread")]
async fn ledger_records_a_job_run_twice_at_once_exactly_once() {
    use std::sync::Arc;
    use warren_core::telemetry::Health;
    use warren_workers::ledger::{Check, Finish, JobKey, Ledger, Status};

    let env = TestEnv::new(FAST_CONFIG).await;
    let replica = || Ledger::start(env.pool.clone(), Health::new(&["database"]), 64, 1);
    let (a, b) = (replica(), replica());
    let key = |job_id: &str| {
        Arc::new(JobKey {
            job_id: job_id.to_owned(),
            task: "demo.noop".into(),
            queue: "default".into(),
        })
    };
    let finish = |status, fresh| Finish {
        status,
        error: None,
        attempt_delta: 1,
        started_at: chrono::Utc::now(),
        fresh,
    };
    let (twice, other) = (key(&id()), key(&id()));
    assert_eq!(a.check(twice.clone()).await.unwrap(), Check::New);
    assert_eq!(b.check(twice.clone()).await.unwrap(), Check::New);
    assert_eq!(b.check(other.clone()).await.unwrap(), Check::New);

    a.finish(twice.clone(), finish(Status::Succeeded, true))
        .await
        .unwrap();
    // B's finishes, in one batch if they meet: the conflicting one and an innocent one.
    let (x, y) = tokio::time::timeout(T, async {
        tokio::join!(
            b.finish(twice.clone(), finish(Status::Succeeded, true)),
            b.finish(other.clone(), finish(Status::Failed, true)),
        )
    })
    .await
    .expect("a conflicting plain insert must not stall the ledger");
    x.unwrap();
    y.unwrap();

    let row = env.job(&twice.job_id).await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("succeeded", 1),
        "{row:?}"
    );
    let row = env.job(&other.job_id).await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("failed", 1),
        "{row:?}"
    );
    assert_eq!(env.job_rows().await, 2);
    assert_eq!(
        a.check(twice.clone()).await.unwrap(),
        Check::AlreadySucceeded
    );
    // A row that exists but did not succeed: run again, finished by the upsert.
    assert_eq!(a.check(other.clone()).await.unwrap(), Check::Again);
    a.finish(other.clone(), finish(Status::Succeeded, false))
        .await
        .unwrap();
    let row = env.job(&other.job_id).await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("succeeded", 2),
        "{row:?}"
    );
    // The ledgers' tasks hold pool connections until their handles are gone; cleanup closes
    // the pool, which waits for every connection to come back.
    drop((a, b));
    env.cleanup().await;
}
/// Acceptance + semantic 5: retryable failures go through growing delay tiers, then the DLQ
/// as `exhausted` with the brief's headers and the original body.
#[tokio::test(flavor = "multi_thread")]
async fn retryable_failure_backs_off_then_dead_letters_exhausted() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut spy = env.spy("demo.fail").await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let body = json!({"mode": "retryable"});
    let job = env.publish_json("demo.fail", body.clone(), &id()).await;

    // The spy sees the original publish and each retry as it comes back from its tier.
    let mut arrivals = Vec::new();
    for _ in 0..5 {
        let (at, d) = next_arrival(&mut spy, T).await;
        assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), job);
        arrivals.push((at, header(&d, "x-attempt")));
    }
    let attempts: Vec<_> = arrivals.iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(
        attempts,
        vec![
            None,
            Some("2".into()),
            Some("3".into()),
            Some("4".into()),
            Some("5".into())
        ]
    );
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // Tiers are 200ms, 600ms, 1500ms, 3s: every gap is at least its tier, and they grow.
    for (gap, tier) in gaps.iter().zip([200u64, 600, 1500, 3000]) {
        assert!(*gap >= Duration::from_millis(tier - 50), "gaps {gaps:?}");
    }
    assert!(
        gaps.windows(2).all(|p| p[1] > p[0]),
        "delays do not grow: {gaps:?}"
    );

    let dl = env.take(&format!("{}.default.dlq", env.ns), T).await;
    assert_eq!(header(&dl, "x-error-kind").as_deref(), Some("exhausted"));
    assert_eq!(header(&dl, "x-attempts").as_deref(), Some("5"));
    assert_eq!(
        header(&dl, "x-original-routing-key").as_deref(),
        Some("demo.fail")
    );
    assert!(header(&dl, "x-error").unwrap().contains("asked to fail"));
    assert!(header(&dl, "x-failed-at").unwrap().ends_with('Z'));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dl.data).unwrap(),
        body
    );
    assert_eq!(dl.properties.message_id().as_ref().unwrap().as_str(), job);
    let row = env.wait_status(&job, "dead_lettered", T).await;
    assert_eq!(row.attempts, 5);
    drop(w);
    env.cleanup().await;
}

/// Acceptance + semantic 5: permanent, malformed and unknown-task go to the DLQ at once.
#[tokio::test(flavor = "multi_thread")]
async fn permanent_malformed_and_unknown_task_dead_letter_at_once() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let permanent = env
        .publish_json("demo.fail", json!({"mode": "permanent"}), &id())
        .await;
    let bad_field = env
        .publish_json("demo.fail", json!({"mode": "explode"}), &id())
        .await;
    let unknown = env.publish_json("demo.nonexistent", json!({}), &id()).await;
    let not_json = id();
    env.publish(
        "demo.sleep",
        b"{not json",
        BasicProperties::default().with_message_id(not_json.as_str().into()),
    )
    .await;

    let dlq = format!("{}.default.dlq", env.ns);
    let mut kinds = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let d = env.take(&dlq, T).await;
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        assert_eq!(
            header(&d, "x-attempts").as_deref(),
            Some("1"),
            "{id} was retried"
        );
        kinds.insert(
            id,
            (
                header(&d, "x-error-kind").unwrap(),
                header(&d, "x-error").unwrap(),
            ),
        );
    }
    assert_eq!(kinds[&permanent].0, "permanent");
    assert_eq!(kinds[&bad_field].0, "malformed");
    assert!(
        kinds[&bad_field].1.contains("$.mode"),
        "{:?}",
        kinds[&bad_field]
    );
    assert_eq!(kinds[&unknown].0, "unknown-task");
    assert!(kinds[&unknown].1.contains("demo.nonexistent"));
    assert_eq!(kinds[&not_json].0, "malformed");
    assert!(kinds[&not_json].1.contains("not valid JSON"));
    // The permanent failure ran once; the others were judged without running.
    assert_eq!(
        env.wait_status(&permanent, "dead_lettered", T)
            .await
            .attempts,
        1
    );
    for job in [&bad_field, &unknown, &not_json] {
        assert_eq!(env.wait_status(job, "dead_lettered", T).await.attempts, 0);
    }
    // Nothing was retried.
    assert_eq!(env.count_status("failed").await, 0);
    drop(w);
    env.cleanup().await;
}

/// Semantic 6 (first half): a handler panic fails the job, not the worker.
#[tokio::test(flavor = "multi_thread")]
async fn handler_panic_does_not_kill_the_worker() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let props = BasicProperties::default()
        .with_message_id(id().as_str().into())
        .with_headers({
            let mut h = lapin::types::FieldTable::default();
            h.insert("x-max-attempts".into(), lapin::types::AMQPValue::LongInt(2));
            h
        });
    env.publish("demo.fail", br#"{"mode":"panic"}"#, props)
        .await;
    let dl = env.take(&format!("{}.default.dlq", env.ns), T).await;
    assert_eq!(header(&dl, "x-error-kind").as_deref(), Some("exhausted"));
    assert!(header(&dl, "x-error").unwrap().contains("panicked"));
    assert_eq!(header(&dl, "x-attempts").as_deref(), Some("2"));
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "worker died:\n{}",
        w.logs()
    );
    let after = env.publish_json("demo.noop", json!({}), &id()).await;
    env.wait_status(&after, "succeeded", T).await;
    drop(w);
    env.cleanup().await;
}

/// Semantic 2: in-flight never exceeds the prefetch, and reaches it under load.
#[tokio::test(flavor = "multi_thread")]
async fn in_flight_never_exceeds_prefetch() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(
            env.publish_json("demo.sleep", json!({"ms": 400}), &id())
                .await,
        );
    }
    let mut w = env.worker(&["--queue", "default", "--prefetch", "3"]);
    w.wait_ready(T).await;
    let mut max_running = 0;
    let mut max_gauge = 0.0f64;
    while env.count_status("succeeded").await < 12 {
        max_running = max_running.max(env.count_status("running").await);
        let g = metric(
            &w.metrics().await,
            "warren_jobs_in_flight",
            &["queue=\"default\""],
        );
        max_gauge = max_gauge.max(g);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(max_running, 3, "running jobs peaked at {max_running}");
    assert!(
        (2.0..=3.0).contains(&max_gauge),
        "in-flight gauge peaked at {max_gauge}"
    );
    drop(w);
    env.cleanup().await;
}

/// Semantic 2 with batched acks: a job finished behind a slow one (so no `multiple` ack can
/// cover it) is acked on its own after a short wait, so a slow job holds one prefetch slot,
/// not every slot behind it.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_job_holds_one_prefetch_slot_not_all() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let slow = env
        .publish_json("demo.sleep", json!({"ms": 25_000}), &id())
        .await;
    for _ in 0..40 {
        env.publish_json("demo.noop", json!({}), &id()).await;
    }
    let mut w = env.worker(&["--queue", "default", "--prefetch", "4"]);
    w.wait_ready(T).await;
    // 40 quick jobs through the 3 slots the slow one leaves: each must be acked alone.
    eventually(
        Duration::from_secs(15),
        "40 quick jobs done while the slow one runs",
        || async { env.count_status("succeeded").await == 40 },
    )
    .await;
    env.wait_status(&slow, "running", T).await;
    drop(w);
    env.cleanup().await;
}

/// Acceptance: /metrics after a run has outcome counters and duration buckets.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_outcomes_and_duration_buckets() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    assert_eq!(w.readyz_status().await, Some(200));
    let ok = env
        .publish_json("demo.sleep", json!({"ms": 20}), &id())
        .await;
    let bad = env
        .publish_json("demo.fail", json!({"mode": "permanent"}), &id())
        .await;
    env.wait_status(&ok, "succeeded", T).await;
    env.wait_status(&bad, "dead_lettered", T).await;
    let m = w.metrics().await;
    let processed = |outcome: &str| {
        metric(
            &m,
            "warren_jobs_processed_total",
            &["queue=\"default\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(processed("succeeded"), 1.0, "{m}");
    assert_eq!(processed("dead_lettered"), 1.0, "{m}");
    assert!(
        m.contains("# TYPE warren_job_duration_seconds histogram"),
        "{m}"
    );
    let sleep_buckets: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("warren_job_duration_seconds_bucket") && l.contains("demo.sleep"))
        .collect();
    assert!(
        sleep_buckets.len() >= 10,
        "too few buckets: {sleep_buckets:?}"
    );
    assert_eq!(
        metric(
            &m,
            "warren_job_duration_seconds_bucket",
            &["task=\"demo.sleep\"", "le=\"0.01\""]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            "warren_job_duration_seconds_bucket",
            &["task=\"demo.sleep\"", "le=\"+Inf\""]
        ),
        1.0
    );
    assert_eq!(metric(&m, "warren_broker_connected", &[]), 1.0);
    // Each job was checked once and finished once; each statement took some time, and a
    // group commit on a local disk takes well under a second (the top bucket).
    for op in ["check", "write"] {
        let count = metric(
            &m,
            "warren_ledger_statement_seconds_count",
            &[&format!("op=\"{op}\"")],
        );
        assert!(
            (1.0..=2.0).contains(&count),
            "{op}: {count} statements\n{m}"
        );
        let under_1s = metric(
            &m,
            "warren_ledger_statement_seconds_bucket",
            &[&format!("op=\"{op}\""), "le=\"1\""],
        );
        assert_eq!(under_1s, count, "{op}\n{m}");
        assert!(
            metric(
                &m,
                "warren_ledger_statement_seconds_sum",
                &[&format!("op=\"{op}\"")]
            ) > 0.0,
            "{m}"
        );
    }
    // The dead letter is counted under its task, not the queue it was routed by.
    assert_eq!(
        metric(
            &m,
            "warren_published_total",
            &["task=\"demo.fail\"", "outcome=\"confirmed\""]
        ),
        1.0,
        "{m}"
    );
    drop(w);
    env.cleanup().await;
}

/// Acceptance: topology is idempotent, quorum, delivery-limited, with DLQs and tiers looping
/// back to the work exchange; a mismatch is a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn topology_is_idempotent_and_reports_mismatches() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let a = env.run(&["topology"]);
    let b = env.run(&["topology"]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(stdout(&a), stdout(&b));
    let out = stdout(&a);
    for q in ["default", "renewals.pagarme", "renewals.appmax", "cron"] {
        let work = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{}.{q} ", env.ns)))
            .unwrap_or_else(|| panic!("no work queue {q} in\n{out}"));
        assert!(
            work.contains("queue-type=quorum") && work.contains("delivery-limit=10"),
            "{work}"
        );
        assert!(
            work.contains(&format!("dead-letter-exchange={}.dlx", env.ns)),
            "{work}"
        );
        assert!(
            out.contains(&format!("{}.{q}.dlq ", env.ns)),
            "no dlq for {q}"
        );
    }
    let tiers: Vec<&str> = out.lines().filter(|l| l.contains(" delay ")).collect();
    assert_eq!(tiers.len(), 4, "{out}");
    for t in tiers {
        assert!(
            t.contains(&format!("dead-letter-exchange={}.jobs", env.ns)),
            "{t}"
        );
        assert!(t.contains("message-ttl="), "{t}");
    }

    // A queue of the same name declared by someone else, differently.
    let other = TestEnv::new(FAST_CONFIG).await;
    let ch = other.conn.create_channel().await.unwrap();
    ch.queue_delete(
        other.queue("cron").as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        other.queue("cron").as_str().into(),
        lapin::options::QueueDeclareOptions::durable(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let out = other.run(&["topology"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("queue {}.cron already exists", other.ns))
            && err.contains("different arguments"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    env.cleanup().await;
    other.cleanup().await;
}

/// Unknown queue names and bad publish input are clear CLI errors.
#[tokio::test(flavor = "multi_thread")]
async fn cli_errors_name_the_problem() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let out = env.run(&["worker", "--queue", "nope"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unknown queue \"nope\"") && err.contains("default, renewals.pagarme"),
        "{err}"
    );
    let out = env.run(&["publish", "demo.noop", "--payload", "{oops"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--payload is not valid JSON"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["publish", "no.such.task"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"no.such.task\""),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["publish", "demo.noop", "--count", "250"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("published 250 demo.noop jobs"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.ready(&env.queue("default")).await, 250);
    env.cleanup().await;
}

/// Semantic 7: SIGTERM drains in-flight jobs and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_jobs_then_exits_zero() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default", "--prefetch", "2", "--grace", "20s"]);
    w.wait_ready(T).await;
    let a = env
        .publish_json("demo.sleep", json!({"ms": 1500}), &id())
        .await;
    let b = env
        .publish_json("demo.sleep", json!({"ms": 1500}), &id())
        .await;
    env.wait_status(&a, "running", T).await;
    env.wait_status(&b, "running", T).await;
    let later = env.publish_json("demo.noop", json!({}), &id()).await;
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status}:\n{}", w.logs());
    assert_eq!(env.job(&a).await.unwrap().status, "succeeded");
    assert_eq!(env.job(&b).await.unwrap().status, "succeeded");
    // The job published after the signal was not started: it waits in the queue.
    assert!(env.job(&later).await.is_none());
    assert_eq!(env.ready(&env.queue("default")).await, 1);
    env.cleanup().await;
}

/// Semantic 7: past the grace period the worker exits 0 and the job returns to the queue;
/// a second signal exits at once.
#[tokio::test(flavor = "multi_thread")]
async fn grace_expiry_returns_jobs_and_second_signal_exits_at_once() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default", "--grace", "1s"]);
    w.wait_ready(T).await;
    let long = env
        .publish_json("demo.sleep", json!({"ms": 60000}), &id())
        .await;
    env.wait_status(&long, "running", T).await;
    let t0 = std::time::Instant::now();
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit {status}:\n{}", w.logs());
    assert!(t0.elapsed() < Duration::from_secs(5));
    eventually(T, "the unfinished job back in the queue", || async {
        env.ready(&env.queue("default")).await == 1
    })
    .await;

    let mut w = env.worker(&["--queue", "default", "--grace", "60s"]);
    w.wait_ready(T).await;
    eventually(T, "the job restarted", || async {
        env.job(&long).await.is_some_and(|r| r.attempts == 2)
    })
    .await;
    w.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = std::time::Instant::now();
    w.signal("INT");
    let status = w.wait_exit(Duration::from_secs(5)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "second signal was not immediate"
    );
    assert_eq!(status.code(), Some(130), "{}", w.logs());
    env.cleanup().await;
}

/// Semantic 8 (consumer cancel): the broker cancelling the consumer (queue deleted) makes the
/// worker reconnect and redeclare; work continues.
#[tokio::test(flavor = "multi_thread")]
async fn server_side_consumer_cancel_is_recovered() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let ch = env.conn.create_channel().await.unwrap();
    ch.queue_delete(
        env.queue("default").as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    // The worker redeclares the queue (and its binding) when it reconnects.
    eventually(T, "queue redeclared with a consumer", || async {
        let ch = env.conn.create_channel().await.unwrap();
        let q = warren_core::broker::queue_counts(&ch, &env.queue("default")).await;
        q.is_ok_and(|q| q.consumers == 1)
    })
    .await;
    let job = env.publish_json("demo.noop", json!({}), &id()).await;
    env.wait_status(&job, "succeeded", T).await;
    assert!(metric(&w.metrics().await, "warren_broker_reconnects_total", &[]) >= 1.0);
    drop(w);
    env.cleanup().await;
}

/// Semantic 6 (second half): a message that kills the worker process every time is ended by
/// the delivery limit, with the dead-letter headers.
#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_is_dead_lettered_by_the_delivery_limit() {
    let config = format!("{FAST_CONFIG}\n[queues.default]\ndelivery_limit = 2\n");
    let env = TestEnv::new(&config).await;
    let job = env
        .publish_json("demo.sleep", json!({"ms": 60000}), &id())
        .await;
    // delivery_limit = 2: the broker may return the message twice. Two workers die on it;
    // the third delivery is the last the broker allows, and the worker dead-letters it
    // instead of running it a third time.
    for attempt in 1..=2 {
        let mut w = env.worker(&["--queue", "default"]);
        w.wait_ready(T).await;
        eventually(T, "the job running", || async {
            env.job(&job)
                .await
                .is_some_and(|r| r.status == "running" && r.attempts == attempt)
        })
        .await;
        w.kill9();
    }
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let dl = env.take(&format!("{}.default.dlq", env.ns), T).await;
    assert_eq!(
        header(&dl, "x-error-kind").as_deref(),
        Some("delivery-limit")
    );
    assert!(header(&dl, "x-error")
        .unwrap()
        .contains("delivered 3 times"));
    let row = env.wait_status(&job, "dead_lettered", T).await;
    assert_eq!(row.attempts, 2, "the crash-looping job ran again: {row:?}");
    drop(w);
    env.cleanup().await;
}

/// Logs: `--log-format json` lines about a job carry job id, task, queue and attempt.
#[tokio::test(flavor = "multi_thread")]
async fn json_job_logs_carry_job_fields() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{}-json.log", env.ns));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = env
        .command(&["worker", "--queue", "default"])
        .env("WARREN_LOG_FORMAT", "json")
        .env("WARREN_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .stderr(file)
        .spawn()
        .unwrap();
    let job = id();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-tenant".into(),
        lapin::types::AMQPValue::LongString("acme".into()),
    );
    env.publish(
        "demo.fail",
        br#"{"mode":"permanent"}"#,
        BasicProperties::default()
            .with_message_id(job.as_str().into())
            .with_headers(headers),
    )
    .await;
    env.wait_status(&job, "dead_lettered", T).await;
    // The line follows the ledger commit: wait for it before stopping the worker.
    eventually(T, "the dead-letter log line", || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("job dead-lettered")
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("job dead-lettered"))
        .unwrap_or_else(|| panic!("no dead-letter line in:\n{text}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["kind"], "permanent");
    let span = &v["span"];
    assert_eq!(span["job_id"], job.as_str());
    assert_eq!(span["task"], "demo.fail");
    assert_eq!(span["queue"], "default");
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["tenant"], "acme");
    let _ = std::fs::remove_file(&log);
    env.cleanup().await;
}

/// Credentials never appear in output; migrate is idempotent.
#[tokio::test(flavor = "multi_thread")]
async fn urls_are_redacted_and_migrate_is_idempotent() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let out = env
        .command(&["topology"])
        .env("AMQP_URL", "amqp://guest:s3cr3t-pw@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("amqp://guest:***@127.0.0.1:1"), "{err}");
    assert!(!err.contains("s3cr3t-pw"), "{err}");
    let again = env.run(&["migrate"]);
    assert!(again.status.success(), "{}", stderr(&again));
    env.cleanup().await;
}

/// Bodies over the limit: `publish` refuses them naming the limit; a worker dead-letters
/// them as malformed without parsing.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_refused_and_dead_lettered() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let out = env
        .command(&["publish", "demo.noop", "--payload", &big])
        .env("WARREN_MAX_BODY", "1000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the body limit is 1000"),
        "{}",
        stderr(&out)
    );

    let port = free_port();
    let mut w = Worker {
        child: env
            .command(&["worker", "--queue", "default"])
            .env("WARREN_MAX_BODY", "1000")
            .env("WARREN_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .spawn()
            .unwrap(),
        port,
        log: std::env::temp_dir().join("unused.log"),
    };
    w.wait_ready(T).await;
    let job = env
        .publish_json("demo.noop", serde_json::from_str(&big).unwrap(), &id())
        .await;
    let small = env.publish_json("demo.noop", json!({}), &id()).await;
    let dl = env.take(&format!("{}.default.dlq", env.ns), T).await;
    assert_eq!(header(&dl, "x-error-kind").as_deref(), Some("malformed"));
    assert!(header(&dl, "x-error")
        .unwrap()
        .contains("the limit is 1000"));
    assert_eq!(env.wait_status(&job, "dead_lettered", T).await.attempts, 0);
    env.wait_status(&small, "succeeded", T).await;
    drop(w);
    env.cleanup().await;
}

/// The broker-side pid of `worker`'s AMQP connection (what `rabbitmqctl close_connection`
/// takes), found by the worker's local port.
async fn broker_connection_of(worker: &Worker) -> String {
    let pid = worker.child.id().to_string();
    let deadline = std::time::Instant::now() + T;
    loop {
        let ss = std::process::Command::new("ss")
            .args(["-tnpH", "state", "established", "( dport = :5672 )"])
            .output()
            .expect("ss runs");
        let ports: Vec<String> = String::from_utf8_lossy(&ss.stdout)
            .lines()
            .filter(|l| l.contains(&format!("pid={pid},")))
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(2)?
                    .rsplit(':')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        let list = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "peer_port"])
            .output()
            .expect("rabbitmqctl runs");
        let text = String::from_utf8_lossy(&list.stdout).into_owned();
        if let Some(line) = text.lines().find(|l| {
            l.split('\t')
                .nth(1)
                .is_some_and(|p| ports.iter().any(|q| q == p.trim()))
        }) {
            return line.split('\t').next().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no broker connection for worker pid {pid} (ports {ports:?}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A broker that keeps dropping a healthy worker's connection (here six times in a row,
/// each once the worker consumes again) is rejoined within a second each time: the
/// reconnect backoff starts over once a connection got as far as consuming, instead of
/// doubling across drops (which left a worker waiting 8 s and more while the broker was
/// fine).
#[tokio::test(flavor = "multi_thread")]
async fn reconnect_backoff_resets_once_a_connection_is_healthy() {
    let env = TestEnv::new("").await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let reconnects = |text: String| metric(&text, "warren_broker_reconnects_total", &[]);
    for n in 1..=6 {
        let conn = broker_connection_of(&w).await;
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "close_connection",
                &conn,
                "warren test: flapping connection",
            ])
            .output()
            .expect("rabbitmqctl runs");
        assert!(out.status.success(), "{}", stderr(&out));
        let closed = std::time::Instant::now();
        eventually(T, "the worker reconnected", || async {
            reconnects(w.metrics().await) >= n as f64
        })
        .await;
        w.wait_ready(T).await;
        let took = closed.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "reconnect {n} took {took:?} after the broker dropped a healthy connection"
        );
    }
    // Still working.
    let id = env
        .publish_json("demo.noop", json!({}), &common::id())
        .await;
    env.wait_status(&id, "succeeded", T).await;
    drop(w);
    env.cleanup().await;
}

/// `warren publish --count N --ids-out FILE` writes the ids before publishing; a run sent
/// again with `--ids-from FILE` publishes the same ids, which workers ack as duplicates: a
/// batch that failed half-way can be re-sent without running any job twice.
#[tokio::test(flavor = "multi_thread")]
async fn publish_ids_out_and_ids_from_resend_a_batch_under_the_same_ids() {
    let env = TestEnv::new("").await;
    let file = std::env::temp_dir().join(format!("{}-ids.txt", env.ns));
    let path = file.to_str().unwrap();
    let out = env.run(&["publish", "demo.noop", "--count", "40", "--ids-out", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 40);
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        40
    );
    let w = env.worker(&["--queue", "default"]);
    eventually(T, "every job succeeded", || async {
        env.count_status("succeeded").await == 40
    })
    .await;
    for id in &ids {
        assert_eq!(env.job(id).await.unwrap().status, "succeeded", "{id}");
    }
    let again = env.run(&["publish", "demo.noop", "--ids-from", path]);
    assert!(again.status.success(), "{}", stderr(&again));
    eventually(T, "the re-sent copies acked as duplicates", || async {
        metric(
            &w.metrics().await,
            "warren_jobs_processed_total",
            &["outcome=\"duplicate\""],
        ) == 40.0
    })
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 40);
    // Refused combinations name the flags.
    let both = env.run(&["publish", "demo.noop", "--ids-from", path, "--count", "3"]);
    assert!(!both.status.success());
    assert!(stderr(&both).contains("--count"), "{}", stderr(&both));
    let _ = std::fs::remove_file(&file);
    drop(w);
    env.cleanup().await;
}

/// A telemetry address already in use stops the role at start with an error that names the
/// address and the setting, instead of a bare "Address in use".
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_metrics_address_is_named() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut w = env.spawn(
        &["worker", "--queue", "default"],
        &[("WARREN_METRICS_ADDR", addr.as_str())],
    );
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let logs = w.logs();
    assert!(
        logs.contains(&format!("cannot listen on {addr}")) && logs.contains("WARREN_METRICS_ADDR"),
        "{logs}"
    );
    drop(taken);
    env.cleanup().await;
}
