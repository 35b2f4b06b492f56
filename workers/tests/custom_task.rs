//! A user-defined task registered through the library and run by an in-process [`Worker`]
//! against the real RabbitMQ and PostgreSQL: typed payloads, its own queue (declared from
//! the task, no config-file binding), a custom retry policy and a handler timeout
//! (dead-lettered as `timeout`).

use lapin::options::{BasicGetOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_core::config::FileConfig;
use warren_core::telemetry::Health;
use warren_core::topology::Topology;
use warren_producer::{Producer, PublishOptions};
use warren_workers::{JobContext, Registry, RetryPolicy, Task, TaskError, Worker, WorkerConfig};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(serde::Deserialize)]
struct Nap {
    ms: u64,
}

/// Sleeps `ms`, but may only run 150 ms, twice.
struct Napper;

impl Task for Napper {
    const NAME: &'static str = "nap.take";
    const QUEUE: &'static str = "naps";
    type Payload = Nap;
    async fn run(&self, p: Nap, _: &JobContext) -> Result<(), TaskError> {
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
        Ok(())
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        }
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(150)
    }
}

fn header(h: Option<&lapin::types::FieldTable>, key: &str) -> Option<String> {
    match h?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_task_times_out_retries_and_dead_letters_as_timeout() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let ns = format!("wt-{tag}");
    let db_url = format!("postgres://postgres@127.0.0.1:5432/wt_{tag}");
    warren_core::db::ensure_database(&db_url).await.unwrap();
    let pool = warren_core::db::lazy_pool(&db_url, 4).unwrap();
    warren_core::db::migrate(&pool).await.unwrap();

    let mut registry = Registry::new();
    registry.register(Napper).unwrap();
    assert!(
        registry.register(Napper).is_err(),
        "duplicate registration accepted"
    );

    let file: FileConfig = toml::from_str("[retry]\ntiers=[\"100ms\"]").unwrap();
    let topology = Topology::with_tasks(&ns, &file, &registry.routes()).unwrap();
    assert_eq!(topology.queue("naps").unwrap().bindings, ["nap.take"]);
    let conn = warren_core::broker::connect(AMQP, "test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    topology.declare(&ch).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let producer = Producer::new(&conn, topology.jobs_exchange())
        .await
        .unwrap();
    let quick = producer
        .publish(
            "nap.take",
            &serde_json::json!({"ms": 10}),
            &PublishOptions::default(),
        )
        .await
        .unwrap();
    let slow = producer
        .publish(
            "nap.take",
            &serde_json::json!({"ms": 5000}),
            &PublishOptions::default(),
        )
        .await
        .unwrap();

    let health = Health::new(&warren_workers::HEALTH_CHECKS);
    let worker = Worker::new(
        WorkerConfig {
            amqp_url: AMQP.into(),
            queues: vec!["naps".into()],
            prefetch: 8,
            grace: Duration::from_secs(5),
            ledger_batch: 64,
            ..WorkerConfig::default()
        },
        topology.clone(),
        registry,
        pool.clone(),
        health.clone(),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    // The slow job times out twice (150 ms each, 100 ms apart) and is dead-lettered.
    let started = Instant::now();
    let dlq = topology.dlq_name("naps");
    let dead = loop {
        if let Some(m) = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m.delivery;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no dead letter"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let h = dead.properties.headers().as_ref();
    assert_eq!(header(h, "x-error-kind").as_deref(), Some("timeout"));
    assert_eq!(header(h, "x-attempts").as_deref(), Some("2"));
    assert!(header(h, "x-error")
        .unwrap()
        .contains("timed out after 150ms"));
    assert_eq!(
        dead.properties.message_id().as_ref().unwrap().as_str(),
        slow
    );
    // Two attempts of 150 ms plus a 100 ms tier: well under the 5 s the handler wanted.
    assert!(started.elapsed() < Duration::from_secs(4));

    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT job_id, status::text, attempts FROM job_runs ORDER BY status::text")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (slow.clone(), "dead_lettered".into(), 2),
            (quick.clone(), "succeeded".into(), 1)
        ]
    );

    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(!health.is_up("broker"));
    topology.delete(&ch).await.unwrap();
    let _ = conn.close(200, "".into()).await;
    pool.close().await;
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE \"wt_{tag}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}
