//! `warren dev`: the whole fleet in one process against local services: migrations, the
//! topology, the provider simulator (unless real provider URLs are configured), a worker on
//! every queue and the scheduler, sharing one telemetry listener.

use super::scheduler::SchedulerArgs;
use super::worker::{ProviderClientArgs, Tuning, WorkerArgs};
use super::Global;
use anyhow::Context;
use clap::Args;
use warren_core::config::FileConfig;
use warren_core::telemetry;

#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    #[command(flatten)]
    pub providers: ProviderClientArgs,
    /// Before starting, seed N demo subscriptions, all due now, wired to the simulator's
    /// card outcomes (see `warren demo seed --help`); 0 seeds nothing.
    #[arg(long, env = "WARREN_DEV_SEED", default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Outcome mix of the seeded subscriptions' cards.
    #[arg(long, env = "WARREN_DEV_SEED_MIX", default_value = "ok=8,decline=1,429=1",
          value_parser = |s: &str| s.parse::<super::demo::Mix>())]
    pub seed_mix: super::demo::Mix,
}

/// Points the provider clients at an in-process simulator when no provider URL is
/// configured anywhere, and lets the scheduler charge it (no dry run unless asked).
async fn simulator_unless_configured(
    a: &mut DevArgs,
    file: &FileConfig,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let p = &mut a.providers;
    let configured = p.pagarme_base_url.is_some()
        || p.appmax_base_url.is_some()
        || file.provider("pagarme").base_url.is_some()
        || file.provider("appmax").base_url.is_some();
    if configured {
        return Ok(None);
    }
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (addr, server) = warren_providersim::serve(listen, Default::default()).await?;
    let url = format!("http://{addr}");
    tracing::info!(%url, "provider simulator started; renewals charge it (no real provider configured)");
    p.pagarme_base_url = Some(url.clone());
    p.pagarme_secret_key
        .get_or_insert_with(|| "sk_test_simulator".into());
    p.appmax_base_url = Some(url);
    let flags = &mut a.scheduler.providers;
    flags.pagarme_dry_run.get_or_insert(false);
    flags.appmax_dry_run.get_or_insert(false);
    Ok(Some(server))
}

pub async fn run(g: &Global, mut a: DevArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(g.config.as_deref())?;
    let simulator = simulator_unless_configured(&mut a, &file).await?;
    super::migrate::apply(g).await?;
    if a.seed > 0 {
        let opts = super::demo::SeedOptions {
            subscriptions: a.seed,
            mix: a.seed_mix.clone(),
            progress: true,
            ..Default::default()
        };
        let pool = warren_core::db::lazy_pool(&g.database_url, 2)?;
        let report = super::demo::seed(&pool, &opts).await?;
        pool.close().await;
        eprintln!("{}", report.table());
    }
    let declared = super::topology::declare(g).await?;
    tracing::info!(queues = declared.queues.len(), "topology declared");
    let queues = g
        .topology()?
        .queues()
        .iter()
        .map(|q| q.name.clone())
        .collect();
    let health = telemetry::Health::new(&warren_workers::HEALTH_CHECKS);
    let metrics = telemetry::serve(g.metrics_addr, health.clone())
        .await
        .context("starting the telemetry listener (--metrics-addr, WARREN_METRICS_ADDR; port 0 picks a free one)")?;
    let shutdown = super::shutdown_on_signals();
    let pool = warren_core::db::lazy_pool(&g.database_url, 1)?;
    let summary = tokio::spawn(summary_lines(pool, metrics, shutdown.clone()));
    let worker = super::worker::start(
        g,
        WorkerArgs {
            queues,
            tuning: a.tuning,
            providers: a.providers,
        },
        health.clone(),
        shutdown.clone(),
    );
    let scheduler = super::scheduler::start(g, a.scheduler, health, shutdown.clone());
    let (w, s) = tokio::join!(worker, scheduler);
    summary.abort();
    if let Some(sim) = simulator {
        sim.abort();
    }
    w.and(s)
}

/// What the fleet has done so far, from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
struct Summary {
    due: i64,
    published: i64,
    renewed: i64,
    declined: i64,
    /// Charges sent whose outcome the provider has not shown yet (looked up again).
    waiting: i64,
    dead_lettered: i64,
}

const SUMMARY_SQL: &str = "SELECT
    (SELECT count(*) FROM customer_subscriptions
      WHERE canceled_at IS NULL AND is_native = false
        AND ((status IN ('ACTIVE', 'TRIALING') AND current_period_end <= now())
          OR (status = 'PAST_DUE'
              AND COALESCE(next_attempt_at, current_period_end) <= now()))) AS due,
    (SELECT count(*) FROM renewal_enqueues) AS published,
    (SELECT count(*) FROM payment_transactions WHERE status = 'paid') AS renewed,
    (SELECT count(*) FROM payment_transactions WHERE status = 'failed') AS declined,
    (SELECT count(*) FROM payment_transactions WHERE status = 'unknown') AS waiting,
    (SELECT count(*) FROM job_runs WHERE status = 'dead_lettered') AS dead_lettered";

/// Prints a one-line summary on stderr every few seconds when something changed.
async fn summary_lines(
    pool: sqlx::PgPool,
    metrics: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) {
    eprintln!("warren dev: metrics on http://{metrics}/metrics; Ctrl-C stops (twice: at once)");
    let mut last = None;
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match sqlx::query_as::<_, Summary>(SUMMARY_SQL)
            .fetch_one(&pool)
            .await
        {
            Ok(s) if last != Some(s) => {
                eprintln!(
                    "warren dev: due {} · published {} · renewed {} · declined {} · waiting {} · dead-lettered {}",
                    s.due, s.published, s.renewed, s.declined, s.waiting, s.dead_lettered
                );
                last = Some(s);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "summary query failed"),
        }
    }
}
