//! The transactional outbox table `warren_outbox`, as the write side sees it: any program
//! enqueues a job by inserting a row in **its own** database transaction, so the job exists
//! exactly when the rest of that transaction commits. A relay (`warren relay`, and inside
//! `warren scheduler` / `warren dev`; `warren_scheduler::outbox`) publishes due rows.
//!
//! Columns an application writes (all but `task` optional): `task`, `payload` (jsonb, `{}`),
//! `id` (the job id; a random UUID by default), `idempotency_key`, `tenant`, `max_attempts`,
//! `run_at` (publish no sooner than this; now by default). Written by the relay:
//! `published_at`, `publish_attempts`, `last_error`. `created_at` is set on insert.
//!
//! A handler chains a follow-up job in the same transaction as its own writes:
//!
//! ```no_run
//! # async fn handler(db: &sqlx::PgPool) -> Result<(), sqlx::Error> {
//! use warren_core::outbox::{insert, OutboxJob};
//! let mut tx = db.begin().await?;
//! sqlx::query("UPDATE invoices SET status = 'sent' WHERE id = 42").execute(&mut *tx).await?;
//! insert(&mut *tx, "email.receipt", &serde_json::json!({ "invoice": 42 }), &OutboxJob {
//!     id: Some("receipt:42".into()), // deterministic: a retried handler enqueues it once
//!     ..Default::default()
//! })
//! .await?;
//! tx.commit().await?; // both writes, or neither
//! # Ok(()) }
//! ```
//!
//! A payload that knows its task ([`JobArgs`]) goes in with [`enqueue`]:
//! `enqueue(&mut *tx, &Welcome { .. }, &OutboxJob::default())`.

use crate::task::JobArgs;
use serde::Serialize;
use sqlx::PgExecutor;

/// What a job written to the outbox carries besides task and payload.
#[derive(Debug, Clone, Default)]
pub struct OutboxJob {
    /// Job id; a random UUID when absent.
    pub id: Option<String>,
    pub idempotency_key: Option<String>,
    pub tenant: Option<String>,
    pub max_attempts: Option<u32>,
    /// Publish no sooner than this; now when absent.
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Checks the strings a relay will publish as AMQP strings ([`crate::limits`]): the task
/// name, job id, idempotency key and tenant. [`insert`] does it first.
pub fn check(task: &str, job: &OutboxJob) -> Result<(), crate::limits::LimitError> {
    use crate::limits::check_short;
    check_short("task", task)?;
    for (field, value) in [
        ("id", &job.id),
        ("idempotency_key", &job.idempotency_key),
        ("tenant", &job.tenant),
    ] {
        if let Some(v) = value {
            check_short(field, v)?;
        }
    }
    Ok(())
}

/// Inserts a job into the outbox through `db` — pass your own transaction so the job exists
/// exactly when your other writes commit. Returns the job id. Values outside
/// [`crate::limits`] are refused (`sqlx::Error::Encode`) before anything is written.
pub async fn insert<'e, T: Serialize + ?Sized>(
    db: impl PgExecutor<'e>,
    task: &str,
    payload: &T,
    job: &OutboxJob,
) -> Result<String, sqlx::Error> {
    check(task, job).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let payload = serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query_scalar(
        "INSERT INTO warren_outbox (id, task, payload, idempotency_key, tenant, max_attempts, run_at)
         VALUES (COALESCE($1, gen_random_uuid()::text), $2, $3, $4, $5, $6, COALESCE($7, now()))
         RETURNING id",
    )
    .bind(&job.id)
    .bind(task)
    .bind(payload)
    .bind(&job.idempotency_key)
    .bind(&job.tenant)
    .bind(job.max_attempts.map(|m| m as i32))
    .bind(job.run_at)
    .fetch_one(db)
    .await
}

/// [`insert`] of a typed payload: the task is `A::TASK`.
pub async fn enqueue<'e, A: JobArgs>(
    db: impl PgExecutor<'e>,
    args: &A,
    job: &OutboxJob,
) -> Result<String, sqlx::Error> {
    insert(db, A::TASK, args, job).await
}
