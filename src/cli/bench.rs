//! `warren bench`: the worker runtime's throughput next to a bare lapin consumer's.
//!
//! Both drain the same number of `demo.noop` jobs from the same quorum queue with the same
//! prefetch, in the same process, in alternating rounds. The bare consumer does nothing but
//! ack (multiple, every 64 deliveries): it is the ceiling the broker allows. The runtime
//! does everything it does in production: decode, ledger check and finish (group commit to
//! PostgreSQL), handler, metrics, batched acks. Results: docs/benchmarks.md.
//!
//! With `--peer`, the same bare consumer, `warren worker` and a Celery worker each run as a
//! process of their own (the peer benchmark, [`peer`]; `bench/peer.sh`).

mod peer;

use super::Global;
use anyhow::Context;
use clap::Args;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use warren_core::{db, telemetry};
use warren_producer::{Producer, PublishOptions};
use warren_workers::ledger::Scope;
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
    /// The job: 0 runs `demo.noop`; N > 0 runs `demo.sleep {"ms": N}`, and the bare consumer
    /// then sleeps as long (concurrently, up to the prefetch) before it acks each delivery.
    #[arg(long, env = "WARREN_BENCH_SLEEP_MS", default_value_t = 0)]
    pub sleep_ms: u64,
    /// How much of the job ledger the runtime uses. `full` is what `warren worker` always
    /// does; `writes-only` (no duplicate check) and `off` (nothing recorded) are diagnostics
    /// that show what the ledger costs, and give up duplicate detection: never a production
    /// setting, and `warren worker` has no such option.
    #[arg(long, value_enum, default_value_t = LedgerArg::Full)]
    pub ledger: LedgerArg,
    /// Run the peer benchmark instead (bench/peer.sh): these contenders, each a process of
    /// its own, on the same broker with the same prefetch.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peer: Vec<peer::Contender>,
    #[command(flatten)]
    pub peer_args: peer::PeerArgs,
    /// Internal (the peer benchmark's lapin contender): only run the bare consumer on this
    /// queue until SIGTERM, appending `<message id> <unix µs>` to --record at each ack.
    #[arg(long, hide = true, requires = "record")]
    pub bare_consumer: Option<String>,
    /// Where --bare-consumer records its finishes.
    #[arg(long, hide = true)]
    pub record: Option<PathBuf>,
    /// The worker's settings; the bare consumer uses the same prefetch.
    #[command(flatten)]
    pub tuning: super::worker::Tuning,
}

/// `--ledger`: see [`warren_workers::ledger::Scope`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerArg {
    Full,
    WritesOnly,
    Off,
}

impl LedgerArg {
    fn scope(self) -> Scope {
        match self {
            Self::Full => Scope::Full,
            Self::WritesOnly => Scope::WritesOnly,
            Self::Off => Scope::Off,
        }
    }

    /// What the runtime leaves out, for anything but `full`.
    fn left_out(self) -> Option<&'static str> {
        match self {
            Self::Full => None,
            Self::WritesOnly => Some("records outcomes but checks no job id for duplicates"),
            Self::Off => Some("neither checks nor records anything in the job ledger"),
        }
    }
}

/// The job a benchmark runs: its task, body and how long the bare consumer sleeps for it.
#[derive(Debug, Clone)]
pub(super) struct Job {
    task: &'static str,
    body: Vec<u8>,
    sleep: Duration,
}

impl Job {
    fn new(sleep_ms: u64) -> Self {
        if sleep_ms == 0 {
            Job {
                task: warren_core::task::DEMO_NOOP,
                body: b"{}".to_vec(),
                sleep: Duration::ZERO,
            }
        } else {
            Job {
                task: warren_core::task::DEMO_SLEEP,
                body: format!(r#"{{"ms":{sleep_ms}}}"#).into_bytes(),
                sleep: Duration::from_millis(sleep_ms),
            }
        }
    }

    fn label(&self) -> String {
        match self.sleep.as_millis() {
            0 => self.task.to_owned(),
            ms => format!("{} {{\"ms\":{ms}}}", self.task),
        }
    }
}

pub async fn run(g: &Global, a: BenchArgs) -> anyhow::Result<()> {
    if let Some(queue) = &a.bare_consumer {
        let record = a
            .record
            .as_deref()
            .context("--bare-consumer needs --record")?;
        return peer::bare_consumer(g, queue, record, &a).await;
    }
    if !a.peer.is_empty() {
        return peer::run(g, &a).await;
    }
    let job = Job::new(a.sleep_ms);
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
        "warren bench: {} {} jobs per run, prefetch {}, {} ledger writers, {} threads, {} \
         rounds, quorum queue {queue}",
        a.jobs,
        job.label(),
        a.tuning.prefetch,
        a.tuning.ledger_writers,
        tokio::runtime::Handle::current().metrics().num_workers(),
        a.rounds
    );
    if let Some(left_out) = a.ledger.left_out() {
        println!(
            "DIAGNOSTIC: --ledger {:?}: the runtime {left_out}; not how `warren worker` runs",
            a.ledger
        );
    }
    let (mut bare_rates, mut runtime_rates) = (Vec::new(), Vec::new());
    let (mut bare_cpu, mut runtime_cpu) = (Cpu::default(), Cpu::default());
    let mut rss_kib = 0;
    for round in 1..=a.rounds {
        publish(&producer, &job, &run_id, round, "bare", a.jobs).await?;
        let cpu = Cpu::now(&pool, &[]).await;
        let t = bare_drain(
            &conn,
            &queue,
            a.tuning.prefetch,
            job.sleep,
            Some(a.jobs),
            |_, _| Ok(()),
        )
        .await?;
        let used = Cpu::now(&pool, &[]).await.minus(&cpu);
        bare_cpu.add(&used);
        bare_rates.push(round_rate(round, "bare lapin consumer ", a.jobs, t, &used));

        publish(&producer, &job, &run_id, round, "runtime", a.jobs).await?;
        let before = succeeded(&metrics.render());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let health = telemetry::Health::new(&warren_workers::HEALTH_CHECKS);
        let worker = Worker::new(
            a.tuning
                .config(&g.amqp_url, vec!["default".into()], g.max_body),
            topology.clone(),
            Registry::with_builtin(),
            pool.clone(),
            health.clone(),
        )?
        .with_ledger_scope(a.ledger.scope());
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        // Time the drain, not connect + declare (the bare consumer's clock also starts
        // once it consumes).
        while !health.is_up("broker") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let cpu = Cpu::now(&pool, &[]).await;
        while succeeded(&metrics.render()) - before < a.jobs as f64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "runtime did not drain {} jobs in 10 minutes",
                a.jobs
            );
        }
        let t = started.elapsed();
        let used = Cpu::now(&pool, &[]).await.minus(&cpu);
        runtime_cpu.add(&used);
        rss_kib = rss_kib.max(proc_status_kib("VmRSS"));
        shutdown.cancel();
        handle.await??;
        runtime_rates.push(round_rate(round, "warren worker runtime", a.jobs, t, &used));
    }
    let (bare, rt) = (mean(&bare_rates), mean(&runtime_rates));
    let text = metrics.render();
    let (rows, commits) = ledger_stats(&text);
    println!("---");
    println!(
        "bare lapin consumer : {bare:>9.0} jobs/s (mean of {} rounds)",
        a.rounds
    );
    println!(
        "warren runtime      : {rt:>9.0} jobs/s (mean of {} rounds)",
        a.rounds
    );
    let caveat = match a.ledger.left_out() {
        None => String::new(),
        Some(_) => format!(
            " (DIAGNOSTIC --ledger {:?}: not the production runtime)",
            a.ledger
        ),
    };
    println!("ratio               : {:.1}%{caveat}", 100.0 * rt / bare);
    let all = a.jobs * u64::from(a.rounds);
    println!("CPU, bare           : {}", bare_cpu.per_job(all, "warren"));
    println!(
        "CPU, runtime        : {}",
        runtime_cpu.per_job(all, "warren")
    );
    println!(
        "job ledger          : {rows:.0} rows in {commits:.0} group commits (mean {:.1} rows/commit)",
        rows / commits.max(1.0)
    );
    // (statements, mean ms) of one ledger operation.
    let statements = |op: &str| {
        let op = format!("op=\"{op}\"");
        let sum = metric_sum(&text, "warren_ledger_statement_seconds_sum", &[&op]);
        let count = metric_sum(&text, "warren_ledger_statement_seconds_count", &[&op]);
        (count, 1000.0 * sum / count.max(1.0))
    };
    let ((writes, write_ms), (checks, check_ms)) = (statements("write"), statements("check"));
    let checked = if checks > 0.0 {
        format!(
            "{checks:.0} checks of {check_ms:.2} ms (mean {:.1} jobs/check; a job waits for \
             about one check and two commits)",
            rows / checks
        )
    } else {
        "no duplicate checks".to_owned()
    };
    println!("ledger statements   : {writes:.0} group commits of {write_ms:.2} ms, {checked}");
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
    job: &Job,
    run_id: &str,
    round: u32,
    phase: &str,
    n: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let exchange = producer.exchange_for(job.task, &PublishOptions::default())?;
    publish_stamped(producer, &exchange, job.task, job.task, n, None, |i| {
        let opts = PublishOptions {
            id: Some(format!("{run_id}-{round}-{phase}-{i}")),
            ..Default::default()
        };
        (job.body.clone(), Producer::envelope(&opts).1)
    })
    .await?;
    let t = started.elapsed().as_secs_f64();
    println!(
        "round {round}: published {n} jobs for {phase} in {t:.2}s ({:.0}/s, confirmed)",
        n as f64 / t
    );
    Ok(())
}

/// Publishes `n` messages built by `make(i)` to `exchange` with `routing_key`, each awaiting
/// its publisher confirm (up to 1024 outstanding), and with `rate` no faster than that many
/// per second. Returns each message's publish time (unix µs), taken just before it is handed
/// to the client.
pub(super) async fn publish_stamped(
    producer: &Producer,
    exchange: &str,
    routing_key: &str,
    task: &str,
    n: u64,
    rate: Option<f64>,
    make: impl Fn(u64) -> (Vec<u8>, BasicProperties),
) -> anyhow::Result<Vec<i64>> {
    const WINDOW: usize = 1024;
    let mut stamps = vec![0i64; n as usize];
    let mut pending = futures::stream::FuturesUnordered::new();
    let started = tokio::time::Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            let due = tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate));
            tokio::pin!(due);
            loop {
                tokio::select! {
                    _ = &mut due => break,
                    Some(done) = pending.next() => {
                        let (j, t): (usize, i64) = done?;
                        stamps[j] = t;
                    }
                }
            }
        }
        while pending.len() >= WINDOW {
            if let Some(done) = pending.next().await {
                let (j, t) = done?;
                stamps[j] = t;
            }
        }
        let (body, props) = make(i);
        pending.push(async move {
            let t = unix_micros(SystemTime::now());
            producer
                .publish_raw(exchange, routing_key, task, &body, props)
                .await
                .map(|()| (i as usize, t))
        });
    }
    while let Some(done) = pending.next().await {
        let (j, t) = done?;
        stamps[j] = t;
    }
    Ok(stamps)
}

pub(super) fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// One turn of the bare consumer: a delivery arrived, or a sleeping job is done.
// One lives on the stack at a time; boxing the delivery would add an allocation per job to
// the consumer that is the benchmark's ceiling.
#[allow(clippy::large_enum_variant)]
enum Event {
    Delivery(Option<Result<lapin::message::Delivery, lapin::Error>>),
    Done(u64),
}

/// The bare consumer: nothing but acks. With `sleep` non-zero each delivery first sleeps that
/// long (concurrently, up to the prefetch). Acks are `multiple`, covering the deliveries done
/// so far in order: one ack per 64 events, or sooner when nothing more is ready. Calls
/// `acked(message ids, time of the ack)` after each ack. Stops after `n` jobs (`None`: until
/// the consumer ends). Returns the time from consuming to the last ack.
pub(super) async fn bare_drain(
    conn: &lapin::Connection,
    queue: &str,
    prefetch: u16,
    sleep: Duration,
    n: Option<u64>,
    mut acked: impl FnMut(&[String], SystemTime) -> anyhow::Result<()>,
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
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    // Unacked deliveries in delivery-tag order: (tag, message id, done).
    let mut open: VecDeque<(u64, String, bool)> = VecDeque::new();
    let mut batch: Vec<String> = Vec::with_capacity(64);
    let mut jobs = 0u64;
    let started = Instant::now();
    while n.is_none_or(|n| jobs < n) {
        let mut event = tokio::select! {
            d = consumer.next() => Event::Delivery(d),
            Some(tag) = done_rx.recv() => Event::Done(tag),
        };
        let mut taken = 0;
        loop {
            match event {
                Event::Delivery(None) => anyhow::bail!("the bare consumer's channel closed"),
                Event::Delivery(Some(d)) => {
                    let d = d?;
                    let tag = d.delivery_tag;
                    let id = d.properties.message_id().as_ref().map(|m| m.as_str());
                    open.push_back((tag, id.unwrap_or_default().into(), sleep.is_zero()));
                    if !sleep.is_zero() {
                        let tx = done_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(sleep).await;
                            let _ = tx.send(tag);
                        });
                    }
                }
                Event::Done(tag) => {
                    if let Some(&(first, ..)) = open.front() {
                        if let Some(o) = open.get_mut((tag - first) as usize) {
                            o.2 = true;
                        }
                    }
                }
            }
            taken += 1;
            if taken == 64 {
                break;
            }
            event = if let Ok(tag) = done_rx.try_recv() {
                Event::Done(tag)
            } else if let Some(d) = consumer.next().now_or_never() {
                Event::Delivery(d)
            } else {
                break;
            };
        }
        batch.clear();
        let mut last = None;
        while open.front().is_some_and(|o| o.2) && n.is_none_or(|n| jobs < n) {
            let (tag, id, _) = open.pop_front().expect("front checked");
            batch.push(id);
            last = Some(tag);
            jobs += 1;
        }
        if let Some(tag) = last {
            let now = SystemTime::now();
            ch.basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
            acked(&batch, now)?;
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
        .sum::<f64>()
        // An empty float sum is -0.0, which would print as "-0".
        + 0.0
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

/// Prints one drain of a round (its rate, time and CPU per job) and returns the rate.
fn round_rate(round: u32, who: &str, jobs: u64, t: Duration, used: &Cpu) -> f64 {
    let rate = jobs as f64 / t.as_secs_f64();
    println!(
        "round {round}: {who} {rate:>9.0} jobs/s ({:.2}s; {})",
        t.as_secs_f64(),
        used.per_job(jobs, "warren")
    );
    rate
}

/// CPU seconds (user + system) used so far by the measured processes (this one, or a peer
/// contender's process tree), by the PostgreSQL backends
/// connected to the benchmark's database (other databases' work and the server's background
/// processes, such as the WAL writer, are left out) and by RabbitMQ (`beam.smp`, whoever it
/// serves), from `/proc` (Linux; zeros elsewhere).
#[derive(Default, Clone)]
pub(super) struct Cpu {
    own: f64,
    backends: std::collections::HashMap<u32, f64>,
    postgres: f64,
    rabbitmq: f64,
}

impl Cpu {
    /// Now, measuring `pids` (with their children) as the process, or this process if empty.
    pub(super) async fn now(pool: &sqlx::PgPool, pids: &[u32]) -> Self {
        let own = if pids.is_empty() {
            proc_cpu_secs("self")
        } else {
            process_tree(pids)
                .iter()
                .map(|p| proc_cpu_secs(&p.to_string()))
                .sum()
        };
        let mut c = Cpu {
            own,
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
    pub(super) fn minus(&self, before: &Cpu) -> Cpu {
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

    /// `CPU µs/job: <who> …, postgres …, rabbitmq …`.
    pub(super) fn per_job(&self, jobs: u64, who: &str) -> String {
        let (own, postgres, rabbitmq) = self.micros_per_job(jobs);
        format!("CPU µs/job: {who} {own:.1}, postgres {postgres:.1}, rabbitmq {rabbitmq:.1}")
    }

    /// CPU µs per job of the process, PostgreSQL and RabbitMQ.
    pub(super) fn micros_per_job(&self, jobs: u64) -> (f64, f64, f64) {
        let us = |s: f64| s * 1e6 / jobs.max(1) as f64;
        (us(self.own), us(self.postgres), us(self.rabbitmq))
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
    pid_status_kib("self", field)
}

/// A memory field of `/proc/<pid>/status` in KiB; 0 where the file does not exist.
pub(super) fn pid_status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `roots` and all their descendants (from the parent pids in `/proc/<pid>/stat`; just
/// `roots` where `/proc` cannot be read).
pub(super) fn process_tree(roots: &[u32]) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The parent pid is the second field after the parenthesised command name.
            if let Some(ppid) = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}
