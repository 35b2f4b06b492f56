//! `warren dlq`: list, show, replay and purge dead letters (warren_producer::dlq does the
//! work; docs/dlq.md).

use super::{Format, Global};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Write};
use std::time::Instant;
use warren_producer::dlq::{Dlq, DlqError, Filter, Outcome, Progress, ReplayOptions, Row, Synced};

#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
    /// Most messages held per dead-letter queue while syncing (memory bound); a bigger
    /// queue is synced in part, and the output says so.
    #[arg(long, env = "WARREN_DLQ_MAX_SCAN", default_value_t = 100_000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_scan: u64,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Sync the dead-letter queues into the mirror, then count and list what is in them.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Include rows no longer in a queue (replayed, purged, gone), with their state.
        #[arg(long)]
        all: bool,
        /// Read the mirror only, without draining the queues first.
        #[arg(long)]
        no_sync: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One dead letter: headers, error and payload.
    Show {
        /// The id `warren dlq list` prints.
        id: i64,
        /// Read the mirror only, without draining its queue first.
        #[arg(long)]
        no_sync: bool,
    },
    /// Republish dead letters to the work exchange with a fresh attempt counter; each is
    /// removed from its DLQ only after the broker confirmed the republish.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// List what would be replayed; republish and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Most messages republished per second ("50" or "50/s").
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// Most dead letters replayed (oldest first).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Delete dead letters from their DLQs (the mirror keeps them as `purged`).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct FilterArgs {
    /// Only this work queue's DLQ (short name: default, renewals.pagarme, ...).
    #[arg(long)]
    pub queue: Option<String>,
    /// Only this kind: permanent, exhausted, malformed, unknown-task, timeout,
    /// delivery-limit (Warren's), or rejected, expired, maxlen (RabbitMQ's).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this task (routing key), e.g. renewal.pagarme.
    #[arg(long)]
    pub task: Option<String>,
    /// Only dead letters since: a duration ago ("2h", "3d") or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate; give messages per second, e.g. 50 or 50/s"
        )),
    }
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        let since = match &self.since {
            None => None,
            Some(s) => Some(match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) => t.with_timezone(&chrono::Utc),
                Err(_) => {
                    let d = humantime::parse_duration(s).map_err(|_| {
                        anyhow::anyhow!(
                            "--since {s:?}: give a duration ago (\"2h\", \"3d\") or an RFC 3339 time"
                        )
                    })?;
                    chrono::Utc::now() - chrono::Duration::from_std(d)?
                }
            }),
        };
        Ok(Filter {
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            task: self.task.clone(),
            since,
        })
    }
}

/// Names the flag behind a value the library refused.
fn as_flags(e: DlqError) -> anyhow::Error {
    match e {
        DlqError::UnknownKind { .. } => anyhow::anyhow!("--kind {e}"),
        e => e.into(),
    }
}

pub async fn run(g: &Global, a: DlqArgs) -> anyhow::Result<()> {
    if let DlqCommand::Purge { yes: false, .. } = &a.command {
        bail!("purge deletes dead letters for good: add --yes to confirm (`warren dlq list` first shows what the filters match)");
    }
    let pool = warren_core::db::lazy_pool(&g.database_url, 2)?;
    let conn = g.connect("dlq").await?;
    let dlq = Dlq::new(
        g.topology()?,
        pool,
        conn,
        usize::try_from(a.max_scan).unwrap_or(usize::MAX),
    );
    match a.command {
        DlqCommand::List {
            filter,
            all,
            no_sync,
            format,
        } => {
            let (synced, rows) = dlq
                .list(&filter.filter()?, all, !no_sync)
                .await
                .map_err(as_flags)?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "synced": synced, "dead_letters": rows
                    }))?
                ),
                Format::Table => {
                    print_synced(&synced);
                    print_counts(&rows);
                    print_rows(&rows, all);
                }
            }
        }
        DlqCommand::Show { id, no_sync } => {
            let d = dlq.show(id, !no_sync).await?;
            let r = &d.row;
            println!("id:          {}", r.id);
            println!("state:       {}", r.state);
            println!(
                "queue:       {} ({})",
                r.queue,
                dlq.topology().dlq_name(&r.queue)
            );
            println!("job id:      {}", r.message_id.as_deref().unwrap_or("-"));
            println!("task:        {}", r.task.as_deref().unwrap_or("-"));
            println!("source:      {}", r.source);
            println!("kind:        {}", r.kind);
            println!("attempts:    {}", r.attempts);
            println!("failed at:   {}", r.failed_at.to_rfc3339());
            println!("copies:      {}", r.copies);
            for (label, t) in [
                ("replayed at", r.replayed_at),
                ("purged at", r.purged_at),
                ("gone at", d.gone_at),
            ] {
                if let Some(t) = t {
                    println!("{label}: {}", t.to_rfc3339());
                }
            }
            println!("error:\n  {}", r.error.replace('\n', "\n  "));
            println!("headers:\n{}", serde_json::to_string_pretty(&d.headers)?);
            match &d.payload_json {
                Some(p) => println!("payload:\n{}", serde_json::to_string_pretty(p)?),
                None => println!(
                    "payload ({} bytes, not JSON):\n{}",
                    d.payload.len(),
                    String::from_utf8_lossy(&d.payload)
                ),
            }
        }
        DlqCommand::Replay {
            filter,
            dry_run,
            rate,
            limit,
        } => {
            let opts = ReplayOptions {
                dry_run,
                rate,
                limit,
            };
            let mut bar = Bar::new("replayed");
            let out = dlq
                .replay(&filter.filter()?, &opts, |p| bar.show(p))
                .await
                .map_err(as_flags)
                .context("replaying")?;
            bar.finish();
            if dry_run {
                print_rows(&out.chosen, false);
                println!(
                    "dry run: {} dead letter(s) would be replayed; nothing was republished or removed",
                    out.chosen.len()
                );
            } else {
                report(&out, "replayed to the work exchange");
            }
        }
        DlqCommand::Purge { filter, .. } => {
            let mut bar = Bar::new("purged");
            let out = dlq
                .purge(&filter.filter()?, |p| bar.show(p))
                .await
                .map_err(as_flags)
                .context("purging")?;
            bar.finish();
            report(&out, "purged");
        }
    }
    Ok(())
}

fn report(out: &Outcome, what: &str) {
    println!(
        "{} dead letter(s) ({} message(s)) {what}",
        out.done, out.messages
    );
    for (id, why) in &out.failed {
        println!("  {id}: left in its DLQ: {why}");
    }
    if out.not_reached > 0 {
        println!(
            "{} chosen dead letter(s) were beyond --max-scan in their queue and were not touched; run again",
            out.not_reached
        );
    }
}

fn print_synced(synced: &[Synced]) {
    for s in synced {
        if !s.complete {
            println!(
                "{}: synced in part ({} messages held, --max-scan reached); counts below cover what was seen",
                s.queue, s.messages
            );
        }
    }
}

fn print_counts(rows: &[Row]) {
    let mut counts: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for r in rows {
        *counts.entry((&r.queue, &r.kind)).or_default() += 1;
    }
    println!("{} dead letter(s)", rows.len());
    for ((q, k), n) in counts {
        println!("  {q:<20} {k:<15} {n}");
    }
}

fn print_rows(rows: &[Row], all: bool) {
    if rows.is_empty() {
        return;
    }
    println!();
    let state = if all { "STATE     " } else { "" };
    println!(
        "{:<8} {state}{:<20} {:<15} {:>8}  {:<24} ERROR",
        "ID", "TASK", "KIND", "ATTEMPTS", "FAILED AT"
    );
    for r in rows {
        let state = if all {
            format!("{:<10}", r.state)
        } else {
            String::new()
        };
        let error: String = r.error.replace('\n', " ").chars().take(100).collect();
        println!(
            "{:<8} {state}{:<20} {:<15} {:>8}  {:<24} {error}",
            r.id,
            r.task.as_deref().unwrap_or("-"),
            r.kind,
            r.attempts,
            r.failed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
    }
}

/// Progress on stderr: a redrawn bar on a terminal, a line every few seconds otherwise.
struct Bar {
    what: &'static str,
    tty: bool,
    started: Instant,
    last: Option<Instant>,
    drawn: bool,
}

impl Bar {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: Progress) {
        let rate = p.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut err = std::io::stderr();
        if self.tty {
            let width = 30;
            let filled = (p.done * width).checked_div(p.total).unwrap_or(width);
            let _ = write!(
                err,
                "\r[{}{}] {}/{} {} ({rate:.0}/s)",
                "#".repeat(filled),
                " ".repeat(width - filled),
                p.done,
                p.total,
                self.what
            );
            let _ = err.flush();
            self.drawn = true;
        } else if self.last.is_none_or(|l| l.elapsed().as_secs() >= 2) || p.done == p.total {
            self.last = Some(Instant::now());
            let _ = writeln!(err, "{} {}/{} ({rate:.0}/s)", self.what, p.done, p.total);
        }
    }

    fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}
