//! `warren scheduler`: leader-elected due-renewal scans.

use super::Global;
use clap::{ArgAction, Args};
use std::time::Duration;
use warren_core::config::FileConfig;
use warren_core::{db, telemetry};
use warren_scheduler::due::ProviderFlags;
use warren_scheduler::run::SchedulerConfig;

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// How often the leader scans for due subscriptions.
    #[arg(long, env = "WARREN_SCAN_INTERVAL", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub scan_interval: Duration,
    /// Subscriptions per scan page (and per enqueue transaction).
    #[arg(long, env = "WARREN_SCAN_PAGE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub scan_page: u32,
    /// How often a standby replica tries to become leader.
    #[arg(long, env = "WARREN_LEADER_RETRY", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub leader_retry: Duration,
    #[command(flatten)]
    pub providers: ProviderArgs,
    #[command(flatten)]
    pub relay: super::relay::RelayArgs,
}

/// Per-provider rollout flags. Unset flags fall back to `[providers.NAME]` in the config
/// file, then to enabled + dry run: a new deployment observes before it charges.
#[derive(Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Scan Pagar.me subscriptions (prepaid and native) [default: true]
    #[arg(long, env = "WARREN_PAGARME_ENABLED", action = ArgAction::Set)]
    pub pagarme_enabled: Option<bool>,
    /// Count and log due Pagar.me renewals but publish nothing [default: true]
    #[arg(long, env = "WARREN_PAGARME_DRY_RUN", action = ArgAction::Set)]
    pub pagarme_dry_run: Option<bool>,
    /// Scan Appmax subscriptions [default: true]
    #[arg(long, env = "WARREN_APPMAX_ENABLED", action = ArgAction::Set)]
    pub appmax_enabled: Option<bool>,
    /// Count and log due Appmax renewals but publish nothing [default: true]
    #[arg(long, env = "WARREN_APPMAX_DRY_RUN", action = ArgAction::Set)]
    pub appmax_dry_run: Option<bool>,
}

impl ProviderArgs {
    /// (pagarme, appmax) flags: flag or env var, else config file, else enabled + dry run.
    pub fn resolve(&self, file: &FileConfig) -> (ProviderFlags, ProviderFlags) {
        let pick = |name: &str, enabled: Option<bool>, dry_run: Option<bool>| {
            let f = file.provider(name);
            ProviderFlags {
                enabled: enabled.or(f.enabled).unwrap_or(true),
                dry_run: dry_run.or(f.dry_run).unwrap_or(true),
            }
        };
        (
            pick("pagarme", self.pagarme_enabled, self.pagarme_dry_run),
            pick("appmax", self.appmax_enabled, self.appmax_dry_run),
        )
    }
}

pub async fn run(g: &Global, a: SchedulerArgs) -> anyhow::Result<()> {
    let health = telemetry::Health::new(&["database"]);
    telemetry::serve(g.metrics_addr, health.clone()).await?;
    start(g, a, health, super::shutdown_on_signals()).await
}

/// Runs the scheduler with telemetry and signals set up by the caller (shared with `dev`).
pub async fn start(
    g: &Global,
    a: SchedulerArgs,
    health: telemetry::Health,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let file = FileConfig::load(g.config.as_deref())?;
    let (pagarme, appmax) = a.providers.resolve(&file);
    let schedules = warren_scheduler::ticks::schedules(&file.cron)?;
    tracing::info!(?pagarme, ?appmax, scan_interval = ?a.scan_interval,
        schedules = schedules.len(), "scheduler starting");
    let pool = db::lazy_pool(&g.database_url, 4)?;
    let cfg = SchedulerConfig {
        database_url: g.database_url.clone(),
        namespace: g.namespace.clone(),
        scan_interval: a.scan_interval,
        page_size: a.scan_page.into(),
        pagarme,
        appmax,
        leader_retry: a.leader_retry,
        schedules,
    };
    // One connection for scans, cron and the relay. Every replica relays the outbox (rows
    // are shared out by SKIP LOCKED); only the leader scans.
    let broker = g.shared_broker("scheduler", &health)?;
    let relay = warren_scheduler::outbox::run_relay(
        a.relay.config(),
        pool.clone(),
        &broker,
        health.clone(),
        shutdown.clone(),
    );
    tokio::join!(
        warren_scheduler::run::run(cfg, pool, &broker, health, shutdown),
        relay
    );
    broker.close().await;
    tracing::info!("scheduler stopped");
    Ok(())
}
