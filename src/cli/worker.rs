//! `warren worker`: consume queues until SIGTERM/SIGINT.

use super::Global;
use anyhow::{bail, Context};
use clap::Args;
use std::time::Duration;
use warren_core::config::{FileConfig, Secret};
use warren_core::task::{RENEWAL_APPMAX, RENEWAL_PAGARME};
use warren_core::topology::Topology;
use warren_core::{db, telemetry};
use warren_workers::providers::{AppmaxClient, PagarmeClient};
use warren_workers::renewals::{self, Appmax, Pagarme, Renewal};
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
    #[command(flatten)]
    pub providers: ProviderClientArgs,
}

/// Where the renewal handlers reach the payment providers. Needed only by a worker that
/// consumes a queue receiving `renewal.pagarme` / `renewal.appmax`; each falls back to
/// `[providers.NAME]` in the config file.
#[derive(Args, Debug, Clone, Default)]
pub struct ProviderClientArgs {
    /// Pagar.me API base URL, e.g. `https://api.pagar.me` (or the simulator's address).
    #[arg(long, env = "WARREN_PAGARME_BASE_URL")]
    pub pagarme_base_url: Option<String>,
    /// Pagar.me secret key (HTTP Basic user). Prefer the env var; never printed.
    #[arg(long, env = "WARREN_PAGARME_SECRET_KEY", hide_env_values = true)]
    pub pagarme_secret_key: Option<String>,
    /// Appmax API base URL (credentials are per merchant, in merchant_integrations).
    #[arg(long, env = "WARREN_APPMAX_BASE_URL")]
    pub appmax_base_url: Option<String>,
    /// Timeout of one provider request. Past it the outcome is unknown: the handler
    /// reconciles by order code/reference before it would charge again.
    #[arg(long, env = "WARREN_PROVIDER_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub provider_timeout: Duration,
    /// Most Pagar.me requests per second from this process [default: 50; 0 = unlimited]
    #[arg(long, env = "WARREN_PAGARME_RATE_LIMIT")]
    pub pagarme_rate_limit: Option<u32>,
    /// Most Appmax requests per second from this process [default: 50; 0 = unlimited]
    #[arg(long, env = "WARREN_APPMAX_RATE_LIMIT")]
    pub appmax_rate_limit: Option<u32>,
}

/// Requests per second per process when neither flag nor config file says.
const DEFAULT_RATE_LIMIT: u32 = 50;

impl ProviderClientArgs {
    /// Adds the renewal handlers the consumed queues need, or says what is missing.
    pub fn register(
        &self,
        registry: &mut Registry,
        topology: &Topology,
        queues: &[String],
        file: &FileConfig,
    ) -> anyhow::Result<()> {
        let needs = |task: &str| -> anyhow::Result<Option<String>> {
            for q in queues {
                if topology.queue(q)?.receives(task) {
                    return Ok(Some(q.clone()));
                }
            }
            Ok(None)
        };
        let dunning = file.dunning()?;
        let policy = file.billing()?;
        let timeout = self.provider_timeout;
        // The stale-payment sweep asks the providers too: a worker on the cron queue gets
        // whichever provider clients are configured, without requiring them.
        let sweeps = needs("cron.fail-stale-payments")?.is_some();
        let mut pagarme = None;
        let cfg = file.provider("pagarme");
        let base_url = self.pagarme_base_url.clone().or(cfg.base_url);
        let secret = self
            .pagarme_secret_key
            .clone()
            .map(Secret::new)
            .or(cfg.secret_key);
        let renews = needs(RENEWAL_PAGARME)?;
        if renews.is_some() || (sweeps && base_url.is_some() && secret.is_some()) {
            let (Some(base_url), Some(secret)) = (base_url, secret) else {
                let queue = renews.unwrap_or_default();
                bail!(
                    "queue {queue} runs {RENEWAL_PAGARME}, which needs WARREN_PAGARME_BASE_URL \
                     and WARREN_PAGARME_SECRET_KEY (or base_url and secret_key under \
                     [providers.pagarme] in the config file)"
                );
            };
            let rate = self
                .pagarme_rate_limit
                .or(cfg.rate_limit)
                .unwrap_or(DEFAULT_RATE_LIMIT);
            let client = PagarmeClient::new(base_url, secret, timeout)?;
            pagarme = Some(Renewal::new(
                Pagarme::new(client, policy.pagarme_idempotency_window),
                Some(rate),
                dunning.clone(),
                policy,
                timeout,
            ));
        }
        let mut appmax = None;
        let cfg = file.provider("appmax");
        let base_url = self.appmax_base_url.clone().or(cfg.base_url);
        let renews = needs(RENEWAL_APPMAX)?;
        if renews.is_some() || (sweeps && base_url.is_some()) {
            let Some(base_url) = base_url else {
                let queue = renews.unwrap_or_default();
                bail!(
                    "queue {queue} runs {RENEWAL_APPMAX}, which needs WARREN_APPMAX_BASE_URL \
                     (or base_url under [providers.appmax] in the config file)"
                );
            };
            let rate = self
                .appmax_rate_limit
                .or(cfg.rate_limit)
                .unwrap_or(DEFAULT_RATE_LIMIT);
            let client = AppmaxClient::new(base_url, timeout)?;
            appmax = Some(Renewal::new(
                Appmax::new(client),
                Some(rate),
                dunning,
                policy,
                timeout,
            ));
        }
        renewals::register(registry, pagarme, appmax)?;
        Ok(())
    }
}

/// How a worker runs; shared by `worker`, `dev` and `bench`.
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// Unacked deliveries per queue (basic.qos): the most jobs one queue runs at once, and
    /// the depth the ledger's group commits can reach.
    #[arg(long, env = "WARREN_PREFETCH", default_value_t = WorkerConfig::DEFAULT_PREFETCH,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// On SIGTERM/SIGINT, how long in-flight jobs get to finish before the worker exits and
    /// they return to the queue. Keep the orchestrator's stop timeout above it.
    #[arg(long, env = "WARREN_GRACE", default_value_t = WorkerConfig::DEFAULT_GRACE.into())]
    pub grace: humantime::Duration,
    /// Most job-ledger rows written per group commit.
    #[arg(long, env = "WARREN_LEDGER_BATCH", default_value_t = WorkerConfig::DEFAULT_LEDGER_BATCH,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ledger_batch: u16,
    /// Concurrent job-ledger writers (each uses one PostgreSQL connection while writing).
    #[arg(long, env = "WARREN_LEDGER_WRITERS",
          default_value_t = WorkerConfig::DEFAULT_LEDGER_WRITERS,
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
            grace: self.grace.into(),
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
    let health = telemetry::Health::new(&warren_workers::HEALTH_CHECKS);
    telemetry::serve(g.metrics_addr, health.clone())
        .await
        .context("starting the telemetry listener (--metrics-addr, WARREN_METRICS_ADDR; port 0 picks a free one)")?;
    start(g, a, health, super::shutdown_on_signals()).await
}

/// Runs a worker with telemetry and signals set up by the caller (shared with `dev`).
pub async fn start(
    g: &Global,
    a: WorkerArgs,
    health: telemetry::Health,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let file = FileConfig::load(g.config.as_deref())?;
    let topology = g.topology()?;
    let mut registry = g.tasks.clone();
    a.providers
        .register(&mut registry, &topology, &a.queues, &file)?;
    let pool = db::lazy_pool(&g.database_url, a.tuning.pool_size())?;
    let worker = Worker::new(
        a.tuning.config(&g.amqp_url, a.queues, g.max_body),
        topology,
        registry,
        pool,
        health,
    )?;
    worker.run(shutdown).await?;
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let cli =
            super::super::Cli::try_parse_from(["warren", "worker", "--queue", "default"]).unwrap();
        let super::super::Command::Worker(a) = cli.command else {
            panic!("not the worker command");
        };
        // The tuning only: the URLs may come from the environment running the tests.
        let lib = WorkerConfig::default();
        let flags = a
            .tuning
            .config(&lib.amqp_url, lib.queues.clone(), lib.max_body);
        assert_eq!((flags.prefetch, flags.grace), (lib.prefetch, lib.grace));
        assert_eq!(
            (flags.ledger_batch, flags.ledger_writers),
            (lib.ledger_batch, lib.ledger_writers)
        );
    }
}
