//! Running one [`Task`] in a test: no broker, no worker process, and a database only if the
//! test brings one.
//!
//! [`run`] calls the handler the way a worker does once a job is admitted: under the task's
//! [`timeout`](Task::timeout), with a panic caught, and reports what the worker would act
//! on: `Ok(())` (succeeded) or the [`TaskError`] that decides between a retry, a snooze and
//! a dead letter. A timeout and a panic come back as [`TaskError::Retryable`] with the same
//! text the worker records (`attempt timed out after …`, `handler panicked: …`).
//! [`decode`] turns a JSON body into the task's payload with the worker's own decoder, so a
//! test can also show which bodies are dead-lettered `malformed`.
//!
//! The [`JobContext`] comes from [`context`], a builder whose defaults are those of a first
//! attempt: a fresh job id, attempt 1 of the task's `max_attempts`, the task's queue, no
//! tenant and no idempotency key. Without [`ContextBuilder::db`], `ctx.db` is a pool that
//! never connects (every query fails at once), so a handler that touches PostgreSQL needs a
//! real pool.
//!
//! ```
//! use warren_workers::testing;
//! use warren_workers::{JobContext, Task, TaskError};
//!
//! struct Greet;
//! impl Task for Greet {
//!     const NAME: &'static str = "greet.send";
//!     type Payload = String;
//!     async fn run(&self, name: String, ctx: &JobContext) -> Result<(), TaskError> {
//!         if ctx.attempt > 1 {
//!             return Err(TaskError::Permanent(format!("{name} was greeted already")));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! testing::run(&Greet, "Ana".into()).await.unwrap();
//! let ctx = testing::context(&Greet).attempt(2).tenant("acme").build();
//! let e = testing::run_with(&Greet, "Ana".into(), &ctx).await.unwrap_err();
//! assert!(matches!(e, TaskError::Permanent(_)));
//! assert!(testing::decode::<Greet>(b"42").is_err());
//! # });
//! ```

use crate::{JobContext, Task, TaskError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::time::Duration;

/// Runs `task` once on `payload` with a first-attempt context ([`context`] with its
/// defaults).
pub async fn run<T: Task>(task: &T, payload: T::Payload) -> Result<(), TaskError> {
    run_with(task, payload, &context(task).build()).await
}

/// Runs `task` once on `payload` with `ctx`, under the task's timeout, catching a panic.
pub async fn run_with<T: Task>(
    task: &T,
    payload: T::Payload,
    ctx: &JobContext,
) -> Result<(), TaskError> {
    match crate::execute::guarded(task.run(payload, ctx), task.timeout()).await {
        Ok(()) => Ok(()),
        Err(crate::execute::Failure::Task(e)) => Err(e),
        Err(other) => Err(TaskError::Retryable(other.describe())),
    }
}

/// Decodes a job body into `T`'s payload as the worker does; the error is the message a
/// `malformed` dead letter would carry (`payload at $.field: …`).
pub fn decode<T: Task>(body: &[u8]) -> Result<T::Payload, String> {
    crate::registry::decode::<T::Payload>(body).map_err(|m| m.0)
}

/// A context builder for `task`, with the defaults of a first attempt.
pub fn context<T: Task>(task: &T) -> ContextBuilder {
    ContextBuilder {
        job_id: uuid::Uuid::now_v7().to_string(),
        task: T::NAME.to_owned(),
        queue: T::QUEUE.to_owned(),
        attempt: 1,
        max_attempts: task.retry_policy().max_attempts,
        idempotency_key: None,
        tenant: None,
        db: None,
    }
}

/// Builds the [`JobContext`] a handler sees; start from [`context`].
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    job_id: String,
    task: String,
    queue: String,
    attempt: u32,
    max_attempts: u32,
    idempotency_key: Option<String>,
    tenant: Option<String>,
    db: Option<PgPool>,
}

impl ContextBuilder {
    /// The job id (default: a fresh UUIDv7, like the publishers').
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        self.job_id = id.into();
        self
    }

    /// The attempt, 1 for the first (default 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The job's attempt budget (default: the task's `retry_policy().max_attempts`).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The job's idempotency key (default none).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The job's tenant (default none).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The work queue the job came from (default: the task's `QUEUE`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// The pool `ctx.db` hands the handler (default: one that never connects).
    pub fn db(mut self, pool: PgPool) -> Self {
        self.db = Some(pool);
        self
    }

    pub fn build(self) -> JobContext {
        JobContext {
            job_id: self.job_id,
            task: self.task,
            queue: self.queue,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            idempotency_key: self.idempotency_key,
            tenant: self.tenant,
            db: self.db.unwrap_or_else(no_database),
        }
    }
}

/// A pool whose every acquire fails at once: port 1 of the loopback address refuses.
fn no_database() -> PgPool {
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(1)
        .database("no-database-given-to-the-test-context");
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetryPolicy;

    struct Flaky;

    impl Task for Flaky {
        const NAME: &'static str = "test.flaky";
        const QUEUE: &'static str = "tests";
        type Payload = String;
        async fn run(&self, mode: String, ctx: &JobContext) -> Result<(), TaskError> {
            match mode.as_str() {
                "panic" => panic!("asked to"),
                "hang" => std::future::pending().await,
                "db" => sqlx::query("SELECT 1")
                    .execute(&ctx.db)
                    .await
                    .map(drop)
                    .map_err(|e| TaskError::Retryable(e.to_string())),
                "whoami" => Err(TaskError::Permanent(format!(
                    "{} {} {}/{} {:?} {:?} {}",
                    ctx.task,
                    ctx.queue,
                    ctx.attempt,
                    ctx.max_attempts,
                    ctx.tenant,
                    ctx.idempotency_key,
                    ctx.job_id
                ))),
                _ => Ok(()),
            }
        }
        fn retry_policy(&self) -> RetryPolicy {
            RetryPolicy {
                max_attempts: 3,
                ..Default::default()
            }
        }
        fn timeout(&self) -> Duration {
            Duration::from_millis(50)
        }
    }

    #[tokio::test]
    async fn runs_like_the_worker_would() {
        assert_eq!(run(&Flaky, "ok".into()).await, Ok(()));
        let e = run(&Flaky, "panic".into()).await.unwrap_err();
        assert_eq!(e, TaskError::Retryable("handler panicked: asked to".into()));
        let e = run(&Flaky, "hang".into()).await.unwrap_err();
        assert_eq!(
            e,
            TaskError::Retryable("attempt timed out after 50ms".into())
        );
        let e = run(&Flaky, "db".into()).await.unwrap_err();
        assert!(matches!(e, TaskError::Retryable(_)), "{e:?}");
    }

    #[tokio::test]
    async fn context_defaults_and_overrides() {
        let e = run(&Flaky, "whoami".into()).await.unwrap_err().to_string();
        assert!(e.starts_with("test.flaky tests 1/3 None None "), "{e}");
        let ctx = context(&Flaky)
            .attempt(2)
            .max_attempts(9)
            .tenant("acme")
            .idempotency_key("k1")
            .job_id("j1")
            .queue("elsewhere")
            .build();
        let e = run_with(&Flaky, "whoami".into(), &ctx).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"test.flaky elsewhere 2/9 Some("acme") Some("k1") j1"#
        );
    }

    #[test]
    fn decodes_like_the_worker() {
        assert_eq!(decode::<Flaky>(br#""x""#).unwrap(), "x");
        assert!(decode::<Flaky>(b"{")
            .unwrap_err()
            .starts_with("body is not valid JSON"));
    }
}
