//! The `warren scheduler` loop: win leadership, then scan on every interval.
//!
//! Standbys try for the lock every `leader_retry`; the leader checks its lock connection
//! every second and steps down the moment it is gone. The broker connection is opened only
//! by the leader, only when a pass publishes (`Broker`), and reopened after a failure.

use crate::due::{self, DueKind, ProviderFlags};
use crate::leader::{lock_key, Leadership};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_core::telemetry::{names, Health};
use warren_producer::Producer;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub amqp_url: String,
    pub database_url: String,
    /// Namespace: names the jobs exchange and scopes the leader lock.
    pub namespace: String,
    pub jobs_exchange: String,
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

/// Runs until `shutdown`.
pub async fn run(cfg: SchedulerConfig, pool: PgPool, health: Health, shutdown: CancellationToken) {
    let key = lock_key(&cfg.namespace);
    let mut leadership: Option<Leadership> = None;
    let mut broker = Broker::new(&cfg.amqp_url, &cfg.jobs_exchange, "scheduler");
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
                    scan_all(&cfg, &pool, &mut broker).await;
                    next_scan = Instant::now() + cfg.scan_interval;
                }
                if !cfg.schedules.is_empty() {
                    run_cron(&cfg, &pool, &mut broker).await;
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
    broker.close().await;
}

async fn scan_all(cfg: &SchedulerConfig, pool: &PgPool, broker: &mut Broker) {
    for kind in DueKind::ALL {
        let flags = cfg.flags(kind);
        if !flags.enabled {
            continue;
        }
        let publishes = kind.task().is_some() && !flags.dry_run;
        let producer = if publishes {
            match broker.producer(kind.label()).await {
                Some(p) => Some(p),
                None => continue,
            }
        } else {
            None
        };
        let started = Instant::now();
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
                if matches!(e, due::ScanError::Publish(_)) {
                    broker.reset();
                }
            }
        }
    }
}

async fn run_cron(cfg: &SchedulerConfig, pool: &PgPool, broker: &mut Broker) {
    let Some(producer) = broker.producer("cron").await else {
        return;
    };
    if let Err(e) = crate::ticks::run_due(pool, producer, &cfg.schedules, chrono::Utc::now()).await
    {
        tracing::warn!(error = %e, "cron pass failed; retrying next pass");
        if matches!(e, crate::ticks::TickError::Publish(_)) {
            broker.reset();
        }
    }
}

/// A broker connection opened when a pass first needs to publish, dropped after a publish
/// failure so the next pass reconnects (the leader's scans and cron, and the outbox relay).
pub struct Broker {
    amqp_url: String,
    exchange: String,
    role: &'static str,
    open: Option<(lapin::Connection, Producer)>,
}

impl Broker {
    pub fn new(amqp_url: &str, exchange: &str, role: &'static str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            exchange: exchange.to_owned(),
            role,
            open: None,
        }
    }

    /// A producer, connecting first if needed; `None` (logged) while RabbitMQ is unreachable.
    pub async fn producer(&mut self, work: &str) -> Option<&Producer> {
        if self.open.is_none() {
            let opened = async {
                let conn = warren_core::broker::connect(&self.amqp_url, self.role).await?;
                let producer = Producer::new(&conn, self.exchange.clone()).await?;
                Ok::<_, warren_producer::PublishError>((conn, producer))
            };
            match opened.await {
                Ok(b) => self.open = Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, work, "cannot reach RabbitMQ; postponed to the next pass");
                    return None;
                }
            }
        }
        self.open.as_ref().map(|(_, p)| p)
    }

    /// Drops the connection; the next [`producer`](Self::producer) reconnects.
    pub fn reset(&mut self) {
        self.open = None;
    }

    pub async fn close(self) {
        if let Some((conn, _)) = self.open {
            let _ = conn
                .close(200, format!("{} stopping", self.role).as_str().into())
                .await;
        }
    }
}
