//! Running cron schedules: record each (schedule, tick) once and publish its job.
//!
//! On every pass the leader asks each [`Schedule`] which ticks are due (from the last tick
//! recorded in `cron_ticks` and the catch-up policy) and, per tick, in one transaction:
//! inserts the tick (`ON CONFLICT DO NOTHING` on `(schedule, tick)`), publishes the job and
//! waits for the confirm, then commits. The job id is the UUIDv5 of the tick key and the
//! tick key is the idempotency key, so the crash window (confirm received, commit lost)
//! republishes the same job id, which the worker's ledger absorbs.
//!
//! **Fenced, on the database's clock.** The transaction runs on the leader's lease session
//! and proves the lease before publishing ([`crate::leader::Fence`]); `now` is the
//! database's `clock_timestamp()` read once per pass by the caller, so a replica with a wrong
//! clock neither publishes a tick early nor records one from its future.
//!
//! **Overlap.** With `overlap = "skip"`, a tick whose schedule's previous published job has
//! not finished (its `job_runs` row is not `succeeded` or `dead_lettered`) is recorded as
//! `skipped` and not published. A previous run older than [`STUCK_AFTER`] counts as finished,
//! so one lost job cannot silence a schedule forever.

use crate::cron::{Overlap, Schedule, ScheduleConfig, ScheduleError};
use crate::leader::Leadership;
use crate::PassError;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgPool};
use std::time::Duration;
use uuid::Uuid;
use warren_core::envelope::job_id_for_key;
use warren_core::telemetry::names;
use warren_producer::{Producer, PublishOptions};

/// A previous run unfinished for this long no longer blocks an `overlap = "skip"` schedule.
pub const STUCK_AFTER: Duration = Duration::from_secs(3600);

/// Parses the config file's `[[cron]]` tables.
pub fn schedules(raw: &[toml::Value]) -> Result<Vec<Schedule>, ScheduleError> {
    let mut configs = Vec::with_capacity(raw.len());
    for (i, v) in raw.iter().enumerate() {
        let name = v
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| i.to_string(), str::to_owned);
        let cfg: ScheduleConfig =
            v.clone()
                .try_into()
                .map_err(|e: toml::de::Error| ScheduleError {
                    schedule: name,
                    field: "*",
                    message: e.message().to_owned(),
                })?;
        configs.push(cfg);
    }
    crate::cron::parse_schedules(configs)
}

/// The latest recorded tick of one schedule, for `warren status`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct LastTick {
    pub schedule: String,
    pub tick: DateTime<Utc>,
    /// `published` or `skipped`.
    pub status: String,
    pub reason: Option<String>,
    pub recorded_at: DateTime<Utc>,
    /// The tick's job in the ledger (`None`: no worker has recorded it yet).
    pub job_status: Option<String>,
}

/// The latest tick of every schedule that has one.
pub async fn last_ticks(pool: &PgPool) -> Result<Vec<LastTick>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (t.schedule) t.schedule, t.tick, t.status, t.reason,
                t.recorded_at, j.status::text AS job_status
           FROM cron_ticks t LEFT JOIN job_runs j ON j.job_id = t.job_id::text
          ORDER BY t.schedule, t.tick DESC",
    )
    .fetch_all(pool)
    .await
}

/// Runs every due tick of every schedule at `now` (the database's clock), each in a
/// transaction fenced by `lease`; returns how many were published.
pub async fn run_due(
    pool: &PgPool,
    lease: &mut Leadership,
    producer: &Producer,
    schedules: &[Schedule],
    now: DateTime<Utc>,
) -> Result<u64, PassError> {
    let mut published = 0;
    for s in schedules {
        let last: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(tick) FROM cron_ticks WHERE schedule = $1")
                .bind(s.name())
                .fetch_one(pool)
                .await?;
        for tick in s.due_ticks(last, now) {
            if run_tick(pool, lease, producer, s, tick, now).await? {
                published += 1;
            }
        }
    }
    Ok(published)
}

async fn run_tick(
    pool: &PgPool,
    lease: &mut Leadership,
    producer: &Producer,
    s: &Schedule,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, PassError> {
    let key = s.tick_key(tick);
    let job_id = job_id_for_key(&key);
    let skip = match s.overlap() {
        Overlap::Allow => None,
        Overlap::Skip => previous_unfinished(pool, s.name(), now).await?,
    };
    let (conn, fence) = lease.parts();
    let mut tx = conn.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO cron_ticks (schedule, tick, job_id, status, reason)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(s.name())
    .bind(tick)
    .bind(job_id)
    .bind(if skip.is_some() {
        "skipped"
    } else {
        "published"
    })
    .bind(skip.as_deref())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        tx.rollback().await?;
        return Ok(false);
    }
    if let Some(reason) = skip {
        tx.commit().await?;
        tracing::info!(schedule = s.name(), %tick, %reason, "cron tick skipped (overlap = skip)");
        return Ok(false);
    }
    fence.prove(&mut tx).await?;
    let opts = PublishOptions {
        id: Some(job_id.to_string()),
        idempotency_key: Some(key),
        ..Default::default()
    };
    fence.check_local()?;
    producer.publish(s.task(), s.payload(), &opts).await?;
    tx.commit().await?;
    let lag = (now - tick).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::counter!(names::CRON_RUNS, "schedule" => s.name().to_owned()).increment(1);
    metrics::gauge!(names::CRON_TICK_LAG, "schedule" => s.name().to_owned()).set(lag);
    tracing::info!(schedule = s.name(), %tick, %job_id, task = s.task(), lag_s = lag, "cron tick published");
    Ok(true)
}

/// Why the schedule's previous run blocks a new one, if it does.
async fn previous_unfinished(
    pool: &PgPool,
    schedule: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error> {
    let prev: Option<(DateTime<Utc>, Uuid, Option<String>)> = sqlx::query_as(
        "SELECT t.tick, t.job_id, j.status::text
           FROM cron_ticks t
           LEFT JOIN job_runs j ON j.job_id = t.job_id::text
          WHERE t.schedule = $1 AND t.status = 'published'
          ORDER BY t.tick DESC LIMIT 1",
    )
    .bind(schedule)
    .fetch_optional(pool)
    .await?;
    let Some((tick, job_id, status)) = prev else {
        return Ok(None);
    };
    let finished = matches!(status.as_deref(), Some("succeeded" | "dead_lettered"));
    let stuck = (now - tick).to_std().unwrap_or_default() > STUCK_AFTER;
    Ok((!finished && !stuck).then(|| {
        format!(
            "previous run {job_id} (tick {tick}) is {}",
            status.as_deref().unwrap_or("still queued")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_schedule() {
        let raw: toml::Value =
            toml::from_str("name = \"x\"\nevery = \"2s\"\ntask = \"cron.x\"\nbogus = 1").unwrap();
        let e = schedules(&[raw]).unwrap_err().to_string();
        assert!(e.starts_with("cron[x]"), "{e}");
        let ok: toml::Value =
            toml::from_str("name = \"t\"\nevery = \"2s\"\ntask = \"cron.t\"").unwrap();
        let s = schedules(&[ok]).unwrap();
        assert_eq!(s[0].name(), "t");
        let key = s[0].tick_key("2026-01-01T00:00:02Z".parse().unwrap());
        assert!(key.starts_with("cron:t:"), "{key}");
    }
}
