//! `warren scheduler`: leader-elected due-renewal scans.

use super::Global;
use anyhow::Context;
use clap::{ArgAction, Args};
use std::time::Duration;
use warren_core::config::FileConfig;
use warren_core::{db, telemetry};
use warren_scheduler::due::ProviderFlags;
use warren_scheduler::leader::LeaseConfig;
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
    /// The leader's lease: PostgreSQL ends a leader session silent for this long (frozen,
    /// stuck or cut off; idle_session_timeout, idle_in_transaction_session_timeout,
    /// tcp_user_timeout), releasing the lock to a standby; the leader publishes only within
    /// 4/5 of it after proving the lock held.
    #[arg(long, env = "WARREN_LEADER_LEASE", default_value = "10s",
          value_parser = parse_lease)]
    pub leader_lease: Duration,
    /// lock_timeout of the leader's enqueue transactions.
    #[arg(long, env = "WARREN_SCAN_LOCK_TIMEOUT", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub scan_lock_timeout: Duration,
    /// statement_timeout of the leader's enqueue transactions.
    #[arg(long, env = "WARREN_SCAN_STATEMENT_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub scan_statement_timeout: Duration,
    /// Warn (and show in warren_scheduler_clock_skew_seconds) when this replica's clock
    /// differs from the database's by more than this; the scheduler uses the database's.
    #[arg(long, env = "WARREN_MAX_CLOCK_SKEW", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub max_clock_skew: Duration,
    #[command(flatten)]
    pub providers: ProviderArgs,
    #[command(flatten)]
    pub relay: super::relay::RelayArgs,
}

/// A lease of 2 s to 1 h: the leader talks to its session about once a second.
fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(2) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is not between 2s and 1h"));
    }
    Ok(d)
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
    telemetry::serve(g.metrics_addr, health.clone())
        .await
        .context("starting the telemetry listener (--metrics-addr, WARREN_METRICS_ADDR; port 0 picks a free one)")?;
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
    let lease = LeaseConfig {
        lease: a.leader_lease,
        lock_timeout: a.scan_lock_timeout,
        statement_timeout: a.scan_statement_timeout,
    };
    tracing::info!(?pagarme, ?appmax, scan_interval = ?a.scan_interval,
        schedules = schedules.len(), ?lease, "scheduler starting");
    let pool = db::lazy_pool(&g.database_url, 4)?;
    let cfg = SchedulerConfig {
        database_url: g.database_url.clone(),
        namespace: g.namespace.clone(),
        scan_interval: a.scan_interval,
        page_size: a.scan_page.into(),
        pagarme,
        appmax,
        leader_retry: a.leader_retry,
        lease,
        max_clock_skew: a.max_clock_skew,
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
