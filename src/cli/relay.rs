//! `warren relay`: publishes the transactional outbox (`warren_outbox`). Also runs inside
//! `warren scheduler` and `warren dev`; any number of relays can run side by side.

use super::Global;
use anyhow::Context;
use clap::Args;
use std::time::Duration;
use warren_core::{db, telemetry};
use warren_scheduler::outbox::{run_relay, RelayConfig};

/// How the outbox relay runs; shared by `relay`, `scheduler` and `dev`.
#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// How often the relay looks for due outbox rows when it found none (it drains
    /// back to back while rows are due). Also the precision of `run_at`.
    #[arg(long, env = "WARREN_RELAY_INTERVAL", default_value = "500ms",
          value_parser = humantime::parse_duration)]
    pub relay_interval: Duration,
    /// Outbox rows published per transaction.
    #[arg(long, env = "WARREN_RELAY_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub relay_batch: u32,
}

impl RelayArgs {
    pub fn config(&self) -> RelayConfig {
        RelayConfig {
            batch: self.relay_batch.into(),
            interval: self.relay_interval,
        }
    }
}

pub async fn run(g: &Global, a: RelayArgs) -> anyhow::Result<()> {
    let health = telemetry::Health::new(&["database"]);
    telemetry::serve(g.metrics_addr, health.clone())
        .await
        .context("starting the telemetry listener (--metrics-addr, WARREN_METRICS_ADDR; port 0 picks a free one)")?;
    let cfg = a.config();
    let pool = db::lazy_pool(&g.database_url, 2)?;
    let broker = g.shared_broker("relay", &health)?;
    tracing::info!(interval = ?cfg.interval, batch = cfg.batch, "outbox relay starting");
    run_relay(cfg, pool, &broker, health, super::shutdown_on_signals()).await;
    broker.close().await;
    tracing::info!("outbox relay stopped");
    Ok(())
}
