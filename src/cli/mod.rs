//! Command-line interface: global settings (each flag with its env var) and the commands.

mod bench;
mod bench_due;
mod billing;
mod demo;
mod dev;
mod dlq;
mod due;
mod ingest;
mod migrate;
mod provider_sim;
mod publish;
mod reference;
mod relay;
mod scheduler;
mod schemas;
mod status;
mod topology;
mod worker;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use warren_core::config::{self, FileConfig};
use warren_core::telemetry::LogFormat;
use warren_core::topology::Topology;
use warren_workers::Registry;

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "Self-hosted background-job fleet on RabbitMQ and PostgreSQL",
    long_about = "Self-hosted background-job fleet on RabbitMQ and PostgreSQL.\n\n\
        Jobs are JSON messages on the topic exchange <namespace>.jobs with routing key = task \
        name. Workers consume quorum queues, record every job in PostgreSQL (job_runs), retry \
        through delay queues and dead-letter what cannot succeed into <queue>.dlq.\n\n\
        First run: `warren migrate && warren topology`, then `warren worker --queue default` \
        and `warren publish demo.noop`. `warren dev` does all of it in one process.",
    after_help = "Every option can also be set by the environment variable shown in brackets."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command shares. `--help` lists them after the command's own options,
/// under their own heading, so what a command itself takes comes first.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Settings every command shares")]
pub struct Global {
    /// RabbitMQ URL (the password is never printed).
    #[arg(long, env = "AMQP_URL", default_value = config::DEFAULT_AMQP_URL, global = true,
          hide_env_values = true)]
    pub amqp_url: String,
    /// PostgreSQL URL; `warren migrate` creates the database if it is missing.
    #[arg(long, env = "DATABASE_URL", default_value = config::DEFAULT_DATABASE_URL,
          global = true, hide_env_values = true)]
    pub database_url: String,
    /// Prefix of every exchange and queue, so several deployments or test runs can share a
    /// broker.
    #[arg(long, env = "WARREN_NAMESPACE", default_value = config::DEFAULT_NAMESPACE,
          global = true)]
    pub namespace: String,
    /// Optional TOML file adding queues, adjusting delivery limits and delay tiers.
    #[arg(long, env = "WARREN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz for long-running roles (port 0 picks a
    /// free port and logs it).
    #[arg(long, env = "WARREN_METRICS_ADDR", default_value = config::DEFAULT_METRICS_ADDR,
          global = true)]
    pub metrics_addr: SocketAddr,
    /// Largest job body in bytes: `publish` refuses bigger payloads, workers dead-letter them
    /// as malformed.
    #[arg(long, env = "WARREN_MAX_BODY", default_value_t = config::DEFAULT_MAX_BODY,
          global = true, value_parser = clap::value_parser!(usize))]
    pub max_body: usize,
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text,
          global = true)]
    pub log_format: LogFormatArg,
    /// Threads running jobs and the runtime's own tasks (tokio worker threads); default one
    /// per CPU. Jobs mostly wait on I/O, so one thread runs hundreds at once; on a small
    /// machine that also runs PostgreSQL and RabbitMQ, fewer threads switch less (`warren
    /// bench` on 2 cores: +4–9 % jobs/s with 1, docs/benchmarks.md). Handlers that compute for
    /// long stretches want more, or `spawn_blocking`. Scale out with replicas.
    #[arg(long, env = "WARREN_THREADS", global = true,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// The tasks this program runs (the built-in ones and those given to [`crate::App`]):
    /// workers run them and every command's topology routes them.
    #[arg(skip)]
    pub tasks: Registry,
}

/// How a reporting command (`due`, `status`, `dlq list`) prints: a table for people, JSON
/// for scripts.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Format {
    Table,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(v: LogFormatArg) -> Self {
        match v {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the database if missing and apply migrations (idempotent); --check tells
    /// whether a release needs a schema change, --down reverts for a rollback.
    ///
    /// Without options: creates the database named in DATABASE_URL if it is missing and
    /// applies every pending migration, each in a transaction; it refuses a database that a
    /// newer release migrated. Safe to run again and from several processes at once.
    ///
    /// --check changes nothing and tells a deploy pipeline, by its exit status, whether this
    /// release needs a schema change (3), is up to date (0), or meets a database a newer
    /// release migrated (4), as a rollback pipeline must see before deploying an older image.
    ///
    /// --down VERSION reverts, newest first and each in its own transaction, every applied
    /// migration newer than VERSION (0: all of them), with the down scripts of this release:
    /// run it with the release that applied the migrations, before deploying the older one.
    #[command(after_help = migrate::AFTER_HELP, after_long_help = migrate::after_long_help())]
    Migrate(migrate::MigrateArgs),
    /// Declare exchanges, queues, delay tiers and dead-letter queues; print what exists.
    Topology,
    /// Consume work queues and run their jobs.
    Worker(worker::WorkerArgs),
    /// Leader-elected scheduler: publishes each due renewal once per period.
    Scheduler(scheduler::SchedulerArgs),
    /// List what is due now and why, publishing nothing (dry run of the scanner).
    Due(due::DueArgs),
    /// Money to look at by hand: duplicate charges to refund, charges of unknown outcome.
    Billing(billing::BillingArgs),
    /// Serve the Pagar.me/Appmax simulator (scripted outcomes by card suffix).
    ProviderSim(provider_sim::ProviderSimArgs),
    /// Publish a job (or N copies) with publisher confirms, now or after a delay.
    ///
    /// It declares the namespace's topology first, as every role does (declaring is
    /// idempotent): a job published before any worker started waits in its queue instead of
    /// being lost. A task that no queue receives is refused, naming the task.
    Publish(publish::PublishArgs),
    /// HTTP API to publish jobs: `POST /v1/jobs/{task}` and `POST /v1/jobs` with a bearer
    /// token, answered once the broker confirmed (docs/ingest.md).
    Ingest(ingest::IngestArgs),
    /// Publish the transactional outbox (warren_outbox) as rows become due.
    Relay(relay::RelayArgs),
    /// Measure the worker runtime against a bare lapin consumer.
    Bench(bench::BenchArgs),
    /// Measure the scheduler's due scan on a seeded throwaway database.
    BenchDue(bench_due::BenchDueArgs),
    /// The whole fleet in one process against local services: migrate, topology, a worker
    /// on every queue and the scheduler.
    Dev(dev::DevArgs),
    /// Demo data: `warren demo seed` creates customers, cards and subscriptions wired to the
    /// provider simulator's card suffixes.
    Demo(demo::DemoArgs),
    /// Write the JSON Schema of every built-in task's payload (`<task>.json`), or check the
    /// files against the types with --check.
    Schemas(schemas::SchemasArgs),
    /// Dead letters: list, show, replay or purge them, mirrored into PostgreSQL
    /// (`dead_letters`); see docs/dlq.md.
    Dlq(dlq::DlqArgs),
    /// One screen: queue depths, scheduler leader, due renewals, last cron ticks.
    Status(status::StatusArgs),
    /// Print a generated reference as Markdown (docs/configuration.md, docs/metrics.md).
    #[command(hide = true)]
    Reference(reference::ReferenceArgs),
}

/// Runs the command; its exit status is 0 unless it says otherwise (`migrate --check`).
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let g = cli.global;
    let done = match cli.command {
        Command::Migrate(a) => return migrate::run(&g, a).await,
        Command::Topology => topology::run(&g).await,
        Command::Worker(a) => worker::run(&g, a).await,
        Command::Scheduler(a) => scheduler::run(&g, a).await,
        Command::Due(a) => due::run(&g, a).await,
        Command::ProviderSim(a) => provider_sim::run(&g, a).await,
        Command::Publish(a) => publish::run(&g, a).await,
        Command::Ingest(a) => ingest::run(&g, a).await,
        Command::Relay(a) => relay::run(&g, a).await,
        Command::Bench(a) => bench::run(&g, a).await,
        Command::BenchDue(a) => bench_due::run(&g, a).await,
        Command::Dev(a) => dev::run(&g, a).await,
        Command::Demo(a) => demo::run(&g, a).await,
        Command::Schemas(a) => schemas::run(a),
        Command::Dlq(a) => dlq::run(&g, a).await,
        Command::Billing(a) => billing::run(&g, a).await,
        Command::Status(a) => status::run(&g, a).await,
        Command::Reference(a) => reference::run(a),
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

impl Global {
    /// The namespace's topology, from the built-ins, the registered tasks' queues and the
    /// config file.
    pub fn topology(&self) -> anyhow::Result<Topology> {
        let file = FileConfig::load(self.config.as_deref())?;
        Ok(Topology::with_tasks(
            &self.namespace,
            &file,
            &self.tasks.routes(),
        )?)
    }

    /// A connect-on-demand publisher into this namespace's topology (scheduler, relay).
    pub fn shared_broker(
        &self,
        role: &'static str,
        health: &warren_core::telemetry::Health,
    ) -> anyhow::Result<warren_producer::broker::SharedBroker> {
        Ok(warren_producer::broker::SharedBroker::new(
            self.amqp_url.clone(),
            role,
            self.topology()?,
            health.clone(),
        ))
    }

    pub async fn connect(&self, role: &str) -> anyhow::Result<lapin::Connection> {
        warren_core::broker::connect(&self.amqp_url, role)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to RabbitMQ at {} (is it running? see README, Troubleshooting)",
                    config::redact_url(&self.amqp_url)
                )
            })
    }
}

/// Cancels the token on the first SIGTERM/SIGINT; exits at once on the second.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("signal received: shutting down gracefully (signal again to exit now)");
        t.cancel();
        wait_signal().await;
        tracing::warn!("second signal: exiting now; unacked jobs return to their queues");
        std::process::exit(130);
    });
    token
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
