//! The `warren scheduler` loop: win leadership, then scan on every interval.
//!
//! Standbys try for the lock every `leader_retry`; the leader checks its lock connection
//! every second and steps down the moment it is gone. The broker connection is opened only
//! by the leader, only when a pass publishes ([`SharedBroker`]), and reopened after a failure.

use crate::due::{self, DueKind, ProviderFlags};
use crate::leader::{lock_key, Leadership};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_core::telemetry::{names, Health};
use warren_producer::broker::SharedBroker;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub database_url: String,
    /// Namespace: scopes the leader lock.
    pub namespace: String,
    pub scan_interval: Duration,
    /// Subscriptions per page (and per enqueue transaction).
    pub page_size: i64,
    pub pagarme: ProviderFlags,
    pub appmax: ProviderFlags,
    /// How often a standby tries to become leader.
    pub leader_retry: Duration,
    /// Cron schedules, checked on every pass (about once a second).
    pub schedules: Vec<crate::cron::Schedule>,
}

impl SchedulerConfig {
    fn flags(&self, kind: DueKind) -> ProviderFlags {
        match kind.provider() {
            "appmax" => self.appmax,
            _ => self.pagarme,
        }
    }
}

/// Runs until `shutdown`, publishing through `broker` (shared with the outbox relay).
pub async fn run(
    cfg: SchedulerConfig,
    pool: PgPool,
    broker: &SharedBroker,
    health: Health,
    shutdown: CancellationToken,
) {
    let key = lock_key(&cfg.namespace);
    let mut leadership: Option<Leadership> = None;
    let mut next_scan = Instant::now();
    metrics::gauge!(names::SCHEDULER_IS_LEADER).set(0.0);
    loop {
        let pause = match leadership.as_mut() {
            None => match Leadership::try_acquire(&cfg.database_url, key).await {
                Ok(Some(l)) => {
                    health.set("database", true);
                    tracing::info!("became scheduler leader");
                    metrics::gauge!(names::SCHEDULER_IS_LEADER).set(1.0);
                    leadership = Some(l);
                    next_scan = Instant::now();
                    Duration::ZERO
                }
                Ok(None) => {
                    health.set("database", true);
                    cfg.leader_retry
                }
                Err(e) => {
                    health.set("database", false);
                    tracing::warn!(error = %e, "cannot reach PostgreSQL for leader election");
                    cfg.leader_retry
                }
            },
            Some(l) => {
                if !l.still_held().await {
                    tracing::warn!("lost the leader lock connection; stepping down");
                    metrics::gauge!(names::SCHEDULER_IS_LEADER).set(0.0);
                    health.set("database", false);
                    leadership = None;
                    continue;
                }
                if Instant::now() >= next_scan {
                    scan_all(&cfg, &pool, broker).await;
                    next_scan = Instant::now() + cfg.scan_interval;
                }
                if !cfg.schedules.is_empty() {
                    run_cron(&cfg, &pool, broker).await;
                }
                next_scan
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if let Some(l) = leadership {
        l.release().await;
        tracing::info!("released scheduler leadership");
    }
    metrics::gauge!(names::SCHEDULER_IS_LEADER).set(0.0);
}

async fn scan_all(cfg: &SchedulerConfig, pool: &PgPool, broker: &SharedBroker) {
    for kind in DueKind::ALL {
        let flags = cfg.flags(kind);
        if !flags.enabled {
            continue;
        }
        let publishes = kind.task().is_some() && !flags.dry_run;
        let link = if publishes {
            match broker.link().await {
                Ok(link) => Some(link),
                Err(e) => {
                    tracing::debug!(error = %e, provider = kind.label(), "scan postponed");
                    continue;
                }
            }
        } else {
            None
        };
        let started = Instant::now();
        let producer = link.as_ref().map(|l| &l.producer);
        let result = due::scan(pool, producer, kind, cfg.page_size).await;
        metrics::histogram!(names::SCHEDULER_SCAN_DURATION, "provider" => kind.label())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => {
                metrics::gauge!(names::SCHEDULER_DUE, "provider" => kind.label()).set(r.due as f64);
                metrics::counter!(names::SCHEDULER_PUBLISHED, "provider" => kind.label())
                    .increment(r.published);
                let mode = match (kind.task(), flags.dry_run) {
                    (None, _) => "observe",
                    (Some(_), true) => "dry-run",
                    (Some(_), false) => "publish",
                };
                tracing::info!(provider = kind.label(), mode, due = r.due, published = r.published,
                    elapsed = ?started.elapsed(), "due scan");
            }
            Err(e) => {
                tracing::warn!(error = %e, provider = kind.label(), "due scan failed; retrying next interval");
                if let (due::ScanError::Publish(_), Some(link)) = (&e, &link) {
                    broker.reset(link.generation).await;
                }
            }
        }
    }
}

async fn run_cron(cfg: &SchedulerConfig, pool: &PgPool, broker: &SharedBroker) {
    let link = match broker.link().await {
        Ok(link) => link,
        Err(e) => {
            tracing::debug!(error = %e, "cron pass postponed");
            return;
        }
    };
    if let Err(e) =
        crate::ticks::run_due(pool, &link.producer, &cfg.schedules, chrono::Utc::now()).await
    {
        tracing::warn!(error = %e, "cron pass failed; retrying next pass");
        if matches!(e, crate::ticks::TickError::Publish(_)) {
            broker.reset(link.generation).await;
        }
    }
}
