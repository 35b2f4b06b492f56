//! `warren ingest`: the HTTP API that publishes jobs (docs/ingest.md).

use super::Global;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use warren_core::{db, telemetry};
use warren_producer::ingest::{self, IngestConfig, Tokens};

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Address the HTTP API listens on (`POST /v1/jobs/{task}`, `POST /v1/jobs`,
    /// `GET /openapi.json`, `/healthz`, `/readyz`). Port 0 picks a free port and prints it.
    /// Metrics stay on WARREN_METRICS_ADDR like every role.
    #[arg(long, env = "WARREN_INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Accepted API tokens, comma-separated; clients send `Authorization: Bearer <token>`.
    /// Prefer the env var or --tokens-file: a flag shows in the process list. Tokens are
    /// never printed or logged.
    #[arg(long, env = "WARREN_INGEST_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// File with one accepted token per line (blank lines and `#` comments skipped); adds
    /// to --tokens. At least one token from either source is required.
    #[arg(long, env = "WARREN_INGEST_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// How long an Idempotency-Key is remembered (per token): a repeat within it answers the
    /// first response and publishes nothing. Records live in PostgreSQL
    /// (ingest_idempotency; `warren migrate` creates it).
    #[arg(long, env = "WARREN_INGEST_IDEMPOTENCY_WINDOW", default_value = "24h",
          value_parser = humantime::parse_duration)]
    pub idempotency_window: Duration,
    // The defaults are a reverse proxy's (nginx: client_header_timeout 60s,
    // client_body_timeout 60s, keepalive_timeout 75s). The head gets hyper's own 30s: it is
    // at most about 400 KiB. The body's 60s bound the whole body here, not one read. The
    // idle 75s outlast the 60s idle timeout of common load balancers.
    /// A new connection must send its whole request head (request line and headers) within
    /// this, or it is closed without an answer. Bounds slow or stalled clients.
    #[arg(long, env = "WARREN_INGEST_HEADER_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this of its head, or it is answered 408
    /// (`request_timeout`) and the connection closes. With the default 1 MiB --max-body,
    /// 60s asks for about 17 KiB/s.
    #[arg(long, env = "WARREN_INGEST_BODY_TIMEOUT", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// A kept-alive connection is closed when its next request head is not complete within
    /// this of the previous answer. Keep it above the idle timeout of a load balancer in
    /// front (60s for many), so the balancer closes idle connections first.
    #[arg(long, env = "WARREN_INGEST_IDLE_TIMEOUT", default_value = "75s",
          value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Most client connections open at once. At the cap the ingest stops accepting: new
    /// connections wait in the kernel's listen backlog until one closes. Keep it below the
    /// open-file limit (`ulimit -n`).
    #[arg(long, env = "WARREN_INGEST_MAX_CONNECTIONS", default_value = "1024",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

pub async fn run(g: &Global, a: IngestArgs) -> anyhow::Result<()> {
    let tokens = Tokens::load(a.tokens.as_deref(), a.tokens_file.as_deref())?;
    if a.idempotency_window.is_zero() {
        anyhow::bail!("--idempotency-window (WARREN_INGEST_IDEMPOTENCY_WINDOW) must be positive");
    }
    for (value, name) in [
        (
            a.header_timeout,
            "--header-timeout (WARREN_INGEST_HEADER_TIMEOUT)",
        ),
        (
            a.body_timeout,
            "--body-timeout (WARREN_INGEST_BODY_TIMEOUT)",
        ),
        (
            a.idle_timeout,
            "--idle-timeout (WARREN_INGEST_IDLE_TIMEOUT)",
        ),
    ] {
        if value.is_zero() {
            anyhow::bail!("{name} must be positive");
        }
    }
    let topology = g.topology()?;
    let pool = db::lazy_pool(&g.database_url, 8)?;
    let health = telemetry::Health::new(&["broker", "flow"]);
    telemetry::serve(g.metrics_addr, health.clone())
        .await
        .context("starting the telemetry listener (--metrics-addr, WARREN_METRICS_ADDR; port 0 picks a free one)")?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {} (WARREN_INGEST_LISTEN)", a.listen))?;
    let addr = listener.local_addr()?;
    println!("ingest listening on http://{addr}");
    tracing::info!(
        %addr,
        tokens = tokens.len(),
        idempotency_window = ?a.idempotency_window,
        max_body = g.max_body,
        header_timeout = ?a.header_timeout,
        body_timeout = ?a.body_timeout,
        idle_timeout = ?a.idle_timeout,
        max_connections = a.max_connections,
        namespace = %g.namespace,
        "ingest API listening"
    );
    let shutdown = super::shutdown_on_signals();
    let cfg = IngestConfig {
        topology,
        amqp_url: g.amqp_url.clone(),
        tokens,
        idempotency_window: a.idempotency_window,
        max_body: g.max_body,
        header_timeout: a.header_timeout,
        body_timeout: a.body_timeout,
        idle_timeout: a.idle_timeout,
        max_connections: a.max_connections as usize,
        pool: pool.clone(),
        health,
    };
    ingest::serve(listener, cfg, shutdown.cancelled_owned()).await;
    pool.close().await;
    tracing::info!("ingest stopped");
    Ok(())
}
