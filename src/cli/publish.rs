//! `warren publish`: publish a job (or N copies) and wait for the broker's confirms.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use super::Global;
use anyhow::{bail, Context};
use clap::Args;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use warren_core::telemetry::Health;
use warren_core::{limits, outbox};
use warren_producer::{PublishOptions, RepublishPolicy};

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Task name, which is the routing key (e.g. demo.noop, renewal.pagarme).
    pub task: String,
    /// Give `-` to read the payload from standard input.
    #[arg(value_name = "-", value_parser = clap::builder::PossibleValuesParser::new(["-"]),
          conflicts_with_all = ["payload", "payload_file"])]
    pub stdin: Option<String>,
    /// The payload as JSON text (default `{}`).
    #[arg(long, env = "WARREN_PAYLOAD", conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the JSON payload from this file.
    #[arg(long, env = "WARREN_PAYLOAD_FILE")]
    pub payload_file: Option<PathBuf>,
    /// Job id (message_id); a UUIDv7 when absent. A job id that already succeeded is not
    /// run again.
    #[arg(long, env = "WARREN_JOB_ID")]
    pub id: Option<String>,
    /// Sent as x-idempotency-key; handlers forward it to providers.
    #[arg(long, env = "WARREN_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Sent as x-tenant.
    #[arg(long, env = "WARREN_TENANT")]
    pub tenant: Option<String>,
    /// Overrides the task's attempt budget (x-max-attempts).
    #[arg(long, env = "WARREN_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Publish N copies with distinct job ids (smoke tests, benchmarks); shows progress.
    #[arg(long, env = "WARREN_PUBLISH_COUNT", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// With --count: write the job ids to this file, one per line, before publishing, so a
    /// run that fails half-way can be sent again under the same ids (--ids-from); a worker
    /// runs each id once.
    #[arg(long, env = "WARREN_PUBLISH_IDS_OUT", conflicts_with = "ids_from")]
    pub ids_out: Option<PathBuf>,
    /// Publish one copy per job id in this file (one per line, as --ids-out writes them):
    /// sends a failed run again; ids that already succeeded are acked as duplicates.
    #[arg(long, env = "WARREN_PUBLISH_IDS_FROM", conflicts_with_all = ["id", "count"])]
    pub ids_from: Option<PathBuf>,
    /// Run no sooner than this from now ("3s", "2h"). Up to the longest delay tier (1h by
    /// default) the job waits in that tier on the broker; longer delays are written to the
    /// outbox (warren_outbox.run_at, in PostgreSQL) and published when due by a relay
    /// (`warren relay`, or inside `warren scheduler` / `warren dev`).
    #[arg(long, env = "WARREN_DELAY", value_parser = humantime::parse_duration,
          conflicts_with = "run_at")]
    pub delay: Option<Duration>,
    /// Run no sooner than this instant (RFC 3339, e.g. 2026-12-01T09:00:00Z); as --delay.
    #[arg(long, env = "WARREN_RUN_AT")]
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Keep trying this long after RabbitMQ became unreachable or the connection dropped
    /// (counted from the loss, not from the start): jobs not yet confirmed are published
    /// again with the same ids; confirmed ones never are.
    #[arg(long, env = "WARREN_PUBLISH_RETRY_FOR", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
}

/// The flag (or argument) that carries a field of [`warren_core::limits`].
fn flag(field: &str) -> &str {
    match field {
        "task" => "TASK",
        "id" => "--id",
        "idempotency_key" => "--idempotency-key",
        "tenant" => "--tenant",
        other => other,
    }
}

/// Refuses values outside `warren_core::limits` before connecting: a clear error naming the
/// flag, never a panic or a retry.
fn check_limits(a: &PublishArgs) -> anyhow::Result<()> {
    let opts = PublishOptions {
        id: a.id.clone(),
        idempotency_key: a.idempotency_key.clone(),
        tenant: a.tenant.clone(),
        max_attempts: a.max_attempts,
        delay: None,
    };
    if let Err(e) = opts.check(&a.task) {
        let field = e.field().to_owned();
        let msg = e.to_string().replacen(&field, flag(&field), 1);
        bail!("{msg}");
    }
    Ok(())
}

pub async fn run(g: &Global, a: PublishArgs) -> anyhow::Result<()> {
    if a.id.is_some() && a.count > 1 {
        bail!("--id names one job; with --count the ids are generated (drop --id)");
    }
    check_limits(&a)?;
    let (source, text) = if a.stdin.is_some() {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the payload from standard input")?;
        ("standard input", s)
    } else if let Some(path) = &a.payload_file {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("--payload-file {}: cannot read", path.display()))?;
        ("--payload-file", s)
    } else {
        (
            "--payload",
            a.payload.clone().unwrap_or_else(|| "{}".into()),
        )
    };
    warren_core::limits::check_body(source, text.as_bytes())?;
    let payload: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))?;
    let body = serde_json::to_vec(&payload)?;
    if body.len() > g.max_body {
        bail!(
            "{source} is {} bytes; the body limit is {} (WARREN_MAX_BODY / --max-body)",
            body.len(),
            g.max_body
        );
    }

    let topology = g.topology()?;
    let delay = match (a.delay, a.run_at) {
        (Some(d), _) => Some(d),
        (None, Some(at)) => Some((at - chrono::Utc::now()).to_std().unwrap_or_default()),
        (None, None) => None,
    };
    if let Some(d) = delay {
        let field = if a.delay.is_some() {
            "--delay"
        } else {
            "--run-at"
        };
        limits::check_delay(field, d)?;
    }
    let opts = PublishOptions {
        id: a.id.clone(),
        idempotency_key: a.idempotency_key.clone(),
        tenant: a.tenant.clone(),
        max_attempts: a.max_attempts,
        delay,
    };
    let longest = topology.longest_tier();
    if let Some(d) = delay.filter(|d| *d > longest) {
        return hold_in_outbox(g, &a, &opts, &payload, d, longest, &topology).await;
    }
    let policy = RepublishPolicy {
        deadline: a.retry_for,
        ..RepublishPolicy::default()
    };
    // Connects on demand and, on a lost connection, reconnects and republishes only the
    // unconfirmed jobs under their original ids (warren_producer::reliable).
    let broker = g.shared_broker("publish", &Health::new(&["broker"]))?;
    let what = || {
        format!(
            "publishing task {:?} to RabbitMQ at {}",
            a.task,
            warren_core::config::redact_url(&g.amqp_url)
        )
    };
    let ids = batch_ids(&a)?;
    if ids.is_none() && a.count == 1 {
        let id = broker
            .publish(&a.task, &payload, &opts, &policy)
            .await
            .with_context(what)?;
        println!("{id}");
    } else {
        let started = Instant::now();
        let mut last = Instant::now();
        let ids = ids.unwrap_or_default();
        let total = if ids.is_empty() {
            a.count
        } else {
            ids.len() as u64
        };
        let mut done = 0u64;
        let bodies = (0..total as usize).map(|i| {
            let mut o = opts.clone();
            o.id = ids.get(i).cloned();
            (body.clone(), o)
        });
        let report = broker
            .publish_many(&a.task, bodies, 512, &policy, |_| {
                done += 1;
                if last.elapsed().as_secs() >= 1 {
                    last = Instant::now();
                    let rate = done as f64 / started.elapsed().as_secs_f64();
                    eprintln!("published {done}/{total} ({rate:.0}/s)");
                }
            })
            .await
            .with_context(what)
            .with_context(|| match &a.ids_out {
                Some(path) => format!(
                    "the job ids are in {0}: `warren publish {1} --ids-from {0}` sends the batch                      again under the same ids (a worker runs each id once)",
                    path.display(),
                    a.task
                ),
                None => "pass --ids-out FILE to be able to send a batch again under the same                          ids"
                    .into(),
            })?;
        let secs = started.elapsed().as_secs_f64();
        if report.retries > 0 {
            eprintln!(
                "the connection was lost {} time(s); {} unconfirmed job(s) were published again \
                 with their original ids (a worker runs each id once)",
                report.retries,
                report.resent.len()
            );
        }
        eprintln!(
            "published {total} {} jobs in {secs:.2}s ({:.0}/s), all confirmed",
            a.task,
            total as f64 / secs
        );
        println!("{total}");
    }
    broker.close().await;
    Ok(())
}

/// The ids of a batch: read from --ids-from, or generated and written to --ids-out before
/// anything is published; `None` when neither is given.
fn batch_ids(a: &PublishArgs) -> anyhow::Result<Option<Vec<String>>> {
    if let Some(path) = &a.ids_from {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--ids-from: reading {}", path.display()))?;
        let ids: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            bail!("--ids-from: {} holds no job id", path.display());
        }
        return Ok(Some(ids));
    }
    let Some(path) = &a.ids_out else {
        return Ok(None);
    };
    let ids: Vec<String> = (0..a.count)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut text = ids.join("\n");
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("--ids-out: writing {}", path.display()))?;
    Ok(Some(ids))
}

/// A delay past the longest tier: one outbox row per copy, published when due by a relay.
async fn hold_in_outbox(
    g: &Global,
    a: &PublishArgs,
    opts: &PublishOptions,
    payload: &serde_json::Value,
    delay: Duration,
    longest: Duration,
    topology: &warren_core::topology::Topology,
) -> anyhow::Result<()> {
    if !topology.routes(&a.task) {
        bail!(
            "no queue receives task {:?}; check the task name or add a queue for it in the config file",
            a.task
        );
    }
    if a.ids_from.is_some() {
        bail!(
            "--ids-from sends a failed run again, and a delay past the longest tier ({}) holds              jobs in the outbox, where the ids already held keep their place; publish without              --ids-from, or with a shorter --delay",
            humantime::format_duration(longest)
        );
    }
    let run_at = chrono::Utc::now() + chrono::Duration::from_std(delay)?;
    let pool = warren_core::db::lazy_pool(&g.database_url, 1)?;
    let mut tx = pool
        .begin()
        .await
        .context("connecting to PostgreSQL to hold the delayed job in the outbox")?;
    let mut ids = Vec::new();
    let job = opts.held_until(run_at);
    let given = batch_ids(a)?;
    let n = given.as_ref().map_or(a.count as usize, Vec::len);
    for i in 0..n {
        let mut job = job.clone();
        if let Some(given) = &given {
            job.id = Some(given[i].clone());
        }
        ids.push(
            outbox::insert(&mut *tx, &a.task, payload, &job)
                .await
                .context("writing to warren_outbox (has `warren migrate` run?)")?,
        );
    }
    tx.commit().await?;
    eprintln!(
        "held {} job(s) in the outbox until {} (the delay is longer than the longest tier, {}); \
         a relay publishes them then",
        ids.len(),
        run_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        humantime::format_duration(longest)
    );
    if ids.len() == 1 {
        println!("{}", ids[0]);
    } else {
        println!("{}", ids.len());
    }
    Ok(())
}
