//! `warren provider-sim`: the Pagar.me/Appmax simulator (docs/providers.md) as a process, for
//! tests, `warren dev` and the compose stack.

use super::Global;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;
use warren_providersim::{serve, SimConfig, LATENCY_ENV};

#[derive(Args, Debug)]
pub struct ProviderSimArgs {
    /// Address to listen on (port 0 picks a free port and prints it).
    #[arg(long, env = "WARREN_SIM_LISTEN", default_value = "127.0.0.1:4010")]
    pub listen: SocketAddr,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, env = LATENCY_ENV, default_value_t = 0)]
    pub latency: u64,
}

pub async fn run(_g: &Global, a: ProviderSimArgs) -> anyhow::Result<()> {
    let cfg = SimConfig {
        latency: Duration::from_millis(a.latency),
        ..SimConfig::default()
    };
    let (addr, server) = serve(a.listen, cfg)
        .await
        .context("starting the provider simulator (--listen)")?;
    println!("provider simulator listening on http://{addr}");
    tracing::info!(%addr, latency_ms = a.latency, "provider simulator listening");
    let shutdown = super::shutdown_on_signals();
    shutdown.cancelled().await;
    server.abort();
    Ok(())
}
