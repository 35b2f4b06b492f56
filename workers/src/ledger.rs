//! The job ledger (`job_runs`), written by group commit.
//!
//! A delivery touches the ledger up to three times:
//! - **check** before the handler runs: a job id whose row is `succeeded` is a duplicate
//!   (acked, not run). This is a read. It also says whether any row exists: a job with none
//!   (the common case) is finished by a plain `INSERT` instead of an upsert.
//! - **mark running** only if the handler is still running after [`MARK_RUNNING_AFTER`]:
//!   the row becomes `running` and `attempts` grows by one. Short jobs skip this write, so
//!   a fast job costs one ledger row write instead of two.
//! - **finish**: `succeeded`, `failed` (a retry was published) or `dead_lettered`, with the
//!   error; an attempt not yet counted by a mark is counted here. Acks wait for it.
//!
//! Writes and checks go to different tasks, each with its own connection, so that a check
//! never waits for a WAL flush it does not need: a read-only statement commits nothing.
//! Both tasks let the runtime's ready tasks go first before they send a batch
//! (`gather.rs`), since a statement costs PostgreSQL far more than a row (a check of
//! 27 ids ≈ 100 µs, of which ≈ 35 µs is the statement; measured on the benchmark machine).
//! - One **writer** task (or `writers`) takes every mark and finish queued (up to
//!   `max_batch`) and runs them as **one statement** (`unnest` arrays): one round
//!   trip and one durable commit per batch. Under load the batches grow by themselves.
//! - One **checker** task takes every check queued and answers them with one `SELECT`,
//!   meanwhile the writer's commit flushes. A job thus waits for one group commit (its
//!   finish) instead of two.
//!
//! A job never has two ops queued at once (check, then mark, then finish, each awaited), so
//! neither the split nor several writers can reorder one job's ops. The check reads only
//! committed rows, and a commit becomes visible to other sessions only once it is flushed.
//!
//! Each task keeps one connection out of the pool for as long as it works: the statement
//! is prepared once per connection and planned once (a generic plan), and no liveness ping
//! precedes each batch, as it would on every pool checkout. The plans' only choice is how to
//! find the ids; the connections run with `enable_seqscan = off` so that it is always the
//! primary key, even for a plan made while the table was small and cheap to scan.
//!
//! When PostgreSQL fails, a task drops its connection, keeps its batch and retries with
//! capped backoff on a new one; the `database` health check is down while any task is
//! failing. Callers simply wait: no ack, no nack, so a database outage holds at most
//! `prefetch` deliveries per queue and burns no delivery limits. Work resumes on its own
//! when PostgreSQL returns.
//!
//! A statement PostgreSQL refuses because of a job's own data (SQLSTATE class 22, a data
//! exception such as a NUL byte in text, or 54000, a value too large) is not an outage: the
//! connection is kept, the `database` check stays up, and the batch is rerun one op at a
//! time so that only the ops whose data is refused fail, each with [`LedgerError::Refused`].
//! The runtime checks what it records before it gets here ([`unstorable`]); this is the
//! second line of defence.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use crate::gather::{gather, take_ready};
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use warren_core::backoff::Backoff;
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
    /// Run it: the ledger has no row for this job yet (its first recorded attempt).
    New,
    /// Run it: an earlier attempt left a row (`failed`, `running` or `dead_lettered`).
    Again,
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
    /// The check found no row and nothing wrote one since (no running mark): the finish is a
    /// plain `INSERT`, which costs PostgreSQL about a third less than the upsert (no
    /// speculative insertion). Should another worker insert the same job id meanwhile (the
    /// same job published twice and run by two replicas at once), the batch fails on the
    /// primary key and is rerun at once as upserts, which is the answer it would have had.
    pub fresh: bool,
}

/// Why a ledger op did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The ledger's tasks have stopped (the worker is shutting down).
    #[error("the job ledger writer has stopped")]
    Closed,
    /// PostgreSQL refused this op's data (SQLSTATE class 22 or 54000): it never will take
    /// it, so waiting does not help. The text is PostgreSQL's error.
    #[error("PostgreSQL refused the job's data: {0}")]
    Refused(String),
}

/// Most bytes of a job id or task name (an AMQP short string holds 255).
pub const MAX_KEY_BYTES: usize = 255;

/// Why `s` cannot be a job id or task name in the ledger, if it cannot: PostgreSQL `text`
/// holds any UTF-8 (which a Rust string is) except the NUL character, and the runtime takes
/// at most [`MAX_KEY_BYTES`].
pub fn unstorable(s: &str) -> Option<String> {
    if let Some(at) = s.find('\0') {
        Some(format!("contains a NUL byte (at byte {at})"))
    } else if s.len() > MAX_KEY_BYTES {
        Some(format!(
            "is {} bytes long; the most is {MAX_KEY_BYTES}",
            s.len()
        ))
    } else {
        None
    }
}

/// The ledger id of a message whose own id cannot be stored: `malformed:` and the SHA-256
/// of the id's bytes in hex. The same bad id always maps to the same ledger id.
pub fn malformed_id(raw: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(raw.as_bytes());
    let mut out = String::with_capacity(10 + 64);
    out.push_str("malformed:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `s` with every character that is not printable ASCII escaped (`\u{0}`, `\u{e7}`) and cut
/// to [`MAX_KEY_BYTES`]: a task name the ledger (and any database encoding) can hold, for a
/// message whose own cannot be.
pub fn escaped_key(s: &str) -> String {
    ascii(s, MAX_KEY_BYTES)
}

/// `s` with every character that is not printable ASCII escaped, as [`escaped_key`] does
/// but at any length: text any database encoding takes.
pub fn ascii_text(s: &str) -> String {
    ascii(s, usize::MAX)
}

fn ascii(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let at = out.len();
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
        if out.len() > max {
            out.truncate(at);
            break;
        }
    }
    out
}

/// Text the runtime writes (an error) with NUL characters, which PostgreSQL text cannot
/// hold, escaped as `\0`.
pub fn clean_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\\0").into()
    } else {
        s.into()
    }
}

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

enum Op {
    Mark(Arc<JobKey>, Reply<()>),
    Finish(Arc<JobKey>, Finish, Reply<()>),
}

impl Op {
    fn job_id(&self) -> &str {
        match self {
            Op::Mark(k, _) | Op::Finish(k, ..) => &k.job_id,
        }
    }
}

type CheckOp = (Arc<JobKey>, Reply<Check>);

/// How much of its work the ledger does. Production is always [`Scope::Full`]; the others
/// exist only so that `warren bench --ledger` can show what each part of the ledger costs
/// (docs/benchmarks.md), and give up what the ledger is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Checks and writes: duplicates are detected and every outcome is recorded.
    #[default]
    Full,
    /// Writes only: every job counts as new, so a duplicate runs again.
    WritesOnly,
    /// Neither: nothing is recorded and no duplicate is detected.
    Off,
}

/// Handle to the ledger's tasks; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    writes: mpsc::Sender<Op>,
    checks: mpsc::Sender<CheckOp>,
    scope: Scope,
}

impl Ledger {
    /// Starts `writers` writer tasks sharing one queue and one checker task; they stop when
    /// every handle is dropped. Several writers keep PostgreSQL busy while one batch
    /// commits, but each batch is then smaller (see docs/benchmarks.md).
    pub fn start(pool: PgPool, health: Health, max_batch: usize, writers: usize) -> Self {
        let max_batch = max_batch.max(1);
        let writers = writers.max(1);
        let db = DbHealth {
            health,
            failing: Arc::new(Mutex::new(vec![false; writers + 1])),
        };
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for id in 0..writers {
            let task = Task::new(&pool, &db, id);
            tokio::spawn(writer(task, rx.clone(), max_batch));
        }
        let (checks, checks_rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(checker(
            Task::new(&pool, &db, writers),
            checks_rx,
            max_batch,
        ));
        Self {
            writes: tx,
            checks,
            scope: Scope::Full,
        }
    }

    /// The same ledger doing only part of its work (see [`Scope`]): for benchmarks.
    pub fn scoped(self, scope: Scope) -> Self {
        Self { scope, ..self }
    }

    pub async fn check(&self, key: Arc<JobKey>) -> Result<Check, LedgerError> {
        if self.scope != Scope::Full {
            return Ok(Check::New);
        }
        ask(&self.checks, |tx| (key, tx)).await
    }

    pub async fn mark_running(&self, key: Arc<JobKey>) -> Result<(), LedgerError> {
        if self.scope == Scope::Off {
            return Ok(());
        }
        ask(&self.writes, |tx| Op::Mark(key, tx)).await
    }

    pub async fn finish(&self, key: Arc<JobKey>, finish: Finish) -> Result<(), LedgerError> {
        if self.scope == Scope::Off {
            return Ok(());
        }
        ask(&self.writes, |tx| Op::Finish(key, finish, tx)).await
    }
}

/// Queues an op for a ledger task and waits for its answer.
async fn ask<O, T>(to: &mpsc::Sender<O>, op: impl FnOnce(Reply<T>) -> O) -> Result<T, LedgerError> {
    let (tx, rx) = oneshot::channel();
    to.send(op(tx)).await.map_err(|_| LedgerError::Closed)?;
    rx.await.map_err(|_| LedgerError::Closed)?
}

const IDLE_PROBE: Duration = Duration::from_secs(5);

/// The `database` health check, shared by the ledger's tasks: up while none is failing.
#[derive(Clone)]
struct DbHealth {
    health: Health,
    /// Indexed by task.
    failing: Arc<Mutex<Vec<bool>>>,
}

/// What one ledger task (a writer or the checker) owns: its connection, taken from the pool
/// on first use and kept until it fails, and its place in the health check.
struct Task {
    pool: PgPool,
    held: Option<PoolConnection<Postgres>>,
    db: DbHealth,
    id: usize,
}

impl Task {
    fn new(pool: &PgPool, db: &DbHealth, id: usize) -> Self {
        Self {
            pool: pool.clone(),
            held: None,
            db: db.clone(),
            id,
        }
    }

    async fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let c = match self.held.take() {
            Some(c) => c,
            None => {
                let mut c = self.pool.acquire().await?;
                for set in [
                    "SET plan_cache_mode = force_generic_plan",
                    "SET enable_seqscan = off",
                ] {
                    sqlx::query(set).persistent(false).execute(&mut *c).await?;
                }
                c
            }
        };
        Ok(&mut **self.held.insert(c))
    }

    /// Forgets a connection that failed (or whose session state is in doubt): it is closed
    /// rather than returned to the pool, and the next use takes a new one.
    fn discard(&mut self) {
        if let Some(c) = self.held.take() {
            drop(c.detach());
        }
    }

    fn report(&self, up: bool) {
        // Plain flags, always consistent: a lock poisoned by a panic elsewhere is still usable.
        let mut failing = self
            .db
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failing[self.id] = !up;
        self.db.health.set("database", !failing.iter().any(|f| *f));
    }

    /// Waits for the next ops (up to `max`) into `buf`; returns false once every sender is
    /// gone. While idle, keeps the database health check honest.
    async fn next<T>(&mut self, rx: &mut mpsc::Receiver<T>, buf: &mut Vec<T>, max: usize) -> bool {
        loop {
            match tokio::time::timeout(IDLE_PROBE, rx.recv_many(buf, max)).await {
                Ok(n) => return n > 0,
                Err(_) => self.probe().await,
            }
        }
    }

    async fn probe(&mut self) {
        let up = match self.conn().await {
            Ok(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
            Err(_) => false,
        };
        if !up {
            self.discard();
        }
        self.report(up);
    }

    /// After a failed statement: drops the connection, marks the database down and waits
    /// out `backoff`'s next wait (100 ms doubling up to 5 s) before the caller retries.
    async fn failed(&mut self, e: &sqlx::Error, what: &str, backoff: &mut Backoff) {
        self.discard();
        self.report(false);
        metrics::counter!(names::LEDGER_ERRORS).increment(1);
        let hint = match e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => {
                " (table missing: run `warren migrate`)"
            }
            _ => "",
        };
        let wait = backoff.next_wait();
        tracing::warn!(error = %e, retry_in = ?wait,
            "job ledger {what} failed{hint}; holding deliveries until PostgreSQL answers");
        tokio::time::sleep(wait).await;
    }
}

/// How long a statement that failed for an outage waits before it is tried again: 100 ms,
/// doubling up to 5 s, from the first wait again for each new statement.
fn outage_backoff() -> Backoff {
    Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5))
}

async fn writer(mut task: Task, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Op>>>, max_batch: usize) {
    let write_seconds = metrics::histogram!(names::LEDGER_STATEMENT_DURATION, "op" => "write");
    let mut carry: Vec<Op> = Vec::new();
    let mut buf: Vec<Op> = Vec::with_capacity(max_batch);
    loop {
        if carry.is_empty() {
            let mut rx = rx.lock().await;
            if !task.next(&mut rx, &mut buf, max_batch).await {
                return;
            }
            gather(&mut *rx, &mut buf, max_batch).await;
        } else {
            buf.append(&mut carry);
            if let Ok(mut rx) = rx.try_lock() {
                take_ready(&mut *rx, &mut buf, max_batch);
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
                Op::Mark(k, tx) => batch.marks.push((k, tx)),
                Op::Finish(k, f, tx) => batch.finishes.push((k, f, tx)),
            }
        }
        let writes = batch.len();
        metrics::histogram!(names::LEDGER_BATCH_SIZE).record(writes as f64);
        if let Err(e) = commit(&mut task, &mut batch, &write_seconds).await {
            // The statement rolled back as a whole: find the ops whose data is refused by
            // writing them one at a time; the others are written as they would have been.
            tracing::warn!(error = %e, rows = writes,
                "PostgreSQL refused data in a job ledger batch; writing its rows one by one");
            for mut one in batch.split() {
                if let Err(e) = commit(&mut task, &mut one, &write_seconds).await {
                    one.answer(Err(refused(&e)));
                }
            }
        }
    }
}

/// Writes `batch` as one statement, waiting out outages, and answers its ops; or returns the
/// data error PostgreSQL refused it with, leaving its ops unanswered.
async fn commit(
    task: &mut Task,
    batch: &mut Batch,
    seconds: &metrics::Histogram,
) -> Result<(), sqlx::Error> {
    let mut backoff = outage_backoff();
    loop {
        let written = match task.conn().await {
            Ok(c) => timed(seconds, write(c, batch)).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => break,
            Err(e) if is_unique_violation(&e) && batch.any_fresh() => {
                // Another worker recorded one of these job ids since it was checked.
                // The statement rolled back as a whole; write the batch as upserts.
                tracing::debug!("a job id checked as new was recorded meanwhile; rewriting the ledger batch as upserts");
                batch.no_fresh();
            }
            Err(e) if is_data_error(&e) => {
                // PostgreSQL answered: it is up.
                task.report(true);
                return Err(e);
            }
            Err(e) => task.failed(&e, "write", &mut backoff).await,
        }
    }
    task.report(true);
    batch.answer(Ok(()));
    Ok(())
}

async fn checker(mut task: Task, mut rx: mpsc::Receiver<CheckOp>, max_batch: usize) {
    let check_seconds = metrics::histogram!(names::LEDGER_STATEMENT_DURATION, "op" => "check");
    let mut batch: Vec<CheckOp> = Vec::with_capacity(max_batch);
    while task.next(&mut rx, &mut batch, max_batch).await {
        gather(&mut rx, &mut batch, max_batch).await;
        match recorded(&mut task, &batch, &check_seconds).await {
            Ok(ids) => answer_checks(batch.drain(..), &ids),
            Err(e) => {
                tracing::warn!(error = %e, ids = batch.len(),
                    "PostgreSQL refused data in a job ledger check; checking the ids one by one");
                for op in batch.drain(..) {
                    match recorded(&mut task, std::slice::from_ref(&op), &check_seconds).await {
                        Ok(ids) => answer_checks([op], &ids),
                        Err(e) => {
                            let _ = op.1.send(Err(refused(&e)));
                        }
                    }
                }
            }
        }
    }
}

/// Reads the rows of the checked ids, waiting out outages; or returns the data error
/// PostgreSQL refused the statement with.
async fn recorded(
    task: &mut Task,
    checks: &[CheckOp],
    seconds: &metrics::Histogram,
) -> Result<HashMap<String, bool>, sqlx::Error> {
    let mut backoff = outage_backoff();
    loop {
        let read = match task.conn().await {
            Ok(c) => timed(seconds, read_recorded(c, checks)).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(ids) => {
                task.report(true);
                return Ok(ids);
            }
            Err(e) if is_data_error(&e) => {
                task.report(true);
                return Err(e);
            }
            Err(e) => task.failed(&e, "check", &mut backoff).await,
        }
    }
}

fn answer_checks(ops: impl IntoIterator<Item = CheckOp>, recorded: &HashMap<String, bool>) {
    for (k, tx) in ops {
        let c = match recorded.get(&k.job_id) {
            None => Check::New,
            Some(false) => Check::Again,
            Some(true) => Check::AlreadySucceeded,
        };
        let _ = tx.send(Ok(c));
    }
}

/// Runs a statement and records its wall time, successful or not.
async fn timed<T>(into: &metrics::Histogram, statement: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = statement.await;
    into.record(started.elapsed().as_secs_f64());
    out
}

#[derive(Default)]
struct Batch {
    marks: Vec<(Arc<JobKey>, Reply<()>)>,
    finishes: Vec<(Arc<JobKey>, Finish, Reply<()>)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.marks.len() + self.finishes.len()
    }

    /// Answers every op (and empties the batch).
    fn answer(&mut self, r: Result<(), LedgerError>) {
        for (_, _, tx) in self.finishes.drain(..) {
            let _ = tx.send(r.clone());
        }
        for (_, tx) in self.marks.drain(..) {
            let _ = tx.send(r.clone());
        }
    }

    /// One batch per op.
    fn split(&mut self) -> Vec<Batch> {
        let finishes = self.finishes.drain(..).map(|f| Batch {
            finishes: vec![f],
            ..Default::default()
        });
        let marks = self.marks.drain(..).map(|m| Batch {
            marks: vec![m],
            ..Default::default()
        });
        finishes.chain(marks).collect()
    }

    fn any_fresh(&self) -> bool {
        self.finishes.iter().any(|f| f.1.fresh)
    }

    /// Every finish becomes an upsert.
    fn no_fresh(&mut self) {
        for f in &mut self.finishes {
            f.1.fresh = false;
        }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// PostgreSQL refused the statement because of the data it carries, not because it is
/// down: SQLSTATE class 22 (data exception: `22021` invalid byte sequence, as for a NUL in
/// text; `22P05` untranslatable character; `22001` string too long) or `54000` (a value
/// too large to index). The same data will be refused again, so it is not retried.
fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().is_some_and(|c| c.starts_with("22") || c == "54000"))
}

fn refused(e: &sqlx::Error) -> LedgerError {
    let text = match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => format!("{} (SQLSTATE {code})", d.message()),
            None => d.message().to_owned(),
        },
        e => e.to_string(),
    };
    LedgerError::Refused(text)
}

/// Which of the checked job ids have a row, and whether it is `succeeded`. A read-only
/// statement: its implicit transaction commits without writing (or flushing) WAL. Fresh
/// jobs, the common case, match no row.
async fn read_recorded(
    conn: &mut PgConnection,
    checks: &[CheckOp],
) -> Result<HashMap<String, bool>, sqlx::Error> {
    let ids: Vec<&str> = checks.iter().map(|x| x.0.job_id.as_str()).collect();
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT job_id, status = 'succeeded' FROM job_runs WHERE job_id = ANY($1::text[])",
    )
    .bind(&ids)
    // Prepared and planned once per connection (see the module docs).
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Runs a batch of writes as one statement (one durable commit).
///
/// The common batch, where every op is the finish of a job the check found no row for, is a
/// plain `INSERT` of the rows ([`INSERT_FRESH`]). Any other batch (retries, marks, rewrites
/// after a primary-key clash) takes [`WRITE_ANY`], which handles every kind of op; the lean
/// statement costs PostgreSQL about a fifth less per batch (docs/benchmarks.md), since it
/// neither materialises the input nor starts two upserts that have nothing to do.
async fn write(conn: &mut PgConnection, b: &Batch) -> Result<(), sqlx::Error> {
    let f = &b.finishes;
    let ids: Vec<&str> = f.iter().map(|x| x.0.job_id.as_str()).collect();
    let tasks: Vec<&str> = f.iter().map(|x| x.0.task.as_str()).collect();
    let queues: Vec<&str> = f.iter().map(|x| x.0.queue.as_str()).collect();
    let statuses: Vec<&str> = f.iter().map(|x| x.1.status.as_str()).collect();
    // The runtime's own text never carries a NUL (an error may quote a payload's).
    let errors: Vec<Option<String>> = f
        .iter()
        .map(|x| x.1.error.as_deref().map(|e| clean_text(e).into_owned()))
        .collect();
    let deltas: Vec<i32> = f.iter().map(|x| x.1.attempt_delta).collect();
    let starts: Vec<DateTime<Utc>> = f.iter().map(|x| x.1.started_at).collect();
    let only_fresh = b.marks.is_empty() && f.iter().all(|x| x.1.fresh);
    let mut query = sqlx::query(if only_fresh { INSERT_FRESH } else { WRITE_ANY })
        .bind(&ids)
        .bind(&tasks)
        .bind(&queues)
        .bind(&statuses)
        .bind(&errors)
        .bind(&deltas)
        .bind(&starts);
    if !only_fresh {
        let mark_ids: Vec<&str> = b.marks.iter().map(|x| x.0.job_id.as_str()).collect();
        let mark_tasks: Vec<&str> = b.marks.iter().map(|x| x.0.task.as_str()).collect();
        let mark_queues: Vec<&str> = b.marks.iter().map(|x| x.0.queue.as_str()).collect();
        let fresh: Vec<bool> = f.iter().map(|x| x.1.fresh).collect();
        query = query
            .bind(mark_ids)
            .bind(mark_tasks)
            .bind(mark_queues)
            .bind(fresh);
    }
    // Prepared and planned once per connection (see the module docs).
    query.execute(conn).await?;
    Ok(())
}

/// The finishes of jobs with no ledger row yet (`$1`–`$7`: id, task, queue, status, error,
/// attempts, started).
const INSERT_FRESH: &str = "
    INSERT INTO job_runs
           (job_id, task, queue, status, attempts, last_error, started_at, finished_at)
    SELECT id, task, queue, status::job_status, delta, err, started, now()
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[],
                  $7::timestamptz[]) AS u(id, task, queue, status, err, delta, started)";

/// Any batch: finishes as in [`INSERT_FRESH`] plus `$11` (fresh: insert, else upsert), and
/// running marks (`$8`–`$10`: id, task, queue).
const WRITE_ANY: &str = "WITH u AS (
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                $6::int4[], $7::timestamptz[], $11::bool[])
                    AS u(id, task, queue, status, err, delta, started, fresh)
         ), new AS (
           INSERT INTO job_runs
                  (job_id, task, queue, status, attempts, last_error, started_at, finished_at)
           SELECT id, task, queue, status::job_status, delta, err, started, now()
             FROM u WHERE fresh
         ), fin AS (
           INSERT INTO job_runs AS j
                  (job_id, task, queue, status, attempts, last_error, started_at, finished_at)
           SELECT id, task, queue, status::job_status, delta, err, started, now()
             FROM u WHERE NOT fresh
           ON CONFLICT (job_id) DO UPDATE
              SET status = EXCLUDED.status,
                  attempts = j.attempts + EXCLUDED.attempts,
                  last_error = COALESCE(EXCLUDED.last_error, j.last_error),
                  started_at = CASE WHEN EXCLUDED.attempts > 0 THEN EXCLUDED.started_at
                                    ELSE j.started_at END,
                  finished_at = now(), updated_at = now()
            WHERE j.status <> 'succeeded'
         )
         INSERT INTO job_runs AS j (job_id, task, queue, status, attempts)
         SELECT id, task, queue, 'running', 1
           FROM unnest($8::text[], $9::text[], $10::text[]) AS u(id, task, queue)
         ON CONFLICT (job_id) DO UPDATE
            SET status = 'running', attempts = j.attempts + 1, queue = EXCLUDED.queue,
                started_at = now(), finished_at = NULL, updated_at = now()
          WHERE j.status <> 'succeeded'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_postgresql_cannot_hold_are_named() {
        assert_eq!(unstorable("demo.noop"), None);
        assert_eq!(unstorable(&"ç".repeat(127)), None);
        assert!(unstorable("a\0b").unwrap().contains("NUL byte (at byte 1)"));
        assert!(unstorable(&"x".repeat(256)).unwrap().contains("256 bytes"));
    }

    #[test]
    fn stand_ins_are_storable_and_stable() {
        let id = malformed_id("a\0b");
        assert_eq!(id, malformed_id("a\0b"));
        assert_ne!(id, malformed_id("a\0c"));
        assert!(id.starts_with("malformed:") && id.len() == 10 + 64, "{id}");
        assert_eq!(unstorable(&id), None);
        assert_eq!(escaped_key("demo.\0ç"), "demo.\\u{0}\\u{e7}");
        let long = escaped_key(&"\0".repeat(255));
        assert!(long.len() <= MAX_KEY_BYTES && long.is_ascii() && unstorable(&long).is_none());
        assert_eq!(clean_text("at $.mode: `a\0b`"), "at $.mode: `a\\0b`");
        assert_eq!(ascii_text("a \"b\"\n\0ç"), "a \"b\"\\n\\u{0}\\u{e7}");
        assert!(matches!(
            clean_text("fine"),
            std::borrow::Cow::Borrowed("fine")
        ));
    }
}
