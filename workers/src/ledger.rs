//! The job ledger (`job_runs`), written by group commit.
//!
//! A delivery touches the ledger up to three times:
//! - **check** before the handler runs: a job id whose row is `succeeded` is a duplicate
//!   (acked, not run). This is a read.
//! - **mark running** only if the handler is still running after [`MARK_RUNNING_AFTER`]:
//!   the row becomes `running` and `attempts` grows by one. Short jobs skip this write, so
//!   a fast job costs one ledger row write instead of two.
//! - **finish**: `succeeded`, `failed` (a retry was published) or `dead_lettered`, with the
//!   error; an attempt not yet counted by a mark is counted here. Acks wait for it.
//!
//! One writer task owns the database side. Callers queue their ops and wait; the writer takes
//! everything queued (up to `max_batch`) and runs it as **one statement** (finishes, marks
//! and checks as `unnest` arrays in a CTE), so a batch costs one round trip and one commit.
//! Under load the batches grow by themselves.
//!
//! Each writer keeps one connection out of the pool for as long as it works: the statement
//! is prepared once per connection and planned once (a generic plan), and no liveness ping
//! precedes each batch, as it would on every pool checkout. The plan's only choice is how to
//! find the checked ids; the connection runs with `enable_seqscan = off` so that it is always
//! the primary key, even for a plan made while the table was small and cheap to scan.
//!
//! When PostgreSQL fails, the writer drops its connection, keeps the batch and retries with
//! capped backoff on a new one, marking the `database` health check down. Callers simply
//! wait: no ack, no nack, so a database outage holds at most `prefetch` deliveries per queue
//! and burns no delivery limits. Work resumes on its own when PostgreSQL returns.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::HashSet;
use std::sync::Arc;
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

/// Result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Run it.
    Run,
    /// The job already succeeded: ack as duplicate, do not run.
    AlreadySucceeded,
}

/// A handler still running after this long is marked `running` in the ledger.
pub const MARK_RUNNING_AFTER: Duration = Duration::from_millis(200);

/// The outcome of one delivery, for [`Ledger::finish`].
#[derive(Debug, Clone)]
pub struct Finish {
    pub status: Status,
    pub error: Option<String>,
    /// Attempts to add: 1 when a handler ran and no mark counted it yet, else 0.
    pub attempt_delta: i32,
    /// When the handler started (or the delivery was judged, if nothing ran).
    pub started_at: DateTime<Utc>,
}

/// The ledger writer has stopped (the worker is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the job ledger writer has stopped")]
pub struct LedgerClosed;

enum Op {
    Check(Arc<JobKey>, oneshot::Sender<Check>),
    Mark(Arc<JobKey>, oneshot::Sender<()>),
    Finish(Arc<JobKey>, Finish, oneshot::Sender<()>),
}

impl Op {
    fn job_id(&self) -> &str {
        match self {
            Op::Check(k, _) | Op::Mark(k, _) | Op::Finish(k, ..) => &k.job_id,
        }
    }
}

/// Handle to the ledger writer; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Op>,
}

impl Ledger {
    /// Starts `writers` writer tasks sharing one queue; they stop when every handle is
    /// dropped. Several writers keep PostgreSQL busy while one batch commits. A job never
    /// has two ops queued at once (check, then mark, then finish, each awaited), so
    /// writers cannot reorder one job's ops.
    pub fn start(pool: PgPool, health: Health, max_batch: usize, writers: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(
                pool.clone(),
                health.clone(),
                rx.clone(),
                max_batch.max(1),
            ));
        }
        Self { tx }
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, LedgerClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(op(tx)).await.map_err(|_| LedgerClosed)?;
        rx.await.map_err(|_| LedgerClosed)
    }

    pub async fn check(&self, key: Arc<JobKey>) -> Result<Check, LedgerClosed> {
        self.call(|tx| Op::Check(key, tx)).await
    }

    pub async fn mark_running(&self, key: Arc<JobKey>) -> Result<(), LedgerClosed> {
        self.call(|tx| Op::Mark(key, tx)).await
    }

    pub async fn finish(&self, key: Arc<JobKey>, finish: Finish) -> Result<(), LedgerClosed> {
        self.call(|tx| Op::Finish(key, finish, tx)).await
    }
}

const IDLE_PROBE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Batch {
    checks: Vec<(Arc<JobKey>, oneshot::Sender<Check>)>,
    marks: Vec<(Arc<JobKey>, oneshot::Sender<()>)>,
    finishes: Vec<(Arc<JobKey>, Finish, oneshot::Sender<()>)>,
}

/// A writer's connection, taken from the pool on first use and kept until it fails.
struct Conn {
    pool: PgPool,
    held: Option<PoolConnection<Postgres>>,
}

impl Conn {
    async fn get(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.held.is_none() {
            let mut c = self.pool.acquire().await?;
            for set in [
                "SET plan_cache_mode = force_generic_plan",
                "SET enable_seqscan = off",
            ] {
                sqlx::query(set).persistent(false).execute(&mut *c).await?;
            }
            self.held = Some(c);
        }
        Ok(self.held.as_mut().expect("just set"))
    }

    /// Forgets a connection that failed (or whose session state is in doubt): it is closed
    /// rather than returned to the pool, and the next use takes a new one.
    fn discard(&mut self) {
        if let Some(c) = self.held.take() {
            drop(c.detach());
        }
    }
}

async fn writer(
    pool: PgPool,
    health: Health,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Op>>>,
    max_batch: usize,
) {
    let mut conn = Conn { pool, held: None };
    let mut carry: Vec<Op> = Vec::new();
    let mut buf: Vec<Op> = Vec::with_capacity(max_batch);
    loop {
        if carry.is_empty() {
            let received = tokio::time::timeout(IDLE_PROBE, async {
                rx.lock().await.recv_many(&mut buf, max_batch).await
            })
            .await;
            match received {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => {
                    // Idle: keep the database health check honest.
                    let up = match conn.get().await {
                        Ok(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
                        Err(_) => false,
                    };
                    if !up {
                        conn.discard();
                    }
                    health.set("database", up);
                    continue;
                }
            }
        } else {
            buf.append(&mut carry);
            if let Ok(mut rx) = rx.try_lock() {
                while buf.len() < max_batch {
                    match rx.try_recv() {
                        Ok(op) => buf.push(op),
                        Err(_) => break,
                    }
                }
            }
        }
        // One op per job id per statement (a row cannot change twice in one statement):
        // a second op for the same id waits for the next batch, keeping their order.
        let later: Vec<bool> = {
            let mut seen = HashSet::with_capacity(buf.len());
            buf.iter().map(|op| !seen.insert(op.job_id())).collect()
        };
        let mut batch = Batch::default();
        for (op, later) in buf.drain(..).zip(later) {
            if later {
                carry.push(op);
                continue;
            }
            match op {
                Op::Check(k, tx) => batch.checks.push((k, tx)),
                Op::Mark(k, tx) => batch.marks.push((k, tx)),
                Op::Finish(k, f, tx) => batch.finishes.push((k, f, tx)),
            }
        }
        let writes = batch.marks.len() + batch.finishes.len();
        metrics::histogram!(names::LEDGER_BATCH_SIZE).record(writes as f64);

        let mut backoff = Duration::from_millis(100);
        let succeeded = loop {
            let written = match conn.get().await {
                Ok(c) => write(c, &batch).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(ids) => break ids,
                Err(e) => {
                    conn.discard();
                    health.set("database", false);
                    metrics::counter!(names::LEDGER_ERRORS).increment(1);
                    let hint = match &e {
                        sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => {
                            " (table missing: run `warren migrate`)"
                        }
                        _ => "",
                    };
                    tracing::warn!(error = %e, retry_in = ?backoff,
                        "job ledger write failed{hint}; holding deliveries until PostgreSQL answers");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        health.set("database", true);
        for (_, _, tx) in batch.finishes {
            let _ = tx.send(());
        }
        for (_, tx) in batch.marks {
            let _ = tx.send(());
        }
        for (k, tx) in batch.checks {
            let c = if succeeded.contains(&k.job_id) {
                Check::AlreadySucceeded
            } else {
                Check::Run
            };
            let _ = tx.send(c);
        }
    }
}

/// Runs a whole batch as one statement; returns the checked job ids that already succeeded.
async fn write(conn: &mut PgConnection, b: &Batch) -> Result<HashSet<String>, sqlx::Error> {
    let f = &b.finishes;
    let ids: Vec<&str> = f.iter().map(|x| x.0.job_id.as_str()).collect();
    let tasks: Vec<&str> = f.iter().map(|x| x.0.task.as_str()).collect();
    let queues: Vec<&str> = f.iter().map(|x| x.0.queue.as_str()).collect();
    let statuses: Vec<&str> = f.iter().map(|x| x.1.status.as_str()).collect();
    let errors: Vec<Option<&str>> = f.iter().map(|x| x.1.error.as_deref()).collect();
    let deltas: Vec<i32> = f.iter().map(|x| x.1.attempt_delta).collect();
    let starts: Vec<DateTime<Utc>> = f.iter().map(|x| x.1.started_at).collect();
    let mark_ids: Vec<&str> = b.marks.iter().map(|x| x.0.job_id.as_str()).collect();
    let mark_tasks: Vec<&str> = b.marks.iter().map(|x| x.0.task.as_str()).collect();
    let mark_queues: Vec<&str> = b.marks.iter().map(|x| x.0.queue.as_str()).collect();
    let check_ids: Vec<&str> = b.checks.iter().map(|x| x.0.job_id.as_str()).collect();
    let rows: Vec<(String,)> = sqlx::query_as(
        "WITH fin AS (
           INSERT INTO job_runs AS j
                  (job_id, task, queue, status, attempts, last_error, started_at, finished_at)
           SELECT id, task, queue, status::job_status, delta, err, started, now()
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int4[], $7::timestamptz[])
                  AS u(id, task, queue, status, err, delta, started)
           ON CONFLICT (job_id) DO UPDATE
              SET status = EXCLUDED.status,
                  attempts = j.attempts + EXCLUDED.attempts,
                  last_error = COALESCE(EXCLUDED.last_error, j.last_error),
                  started_at = CASE WHEN EXCLUDED.attempts > 0 THEN EXCLUDED.started_at
                                    ELSE j.started_at END,
                  finished_at = now(), updated_at = now()
            WHERE j.status <> 'succeeded'
         ), mark AS (
           INSERT INTO job_runs AS j (job_id, task, queue, status, attempts)
           SELECT id, task, queue, 'running', 1
             FROM unnest($8::text[], $9::text[], $10::text[]) AS u(id, task, queue)
           ON CONFLICT (job_id) DO UPDATE
              SET status = 'running', attempts = j.attempts + 1, queue = EXCLUDED.queue,
                  started_at = now(), finished_at = NULL, updated_at = now()
            WHERE j.status <> 'succeeded'
         )
         SELECT job_id FROM job_runs WHERE job_id = ANY($11::text[]) AND status = 'succeeded'",
    )
    .bind(&ids)
    .bind(&tasks)
    .bind(&queues)
    .bind(&statuses)
    .bind(&errors)
    .bind(&deltas)
    .bind(&starts)
    .bind(&mark_ids)
    .bind(&mark_tasks)
    .bind(&mark_queues)
    .bind(&check_ids)
    // Prepared and planned once per connection (see the module docs).
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
