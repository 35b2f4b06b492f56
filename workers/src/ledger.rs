//! The job ledger (`job_runs`), written by group commit.
//!
//! Every delivery makes two ledger writes: a *claim* before the handler runs (row becomes
//! `running`, attempts + 1, unless it already `succeeded`: then the delivery is a
//! duplicate) and a *finish* after (`succeeded`, `failed` = retry scheduled, or
//! `dead_lettered`). Acks wait for the finish to commit.
//!
//! One writer task owns the database side. Callers queue their rows and wait; the writer
//! takes everything queued (up to `max_batch`), writes it as one `unnest` statement per kind
//! and wakes the callers. Under load the batches grow by themselves, so the ledger costs two
//! round trips per batch rather than per job.
//!
//! When PostgreSQL fails, the writer keeps the batch and retries with capped backoff,
//! marking the `database` health check down. Callers simply wait: no ack, no nack, so a
//! database outage holds at most `prefetch` deliveries per queue and burns no delivery
//! limits. Work resumes on its own when PostgreSQL returns.

use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use warren_core::telemetry::{names, Health};

/// Final states a finish can record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    /// The attempt failed and a retry was published.
    Failed,
    DeadLettered,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Identifies a job in the ledger.
#[derive(Debug, Clone)]
pub struct JobKey {
    pub job_id: String,
    pub task: String,
    pub queue: String,
}

/// Result of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Run it; this is the job's `attempts`-th execution.
    Run { attempts: i32 },
    /// The job already succeeded: ack as duplicate, do not run.
    AlreadySucceeded,
}

/// The ledger writer has stopped (the worker is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the job ledger writer has stopped")]
pub struct LedgerClosed;

enum Op {
    Claim(JobKey, oneshot::Sender<Claim>),
    Finish(JobKey, Status, Option<String>, oneshot::Sender<()>),
}

impl Op {
    fn job_id(&self) -> &str {
        match self {
            Op::Claim(k, _) | Op::Finish(k, ..) => &k.job_id,
        }
    }
}

/// Handle to the ledger writer; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Op>,
}

impl Ledger {
    /// Starts the writer task. It stops when every handle is dropped.
    pub fn start(pool: PgPool, health: Health, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(writer(pool, health, rx, max_batch.max(1)));
        Self { tx }
    }

    pub async fn claim(&self, key: JobKey) -> Result<Claim, LedgerClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Claim(key, tx))
            .await
            .map_err(|_| LedgerClosed)?;
        rx.await.map_err(|_| LedgerClosed)
    }

    pub async fn finish(
        &self,
        key: JobKey,
        status: Status,
        error: Option<String>,
    ) -> Result<(), LedgerClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Finish(key, status, error, tx))
            .await
            .map_err(|_| LedgerClosed)?;
        rx.await.map_err(|_| LedgerClosed)
    }
}

const IDLE_PROBE: Duration = Duration::from_secs(5);

async fn writer(pool: PgPool, health: Health, mut rx: mpsc::Receiver<Op>, max_batch: usize) {
    let mut carry: Vec<Op> = Vec::new();
    let mut buf: Vec<Op> = Vec::with_capacity(max_batch);
    loop {
        if carry.is_empty() {
            match tokio::time::timeout(IDLE_PROBE, rx.recv_many(&mut buf, max_batch)).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => {
                    // Idle: keep the database health check honest.
                    let up = sqlx::query("SELECT 1").execute(&pool).await.is_ok();
                    health.set("database", up);
                    continue;
                }
            }
        } else {
            buf.append(&mut carry);
            while buf.len() < max_batch {
                match rx.try_recv() {
                    Ok(op) => buf.push(op),
                    Err(_) => break,
                }
            }
        }
        // One row per job id per statement: a second op for the same id waits a batch.
        let mut seen = HashSet::new();
        let mut claims = Vec::new();
        let mut finishes = Vec::new();
        for op in buf.drain(..) {
            if !seen.insert(op.job_id().to_owned()) {
                carry.push(op);
                continue;
            }
            match op {
                Op::Claim(k, tx) => claims.push((k, tx)),
                Op::Finish(k, s, e, tx) => finishes.push((k, s, e, tx)),
            }
        }
        metrics::histogram!(names::LEDGER_BATCH_SIZE)
            .record((claims.len() + finishes.len()) as f64);

        let mut backoff = Duration::from_millis(100);
        let claimed = loop {
            match write(&pool, &claims, &finishes).await {
                Ok(claimed) => break claimed,
                Err(e) => {
                    health.set("database", false);
                    metrics::counter!(names::LEDGER_ERRORS).increment(1);
                    tracing::warn!(error = %e, retry_in = ?backoff,
                        "job ledger write failed; holding deliveries until PostgreSQL answers");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        health.set("database", true);
        for (_, _, _, tx) in finishes {
            let _ = tx.send(());
        }
        let claimed: HashMap<String, i32> = claimed.into_iter().collect();
        for (k, tx) in claims {
            let c = match claimed.get(&k.job_id) {
                Some(&attempts) => Claim::Run { attempts },
                None => Claim::AlreadySucceeded,
            };
            let _ = tx.send(c);
        }
    }
}

type Finish = (JobKey, Status, Option<String>, oneshot::Sender<()>);

/// Finishes first, so a duplicate claimed in the same batch as the original's success sees
/// it. Returns the (job_id, attempts) of the claims that may run.
async fn write(
    pool: &PgPool,
    claims: &[(JobKey, oneshot::Sender<Claim>)],
    finishes: &[Finish],
) -> Result<Vec<(String, i32)>, sqlx::Error> {
    if !finishes.is_empty() {
        let ids: Vec<&str> = finishes.iter().map(|f| f.0.job_id.as_str()).collect();
        let tasks: Vec<&str> = finishes.iter().map(|f| f.0.task.as_str()).collect();
        let queues: Vec<&str> = finishes.iter().map(|f| f.0.queue.as_str()).collect();
        let statuses: Vec<&str> = finishes.iter().map(|f| f.1.as_str()).collect();
        let errors: Vec<Option<&str>> = finishes.iter().map(|f| f.2.as_deref()).collect();
        sqlx::query(
            "INSERT INTO job_runs AS j (job_id, task, queue, status, last_error, finished_at)
             SELECT id, task, queue, status::job_status, err, now()
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                    AS u(id, task, queue, status, err)
             ON CONFLICT (job_id) DO UPDATE
                SET status = EXCLUDED.status,
                    last_error = COALESCE(EXCLUDED.last_error, j.last_error),
                    finished_at = now(), updated_at = now()
              WHERE j.status <> 'succeeded'",
        )
        .bind(&ids)
        .bind(&tasks)
        .bind(&queues)
        .bind(&statuses)
        .bind(&errors)
        .execute(pool)
        .await?;
    }
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = claims.iter().map(|c| c.0.job_id.as_str()).collect();
    let tasks: Vec<&str> = claims.iter().map(|c| c.0.task.as_str()).collect();
    let queues: Vec<&str> = claims.iter().map(|c| c.0.queue.as_str()).collect();
    sqlx::query_as(
        "INSERT INTO job_runs AS j (job_id, task, queue, status)
         SELECT id, task, queue, 'running' FROM unnest($1::text[], $2::text[], $3::text[])
                AS u(id, task, queue)
         ON CONFLICT (job_id) DO UPDATE
            SET status = 'running', attempts = j.attempts + 1, queue = EXCLUDED.queue,
                started_at = now(), finished_at = NULL, updated_at = now()
          WHERE j.status <> 'succeeded'
         RETURNING job_id, attempts",
    )
    .bind(&ids)
    .bind(&tasks)
    .bind(&queues)
    .fetch_all(pool)
    .await
}
