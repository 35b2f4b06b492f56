//! The [`Task`] trait: one struct and one `async fn` per job kind.

use crate::{RetryPolicy, TaskError};
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

/// What a handler knows about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub job_id: String,
    pub task: String,
    /// Work queue short name.
    pub queue: String,
    /// 1 on the first attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    pub tenant: Option<String>,
    /// The worker's PostgreSQL pool, for handlers that write their own effects.
    pub db: PgPool,
}

/// A job kind. `NAME` is the routing key; `Payload` is the JSON body's type (a body that does
/// not decode into it is dead-lettered `malformed` with the JSON path of the error).
///
/// `QUEUE` is the work queue the task's jobs go to, `default` unless overridden: a worker or
/// `warren topology` that has the task registered declares that queue (if it is new) and
/// binds `NAME` to it, so a new task needs no config-file entry. A `[queues.NAME] bindings`
/// entry in the config file that receives the task still wins over it.
pub trait Task: Send + Sync + 'static {
    const NAME: &'static str;
    /// Short name of the work queue receiving this task's jobs.
    const QUEUE: &'static str = "default";
    type Payload: DeserializeOwned + Send + 'static;

    fn run(
        &self,
        payload: Self::Payload,
        ctx: &JobContext,
    ) -> impl Future<Output = Result<(), TaskError>> + Send;

    /// Five attempts through every delay tier unless overridden.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Longest a single attempt may run; beyond it the attempt fails as `timeout`
    /// (retryable). Keep it well below the broker's consumer timeout (30 min).
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}
