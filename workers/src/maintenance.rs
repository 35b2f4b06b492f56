//! Built-in cron tasks, routed to the `cron` queue (`cron.#`). Schedule them in the config
//! file, e.g.
//!
//! ```toml
//! [[cron]]
//! name = "fail-stale-payments"
//! cron = "*/15 * * * *"
//! task = "cron.fail-stale-payments"
//! payload = { max_age = "2h" }
//!
//! [[cron]]
//! name = "prune-job-runs"
//! cron = "30 3 * * *"
//! timezone = "America/Sao_Paulo"
//! task = "cron.prune-job-runs"
//! payload = { older_than = "30d" }
//! ```

use crate::{JobContext, Registry, ResultExt, Task, TaskError};
use serde::Deserialize;
use std::time::Duration;

/// Payload of `cron.prune-job-runs`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// Finished `job_runs` rows and cron tick records older than this are deleted ("30d").
    #[serde(default = "default_older_than")]
    pub older_than: String,
}

fn default_older_than() -> String {
    "30d".into()
}

pub(crate) fn age(field: &str, value: &str) -> Result<Duration, TaskError> {
    humantime::parse_duration(value)
        .map_err(|e| TaskError::Permanent(format!("{field}: {value:?} is not a duration: {e}")))
}

/// `cron.prune-job-runs`: deletes finished ledger rows and cron tick records older than
/// `older_than`, keeping each schedule's latest tick (the scheduler resumes from it).
pub struct PruneJobRuns;

impl Task for PruneJobRuns {
    const NAME: &'static str = "cron.prune-job-runs";
    const QUEUE: &'static str = "cron";
    type Payload = Prune;
    async fn run(&self, p: Prune, ctx: &JobContext) -> Result<(), TaskError> {
        let older = age("older_than", &p.older_than)?.as_secs_f64();
        let runs = sqlx::query(
            "DELETE FROM job_runs
              WHERE status IN ('succeeded', 'dead_lettered')
                AND updated_at < now() - make_interval(secs => $1)",
        )
        .bind(older)
        .execute(&ctx.db)
        .await
        .retryable()?
        .rows_affected();
        let ticks = sqlx::query(
            "DELETE FROM cron_ticks t
              WHERE t.recorded_at < now() - make_interval(secs => $1)
                AND t.tick < (SELECT max(tick) FROM cron_ticks l WHERE l.schedule = t.schedule)",
        )
        .bind(older)
        .execute(&ctx.db)
        .await
        .retryable()?
        .rows_affected();
        tracing::info!(job_runs = runs, cron_ticks = ticks, older_than = %p.older_than, "pruned");
        Ok(())
    }
}

/// Registers the built-in cron tasks that need nothing but the database
/// (`cron.fail-stale-payments` needs the providers: see [`crate::renewals::register`]).
pub fn register(r: &mut Registry) -> Result<(), crate::DuplicateTask> {
    r.register(PruneJobRuns)?;
    Ok(())
}
