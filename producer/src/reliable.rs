//! Publishing through connection loss: [`SharedBroker::publish`] and
//! [`SharedBroker::publish_many`] fix every job id before the first try, publish with
//! confirms and `mandatory`, and when the connection or channel fails, a confirm is refused
//! (nack) or does not arrive in time, reconnect with bounded backoff and publish again
//! **exactly the jobs that were not confirmed**, with the same `message_id`. A confirmed job
//! is never sent again.
//!
//! Delivery is at least once: a job that reached the broker but whose confirm was lost with
//! the connection is sent again ([`BatchReport::resent`]), so it can be delivered twice under
//! one id; the worker's ledger (`job_runs`) runs an id that succeeded only once. Errors are
//! classified where they arise ([`PublishError::is_retryable`]): an unroutable task, a payload
//! that is not JSON or a delay no tier holds fails the batch at once
//! ([`BatchError::Permanent`]); a broker that stays unreachable fails it at the policy's
//! deadline, counted from the loss ([`BatchError::GaveUp`], naming the ids still
//! unconfirmed).

use crate::broker::SharedBroker;
use crate::{Producer, PublishError, PublishOptions};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use std::time::{Duration, Instant};
use warren_core::backoff::Backoff;

/// How long and how patiently a publish is retried.
#[derive(Debug, Clone)]
pub struct RepublishPolicy {
    /// Give up when jobs are still unconfirmed this long after the connection was lost:
    /// counted from the first failure after the last confirm, so a long batch that loses its
    /// connection late gets the whole deadline to reconnect.
    pub deadline: Duration,
    /// Pause before the first reconnect; it doubles after each failed round up to
    /// `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// A confirm that has not arrived this long after its publish counts as lost: the job is
    /// published again on a new connection.
    pub confirm_timeout: Duration,
}

impl Default for RepublishPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(30),
        }
    }
}

/// What a completed batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// The job ids, in the order the jobs were given.
    pub ids: Vec<String>,
    /// Jobs published more than once because a connection loss (or a nack or a lost confirm)
    /// left their first publish unconfirmed. Only these can be delivered twice.
    pub resent: Vec<String>,
    /// Rounds that failed for a retryable reason (each followed by a reconnect).
    pub retries: u32,
}

/// Why a publish through [`SharedBroker`] did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Retrying cannot help (unroutable task, payload not JSON, delay too long, a value
    /// outside `warren_core::limits`).
    #[error("{source} ({confirmed} of {total} job(s) were confirmed before it)")]
    Permanent {
        source: PublishError,
        confirmed: usize,
        total: usize,
    },
    /// The deadline passed with jobs unconfirmed; publishing `unconfirmed` again with the
    /// same ids is safe.
    #[error("gave up after {after:?}: {} of {total} job(s) unconfirmed; last error: {last}", unconfirmed.len())]
    GaveUp {
        unconfirmed: Vec<String>,
        total: usize,
        after: Duration,
        last: String,
    },
}

impl BatchError {
    /// Worth trying again later with the same job ids.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::GaveUp { .. })
    }
}

/// One job of a batch, its id fixed.
struct Job {
    id: String,
    body: Vec<u8>,
    opts: PublishOptions,
}

/// Why one round stopped before every job was confirmed.
enum RoundError {
    Permanent(PublishError),
    Retryable(String),
}

impl SharedBroker {
    /// Publishes one job with [`publish_many`](Self::publish_many)'s guarantees. Returns its
    /// id.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &T,
        opts: &PublishOptions,
        policy: &RepublishPolicy,
    ) -> Result<String, BatchError> {
        let body = serde_json::to_vec(payload).map_err(|e| BatchError::Permanent {
            source: e.into(),
            confirmed: 0,
            total: 1,
        })?;
        let report = self
            .publish_many(task, [(body, opts.clone())], 1, policy, |_| {})
            .await?;
        Ok(report.ids.into_iter().next().expect("one job"))
    }

    /// Publishes jobs of one task with up to `window` confirms outstanding, surviving
    /// connection loss (see the module docs). `confirmed(id)` is called once per job as its
    /// confirm arrives.
    pub async fn publish_many(
        &self,
        task: &str,
        jobs: impl IntoIterator<Item = (Vec<u8>, PublishOptions)>,
        window: usize,
        policy: &RepublishPolicy,
        mut confirmed: impl FnMut(&str),
    ) -> Result<BatchReport, BatchError> {
        // When the current loss began: the first failed round after the last confirm.
        let mut lost_at: Option<Instant> = None;
        // Ids are fixed here, once: every try of a job carries the same message_id.
        let jobs: Vec<Job> = jobs
            .into_iter()
            .map(|(body, mut opts)| {
                let id = opts
                    .id
                    .get_or_insert_with(|| uuid::Uuid::now_v7().to_string())
                    .clone();
                Job { id, body, opts }
            })
            .collect();
        let total = jobs.len();
        if total == 0 {
            return Ok(BatchReport::default());
        }
        // Out-of-bounds values fail the batch before anything is sent (and before they could
        // break the connection), never as a retryable error.
        for job in &jobs {
            job.opts.check(task).map_err(|e| BatchError::Permanent {
                source: PublishError::Invalid(e),
                confirmed: 0,
                total,
            })?;
        }
        let mut done = vec![false; total];
        let mut sent = vec![false; total];
        let mut resent = vec![false; total];
        let mut retries = 0;
        let mut backoff = Backoff::doubling(policy.backoff, policy.max_backoff);
        loop {
            let confirmed_before = done.iter().filter(|d| **d).count();
            let last = match self.link().await {
                Ok(link) => {
                    let todo: Vec<usize> = (0..total).filter(|&i| !done[i]).collect();
                    for &i in &todo {
                        resent[i] |= sent[i];
                    }
                    let round = round(
                        &link.producer,
                        task,
                        &jobs,
                        &todo,
                        window,
                        policy.confirm_timeout,
                        &mut sent,
                        &mut |i| {
                            done[i] = true;
                            confirmed(&jobs[i].id);
                        },
                    )
                    .await;
                    match round {
                        Ok(()) => {
                            let report = BatchReport {
                                ids: jobs.iter().map(|j| j.id.clone()).collect(),
                                resent: (0..total)
                                    .filter(|&i| resent[i])
                                    .map(|i| jobs[i].id.clone())
                                    .collect(),
                                retries,
                            };
                            return Ok(report);
                        }
                        Err(RoundError::Permanent(source)) => {
                            return Err(BatchError::Permanent {
                                source,
                                confirmed: done.iter().filter(|d| **d).count(),
                                total,
                            })
                        }
                        Err(RoundError::Retryable(why)) => {
                            // The link is unusable or untrustworthy: the next round reconnects.
                            self.reset(link.generation).await;
                            why
                        }
                    }
                }
                Err(unavailable) => unavailable.to_string(),
            };
            retries += 1;
            if lost_at.is_none() || done.iter().filter(|d| **d).count() > confirmed_before {
                // A new loss: this round confirmed jobs before it failed (or nothing failed
                // before), so the link was healthy until now.
                lost_at = Some(Instant::now());
                backoff.reset();
            }
            let elapsed = lost_at.map(|t| t.elapsed()).unwrap_or_default();
            if elapsed >= policy.deadline {
                return Err(BatchError::GaveUp {
                    unconfirmed: (0..total)
                        .filter(|&i| !done[i])
                        .map(|i| jobs[i].id.clone())
                        .collect(),
                    total,
                    after: elapsed,
                    last,
                });
            }
            let wait = backoff.next_wait();
            tracing::warn!(
                task,
                unconfirmed = done.iter().filter(|d| !**d).count(),
                error = %last,
                retry_in = ?wait,
                "publish interrupted; republishing the unconfirmed jobs with the same ids"
            );
            tokio::time::sleep(wait.min(policy.deadline - elapsed)).await;
        }
    }
}

/// Publishes the jobs `todo` on one producer, at most `window` unconfirmed at a time, calling
/// `on_confirm(index)` per confirm. After the first failure no new job is sent; the ones
/// already in flight are still awaited (each at most `confirm_timeout`), so every confirm
/// that arrives counts.
#[allow(clippy::too_many_arguments)]
async fn round(
    producer: &Producer,
    task: &str,
    jobs: &[Job],
    todo: &[usize],
    window: usize,
    confirm_timeout: Duration,
    sent: &mut [bool],
    on_confirm: &mut impl FnMut(usize),
) -> Result<(), RoundError> {
    // Where each job goes, decided before anything is sent: a job that cannot be routed
    // fails the batch without publishing part of it.
    let mut targets = Vec::with_capacity(todo.len());
    for &i in todo {
        let exchange = producer
            .exchange_for(task, &jobs[i].opts)
            .map_err(RoundError::Permanent)?;
        targets.push((i, exchange));
    }
    let mut failure: Option<RoundError> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut next = targets.into_iter();
    loop {
        while failure.is_none() && in_flight.len() < window.max(1) {
            let Some((i, exchange)) = next.next() else {
                break;
            };
            let job = &jobs[i];
            let props = match Producer::try_envelope(&job.opts) {
                Ok((_, props)) => props,
                Err(e) => {
                    failure = Some(RoundError::Permanent(e));
                    break;
                }
            };
            sent[i] = true;
            in_flight.push(async move {
                let publish = producer.publish_raw(&exchange, task, task, &job.body, props);
                (i, tokio::time::timeout(confirm_timeout, publish).await)
            });
        }
        let Some((i, outcome)) = in_flight.next().await else {
            break;
        };
        let err = match outcome {
            Ok(Ok(())) => {
                on_confirm(i);
                continue;
            }
            Ok(Err(e)) if e.is_retryable() => RoundError::Retryable(e.to_string()),
            Ok(Err(e)) => RoundError::Permanent(e),
            Err(_) => RoundError::Retryable(format!(
                "no confirm within {confirm_timeout:?}; the connection is presumed lost"
            )),
        };
        // A permanent error wins over a retryable one: retrying would not help.
        if !matches!(failure, Some(RoundError::Permanent(_))) {
            failure = Some(err);
        }
    }
    failure.map_or(Ok(()), Err)
}
