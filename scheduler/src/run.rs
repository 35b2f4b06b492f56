//! The `warren scheduler` loop: win leadership, then scan on every interval.
//!
//! Standbys try for the lock every `leader_retry`; the leader renews its lease (a round trip
//! on the lock's session, see [`crate::leader`]) at least once a second and steps down the
//! moment that fails. Every pass takes its time from the database: the due cutoff and the
//! cron "now" are `clock_timestamp()` read on the lease session at the start of the pass,
//! never this replica's clock, which is only compared with the database's
//! ([`names::SCHEDULER_CLOCK_SKEW`]). The broker connection is opened only by the leader,
//! only when a pass publishes ([`SharedBroker`]), and reopened after a failure.

use crate::due::{self, DueKind, ProviderFlags};
use crate::leader::{lock_key, DbClock, Leadership, LeaseConfig};
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
    /// The leader's lease and the timeouts of its session.
    pub lease: LeaseConfig,
    /// A replica whose clock differs from the database's by more than this says so.
    pub max_clock_skew: Duration,
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

/// Reports this replica's clock against the database's: a gauge always, a warning (at most
/// once a minute) while it is off by more than the bound.
struct SkewWatch {
    max: Duration,
    warned_at: Option<Instant>,
}

impl SkewWatch {
    fn observe(&mut self, clock: &DbClock) {
        let skew = clock.skew_seconds;
        metrics::gauge!(names::SCHEDULER_CLOCK_SKEW).set(skew);
        if skew.abs() > self.max.as_secs_f64() {
            if self
                .warned_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                tracing::warn!(skew_s = skew, db_now = %clock.now, max_s = self.max.as_secs_f64(),
                    "this replica's clock differs from the database's; the scheduler uses the \
                     database's clock");
                self.warned_at = Some(Instant::now());
            }
        } else if self.warned_at.take().is_some() {
            tracing::info!(
                skew_s = skew,
                "this replica's clock agrees with the database's again"
            );
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
    let mut skew = SkewWatch {
        max: cfg.max_clock_skew,
        warned_at: None,
    };
    let mut next_scan = Instant::now();
    metrics::gauge!(names::SCHEDULER_IS_LEADER).set(0.0);
    loop {
        let pause = match leadership.as_mut() {
            None => match Leadership::try_acquire(&cfg.database_url, key, &cfg.lease).await {
                Ok((won, clock)) => {
                    health.set("database", true);
                    skew.observe(&clock);
                    if let Some(l) = won {
                        tracing::info!(lease = ?cfg.lease.lease, "became scheduler leader");
                        metrics::gauge!(names::SCHEDULER_IS_LEADER).set(1.0);
                        leadership = Some(l);
                        next_scan = Instant::now();
                        Duration::ZERO
                    } else {
                        cfg.leader_retry
                    }
                }
                Err(e) => {
                    health.set("database", false);
                    tracing::warn!(error = %e, "cannot reach PostgreSQL for leader election");
                    cfg.leader_retry
                }
            },
            Some(l) => match leader_pass(&cfg, &pool, broker, l, &mut skew, &mut next_scan).await {
                Ok(()) => next_scan
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1)),
                Err(e) => {
                    tracing::warn!(error = %e, "lost the scheduler lease; stepping down");
                    metrics::gauge!(names::SCHEDULER_IS_LEADER).set(0.0);
                    if let Some(l) = leadership.take() {
                        l.release().await;
                    }
                    continue;
                }
            },
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

/// One pass of the leader: renew, scan when due, run cron. `Err`: leadership is lost.
async fn leader_pass(
    cfg: &SchedulerConfig,
    pool: &PgPool,
    broker: &SharedBroker,
    lease: &mut Leadership,
    skew: &mut SkewWatch,
    next_scan: &mut Instant,
) -> Result<(), crate::leader::LeaseError> {
    let clock = lease.renew().await?;
    skew.observe(&clock);
    if Instant::now() >= *next_scan {
        scan_all(cfg, pool, broker, lease, clock).await?;
        *next_scan = Instant::now() + cfg.scan_interval;
    }
    if !cfg.schedules.is_empty() {
        // The scans may have taken a while: cron reads the clock afresh.
        let clock = lease.renew().await?;
        run_cron(cfg, pool, broker, lease, clock).await?;
    }
    Ok(())
}

async fn scan_all(
    cfg: &SchedulerConfig,
    pool: &PgPool,
    broker: &SharedBroker,
    lease: &mut Leadership,
    clock: DbClock,
) -> Result<(), crate::leader::LeaseError> {
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
        let result = due::scan_leased(pool, lease, producer, kind, cfg.page_size, clock.now).await;
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
                    cutoff = %clock.now, elapsed = ?started.elapsed(), "due scan");
            }
            Err(crate::PassError::Lease(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, provider = kind.label(), "due scan failed; retrying next interval");
                if let (crate::PassError::Publish(_), Some(link)) = (&e, &link) {
                    broker.reset(link.generation).await;
                }
            }
        }
    }
    Ok(())
}

async fn run_cron(
    cfg: &SchedulerConfig,
    pool: &PgPool,
    broker: &SharedBroker,
    lease: &mut Leadership,
    clock: DbClock,
) -> Result<(), crate::leader::LeaseError> {
    let link = match broker.link().await {
        Ok(link) => link,
        Err(e) => {
            tracing::debug!(error = %e, "cron pass postponed");
            return Ok(());
        }
    };
    match crate::ticks::run_due(pool, lease, &link.producer, &cfg.schedules, clock.now).await {
        Ok(_) => Ok(()),
        Err(crate::PassError::Lease(e)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "cron pass failed; retrying next pass");
            if matches!(e, crate::PassError::Publish(_)) {
                broker.reset(link.generation).await;
            }
            Ok(())
        }
    }
}
