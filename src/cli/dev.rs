//! `warren dev`: the whole fleet in one process against local services: migrations, the
//! topology, the provider simulator (unless real provider URLs are configured), a worker on
//! every queue and the scheduler, sharing one telemetry listener.

use super::scheduler::SchedulerArgs;
use super::worker::{ProviderClientArgs, Tuning, WorkerArgs};
use super::Global;
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
            providers: a.providers,
        },
        health.clone(),
        shutdown.clone(),
    );
    let scheduler = super::scheduler::start(g, a.scheduler, health, shutdown.clone());
    let (w, s) = tokio::join!(worker, scheduler);
    if let Some(sim) = simulator {
        sim.abort();
    }
    w.and(s)
}
