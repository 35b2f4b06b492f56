//! `warren bench --peer`: the peer benchmark (driven by `bench/peer.sh`).
//!
//! A bare lapin consumer (this module's `--bare-consumer` mode, the same consumer as the
//! in-process benchmark), `warren worker` and a Celery worker (prefork, `acks_late`) each run
//! as a process of their own against the same broker, with the same settings: a quorum queue,
//! persistent messages published by the same publisher with confirms, manual acks, and the
//! same number of unacked deliveries (`--prefetch`; Celery's multiplier is prefetch divided
//! by its concurrency).
//!
//! For each contender, in turn:
//! 1. N jobs are published (confirmed) before it starts; its rate is
//!    (N − 1) / (last finish − first finish), so start-up does not count (the rate from its
//!    start, N / (last finish − start), is printed too).
//! 2. With it running, M jobs are published at a steady rate that every contender can keep
//!    up with; their publish→finish times give p50 and p99 (the drain's own latencies,
//!    dominated by the wait in the backlog, are printed too).
//! 3. Its peak RSS (sum of `VmHWM` over its process tree) is read, and it is stopped.
//!
//! A job's publish time is taken just before the message is handed to the client. Its finish
//! time is when the consumer has done it: for the bare consumer, the ack that covers it; for
//! `warren worker`, the ledger row's `finished_at` (set by the group commit's statement; the
//! commit's flush and then the ack follow); for Celery, the end of the task's body (the late
//! ack follows). All are wall-clock times of the same machine.

use super::{
    bare_drain, pid_status_kib, process_tree, publish_stamped, succeeded, unix_micros, BenchArgs,
    Cpu, Job,
};
use crate::cli::Global;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_core::{db, envelope};
use warren_producer::{Producer, PublishOptions};

/// Who drains the jobs.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// The bare lapin consumer: acks only (after the sleep, for `demo.sleep`).
    Lapin,
    /// `warren worker --queue default`.
    Worker,
    /// A Celery worker (prefork), once per --celery-concurrency.
    Celery,
}

/// The peer benchmark's own settings (with --peer).
#[derive(Args, Debug)]
pub struct PeerArgs {
    /// With --peer: jobs published at a steady rate while each contender runs, for the
    /// latency figures.
    #[arg(long, env = "WARREN_BENCH_LATENCY_JOBS", default_value_t = 1000)]
    pub latency_jobs: u64,
    /// With --peer: the rate of those jobs per second. Keep it under the slowest contender's
    /// throughput, or the latencies measure its backlog.
    #[arg(long, env = "WARREN_BENCH_LATENCY_RATE", default_value_t = 200.0)]
    pub latency_rate: f64,
    /// With --peer: the `celery` program (bench/peer.sh installs it into bench/.venv).
    #[arg(
        long,
        env = "WARREN_BENCH_CELERY",
        default_value = "bench/.venv/bin/celery"
    )]
    pub celery: PathBuf,
    /// With --peer: the Celery app's module file.
    #[arg(
        long,
        env = "WARREN_BENCH_CELERY_APP",
        default_value = "bench/celery_peer.py"
    )]
    pub celery_app: PathBuf,
    /// With --peer: Celery's prefork concurrency, one Celery run per value. Its prefetch
    /// multiplier is --prefetch / concurrency (rounded up), so it holds as many unacked
    /// deliveries as the others.
    #[arg(long, value_delimiter = ',', default_value = "2",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub celery_concurrency: Vec<u16>,
}

/// The lapin contender's process: the bare consumer on `queue` until SIGTERM, appending
/// `<message id> <unix µs>` to `record` after each ack.
pub(super) async fn bare_consumer(
    g: &Global,
    queue: &str,
    record: &Path,
    a: &BenchArgs,
) -> anyhow::Result<()> {
    let conn = g.connect("bench-bare").await?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record)
        .with_context(|| format!("opening {}", record.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let shutdown = crate::cli::shutdown_on_signals();
    let job = Job::new(a.sleep_ms);
    let drain = bare_drain(
        &conn,
        queue,
        a.tuning.prefetch,
        job.sleep,
        None,
        |ids, at| {
            let us = unix_micros(at);
            for id in ids {
                writeln!(out, "{id} {us}")?;
            }
            out.flush()?;
            Ok(())
        },
    );
    tokio::select! {
        r = drain => { r?; }
        _ = shutdown.cancelled() => {}
    }
    let _ = conn.close(200, "bench done".into()).await;
    Ok(())
}

/// What one contender measured.
struct Outcome {
    name: String,
    rate: f64,
    /// Jobs/s from the contender's start to its last finish.
    from_start: f64,
    drain: (f64, f64),
    latency: (f64, f64),
    rss_mib: f64,
    cpu: (f64, f64, f64),
    load: f64,
}

/// Everything a contender's run needs, and what the end cleans up.
struct Bench<'a> {
    g: Global,
    a: &'a BenchArgs,
    job: Job,
    run_id: String,
    conn: lapin::Connection,
    producer: Producer,
    pool: sqlx::PgPool,
    jobs_exchange: String,
    warren_queue: String,
    celery_queue: String,
    dir: PathBuf,
}

pub(super) async fn run(g: &Global, a: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.jobs >= 2 && a.peer_args.latency_jobs >= 1 && a.peer_args.latency_rate > 0.0,
        "--jobs must be at least 2, --latency-jobs at least 1 and --latency-rate positive"
    );
    if a.peer.contains(&Contender::Celery) && !a.peer_args.celery.exists() {
        bail!(
            "{} not found: bench/peer.sh installs Celery into bench/.venv (or give --celery)",
            a.peer_args.celery.display()
        );
    }
    let run_id = format!("peer-{}", std::process::id());
    let mut g = g.clone();
    g.namespace = format!("{}-bench-{run_id}", g.namespace);
    crate::cli::migrate::apply(&g).await?;
    crate::cli::topology::declare(&g).await?;
    let topology = g.topology()?;
    let conn = g.connect("bench").await?;
    let producer = Producer::new(&conn, topology.jobs_exchange()).await?;
    let celery_queue = format!("{}.celery", g.namespace);
    // The queue Celery declares (durable, quorum), declared first so the backlog can wait in
    // it before the worker starts.
    let mut quorum = FieldTable::default();
    envelope::set_str(&mut quorum, "x-queue-type", "quorum");
    producer
        .channel()
        .queue_declare(
            celery_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await?;
    let dir = std::env::temp_dir().join(format!("warren-bench-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let b = Bench {
        a,
        job: Job::new(a.sleep_ms),
        pool: db::lazy_pool(&g.database_url, 2)?,
        jobs_exchange: topology.jobs_exchange(),
        warren_queue: topology.queue_name("default"),
        celery_queue,
        run_id,
        conn,
        producer,
        dir,
        g,
    };
    let result = b.run_all().await;

    // Clean up whatever happened: ledger rows, queues and exchanges, record files.
    sqlx::query("DELETE FROM job_runs WHERE job_id LIKE $1")
        .bind(format!("{}-%", b.run_id))
        .execute(&b.pool)
        .await
        .context("cleaning up bench rows")?;
    let ch = b.conn.create_channel().await?;
    topology.delete(&ch).await?;
    ch.queue_delete(
        b.celery_queue.as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await?;
    ch.exchange_delete(
        b.celery_queue.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await?;
    let _ = b.conn.close(200, "bench done".into()).await;
    let _ = std::fs::remove_dir_all(&b.dir);
    result
}

impl Bench<'_> {
    async fn run_all(&self) -> anyhow::Result<()> {
        let (a, p) = (self.a, &self.a.peer_args);
        println!(
            "warren bench --peer: {}; {} jobs drained per contender; latency: {} jobs at {}/s; \
             prefetch {}; quorum queues; persistent messages with publisher confirms; manual acks",
            self.job.label(),
            a.jobs,
            p.latency_jobs,
            p.latency_rate,
            a.tuning.prefetch
        );
        let mut runs: Vec<(Contender, u16)> = Vec::new();
        for &c in &a.peer {
            match c {
                Contender::Celery => runs.extend(p.celery_concurrency.iter().map(|&n| (c, n))),
                _ => runs.push((c, 0)),
            }
        }
        let mut outcomes = Vec::new();
        for (c, n) in runs {
            let o = self.contender(c, n).await?;
            println!(
                "{}: {:.0} jobs/s ({:.0} from its start); latency p50 {:.1} ms, p99 {:.1} ms at {}/s (while draining \
                 the backlog: p50 {:.0} ms, p99 {:.0} ms); peak RSS {:.1} MiB; CPU µs/job: \
                 {:.1} own, {:.1} postgres, {:.1} rabbitmq; load {:.2}",
                o.name,
                o.rate,
                o.from_start,
                o.latency.0,
                o.latency.1,
                p.latency_rate,
                o.drain.0,
                o.drain.1,
                o.rss_mib,
                o.cpu.0,
                o.cpu.1,
                o.cpu.2,
                o.load
            );
            println!(
                "peer-result {}",
                serde_json::json!({
                    "task": self.job.label(), "contender": o.name, "jobs": a.jobs,
                    "jobs_per_s": o.rate.round(), "jobs_per_s_from_start": o.from_start.round(),
                    "p50_ms": o.latency.0, "p99_ms": o.latency.1,
                    "latency_rate": p.latency_rate,
                    "drain_p50_ms": o.drain.0, "drain_p99_ms": o.drain.1,
                    "peak_rss_mib": o.rss_mib,
                    "cpu_us_per_job": [o.cpu.0, o.cpu.1, o.cpu.2],
                    "prefetch": a.tuning.prefetch, "load1": o.load,
                })
            );
            outcomes.push(o);
        }
        print_table(&self.job, &outcomes);
        Ok(())
    }

    /// One contender: backlog drain, paced latency, RSS, stop.
    async fn contender(&self, c: Contender, concurrency: u16) -> anyhow::Result<Outcome> {
        let (a, p) = (self.a, &self.a.peer_args);
        let (name, tag) = match c {
            Contender::Lapin => ("lapin (bare)".to_owned(), "lapin".to_owned()),
            Contender::Worker => ("warren worker".to_owned(), "worker".to_owned()),
            Contender::Celery => (
                format!("celery -c {concurrency}"),
                format!("celery{concurrency}"),
            ),
        };
        let prefix = format!("{}-{tag}", self.run_id);
        let record = self.dir.join(format!("{tag}.finished"));
        let (exchange, routing_key, task) = match c {
            Contender::Celery => ("", self.celery_queue.as_str(), celery_task(&self.job)),
            _ => (self.jobs_exchange.as_str(), self.job.task, self.job.task),
        };
        let message = |phase: &'static str| {
            let prefix = prefix.clone();
            move |i: u64| {
                let id = format!("{prefix}-{phase}-{i}");
                match c {
                    Contender::Celery => celery_message(&id, &self.job),
                    _ => {
                        let opts = PublishOptions {
                            id: Some(id),
                            ..Default::default()
                        };
                        (self.job.body.clone(), Producer::envelope(&opts).1)
                    }
                }
            }
        };

        let t = Instant::now();
        let sent = publish_stamped(
            &self.producer,
            exchange,
            routing_key,
            task,
            a.jobs,
            None,
            message("d"),
        )
        .await?;
        eprintln!(
            "{name}: published {} jobs in {:.1}s; starting it",
            a.jobs,
            t.elapsed().as_secs_f64()
        );
        let load = load_average();
        let spawned = unix_micros(std::time::SystemTime::now());
        let (mut child, mut finishes) = self.spawn(c, concurrency, &record)?;
        let pid = child.id().context("the contender exited at once")?;
        let cpu = self
            .wait(&name, &mut child, &mut finishes, pid, a.jobs)
            .await?;
        let done = finishes.stamps(&format!("{prefix}-d-")).await?;
        let (first, last) = done
            .values()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        let rate = (done.len() as f64 - 1.0) / ((last - first).max(1) as f64 / 1e6);
        let from_start = done.len() as f64 / ((last - spawned).max(1) as f64 / 1e6);
        let drain = percentiles(&sent, &done);

        eprintln!(
            "{name}: drained; publishing {} jobs at {}/s for the latency",
            p.latency_jobs, p.latency_rate
        );
        let sent = publish_stamped(
            &self.producer,
            exchange,
            routing_key,
            task,
            p.latency_jobs,
            Some(p.latency_rate),
            message("l"),
        )
        .await?;
        self.wait(
            &name,
            &mut child,
            &mut finishes,
            pid,
            a.jobs + p.latency_jobs,
        )
        .await?;
        let latency = percentiles(&sent, &finishes.stamps(&format!("{prefix}-l-")).await?);
        let rss_kib: u64 = process_tree(&[pid])
            .iter()
            .map(|p| pid_status_kib(&p.to_string(), "VmHWM"))
            .sum();
        stop(&mut child).await;
        Ok(Outcome {
            name,
            rate,
            from_start,
            drain,
            latency,
            rss_mib: rss_kib as f64 / 1024.0,
            cpu,
            load,
        })
    }

    /// Starts a contender's process and says where its finishes can be read.
    fn spawn(
        &self,
        c: Contender,
        concurrency: u16,
        record: &Path,
    ) -> anyhow::Result<(tokio::process::Child, Finishes)> {
        let exe = std::env::current_exe()?;
        let prefetch = self.a.tuning.prefetch;
        let mut cmd;
        let finishes;
        match c {
            Contender::Lapin => {
                cmd = tokio::process::Command::new(exe);
                cmd.arg("bench")
                    .arg("--bare-consumer")
                    .arg(&self.warren_queue)
                    .arg("--record")
                    .arg(record)
                    .arg("--prefetch")
                    .arg(prefetch.to_string())
                    .arg("--sleep-ms")
                    .arg(self.a.sleep_ms.to_string())
                    .env("AMQP_URL", &self.g.amqp_url);
                finishes = Finishes::file(record);
            }
            Contender::Worker => {
                let metrics = free_port()?;
                let t = &self.a.tuning;
                cmd = tokio::process::Command::new(exe);
                cmd.args(["worker", "--queue", "default", "--prefetch"])
                    .arg(prefetch.to_string())
                    .arg("--ledger-batch")
                    .arg(t.ledger_batch.to_string())
                    .arg("--ledger-writers")
                    .arg(t.ledger_writers.to_string())
                    .env("AMQP_URL", &self.g.amqp_url)
                    .env("DATABASE_URL", &self.g.database_url)
                    .env("WARREN_NAMESPACE", &self.g.namespace)
                    .env("WARREN_METRICS_ADDR", metrics.to_string());
                if let Some(config) = &self.g.config {
                    cmd.env("WARREN_CONFIG", config);
                }
                finishes = Finishes::Ledger {
                    metrics,
                    pool: self.pool.clone(),
                };
            }
            Contender::Celery => {
                let app = &self.a.peer_args.celery_app;
                let module = app
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context("--celery-app is not a file name")?;
                let dir = app
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let multiplier = prefetch.div_ceil(concurrency);
                eprintln!(
                    "celery -c {concurrency}: prefetch multiplier {multiplier} (× {concurrency} \
                     = {} unacked deliveries)",
                    multiplier * concurrency
                );
                cmd = tokio::process::Command::new(&self.a.peer_args.celery);
                cmd.args([
                    "-q",
                    "-A",
                    module,
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                ])
                .arg(concurrency.to_string())
                .args(["--queues", &self.celery_queue])
                .args([
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                ])
                .args(["--without-heartbeat", "--hostname"])
                .arg(format!("{}-{concurrency}@%h", self.run_id))
                .env("PYTHONPATH", dir)
                .env("WARREN_BENCH_AMQP_URL", &self.g.amqp_url)
                .env("WARREN_BENCH_QUEUE", &self.celery_queue)
                .env("WARREN_BENCH_RECORD", record)
                .env("WARREN_BENCH_PREFETCH_MULTIPLIER", multiplier.to_string());
                finishes = Finishes::file(record);
            }
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.as_std().get_program()))?;
        Ok((child, finishes))
    }

    /// Waits until `total` jobs have finished, showing progress. Returns the CPU used per
    /// job from the first finish seen to the last (start-up left out).
    async fn wait(
        &self,
        name: &str,
        child: &mut tokio::process::Child,
        finishes: &mut Finishes,
        pid: u32,
        total: u64,
    ) -> anyhow::Result<(f64, f64, f64)> {
        let started = Instant::now();
        let mut shown = Instant::now();
        let mut first: Option<(Cpu, u64)> = None;
        loop {
            let n = finishes.count().await?;
            if first.is_none() && n > 0 {
                first = Some((Cpu::now(&self.pool, &[pid]).await, n));
            }
            if n >= total {
                let (cpu, n0) = first.expect("set once n > 0");
                let used = Cpu::now(&self.pool, &[pid]).await.minus(&cpu);
                return Ok(used.micros_per_job(total - n0));
            }
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}) after {n} of {total} jobs");
            }
            if started.elapsed() > Duration::from_secs(900) {
                bail!("{name} finished {n} of {total} jobs in 15 minutes; giving up");
            }
            if shown.elapsed() > Duration::from_secs(3) {
                shown = Instant::now();
                eprintln!("{name}: {n}/{total} jobs done");
            }
            // Often until the first finish, so the CPU window starts close to it.
            let poll = if first.is_none() { 5 } else { 50 };
            tokio::time::sleep(Duration::from_millis(poll)).await;
        }
    }
}

/// Where a contender's finish times come from.
enum Finishes {
    /// Lines `<job id> <unix µs>` the contender appends (bare consumer, Celery).
    File {
        path: PathBuf,
        read: u64,
        stamps: HashMap<String, i64>,
    },
    /// `warren worker`: progress from its /metrics, times from `job_runs.finished_at`.
    Ledger {
        metrics: SocketAddr,
        pool: sqlx::PgPool,
    },
}

impl Finishes {
    fn file(path: &Path) -> Self {
        Finishes::File {
            path: path.to_owned(),
            read: 0,
            stamps: HashMap::new(),
        }
    }

    /// Jobs finished so far (all phases).
    async fn count(&mut self) -> anyhow::Result<u64> {
        match self {
            Finishes::File { path, read, stamps } => {
                let Ok(mut f) = std::fs::File::open(&*path) else {
                    return Ok(0); // not created yet
                };
                f.seek(std::io::SeekFrom::Start(*read))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                // Only whole lines; a partly written one is read next time.
                let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                *read += whole as u64;
                for line in String::from_utf8_lossy(&buf[..whole]).lines() {
                    if let Some((id, t)) = line.split_once(' ') {
                        stamps.insert(id.to_owned(), t.parse().context("a finish record")?);
                    }
                }
                Ok(stamps.len() as u64)
            }
            Finishes::Ledger { metrics, .. } => {
                // Not listening yet while the worker starts.
                Ok(http_get(*metrics, "/metrics")
                    .await
                    .map_or(0.0, |text| succeeded(&text)) as u64)
            }
        }
    }

    /// Finish times (unix µs) of the jobs whose ids start with `prefix`, by their number.
    async fn stamps(&mut self, prefix: &str) -> anyhow::Result<HashMap<u64, i64>> {
        let index = |id: &str| id.strip_prefix(prefix)?.parse::<u64>().ok();
        match self {
            Finishes::File { .. } => {
                self.count().await?;
                let Finishes::File { stamps, .. } = self else {
                    unreachable!()
                };
                Ok(stamps
                    .iter()
                    .filter_map(|(id, &t)| Some((index(id)?, t)))
                    .collect())
            }
            Finishes::Ledger { pool, .. } => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT job_id, (extract(epoch FROM finished_at) * 1000000)::int8
                       FROM job_runs WHERE job_id LIKE $1 AND status = 'succeeded'",
                )
                .bind(format!("{prefix}%"))
                .fetch_all(&*pool)
                .await?;
                Ok(rows
                    .iter()
                    .filter_map(|(id, t)| Some((index(id)?, *t)))
                    .collect())
            }
        }
    }
}

/// p50 and p99 of finish − publish, in ms, over the jobs that have both.
fn percentiles(sent: &[i64], done: &HashMap<u64, i64>) -> (f64, f64) {
    let mut ms: Vec<f64> = done
        .iter()
        .filter_map(|(&i, &t)| Some((t - *sent.get(i as usize)?) as f64 / 1000.0))
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.50), at(0.99))
}

/// The table for docs/benchmarks.md, and the ratios the issue asks for.
fn print_table(job: &Job, outcomes: &[Outcome]) {
    println!("---");
    println!(
        "| {} | jobs/s | from start | p50 ms | p99 ms | peak RSS MiB | CPU µs/job: own / postgres / rabbitmq | load |",
        job.label()
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {:.2} |",
            o.name,
            o.rate,
            o.from_start,
            o.latency.0,
            o.latency.1,
            o.rss_mib,
            o.cpu.0,
            o.cpu.1,
            o.cpu.2,
            o.load
        );
    }
    let Some(warren) = outcomes.iter().find(|o| o.name == "warren worker") else {
        return;
    };
    for o in outcomes.iter().filter(|o| o.name != warren.name) {
        if o.name.starts_with("lapin") {
            println!(
                "warren worker / {}: {:.1} % of its jobs/s (goal for demo.noop: ≥ 90 %)",
                o.name,
                100.0 * warren.rate / o.rate
            );
        } else {
            println!(
                "warren worker / {}: {:.1}× its jobs/s (goal for demo.noop: ≥ 10×)",
                o.name,
                warren.rate / o.rate
            );
        }
    }
}

/// The Celery task that does what `job` does (bench/celery_peer.py).
fn celery_task(job: &Job) -> &'static str {
    if job.sleep.is_zero() {
        "warren_peer.noop"
    } else {
        "warren_peer.sleep"
    }
}

/// A Celery task message (protocol 2, JSON), as `apply_async` would publish it.
fn celery_message(id: &str, job: &Job) -> (Vec<u8>, BasicProperties) {
    let ms = job.sleep.as_millis() as u64;
    let (kwargs, kwargsrepr) = if ms == 0 {
        (serde_json::json!({}), "{}".to_owned())
    } else {
        (serde_json::json!({ "ms": ms }), format!("{{'ms': {ms}}}"))
    };
    let body = serde_json::json!([
        [],
        kwargs,
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
    ]);
    let mut h = FieldTable::default();
    for (k, v) in [
        ("lang", "py"),
        ("task", celery_task(job)),
        ("id", id),
        ("root_id", id),
        ("argsrepr", "()"),
        ("kwargsrepr", &kwargsrepr),
        ("origin", "warren-bench"),
    ] {
        envelope::set_str(&mut h, k, v);
    }
    for k in [
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "parent_id",
        "stamped_headers",
    ] {
        h.insert(k.into(), AMQPValue::Void);
    }
    envelope::set_int(&mut h, "retries", 0);
    envelope::set_int(&mut h, "replaced_task_nesting", 0);
    h.insert(
        "timelimit".into(),
        AMQPValue::FieldArray(vec![AMQPValue::Void, AMQPValue::Void].into()),
    );
    h.insert("ignore_result".into(), AMQPValue::Boolean(true));
    h.insert(
        "stamps".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_correlation_id(id.into())
        .with_headers(h);
    (body.to_string().into_bytes(), props)
}

/// SIGTERM, then up to 30 s for a graceful exit, then SIGKILL.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A local port nobody listens on now (for the worker's /metrics).
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The body of an HTTP/1.0 GET on `addr`.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text)
}

/// The 1-minute load average (0 where /proc/loadavg cannot be read).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
