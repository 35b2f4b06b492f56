//! `warren dev`: the whole fleet in one process against local services.

use super::{worker::WorkerArgs, Global};
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Unacked deliveries per queue.
    #[arg(long, env = "WARREN_PREFETCH", default_value_t = 32)]
    pub prefetch: u16,
}

pub async fn run(g: &Global, a: DevArgs) -> anyhow::Result<()> {
    super::migrate::apply(g).await?;
    let declared = super::topology::declare(g).await?;
    tracing::info!(queues = declared.queues.len(), "topology declared");
    let queues = g
        .topology()?
        .queues()
        .iter()
        .map(|q| q.name.clone())
        .collect();
    super::worker::run(
        g,
        WorkerArgs {
            queues,
            prefetch: a.prefetch,
            grace: Duration::from_secs(25),
            ledger_batch: 256,
        },
    )
    .await
}
