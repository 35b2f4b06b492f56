//! `warren status`: one screen of the fleet: queue depths, the scheduler leader, what is
//! due per provider and the last cron ticks.

use super::scheduler::ProviderArgs;
use super::{Format, Global};
use anyhow::Context;
use clap::Args;
use serde::Serialize;
use std::time::Duration;
use warren_core::config::FileConfig;
use warren_producer::depths::{self, Management, QueueDepth};
use warren_scheduler::due::{self, DueKind};
use warren_scheduler::leader::{self, LeaderSession};
use warren_scheduler::ticks::{self, LastTick};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Redraw every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
    /// RabbitMQ management API, for unacked counts (credentials default to AMQP_URL's).
    /// Set it to an empty string to skip the API.
    #[arg(
        long,
        env = "WARREN_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// Output format.
    #[arg(long, env = "WARREN_STATUS_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub providers: ProviderArgs,
}

#[derive(Serialize)]
struct Due {
    provider: &'static str,
    due: i64,
    action: &'static str,
}

#[derive(Serialize)]
struct Status {
    namespace: String,
    at: chrono::DateTime<chrono::Utc>,
    queues: Vec<QueueDepth>,
    /// Why `unacked` is unknown, when it is.
    unacked_unavailable: Option<String>,
    leader: Option<LeaderSession>,
    due: Vec<Due>,
    cron: Vec<LastTick>,
}

pub async fn run(g: &Global, a: StatusArgs) -> anyhow::Result<()> {
    let topology = g.topology()?;
    let file = FileConfig::load(g.config.as_deref())?;
    let (pagarme, appmax) = a.providers.resolve(&file);
    let pool = warren_core::db::lazy_pool(&g.database_url, 2)?;
    let management =
        (!a.management_url.is_empty()).then(|| Management::new(&a.management_url, &g.amqp_url));
    let conn = g.connect("status").await?;
    loop {
        let (queues, unacked_unavailable) =
            depths::depths(&conn, &topology, management.as_ref()).await?;
        let now = chrono::Utc::now();
        let mut due = Vec::new();
        for kind in DueKind::ALL {
            let flags = if kind.provider() == "appmax" {
                appmax
            } else {
                pagarme
            };
            due.push(Due {
                provider: kind.label(),
                due: due::count_due(&pool, kind, now)
                    .await
                    .context("counting due subscriptions (has `warren migrate` run?)")?,
                action: super::due::action(kind, flags),
            });
        }
        let status = Status {
            namespace: g.namespace.clone(),
            at: now,
            queues,
            unacked_unavailable,
            leader: leader::current(&pool, &g.namespace).await?,
            due,
            cron: ticks::last_ticks(&pool).await?,
        };
        if a.watch.is_some() {
            // Clear the screen and go home, as `watch` does.
            print!("\x1b[2J\x1b[H");
        }
        match a.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            Format::Table => print_table(&status, management.as_ref()),
        }
        let Some(secs) = a.watch else { break };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

fn print_table(s: &Status, management: Option<&Management>) {
    println!(
        "warren status  namespace {}  {}",
        s.namespace,
        s.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    println!();
    println!(
        "{:<24} {:>8} {:>8} {:>10} {:>8}",
        "QUEUE", "READY", "UNACKED", "CONSUMERS", "DLQ"
    );
    for q in &s.queues {
        let unacked = q.unacked.map_or_else(|| "-".to_owned(), |u| u.to_string());
        println!(
            "{:<24} {:>8} {:>8} {:>10} {:>8}",
            q.queue, q.ready, unacked, q.consumers, q.dlq
        );
    }
    if let Some(why) = &s.unacked_unavailable {
        let hint = match management {
            Some(_) => "enable the rabbitmq_management plugin or point WARREN_MANAGEMENT_URL / --management-url at it",
            None => "set WARREN_MANAGEMENT_URL / --management-url to the management API",
        };
        println!("unacked: unknown ({why}); {hint}");
    }
    println!();
    match &s.leader {
        Some(l) => println!(
            "scheduler leader: pid {} from {} ({}), leading since about {}",
            l.pid,
            l.client_addr.as_deref().unwrap_or("local socket"),
            l.application_name,
            l.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => println!(
            "scheduler leader: none (no `warren scheduler` holds the lock for this namespace)"
        ),
    }
    println!();
    println!("{:<16} {:>8}  ACTION", "DUE", "COUNT");
    for d in &s.due {
        println!("{:<16} {:>8}  {}", d.provider, d.due, d.action);
    }
    println!();
    if s.cron.is_empty() {
        println!("cron: no ticks recorded yet");
    } else {
        println!(
            "{:<28} {:<21} {:<10} JOB",
            "CRON SCHEDULE", "LAST TICK", "TICK"
        );
        for t in &s.cron {
            println!(
                "{:<28} {:<21} {:<10} {}",
                t.schedule,
                t.tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                t.status,
                t.job_status.as_deref().unwrap_or("not run yet")
            );
        }
    }
}
