//! `warren worker`: consume queues until SIGTERM/SIGINT.

use super::Global;
use clap::Args;
use std::time::Duration;
use warren_core::{db, telemetry};
use warren_workers::{Registry, Worker, WorkerConfig};

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Queue to consume, by short name (repeat or comma-separate). Built in: default
    /// (demo.#), renewals.pagarme, renewals.appmax, cron; more in the config file.
    #[arg(
        long = "queue",
        env = "WARREN_QUEUES",
        value_delimiter = ',',
        required = true
    )]
    pub queues: Vec<String>,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// How a worker runs; shared by `worker`, `dev` and `bench`.
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// Unacked deliveries per queue (basic.qos): the most jobs one queue runs at once, and
    /// the depth the ledger's group commits can reach.
    #[arg(long, env = "WARREN_PREFETCH", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// On SIGTERM/SIGINT, how long in-flight jobs get to finish before the worker exits and
    /// they return to the queue. Keep the orchestrator's stop timeout above it.
    #[arg(long, env = "WARREN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Most job-ledger rows written per group commit.
    #[arg(long, env = "WARREN_LEDGER_BATCH", default_value_t = 512,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ledger_batch: u16,
    /// Concurrent job-ledger writers (each uses one PostgreSQL connection while writing).
    #[arg(long, env = "WARREN_LEDGER_WRITERS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=16))]
    pub ledger_writers: u8,
}

impl Tuning {
    pub fn config(&self, amqp_url: &str, queues: Vec<String>, max_body: usize) -> WorkerConfig {
        WorkerConfig {
            amqp_url: amqp_url.to_owned(),
            max_body,
            queues,
            prefetch: self.prefetch,
            grace: self.grace,
            ledger_batch: self.ledger_batch.into(),
            ledger_writers: self.ledger_writers.into(),
        }
    }

    /// Pool size: the writers plus room for handlers.
    pub fn pool_size(&self) -> u32 {
        u32::from(self.ledger_writers) + 4
    }
}

pub async fn run(g: &Global, a: WorkerArgs) -> anyhow::Result<()> {
    let health = telemetry::Health::new(&["broker", "database"]);
    telemetry::serve(g.metrics_addr, health.clone()).await?;
    start(g, a, health, super::shutdown_on_signals()).await
}

/// Runs a worker with telemetry and signals set up by the caller (shared with `dev`).
pub async fn start(
    g: &Global,
    a: WorkerArgs,
    health: telemetry::Health,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let topology = g.topology()?;
    let pool = db::lazy_pool(&g.database_url, a.tuning.pool_size())?;
    let worker = Worker::new(
        a.tuning.config(&g.amqp_url, a.queues, g.max_body),
        topology,
        Registry::with_builtin(),
        pool,
        health,
    )?;
    worker.run(shutdown).await?;
    tracing::info!("worker stopped");
    Ok(())
}
