//! `warren dev`: the whole fleet in one process against local services.

use super::worker::{Tuning, WorkerArgs};
use super::Global;
use clap::Args;

#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(flatten)]
    pub tuning: Tuning,
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
            tuning: a.tuning,
        },
    )
    .await
}
