//! What happens to one delivery, from arrival to ack. See the crate docs for the order of
//! steps; the invariant is that the ack is the last thing, after every consequence of the
//! delivery (ledger row, retry or dead letter) is durable.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use crate::acks::{AckEvent, AckSender};
use crate::ledger::{self, Check, Finish, JobKey, Ledger, LedgerError, Status, MARK_RUNNING_AFTER};
use crate::registry::{ErasedTask, Registry};
use crate::task::JobContext;
use crate::TaskError;
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use sqlx::PgPool;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tracing::Instrument;
use warren_core::envelope::{self as env, DeadLetterKind};
use warren_core::telemetry::names;
use warren_core::topology::{Topology, WorkQueue};
use warren_producer::{Producer, PublishError};

/// Everything a delivery needs that lives as long as one broker session.
pub(crate) struct Session {
    pub producer: Producer,
    pub ledger: Ledger,
    pub registry: Arc<Registry>,
    pub topology: Arc<Topology>,
    pub db: PgPool,
    pub max_body: usize,
}

/// How one delivery ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Retried,
    DeadLettered,
    Duplicate,
    /// The handler asked to run again later without spending an attempt.
    Snoozed,
}

impl Outcome {
    /// In the order of their discriminants.
    const ALL: [Outcome; 5] = [
        Self::Succeeded,
        Self::Retried,
        Self::DeadLettered,
        Self::Duplicate,
        Self::Snoozed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Duplicate => "duplicate",
            Self::Snoozed => "snoozed",
        }
    }
}

/// Why a delivery could not be finished here; it stays unacked and returns to the queue
/// when the channel closes (the ledger deduplicates whatever already happened).
#[derive(Debug, thiserror::Error)]
enum Abandon {
    #[error("publishing the consequence failed: {0}")]
    Publish(#[from] PublishError),
    #[error("{0}")]
    Ledger(#[from] LedgerError),
}

/// A failed attempt, as the runtime sees it.
pub(crate) enum Failure {
    Task(TaskError),
    Timeout(Duration),
    Panic(String),
}

/// A queue's metric handles, registered once (and once per task as tasks appear) instead of
/// being looked up by name and labels, with the label strings allocated, on every delivery.
pub(crate) struct QueueMetrics {
    queue: String,
    in_flight: metrics::Gauge,
    tasks: std::sync::RwLock<HashMap<String, Arc<TaskMetrics>>>,
}

struct TaskMetrics {
    /// `JOBS_PROCESSED`, indexed by [`Outcome`].
    processed: [metrics::Counter; 5],
    duration: metrics::Histogram,
}

impl QueueMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            in_flight: metrics::gauge!(names::JOBS_IN_FLIGHT, "queue" => queue.to_owned()),
            tasks: Default::default(),
        }
    }

    fn task(&self, task: &str) -> Arc<TaskMetrics> {
        // The map only ever gains complete entries, so one a panicking thread left behind
        // (a poisoned lock) is still sound: use it rather than fail every later delivery.
        if let Some(m) = self
            .tasks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(task)
        {
            return m.clone();
        }
        let counter = |o: Outcome| {
            metrics::counter!(names::JOBS_PROCESSED, "queue" => self.queue.clone(),
                "task" => task.to_owned(), "outcome" => o.as_str())
        };
        let m = Arc::new(TaskMetrics {
            processed: Outcome::ALL.map(counter),
            duration: metrics::histogram!(names::JOB_DURATION, "queue" => self.queue.clone(),
                "task" => task.to_owned()),
        });
        self.tasks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(task.to_owned())
            .or_insert(m)
            .clone()
    }
}

struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What the runtime reads from a delivery's envelope (routing key, `message_id`, headers)
/// before anything else, whatever a client put there; it never panics. The job id and task
/// name are storable in the ledger ([`ledger::unstorable`] is `None` for both): a message
/// whose own are not gets stand-ins, and [`Envelope::unstorable`] says why, for the job to
/// be dead-lettered `malformed` without running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// The `message_id`, a stand-in for one the ledger cannot hold
    /// ([`ledger::malformed_id`]), or a new UUIDv7 for a message without one.
    pub job_id: String,
    /// The routing key, or its escaped form ([`ledger::escaped_key`]) if the ledger cannot
    /// hold it.
    pub task: String,
    /// `x-attempt`, 1 to `u32::MAX`; 1 when absent or not a whole number.
    pub attempt: u32,
    pub tenant: Option<String>,
    pub traceparent: Option<String>,
    /// Why the job id or task name cannot be recorded as they are.
    pub unstorable: Option<String>,
}

impl Envelope {
    pub(crate) fn read(routing_key: &str, props: &BasicProperties) -> Self {
        let headers = props.headers().as_ref();
        // What the ledger, the metrics and the logs take must be storable: a job id or task
        // name PostgreSQL text cannot hold (a NUL byte) is replaced, and the job dead-lettered
        // `malformed` before anything else (`process`).
        let mut unstorable: Option<String> = None;
        let task = match ledger::unstorable(routing_key) {
            None => routing_key.to_owned(),
            Some(why) => {
                let task = ledger::escaped_key(routing_key);
                unstorable = Some(format!(
                    "the task name (routing key) {routing_key:?} {why}; recorded in the job ledger as `{task}`"
                ));
                task
            }
        };
        let job_id = match props.message_id() {
            Some(id) if !id.as_str().is_empty() => match ledger::unstorable(id.as_str()) {
                None => id.as_str().to_owned(),
                Some(why) => {
                    let job_id = ledger::malformed_id(id.as_str());
                    let msg = format!(
                        "the message_id {:?} {why}; recorded in the job ledger as {job_id}",
                        id.as_str()
                    );
                    unstorable = Some(match unstorable {
                        Some(t) => format!("{msg}; {t}"),
                        None => msg,
                    });
                    job_id
                }
            },
            _ => uuid::Uuid::now_v7().to_string(),
        };
        let attempt = env::header_u64(headers, env::H_ATTEMPT)
            .unwrap_or(1)
            .clamp(1, u32::MAX.into()) as u32;
        Self {
            job_id,
            task,
            attempt,
            tenant: env::header_str(headers, env::H_TENANT),
            traceparent: env::header_str(headers, env::H_TRACEPARENT),
            unstorable,
        }
    }
}

/// Processes one delivery to the end (see the module docs). The ack itself goes through the
/// channel's ack batcher.
pub(crate) async fn handle(
    s: Arc<Session>,
    queue: Arc<WorkQueue>,
    m: Arc<QueueMetrics>,
    d: Delivery,
    acks: AckSender,
) {
    let _gauge = InFlight::enter(&m.in_flight);
    let e = Envelope::read(d.routing_key.as_str(), &d.properties);
    let span = tracing::info_span!("job", job_id = %e.job_id, task = %e.task, queue = %queue.name,
        attempt = e.attempt, tenant = e.tenant.as_deref(), traceparent = e.traceparent.as_deref());
    let job = Job {
        key: Arc::new(JobKey {
            job_id: e.job_id,
            task: e.task,
            queue: queue.name.clone(),
        }),
        attempt: e.attempt,
        tenant: e.tenant,
        unstorable: e.unstorable,
        d,
    };
    async move {
        let tm = m.task(&job.key.task);
        let result = process(&s, &queue, &job, &tm).await;
        let d = &job.d;
        match result {
            Ok(outcome) => {
                tm.processed[outcome as usize].increment(1);
                acks.send(AckEvent::Done(d.delivery_tag));
            }
            Err(Abandon::Publish(e)) if !e.is_retryable() => {
                // The consequence cannot be routed (topology damaged?). Requeue after a
                // pause rather than lose the job; the delivery limit ends a loop. Boxed, like
                // every rare path: the job future stays small, and spawning it copies less.
                Box::pin(async {
                    tracing::error!(error = %e, "cannot publish retry/dead letter; requeueing in 5s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let _ = d
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                })
                .await;
                acks.send(AckEvent::Settled(d.delivery_tag));
            }
            Err(e) => tracing::warn!(error = %e, "delivery left unacked; it will be redelivered"),
        }
    }
    .instrument(span)
    .await
}

async fn process(
    s: &Session,
    queue: &WorkQueue,
    job: &Job,
    tm: &TaskMetrics,
) -> Result<Outcome, Abandon> {
    let (d, key, attempt) = (&job.d, &job.key, job.attempt);
    let headers = d.properties.headers().as_ref();

    // A job id or task name the ledger cannot hold: poison, judged before any ledger op.
    if let Some(why) = &job.unstorable {
        let not_run = Attempt::not_run();
        return dead_letter(s, queue, job, &not_run, DeadLetterKind::Malformed, why).await;
    }

    // A message the broker keeps redelivering has crashed workers: stop before the broker's
    // own limit so the dead letter carries our headers.
    let returns = env::header_u64(headers, env::H_DELIVERY_COUNT).unwrap_or(0);
    if returns >= u64::from(queue.delivery_limit) {
        // Redelivered past the limit after it succeeded (the ack was lost: the broker closed
        // the channel on consumer_timeout, or the worker died between commit and ack): a
        // duplicate to ack, not a crash loop to dead-letter.
        let check = match s.ledger.check(key.clone()).await {
            Err(LedgerError::Refused(why)) => return refused(s, queue, job, &why).await,
            check => check?,
        };
        if check == Check::AlreadySucceeded {
            tracing::info!("job already succeeded; acking redelivered duplicate");
            return Ok(Outcome::Duplicate);
        }
        let msg = format!(
            "delivered {} times without an ack (worker crashes?); delivery limit {}",
            returns + 1,
            queue.delivery_limit
        );
        let not_run = Attempt::not_run();
        return dead_letter(s, queue, job, &not_run, DeadLetterKind::DeliveryLimit, &msg).await;
    }

    let admitted = admit(
        &s.registry,
        &key.task,
        &d.data,
        s.max_body,
        headers,
        |max_attempts| JobContext {
            job_id: key.job_id.clone(),
            task: key.task.clone(),
            queue: queue.name.clone(),
            attempt,
            max_attempts,
            idempotency_key: env::header_str(headers, env::H_IDEMPOTENCY_KEY),
            tenant: job.tenant.clone(),
            db: s.db.clone(),
        },
    );
    let Admitted {
        handler,
        max_attempts,
        run: fut,
    } = match admitted {
        Ok(a) => a,
        Err(r) => {
            let not_run = Attempt::not_run();
            return dead_letter(s, queue, job, &not_run, r.kind, &r.message).await;
        }
    };
    let policy = handler.retry_policy();

    let check = match s.ledger.check(key.clone()).await {
        Err(LedgerError::Refused(why)) => return refused(s, queue, job, &why).await,
        check => check?,
    };
    if check == Check::AlreadySucceeded {
        tracing::info!("job already succeeded; acking duplicate without running it");
        return Ok(Outcome::Duplicate);
    }

    let timeout = handler.timeout();
    let started = Instant::now();
    let mut ran = Attempt {
        started_at: chrono::Utc::now(),
        delta: 1,
        fresh: check == Check::New,
    };
    let run = guarded(fut, timeout);
    tokio::pin!(run);
    // Jobs that outlive MARK_RUNNING_AFTER show up as `running` in the ledger.
    let mark = tokio::time::sleep(MARK_RUNNING_AFTER);
    tokio::pin!(mark);
    let outcome = tokio::select! {
        r = &mut run => r,
        _ = &mut mark => {
            // The mark must commit before the finish is queued, or a later batch could
            // apply them out of order; the handler keeps running meanwhile.
            let (marked, r) = tokio::join!(Box::pin(s.ledger.mark_running(key.clone())), &mut run);
            match marked {
                Ok(()) => ran.delta = 0,
                // Nothing was written: the finish counts the attempt (see `record`).
                Err(LedgerError::Refused(why)) => {
                    tracing::warn!(%why, "PostgreSQL refused this job's running mark");
                }
                Err(e) => return Err(e.into()),
            }
            ran.fresh = false;
            r
        }
    };
    let result = outcome;
    tm.duration.record(started.elapsed().as_secs_f64());

    let (error, retryable, exhausted_kind) = match result {
        Ok(()) => {
            record(s, key, ran.finish(Status::Succeeded, None)).await?;
            tracing::debug!(elapsed = ?started.elapsed(), "job succeeded");
            return Ok(Outcome::Succeeded);
        }
        Err(Failure::Task(TaskError::Snooze { after, reason })) => {
            // Not an attempt: the ledger's count stays what it was (unless a long run was
            // already counted by its running mark).
            ran.delta = 0;
            let tier = crate::retry::tier_for_delay(after, s.topology.tiers());
            return delay(s, job, &ran, tier, attempt, &reason).await;
        }
        Err(Failure::Task(TaskError::UnknownOutcome(m))) => {
            return dead_letter(s, queue, job, &ran, DeadLetterKind::UnknownOutcome, &m).await;
        }
        Err(Failure::Task(TaskError::Permanent(m))) => (m, false, DeadLetterKind::Permanent),
        Err(Failure::Task(TaskError::Retryable(m))) => (m, true, DeadLetterKind::Exhausted),
        Err(f @ Failure::Panic(_)) => (f.describe(), true, DeadLetterKind::Exhausted),
        Err(f @ Failure::Timeout(_)) => (f.describe(), true, DeadLetterKind::Timeout),
    };
    if !retryable {
        return dead_letter(s, queue, job, &ran, DeadLetterKind::Permanent, &error).await;
    }
    if attempt >= max_attempts {
        let msg = format!("{error} (attempt {attempt} of {max_attempts})");
        return dead_letter(s, queue, job, &ran, exhausted_kind, &msg).await;
    }
    let tier = policy.tier(attempt, s.topology.tiers());
    delay(s, job, &ran, tier, attempt + 1, &error).await
}

/// A delivery its handler may run, as [`admit`] found it.
pub(crate) struct Admitted {
    pub handler: Arc<dyn ErasedTask>,
    /// `x-max-attempts` (1 to `u32::MAX`), else the task's own.
    pub max_attempts: u32,
    /// The handler's run over the decoded payload, not started.
    pub run: BoxFuture<'static, Result<(), TaskError>>,
}

/// Why a delivery is dead-lettered without running: [`DeadLetterKind::Malformed`] or
/// [`DeadLetterKind::UnknownTask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub kind: DeadLetterKind,
    pub message: String,
}

/// Judges a delivery by its task, body and headers alone, before the ledger is asked: a body
/// over `max_body` bytes, or one that does not decode into the task's payload type, is
/// `malformed`; a task without a handler is `unknown-task`. Never panics, whatever the
/// input. `ctx` builds the handler's context from the job's `max_attempts`.
pub(crate) fn admit(
    registry: &Registry,
    task: &str,
    body: &[u8],
    max_body: usize,
    headers: Option<&FieldTable>,
    ctx: impl FnOnce(u32) -> JobContext,
) -> Result<Admitted, Refusal> {
    if body.len() > max_body {
        return Err(Refusal {
            kind: DeadLetterKind::Malformed,
            message: format!(
                "body is {} bytes; the limit is {max_body} (WARREN_MAX_BODY)",
                body.len()
            ),
        });
    }
    let Some(handler) = registry.get(task) else {
        let known: Vec<&str> = registry.names().collect();
        return Err(Refusal {
            kind: DeadLetterKind::UnknownTask,
            message: format!(
                "no handler for task {task:?} on this worker (it runs: {})",
                known.join(", ")
            ),
        });
    };
    let max_attempts = env::header_u64(headers, env::H_MAX_ATTEMPTS)
        .map(|m| m.clamp(1, u32::MAX.into()) as u32)
        .unwrap_or(handler.retry_policy().max_attempts);
    match handler.clone().start(body, ctx(max_attempts)) {
        Ok(run) => Ok(Admitted {
            handler,
            max_attempts,
            run,
        }),
        Err(m) => Err(Refusal {
            kind: DeadLetterKind::Malformed,
            message: m.0,
        }),
    }
}

/// The ledger's view of this delivery's execution.
struct Attempt {
    started_at: chrono::DateTime<chrono::Utc>,
    /// 1 if the handler ran and no mark counted it yet.
    delta: i32,
    /// The ledger has no row for this job (see [`Finish::fresh`]).
    fresh: bool,
}

impl Attempt {
    /// Judged without running the handler (dead-lettered before it started).
    fn not_run() -> Self {
        Self {
            started_at: chrono::Utc::now(),
            delta: 0,
            // Not checked: the row may exist.
            fresh: false,
        }
    }

    fn finish(&self, status: Status, error: Option<String>) -> Finish {
        Finish {
            status,
            error,
            attempt_delta: self.delta,
            started_at: self.started_at,
            fresh: self.fresh,
        }
    }
}

/// Retries and dead letters are rare next to successes: their futures (a publish with its
/// properties, a ledger finish) are boxed so that they do not make every job's future, which
/// is moved when spawned, larger.
type Rare<'a> = futures::future::BoxFuture<'a, Result<Outcome, Abandon>>;

/// Republishes the job to delay tier `tier` as attempt `next_attempt`: a retry (the next
/// attempt) or a snooze (the same attempt again).
fn delay<'a>(
    s: &'a Session,
    job: &'a Job,
    ran: &'a Attempt,
    tier: usize,
    next_attempt: u32,
    error: &'a str,
) -> Rare<'a> {
    Box::pin(delay_inner(s, job, ran, tier, next_attempt, error))
}

async fn delay_inner(
    s: &Session,
    job: &Job,
    ran: &Attempt,
    tier: usize,
    next_attempt: u32,
    error: &str,
) -> Result<Outcome, Abandon> {
    let (d, key) = (&job.d, &job.key);
    let props = job.republish(|h| env::set_int(h, env::H_ATTEMPT, u64::from(next_attempt)));
    let exchange = s.topology.tier_name(tier);
    s.producer
        .publish_raw(&exchange, &key.task, &key.task, &d.data, props)
        .await?;
    record(s, key, ran.finish(Status::Failed, Some(error.to_owned()))).await?;
    let wait = s.topology.tiers()[tier];
    if next_attempt > job.attempt {
        tracing::warn!(%error, delay = ?wait, next_attempt, "attempt failed; retry scheduled");
        Ok(Outcome::Retried)
    } else {
        tracing::info!(reason = %error, delay = ?wait, "job snoozed; it runs again without spending an attempt");
        Ok(Outcome::Snoozed)
    }
}

fn dead_letter<'a>(
    s: &'a Session,
    queue: &'a WorkQueue,
    job: &'a Job,
    ran: &'a Attempt,
    kind: DeadLetterKind,
    error: &'a str,
) -> Rare<'a> {
    Box::pin(dead_letter_inner(s, queue, job, ran, kind, error))
}

async fn dead_letter_inner(
    s: &Session,
    queue: &WorkQueue,
    job: &Job,
    ran: &Attempt,
    kind: DeadLetterKind,
    error: &str,
) -> Result<Outcome, Abandon> {
    let (d, key) = (&job.d, &job.key);
    // An error may quote the payload; what the runtime writes carries no NUL.
    let error: String = ledger::clean_text(error).chars().take(4000).collect();
    let props = job.republish(|h| {
        env::set_str(h, env::H_ERROR, &error);
        env::set_str(h, env::H_ERROR_KIND, kind.as_str());
        env::set_str(h, env::H_ORIGINAL_ROUTING_KEY, d.routing_key.as_str());
        env::set_str(
            h,
            env::H_FAILED_AT,
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        env::set_int(h, env::H_ATTEMPTS, job.attempt.into());
    });
    s.producer
        .publish_raw(
            &s.topology.dead_letter_exchange(),
            &queue.name,
            &key.task,
            &d.data,
            props,
        )
        .await?;
    record(
        s,
        key,
        ran.finish(Status::DeadLettered, Some(error.clone())),
    )
    .await?;
    tracing::error!(kind = kind.as_str(), %error, dlq = %s.topology.dlq_name(&queue.name), "job dead-lettered");
    Ok(Outcome::DeadLettered)
}

/// PostgreSQL refused this job's data at its check although it passed the checks on arrival
/// (a character the database's encoding lacks, say): dead-lettered `malformed` without
/// running, recorded as [`record`] can.
fn refused<'a>(s: &'a Session, queue: &'a WorkQueue, job: &'a Job, why: &'a str) -> Rare<'a> {
    Box::pin(async move {
        let msg = format!("the job ledger cannot record this job: {why}");
        let not_run = Attempt::not_run();
        dead_letter_inner(s, queue, job, &not_run, DeadLetterKind::Malformed, &msg).await
    })
}

/// Records a finish. Should PostgreSQL refuse the job's own data (what the runtime checks on
/// arrival makes that unexpected), the finish is recorded instead under
/// `malformed:<SHA-256 of the id>` with the task name and error escaped to printable ASCII,
/// which any database takes; if even that is refused, it is logged and not recorded. Never
/// waits on data PostgreSQL will not take: the consequence is already durable, and the
/// delivery must be acked.
async fn record(s: &Session, key: &Arc<JobKey>, finish: Finish) -> Result<(), Abandon> {
    match s.ledger.finish(key.clone(), finish.clone()).await {
        // Boxed, like every rare path, so that every job's future stays small.
        Err(LedgerError::Refused(why)) => Box::pin(record_stand_in(s, key, finish, why)).await,
        r => Ok(r?),
    }
}

async fn record_stand_in(
    s: &Session,
    key: &JobKey,
    finish: Finish,
    why: String,
) -> Result<(), Abandon> {
    let stand_in = Arc::new(JobKey {
        job_id: ledger::malformed_id(&key.job_id),
        task: ledger::escaped_key(&key.task),
        queue: key.queue.clone(),
    });
    tracing::error!(%why, recorded_as = %stand_in.job_id,
        "PostgreSQL refused this job's ledger row; recording it under a stand-in id");
    let error = match &finish.error {
        Some(e) => format!("{e} (PostgreSQL refused the job's own row: {why})"),
        None => format!("PostgreSQL refused the job's own row: {why}"),
    };
    let stand_in_finish = Finish {
        error: Some(ledger::ascii_text(&error)),
        fresh: false,
        ..finish
    };
    match s.ledger.finish(stand_in, stand_in_finish).await {
        Err(LedgerError::Refused(why)) => {
            tracing::error!(%why, "PostgreSQL refused the stand-in ledger row too; not recorded");
            Ok(())
        }
        r => Ok(r?),
    }
}

/// One delivery and what the runtime read from its envelope once.
struct Job {
    d: Delivery,
    key: Arc<JobKey>,
    /// `x-attempt`, 1 on the first attempt.
    attempt: u32,
    tenant: Option<String>,
    /// Why the job id or task name cannot be recorded as they are (then `key` holds
    /// stand-ins), if they cannot.
    unstorable: Option<String>,
}

impl Job {
    /// Properties for republishing this job (retry or dead letter): the original ones (the
    /// job id set if the message had none), and headers edited by `edit`, minus the
    /// broker-owned redelivery counter, which must not follow the job into a new message (it
    /// would look like a crash loop).
    fn republish(&self, edit: impl FnOnce(&mut FieldTable)) -> BasicProperties {
        let mut h = self.d.properties.headers().clone().unwrap_or_default();
        env::remove(&mut h, env::H_DELIVERY_COUNT);
        edit(&mut h);
        let props = self.d.properties.clone();
        let has_id = props
            .message_id()
            .as_ref()
            .is_some_and(|id| !id.as_str().is_empty());
        let props = if has_id {
            props
        } else {
            props.with_message_id(self.key.job_id.as_str().into())
        };
        props.with_headers(h)
    }
}

/// Runs one attempt of a handler under its timeout, catching a panic: the one way the worker
/// and the test kit ([`crate::testing`]) run a task.
pub(crate) async fn guarded<F>(fut: F, timeout: Duration) -> Result<(), Failure>
where
    F: std::future::Future<Output = Result<(), TaskError>>,
{
    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(Failure::Task(e)),
        Ok(Err(panic)) => Err(Failure::Panic(panic_message(&panic))),
        Err(_) => Err(Failure::Timeout(timeout)),
    }
}

impl Failure {
    /// What the ledger and the retry record say of a failure the handler did not return.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Task(e) => e.to_string(),
            Self::Panic(m) => format!("handler panicked: {m}"),
            Self::Timeout(t) => format!("attempt timed out after {t:?}"),
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

#[cfg(test)]
mod properties;
