//! The transactional outbox relay: publishes the due rows of `warren_outbox` and marks them.
//!
//! An application enqueues a job by inserting a row in **its own** transaction (plain SQL,
//! any language; [`warren_core::outbox::insert`] for Rust code and handlers chaining
//! follow-up jobs). A relay
//! (`warren relay`, and inside `warren scheduler` and `warren dev`) then, per batch, in one
//! transaction: locks up to `batch` due rows with `FOR UPDATE SKIP LOCKED` (so any number of
//! relays share the work and never take the same row), publishes them with confirms and
//! `mandatory`, marks the confirmed ones `published_at`, and commits. A row rolled back by
//! its writer never existed; a relay that dies after the confirms but before the commit
//! leaves its rows unpublished, so they are published again with the same job id, which
//! the worker's ledger makes harmless (at least once, never lost).
//!
//! A row that cannot be published (no queue receives its task) gets `publish_attempts + 1`,
//! `last_error`, and a `run_at` pushed back exponentially (up to an hour): it stays visible
//! in the table and never blocks the rows behind it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use crate::PassError;
use futures::stream::{FuturesUnordered, StreamExt};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_core::telemetry::Health;
use warren_producer::broker::SharedBroker;
use warren_producer::{Producer, PublishError, PublishOptions};

/// Most retry backoff for a row that cannot be published.
const MAX_BACKOFF_SECS: f64 = 3600.0;

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    /// Rows locked (due and not taken by another relay).
    pub taken: usize,
    pub published: usize,
    /// Rows that could not be published and were pushed back.
    pub deferred: usize,
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    id: String,
    task: String,
    payload: String,
    idempotency_key: Option<String>,
    tenant: Option<String>,
    max_attempts: Option<i32>,
}

/// Publishes one batch of due rows (see the module docs). A broker failure is returned after
/// the rows confirmed so far are committed as published.
pub async fn relay_batch(
    pool: &PgPool,
    producer: &Producer,
    exchange: &str,
    batch: i64,
) -> Result<RelayReport, PassError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, id, task, payload::text AS payload, idempotency_key, tenant, max_attempts
           FROM warren_outbox
          WHERE published_at IS NULL AND run_at <= now()
          ORDER BY run_at, seq
          LIMIT $1
          FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut report = RelayReport {
        taken: rows.len(),
        ..Default::default()
    };
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(report);
    }
    let mut pending: FuturesUnordered<_> = rows
        .iter()
        .map(|r| async move {
            let opts = PublishOptions {
                id: Some(r.id.clone()),
                idempotency_key: r.idempotency_key.clone(),
                tenant: r.tenant.clone(),
                max_attempts: r.max_attempts.map(|m| m.max(1) as u32),
                delay: None,
            };
            // A row written by hand can hold anything: one outside the wire limits is
            // refused here, deferred with the reason like an unroutable one, and never
            // reaches the broker (where it could close the relay's connection).
            let outcome = match Producer::try_envelope(&opts) {
                Ok((_, props)) => {
                    producer
                        .publish_raw(exchange, &r.task, &r.task, r.payload.as_bytes(), props)
                        .await
                }
                Err(e) => Err(e),
            };
            (r.seq, outcome)
        })
        .collect();
    let (mut published, mut deferred, mut broker_error) = (Vec::new(), Vec::new(), None);
    while let Some((seq, outcome)) = pending.next().await {
        match outcome {
            Ok(()) => published.push(seq),
            Err(
                e @ (PublishError::Unroutable { .. }
                | PublishError::Encode(_)
                | PublishError::Invalid(_)),
            ) => deferred.push((seq, e.to_string())),
            Err(e) => broker_error = Some(e),
        }
    }
    drop(pending);
    sqlx::query("UPDATE warren_outbox SET published_at = now() WHERE seq = ANY($1)")
        .bind(&published)
        .execute(&mut *tx)
        .await?;
    for (seq, error) in &deferred {
        tracing::warn!(seq, error, "outbox row cannot be published; retrying later");
        sqlx::query(
            "UPDATE warren_outbox
                SET publish_attempts = publish_attempts + 1, last_error = $2,
                    run_at = now() + make_interval(secs => LEAST($3, power(2, publish_attempts)))
              WHERE seq = $1",
        )
        .bind(seq)
        .bind(error)
        .bind(MAX_BACKOFF_SECS)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    report.published = published.len();
    report.deferred = deferred.len();
    match broker_error {
        Some(e) => Err(e.into()),
        None => Ok(report),
    }
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per transaction.
    pub batch: i64,
    /// Pause between polls when nothing is due.
    pub interval: Duration,
}

/// Relays until `shutdown`, publishing through `broker` into its topology's jobs exchange:
/// whole batches back to back while rows are due, then a poll every `interval`.
pub async fn run_relay(
    cfg: RelayConfig,
    pool: PgPool,
    broker: &SharedBroker,
    health: Health,
    shutdown: CancellationToken,
) {
    let exchange = broker.topology().jobs_exchange();
    loop {
        let mut pause = cfg.interval;
        if let Ok(link) = broker.link().await {
            match relay_batch(&pool, &link.producer, &exchange, cfg.batch).await {
                Ok(r) => {
                    health.set("database", true);
                    if r.published > 0 || r.deferred > 0 {
                        tracing::debug!(
                            published = r.published,
                            deferred = r.deferred,
                            "outbox batch"
                        );
                    }
                    if r.taken as i64 >= cfg.batch {
                        pause = Duration::ZERO;
                    }
                }
                Err(PassError::Publish(e)) => {
                    tracing::warn!(error = %e, "outbox relay lost the broker; reconnecting");
                    broker.reset(link.generation).await;
                }
                // `relay_batch` holds no lease: anything else is the database's.
                Err(e) => {
                    health.set("database", false);
                    tracing::warn!(error = %e, "outbox relay cannot reach PostgreSQL; retrying");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
