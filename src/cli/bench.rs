//! `warren bench`: the worker runtime's throughput next to a bare lapin consumer's.
//!
//! Both drain the same number of `demo.noop` jobs from the same quorum queue with the same
//! prefetch, in the same process, in alternating rounds. The bare consumer does nothing but
//! ack (multiple, every 64 deliveries): it is the ceiling the broker allows. The runtime
//! does everything it does in production: decode, ledger check and finish (group commit to
//! PostgreSQL), handler, metrics, batched acks. Results: docs/benchmarks.md.

use super::Global;
use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::time::{Duration, Instant};
use warren_core::{db, telemetry};
use warren_producer::{Producer, PublishOptions};
use warren_workers::{Registry, Worker};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Jobs per run.
    #[arg(long, env = "WARREN_BENCH_JOBS", default_value_t = 20_000)]
    pub jobs: u64,
    /// Rounds; each runs the bare consumer then the runtime.
    #[arg(long, env = "WARREN_BENCH_ROUNDS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// The worker's settings; the bare consumer uses the same prefetch.
    #[command(flatten)]
    pub tuning: super::worker::Tuning,
}

pub async fn run(g: &Global, a: BenchArgs) -> anyhow::Result<()> {
    let run_id = format!("bench-{}", std::process::id());
    let mut g = g.clone();
    g.namespace = format!("{}-{run_id}", g.namespace);
    super::migrate::apply(&g).await?;
    super::topology::declare(&g).await?;
    let topology = g.topology()?;
    let conn = g.connect("bench").await?;
    let producer = Producer::new(&conn, topology.jobs_exchange()).await?;
    let queue = topology.queue_name("default");
    let pool = db::lazy_pool(&g.database_url, a.tuning.pool_size())?;
    let metrics = telemetry::metrics_handle();

    println!(
        "warren bench: {} demo.noop jobs per run, prefetch {}, {} ledger writers, {} rounds, \
         quorum queue {queue}",
        a.jobs, a.tuning.prefetch, a.tuning.ledger_writers, a.rounds
    );
    let (mut bare_rates, mut runtime_rates) = (Vec::new(), Vec::new());
    let (mut bare_cpu, mut runtime_cpu) = (Cpu::default(), Cpu::default());
    let mut rss_kib = 0;
    for round in 1..=a.rounds {
        publish(&producer, &run_id, round, "bare", a.jobs).await?;
        let cpu = Cpu::now(&pool).await;
        let t = bare_drain(&conn, &queue, a.tuning.prefetch, a.jobs).await?;
        let used = Cpu::now(&pool).await.minus(&cpu);
        bare_cpu.add(&used);
        let bare = a.jobs as f64 / t.as_secs_f64();
        println!(
            "round {round}: bare lapin consumer  {:>9.0} jobs/s ({:.2}s; {})",
            bare,
            t.as_secs_f64(),
            used.per_job(a.jobs)
        );
        bare_rates.push(bare);

        publish(&producer, &run_id, round, "runtime", a.jobs).await?;
        let before = succeeded(&metrics.render());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let health = telemetry::Health::new(&["broker", "database"]);
        let worker = Worker::new(
            a.tuning
                .config(&g.amqp_url, vec!["default".into()], g.max_body),
            topology.clone(),
            Registry::with_builtin(),
            pool.clone(),
            health.clone(),
        )?;
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        // Time the drain, not connect + declare (the bare consumer's clock also starts
        // once it consumes).
        while !health.is_up("broker") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let cpu = Cpu::now(&pool).await;
        while succeeded(&metrics.render()) - before < a.jobs as f64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "runtime did not drain {} jobs in 10 minutes",
                a.jobs
            );
        }
        let t = started.elapsed();
        let used = Cpu::now(&pool).await.minus(&cpu);
        runtime_cpu.add(&used);
        rss_kib = rss_kib.max(proc_status_kib("VmRSS"));
        shutdown.cancel();
        handle.await??;
        let rt = a.jobs as f64 / t.as_secs_f64();
        println!(
            "round {round}: warren worker runtime {:>9.0} jobs/s ({:.2}s; {})",
            rt,
            t.as_secs_f64(),
            used.per_job(a.jobs)
        );
        runtime_rates.push(rt);
    }
    let (bare, rt) = (mean(&bare_rates), mean(&runtime_rates));
    let (rows, commits) = ledger_stats(&metrics.render());
    println!("---");
    println!(
        "bare lapin consumer : {bare:>9.0} jobs/s (mean of {} rounds)",
        a.rounds
    );
    println!(
        "warren runtime      : {rt:>9.0} jobs/s (mean of {} rounds)",
        a.rounds
    );
    println!("ratio               : {:.1}%", 100.0 * rt / bare);
    let all = a.jobs * u64::from(a.rounds);
    println!("CPU, bare           : {}", bare_cpu.per_job(all));
    println!("CPU, runtime        : {}", runtime_cpu.per_job(all));
    println!(
        "job ledger          : {rows:.0} rows in {commits:.0} group commits (mean {:.1} rows/commit)",
        rows / commits.max(1.0)
    );
    println!("process peak RSS    : {:.1} MiB", rss_kib as f64 / 1024.0);

    sqlx::query("DELETE FROM job_runs WHERE job_id LIKE $1")
        .bind(format!("{run_id}-%"))
        .execute(&pool)
        .await
        .context("cleaning up bench rows")?;
    let ch = conn.create_channel().await?;
    topology.delete(&ch).await?;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(())
}

async fn publish(
    producer: &Producer,
    run_id: &str,
    round: u32,
    phase: &str,
    n: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bodies = (0..n).map(|i| {
        let opts = PublishOptions {
            id: Some(format!("{run_id}-{round}-{phase}-{i}")),
            ..Default::default()
        };
        (b"{}".to_vec(), opts)
    });
    producer
        .publish_many(warren_core::task::DEMO_NOOP, bodies, 1024, |_| {})
        .await?;
    let t = started.elapsed().as_secs_f64();
    println!(
        "round {round}: published {n} jobs for {phase} in {t:.2}s ({:.0}/s, confirmed)",
        n as f64 / t
    );
    Ok(())
}

async fn bare_drain(
    conn: &lapin::Connection,
    queue: &str,
    prefetch: u16,
    n: u64,
) -> anyhow::Result<Duration> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut seen = 0u64;
    while let Some(d) = consumer.next().await {
        let d = d?;
        seen += 1;
        if seen % 64 == 0 || seen == n {
            d.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        if seen == n {
            break;
        }
    }
    let t = started.elapsed();
    let _ = ch.close(200, "done".into()).await;
    Ok(t)
}

fn metric_sum(text: &str, name: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn succeeded(text: &str) -> f64 {
    metric_sum(
        text,
        "warren_jobs_processed_total{",
        &["queue=\"default\"", "outcome=\"succeeded\""],
    )
}

fn ledger_stats(text: &str) -> (f64, f64) {
    (
        metric_sum(text, "warren_ledger_batch_size_sum", &[]),
        metric_sum(text, "warren_ledger_batch_size_count", &[]),
    )
}

/// CPU seconds (user + system) used so far by this process, by the PostgreSQL backends
/// connected to the benchmark's database (other databases' work and the server's background
/// processes, such as the WAL writer, are left out) and by RabbitMQ (`beam.smp`, whoever it
/// serves), from `/proc` (Linux; zeros elsewhere).
#[derive(Default, Clone)]
struct Cpu {
    own: f64,
    backends: std::collections::HashMap<u32, f64>,
    postgres: f64,
    rabbitmq: f64,
}

impl Cpu {
    async fn now(pool: &sqlx::PgPool) -> Self {
        let mut c = Cpu {
            own: proc_cpu_secs("self"),
            ..Default::default()
        };
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        for pid in pids {
            let secs = proc_cpu_secs(&pid.to_string());
            c.backends.insert(pid as u32, secs);
            c.postgres += secs;
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return c;
        };
        for e in dir.flatten() {
            let pid = e.file_name();
            let Some(pid) = pid
                .to_str()
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Ok("beam.smp\n") =
                std::fs::read_to_string(format!("/proc/{pid}/comm")).as_deref()
            {
                c.rabbitmq += proc_cpu_secs(pid);
            }
        }
        c
    }

    /// What was used since `before`. A backend that connected meanwhile counts from zero;
    /// one that exited meanwhile takes its time with it.
    fn minus(&self, before: &Cpu) -> Cpu {
        let postgres = self
            .backends
            .iter()
            .map(|(pid, now)| now - before.backends.get(pid).copied().unwrap_or(0.0))
            .sum();
        Cpu {
            own: self.own - before.own,
            backends: Default::default(),
            postgres,
            rabbitmq: (self.rabbitmq - before.rabbitmq).max(0.0),
        }
    }

    fn add(&mut self, o: &Cpu) {
        self.own += o.own;
        self.postgres += o.postgres;
        self.rabbitmq += o.rabbitmq;
    }

    fn per_job(&self, jobs: u64) -> String {
        let us = |s: f64| s * 1e6 / jobs.max(1) as f64;
        format!(
            "CPU µs/job: warren {:.1}, postgres {:.1}, rabbitmq {:.1}",
            us(self.own),
            us(self.postgres),
            us(self.rabbitmq)
        )
    }
}

/// utime + stime of `/proc/<pid>/stat` in seconds (clock ticks of 1/100 s); 0 if unreadable.
fn proc_cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let mut f = rest.split_whitespace().skip(11);
    let ticks = |x: Option<&str>| x.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (u, s) = (ticks(f.next()), ticks(f.next()));
    (u + s) as f64 / 100.0
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A memory field of `/proc/self/status` in KiB (`VmRSS` now, `VmHWM` the peak); 0 where
/// the file does not exist.
pub(super) fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
