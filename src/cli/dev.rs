//! `warren dev`: the whole fleet in one process against local services: migrations, the
//! topology, a worker on every queue and the scheduler, sharing one telemetry listener.

use super::scheduler::SchedulerArgs;
use super::worker::{Tuning, WorkerArgs};
use super::Global;
use clap::Args;
use warren_core::telemetry;

#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
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
    let health = telemetry::Health::new(&["broker", "database"]);
    telemetry::serve(g.metrics_addr, health.clone()).await?;
    let shutdown = super::shutdown_on_signals();
    let worker = super::worker::start(
        g,
        WorkerArgs {
            queues,
            tuning: a.tuning,
        },
        health.clone(),
        shutdown.clone(),
    );
    let scheduler = super::scheduler::start(g, a.scheduler, health, shutdown.clone());
    let (w, s) = tokio::join!(worker, scheduler);
    w.and(s)
}
